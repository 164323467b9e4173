//! A replica's long-running tasks run supervised: each reports
//! `meshroot_task_up`, the leader's controllers too, and a shutdown stops
//! them without counting failures.

mod support;

use support::fake_api::FakeApi;
use support::replica;

fn up(metrics: &str, task: &str) -> bool {
    metrics.lines().any(|l| l == format!("meshroot_task_up{{task=\"{task}\"}} 1"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replicas_tasks_and_the_leaders_controllers_run_supervised() {
    let fake = FakeApi::new();
    replica::world(&fake);
    let mut opts = replica::options("meshroot-0");
    opts.cert_manager_issuer = true;
    opts.kubernetes_csr_signer = true;
    let server = meshroot::serve::start(fake.client(), opts).await.unwrap();
    let tasks = [
        "root_watch",
        "pod_authorizer",
        "registry",
        "rotation",
        "controllers",
        "root_bundle",
        "root_configmaps",
        "meshes",
        "issuer_cache",
        "issuers",
        "certificate_requests",
        "kube_csrs",
    ];
    support::eventually_async("every task up and the replica ready", async || {
        let metrics = support::http_get(server.ops_addr, "/metrics").await;
        let ready = support::http_get(server.ops_addr, "/readyz").await;
        (tasks.iter().all(|t| up(&metrics, t)) && ready.starts_with("HTTP/1.1 200")).then_some(())
    })
    .await;
    let metrics = support::http_get(server.ops_addr, "/metrics").await;
    assert!(!metrics.contains("meshroot_task_restarts_total{"), "no failures: {metrics}");
    server.shutdown().await.unwrap();
}
