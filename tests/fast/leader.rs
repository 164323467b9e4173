//! Lease-based leader election against the fake API server.

use crate::support;

use fake_apiserver::FakeApi;
use meshroot::k8s::leader::{self, LeaseConfig};
use serde_json::json;
use std::time::Duration;
use support::until;

fn cfg(identity: &str) -> LeaseConfig {
    LeaseConfig {
        lease_duration: Duration::from_secs(1),
        retry_period: Duration::from_millis(100),
        ..LeaseConfig::new("meshroot", "meshroot-leader", identity, Default::default())
    }
}

fn setup() -> FakeApi {
    let fake = FakeApi::new();
    fake.namespace("meshroot", json!({}));
    fake
}

#[tokio::test]
async fn exactly_one_leader_and_a_fast_handover_on_release() {
    let fake = setup();
    let a = leader::spawn(fake.client(), cfg("replica-a"));
    let b = leader::spawn(fake.client(), cfg("replica-b"));
    until("a leader", || *a.is_leader.borrow() || *b.is_leader.borrow()).await;
    for _ in 0..50 {
        assert!(!(*a.is_leader.borrow() && *b.is_leader.borrow()), "two leaders at once");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (leader, follower) = if *a.is_leader.borrow() { (a, b) } else { (b, a) };
    let started = std::time::Instant::now();
    leader.stop().await;
    until("the follower to take over", || *follower.is_leader.borrow()).await;
    assert!(started.elapsed() < Duration::from_millis(1500), "released, so no need to wait for expiry");
    let lease = fake.get("coordination.k8s.io/v1", "leases", "meshroot", "meshroot-leader").unwrap();
    assert!(lease["spec"]["leaseTransitions"].as_i64().unwrap() >= 1);
    follower.stop().await;
}

#[tokio::test]
async fn a_crashed_leader_is_replaced_after_the_lease_expires() {
    let fake = setup();
    let a = leader::spawn(fake.client(), cfg("replica-a"));
    until("a to lead", || *a.is_leader.borrow()).await;
    let b = leader::spawn(fake.client(), cfg("replica-b"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!*b.is_leader.borrow(), "b must wait while a renews");
    // A crash: the task dies without releasing.
    drop(a);
    until("b to take over after expiry", || *b.is_leader.borrow()).await;
    b.stop().await;
}

#[tokio::test]
async fn a_leader_that_cannot_renew_steps_down() {
    let fake = setup();
    let a = leader::spawn(fake.client(), cfg("replica-a"));
    until("a to lead", || *a.is_leader.borrow()).await;
    fake.set_outage(true);
    until("a to step down", || !*a.is_leader.borrow()).await;
    fake.set_outage(false);
    until("a to lead again", || *a.is_leader.borrow()).await;
    a.stop().await;
}

/// `leaseTransitions` is read from the Lease: at its maximum, taking over
/// an expired Lease keeps it there instead of overflowing.
#[tokio::test]
async fn taking_over_a_lease_at_the_maximum_transition_count_does_not_overflow() {
    let fake = setup();
    fake.create(
        "coordination.k8s.io/v1",
        "leases",
        "meshroot",
        json!({
            "metadata": {"name": "meshroot-leader", "namespace": "meshroot"},
            "spec": {
                "holderIdentity": "replica-gone",
                "leaseDurationSeconds": 1,
                "renewTime": "2020-01-01T00:00:00.000000Z",
                "leaseTransitions": i32::MAX,
            }
        }),
    );
    let a = leader::spawn(fake.client(), cfg("replica-a"));
    until("a to take over the expired lease", || *a.is_leader.borrow()).await;
    let lease = fake.get("coordination.k8s.io/v1", "leases", "meshroot", "meshroot-leader").unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "replica-a");
    assert_eq!(lease["spec"]["leaseTransitions"].as_i64(), Some(i64::from(i32::MAX)));
    a.stop().await;
}
