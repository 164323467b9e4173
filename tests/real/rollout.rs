//! A rollout of 1,000 namespaces into a mesh on the real server: how long
//! until every one has its root ConfigMap, and that each got exactly one
//! write (no write redone from a watch cache that lagged behind).
//! A measurement, so not part of every run:
//! `cargo test --features real-cluster --test real -- --ignored --nocapture rollout`

use crate::chart::{self, NS};
use crate::cluster::{Cluster, Options};
use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams};
use serde_json::json;
use std::time::{Duration, Instant};

const NAMESPACES: usize = 1000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: minutes of API traffic"]
async fn a_rollout_of_1000_namespaces_converges_with_one_write_each() {
    let cluster = Cluster::start(Options::default()).await;
    chart::install(&cluster).await;
    // Event-driven convergence: the periodic resync (60 s) plays no part.
    let options =
        meshroot::serve::ServeOptions { resync: Duration::from_secs(60), ..chart::serve_options("meshroot-0") };
    let server = chart::serve(&cluster, options).await;
    let configmaps: Api<ConfigMap> = Api::all(cluster.admin.clone());
    let root_configmaps = ListParams::default().fields("metadata.name=istio-ca-root-cert");
    let bookinfo: Api<ConfigMap> = Api::namespaced(cluster.admin.clone(), "bookinfo");
    crate::support::eventually_async("bookinfo's root ConfigMap", async || {
        bookinfo.get_opt("istio-ca-root-cert").await.ok()?
    })
    .await;
    // Those of istiod's namespaces, and bookinfo's.
    let before = configmaps.list(&root_configmaps).await.unwrap().items.len();

    let started = Instant::now();
    let from = time::OffsetDateTime::now_utc();
    futures::stream::iter(0..NAMESPACES)
        .map(|i| {
            cluster
                .namespace(Box::leak(format!("rollout-{i:04}").into_boxed_str()), json!({"istio-injection": "enabled"}))
        })
        .buffer_unordered(16)
        .collect::<Vec<()>>()
        .await;
    let created = started.elapsed();
    let mut converged = None;
    while started.elapsed() < Duration::from_secs(600) {
        let count = configmaps.list(&root_configmaps).await.map(|l| l.items.len()).unwrap_or(0);
        if count == before + NAMESPACES {
            converged = Some(started.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let converged = converged.expect("every namespace gets its root ConfigMap within 10 minutes");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let user = format!("system:serviceaccount:{NS}:{}", chart::SERVICE_ACCOUNT);
    let writes = cluster
        .audit_events()
        .into_iter()
        .filter(|e| e["user"]["username"] == user.as_str() && e["stage"] == "ResponseComplete")
        .filter(|e| e["objectRef"]["resource"] == "configmaps" && e["verb"] == "patch")
        .filter(|e| {
            e["stageTimestamp"]
                .as_str()
                .and_then(|t| time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok())
                .is_some_and(|t| t >= from)
        })
        .count();
    println!(
        "{NAMESPACES} namespaces: created in {created:.1?}; every root ConfigMap present {converged:.1?} after the first \
         was created; {writes} ConfigMap writes"
    );
    assert_eq!(writes, NAMESPACES, "one write per namespace");
    server.shutdown().await.unwrap();
}
