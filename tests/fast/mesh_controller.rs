//! The leader's mesh controller with root distribution, against the fake:
//! an External mesh and a PluginCA mesh under one root.

use crate::support;

use fake_apiserver::FakeApi;
use meshroot::controllers::meshes::{self, RootState};
use meshroot::controllers::root_configmaps::{self, Coverage};
use meshroot::pki::{Authority, CaSpec, KeyAlgorithm, PrivateKey, TrustBundle, pem};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use support::eventually;
use support::replica::{mesh_condition as condition, secret_text};
use time::OffsetDateTime;

struct World {
    fake: FakeApi,
    bundle: TrustBundle,
    _root_tx: tokio::sync::watch::Sender<RootState>,
    _bundle_tx: tokio::sync::watch::Sender<Arc<TrustBundle>>,
    _tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for World {
    fn drop(&mut self) {
        for t in &self._tasks {
            t.abort();
        }
    }
}

fn world() -> World {
    let fake = FakeApi::new();
    support::replica::namespaces(&fake);
    let root = Authority::new_root(&CaSpec::root(time::Duration::days(3650)), OffsetDateTime::now_utc()).unwrap();
    let bundle = TrustBundle::new(vec![root.certificate().clone()]).unwrap();
    let (root_tx, root_rx) = tokio::sync::watch::channel(RootState {
        authority: Some(Arc::new(root)),
        bundle: Arc::new(bundle.clone()),
        chain: Default::default(),
    });
    let (bundle_tx, bundle_rx) = tokio::sync::watch::channel(Arc::new(bundle.clone()));
    let coverage = Coverage::default();
    let tasks = vec![
        root_configmaps::spawn(
            fake.client(),
            bundle_rx,
            Duration::from_secs(3600),
            coverage.clone(),
            Default::default(),
        ),
        meshes::spawn(fake.client(), "meshroot".into(), root_rx, coverage, Duration::from_millis(300)),
    ];
    World { fake, bundle, _root_tx: root_tx, _bundle_tx: bundle_tx, _tasks: tasks }
}

fn mesh(fake: &FakeApi, name: &str, spec: Value) {
    fake.create("meshroot.io/v1alpha1", "meshes", "", json!({"metadata": {"name": name}, "spec": spec}));
}

fn default_spec() -> Value {
    json!({"trustDomain": "cluster.local", "istiod": {"namespace": "istio-system"}, "namespaceSelector": {"matchLabels": {"mesh": "default"}}})
}

#[tokio::test]
async fn one_root_for_an_external_mesh_and_a_plugin_ca_gateway() {
    let w = world();
    mesh(&w.fake, "default", default_spec());
    mesh(
        &w.fake,
        "gateway",
        json!({"trustDomain": "cluster.local", "mode": "PluginCA", "istiod": {"namespace": "openshift-ingress"}}),
    );
    for m in ["default", "gateway"] {
        let (status, reason, msg) =
            eventually("Ready", || condition(&w.fake, m, "Ready").filter(|c| c.0 == "True")).await;
        assert_eq!((status.as_str(), reason.as_str()), ("True", "Ready"), "{m}: {msg}");
    }
    let status = w.fake.get("meshroot.io/v1alpha1", "meshes", "", "default").unwrap()["status"].clone();
    assert_eq!(status["observedGeneration"], 1);
    assert_eq!(status["rootFingerprints"][0], w.bundle.fingerprints()[0]);
    assert_eq!(status["intermediate"]["serial"].as_str().unwrap().len(), 40);
    eventually("namespace count", || {
        (w.fake.get("meshroot.io/v1alpha1", "meshes", "", "default")?["status"]["namespaces"] == 2).then_some(())
    })
    .await;
    assert!(secret_text(&w.fake, "istio-system", "istiod-tls", "tls.crt").is_some());

    // The gateway istiod signs with the key in openshift-ingress/cacerts ...
    let ca_cert = secret_text(&w.fake, "openshift-ingress", "cacerts", "ca-cert.pem").unwrap();
    let ca_key = secret_text(&w.fake, "openshift-ingress", "cacerts", "ca-key.pem").unwrap();
    let gateway_ca = Authority::from_pem(ca_cert.as_bytes(), ca_key.as_bytes()).unwrap();
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let gw_leaf = meshroot::pki::profile::issue_workload(
        &gateway_ca,
        &key.spki_der(),
        "spiffe://cluster.local/ns/openshift-ingress/sa/gateway",
        time::Duration::hours(1),
        OffsetDateTime::now_utc(),
    )
    .unwrap();
    // ... and a bookinfo workload trusts it through its istio-ca-root-cert.
    let bookinfo_bundle = eventually("bookinfo's root ConfigMap", || {
        w.fake.get("v1", "configmaps", "bookinfo", "istio-ca-root-cert")?["data"]["root-cert.pem"]
            .as_str()
            .map(String::from)
    })
    .await;
    let bookinfo_trust = TrustBundle::from_pem(bookinfo_bundle.as_bytes()).unwrap();
    bookinfo_trust.verify(&gw_leaf.der, &[gateway_ca.certificate().clone()], OffsetDateTime::now_utc()).unwrap();

    // A workload leaf from the default mesh verifies against the root the
    // gateway istiod distributes (cacerts root-cert.pem).
    let int_cert = secret_text(&w.fake, "meshroot", "meshroot-intermediate-default", "tls.crt").unwrap();
    let int_key = secret_text(&w.fake, "meshroot", "meshroot-intermediate-default", "tls.key").unwrap();
    let mesh_ca = Authority::from_pem(int_cert.as_bytes(), int_key.as_bytes()).unwrap();
    let wl = meshroot::pki::profile::issue_workload(
        &mesh_ca,
        &key.spki_der(),
        "spiffe://cluster.local/ns/bookinfo/sa/reviews",
        time::Duration::hours(1),
        OffsetDateTime::now_utc(),
    )
    .unwrap();
    let gateway_trust = TrustBundle::from_pem(
        secret_text(&w.fake, "openshift-ingress", "cacerts", "root-cert.pem").unwrap().as_bytes(),
    )
    .unwrap();
    gateway_trust.verify(&wl.der, &[mesh_ca.certificate().clone()], OffsetDateTime::now_utc()).unwrap();
    assert_eq!(pem::decode_certificates(bookinfo_bundle.as_bytes(), 1 << 20).unwrap(), gateway_trust.roots());

    // Converged: no more writes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    w.fake.clear_requests();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(w.fake.writes().is_empty(), "{:?}", w.fake.writes());
}

#[tokio::test]
async fn problems_become_conditions() {
    let w = world();
    mesh(&w.fake, "bad", json!({"trustDomain": "Not Valid", "istiod": {"namespace": "istio-system"}}));
    w.fake.create(
        "v1",
        "secrets",
        "openshift-ingress",
        json!({"metadata": {"name": "cacerts"}, "stringData": {"ca-cert.pem": "someone else's"}}),
    );
    mesh(
        &w.fake,
        "gateway",
        json!({"trustDomain": "cluster.local", "mode": "PluginCA", "istiod": {"namespace": "openshift-ingress"}}),
    );
    mesh(&w.fake, "default", default_spec());
    mesh(&w.fake, "everything", json!({"trustDomain": "cluster.local", "istiod": {"namespace": "istio-system"}}));
    let bad = eventually("InvalidSpec", || condition(&w.fake, "bad", "Ready").filter(|c| c.1 == "InvalidSpec")).await;
    assert!(bad.2.contains("trustDomain"), "{bad:?}");
    let gw =
        eventually("CacertsNotOwned", || condition(&w.fake, "gateway", "Ready").filter(|c| c.1 == "CacertsNotOwned"))
            .await;
    assert_eq!(gw.0, "False");
    assert_eq!(secret_text(&w.fake, "openshift-ingress", "cacerts", "ca-cert.pem").unwrap(), "someone else's");
    for m in ["default", "everything"] {
        let c = eventually("overlap", || condition(&w.fake, m, "NamespacesOverlap").filter(|c| c.0 == "True")).await;
        assert!(c.2.contains("bookinfo"), "{m}: {c:?}");
        assert_eq!(condition(&w.fake, m, "Ready").unwrap().1, "NamespacesOverlap");
    }
}

/// The status is replaced whole: what a mesh no longer has (its
/// intermediate, once its spec is invalid) leaves the status instead of
/// lingering, and the status then converges, with no more writes.
#[tokio::test]
async fn a_mesh_that_stops_being_ready_loses_the_status_fields_it_no_longer_has() {
    let w = world();
    mesh(&w.fake, "default", default_spec());
    eventually("Ready", || condition(&w.fake, "default", "Ready").filter(|c| c.0 == "True")).await;
    let status = || w.fake.get("meshroot.io/v1alpha1", "meshes", "", "default").unwrap()["status"].clone();
    assert!(status()["intermediate"].is_object());
    let meshes: kube::Api<meshroot::api::mesh::Mesh> = kube::Api::all(w.fake.client());
    let invalid = kube::api::Patch::Merge(json!({"spec": {"trustDomain": "Not Valid"}}));
    meshes.patch("default", &kube::api::PatchParams::default(), &invalid).await.unwrap();
    eventually("InvalidSpec", || condition(&w.fake, "default", "Ready").filter(|c| c.1 == "InvalidSpec")).await;
    assert!(status().get("intermediate").is_none(), "a stale intermediate: {}", status());
    // Several resyncs (every 300 ms) pass without a write.
    tokio::time::sleep(Duration::from_millis(500)).await;
    w.fake.clear_requests();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(w.fake.writes().is_empty(), "{:?}", w.fake.writes());
}

/// Node accounts are trusted by name: one in a namespace that does not exist could be had by
/// whoever creates that namespace, so the Mesh says so until the namespace exists.
#[tokio::test]
async fn a_trusted_node_account_in_a_missing_namespace_is_reported_until_it_exists() {
    let w = world();
    let mut spec = default_spec();
    spec["trustedNodeAccounts"] = json!(["istio-system/ztunnel", "ghost/ztunnel"]);
    mesh(&w.fake, "default", spec);
    let missing = eventually("missing", || {
        condition(&w.fake, "default", "NodeAccountNamespacesMissing").filter(|c| c.0 == "True")
    })
    .await;
    assert_eq!(missing.1, "Missing");
    assert!(missing.2.contains("ghost/ztunnel") && !missing.2.contains("istio-system/"), "{missing:?}");
    assert_eq!(condition(&w.fake, "default", "Ready").unwrap().0, "True", "a warning, not an outage");
    w.fake.namespace("ghost", json!({}));
    let present = eventually("present", || {
        condition(&w.fake, "default", "NodeAccountNamespacesMissing").filter(|c| c.0 == "False")
    })
    .await;
    assert_eq!(present.1, "Present");
}
