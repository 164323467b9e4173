//! The root ConfigMap controller against the fake API server.

use crate::support;

use fake_apiserver::FakeApi;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use meshroot::controllers::root_configmaps::{self, Coverage};
use meshroot::pki::{Authority, CaSpec, TrustBundle};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use support::until;
use time::OffsetDateTime;

const CM: &str = "istio-ca-root-cert";

fn bundle() -> TrustBundle {
    let root = Authority::new_root(&CaSpec::root(time::Duration::days(30)), OffsetDateTime::now_utc()).unwrap();
    TrustBundle::new(vec![root.certificate().clone()]).unwrap()
}

fn root_pem(fake: &FakeApi, ns: &str) -> Option<String> {
    fake.get("v1", "configmaps", ns, CM).and_then(|cm| cm["data"]["root-cert.pem"].as_str().map(String::from))
}

struct World {
    fake: FakeApi,
    bundle_tx: tokio::sync::watch::Sender<Arc<TrustBundle>>,
    coverage: Coverage,
    _task: tokio::task::JoinHandle<()>,
}

fn world(bundle: &TrustBundle) -> World {
    let fake = FakeApi::new();
    for (ns, labels) in [
        ("istio-system", json!({})),
        ("ztunnel", json!({})),
        ("bookinfo", json!({"mesh": "default"})),
        ("other", json!({})),
    ] {
        fake.namespace(ns, labels);
    }
    fake.create(
        "meshroot.io/v1alpha1",
        "meshes",
        "",
        json!({"metadata": {"name": "default"}, "spec": {"trustDomain": "cluster.local", "istiod": {"namespace": "istio-system"},
            "namespaceSelector": {"matchLabels": {"mesh": "default"}}, "trustedNodeAccounts": ["ztunnel/ztunnel"]}}),
    );
    let (bundle_tx, rx) = tokio::sync::watch::channel(Arc::new(bundle.clone()));
    let coverage = Coverage::default();
    let names = [CM.to_string()].into();
    let task = root_configmaps::spawn(fake.client(), rx, Duration::from_secs(3600), coverage.clone(), names);
    World { fake, bundle_tx, coverage, _task: task }
}

#[tokio::test]
async fn distributes_the_bundle_and_repairs_drift() {
    let b = bundle();
    let w = world(&b);
    until("ConfigMaps in every covered namespace", || {
        ["istio-system", "ztunnel", "bookinfo"].iter().all(|ns| root_pem(&w.fake, ns).as_deref() == Some(b.pem()))
    })
    .await;
    assert!(root_pem(&w.fake, "other").is_none());
    let cm = w.fake.get("v1", "configmaps", "bookinfo", CM).unwrap();
    assert_eq!(cm["metadata"]["labels"]["istio.io/config"], "true");
    assert_eq!(w.coverage.lock().unwrap()["default"].namespaces, 3);

    // Nothing changes, nothing is written.
    tokio::time::sleep(Duration::from_millis(300)).await;
    w.fake.clear_requests();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(w.fake.writes().is_empty(), "{:?}", w.fake.writes());

    // An edit is reverted; a deletion is undone.
    let cms: Api<ConfigMap> = Api::namespaced(w.fake.client(), "bookinfo");
    cms.patch(CM, &PatchParams::default(), &Patch::Merge(json!({"data": {"root-cert.pem": "tampered"}})))
        .await
        .unwrap();
    until("the edit to be repaired", || root_pem(&w.fake, "bookinfo").as_deref() == Some(b.pem())).await;
    cms.delete(CM, &DeleteParams::default()).await.unwrap();
    until("the deletion to be repaired", || root_pem(&w.fake, "bookinfo").as_deref() == Some(b.pem())).await;
}

#[tokio::test]
async fn follows_namespaces_in_and_out_and_never_deletes_what_it_does_not_own() {
    let b = bundle();
    let w = world(&b);
    until("initial ConfigMaps", || root_pem(&w.fake, "bookinfo").is_some()).await;
    w.fake.namespace("reviews", json!({"mesh": "default"}));
    until("the new namespace", || root_pem(&w.fake, "reviews").as_deref() == Some(b.pem())).await;
    // A ConfigMap someone else made in a namespace outside the mesh stays.
    w.fake.create(
        "v1",
        "configmaps",
        "other",
        json!({"metadata": {"name": CM, "labels": {"istio.io/config": "true"}}, "data": {"root-cert.pem": "theirs"}}),
    );
    let nss: Api<Namespace> = Api::all(w.fake.client());
    nss.patch("reviews", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"mesh": null}}})))
        .await
        .unwrap();
    until("the owned ConfigMap to go", || root_pem(&w.fake, "reviews").is_none()).await;
    assert_eq!(root_pem(&w.fake, "other").as_deref(), Some("theirs"));
}

/// When the last Mesh using a name goes, meshroot's ConfigMaps under it go too (they would keep a
/// root meshroot no longer rotates), but only under names its RBAC lists: a ConfigMap anyone
/// labels as meshroot's under another name is left alone, never a delete that fails every pass.
#[tokio::test]
async fn a_deleted_meshs_configmaps_go_and_others_labelled_as_meshroots_stay() {
    let b = bundle();
    let w = world(&b);
    until("initial ConfigMaps", || root_pem(&w.fake, "bookinfo").is_some()).await;
    let planted = json!({"metadata": {"name": "planted", "labels": {"app.kubernetes.io/managed-by": "meshroot"}}});
    w.fake.create("v1", "configmaps", "other", planted);
    let meshes: Api<meshroot::api::mesh::Mesh> = Api::all(w.fake.client());
    meshes.delete("default", &DeleteParams::default()).await.unwrap();
    until("the mesh's ConfigMaps to go", || {
        ["istio-system", "ztunnel", "bookinfo"].iter().all(|ns| root_pem(&w.fake, ns).is_none())
    })
    .await;
    assert!(w.fake.get("v1", "configmaps", "other", "planted").is_some());
    let deletes: Vec<_> = w.fake.writes().into_iter().filter(|r| r.method == "DELETE").collect();
    assert!(deletes.iter().all(|r| !r.path.contains("planted")), "{deletes:?}");
}

#[tokio::test]
async fn a_new_bundle_reaches_every_namespace_and_stale_istiod_configmaps_are_taken_over() {
    let old = bundle();
    let w = world(&old);
    until("initial ConfigMaps", || root_pem(&w.fake, "bookinfo").is_some()).await;
    // A leftover from istiod's own CA, in a namespace that then joins the mesh.
    w.fake.namespace("legacy", json!({}));
    w.fake.create("v1", "configmaps", "legacy", json!({"metadata": {"name": CM, "labels": {"istio.io/config": "true"}}, "data": {"root-cert.pem": "istiod self-signed root"}}));
    let nss: Api<Namespace> = Api::all(w.fake.client());
    nss.patch("legacy", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"mesh": "default"}}})))
        .await
        .unwrap();
    let rotated = TrustBundle::new([old.roots(), bundle().roots()].concat()).unwrap();
    w.bundle_tx.send(Arc::new(rotated.clone())).unwrap();
    until("the rotated bundle everywhere", || {
        ["istio-system", "ztunnel", "bookinfo", "legacy"]
            .iter()
            .all(|ns| root_pem(&w.fake, ns).as_deref() == Some(rotated.pem()))
    })
    .await;
    let taken = w.fake.get("v1", "configmaps", "legacy", CM).unwrap();
    assert_eq!(taken["metadata"]["labels"]["app.kubernetes.io/managed-by"], "meshroot");
}

/// After thousands of writes the watch lags behind them; the controller must
/// read its own writes before deciding again, not redo them from a stale cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_rollout_is_written_once_and_resyncs_write_nothing() {
    let fake = FakeApi::new();
    const N: usize = 1500;
    fake.namespaces_with_one_mesh(N);
    let (_tx, rx) = tokio::sync::watch::channel(Arc::new(bundle()));
    let resync = Duration::from_millis(300);
    let _task = root_configmaps::spawn(fake.client(), rx, resync, Coverage::default(), [CM.to_string()].into());
    for _ in 0..600 {
        if fake.list("v1", "configmaps").len() > N {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(fake.list("v1", "configmaps").len(), N + 1);
    tokio::time::sleep(resync * 5).await;
    let writes = fake.writes().iter().filter(|w| w.path.contains("/configmaps")).count();
    assert_eq!(writes, N + 1, "each ConfigMap written once, and re-syncs write nothing");
}
