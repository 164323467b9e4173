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

/// Expiry is judged on the candidate's own clock, from when it last saw the
/// Lease change, never from the holder's `renewTime`: a holder whose clock
/// runs years behind keeps a Lease it renews, and one whose clock runs ahead
/// loses it once it stops renewing.
#[tokio::test]
async fn lease_expiry_is_judged_on_the_candidates_clock_not_the_holders() {
    use k8s_openapi::api::coordination::v1::Lease;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
    use kube::api::{Api, PostParams};
    let fake = setup();
    let lease = |renewed: &str| {
        json!({
            "metadata": {"name": "meshroot-leader", "namespace": "meshroot"},
            "spec": {"holderIdentity": "replica-skewed", "leaseDurationSeconds": 1, "renewTime": renewed},
        })
    };
    fake.create("coordination.k8s.io/v1", "leases", "meshroot", lease("2020-01-01T00:00:00.000000Z"));
    let a = leader::spawn(fake.client(), cfg("replica-a"));
    // The skewed holder renews every 200 ms, its clock six years behind.
    let leases: Api<Lease> = Api::namespaced(fake.client(), "meshroot");
    let renewed_at = "2020-01-01T00:00:00Z".parse::<k8s_openapi::jiff::Timestamp>().unwrap();
    for i in 1..=15 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut current = leases.get("meshroot-leader").await.unwrap();
        let spec = current.spec.as_mut().unwrap();
        spec.renew_time = Some(MicroTime(renewed_at + Duration::from_millis(200 * i)));
        leases.replace("meshroot-leader", &PostParams::default(), &current).await.unwrap();
        assert!(!*a.is_leader.borrow(), "a took a Lease its holder renews on time (after {i} renewals)");
    }
    // Now the holder's clock runs a century ahead, and it stops renewing.
    let mut current = leases.get("meshroot-leader").await.unwrap();
    current.spec.as_mut().unwrap().renew_time = Some(MicroTime("2126-01-01T00:00:00Z".parse().unwrap()));
    leases.replace("meshroot-leader", &PostParams::default(), &current).await.unwrap();
    let stopped = std::time::Instant::now();
    until("a to take over the Lease left unrenewed", || *a.is_leader.borrow()).await;
    assert!(stopped.elapsed() >= Duration::from_secs(1), "taken before its duration passed: {:?}", stopped.elapsed());
    a.stop().await;
}

/// An API server that stops answering (SIGSTOP) must not keep a leader: each
/// attempt is cut off at the retry period, and the leader steps down before
/// the Lease's duration has passed, so no other replica can hold it yet.
#[tokio::test]
async fn a_leader_whose_api_server_hangs_steps_down_before_its_lease_can_be_taken() {
    let fake = setup();
    let cfg = LeaseConfig {
        lease_duration: Duration::from_secs(4),
        retry_period: Duration::from_millis(250),
        ..LeaseConfig::new("meshroot", "meshroot-leader", "replica-a", Default::default())
    };
    let a = leader::spawn(fake.client(), cfg);
    until("a to lead", || *a.is_leader.borrow()).await;
    fake.set_paused(true);
    let paused = std::time::Instant::now();
    until("a to step down", || !*a.is_leader.borrow()).await;
    // The Lease was last renewed at most one retry period before the pause.
    assert!(paused.elapsed() < Duration::from_millis(3750), "stepped down only after {:?}", paused.elapsed());
    fake.set_paused(false);
    until("a to lead again", || *a.is_leader.borrow()).await;
    a.stop().await;
}
