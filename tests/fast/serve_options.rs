//! The Lease timings and gRPC server limits of `serve` reach the Lease and
//! the server: what `--lease-duration` and `--max-header-bytes` say is what
//! a replica does.

use crate::support;

use fake_apiserver::FakeApi;
use meshroot::k8s::leader::LeaseTimings;
use std::time::Duration;
use support::eventually_async;
use support::replica::{self, NS, ask};
use tonic::Code;

const REVIEWS: &str = "spiffe://cluster.local/ns/bookinfo/sa/reviews";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_timings_and_server_limits_are_the_configured_ones() {
    let fake = FakeApi::new();
    replica::world(&fake);
    fake.add_service_account_token("known", "bookinfo", "reviews", None, &["istio-ca"]);
    let mut opts = replica::options("meshroot-0");
    opts.lease = LeaseTimings { duration: Duration::from_secs(7), retry_period: Duration::from_secs(1) };
    opts.server.max_header_list_bytes = 8 * 1024;
    let server = meshroot::serve::start(fake.client(), opts).await.unwrap();

    let lease = eventually_async("the lease", async || {
        let lease = fake.get("coordination.k8s.io/v1", "leases", NS, "meshroot-leader")?;
        (lease["spec"]["holderIdentity"] == "meshroot-0").then_some(lease)
    })
    .await;
    assert_eq!(lease["spec"]["leaseDurationSeconds"], 7, "{lease}");

    let port = server.grpc_addr.port();
    eventually_async("a certificate", async || ask(&fake, port, "known", REVIEWS).await.ok()).await;
    // A token of 9 KiB is unknown to the API server: under the default limit the request reaches
    // authentication and is refused there; under 8 KiB it never reaches the service.
    let huge = "x".repeat(9 * 1024);
    let reviews = fake.token_reviews();
    let refused = ask(&fake, port, &huge, REVIEWS).await.unwrap_err();
    assert_ne!(refused.code(), Code::Unauthenticated, "the header limit is not applied: {refused:?}");
    assert_eq!(fake.token_reviews(), reviews, "the oversized request reached the TokenReview");

    // The same request to a replica with the default limit (64 KiB) is authenticated, and refused as unknown.
    let default = replica::start(&fake, "meshroot-1").await;
    let refused = ask(&fake, default.grpc_addr.port(), &huge, REVIEWS).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    assert!(fake.token_reviews() > reviews);
}
