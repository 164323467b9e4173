//! Faults: the API server going away, split-brain leaders, a crash in the
//! middle of an intermediate renewal, and corrupt Secrets.

use crate::support;

use fake_apiserver::{FakeApi, Fault};
use meshroot::controllers::meshes::{self, RootState};
use meshroot::controllers::root_configmaps::Coverage;
use meshroot::k8s::intermediates::{IntermediatePolicy, IntermediateSecret, ensure, parse_secret, secret_name};
use meshroot::pki::{Authority, CaSpec, KeyAlgorithm, TrustBundle};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use support::eventually_async;
use support::replica::{self, NS, ask, mesh_condition};
use time::OffsetDateTime;
use tonic::Code;

const REVIEWS: &str = "spiffe://cluster.local/ns/bookinfo/sa/reviews";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_outage_keeps_cached_callers_signing_and_everything_recovers() {
    let fake = FakeApi::new();
    replica::world(&fake);
    fake.add_service_account_token("known", "bookinfo", "reviews", None, &["istio-ca"]);
    fake.add_service_account_token("new", "bookinfo", "reviews", None, &["istio-ca"]);
    let server = replica::start(&fake, "meshroot-0").await;
    let port = server.grpc_addr.port();
    eventually_async("a first certificate", async || ask(&fake, port, "known", REVIEWS).await.ok()).await;

    fake.set_outage(true);
    fake.clear_requests();
    // A caller whose TokenReview is cached is still served ...
    let served = ask(&fake, port, "known", REVIEWS).await.unwrap();
    assert!(served.cert_chain.len() >= 2);
    // ... a new one cannot be checked, and is told to retry.
    let refused = ask(&fake, port, "new", REVIEWS).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(refused.message().starts_with("temporarily unavailable: "), "{}", refused.message());
    assert!(refused.message().contains("503"), "{}", refused.message());
    // Something changes while the API is away.
    fake.namespace("reviews-canary", json!({"mesh": "default"}));
    tokio::time::sleep(Duration::from_secs(3)).await;
    // The process lives, and its watches and controllers back off rather than spin.
    assert!(support::http_get(server.ops_addr, "/healthz").await.starts_with("HTTP/1.1 200 OK"));
    let during = fake.requests().len();
    assert!(during < 150, "{during} requests in 3 s of outage: no backoff");

    fake.set_outage(false);
    // Everything catches up: the new caller, and the namespace added meanwhile.
    eventually_async("the new caller once the API is back", async || ask(&fake, port, "new", REVIEWS).await.ok()).await;
    eventually_async("the root ConfigMap in the namespace added during the outage", async || {
        fake.get("v1", "configmaps", "reviews-canary", "istio-ca-root-cert")
    })
    .await;
    eventually_async("the lease held again", async || {
        let lease = fake.get("coordination.k8s.io/v1", "leases", NS, "meshroot-leader")?;
        (lease["spec"]["holderIdentity"] == "meshroot-0").then_some(())
    })
    .await;
    server.shutdown().await.unwrap();
}

fn root_state() -> (Authority, TrustBundle) {
    let root = Authority::new_root(&CaSpec::root(time::Duration::days(3650)), OffsetDateTime::now_utc()).unwrap();
    let bundle = TrustBundle::new(vec![root.certificate().clone()]).unwrap();
    (root, bundle)
}

/// Successful writes (create, replace, patch) to Secret `ns/name`.
fn secret_writes(fake: &FakeApi, ns: &str, name: &str) -> usize {
    let one = format!("/api/v1/namespaces/{ns}/secrets/{name}");
    let collection = format!("/api/v1/namespaces/{ns}/secrets");
    fake.requests()
        .iter()
        .filter(|r| r.status < 300 && r.method != "GET")
        .filter(|r| r.path == one || (r.path == collection && r.created_name.as_deref() == Some(name)))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_brain_leaders_end_with_one_intermediate_per_mesh() {
    let fake = FakeApi::new();
    replica::world(&fake);
    let (root, bundle) = root_state();
    let root = Arc::new(root);
    let state = RootState { authority: Some(root.clone()), bundle: Arc::new(bundle), chain: Default::default() };
    // Two controllers that both believe they lead (a lease that expired under
    // a paused leader), started together.
    let (tx_a, rx_a) = tokio::sync::watch::channel(state.clone());
    let (tx_b, rx_b) = tokio::sync::watch::channel(state);
    let tasks = [
        meshes::spawn(fake.client(), NS.into(), rx_a, Coverage::default(), Duration::from_millis(200)),
        meshes::spawn(fake.client(), NS.into(), rx_b, Coverage::default(), Duration::from_millis(200)),
    ];
    for mesh in ["default", "gateway"] {
        eventually_async("Ready", async || mesh_condition(&fake, mesh, "Ready").filter(|c| c.0 == "True")).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(secret_writes(&fake, NS, &secret_name("default")), 1, "one intermediate for mesh default");
    assert_eq!(secret_writes(&fake, "openshift-ingress", "cacerts"), 1, "one cacerts for mesh gateway");
    // And both controllers report the one that was written.
    let stored = replica::secret_text(&fake, NS, &secret_name("default"), "tls.crt").unwrap();
    let stored = meshroot::pki::pem::decode_certificates(stored.as_bytes(), 1 << 16).unwrap();
    let serial =
        meshroot::pki::authority::parse_certificate(&stored[0]).unwrap().raw_serial_as_string().replace(':', "");
    let status = fake.get("meshroot.io/v1alpha1", "meshes", "", "default").unwrap();
    assert_eq!(status["status"]["intermediate"]["serial"].as_str().unwrap(), serial);
    for t in tasks {
        t.abort();
    }
    drop((tx_a, tx_b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_starting_together_elect_one_leader_and_share_one_intermediate() {
    let fake = FakeApi::new();
    replica::world(&fake);
    fake.add_service_account_token("reviews", "bookinfo", "reviews", None, &["istio-ca"]);
    let (a, b) = tokio::join!(replica::start(&fake, "replica-a"), replica::start(&fake, "replica-b"));
    for mesh in ["default", "gateway"] {
        eventually_async("Ready", async || mesh_condition(&fake, mesh, "Ready").filter(|c| c.0 == "True")).await;
    }
    // Both serve, from the same intermediate.
    let mut issuers = Vec::new();
    for port in [a.grpc_addr.port(), b.grpc_addr.port()] {
        let response =
            eventually_async("a certificate", async || ask(&fake, port, "reviews", REVIEWS).await.ok()).await;
        issuers.push(response.cert_chain[1].clone());
    }
    assert_eq!(issuers[0], issuers[1]);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(secret_writes(&fake, NS, &secret_name("default")), 1, "one intermediate for mesh default");
    assert_eq!(secret_writes(&fake, "openshift-ingress", "cacerts"), 1, "one cacerts for mesh gateway");
    assert_eq!(secret_writes(&fake, NS, replica::ROOT_SECRET), 1, "one generated root");
    let lease = fake.get("coordination.k8s.io/v1", "leases", NS, "meshroot-leader").unwrap();
    let holder = lease["spec"]["holderIdentity"].as_str().unwrap().to_string();
    assert!(holder == "replica-a" || holder == "replica-b", "{holder}");
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

fn due_policy() -> IntermediatePolicy {
    // Renew anything with less than 20 days left; new ones live 30.
    IntermediatePolicy {
        key_algorithm: KeyAlgorithm::EcdsaP256,
        lifetime: time::Duration::days(30),
        renew_before: time::Duration::days(20),
    }
}

/// An intermediate Secret that is due for renewal (10 days left).
fn due_intermediate(fake: &FakeApi, root: &Authority, bundle: &TrustBundle) -> String {
    let now = OffsetDateTime::now_utc();
    let old = root.new_intermediate(&CaSpec::intermediate("default", time::Duration::days(10)), now).unwrap();
    fake.create("v1", "secrets", NS, json!({
        "metadata": {"name": secret_name("default"), "labels": {"app.kubernetes.io/managed-by": "meshroot", "meshroot.io/mesh": "default"}},
        "type": "kubernetes.io/tls",
        "stringData": {"tls.crt": old.certificate_pem(), "tls.key": old.key().to_pem().as_str(), "ca.crt": bundle.pem()}}));
    old.serial_hex().to_string()
}

fn stored_serial(fake: &FakeApi, bundle: &TrustBundle) -> String {
    let secret: k8s_openapi::api::core::v1::Secret =
        serde_json::from_value(fake.get("v1", "secrets", NS, &secret_name("default")).unwrap()).unwrap();
    parse_secret(&secret, bundle, OffsetDateTime::now_utc()).unwrap().authority().serial_hex().to_string()
}

#[tokio::test]
async fn a_crash_mid_renewal_loses_nothing_and_issues_no_duplicate() {
    let fake = FakeApi::new();
    fake.namespace(NS, json!({}));
    let (root, bundle) = root_state();
    let old = due_intermediate(&fake, &root, &bundle);
    let api = kube::Api::namespaced(fake.client(), NS);
    let target = IntermediateSecret::external("default");
    let now = OffsetDateTime::now_utc();
    let path = format!("/secrets/{}", secret_name("default"));

    // The renewal's write never lands (the API refused it, or the process
    // died before it): the old intermediate is still there and still signs.
    fake.inject("PUT", &path, Fault::Refused);
    assert!(ensure(&api, &target, &due_policy(), Some(&root), &[], &bundle, now).await.is_err());
    assert_eq!(stored_serial(&fake, &bundle), old, "nothing was lost");

    // The write lands but the answer is lost, and the process restarts.
    fake.inject("PUT", &path, Fault::ResponseLost);
    assert!(ensure(&api, &target, &due_policy(), Some(&root), &[], &bundle, now).await.is_err());
    let renewed = stored_serial(&fake, &bundle);
    assert_ne!(renewed, old, "the renewal landed");
    fake.clear_requests();
    // After the restart meshroot finds the renewed intermediate and uses it,
    // rather than issuing another.
    let again = ensure(&api, &target, &due_policy(), Some(&root), &[], &bundle, now).await.unwrap();
    assert!(!again.issued);
    assert_eq!(again.chain.authority().serial_hex(), renewed);
    assert_eq!(secret_writes(&fake, NS, &secret_name("default")), 0, "no second renewal after the restart");
}

#[tokio::test]
async fn a_controller_killed_mid_renewal_is_replaced_without_a_second_renewal() {
    let fake = FakeApi::new();
    replica::world(&fake);
    let (root, bundle) = root_state();
    // 10 days left, and meshes renew 30 days (720h) before expiry.
    let old = due_intermediate(&fake, &root, &bundle);
    let state =
        RootState { authority: Some(Arc::new(root)), bundle: Arc::new(bundle.clone()), chain: Default::default() };
    let (tx, rx) = tokio::sync::watch::channel(state);
    fake.inject("PUT", &format!("/secrets/{}", secret_name("default")), Fault::ResponseLost);
    let first = meshes::spawn(fake.client(), NS.into(), rx.clone(), Coverage::default(), Duration::from_millis(200));
    eventually_async("the renewal written", async || (stored_serial(&fake, &bundle) != old).then_some(())).await;
    first.abort();
    let renewed = stored_serial(&fake, &bundle);
    fake.clear_requests();
    let second = meshes::spawn(fake.client(), NS.into(), rx, Coverage::default(), Duration::from_millis(200));
    eventually_async("Ready after the restart", async || {
        let m = fake.get("meshroot.io/v1alpha1", "meshes", "", "default")?;
        (m["status"]["intermediate"]["serial"] == renewed.as_str()).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(stored_serial(&fake, &bundle), renewed);
    assert_eq!(secret_writes(&fake, NS, &secret_name("default")), 0, "no second renewal after the restart");
    second.abort();
    drop(tx);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_intermediates_are_reported_never_used_and_never_replaced() {
    let fake = FakeApi::new();
    replica::world(&fake);
    let (root, _) = root_state();
    fake.create(
        "v1",
        "secrets",
        NS,
        json!({"metadata": {"name": replica::ROOT_SECRET}, "type": "kubernetes.io/tls",
        "stringData": {"tls.crt": root.certificate_pem(), "tls.key": root.key().to_pem().as_str()}}),
    );
    let stranger = PrivateKeyPem::new();
    let now = OffsetDateTime::now_utc();
    let int = root.new_intermediate(&CaSpec::intermediate("default", time::Duration::days(30)), now).unwrap();
    let managed = json!({"app.kubernetes.io/managed-by": "meshroot", "meshroot.io/mesh": "default"});
    // Mesh default: a key that does not parse. Mesh gateway: a cert and key that do not match.
    fake.create("v1", "secrets", NS, json!({"metadata": {"name": secret_name("default"), "labels": managed},
        "type": "kubernetes.io/tls", "stringData": {"tls.crt": int.certificate_pem(), "tls.key": "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"}}));
    fake.create("v1", "secrets", "openshift-ingress", json!({"metadata": {"name": "cacerts", "labels": managed},
        "stringData": {"ca-cert.pem": int.certificate_pem(), "ca-key.pem": stranger.0, "cert-chain.pem": int.certificate_pem(), "root-cert.pem": root.certificate_pem()}}));
    let before: Vec<_> = [(NS, secret_name("default")), ("openshift-ingress", "cacerts".to_string())]
        .iter()
        .map(|(ns, n)| fake.get("v1", "secrets", ns, n).unwrap()["data"].clone())
        .collect();
    fake.add_service_account_token("reviews", "bookinfo", "reviews", None, &["istio-ca"]);
    let server = replica::start(&fake, "meshroot-0").await;
    for (mesh, mention) in [("default", "could not load the private key"), ("gateway", "does not match")] {
        let c = eventually_async("IntermediateCorrupt", async || {
            mesh_condition(&fake, mesh, "Ready").filter(|c| c.1 == "IntermediateCorrupt")
        })
        .await;
        assert_eq!(c.0, "False");
        assert!(c.2.contains("will not replace it") && c.2.contains(mention), "{mesh}: {}", c.2);
    }
    // Never used: workloads of the mesh are told to retry, not served from it.
    let refused = ask(&fake, server.grpc_addr.port(), "reviews", REVIEWS).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(refused.message().starts_with("CA not ready: "), "{}", refused.message());
    // Never replaced, across several resyncs.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after: Vec<_> = [(NS, secret_name("default")), ("openshift-ingress", "cacerts".to_string())]
        .iter()
        .map(|(ns, n)| fake.get("v1", "secrets", ns, n).unwrap()["data"].clone())
        .collect();
    assert_eq!(before, after);
    server.shutdown().await.unwrap();
}

/// Another key's PEM.
struct PrivateKeyPem(String);

impl PrivateKeyPem {
    fn new() -> Self {
        let key = meshroot::pki::PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
        Self(key.to_pem().to_string())
    }
}
