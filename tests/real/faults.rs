//! Faults on the real server: etcd stopped and restarted, and a namespace
//! deleted through the real namespace controller.

use crate::chart::{self, NS, ROOT_SECRET};
use crate::cluster::{Cluster, Options};
use crate::serve::{ask, mesh_api, secret, secret_text};
use crate::support::eventually_async;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use kube::api::{Api, DeleteParams, PostParams};
use meshroot::pki::TrustBundle;
use serde_json::json;
use std::time::Duration;

/// meshroot in process, as the chart's ServiceAccount, resyncing every second.
async fn serve(cluster: &Cluster) -> meshroot::serve::Server {
    chart::serve(cluster, chart::serve_options("meshroot-0")).await
}

async fn root_configmap(cluster: &Cluster, ns: &str) -> Option<ConfigMap> {
    Api::<ConfigMap>::namespaced(cluster.admin.clone(), ns).get_opt("istio-ca-root-cert").await.ok()?
}

/// etcd goes away (killed) and comes back with its data: while it is gone,
/// a workload whose token meshroot has already reviewed still gets its
/// certificate (the review is cached); once it is back, the watches resume
/// and a new namespace gets its root ConfigMap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_outage_keeps_reviewed_workloads_served_and_reconciling_resumes() {
    let mut cluster = Cluster::start(Options::default()).await;
    chart::install(&cluster).await;
    let server = serve(&cluster).await;
    eventually_async("bookinfo's root ConfigMap", async || root_configmap(&cluster, "bookinfo").await).await;
    let root = secret(&cluster, NS, ROOT_SECRET).await.unwrap();
    let roots_pem = secret_text(&root, "tls.crt").unwrap();
    let bundle = TrustBundle::from_pem(roots_pem.as_bytes()).unwrap();

    cluster.service_account("bookinfo", "reviews").await;
    let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "reviews-1"},
        "spec": {"nodeName": "node-1", "serviceAccountName": "reviews", "containers": [{"name": "app", "image": "app"}]}}))
    .unwrap();
    let pod =
        Api::<Pod>::namespaced(cluster.admin.clone(), "bookinfo").create(&PostParams::default(), &pod).await.unwrap();
    let token =
        cluster.token("bookinfo", "reviews", &["istio-ca"], Some(("reviews-1", &pod.metadata.uid.unwrap()))).await;
    let identity = "spiffe://cluster.local/ns/bookinfo/sa/reviews";
    // The root ConfigMap can be there a moment before the mesh's intermediate (the rehearsal hit
    // "waiting for the intermediate"): wait until the CA signs.
    let before = eventually_async("a certificate before the outage", async || {
        ask(&server, &roots_pem, &token, identity).await.ok()
    })
    .await;
    meshroot::client::verify_response(&before, &bundle, identity).unwrap();

    cluster.stop("etcd");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = ask(&server, &roots_pem, &token, identity).await.expect("served from the cached review");
    meshroot::client::verify_response(&during, &bundle, identity).unwrap();

    cluster.restart("etcd");
    eventually_async("the API server back", async || {
        Api::<Namespace>::all(cluster.admin.clone()).get("bookinfo").await.ok()
    })
    .await;
    cluster.namespace("productpage", json!({"istio-injection": "enabled"})).await;
    let cm =
        eventually_async("productpage's root ConfigMap", async || root_configmap(&cluster, "productpage").await).await;
    assert_eq!(cm.data.unwrap()["root-cert.pem"], bundle.pem());
    server.shutdown().await.unwrap();
}

/// A namespace deleted through kube-controller-manager's namespace
/// controller: its root ConfigMap goes with it, meshroot stops counting it
/// and does not try to write into it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_namespace_is_let_go() {
    let cluster = Cluster::start(Options { controller_manager: true }).await;
    chart::install(&cluster).await;
    let server = serve(&cluster).await;
    eventually_async("bookinfo's root ConfigMap", async || root_configmap(&cluster, "bookinfo").await).await;
    let meshes = mesh_api(&cluster.admin);
    let covered =
        async || serde_json::to_value(meshes.get("service-mesh").await.ok()?).ok()?["status"]["namespaces"].as_u64();
    let before = eventually_async("the mesh counts bookinfo", async || covered().await.filter(|n| *n >= 1)).await;

    let namespaces: Api<Namespace> = Api::all(cluster.admin.clone());
    namespaces.delete("bookinfo", &DeleteParams::default()).await.unwrap();
    eventually_async("the namespace controller to finish bookinfo", async || {
        namespaces.get_opt("bookinfo").await.ok()?.is_none().then_some(())
    })
    .await;
    eventually_async("the mesh stops counting bookinfo", async || (covered().await? == before - 1).then_some(())).await;
    // Several resyncs later, no request of meshroot's has tried to write into it.
    let gone = time::OffsetDateTime::now_utc();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let user = format!("system:serviceaccount:{NS}:{}", chart::SERVICE_ACCOUNT);
    let late_writes: Vec<_> = cluster
        .audit_events()
        .into_iter()
        .filter(|e| e["user"]["username"] == user.as_str() && e["objectRef"]["namespace"] == "bookinfo")
        .filter(|e| !matches!(e["verb"].as_str(), Some("get" | "list" | "watch")))
        .filter(|e| {
            e["stageTimestamp"]
                .as_str()
                .and_then(|t| time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok())
                .is_some_and(|t| t > gone)
        })
        .collect();
    assert!(late_writes.is_empty(), "writes into a deleted namespace: {late_writes:#?}");
    server.shutdown().await.unwrap();
}
