//! The doctor's judgement on snapshots of the cluster states it is for: two istiods with a CA
//! each (split), both under meshroot (one root), and what goes wrong in between. The real
//! tier runs the same command against real istiods.

use super::diagnose::{PairStatus, Verdict, short};
use super::*;
use crate::pki::chain::sha256_hex;
use crate::pki::{Authority, CaSpec};
use time::{Duration, OffsetDateTime};

fn root() -> Authority {
    Authority::new_root(&CaSpec::root(Duration::days(365)), OffsetDateTime::now_utc()).unwrap()
}

fn intermediate(issuer: &Authority, name: &str) -> Authority {
    issuer.new_intermediate(&CaSpec::intermediate(name, Duration::days(30)), OffsetDateTime::now_utc()).unwrap()
}

fn cert(a: &Authority) -> CertificateDer<'static> {
    a.certificate().clone()
}

fn istiod(namespace: &str, revision: &str, ca: CaMode, root_configmap: &str) -> Istiod {
    Istiod {
        namespace: namespace.into(),
        deployment: if revision == "default" { "istiod".into() } else { format!("istiod-{revision}") },
        revision: revision.into(),
        ca,
        root_configmap: root_configmap.into(),
        trust_domain: "cluster.local".into(),
        trust_domain_aliases: Vec::new(),
        ca_address: None,
        notes: Vec::new(),
    }
}

/// istiod signing with its own self-signed CA, as `istio-ca-secret` holds it.
fn own_ca(ca: &Authority) -> CaMode {
    CaMode::Own(CaMaterial::Found { signer: cert(ca), chain: Vec::new(), roots: Vec::new() })
}

const GATEWAY_CM: &str = "openshift-gw-ca-root-cert";

/// The OpenShift layout: the Service Mesh istiod in istio-system with bookinfo labelled for
/// it, the Gateway API istiod in openshift-ingress with a root ConfigMap of its own.
fn cluster(mesh_ca: CaMode, gateway_ca: CaMode) -> Snapshot {
    let mut snapshot = Snapshot::default();
    for (name, labels) in [
        ("istio-system", vec![]),
        ("openshift-ingress", vec![]),
        ("bookinfo", vec![("istio-injection", "enabled")]),
        ("unmeshed", vec![]),
    ] {
        let labels = labels.into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        snapshot.namespaces.insert(name.into(), labels);
    }
    snapshot.istiods = vec![
        istiod("istio-system", "default", mesh_ca, DEFAULT_ROOT_CONFIGMAP),
        istiod("openshift-ingress", "openshift-gateway", gateway_ca, GATEWAY_CM),
    ];
    snapshot
}

fn configmap(snapshot: &mut Snapshot, namespace: &str, name: &str, roots: &[&Authority]) {
    let bundle = Bundle::Roots(roots.iter().map(|a| cert(a)).collect());
    snapshot.configmaps.insert((namespace.into(), name.into()), bundle);
}

fn mesh(name: &str, namespace: &str, revisions: &[&str], mode: MeshMode, root_configmap: &str) -> MeshrootMesh {
    MeshrootMesh {
        name: name.into(),
        istiod_namespace: namespace.into(),
        revisions: revisions.iter().map(|r| r.to_string()).collect(),
        mode,
        root_configmap: root_configmap.into(),
    }
}

#[test]
fn two_istiods_with_a_ca_each_are_split_and_the_advice_is_meshroot() {
    let (mesh_ca, gateway_ca) = (root(), root());
    let mut snapshot = cluster(own_ca(&mesh_ca), own_ca(&gateway_ca));
    for ns in ["istio-system", "bookinfo"] {
        configmap(&mut snapshot, ns, DEFAULT_ROOT_CONFIGMAP, &[&mesh_ca]);
    }
    configmap(&mut snapshot, "openshift-ingress", GATEWAY_CM, &[&gateway_ca]);
    let report = diagnose(&snapshot);
    assert_eq!(report.verdict, Verdict::Split);
    assert_eq!(report.verdict.exit_code(), 2);
    assert_eq!(report.summary, "trust is split: 1 pair of meshes cannot complete mutual TLS");
    let fp = |a: &Authority| sha256_hex(a.certificate());
    let rows: Vec<_> = report.istiods.iter().map(|i| (i.mesh.as_str(), i.ca_mode, i.issuing_root.clone())).collect();
    assert_eq!(
        rows,
        [
            ("istio-system/default", "own-ca", Some(fp(&mesh_ca))),
            ("openshift-ingress/openshift-gateway", "own-ca", Some(fp(&gateway_ca))),
        ]
    );
    assert_eq!(report.istiods[0].namespaces, ["bookinfo", "istio-system"], "labelled and its own; not 'unmeshed'");
    assert_eq!(report.istiods[1].namespaces, ["openshift-ingress"]);
    // Each mesh alone is fine; across them, every namespace is named with the root it lacks.
    let statuses: Vec<_> = report.pairs.iter().map(|p| (p.meshes.clone(), p.status)).collect();
    assert_eq!(statuses.iter().filter(|(_, s)| *s == PairStatus::Ok).count(), 2, "{statuses:?}");
    let split = report.pairs.iter().find(|p| p.status == PairStatus::Split).unwrap();
    assert_eq!(split.meshes, ["istio-system/default", "openshift-ingress/openshift-gateway"]);
    assert_eq!(split.reasons.len(), 3, "{:?}", split.reasons);
    for (ns, lacks) in [("bookinfo", &gateway_ca), ("istio-system", &gateway_ca), ("openshift-ingress", &mesh_ca)] {
        assert!(
            split.reasons.iter().any(|r| r.starts_with(&format!("{ns}: ")) && r.contains(short(&fp(lacks)))),
            "{ns}: {:?}",
            split.reasons
        );
    }
    assert!(
        report.advice.iter().any(|a| a.starts_with("Put every mesh under one root with meshroot")),
        "{:?}",
        report.advice
    );
    // Both roots are listed, each with the mesh it issues for.
    assert_eq!(report.roots.len(), 2);
    assert!(
        report
            .roots
            .iter()
            .all(|r| r.issues_for.len() == 1 && !r.meshroot_signs && r.subject.contains("meshroot root CA"))
    );
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["verdict"], "split");
    assert_eq!(json["pairs"][1]["status"], "split");
    let table = render::table(&report);
    assert!(table.starts_with("trust is split"), "{table}");
    assert!(table.contains("SPLIT    istio-system/default <-> openshift-ingress/openshift-gateway"), "{table}");
}

/// After docs/openshift.md: the mesh istiod's CA is off (meshroot signs), the gateway istiod
/// signs with meshroot's cacerts, and the bundles still hold the old roots.
fn migrated(meshroot_root: &Authority, old: &[&Authority]) -> Snapshot {
    let gateway_intermediate = intermediate(meshroot_root, "gateway-api");
    let mut bundle: Vec<&Authority> = vec![meshroot_root];
    bundle.extend_from_slice(old);
    let cacerts = CaMode::Cacerts {
        material: CaMaterial::Found {
            signer: cert(&gateway_intermediate),
            chain: vec![cert(&gateway_intermediate), cert(meshroot_root)],
            roots: bundle.iter().map(|a| cert(a)).collect(),
        },
        managed_by_meshroot: true,
    };
    let mut snapshot = cluster(CaMode::External, cacerts);
    snapshot.istiods[0].ca_address = Some("meshroot.meshroot.svc:15012".into());
    for ns in ["istio-system", "bookinfo"] {
        configmap(&mut snapshot, ns, DEFAULT_ROOT_CONFIGMAP, &bundle);
    }
    configmap(&mut snapshot, "openshift-ingress", GATEWAY_CM, &bundle);
    snapshot.meshroot = Meshroot {
        root_secret: "meshroot/meshroot-root-ca".into(),
        signing_root: SigningRoot::Known(cert(meshroot_root)),
        meshes: vec![
            mesh("service-mesh", "istio-system", &[], MeshMode::External, DEFAULT_ROOT_CONFIGMAP),
            mesh("gateway-api", "openshift-ingress", &["openshift-gateway"], MeshMode::PluginCa, GATEWAY_CM),
        ],
    };
    snapshot
}

#[test]
fn both_meshes_under_meshroot_have_one_root_and_the_old_roots_are_named_for_retirement() {
    let (new_root, old_mesh, old_gateway) = (root(), root(), root());
    let snapshot = migrated(&new_root, &[&old_mesh, &old_gateway]);
    let report = diagnose(&snapshot);
    assert_eq!(report.verdict, Verdict::OneRoot, "{report:#?}");
    assert_eq!(report.verdict.exit_code(), 0);
    let fp = sha256_hex(new_root.certificate());
    assert!(report.summary.contains(short(&fp)), "{}", report.summary);
    assert!(report.istiods.iter().all(|i| i.issuing_root.as_deref() == Some(fp.as_str())));
    assert_eq!(report.istiods[0].ca, "meshroot, Mesh service-mesh (meshroot.meshroot.svc:15012)");
    assert_eq!(report.istiods[1].ca, "cacerts written by meshroot");
    assert!(report.pairs.iter().all(|p| p.status == PairStatus::Ok && p.reasons.is_empty()));
    let meshroot_row = &report.roots[0];
    assert!(meshroot_row.meshroot_signs && meshroot_row.fingerprint == fp && meshroot_row.issues_for.len() == 2);
    let retire = report.advice.iter().find(|a| a.starts_with("Roots no mesh issues under")).unwrap();
    for old in [&old_mesh, &old_gateway] {
        assert!(retire.contains(short(&sha256_hex(old.certificate()))), "{retire}");
    }
    assert!(!retire.contains(short(&fp)), "the signing root is not to be retired: {retire}");
}

#[test]
fn a_namespace_meshroot_does_not_reach_is_named_as_a_straggler() {
    let new_root = root();
    let old = root();
    let mut snapshot = migrated(&new_root, &[&old]);
    // bookinfo still holds only the old root (say, the Mesh's selector does not match it).
    configmap(&mut snapshot, "bookinfo", DEFAULT_ROOT_CONFIGMAP, &[&old]);
    let report = diagnose(&snapshot);
    assert_eq!(report.verdict, Verdict::Split);
    let within = report.pairs.iter().find(|p| p.meshes[0] == p.meshes[1] && p.meshes[0] == "istio-system/default");
    let within = within.unwrap();
    assert_eq!(within.status, PairStatus::Split, "bookinfo refuses its own mesh's new certificates");
    assert!(within.reasons[0].contains("refuse their own mesh's certificates"), "{:?}", within.reasons);
    let advice = report.advice.iter().find(|a| a.starts_with("bookinfo/istio-ca-root-cert")).unwrap();
    assert!(
        advice.contains("meshroot writes it for Mesh service-mesh") && advice.contains("namespaceSelector"),
        "{advice}"
    );
    // A namespace with no root ConfigMap at all is named too.
    snapshot.configmaps.remove(&("bookinfo".to_string(), DEFAULT_ROOT_CONFIGMAP.to_string()));
    let report = diagnose(&snapshot);
    assert_eq!(report.verdict, Verdict::Split);
    let row = report.trust.iter().find(|t| t.namespace == "bookinfo").unwrap();
    assert!(row.problem.as_deref().unwrap().contains("does not exist"), "{row:?}");
}

#[test]
fn an_istiod_still_on_its_own_ca_beside_meshroot_is_told_to_turn_it_off() {
    let (new_root, old) = (root(), root());
    let mut snapshot = migrated(&new_root, &[&old]);
    snapshot.istiods[0].ca = own_ca(&old);
    let report = diagnose(&snapshot);
    // The bundles hold the old root, so mTLS still works, across two roots.
    assert_eq!(report.verdict, Verdict::Trusted, "{report:#?}");
    assert_eq!(report.verdict.exit_code(), 0);
    let advice = report.advice.iter().find(|a| a.starts_with("istio-system/default: ")).unwrap();
    assert!(advice.contains("still signs with its own CA") && advice.contains("ENABLE_CA_SERVER=false"), "{advice}");
    // A namespace lacking meshroot's root is istiod's to fix while istiod's CA is on: it writes
    // that ConfigMap, not meshroot.
    configmap(&mut snapshot, "bookinfo", DEFAULT_ROOT_CONFIGMAP, &[&old]);
    let report = diagnose(&snapshot);
    assert_eq!(report.verdict, Verdict::Split);
    let advice = report.advice.iter().find(|a| a.starts_with("bookinfo/istio-ca-root-cert")).unwrap();
    assert!(advice.contains("istiod istio-system/istiod writes it from its own CA"), "{advice}");
}

#[test]
fn an_external_ca_the_doctor_cannot_see_leaves_trust_unconfirmed() {
    let mesh_ca = root();
    let mut snapshot = cluster(CaMode::External, own_ca(&mesh_ca));
    snapshot.istiods[0].ca_address = Some("vault-ca.vault.svc:15012".into());
    configmap(&mut snapshot, "istio-system", DEFAULT_ROOT_CONFIGMAP, &[&mesh_ca]);
    configmap(&mut snapshot, "bookinfo", DEFAULT_ROOT_CONFIGMAP, &[&mesh_ca]);
    configmap(&mut snapshot, "openshift-ingress", GATEWAY_CM, &[&mesh_ca]);
    let report = diagnose(&snapshot);
    assert_eq!(report.verdict, Verdict::Unconfirmed);
    assert_eq!(report.verdict.exit_code(), 3);
    let why = report.istiods[0].issuing_root_unknown.as_deref().unwrap();
    assert!(why.contains("no meshroot Mesh names istio-system") && why.contains("vault-ca.vault.svc:15012"), "{why}");
    // With meshroot's Mesh but its root Secret elsewhere, the doctor says where it looked.
    snapshot.meshroot.meshes.push(mesh("m", "istio-system", &[], MeshMode::External, DEFAULT_ROOT_CONFIGMAP));
    snapshot.meshroot.root_secret = "meshroot/meshroot-root-ca".into();
    let report = diagnose(&snapshot);
    let why = report.istiods[0].issuing_root_unknown.clone().unwrap();
    assert!(why.contains("meshroot/meshroot-root-ca does not exist") && why.contains("--namespace"), "{why}");
    assert!(
        report.advice.iter().any(|a| a.starts_with("meshroot's Meshes exist, but its root Secret")),
        "{:?}",
        report.advice
    );
    // A PluginCA Mesh for an istiod whose CA is off: nothing signs.
    snapshot.meshroot.meshes[0].mode = MeshMode::PluginCa;
    let why = diagnose(&snapshot).istiods[0].issuing_root_unknown.clone().unwrap();
    assert!(why.contains("nothing signs"), "{why}");
}

#[test]
fn a_cacerts_chain_is_followed_by_signatures_not_names() {
    let real = root();
    // Same subject as the real root, another key: a name match alone would pick it.
    let impostor = root();
    assert_eq!(real.subject(), impostor.subject());
    let upper = intermediate(&real, "upper");
    let lower = intermediate(&upper, "lower");
    let material = |roots: Vec<CertificateDer<'static>>| CaMaterial::Found {
        signer: cert(&lower),
        chain: vec![cert(&lower), cert(&upper)],
        roots,
    };
    let ca = |roots| CaMode::Cacerts { material: material(roots), managed_by_meshroot: false };
    let mut snapshot = cluster(ca(vec![cert(&impostor), cert(&real)]), own_ca(&real));
    let report = diagnose(&snapshot);
    assert_eq!(report.istiods[0].issuing_root.as_deref(), Some(sha256_hex(real.certificate()).as_str()));
    assert_eq!(report.istiods[0].ca, "plugged-in cacerts");
    // Without the real root among its roots, the chain leads nowhere.
    snapshot.istiods[0].ca = ca(vec![cert(&impostor)]);
    let report = diagnose(&snapshot);
    let why = report.istiods[0].issuing_root_unknown.as_deref().unwrap();
    assert_eq!(why, "ca-cert.pem of Secret istio-system/cacerts does not chain to a root it names");
}

#[test]
fn namespaces_join_a_mesh_as_istio_reads_their_labels() {
    let ca = root();
    let mut snapshot = cluster(own_ca(&ca), own_ca(&ca));
    for (name, labels) in [
        ("rev-labelled", vec![("istio.io/rev", "openshift-gateway")]),
        ("ambient", vec![("istio.io/dataplane-mode", "ambient")]),
        ("injection-wins", vec![("istio-injection", "enabled"), ("istio.io/rev", "openshift-gateway")]),
        ("disabled", vec![("istio-injection", "disabled")]),
        // Istio's revision webhooks skip a namespace that opted out of injection.
        ("opted-out", vec![("istio-injection", "disabled"), ("istio.io/rev", "openshift-gateway")]),
        ("tagged", vec![("istio.io/rev", "stable")]),
    ] {
        let labels = labels.into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        snapshot.namespaces.insert(name.into(), labels);
    }
    snapshot.revision_tags.insert("stable".into(), "openshift-gateway".into());
    let report = diagnose(&snapshot);
    assert_eq!(report.istiods[0].namespaces, ["ambient", "bookinfo", "injection-wins", "istio-system"]);
    assert_eq!(report.istiods[1].namespaces, ["openshift-ingress", "rev-labelled", "tagged"]);
}

#[test]
fn a_namespace_labelled_for_a_revision_no_istiod_serves_leaves_trust_unconfirmed() {
    let ca = root();
    let mut snapshot = cluster(own_ca(&ca), own_ca(&ca));
    for (ns, cm) in [
        ("istio-system", DEFAULT_ROOT_CONFIGMAP),
        ("bookinfo", DEFAULT_ROOT_CONFIGMAP),
        ("openshift-ingress", GATEWAY_CM),
    ] {
        configmap(&mut snapshot, ns, cm, &[&ca]);
    }
    assert_eq!(diagnose(&snapshot).verdict, Verdict::OneRoot);
    let labels = [("istio.io/rev".to_string(), "canary".to_string())].into_iter().collect();
    snapshot.namespaces.insert("reviews-canary".into(), labels);
    let report = diagnose(&snapshot);
    assert_eq!(report.verdict, Verdict::Unconfirmed);
    assert_eq!(report.summary, "cannot confirm trust: 1 namespace is labelled for a revision no istiod found serves");
    assert!(
        report.advice.iter().any(|a| a.starts_with("namespace reviews-canary is labelled for revision canary")),
        "{:?}",
        report.advice
    );
}

#[test]
fn a_mesh_writing_another_configmap_than_istiod_reads_is_pointed_out() {
    let (new_root, old) = (root(), root());
    let mut snapshot = migrated(&new_root, &[&old]);
    // A PluginCA mesh's istiod writes its root ConfigMap itself: no advice for it.
    snapshot.meshroot.meshes[1].root_configmap = DEFAULT_ROOT_CONFIGMAP.into();
    assert!(!diagnose(&snapshot).advice.iter().any(|a| a.contains("spec.rootConfigMapName")));
    snapshot.meshroot.meshes[0].root_configmap = "mesh-roots".into();
    let report = diagnose(&snapshot);
    let advice: Vec<_> = report.advice.iter().filter(|a| a.contains("spec.rootConfigMapName")).collect();
    assert_eq!(advice.len(), 1, "{advice:?}");
    assert!(
        advice[0].contains(&format!("set spec.rootConfigMapName: {DEFAULT_ROOT_CONFIGMAP} on Mesh service-mesh")),
        "{}",
        advice[0]
    );
}

#[test]
fn no_istiod_is_not_a_healthy_verdict() {
    let report = diagnose(&Snapshot::default());
    assert_eq!(report.verdict, Verdict::NoIstiod);
    assert_eq!(report.verdict.exit_code(), 3);
    assert!(report.summary.contains("app=istiod"));
}

#[test]
fn different_trust_domains_split_unless_each_aliases_the_other() {
    let ca = root();
    let mut snapshot = cluster(own_ca(&ca), own_ca(&ca));
    snapshot.istiods[1].trust_domain = "gateway.local".into();
    for (ns, cm) in [
        ("istio-system", DEFAULT_ROOT_CONFIGMAP),
        ("bookinfo", DEFAULT_ROOT_CONFIGMAP),
        ("openshift-ingress", GATEWAY_CM),
    ] {
        configmap(&mut snapshot, ns, cm, &[&ca]);
    }
    let report = diagnose(&snapshot);
    assert_eq!(report.verdict, Verdict::Split, "one root, but each refuses the other's SPIFFE IDs");
    let split = report.pairs.iter().find(|p| p.status == PairStatus::Split).unwrap();
    assert_eq!(split.reasons.len(), 2, "{:?}", split.reasons);
    assert!(split.reasons[0].contains("does not list gateway.local in its trustDomainAliases"), "{:?}", split.reasons);
    assert!(
        report.advice.iter().any(|a| a.contains("trustDomainAliases") && a.contains("cluster.local, gateway.local"))
    );
    // One alias is not enough: each side must accept the other's.
    snapshot.istiods[0].trust_domain_aliases = vec!["gateway.local".into()];
    assert_eq!(diagnose(&snapshot).verdict, Verdict::Split);
    snapshot.istiods[1].trust_domain_aliases = vec!["cluster.local".into()];
    assert_eq!(diagnose(&snapshot).verdict, Verdict::OneRoot);
}

#[test]
fn a_root_configmap_without_roots_is_reported() {
    assert!(matches!(Bundle::parse(None), Bundle::Invalid(why) if why == "no root-cert.pem"));
    assert!(matches!(Bundle::parse(Some("  \n")), Bundle::Invalid(_)));
    assert!(
        matches!(Bundle::parse(Some("not pem")), Bundle::Invalid(why) if why.contains("holds no certificate") || why.contains("does not parse"))
    );
    let ca = root();
    assert!(matches!(Bundle::parse(Some(ca.certificate_pem())), Bundle::Roots(r) if r.len() == 1));
}
