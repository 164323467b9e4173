//! Judges a [`Snapshot`]: which root each mesh issues under, which roots each mesh namespace
//! trusts, and so which pairs of meshes can complete mutual TLS. No I/O.
//!
//! Meshes A and B can complete mutual TLS when every namespace of A trusts the root B issues
//! under, and every namespace of B the root A issues under. A mesh is paired with itself too:
//! a namespace that does not trust its own mesh's root breaks mTLS inside the mesh.

use super::{Bundle, CaMaterial, CaMode, Istiod, Meshroot, SigningRoot, Snapshot};
use crate::api::mesh::MeshMode;
use crate::pki::authority::parse_certificate;
use crate::pki::chain::sha256_hex;
use crate::pki::path_to_root;
use rustls_pki_types::CertificateDer;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// The doctor's conclusion.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Every mesh issues under one root, and every mesh namespace trusts it.
    OneRoot,
    /// Meshes issue under several roots, but every namespace trusts all of them.
    Trusted,
    /// Some pair of meshes cannot complete mutual TLS.
    Split,
    /// No pair is known to fail, but some mesh's root could not be seen.
    Unconfirmed,
    /// No istiod was found.
    NoIstiod,
}

impl Verdict {
    /// The process's exit status: 0 when mutual TLS works everywhere, 2 when trust is split,
    /// 3 when it cannot be confirmed.
    pub fn exit_code(self) -> u8 {
        match self {
            Verdict::OneRoot | Verdict::Trusted => 0,
            Verdict::Split => 2,
            Verdict::Unconfirmed | Verdict::NoIstiod => 3,
        }
    }
}

/// The report, as printed (table) or serialised (`-o json`).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// The conclusion.
    pub verdict: Verdict,
    /// The conclusion in one sentence.
    pub summary: String,
    /// Every istiod and how its mesh gets certificates.
    pub istiods: Vec<IstiodRow>,
    /// Every root seen, by SHA-256 fingerprint.
    pub roots: Vec<RootRow>,
    /// The root ConfigMap of every mesh namespace.
    pub trust: Vec<TrustRow>,
    /// Every pair of meshes (and each mesh with itself).
    pub pairs: Vec<PairRow>,
    /// What to change, most important first.
    pub advice: Vec<String>,
}

/// How an istiod's mesh gets its certificates.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IstiodRow {
    /// `namespace/revision`.
    pub mesh: String,
    /// istiod's namespace.
    pub namespace: String,
    /// Its Deployment.
    pub deployment: String,
    /// Its revision.
    pub revision: String,
    /// `own-ca`, `cacerts` or `external`.
    pub ca_mode: &'static str,
    /// The CA in words.
    pub ca: String,
    /// Its mesh's trust domain.
    pub trust_domain: String,
    /// The ConfigMap its workloads read their roots from.
    pub root_configmap: String,
    /// Fingerprint of the root its workloads' certificates chain to.
    pub issuing_root: Option<String>,
    /// Why that root is unknown.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuing_root_unknown: Option<String>,
    /// Its mesh's namespaces: istiod's own and those labelled for its revision.
    pub namespaces: Vec<String>,
}

/// A root certificate.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RootRow {
    /// SHA-256 of its DER, lowercase hex.
    pub fingerprint: String,
    /// Its subject.
    pub subject: String,
    /// Its expiry, RFC 3339.
    pub not_after: String,
    /// The meshes whose certificates chain to it.
    pub issues_for: Vec<String>,
    /// Whether it is meshroot's signing root.
    pub meshroot_signs: bool,
}

/// One root ConfigMap of a mesh namespace.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TrustRow {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub configmap: String,
    /// The meshes whose workloads there read it.
    pub meshes: Vec<String>,
    /// Fingerprints of the roots it holds.
    pub roots: Vec<String>,
    /// What is wrong with it, if anything.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// Whether two meshes can complete mutual TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PairStatus {
    /// Both trust each other's root everywhere.
    Ok,
    /// Somewhere one refuses the other.
    Split,
    /// A root involved could not be seen.
    Unknown,
}

/// Two meshes (or one with itself).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PairRow {
    /// The two meshes, `namespace/revision`; the same twice for a mesh with itself.
    pub meshes: [String; 2],
    /// The verdict for the pair.
    pub status: PairStatus,
    /// Why it is not `ok`.
    pub reasons: Vec<String>,
}

/// The first 16 hex digits of a fingerprint: enough to tell roots apart in a table.
pub fn short(fingerprint: &str) -> &str {
    fingerprint.get(..16).unwrap_or(fingerprint)
}

/// One mesh as judged: its istiod, the root it issues under, its namespaces.
struct MeshView<'a> {
    istiod: &'a Istiod,
    id: String,
    issuing: Result<CertificateDer<'static>, String>,
    members: Vec<String>,
}

impl MeshView<'_> {
    fn issuing_fingerprint(&self) -> Option<String> {
        self.issuing.as_ref().ok().map(|c| sha256_hex(c))
    }
}

/// Judges `snapshot`.
pub fn diagnose(snapshot: &Snapshot) -> Report {
    let meshes: Vec<MeshView<'_>> = snapshot
        .istiods
        .iter()
        .map(|istiod| MeshView {
            istiod,
            id: istiod.mesh_id(),
            issuing: issuing_root(istiod, &snapshot.meshroot),
            members: members(istiod, snapshot),
        })
        .collect();
    let meshroot_root = match &snapshot.meshroot.signing_root {
        SigningRoot::Known(c) => Some(c),
        _ => None,
    };
    let pairs = pairs(&meshes, snapshot);
    let trust = trust_rows(&meshes, snapshot);
    let roots = root_rows(&meshes, snapshot, meshroot_root);
    let unserved = unserved(&meshes, snapshot);
    let verdict = verdict(&meshes, &pairs, !unserved.is_empty());
    let summary = summary(verdict, &meshes, &pairs, &unserved);
    let mut advice = advice(verdict, &meshes, snapshot, &trust, &roots, meshroot_root);
    for (namespace, revision) in &unserved {
        advice.push(format!(
            "namespace {namespace} is labelled for revision {revision}, which no istiod found serves: its workloads are not checked (is that istiod's Deployment labelled app=istiod?)"
        ));
    }
    Report {
        verdict,
        summary,
        istiods: meshes.iter().map(|m| istiod_row(m, &snapshot.meshroot)).collect(),
        roots,
        trust,
        pairs,
        advice,
    }
}

/// The root `istiod`'s workloads' certificates chain to, or why it cannot be known.
fn issuing_root(istiod: &Istiod, meshroot: &Meshroot) -> Result<CertificateDer<'static>, String> {
    let from_secret = |material: &CaMaterial, secret: &str| match material {
        CaMaterial::Unavailable(why) => Err(why.clone()),
        CaMaterial::Found { signer, chain, roots } => {
            path_to_root(signer, chain, roots).map(|(root, _)| root).ok_or_else(|| {
                format!("ca-cert.pem of Secret {}/{secret} does not chain to a root it names", istiod.namespace)
            })
        }
    };
    match &istiod.ca {
        CaMode::Own(material) => from_secret(material, "istio-ca-secret"),
        CaMode::Cacerts { material, .. } => from_secret(material, "cacerts"),
        CaMode::External => {
            let address = istiod.ca_address.as_deref().unwrap_or("the caAddress its workloads are given");
            let Some(mesh) = meshroot.mesh_for(istiod) else {
                return Err(format!(
                    "its CA server is off (ENABLE_CA_SERVER=false) and no meshroot Mesh names {}; the doctor cannot see the root of the CA at {address}",
                    istiod.namespace
                ));
            };
            if mesh.mode == MeshMode::PluginCa {
                return Err(format!(
                    "Mesh {} is PluginCA (istiod signs with meshroot's cacerts), but istiod's CA server is off: nothing signs for this mesh",
                    mesh.name
                ));
            }
            match &meshroot.signing_root {
                SigningRoot::Known(root) => Ok(root.clone()),
                SigningRoot::Unknown(why) => Err(why.clone()),
                SigningRoot::Absent => Err(format!(
                    "Mesh {} names this istiod, but meshroot's root Secret {} does not exist (is meshroot installed in another namespace? see --namespace)",
                    mesh.name, meshroot.root_secret
                )),
            }
        }
    }
}

/// The revision a namespace's labels put its workloads in, as Istio reads them:
/// `istio-injection=enabled` is the default revision, any other value opts out of injection;
/// without it `istio.io/rev` decides; ambient namespaces use `istio.io/rev` or the default.
/// A revision tag is resolved to the revision it points at.
fn namespace_revision(labels: &BTreeMap<String, String>, tags: &BTreeMap<String, String>) -> Option<String> {
    let label = |key: &str| labels.get(key).map(String::as_str);
    let injected = match label("istio-injection") {
        Some("enabled") => Some("default"),
        Some(_) => None,
        None => label("istio.io/rev"),
    };
    let ambient =
        || (label("istio.io/dataplane-mode") == Some("ambient")).then(|| label("istio.io/rev").unwrap_or("default"));
    let revision = injected.or_else(ambient)?;
    Some(tags.get(revision).map_or(revision, String::as_str).to_string())
}

/// The namespaces of `istiod`'s mesh: its own, and those labelled for its revision.
fn members(istiod: &Istiod, snapshot: &Snapshot) -> Vec<String> {
    snapshot
        .namespaces
        .iter()
        .filter(|(name, labels)| {
            **name == istiod.namespace
                || namespace_revision(labels, &snapshot.revision_tags).is_some_and(|rev| rev == istiod.revision)
        })
        .map(|(name, _)| name.clone())
        .collect()
}

/// Namespaces labelled for a revision no istiod found serves, with that revision.
fn unserved(meshes: &[MeshView<'_>], snapshot: &Snapshot) -> Vec<(String, String)> {
    snapshot
        .namespaces
        .iter()
        .filter_map(|(name, labels)| {
            let revision = namespace_revision(labels, &snapshot.revision_tags)?;
            let served = meshes.iter().any(|m| m.istiod.revision == revision || m.istiod.namespace == *name);
            (!served).then(|| (name.clone(), revision))
        })
        .collect()
}

/// Which root fingerprints namespace `namespace` trusts for mesh `mesh`, or what is wrong.
fn trusted_in(mesh: &MeshView<'_>, namespace: &str, snapshot: &Snapshot) -> Result<Vec<String>, String> {
    let configmap = &mesh.istiod.root_configmap;
    match snapshot.configmaps.get(&(namespace.to_string(), configmap.clone())) {
        None => Err(format!(
            "ConfigMap {namespace}/{configmap} does not exist, so {}'s workloads there have no roots",
            mesh.id
        )),
        Some(Bundle::Invalid(why)) => Err(format!("ConfigMap {namespace}/{configmap}: {why}")),
        Some(Bundle::Roots(roots)) => Ok(roots.iter().map(|r| sha256_hex(r)).collect()),
    }
}

fn pairs(meshes: &[MeshView<'_>], snapshot: &Snapshot) -> Vec<PairRow> {
    let mut rows = Vec::new();
    for (i, a) in meshes.iter().enumerate() {
        for b in meshes.iter().skip(i) {
            let (mut reasons, mut unknown) = (Vec::new(), Vec::new());
            let directions: &[(&MeshView<'_>, &MeshView<'_>)] =
                if a.id == b.id { &[(a, a)] } else { &[(a, b), (b, a)] };
            for (truster, issuer) in directions {
                let Some(root) = issuer.issuing_fingerprint() else {
                    if let Err(why) = &issuer.issuing {
                        unknown.push(format!("{}'s root is unknown: {why}", issuer.id));
                    }
                    continue;
                };
                for namespace in &truster.members {
                    match trusted_in(truster, namespace, snapshot) {
                        Err(problem) => reasons.push(problem),
                        Ok(trusted) if !trusted.contains(&root) => {
                            let whose = if truster.id == issuer.id {
                                "their own mesh's certificates".to_string()
                            } else {
                                format!("{}'s", issuer.id)
                            };
                            reasons.push(format!(
                                "{namespace}: {} lacks {}'s root {}, so {}'s workloads there refuse {whose}",
                                truster.istiod.root_configmap,
                                issuer.id,
                                short(&root),
                                truster.id
                            ));
                        }
                        Ok(_) => {}
                    }
                }
            }
            // Istio's proxies check a peer's SPIFFE ID in their own trust domain and its aliases.
            for (truster, peer) in directions {
                let domain = &peer.istiod.trust_domain;
                if *domain != truster.istiod.trust_domain && !truster.istiod.trust_domain_aliases.contains(domain) {
                    reasons.push(format!(
                        "{} (trust domain {}) does not list {domain} in its trustDomainAliases, so its proxies refuse {}'s identities",
                        truster.id, truster.istiod.trust_domain, peer.id
                    ));
                }
            }
            reasons.dedup();
            let status = if !reasons.is_empty() {
                PairStatus::Split
            } else if !unknown.is_empty() {
                PairStatus::Unknown
            } else {
                PairStatus::Ok
            };
            reasons.extend(unknown);
            rows.push(PairRow { meshes: [a.id.clone(), b.id.clone()], status, reasons });
        }
    }
    rows
}

fn trust_rows(meshes: &[MeshView<'_>], snapshot: &Snapshot) -> Vec<TrustRow> {
    let mut rows: BTreeMap<(String, String), TrustRow> = BTreeMap::new();
    for mesh in meshes {
        for namespace in &mesh.members {
            let key = (namespace.clone(), mesh.istiod.root_configmap.clone());
            let row = rows.entry(key).or_insert_with(|| {
                let (roots, problem) = match trusted_in(mesh, namespace, snapshot) {
                    Ok(roots) => (roots, None),
                    Err(problem) => (Vec::new(), Some(problem)),
                };
                TrustRow {
                    namespace: namespace.clone(),
                    configmap: mesh.istiod.root_configmap.clone(),
                    meshes: Vec::new(),
                    roots,
                    problem,
                }
            });
            row.meshes.push(mesh.id.clone());
        }
    }
    rows.into_values().collect()
}

fn root_rows(
    meshes: &[MeshView<'_>],
    snapshot: &Snapshot,
    meshroot_root: Option<&CertificateDer<'static>>,
) -> Vec<RootRow> {
    let mut order: Vec<&CertificateDer<'static>> = Vec::new();
    order.extend(meshroot_root);
    order.extend(meshes.iter().filter_map(|m| m.issuing.as_ref().ok()));
    for bundle in snapshot.configmaps.values() {
        if let Bundle::Roots(roots) = bundle {
            order.extend(roots);
        }
    }
    let signing = meshroot_root.map(|c| sha256_hex(c));
    let mut seen = BTreeSet::new();
    let mut rows = Vec::new();
    for cert in order {
        let fingerprint = sha256_hex(cert);
        if !seen.insert(fingerprint.clone()) {
            continue;
        }
        let (subject, not_after) = match parse_certificate(cert) {
            Ok(x) => (x.subject().to_string(), crate::pki::rfc3339(x.validity().not_after.to_datetime())),
            Err(e) => (format!("(does not parse: {e})"), String::new()),
        };
        let issues_for =
            meshes.iter().filter(|m| m.issuing_fingerprint().as_ref() == Some(&fingerprint)).map(|m| m.id.clone());
        rows.push(RootRow {
            meshroot_signs: signing.as_ref() == Some(&fingerprint),
            issues_for: issues_for.collect(),
            fingerprint,
            subject,
            not_after,
        });
    }
    rows
}

fn verdict(meshes: &[MeshView<'_>], pairs: &[PairRow], unchecked_namespaces: bool) -> Verdict {
    if meshes.is_empty() {
        return Verdict::NoIstiod;
    }
    if pairs.iter().any(|p| p.status == PairStatus::Split) {
        return Verdict::Split;
    }
    if unchecked_namespaces || pairs.iter().any(|p| p.status == PairStatus::Unknown) {
        return Verdict::Unconfirmed;
    }
    let issuing: BTreeSet<_> = meshes.iter().filter_map(MeshView::issuing_fingerprint).collect();
    if issuing.len() == 1 { Verdict::OneRoot } else { Verdict::Trusted }
}

fn summary(verdict: Verdict, meshes: &[MeshView<'_>], pairs: &[PairRow], unserved: &[(String, String)]) -> String {
    let count = |status| pairs.iter().filter(|p| p.status == status).count();
    let plural = |n: usize| if n == 1 { "pair" } else { "pairs" };
    match verdict {
        Verdict::OneRoot => {
            let root = meshes.iter().find_map(MeshView::issuing_fingerprint).unwrap_or_default();
            format!("one root everywhere: every mesh issues under {} and every mesh namespace trusts it", short(&root))
        }
        Verdict::Trusted => {
            let roots: BTreeSet<_> = meshes.iter().filter_map(MeshView::issuing_fingerprint).collect();
            format!("mutual TLS works between every pair of meshes, across {} roots", roots.len())
        }
        Verdict::Split => {
            let n = count(PairStatus::Split);
            format!("trust is split: {n} {} of meshes cannot complete mutual TLS", plural(n))
        }
        Verdict::Unconfirmed if count(PairStatus::Unknown) == 0 => {
            let n = unserved.len();
            let what = if n == 1 { "namespace is" } else { "namespaces are" };
            format!("cannot confirm trust: {n} {what} labelled for a revision no istiod found serves")
        }
        Verdict::Unconfirmed => {
            let n = count(PairStatus::Unknown);
            format!("cannot confirm trust: {n} {} of meshes depend on a root the doctor cannot see", plural(n))
        }
        Verdict::NoIstiod => format!("no istiod found (no Deployment labelled {})", super::ISTIOD_SELECTOR),
    }
}

fn ca_words(istiod: &Istiod, meshroot: &Meshroot) -> (&'static str, String) {
    match &istiod.ca {
        CaMode::Own(_) => ("own-ca", "istiod's self-signed CA (istio-ca-secret)".into()),
        CaMode::Cacerts { managed_by_meshroot: true, .. } => ("cacerts", "cacerts written by meshroot".into()),
        CaMode::Cacerts { .. } => ("cacerts", "plugged-in cacerts".into()),
        CaMode::External => {
            let address = istiod.ca_address.as_deref().unwrap_or("caAddress not set in the mesh config");
            match meshroot.mesh_for(istiod) {
                Some(mesh) => ("external", format!("meshroot, Mesh {} ({address})", mesh.name)),
                None => ("external", format!("external CA ({address})")),
            }
        }
    }
}

fn istiod_row(mesh: &MeshView<'_>, meshroot: &Meshroot) -> IstiodRow {
    let (ca_mode, ca) = ca_words(mesh.istiod, meshroot);
    IstiodRow {
        mesh: mesh.id.clone(),
        namespace: mesh.istiod.namespace.clone(),
        deployment: mesh.istiod.deployment.clone(),
        revision: mesh.istiod.revision.clone(),
        ca_mode,
        ca,
        trust_domain: mesh.istiod.trust_domain.clone(),
        root_configmap: mesh.istiod.root_configmap.clone(),
        issuing_root: mesh.issuing_fingerprint(),
        issuing_root_unknown: mesh.issuing.as_ref().err().cloned(),
        namespaces: mesh.members.clone(),
    }
}

fn advice(
    verdict: Verdict,
    meshes: &[MeshView<'_>],
    snapshot: &Snapshot,
    trust: &[TrustRow],
    roots: &[RootRow],
    meshroot_root: Option<&CertificateDer<'static>>,
) -> Vec<String> {
    let meshroot = &snapshot.meshroot;
    let mut advice = snapshot.notes.clone();
    for mesh in meshes {
        for note in &mesh.istiod.notes {
            advice.push(format!("{}: {note}", mesh.id));
        }
    }
    match &meshroot.signing_root {
        SigningRoot::Absent if !meshroot.meshes.is_empty() => advice.push(format!(
            "meshroot's Meshes exist, but its root Secret {} does not: is meshroot running (with root.mode=generate it creates the root when it first starts)? If it runs in another namespace, pass --namespace",
            meshroot.root_secret
        )),
        SigningRoot::Unknown(why) => advice.push(format!("meshroot: {why}")),
        _ => {}
    }
    let signing = meshroot_root.map(|c| sha256_hex(c));
    if verdict == Verdict::Split && !meshroot.installed() {
        let today: Vec<_> = meshes.iter().filter_map(MeshView::issuing_fingerprint).collect();
        let today: BTreeSet<_> = today.iter().map(|f| short(f)).collect();
        advice.push(format!(
            "Put every mesh under one root with meshroot (docs/openshift.md): install it, add today's roots ({}) to its bundle so running workloads keep working (step 1), then turn each istiod's CA off and point it at meshroot (step 3), or give an istiod that cannot be repointed a PluginCA Mesh (cacerts).",
            today.into_iter().collect::<Vec<_>>().join(", ")
        ));
    }
    if matches!(verdict, Verdict::Split | Verdict::Trusted | Verdict::Unconfirmed) && meshroot.installed() {
        for mesh in meshes {
            let issuing = mesh.issuing_fingerprint();
            if issuing.is_none() || issuing == signing {
                continue;
            }
            let id = &mesh.id;
            let istiod = format!("{}/{}", mesh.istiod.namespace, mesh.istiod.deployment);
            advice.push(match (meshroot.mesh_for(mesh.istiod), &mesh.istiod.ca) {
                (None, _) => format!(
                    "{id}: no Mesh names istiod's namespace {}; add one (docs/openshift.md step 2): External, or PluginCA for an istiod that cannot be repointed",
                    mesh.istiod.namespace
                ),
                (Some(m), CaMode::Cacerts { managed_by_meshroot: true, .. }) => format!(
                    "{id}: istiod {istiod} signs with meshroot's cacerts from before the current root; Mesh {} re-issues it: check its Ready condition, then restart istiod",
                    m.name
                ),
                (Some(m), _) if m.mode == MeshMode::PluginCa => format!(
                    "{id}: Mesh {} writes cacerts for istiod {istiod}, which does not use it yet: check the Mesh's Ready condition, then restart istiod",
                    m.name
                ),
                (Some(_), _) => format!(
                    "{id}: istiod {istiod} still signs with its own CA; set ENABLE_CA_SERVER=false and its caAddress to meshroot (docs/openshift.md step 3), then restart istiod and its workloads (step 4)"
                ),
            });
        }
    }
    // Each namespace whose root ConfigMap breaks a pair, once, with who writes it.
    let missing_somewhere = |row: &TrustRow| {
        row.problem.is_some()
            || meshes.iter().filter_map(MeshView::issuing_fingerprint).any(|root| !row.roots.contains(&root))
    };
    if verdict == Verdict::Split {
        for row in trust.iter().filter(|r| missing_somewhere(r)) {
            let owner = meshes.iter().find(|m| row.meshes.first() == Some(&m.id));
            // meshroot writes it only once istiod's CA is off; until then istiod does.
            let writer = owner
                .filter(|m| matches!(m.istiod.ca, CaMode::External))
                .and_then(|m| meshroot.mesh_for(m.istiod))
                .filter(|mesh| mesh.mode == MeshMode::External && mesh.root_configmap == row.configmap);
            let lacks: Vec<String> = meshes
                .iter()
                .filter_map(MeshView::issuing_fingerprint)
                .filter(|r| !row.roots.contains(r))
                .map(|r| short(&r).to_string())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            let what = row.problem.clone().unwrap_or_else(|| format!("lacks {}", lacks.join(", ")));
            advice.push(match (writer, owner) {
                (Some(mesh), _) => format!(
                    "{}/{}: {what}; meshroot writes it for Mesh {}: check that the Mesh's namespaceSelector matches namespace {}, and that its bundle holds every root in use (the root Secret's ca.crt)",
                    row.namespace, row.configmap, mesh.name, row.namespace
                ),
                (_, Some(owner)) => {
                    let istiod = format!("istiod {}/{}", owner.istiod.namespace, owner.istiod.deployment);
                    let fix = match &owner.istiod.ca {
                        CaMode::Own(_) => format!(
                            "{istiod} writes it from its own CA: move that istiod under meshroot (docs/openshift.md step 3)"
                        ),
                        CaMode::Cacerts { managed_by_meshroot: true, .. } => format!(
                            "{istiod} writes it from the cacerts meshroot keeps: meshroot puts its whole bundle there (check the Mesh's Ready condition and the root Secret's ca.crt), and istiod reads cacerts only when it starts: restart it"
                        ),
                        CaMode::Cacerts { .. } => format!(
                            "{istiod} writes it from its cacerts: add the missing roots to that Secret's root-cert.pem and restart istiod, or move it under meshroot"
                        ),
                        CaMode::External => format!(
                            "{istiod}'s CA is off and no meshroot Mesh writes it: whichever CA serves this mesh must distribute the missing roots"
                        ),
                    };
                    format!("{}/{}: {what}; {fix}", row.namespace, row.configmap)
                }
                _ => format!("{}/{}: {what}", row.namespace, row.configmap),
            });
        }
    }
    for mesh in meshes {
        // Only External meshes' root ConfigMaps are meshroot's to write; a PluginCA istiod
        // writes its own from cacerts.
        if let Some(m) = meshroot.mesh_for(mesh.istiod)
            && m.mode == MeshMode::External
            && m.root_configmap != mesh.istiod.root_configmap
        {
            advice.push(format!(
                "{}: Mesh {} writes ConfigMap {}, but istiod's workloads read {} (PILOT_CA_CERT_CONFIGMAP): set spec.rootConfigMapName: {} on Mesh {}",
                mesh.id, m.name, m.root_configmap, mesh.istiod.root_configmap, mesh.istiod.root_configmap, m.name
            ));
        }
    }
    let domains: BTreeSet<&str> = meshes.iter().map(|m| m.istiod.trust_domain.as_str()).collect();
    if domains.len() > 1 {
        advice.push(format!(
            "The meshes use different trust domains ({}): add each other's to meshConfig.trustDomainAliases, or move them to one trust domain",
            domains.into_iter().collect::<Vec<_>>().join(", ")
        ));
    }
    if matches!(verdict, Verdict::OneRoot | Verdict::Trusted) {
        let retired: Vec<&str> = roots
            .iter()
            .filter(|r| r.issues_for.is_empty() && !r.meshroot_signs)
            .map(|r| short(&r.fingerprint))
            .collect();
        if !retired.is_empty() {
            advice.push(format!(
                "Roots no mesh issues under are still trusted: {}. Old roots (kept for a migration, or a rotation before its finish step) can go once every workload has restarted (docs/openshift.md step 6, docs/rotation.md); a root added for an upcoming rotation stays",
                retired.join(", ")
            ));
        }
    }
    advice.dedup();
    advice
}
