//! Zero-downtime root rotation, end to end: a `meshroot serve` replica runs
//! in process against the fake API with an External mesh and a PluginCA
//! gateway, and `meshroot root generate/add/switch/finish` drive the root
//! Secret. After each step, every bundle meshroot publishes is read back and
//! every leaf of the old and new chains is verified against each of them.

use crate::support;

use fake_apiserver::FakeApi;
use meshroot::cmd::root::{RootAction, apply, generate};
use meshroot::pki::authority::issued_by;
use meshroot::pki::{Authority, KeyAlgorithm, PrivateKey, TrustBundle, pem};
use rustls_pki_types::CertificateDer;
use std::time::Duration;
use support::eventually_async;
use support::replica::{NS, ROOT_SECRET, ask, secret_text, start, world};
use time::OffsetDateTime;

const SECRET: &str = ROOT_SECRET;
const WORKLOAD: &str = "spiffe://cluster.local/ns/bookinfo/sa/reviews";

fn certs(pem_text: &str) -> Vec<CertificateDer<'static>> {
    pem::decode_certificates(pem_text.as_bytes(), 1 << 20).unwrap_or_default()
}

/// A leaf and the intermediates it needs.
#[derive(Clone)]
struct Leaf {
    what: String,
    chain: Vec<CertificateDer<'static>>,
}

/// Every trust bundle meshroot publishes, by where it is published.
async fn published_bundles(fake: &FakeApi, port: u16) -> Vec<(String, Vec<CertificateDer<'static>>)> {
    let mut out = Vec::new();
    for cm in fake.list("v1", "configmaps") {
        if cm["metadata"]["name"] == "istio-ca-root-cert" {
            let where_ = format!("ConfigMap {}/istio-ca-root-cert", cm["metadata"]["namespace"].as_str().unwrap());
            out.push((where_, certs(cm["data"]["root-cert.pem"].as_str().unwrap_or_default())));
        }
    }
    for (ns, name, key) in [
        (NS, "meshroot-intermediate-default", "ca.crt"),
        ("openshift-ingress", "cacerts", "root-cert.pem"),
        ("istio-system", "istiod-tls", "ca.crt"),
        (NS, SECRET, "ca.crt"),
    ] {
        let text = secret_text(fake, ns, name, key).unwrap_or_default();
        let mut roots = certs(&text);
        if name == SECRET {
            // The root Secret's own bundle: tls.crt plus ca.crt.
            roots.insert(0, certs(&secret_text(fake, ns, name, "tls.crt").unwrap())[0].clone());
        }
        out.push((format!("Secret {ns}/{name} {key}"), roots));
    }
    // Not ready yet counts as an empty bundle: it never matches.
    let response = workload_leaf(fake, port).await.map(|r| r.1).unwrap_or_default();
    out.push(("CreateCertificate's last element".into(), response));
    out
}

/// A workload certificate from the gRPC API, and the response's root bundle.
async fn workload_leaf(fake: &FakeApi, port: u16) -> Option<(Leaf, Vec<CertificateDer<'static>>)> {
    let response = ask(fake, port, "reviews-token", WORKLOAD).await.ok()?;
    let n = response.cert_chain.len();
    let chain: Vec<_> = response.cert_chain[..n - 1].iter().flat_map(|e| certs(e)).collect();
    let bundle = certs(&response.cert_chain[n - 1]);
    Some((Leaf { what: "workload (gRPC)".into(), chain }, bundle))
}

async fn workload(fake: &FakeApi, port: u16) -> Leaf {
    eventually_async("a workload certificate", async || workload_leaf(fake, port).await.map(|r| r.0)).await
}

/// What istiod of the PluginCA gateway would issue with its `cacerts`.
fn gateway_leaf(fake: &FakeApi) -> Leaf {
    let cert = secret_text(fake, "openshift-ingress", "cacerts", "ca-cert.pem").unwrap();
    let key = secret_text(fake, "openshift-ingress", "cacerts", "ca-key.pem").unwrap();
    let ca = Authority::from_pem(cert.as_bytes(), key.as_bytes()).unwrap();
    let leaf_key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let issued = meshroot::pki::profile::issue_workload(
        &ca,
        &leaf_key.spki_der(),
        "spiffe://cluster.local/ns/openshift-ingress/sa/gateway",
        time::Duration::hours(1),
        OffsetDateTime::now_utc(),
    )
    .unwrap();
    Leaf { what: "gateway (cacerts)".into(), chain: vec![issued.der, ca.certificate().clone()] }
}

/// istiod's serving certificate.
fn istiod_leaf(fake: &FakeApi) -> Leaf {
    Leaf {
        what: "istiod-tls".into(),
        chain: certs(&secret_text(fake, "istio-system", "istiod-tls", "tls.crt").unwrap()),
    }
}

fn verifies(leaf: &Leaf, roots: &[CertificateDer<'static>]) -> bool {
    let Ok(bundle) = TrustBundle::new(roots.to_vec()) else { return false };
    bundle.verify(&leaf.chain[0], &leaf.chain[1..], OffsetDateTime::now_utc()).is_ok()
}

fn root_cert(path: &std::path::Path) -> CertificateDer<'static> {
    certs(&std::fs::read_to_string(path).unwrap())[0].clone()
}

/// Waits until every published bundle holds exactly `roots`.
async fn bundles_converge(fake: &FakeApi, port: u16, roots: &[CertificateDer<'static>], step: &str) {
    let fingerprints = |certs: &[CertificateDer<'static>]| {
        let mut f: Vec<Vec<u8>> = certs.iter().map(|c| c.as_ref().to_vec()).collect();
        f.sort();
        f
    };
    let wanted = fingerprints(roots);
    eventually_async(step, async || {
        let all = published_bundles(fake, port).await;
        all.iter().all(|(_, b)| fingerprints(b) == wanted).then_some(())
    })
    .await;
}

fn check_all(leaves: &[Leaf], bundles: &[(String, Vec<CertificateDer<'static>>)], expect: bool, step: &str) {
    assert!(bundles.len() >= 7, "{step}: only {} bundles found", bundles.len());
    for leaf in leaves {
        for (where_, roots) in bundles {
            assert_eq!(verifies(leaf, roots), expect, "{step}: {} against {where_}", leaf.what);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_rotates_without_any_leaf_ever_failing_to_verify() {
    let fake = FakeApi::new();
    world(&fake);
    fake.add_service_account_token("reviews-token", "bookinfo", "reviews", None, &["istio-ca"]);
    let server = start(&fake, "meshroot-0").await;
    let port = server.grpc_addr.port();
    let old_root =
        certs(&eventually_async("the generated root", async || secret_text(&fake, NS, SECRET, "tls.crt")).await)[0]
            .clone();
    bundles_converge(&fake, port, std::slice::from_ref(&old_root), "step 0: one root everywhere").await;
    eventually_async("istiod-tls", async || secret_text(&fake, "istio-system", "istiod-tls", "tls.crt")).await;
    let mut old_leaves = vec![workload(&fake, port).await, gateway_leaf(&fake), istiod_leaf(&fake)];
    check_all(&old_leaves, &published_bundles(&fake, port).await, true, "step 0");

    // The new root, made by the CLI into files (the key 0600).
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("next");
    let client = || fake.client();
    generate(&out, KeyAlgorithm::EcdsaP256, time::Duration::days(3650)).unwrap();
    assert!(
        generate(&out, KeyAlgorithm::EcdsaP256, time::Duration::days(3650)).is_err(),
        "files are never overwritten"
    );
    let (cert_path, key_path) = (out.join("root-cert.pem"), out.join("root-key.pem"));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&key_path).unwrap().permissions().mode() & 0o777, 0o600);
    let new_root = root_cert(&cert_path);

    // Out of order: switching to a root nobody trusts yet, or finishing, is refused.
    let early =
        apply(client(), NS, SECRET, RootAction::Switch { cert: cert_path.clone(), key: Some(key_path.clone()) }).await;
    assert!(early.unwrap_err().to_string().contains("run `add` first"));
    let early =
        apply(client(), NS, SECRET, RootAction::Finish { leaf_lifetime: time::Duration::seconds(1), force: false })
            .await;
    assert!(early.unwrap_err().to_string().contains("nothing to finish"));

    // Step 1: both roots are trusted everywhere; the old one still signs.
    let said = apply(client(), NS, SECRET, RootAction::Add { cert: cert_path.clone() }).await.unwrap();
    assert!(said.contains("stage: added"), "{said}");
    bundles_converge(&fake, port, &[old_root.clone(), new_root.clone()], "step 1: both roots everywhere").await;
    let step1 = published_bundles(&fake, port).await;
    old_leaves.push(workload(&fake, port).await);
    check_all(&old_leaves, &step1, true, "step 1");
    assert!(issued_by(&old_root, old_leaves.last().unwrap().chain.last().unwrap()), "the old root still signs");

    // Step 2: the new root signs. Intermediates, cacerts and istiod-tls move under it.
    let said = apply(client(), NS, SECRET, RootAction::Switch { cert: cert_path.clone(), key: Some(key_path.clone()) })
        .await
        .unwrap();
    assert!(said.contains("stage: switched"), "{said}");
    let under_new = |fake: &FakeApi, ns: &str, name: &str, key: &str| {
        secret_text(fake, ns, name, key)
            .and_then(|t| certs(&t).into_iter().next())
            .is_some_and(|c| issued_by(&new_root, &c))
    };
    eventually_async("step 2: intermediates under the new root", async || {
        (under_new(&fake, NS, "meshroot-intermediate-default", "tls.crt")
            && under_new(&fake, "openshift-ingress", "cacerts", "ca-cert.pem"))
        .then_some(())
    })
    .await;
    let new_intermediate =
        certs(&secret_text(&fake, NS, "meshroot-intermediate-default", "tls.crt").unwrap())[0].clone();
    eventually_async("step 2: istiod-tls under the new intermediate", async || {
        istiod_leaf(&fake).chain.first().is_some_and(|leaf| issued_by(&new_intermediate, leaf)).then_some(())
    })
    .await;
    let new_workload = eventually_async("step 2: workloads signed under the new root", async || {
        let leaf = workload(&fake, port).await;
        leaf.chain.last().is_some_and(|int| issued_by(&new_root, int)).then_some(leaf)
    })
    .await;
    bundles_converge(&fake, port, &[old_root.clone(), new_root.clone()], "step 2: both roots still everywhere").await;
    let new_leaves = vec![new_workload, gateway_leaf(&fake), istiod_leaf(&fake)];
    let step2 = published_bundles(&fake, port).await;
    check_all(&old_leaves, &step2, true, "step 2, old chain");
    check_all(&new_leaves, &step2, true, "step 2, new chain");

    // Step 3 waits for the old chain's leaves to expire ...
    let early =
        apply(client(), NS, SECRET, RootAction::Finish { leaf_lifetime: time::Duration::hours(24), force: false })
            .await;
    assert!(early.unwrap_err().to_string().contains("leaves of the old chain may be valid until"));
    // ... (here: a 1 s leaf lifetime) and then drops the old root everywhere.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let said =
        apply(client(), NS, SECRET, RootAction::Finish { leaf_lifetime: time::Duration::seconds(1), force: false })
            .await
            .unwrap();
    assert!(said.contains("stage: steady"), "{said}");
    bundles_converge(&fake, port, std::slice::from_ref(&new_root), "step 3: only the new root").await;
    let step3 = published_bundles(&fake, port).await;
    check_all(&new_leaves, &step3, true, "step 3, new chain");
    // The old chain is no longer trusted: by now its leaves would have expired.
    check_all(&old_leaves, &step3, false, "step 3, old chain");
    let status = apply(client(), NS, SECRET, RootAction::Status).await.unwrap();
    assert!(status.contains("stage: steady") && !status.contains("also trusted"), "{status}");
    server.shutdown().await.unwrap();
}

/// A new root in the root Secret as `kubectl create secret tls` makes it
/// (type `kubernetes.io/tls`, `tls.crt` and `tls.key`).
fn tls_root_secret(fake: &FakeApi, now: OffsetDateTime) -> Authority {
    let root = Authority::new_root(&meshroot::pki::CaSpec::root(time::Duration::days(30)), now).unwrap();
    let b64 = |s: &str| base64::Engine::encode(&base64::engine::general_purpose::STANDARD, s);
    fake.create(
        "v1",
        "secrets",
        NS,
        serde_json::json!({
            "metadata": {"name": SECRET},
            "type": "kubernetes.io/tls",
            "data": {"tls.crt": b64(root.certificate_pem()), "tls.key": b64(&root.key().to_pem())},
        }),
    );
    root
}

/// `root switch` without `--key` against a `kubernetes.io/tls` root Secret
/// (what `kubectl create secret tls` makes): the API server requires its
/// `tls.key` and refuses a `type` change, so the switch keeps the type and
/// an empty `tls.key`, and the root reads as offline.
#[tokio::test]
async fn switching_a_tls_root_secret_to_an_offline_root_is_accepted_by_the_api_server() {
    let fake = FakeApi::new();
    fake.namespace(NS, serde_json::json!({}));
    let now = OffsetDateTime::now_utc();
    tls_root_secret(&fake, now);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("next");
    generate(&out, KeyAlgorithm::EcdsaP256, time::Duration::days(3650)).unwrap();
    let cert = out.join("root-cert.pem");
    apply(fake.client(), NS, SECRET, RootAction::Add { cert: cert.clone() }).await.unwrap();
    let said = apply(fake.client(), NS, SECRET, RootAction::Switch { cert, key: None }).await.unwrap();
    assert!(said.contains("stage: switched") && said.contains("(offline)"), "{said}");
    let stored = fake.get("v1", "secrets", NS, SECRET).unwrap();
    assert_eq!(stored["type"], "kubernetes.io/tls");
    assert_eq!(stored["data"]["tls.key"], "");
}

/// `root finish` is refused while an intermediate meshroot manages is still
/// under the old root (its workloads still need that root), naming it; once
/// the intermediate is re-issued under the new root, it runs.
#[tokio::test]
async fn finish_waits_for_every_intermediate_to_move_under_the_new_root() {
    use meshroot::k8s::intermediates::{IntermediatePolicy, IntermediateSecret, ensure};
    let fake = FakeApi::new();
    fake.namespace(NS, serde_json::json!({}));
    let now = OffsetDateTime::now_utc();
    let old = tls_root_secret(&fake, now);
    let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> = kube::Api::namespaced(fake.client(), NS);
    let policy = IntermediatePolicy {
        key_algorithm: KeyAlgorithm::EcdsaP256,
        lifetime: time::Duration::hours(1),
        renew_before: time::Duration::minutes(20),
    };
    let target = IntermediateSecret::external("default");
    let old_bundle = TrustBundle::new(vec![old.certificate().clone()]).unwrap();
    ensure(&secrets, &target, &policy, Some(&old), &[], &old_bundle, now).await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("next");
    generate(&out, KeyAlgorithm::EcdsaP256, time::Duration::days(3650)).unwrap();
    let (cert, key) = (out.join("root-cert.pem"), out.join("root-key.pem"));
    apply(fake.client(), NS, SECRET, RootAction::Add { cert: cert.clone() }).await.unwrap();
    apply(fake.client(), NS, SECRET, RootAction::Switch { cert: cert.clone(), key: Some(key.clone()) }).await.unwrap();
    let finish = || RootAction::Finish { leaf_lifetime: time::Duration::ZERO, force: false };
    let refused = apply(fake.client(), NS, SECRET, finish()).await.unwrap_err().to_string();
    assert!(refused.contains("meshroot/meshroot-intermediate-default"), "{refused}");

    let new = Authority::from_pem(&std::fs::read(&cert).unwrap(), &std::fs::read(&key).unwrap()).unwrap();
    let both = TrustBundle::new(vec![new.certificate().clone(), old.certificate().clone()]).unwrap();
    assert!(ensure(&secrets, &target, &policy, Some(&new), &[], &both, now).await.unwrap().issued);

    // A `cacerts` meshroot keeps in a Mesh's istiod namespace counts too; a Secret a tenant labels
    // as meshroot's, in its own namespace, does not (it would hold finish back for good).
    let labels = serde_json::json!({"meshroot.io/mesh": "default", "app.kubernetes.io/managed-by": "meshroot"});
    let old_pem = pem::encode_certificate(old.certificate());
    let b64 = |text: &str| base64::Engine::encode(&base64::engine::general_purpose::STANDARD, text);
    for ns in ["istio-system", "team-a"] {
        fake.namespace(ns, serde_json::json!({}));
        fake.create(
            "v1",
            "secrets",
            ns,
            serde_json::json!({"metadata": {"name": "cacerts", "labels": labels}, "data": {"ca-cert.pem": b64(&old_pem)}}),
        );
    }
    fake.create(
        "meshroot.io/v1alpha1",
        "meshes",
        "",
        serde_json::json!({"metadata": {"name": "default"}, "spec": {"trustDomain": "cluster.local", "mode": "PluginCA",
            "istiod": {"namespace": "istio-system"}}}),
    );
    let refused = apply(fake.client(), NS, SECRET, finish()).await.unwrap_err().to_string();
    assert!(refused.contains("istio-system/cacerts") && !refused.contains("team-a"), "{refused}");
    let in_istiod: kube::Api<k8s_openapi::api::core::v1::Secret> = kube::Api::namespaced(fake.client(), "istio-system");
    in_istiod.delete("cacerts", &Default::default()).await.unwrap();
    let said = apply(fake.client(), NS, SECRET, finish()).await.unwrap();
    assert!(said.contains("stage: steady"), "{said}");
}

/// Each rotation step writes back what it read, as a compare-and-swap: a
/// Secret changed in between is a conflict (run the step again); any other
/// refusal is an API error that says what the server said.
#[tokio::test]
async fn a_rotation_write_from_a_stale_read_is_a_conflict() {
    use meshroot::k8s::rotation::{RotationError, write};
    let fake = FakeApi::new();
    fake.namespace(NS, serde_json::json!({}));
    fake.create("v1", "secrets", NS, serde_json::json!({"metadata": {"name": SECRET}, "data": {"tls.crt": ""}}));
    let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> = kube::Api::namespaced(fake.client(), NS);
    let read = secrets.get(SECRET).await.unwrap();
    let mut changed = read.clone();
    changed.metadata.annotations = Some([("changed".to_string(), "meanwhile".to_string())].into());
    write(&secrets, &changed).await.unwrap();
    assert!(matches!(write(&secrets, &read).await, Err(RotationError::Conflict)));
    let mut missing = read.clone();
    missing.metadata.name = Some("missing".into());
    let refused = write(&secrets, &missing).await;
    assert!(matches!(&refused, Err(RotationError::Api(m)) if m.starts_with("404")), "{refused:?}");
}
