//! Two replicas of the compiled `meshroot serve`, each with the chart's
//! ServiceAccount token, against a real API server: ztunnel impersonation
//! judged by the node in real pod-bound tokens, nothing written once
//! converged (counted in the API server's audit log, with the requests two
//! idle replicas make), and a leader killed mid-renewal replaced by the other.

use crate::chart::{self, NS, ROOT_SECRET};
use crate::cluster::{Cluster, Options};
use crate::serve::{secret, secret_text};
use crate::support::replica::ask_trusting;
use crate::support::{binary, eventually_async};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, PostParams};
use meshroot::pki::TrustBundle;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

const LEASE_DURATION: Duration = Duration::from_secs(5);

/// Creates pod `ns/name` on `node` as `sa`, and returns a token bound to it for audience istio-ca.
async fn pod_token(cluster: &Cluster, ns: &str, name: &str, sa: &str, node: &str) -> String {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"nodeName": node, "serviceAccountName": sa, "containers": [{"name": "app", "image": "app"}]},
    }))
    .unwrap();
    let pod = Api::<Pod>::namespaced(cluster.admin.clone(), ns).create(&PostParams::default(), &pod).await.unwrap();
    cluster.token(ns, sa, &["istio-ca"], Some((name, &pod.metadata.uid.unwrap()))).await
}

fn holder(lease: &Lease) -> Option<String> {
    lease.spec.as_ref()?.holder_identity.clone()
}

/// meshroot's own requests in the audit log that finished between `from` and `to`.
fn meshroot_requests(events: &[Value], from: OffsetDateTime, to: OffsetDateTime) -> Vec<Value> {
    let user = format!("system:serviceaccount:{NS}:{}", chart::SERVICE_ACCOUNT);
    let at = |e: &Value| e["stageTimestamp"].as_str().and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok());
    events
        .iter()
        .filter(|e| e["user"]["username"] == user.as_str() && e["stage"] == "ResponseComplete")
        .filter(|e| at(e).is_some_and(|t| t >= from && t < to))
        .cloned()
        .collect()
}

fn is_write(e: &Value) -> bool {
    matches!(e["verb"].as_str(), Some("create" | "update" | "patch" | "delete" | "deletecollection"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_one_writer_nothing_written_at_rest_and_a_killed_leader_replaced() {
    let cluster = Cluster::start(Options::default()).await;
    chart::install(&cluster).await;
    let kubeconfig = cluster.kubeconfig_with_token(&cluster.token(NS, chart::SERVICE_ACCOUNT, &[], None).await);
    // Reviews are cached for a second, so a token's loss of validity shows quickly.
    let lease_flags =
        ["--resync", "2s", "--lease-duration", "5s", "--lease-retry-period", "500ms", "--token-cache-ttl", "1s"];
    let mut replicas = vec![binary::start(&kubeconfig, "meshroot-0", &lease_flags).await];
    eventually_async("meshroot-0 ready", async || binary::ready(replicas[0].ops).await.then_some(())).await;
    replicas.push(binary::start(&kubeconfig, "meshroot-1", &lease_flags).await);
    eventually_async("meshroot-1 ready", async || binary::ready(replicas[1].ops).await.then_some(())).await;

    let root = eventually_async("the root", async || secret(&cluster, NS, ROOT_SECRET).await).await;
    let roots_pem = secret_text(&root, "tls.crt").unwrap();
    let bundle = TrustBundle::from_pem(roots_pem.as_bytes()).unwrap();

    // ztunnel (a trusted node account of the External mesh) on node-1 may
    // act for a pod on node-1, not for one on node-2: the node comes from
    // the real token's pod binding, as the API server reports it.
    cluster.service_account("istio-system", "ztunnel").await;
    for sa in ["reviews", "ratings"] {
        cluster.service_account("bookinfo", sa).await;
    }
    let ztunnel = pod_token(&cluster, "istio-system", "ztunnel-a", "ztunnel", "node-1").await;
    let reviews_token = pod_token(&cluster, "bookinfo", "reviews-1", "reviews", "node-1").await;
    pod_token(&cluster, "bookinfo", "ratings-1", "ratings", "node-2").await;
    let reviews = "spiffe://cluster.local/ns/bookinfo/sa/reviews";
    let ratings = "spiffe://cluster.local/ns/bookinfo/sa/ratings";
    for replica in &replicas {
        let issued = eventually_async("a certificate for reviews, through ztunnel", async || {
            ask_trusting(replica.grpc, roots_pem.as_bytes(), &ztunnel, reviews, Some(reviews)).await.ok()
        })
        .await;
        meshroot::client::verify_response(&issued, &bundle, reviews).unwrap();
        let refused =
            ask_trusting(replica.grpc, roots_pem.as_bytes(), &ztunnel, ratings, Some(ratings)).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    }

    // A token bound to a pod is valid while the pod is: once the pod is
    // deleted the review says no, and so does meshroot.
    let own = ask_trusting(replicas[1].grpc, roots_pem.as_bytes(), &reviews_token, reviews, None).await.unwrap();
    meshroot::client::verify_response(&own, &bundle, reviews).unwrap();
    Api::<Pod>::namespaced(cluster.admin.clone(), "bookinfo")
        .delete("reviews-1", &kube::api::DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    let refused = eventually_async("the deleted pod's token refused", async || {
        ask_trusting(replicas[1].grpc, roots_pem.as_bytes(), &reviews_token, reviews, None).await.err()
    })
    .await;
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");

    // Converged, then a quiet spell: the leader renews its Lease and nothing else is written.
    eventually_async("bookinfo's root ConfigMap", async || {
        Api::<ConfigMap>::namespaced(cluster.admin.clone(), "bookinfo").get_opt("istio-ca-root-cert").await.ok()?
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (from, quiet) = (OffsetDateTime::now_utc(), Duration::from_secs(20));
    tokio::time::sleep(quiet).await;
    let to = OffsetDateTime::now_utc();
    // The audit log is written as requests finish; give it a moment.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = meshroot_requests(&cluster.audit_events(), from, to);
    let writes: Vec<&Value> = seen.iter().filter(|e| is_write(e)).collect();
    let (renewals, others): (Vec<&Value>, Vec<&Value>) =
        writes.into_iter().partition(|e| e["objectRef"]["resource"] == "leases");
    assert!(others.is_empty(), "writes at rest: {others:#?}");
    assert!(!renewals.is_empty(), "the leader renews its Lease, so the audit log is read right");
    println!(
        "two idle replicas: {:.0} API requests a minute ({} in {quiet:?}: {} Lease renewals, 0 other writes)",
        seen.len() as f64 * 60.0 / quiet.as_secs_f64(),
        seen.len(),
        renewals.len()
    );

    // The leader is killed (no release): the other takes the Lease once it
    // has gone unrenewed for its duration, and carries on reconciling.
    let leases: Api<Lease> = Api::namespaced(cluster.admin.clone(), NS);
    let leader = holder(&leases.get("meshroot-leader").await.unwrap()).expect("a leader");
    let index = if leader == "meshroot-0" { 0 } else { 1 };
    replicas[index].kill();
    let killed = Instant::now();
    let survivor = if index == 0 { "meshroot-1" } else { "meshroot-0" };
    eventually_async("the survivor to take the Lease", async || {
        (holder(&leases.get("meshroot-leader").await.ok()?)? == survivor).then_some(())
    })
    .await;
    let took = killed.elapsed();
    assert!(took >= LEASE_DURATION.saturating_sub(Duration::from_secs(1)), "taken while the Lease was live: {took:?}");
    println!("leader killed: the other replica led after {took:.1?} (Lease duration {LEASE_DURATION:?})");
    cluster.namespace("productpage", json!({"istio-injection": "enabled"})).await;
    let cm = eventually_async("the new leader distributes the root", async || {
        Api::<ConfigMap>::namespaced(cluster.admin.clone(), "productpage").get_opt("istio-ca-root-cert").await.ok()?
    })
    .await;
    assert_eq!(cm.data.unwrap()["root-cert.pem"], bundle.pem());
}
