//! The fake API server's own tests: a real `kube::Client` against it,
//! in-process and over loopback through a kubeconfig.

use fake_apiserver::FakeApi;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::watcher;
use serde_json::json;
use std::time::Duration;

fn cm(name: &str, labels: serde_json::Value) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}, "data": {"k": "v"}})).unwrap()
}

fn api_err(e: kube::Error) -> (u16, String) {
    match e {
        kube::Error::Api(s) => (s.code, s.reason),
        other => panic!("expected an API error, got {other}"),
    }
}

#[tokio::test]
async fn crud_with_resource_versions_conflicts_and_status_bodies() {
    let fake = FakeApi::new();
    fake.namespace("ns1", json!({}));
    let cms: Api<ConfigMap> = Api::namespaced(fake.client(), "ns1");

    let created = cms.create(&PostParams::default(), &cm("a", json!({}))).await.unwrap();
    let rv1 = created.metadata.resource_version.clone().unwrap();
    assert!(created.metadata.uid.is_some() && created.metadata.creation_timestamp.is_some());
    assert_eq!(
        api_err(cms.create(&PostParams::default(), &cm("a", json!({}))).await.unwrap_err()),
        (409, "AlreadyExists".into())
    );
    assert_eq!(api_err(cms.get("missing").await.unwrap_err()), (404, "NotFound".into()));

    // Update with the current resourceVersion succeeds; with a stale one, 409.
    let mut next = created.clone();
    next.data = Some([("k".to_string(), "v2".to_string())].into());
    let updated = cms.replace("a", &PostParams::default(), &next).await.unwrap();
    assert_ne!(updated.metadata.resource_version.as_deref(), Some(rv1.as_str()));
    assert_eq!(api_err(cms.replace("a", &PostParams::default(), &next).await.unwrap_err()), (409, "Conflict".into()));

    // A write that changes nothing does not bump the resourceVersion.
    let same = cms.replace("a", &PostParams::default(), &updated).await.unwrap();
    assert_eq!(same.metadata.resource_version, updated.metadata.resource_version);

    // Namespaced objects need their namespace.
    let other: Api<ConfigMap> = Api::namespaced(fake.client(), "nope");
    assert_eq!(api_err(other.create(&PostParams::default(), &cm("a", json!({}))).await.unwrap_err()).0, 404);

    // generateName.
    let generated: ConfigMap = serde_json::from_value(json!({"metadata": {"generateName": "x-"}})).unwrap();
    let g = cms.create(&PostParams::default(), &generated).await.unwrap();
    assert!(g.metadata.name.unwrap().starts_with("x-"));

    cms.delete("a", &DeleteParams::default()).await.unwrap();
    assert_eq!(api_err(cms.get("a").await.unwrap_err()).0, 404);
}

#[tokio::test]
async fn patches_apply_and_secret_string_data() {
    let fake = FakeApi::new();
    fake.namespace("ns1", json!({}));
    let cms: Api<ConfigMap> = Api::namespaced(fake.client(), "ns1");
    // Server-side apply creates, then merges.
    let pp = PatchParams::apply("meshroot").force();
    let applied = cms
        .patch(
            "b",
            &pp,
            &Patch::Apply(
                json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "b"}, "data": {"x": "1"}}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(applied.data.unwrap()["x"], "1");
    let merged = cms.patch("b", &PatchParams::default(), &Patch::Merge(json!({"data": {"y": "2"}}))).await.unwrap();
    assert_eq!(merged.data.as_ref().unwrap().len(), 2);
    let removed = cms.patch("b", &PatchParams::default(), &Patch::Merge(json!({"data": {"x": null}}))).await.unwrap();
    assert_eq!(removed.data.unwrap().keys().collect::<Vec<_>>(), vec!["y"]);
    // Apply without a field manager is refused, as by the real server.
    assert_eq!(
        api_err(cms.patch("b", &PatchParams::default(), &Patch::Apply(json!({"data": {}}))).await.unwrap_err()).0,
        400
    );
    // A merge patch carrying a stale resourceVersion is a conflict.
    let stale = cms
        .patch(
            "b",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"resourceVersion": "1"}, "data": {"z": "3"}})),
        )
        .await;
    assert_eq!(api_err(stale.unwrap_err()).0, 409);

    let secrets: Api<Secret> = Api::namespaced(fake.client(), "ns1");
    let s: Secret =
        serde_json::from_value(json!({"metadata": {"name": "s"}, "stringData": {"tls.key": "secret"}})).unwrap();
    let s = secrets.create(&PostParams::default(), &s).await.unwrap();
    assert!(s.string_data.is_none());
    assert_eq!(s.data.unwrap()["tls.key"].0, b"secret");
}

#[tokio::test]
async fn status_subresource_is_isolated_and_generation_tracks_spec() {
    let fake = FakeApi::new();
    fake.namespace("ns1", json!({}));
    let pods: Api<Pod> = Api::namespaced(fake.client(), "ns1");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "i"}]}, "status": {"phase": "Running"}
    }))
    .unwrap();
    let p = pods.create(&PostParams::default(), &pod).await.unwrap();
    assert!(p.status.is_none(), "status is dropped on create");
    assert_eq!(p.metadata.generation, Some(1));
    let p = pods
        .patch_status(
            "p",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Running"}, "spec": {"nodeName": "n9"}})),
        )
        .await
        .unwrap();
    assert_eq!(p.status.unwrap().phase.as_deref(), Some("Running"));
    assert!(p.spec.unwrap().node_name.is_none(), "a status write does not touch spec");
    assert_eq!(p.metadata.generation, Some(1));
    let p = pods
        .patch(
            "p",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"nodeName": "n1"}, "status": {"phase": "Failed"}})),
        )
        .await
        .unwrap();
    assert_eq!(p.status.unwrap().phase.as_deref(), Some("Running"), "a main write does not touch status");
    assert_eq!(p.metadata.generation, Some(2));
}

#[tokio::test]
async fn finalizers_hold_deletion_until_removed() {
    let fake = FakeApi::new();
    fake.namespace("ns1", json!({}));
    let cms: Api<ConfigMap> = Api::namespaced(fake.client(), "ns1");
    let mut c = cm("f", json!({}));
    c.metadata.finalizers = Some(vec!["meshroot.io/test".into()]);
    cms.create(&PostParams::default(), &c).await.unwrap();
    cms.delete("f", &DeleteParams::default()).await.unwrap();
    let held = cms.get("f").await.unwrap();
    assert!(held.metadata.deletion_timestamp.is_some());
    cms.patch("f", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"finalizers": null}}))).await.unwrap();
    assert_eq!(api_err(cms.get("f").await.unwrap_err()).0, 404);
}

#[tokio::test]
async fn label_and_field_selectors_filter_lists() {
    let fake = FakeApi::new();
    fake.namespace("a", json!({"mesh": "one"}));
    fake.namespace("b", json!({"mesh": "two"}));
    fake.namespace("c", json!({}));
    let nss: Api<Namespace> = Api::all(fake.client());
    let names = |l: Vec<Namespace>| l.into_iter().map(|n| n.metadata.name.unwrap()).collect::<Vec<_>>();
    assert_eq!(names(nss.list(&ListParams::default().labels("mesh=one")).await.unwrap().items), vec!["a"]);
    assert_eq!(names(nss.list(&ListParams::default().labels("mesh")).await.unwrap().items), vec!["a", "b"]);
    assert_eq!(names(nss.list(&ListParams::default().labels("!mesh")).await.unwrap().items), vec!["c"]);
    assert_eq!(names(nss.list(&ListParams::default().fields("metadata.name!=a")).await.unwrap().items), vec!["b", "c"]);
    assert_eq!(api_err(nss.list(&ListParams::default().labels("mesh in one")).await.unwrap_err()).0, 400);
}

async fn next_event(
    s: &mut futures::stream::BoxStream<'static, kube::Result<kube::api::WatchEvent<ConfigMap>>>,
) -> kube::api::WatchEvent<ConfigMap> {
    tokio::time::timeout(Duration::from_secs(5), s.try_next()).await.unwrap().unwrap().unwrap()
}

#[tokio::test]
async fn watches_replay_stream_and_follow_selectors() {
    let fake = FakeApi::new();
    fake.namespace("ns1", json!({}));
    let cms: Api<ConfigMap> = Api::namespaced(fake.client(), "ns1");
    let list = cms.list(&ListParams::default()).await.unwrap();
    let rv = list.metadata.resource_version.unwrap();
    cms.create(&PostParams::default(), &cm("before", json!({"sel": "yes"}))).await.unwrap();
    let mut stream = cms.watch(&kube::api::WatchParams::default().labels("sel=yes"), &rv).await.unwrap().boxed();
    use kube::api::WatchEvent::*;
    assert!(
        matches!(next_event(&mut stream).await, Added(c) if c.metadata.name.as_deref() == Some("before")),
        "replayed"
    );
    cms.create(&PostParams::default(), &cm("live", json!({"sel": "yes"}))).await.unwrap();
    assert!(matches!(next_event(&mut stream).await, Added(c) if c.metadata.name.as_deref() == Some("live")));
    cms.create(&PostParams::default(), &cm("ignored", json!({}))).await.unwrap();
    // Leaving the selection is a deletion to this watcher; entering it, an addition.
    cms.patch("live", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"sel": "no"}}})))
        .await
        .unwrap();
    assert!(matches!(next_event(&mut stream).await, Deleted(c) if c.metadata.name.as_deref() == Some("live")));
    cms.patch("ignored", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"sel": "yes"}}})))
        .await
        .unwrap();
    assert!(matches!(next_event(&mut stream).await, Added(c) if c.metadata.name.as_deref() == Some("ignored")));
}

#[tokio::test]
async fn kube_runtime_watcher_over_loopback_kubeconfig() {
    let fake = FakeApi::new();
    fake.namespace("ns1", json!({}));
    let served = fake.serve().await;
    let kubeconfig = kube::config::Kubeconfig::read_from(&served.kubeconfig).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await.unwrap();
    let client = kube::Client::try_from(config).unwrap();
    assert_eq!(client.apiserver_version().await.unwrap().minor, "33");
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "ns1");
    cms.create(&PostParams::default(), &cm("one", json!({}))).await.unwrap();
    let mut events = watcher(cms.clone(), watcher::Config::default()).boxed();
    let mut seen = Vec::new();
    let mut created_two = false;
    while seen.len() < 2 {
        let ev = tokio::time::timeout(Duration::from_secs(5), events.try_next()).await.unwrap().unwrap().unwrap();
        match ev {
            watcher::Event::InitApply(c) | watcher::Event::Apply(c) => seen.push(c.metadata.name.unwrap()),
            watcher::Event::InitDone if !created_two => {
                created_two = true;
                cms.create(&PostParams::default(), &cm("two", json!({}))).await.unwrap();
            }
            _ => {}
        }
    }
    assert_eq!(seen, vec!["one", "two"]);
}

#[tokio::test]
async fn custom_resources_from_crd_files_are_served() {
    let fake = FakeApi::new();
    fake.namespace("ns1", json!({}));
    let gvk = GroupVersionKind::gvk("cert-manager.io", "v1", "CertificateRequest");
    let ar = ApiResource::from_gvk_with_plural(&gvk, "certificaterequests");
    let crs: Api<DynamicObject> = Api::namespaced_with(fake.client(), "ns1", &ar);
    let cr: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "cert-manager.io/v1", "kind": "CertificateRequest",
        "metadata": {"name": "cr1"}, "spec": {"request": "", "issuerRef": {"name": "x", "group": "meshroot.io"}},
        "status": {"conditions": []}
    }))
    .unwrap();
    let created = crs.create(&PostParams::default(), &cr).await.unwrap();
    assert!(created.data.get("status").is_none(), "CertificateRequest has a status subresource");
    let s = crs
        .patch_status(
            "cr1",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}})),
        )
        .await
        .unwrap();
    assert_eq!(s.data["status"]["conditions"][0]["type"], "Ready");
}

#[tokio::test]
async fn token_reviews_and_outages() {
    let fake = FakeApi::new();
    fake.add_service_account_token("tok", "bookinfo", "reviews", Some(("reviews-1", "uid-1")), &["istio-ca"]);
    let client = fake.client();
    let review = |token: &str, aud: &[&str]| {
        let r: k8s_openapi::api::authentication::v1::TokenReview = serde_json::from_value(json!({
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
            "spec": {"token": token, "audiences": aud}
        }))
        .unwrap();
        let client = client.clone();
        async move {
            let api: Api<k8s_openapi::api::authentication::v1::TokenReview> = Api::all(client);
            api.create(&PostParams::default(), &r).await
        }
    };
    let ok = review("tok", &["istio-ca"]).await.unwrap().status.unwrap();
    assert_eq!(ok.authenticated, Some(true));
    let user = ok.user.unwrap();
    assert_eq!(user.username.as_deref(), Some("system:serviceaccount:bookinfo:reviews"));
    assert_eq!(user.extra.unwrap()["authentication.kubernetes.io/pod-name"], vec!["reviews-1".to_string()]);
    assert_eq!(review("tok", &["other"]).await.unwrap().status.unwrap().authenticated, Some(false));
    assert_eq!(review("bad", &["istio-ca"]).await.unwrap().status.unwrap().authenticated, Some(false));
    assert_eq!(fake.token_reviews(), 3);
    fake.set_outage(true);
    assert_eq!(api_err(review("tok", &["istio-ca"]).await.unwrap_err()).0, 503);
    fake.set_outage(false);
    assert!(review("tok", &["istio-ca"]).await.is_ok());
}

/// Where a real API server refuses a write, the fake does too (so meshroot's
/// tests cannot pass on writes a real cluster would refuse), and its
/// resourceVersions are opaque: equal or not, never ordered.
#[tokio::test]
async fn refuses_what_a_real_api_server_refuses() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let fake = FakeApi::with_crd_dirs(&[root.join("crds")]);
    fake.namespace("ns1", json!({}));
    let cms: Api<ConfigMap> = Api::namespaced(fake.client(), "ns1");
    let secrets: Api<Secret> = Api::namespaced(fake.client(), "ns1");
    let pp = PostParams::default();

    // Label keys and values.
    for labels in [json!({"k": "v".repeat(64)}), json!({"k": "-v"}), json!({"bad key": "v"}), json!({"a/b/c": "v"})] {
        let refused = cms.create(&pp, &cm("labelled", labels.clone())).await.unwrap_err();
        assert_eq!(api_err(refused), (422, "Invalid".into()), "{labels}");
    }
    cms.create(&pp, &cm("labelled", json!({"example.com/k": "v".repeat(63), "empty": ""}))).await.unwrap();

    // A kubernetes.io/tls Secret needs both keys (empty is allowed); its type never changes.
    let tls = |data: serde_json::Value| -> Secret {
        serde_json::from_value(json!({"metadata": {"name": "tls"}, "type": "kubernetes.io/tls", "data": data})).unwrap()
    };
    assert_eq!(api_err(secrets.create(&pp, &tls(json!({"tls.crt": "Yw=="}))).await.unwrap_err()).0, 422);
    let created = secrets.create(&pp, &tls(json!({"tls.crt": "Yw==", "tls.key": ""}))).await.unwrap();
    let mut retyped = created.clone();
    retyped.type_ = Some("Opaque".into());
    assert_eq!(api_err(secrets.replace("tls", &pp, &retyped).await.unwrap_err()).0, 422);
    let opaque: Secret = serde_json::from_value(json!({"metadata": {"name": "plain"}})).unwrap();
    assert_eq!(secrets.create(&pp, &opaque).await.unwrap().type_.as_deref(), Some("Opaque"), "defaulted");

    // No /status on a kind without the subresource.
    let mut status_write = cms.get("labelled").await.unwrap();
    status_write.data = None;
    let path_refused = cms.replace_status("labelled", &pp, &status_write).await;
    assert_eq!(api_err(path_refused.unwrap_err()).0, 404);

    // Custom resources and Leases: no update without the resourceVersion read,
    // and (custom resources) no strategic merge patch.
    let gvk = GroupVersionKind::gvk("meshroot.io", "v1alpha1", "Mesh");
    let meshes: Api<DynamicObject> = Api::all_with(fake.client(), &ApiResource::from_gvk(&gvk));
    let mesh: DynamicObject = serde_json::from_value(
        json!({"apiVersion": "meshroot.io/v1alpha1", "kind": "Mesh", "metadata": {"name": "m"}, "spec": {}}),
    )
    .unwrap();
    let mut mesh = meshes.create(&pp, &mesh).await.unwrap();
    mesh.metadata.resource_version = None;
    assert_eq!(api_err(meshes.replace("m", &pp, &mesh).await.unwrap_err()), (422, "Invalid".into()));
    let strategic = Patch::Strategic(json!({"metadata": {"labels": {"a": "b"}}}));
    assert_eq!(api_err(meshes.patch("m", &PatchParams::default(), &strategic).await.unwrap_err()).0, 415);
    meshes
        .patch("m", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"a": "b"}}})))
        .await
        .unwrap();
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> = Api::namespaced(fake.client(), "ns1");
    let lease = leases.create(&pp, &serde_json::from_value(json!({"metadata": {"name": "l"}})).unwrap()).await.unwrap();
    let mut unconditional = lease.clone();
    unconditional.metadata.resource_version = None;
    assert_eq!(api_err(leases.replace("l", &pp, &unconditional).await.unwrap_err()).0, 422);
    // A ConfigMap may be replaced unconditionally.
    let mut cm_unconditional = cms.get("labelled").await.unwrap();
    cm_unconditional.metadata.resource_version = None;
    cm_unconditional.data = Some([("k".to_string(), "v2".to_string())].into());
    cms.replace("labelled", &pp, &cm_unconditional).await.unwrap();

    // resourceVersions: successive writes do not count up.
    let mut versions = Vec::new();
    for i in 0..8 {
        let written = cms.create(&pp, &cm(&format!("rv-{i}"), json!({}))).await.unwrap();
        versions.push(written.metadata.resource_version.unwrap().parse::<u64>().unwrap());
    }
    assert!(versions.windows(2).any(|w| w[0] > w[1]), "ordered like counters: {versions:?}");
    // ... and a watch from one of them still resumes right after it.
    let from = versions[3].to_string();
    let params = kube::api::WatchParams::default();
    let mut events = cms.watch(&params, &from).await.unwrap().boxed();
    let first = tokio::time::timeout(Duration::from_secs(5), events.try_next()).await.unwrap().unwrap().unwrap();
    let kube::api::WatchEvent::Added(after) = first else { panic!("{first:?}") };
    assert_eq!(after.metadata.name.as_deref(), Some("rv-4"));
    // A delete's resourceVersion is as opaque, and a watch resumes after it too.
    let deleted = cms.delete("rv-7", &DeleteParams::default()).await.unwrap().left().unwrap();
    cms.create(&pp, &cm("rv-8", json!({}))).await.unwrap();
    let from = deleted.metadata.resource_version.unwrap();
    let mut events = cms.watch(&params, &from).await.unwrap().boxed();
    let first = tokio::time::timeout(Duration::from_secs(5), events.try_next()).await.unwrap().unwrap().unwrap();
    let kube::api::WatchEvent::Added(after) = first else { panic!("{first:?}") };
    assert_eq!(after.metadata.name.as_deref(), Some("rv-8"));
}

/// A paused server (SIGSTOP) holds requests unanswered, then serves them.
#[tokio::test]
async fn a_paused_server_answers_nothing_until_resumed() {
    let fake = FakeApi::new();
    fake.namespace("ns1", json!({}));
    let cms: Api<ConfigMap> = Api::namespaced(fake.client(), "ns1");
    fake.set_paused(true);
    let held = tokio::time::timeout(Duration::from_millis(500), cms.get_opt("a")).await;
    assert!(held.is_err(), "answered while paused: {held:?}");
    let pending = tokio::spawn(async move { cms.get_opt("a").await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    fake.set_paused(false);
    let answered = tokio::time::timeout(Duration::from_secs(5), pending).await.unwrap().unwrap().unwrap();
    assert!(answered.is_none());
}
