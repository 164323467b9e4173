//! Leader election against a real API server that stops answering.

use crate::cluster::{Cluster, Options};
use meshroot::k8s::leader::{self, LeaseConfig, LeaseTimings};
use serde_json::json;
use std::time::{Duration, Instant};

/// With kube-apiserver stopped (SIGSTOP), the leader steps down before its
/// Lease's duration has passed; resumed, one replica leads again.
#[tokio::test]
async fn a_hung_api_server_makes_the_leader_step_down_in_time() {
    let cluster = Cluster::start(Options::default()).await;
    cluster.namespace("meshroot", json!({})).await;
    let timings = LeaseTimings { duration: Duration::from_secs(6), retry_period: Duration::from_millis(500) };
    let config = |id: &str| LeaseConfig::new("meshroot", "meshroot-leader", id, timings);
    let a = leader::spawn(cluster.admin.clone(), config("replica-a"));
    let b = leader::spawn(cluster.admin.clone(), config("replica-b"));
    crate::support::until("a leader", || *a.is_leader.borrow() || *b.is_leader.borrow()).await;
    let leader = if *a.is_leader.borrow() { &a } else { &b };
    cluster.pause("kube-apiserver", true);
    let paused = Instant::now();
    crate::support::until("the leader to step down", || !*leader.is_leader.borrow()).await;
    let after = paused.elapsed();
    assert!(after < timings.duration, "stepped down {after:?} after the hang, past the Lease's duration");
    assert!(!*a.is_leader.borrow() && !*b.is_leader.borrow());
    cluster.pause("kube-apiserver", false);
    crate::support::until("a leader again", || *a.is_leader.borrow() || *b.is_leader.borrow()).await;
    for _ in 0..20 {
        assert!(!(*a.is_leader.borrow() && *b.is_leader.borrow()), "two leaders");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    a.stop().await;
    b.stop().await;
}
