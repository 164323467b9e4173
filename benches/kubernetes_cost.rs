//! What meshroot costs the Kubernetes API, measured against the in-repo
//! fake API server: root distribution to many namespaces, a resync with
//! nothing to do, and TokenReviews per thousand requests from one pod.
//!
//! Run: `cargo bench --bench kubernetes_cost` (prints figures; asserts nothing).

use fake_apiserver::FakeApi;
use meshroot::auth::{Authenticator, BearerToken, Credentials};
use meshroot::controllers::root_configmaps::{self, Coverage};
use meshroot::k8s::tokenreview::{TokenReviewAuthenticator, TokenReviewConfig};
use meshroot::pki::{Authority, CaSpec, TrustBundle};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn namespaces() -> usize {
    std::env::var("MESHROOT_BENCH_NAMESPACES").ok().and_then(|n| n.parse().ok()).unwrap_or(10_000)
}

fn configmap_writes(fake: &FakeApi) -> usize {
    fake.writes().iter().filter(|w| w.path.contains("/configmaps")).count()
}

async fn root_distribution() {
    let fake = FakeApi::new();
    fake.namespaces_with_one_mesh(namespaces());
    let root = Authority::new_root(&CaSpec::root(time::Duration::days(365)), time::OffsetDateTime::now_utc()).unwrap();
    let bundle = Arc::new(TrustBundle::new(vec![root.certificate().clone()]).unwrap());
    let (_bundle_tx, bundle_rx) = tokio::sync::watch::channel(bundle);
    let resync = Duration::from_millis(500);
    let start = Instant::now();
    let task = root_configmaps::spawn(fake.client(), bundle_rx, resync, Coverage::default(), Default::default());
    let expected = namespaces() + 1;
    loop {
        let have = fake.list("v1", "configmaps").len();
        if have >= expected {
            break;
        }
        if start.elapsed() > Duration::from_secs(600) {
            println!("root distribution: gave up after 600 s with {have} of {expected} ConfigMaps");
            task.abort();
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed = start.elapsed();
    let writes = configmap_writes(&fake);
    println!(
        "root ConfigMap to {expected} namespaces: {:.2} s, {writes} API writes ({:.0} ConfigMaps/s)",
        elapsed.as_secs_f64(),
        expected as f64 / elapsed.as_secs_f64()
    );
    tokio::time::sleep(resync).await;
    fake.clear_requests();
    tokio::time::sleep(resync * 6).await;
    println!("re-sync with nothing changed: {} API writes over 6 re-syncs", configmap_writes(&fake));
    task.abort();
}

async fn token_reviews() {
    let fake = FakeApi::new();
    fake.add_service_account_token("pod-token", "bookinfo", "reviews", Some(("reviews-1", "uid-1")), &["istio-ca"]);
    let auth = TokenReviewAuthenticator::new(fake.client(), TokenReviewConfig::default());
    let creds = Credentials {
        bearer_token: Some(BearerToken::new("pod-token".into())),
        cluster_id: "Kubernetes".into(),
        ..Default::default()
    };
    let start = Instant::now();
    for _ in 0..1000 {
        auth.authenticate(&creds).await.unwrap().unwrap();
    }
    println!(
        "1,000 requests from one pod: {} TokenReviews ({:.1} µs per authentication)",
        fake.token_reviews(),
        start.elapsed().as_secs_f64() * 1e6 / 1000.0
    );
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        token_reviews().await;
        root_distribution().await;
    });
}
