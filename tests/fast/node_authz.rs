//! ztunnel node authorization from the pod watch, against the fake API.

use fake_apiserver::FakeApi;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use meshroot::auth::node::NodeAuthorizer;
use meshroot::auth::{AuthError, Caller, NodeRejection, PodRef, Rejection};
use meshroot::k8s::node_authz::PodNodeAuthorizer;
use meshroot::pki::WorkloadIdentity;
use serde_json::json;
use std::time::Duration;

fn pod(fake: &FakeApi, ns: &str, name: &str, sa: &str, node: Option<&str>) -> String {
    let mut spec = json!({"serviceAccountName": sa, "containers": [{"name": "c", "image": "i"}]});
    if let Some(n) = node {
        spec["nodeName"] = json!(n);
    }
    let p = fake.create("v1", "pods", ns, json!({"metadata": {"name": name}, "spec": spec}));
    p["metadata"]["uid"].as_str().unwrap().to_string()
}

/// A fake API with `istio-system` and `namespace`, and ztunnel-a on node-1; the fake and that pod's uid.
fn with_ztunnel_on_node_1(namespace: &str) -> (FakeApi, String) {
    let fake = FakeApi::new();
    for ns in ["istio-system", namespace] {
        fake.namespace(ns, json!({}));
    }
    let uid = pod(&fake, "istio-system", "ztunnel-a", "ztunnel", Some("node-1"));
    (fake, uid)
}

fn ztunnel(name: &str, uid: &str) -> Caller {
    Caller {
        namespace: "istio-system".into(),
        service_account: "ztunnel".into(),
        pod: Some(PodRef { name: name.into(), uid: uid.into() }),
        cluster_id: "Kubernetes".into(),
        trust_domain: None,
        node: None,
        authenticated_by: "test",
    }
}

fn target(ns: &str, sa: &str) -> WorkloadIdentity {
    WorkloadIdentity::new("cluster.local", ns, sa).unwrap()
}

fn refused(why: NodeRejection) -> AuthError {
    AuthError::Rejected(Rejection::Node(why))
}

fn s(text: &str) -> String {
    text.to_string()
}

async fn decide(a: &PodNodeAuthorizer, caller: &Caller, t: &WorkloadIdentity) -> Result<(), AuthError> {
    for _ in 0..100 {
        match a.authorize(caller, t).await {
            Err(AuthError::Unavailable(_)) => tokio::time::sleep(Duration::from_millis(20)).await,
            other => return other,
        }
    }
    panic!("the pod cache never synced");
}

async fn eventually(a: &PodNodeAuthorizer, caller: &Caller, t: &WorkloadIdentity, ok: bool) {
    for _ in 0..100 {
        if decide(a, caller, t).await.is_ok() == ok {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("decision never became {ok}");
}

#[tokio::test]
async fn ztunnel_may_act_only_for_workloads_on_its_node() {
    let fake = FakeApi::new();
    for ns in ["istio-system", "bookinfo"] {
        fake.namespace(ns, json!({}));
    }
    let z1 = pod(&fake, "istio-system", "ztunnel-a", "ztunnel", Some("node-1"));
    let z2 = pod(&fake, "istio-system", "ztunnel-b", "ztunnel", Some("node-2"));
    pod(&fake, "bookinfo", "reviews-1", "reviews", Some("node-1"));
    let (a, _task) = PodNodeAuthorizer::spawn(fake.client());

    decide(&a, &ztunnel("ztunnel-a", &z1), &target("bookinfo", "reviews")).await.unwrap();
    let e = decide(&a, &ztunnel("ztunnel-b", &z2), &target("bookinfo", "reviews")).await.unwrap_err();
    assert_eq!(
        e,
        refused(NodeRejection::NotOnNode {
            namespace: s("bookinfo"),
            service_account: s("reviews"),
            node: s("node-2")
        })
    );
    assert_eq!(e.to_string(), "no running pod of bookinfo/reviews is on node node-2");
    // A stale token (the pod was replaced: another uid) or no pod at all.
    let e = decide(&a, &ztunnel("ztunnel-a", "other-uid"), &target("bookinfo", "reviews")).await.unwrap_err();
    assert_eq!(e, refused(NodeRejection::PodReplaced { namespace: s("istio-system"), name: s("ztunnel-a") }));
    let e = decide(&a, &ztunnel("ghost", "x"), &target("bookinfo", "reviews")).await.unwrap_err();
    assert_eq!(e, refused(NodeRejection::PodMissing { namespace: s("istio-system"), name: s("ghost") }));
    let mut no_pod = ztunnel("ztunnel-a", &z1);
    no_pod.pod = None;
    assert_eq!(decide(&a, &no_pod, &target("bookinfo", "reviews")).await, Err(refused(NodeRejection::NoPod)));
    // A pod of another service account on the node does not help.
    let e = decide(&a, &ztunnel("ztunnel-a", &z1), &target("bookinfo", "ratings")).await.unwrap_err();
    assert_eq!(
        e,
        refused(NodeRejection::NotOnNode {
            namespace: s("bookinfo"),
            service_account: s("ratings"),
            node: s("node-1")
        })
    );

    // Scheduling, failure and deletion are followed live.
    pod(&fake, "bookinfo", "ratings-1", "ratings", None);
    let pods: Api<Pod> = Api::namespaced(fake.client(), "bookinfo");
    pods.patch("ratings-1", &PatchParams::default(), &Patch::Merge(json!({"spec": {"nodeName": "node-1"}})))
        .await
        .unwrap();
    eventually(&a, &ztunnel("ztunnel-a", &z1), &target("bookinfo", "ratings"), true).await;
    pods.patch_status("ratings-1", &PatchParams::default(), &Patch::Merge(json!({"status": {"phase": "Failed"}})))
        .await
        .unwrap();
    eventually(&a, &ztunnel("ztunnel-a", &z1), &target("bookinfo", "ratings"), false).await;
    pods.delete("reviews-1", &DeleteParams::default()).await.unwrap();
    eventually(&a, &ztunnel("ztunnel-a", &z1), &target("bookinfo", "reviews"), false).await;
}

/// A token bound to a pod that runs as another service account than the
/// token's (here: an ordinary workload's pod on the same node as the target)
/// gives no ztunnel powers, even though the pod, its uid and its node match.
#[tokio::test]
async fn a_caller_whose_pod_runs_as_another_service_account_is_refused() {
    let (fake, z) = with_ztunnel_on_node_1("bookinfo");
    let other = pod(&fake, "istio-system", "not-ztunnel", "default", Some("node-1"));
    pod(&fake, "bookinfo", "reviews-1", "reviews", Some("node-1"));
    let (a, _task) = PodNodeAuthorizer::spawn(fake.client());

    // The genuine ztunnel on node-1 may act for reviews: the world is set up right.
    decide(&a, &ztunnel("ztunnel-a", &z), &target("bookinfo", "reviews")).await.unwrap();
    // The same claim, bound to a pod of the default service account.
    let e = decide(&a, &ztunnel("not-ztunnel", &other), &target("bookinfo", "reviews")).await.unwrap_err();
    assert_eq!(e, refused(NodeRejection::PodServiceAccount { namespace: s("istio-system"), name: s("not-ztunnel") }));
    assert_eq!(e.to_string(), "the caller's pod istio-system/not-ztunnel runs as another service account");
}

#[tokio::test]
async fn an_unsynced_cache_is_unavailable_not_a_refusal() {
    let fake = FakeApi::new();
    fake.set_outage(true);
    let (a, _task) = PodNodeAuthorizer::spawn(fake.client());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = a.authorize(&ztunnel("z", "u"), &target("bookinfo", "reviews")).await;
    assert!(matches!(r, Err(AuthError::Unavailable(_))), "{r:?}");
}

/// A mirror (static) pod names no service account, and a node may create one bound to itself in
/// any namespace. It is no pod of `default`: otherwise a node, or the ztunnel on a control-plane
/// node running static pods, could obtain any namespace's `default` identity.
#[tokio::test]
async fn a_pod_without_a_service_account_is_no_workload_of_default() {
    let (fake, z) = with_ztunnel_on_node_1("victim");
    fake.create(
        "v1",
        "pods",
        "victim",
        json!({
            "metadata": {"name": "static-node-1", "annotations": {"kubernetes.io/config.mirror": "x"}},
            "spec": {"nodeName": "node-1", "containers": [{"name": "c", "image": "i"}]},
        }),
    );
    let (a, _task) = PodNodeAuthorizer::spawn(fake.client());
    let e = decide(&a, &ztunnel("ztunnel-a", &z), &target("victim", "default")).await.unwrap_err();
    assert_eq!(
        e,
        refused(NodeRejection::NotOnNode { namespace: s("victim"), service_account: s("default"), node: s("node-1") })
    );
    // A real pod of default on the node is what it takes.
    pod(&fake, "victim", "app-1", "default", Some("node-1"));
    eventually(&a, &ztunnel("ztunnel-a", &z), &target("victim", "default"), true).await;
}

/// A Failed pod's token still passes a TokenReview, but its pod no longer acts for the node.
#[tokio::test]
async fn a_caller_whose_pod_failed_is_refused() {
    let (fake, z) = with_ztunnel_on_node_1("bookinfo");
    pod(&fake, "bookinfo", "reviews-1", "reviews", Some("node-1"));
    let (a, _task) = PodNodeAuthorizer::spawn(fake.client());
    decide(&a, &ztunnel("ztunnel-a", &z), &target("bookinfo", "reviews")).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(fake.client(), "istio-system");
    pods.patch_status("ztunnel-a", &PatchParams::default(), &Patch::Merge(json!({"status": {"phase": "Failed"}})))
        .await
        .unwrap();
    eventually(&a, &ztunnel("ztunnel-a", &z), &target("bookinfo", "reviews"), false).await;
    let e = decide(&a, &ztunnel("ztunnel-a", &z), &target("bookinfo", "reviews")).await.unwrap_err();
    assert_eq!(e, refused(NodeRejection::PodFailed { namespace: s("istio-system"), name: s("ztunnel-a") }));
    assert_eq!(e.to_string(), "the caller's pod istio-system/ztunnel-a has failed");
}
