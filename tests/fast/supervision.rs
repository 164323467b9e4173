//! A replica's long-running tasks run supervised: each reports
//! `meshroot_task_up`, the leader's controllers too, and a shutdown stops
//! them without counting failures.

use crate::support;

use fake_apiserver::FakeApi;
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

fn task_up(metrics: &str, task: &str) -> Option<u64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&format!("meshroot_task_up{{task=\"{task}\"}} ")))
        .map(|v| v.parse().unwrap())
}

/// What the leader alone runs.
const CONTROLLERS: [&str; 7] =
    ["root_bundle", "root_configmaps", "meshes", "issuer_cache", "issuers", "certificate_requests", "kube_csrs"];

const ROOT_CM: &str = "istio-ca-root-cert";

fn with_issuers(name: &str) -> meshroot::serve::ServeOptions {
    let mut opts = replica::options(name);
    opts.cert_manager_issuer = true;
    opts.kubernetes_csr_signer = true;
    opts
}

fn lease_holder(fake: &FakeApi) -> Option<String> {
    let lease = fake.get("coordination.k8s.io/v1", "leases", replica::NS, "meshroot-leader")?;
    lease["spec"]["holderIdentity"].as_str().map(String::from)
}

async fn delete_root_configmap(fake: &FakeApi) {
    let api: kube::Api<k8s_openapi::api::core::v1::ConfigMap> = kube::Api::namespaced(fake.client(), "bookinfo");
    api.delete(ROOT_CM, &Default::default()).await.unwrap();
    assert!(fake.get("v1", "configmaps", "bookinfo", ROOT_CM).is_none());
}

fn issued(fake: &FakeApi, name: &str) -> bool {
    fake.get("cert-manager.io/v1", "certificaterequests", "bookinfo", name)
        .is_some_and(|cr| cr["status"]["certificate"].is_string())
}

/// Drift appears while a replica follows: the leader repairs it, and the
/// follower starts no controller and writes nothing. Once the follower
/// leads, its controllers run and repair drift themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_runs_no_controller_and_writes_nothing_while_the_leader_repairs_drift() {
    let fake = FakeApi::new();
    replica::world(&fake);
    replica::root_cluster_issuer(&fake);
    let a = meshroot::serve::start(fake.client_as("replica-a"), with_issuers("replica-a")).await.unwrap();
    support::eventually("replica-a to lead and publish the root", || {
        (lease_holder(&fake).as_deref() == Some("replica-a")
            && fake.get("v1", "configmaps", "bookinfo", ROOT_CM).is_some())
        .then_some(())
    })
    .await;
    let b = meshroot::serve::start(fake.client_as("replica-b"), with_issuers("replica-b")).await.unwrap();
    support::eventually_async("replica-b ready", async || {
        support::http_get(b.ops_addr, "/readyz").await.starts_with("HTTP/1.1 200").then_some(())
    })
    .await;

    fake.clear_requests();
    delete_root_configmap(&fake).await;
    replica::request_a_certificate(&fake, "while-following");
    support::eventually("the leader to repair the drift", || {
        (fake.get("v1", "configmaps", "bookinfo", ROOT_CM).is_some() && issued(&fake, "while-following")).then_some(())
    })
    .await;
    // Give a follower that wrongly ran controllers time to act too (resync is 1s).
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let writes = fake.writes();
    let by = |who: &str| writes.iter().filter(|w| w.client == who).map(|w| w.path.clone()).collect::<Vec<_>>();
    let (by_a, by_b) = (by("replica-a"), by("replica-b"));
    assert!(by_b.is_empty(), "the follower wrote: {by_b:?}");
    assert!(by_a.iter().any(|p| p.ends_with(&format!("/namespaces/bookinfo/configmaps/{ROOT_CM}"))), "{by_a:?}");
    assert!(by_a.iter().any(|p| p.ends_with("/certificaterequests/while-following/status")), "{by_a:?}");
    let metrics = support::http_get(b.ops_addr, "/metrics").await;
    assert_eq!(task_up(&metrics, "controllers"), Some(1), "the follower waits to lead: {metrics}");
    for task in CONTROLLERS {
        assert_ne!(task_up(&metrics, task), Some(1), "{task} runs on the follower: {metrics}");
    }
    assert_eq!(lease_holder(&fake).as_deref(), Some("replica-a"));

    // replica-a leaves: replica-b leads, runs the controllers and repairs.
    a.shutdown().await.unwrap();
    support::eventually_async("replica-b to lead and run every controller", async || {
        let metrics = support::http_get(b.ops_addr, "/metrics").await;
        (lease_holder(&fake).as_deref() == Some("replica-b")
            && CONTROLLERS.iter().all(|t| task_up(&metrics, t) == Some(1)))
        .then_some(())
    })
    .await;
    fake.clear_requests();
    delete_root_configmap(&fake).await;
    replica::request_a_certificate(&fake, "while-leading");
    support::eventually("the new leader to repair the drift", || {
        (fake.get("v1", "configmaps", "bookinfo", ROOT_CM).is_some() && issued(&fake, "while-leading")).then_some(())
    })
    .await;
    assert!(fake.writes().iter().filter(|w| !w.client.is_empty()).all(|w| w.client == "replica-b"));
    b.shutdown().await.unwrap();
}
