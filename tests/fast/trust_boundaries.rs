//! Trust boundaries of the CA API, over gRPC with real TLS client
//! certificates: only workload leaves that a mesh issued (current or
//! recently replaced intermediate, with the workload mark) authenticate;
//! a client certificate's trust domain is checked on every path; and an
//! unauthenticated peer is rate limited before any TokenReview.

use crate::support;

use fake_apiserver::FakeApi;
use meshroot::client::verify_response;
use meshroot::mesh::{Mesh, NamespaceScope};
use meshroot::pb::IstioCertificateResponse;
use meshroot::pki::profile::{self, IssuedCertificate};
use meshroot::pki::template::{CertificateTemplate, issue_from_template};
use meshroot::pki::usage::Usages;
use meshroot::pki::{Authority, CaSpec, CertificateSigningRequest, KeyAlgorithm, PrivateKey, SigningChain};
use prost_types::value::Kind;
use std::sync::Arc;
use support::*;
use time::{Duration, OffsetDateTime};
use tonic::Code;
use x509_parser::prelude::{FromDer, X509Certificate};

const ISTIOD_ID: &str = "spiffe://cluster.local/ns/istio-system/sa/istiod";

fn read(ca: &TestCa, rel: &str) -> Vec<u8> {
    std::fs::read(ca.path(rel)).unwrap()
}

/// The dev root and the dev mesh's intermediate, from the state directory.
fn dev_root(ca: &TestCa) -> Authority {
    Authority::from_pem(&read(ca, "state/root/ca.crt"), &read(ca, "state/root/ca.key")).unwrap()
}

fn dev_intermediate(ca: &TestCa) -> Authority {
    Authority::from_pem(&read(ca, "state/meshes/default/ca-cert.pem"), &read(ca, "state/meshes/default/ca-key.pem"))
        .unwrap()
}

/// Asks with the TLS client certificate `chain_pem` (leaf first) and no token.
async fn ask_with_certificate(
    ca: &TestCa,
    chain_pem: &str,
    key: &PrivateKey,
    identity: &str,
    impersonate: Option<&str>,
) -> Result<IstioCertificateResponse, tonic::Status> {
    let mut client = client_with_identity(ca, chain_pem, &key.to_pem()).await.expect("the TLS handshake succeeds");
    let (_, csr) = csr_for(identity, KeyAlgorithm::EcdsaP256);
    let meta = impersonate.and_then(|id| metadata(&[("ImpersonatedIdentity", Kind::StringValue(id.into()))]));
    client.create_certificate(request(&csr, 3600, meta, &[("clusterid", "Kubernetes")])).await.map(|r| r.into_inner())
}

/// A workload certificate from CreateCertificate with the dev token: (chain PEM without the bundle, key).
async fn genuine_leaf(ca: &TestCa) -> (String, PrivateKey) {
    let (key, csr) = csr_for(DEFAULT_ID, KeyAlgorithm::EcdsaP256);
    let resp = call(ca, request(&csr, 3600, None, &[("authorization", &bearer(DEV_TOKEN))])).await.unwrap();
    (resp.cert_chain[..resp.cert_chain.len() - 1].concat(), key)
}

fn leaf_issuer_pem(resp: &IstioCertificateResponse) -> &str {
    &resp.cert_chain[1]
}

fn assert_unauthenticated(outcome: Result<IstioCertificateResponse, tonic::Status>, mentions: &[&str]) {
    let s = outcome.expect_err("must be refused");
    assert_eq!(s.code(), Code::Unauthenticated, "{s:?}");
    for m in mentions {
        assert!(s.message().contains(m), "{:?} should mention {m:?}", s.message());
    }
}

#[tokio::test]
async fn a_leaf_from_a_tenant_ca_under_the_root_does_not_authenticate() {
    let ca = start_ca().await;
    // Anyone holding a CA under the root (a cert-manager issuer, say) ...
    let tenant = dev_root(&ca)
        .new_intermediate(&CaSpec::intermediate("tenant", Duration::days(1)), OffsetDateTime::now_utc())
        .unwrap();
    let tenant_cert = X509Certificate::from_der(tenant.certificate()).unwrap().1;
    let bc = tenant_cert.basic_constraints().unwrap().unwrap().value;
    assert!(bc.ca && bc.path_len_constraint == Some(0));
    // ... signs istiod's identity, even with the workload mark ...
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let leaf =
        profile::issue_workload(&tenant, &key.spki_der(), ISTIOD_ID, Duration::hours(1), OffsetDateTime::now_utc())
            .unwrap();
    let chain = format!("{}{}", leaf.pem, tenant.certificate_pem());
    // ... and TLS accepts the chain, but the authenticator does not.
    assert_unauthenticated(
        ask_with_certificate(&ca, &chain, &key, ISTIOD_ID, None).await,
        &["client certificate", "not issued by", "mesh default"],
    );
    // With a valid token as well, the token decides who the caller is.
    let mut client = client_with_identity(&ca, &chain, &key.to_pem()).await.unwrap();
    let (_, csr) = csr_for(ISTIOD_ID, KeyAlgorithm::EcdsaP256);
    let s = client.create_certificate(request(&csr, 0, None, &[("authorization", &bearer(DEV_TOKEN))])).await;
    assert_unauthenticated(s.map(|r| r.into_inner()), &["may only have", DEFAULT_ID]);
}

/// A leaf for `identity` from the issuer path (cert-manager, CSR signer):
/// the same intermediate, but `pki::template`, so no workload mark.
fn issuer_path_leaf(int: &Authority, identity: &str) -> (IssuedCertificate, PrivateKey) {
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let csr_pem = meshroot::pki::csr::build_workload_csr(&key, identity).unwrap();
    let csr = CertificateSigningRequest::from_pem(csr_pem.as_bytes()).unwrap();
    let usages =
        Usages::from_names(&["digital signature", "key encipherment", "server auth", "client auth"], false).unwrap();
    let template = CertificateTemplate {
        csr: &csr,
        is_ca: false,
        max_path_length: None,
        name_constraints: None,
        usages: &usages,
        lifetime: Duration::hours(1),
    };
    (issue_from_template(int, &template, OffsetDateTime::now_utc()).unwrap(), key)
}

#[tokio::test]
async fn a_leaf_from_the_mesh_intermediate_without_the_workload_mark_does_not_authenticate() {
    let ca = start_ca().await;
    let int = dev_intermediate(&ca);
    let (leaf, key) = issuer_path_leaf(&int, DEFAULT_ID);
    let cert = X509Certificate::from_der(&leaf.der).unwrap().1;
    assert!(meshroot::pki::authority::issued_by(int.certificate(), &leaf.der), "signed by the mesh intermediate");
    assert!(cert.extended_key_usage().unwrap().unwrap().value.client_auth);
    assert!(!profile::is_workload_certificate(&cert));
    let chain = format!("{}{}", leaf.pem, int.certificate_pem());
    assert_unauthenticated(
        ask_with_certificate(&ca, &chain, &key, DEFAULT_ID, None).await,
        &["not a meshroot workload certificate", "subject key identifier", "need a token"],
    );
    // The same leaf plus the caller's token: served through the token.
    let mut client = client_with_identity(&ca, &chain, &key.to_pem()).await.unwrap();
    let (_, csr) = csr_for(DEFAULT_ID, KeyAlgorithm::EcdsaP256);
    let resp = client
        .create_certificate(request(&csr, 0, None, &[("authorization", &bearer(DEV_TOKEN))]))
        .await
        .unwrap()
        .into_inner();
    verify_response(&resp, &ca.bundle(), DEFAULT_ID).unwrap();
}

/// The dev mesh with a new intermediate from the same root, as a renewal makes it.
fn renew_intermediate(ca: &TestCa) -> Arc<SigningChain> {
    let int = dev_root(ca)
        .new_intermediate(&CaSpec::intermediate("default", Duration::days(30)), OffsetDateTime::now_utc())
        .unwrap();
    let chain = Arc::new(SigningChain::new(int, vec![], ca.bundle()).unwrap());
    let before = ca.server.registry.meshes()[0].clone();
    ca.server.registry.replace(vec![Arc::new(Mesh {
        name: before.name.clone(),
        trust_domain: before.trust_domain.clone(),
        scope: NamespaceScope::All,
        signer: Ok(chain.clone()),
        default_ttl: before.default_ttl,
        max_ttl: before.max_ttl,
        trusted_node_accounts: before.trusted_node_accounts.clone(),
        node_authorizer: before.node_authorizer.clone(),
    })]);
    chain
}

#[tokio::test]
async fn a_workload_leaf_renews_across_intermediate_renewals_and_then_expires_from_memory() {
    let ca = start_ca().await;
    let (first_chain, first_key) = genuine_leaf(&ca).await;
    let renewed = ask_with_certificate(&ca, &first_chain, &first_key, DEFAULT_ID, None).await.unwrap();
    verify_response(&renewed, &ca.bundle(), DEFAULT_ID).unwrap();

    // The intermediate is renewed: the leaf from the old one still renews,
    // and gets a leaf from the new one.
    let second = renew_intermediate(&ca);
    let renewed = ask_with_certificate(&ca, &first_chain, &first_key, DEFAULT_ID, None).await.unwrap();
    verify_response(&renewed, &ca.bundle(), DEFAULT_ID).unwrap();
    assert_eq!(leaf_issuer_pem(&renewed), second.authority().certificate_pem());
    // A leaf from the new intermediate authenticates too.
    let (new_chain, new_key) = genuine_leaf(&ca).await;
    assert!(new_chain.ends_with(second.authority().certificate_pem()));
    ask_with_certificate(&ca, &new_chain, &new_key, DEFAULT_ID, None).await.unwrap();

    // Two more renewals: the first intermediate is no longer remembered
    // (the last two are), so its leaves need a token again.
    renew_intermediate(&ca);
    ask_with_certificate(&ca, &first_chain, &first_key, DEFAULT_ID, None).await.unwrap();
    renew_intermediate(&ca);
    assert_unauthenticated(
        ask_with_certificate(&ca, &first_chain, &first_key, DEFAULT_ID, None).await,
        &["not issued by the current or a recent signing certificate of mesh default"],
    );
    // The second intermediate's leaf is still within the window.
    ask_with_certificate(&ca, &new_chain, &new_key, DEFAULT_ID, None).await.unwrap();
}

#[tokio::test]
async fn a_client_certificate_from_another_trust_domain_cannot_impersonate() {
    let ca = start_ca().await;
    // A workload leaf of the mesh intermediate, but for another trust domain,
    // naming the trusted node account.
    let int = dev_intermediate(&ca);
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let foreign_ztunnel = "spiffe://other.td/ns/istio-system/sa/ztunnel";
    let leaf =
        profile::issue_workload(&int, &key.spki_der(), foreign_ztunnel, Duration::hours(1), OffsetDateTime::now_utc())
            .unwrap();
    let chain = format!("{}{}", leaf.pem, int.certificate_pem());
    assert_unauthenticated(
        ask_with_certificate(&ca, &chain, &key, DEFAULT_ID, Some(DEFAULT_ID)).await,
        &["trust domain \"other.td\"", "\"cluster.local\""],
    );
    // Nor for itself.
    assert_unauthenticated(
        ask_with_certificate(&ca, &chain, &key, "spiffe://other.td/ns/istio-system/sa/ztunnel", None).await,
        &["other.td", "cluster.local"],
    );
    // The same node account in the mesh's own trust domain may impersonate.
    let own = profile::issue_workload(
        &int,
        &key.spki_der(),
        "spiffe://cluster.local/ns/istio-system/sa/ztunnel",
        Duration::hours(1),
        OffsetDateTime::now_utc(),
    )
    .unwrap();
    let chain = format!("{}{}", own.pem, int.certificate_pem());
    let resp = ask_with_certificate(&ca, &chain, &key, DEFAULT_ID, Some(DEFAULT_ID)).await.unwrap();
    verify_response(&resp, &ca.bundle(), DEFAULT_ID).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_over_its_limit_is_refused_before_any_token_review() {
    use meshroot::ca::rate_limit::{Limit, RateLimits};
    use support::replica;
    let fake = FakeApi::new();
    replica::world(&fake);
    fake.add_service_account_token("good", "bookinfo", "reviews", None, &["istio-ca"]);
    let mut opts = replica::options("meshroot-0");
    opts.rate_limits = RateLimits { peer: Limit { per_second: 1, burst: 3 }, ..RateLimits::OFF };
    let server = meshroot::serve::start(fake.client(), opts).await.unwrap();
    let port = server.grpc_addr.port();
    until_ready(server.ops_addr).await;

    let reviews = fake.token_reviews();
    for i in 0..3 {
        let s = replica::ask(&fake, port, &format!("bad-token-{i}"), "spiffe://cluster.local/ns/bookinfo/sa/reviews")
            .await
            .unwrap_err();
        assert_eq!(s.code(), Code::Unauthenticated, "{s:?}");
    }
    assert_eq!(fake.token_reviews(), reviews + 3);
    for token in ["bad-token-x", "good"] {
        let s = replica::ask(&fake, port, token, "spiffe://cluster.local/ns/bookinfo/sa/reviews").await.unwrap_err();
        assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
        assert!(
            s.message().starts_with("rate limited: peer 127.0.0.1 is over its rate limit of 1/s (burst 3)"),
            "{}",
            s.message()
        );
        let hint: u64 = s.metadata().get("grpc-retry-pushback-ms").unwrap().to_str().unwrap().parse().unwrap();
        assert!((1..=1000).contains(&hint), "{hint}");
    }
    assert_eq!(fake.token_reviews(), reviews + 3, "refused before any TokenReview");
    server.shutdown().await.unwrap();
}

async fn until_ready(ops: std::net::SocketAddr) {
    eventually_async("the replica ready", async || {
        http_get(ops, "/readyz").await.starts_with("HTTP/1.1 200").then_some(())
    })
    .await;
}
