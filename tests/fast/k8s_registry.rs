//! Every replica's mesh registry, built from watches against the fake API.

use crate::support;

use fake_apiserver::FakeApi;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use meshroot::auth::node::{NodeAuthorizer, TrustedAccountOnly};
use meshroot::k8s::intermediates::{IntermediatePolicy, IntermediateSecret, ensure};
use meshroot::k8s::registry;
use meshroot::mesh::{MeshRegistry, NoSigner, RouteError};
use meshroot::pki::{Authority, CaSpec, KeyAlgorithm, TrustBundle};
use serde_json::json;
use std::sync::Arc;
use support::eventually;
use time::OffsetDateTime;

const NS: &str = "meshroot";

struct World {
    fake: FakeApi,
    registry: Arc<MeshRegistry>,
    root: Authority,
    bundle: TrustBundle,
    _bundle_tx: tokio::sync::watch::Sender<Arc<TrustBundle>>,
    _task: tokio::task::JoinHandle<()>,
}

async fn world() -> World {
    let fake = FakeApi::new();
    support::replica::namespaces(&fake);
    let root = Authority::new_root(&CaSpec::root(time::Duration::days(365)), OffsetDateTime::now_utc()).unwrap();
    let bundle = TrustBundle::new(vec![root.certificate().clone()]).unwrap();
    let registry = Arc::new(MeshRegistry::default());
    let (bundle_tx, rx) = tokio::sync::watch::channel(Arc::new(bundle.clone()));
    let authorizer: Arc<dyn NodeAuthorizer> = Arc::new(TrustedAccountOnly);
    let (synced, _) = tokio::sync::watch::channel(false);
    let task = registry::spawn(fake.client(), NS, registry.clone(), rx, authorizer, synced);
    World { fake, registry, root, bundle, _bundle_tx: bundle_tx, _task: task }
}

fn mesh(name: &str, selector: serde_json::Value, extra: serde_json::Value) -> serde_json::Value {
    let mut spec =
        json!({"trustDomain": "cluster.local", "istiod": {"namespace": "istio-system"}, "namespaceSelector": selector});
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
        s.extend(e.clone());
    }
    json!({"apiVersion": "meshroot.io/v1alpha1", "kind": "Mesh", "metadata": {"name": name}, "spec": spec})
}

async fn issue(w: &World, name: &str, key_algorithm: KeyAlgorithm) -> String {
    let api: Api<Secret> = Api::namespaced(w.fake.client(), NS);
    let policy = IntermediatePolicy {
        key_algorithm,
        lifetime: time::Duration::hours(2),
        renew_before: time::Duration::hours(1),
    };
    let ensured = ensure(
        &api,
        &IntermediateSecret::external(name),
        &policy,
        Some(&w.root),
        &[],
        &w.bundle,
        OffsetDateTime::now_utc(),
    )
    .await
    .unwrap();
    ensured.chain.authority().serial_hex().to_string()
}

fn serial_for(registry: &MeshRegistry, ns: &str) -> Option<String> {
    let mesh = registry.route(ns).ok()?;
    mesh.signer.as_ref().ok().map(|c| c.authority().serial_hex().to_string())
}

#[tokio::test]
async fn namespaces_route_to_the_mesh_that_selects_them() {
    let w = world().await;
    w.fake.create(
        "meshroot.io/v1alpha1",
        "meshes",
        "",
        mesh("default", json!({"matchLabels": {"mesh": "default"}}), json!({})),
    );
    // Before its intermediate exists, the mesh routes but cannot sign.
    let why =
        eventually("the mesh to appear", || w.registry.route("bookinfo").ok().and_then(|m| m.signer.clone().err()))
            .await;
    assert_eq!(why, NoSigner::Waiting(meshroot::k8s::intermediates::secret_name("default")));
    assert!(why.to_string().contains("waiting for the intermediate"), "{why}");
    let serial = issue(&w, "default", KeyAlgorithm::EcdsaP256).await;
    eventually("the intermediate", || (serial_for(&w.registry, "bookinfo") == Some(serial.clone())).then_some(()))
        .await;
    assert!(matches!(w.registry.route("openshift-ingress"), Err(RouteError::NoMesh(_))));

    // A namespace labelled later joins within moments, and leaves when unlabelled.
    w.fake.namespace("reviews", json!({"mesh": "default"}));
    eventually("the new namespace", || w.registry.route("reviews").ok()).await;
    let nss: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(w.fake.client());
    nss.patch(
        "reviews",
        &Default::default(),
        &kube::api::Patch::Merge(json!({"metadata": {"labels": {"mesh": null}}})),
    )
    .await
    .unwrap();
    eventually("the namespace to leave", || w.registry.route("reviews").is_err().then_some(())).await;
}

#[tokio::test]
async fn a_renewed_intermediate_is_used_without_a_restart() {
    let w = world().await;
    w.fake.create(
        "meshroot.io/v1alpha1",
        "meshes",
        "",
        mesh("default", json!({"matchLabels": {"mesh": "default"}}), json!({})),
    );
    let first = issue(&w, "default", KeyAlgorithm::EcdsaP256).await;
    eventually("the first intermediate", || (serial_for(&w.registry, "bookinfo") == Some(first.clone())).then_some(()))
        .await;
    // The leader replaces it (here because the mesh now asks for P-384).
    let second = issue(&w, "default", KeyAlgorithm::EcdsaP384).await;
    assert_ne!(first, second);
    let seen =
        eventually("the renewed intermediate", || serial_for(&w.registry, "bookinfo").filter(|s| *s != first)).await;
    assert_eq!(seen, second);
}

#[tokio::test]
async fn invalid_meshes_are_reported_and_overlaps_refused() {
    let w = world().await;
    w.fake.create(
        "meshroot.io/v1alpha1",
        "meshes",
        "",
        mesh("bad-ttl", json!({"matchLabels": {"x": "y"}}), json!({"workloadCertificates": {"defaultTTL": "soon"}})),
    );
    w.fake.create(
        "meshroot.io/v1alpha1",
        "meshes",
        "",
        mesh("bad-account", json!({"matchLabels": {"x": "y"}}), json!({"trustedNodeAccounts": ["ztunnel"]})),
    );
    w.fake.create(
        "meshroot.io/v1alpha1",
        "meshes",
        "",
        mesh("a", json!({"matchLabels": {"mesh": "default"}}), json!({})),
    );
    w.fake.create(
        "meshroot.io/v1alpha1",
        "meshes",
        "",
        mesh("b", json!({"matchExpressions": [{"key": "mesh", "operator": "Exists"}]}), json!({})),
    );
    // PluginCA meshes are not routed: their istiod signs.
    w.fake.create("meshroot.io/v1alpha1", "meshes", "", mesh("gw", json!({}), json!({"mode": "PluginCA"})));
    let problems = eventually("problems to be reported", || {
        let p = w.registry.problems();
        (p.contains_key("bad-ttl") && p.contains_key("bad-account")).then_some(p)
    })
    .await;
    assert!(problems["bad-ttl"].contains("defaultTTL"), "{problems:?}");
    assert!(problems["bad-account"].contains("NAMESPACE/SERVICEACCOUNT"), "{problems:?}");
    assert!(!problems.contains_key("gw"));
    let err = eventually("the overlap", || {
        w.registry.route("bookinfo").err().filter(|e| matches!(e, RouteError::Ambiguous { .. }))
    })
    .await;
    assert!(err.to_string().contains("a, b"), "{err}");
}
