//! The service against a registry of several meshes: routing by namespace,
//! and impersonation routed by the target's namespace.

use super::rate_limit::{Limit, RateLimits};
use super::service::{CertificateService, IMPERSONATED_IDENTITY, ServiceConfig};
use super::static_tokens::StaticTokenAuthenticator;
use crate::auth::node::TrustedAccountOnly;
use crate::auth::{AuthenticatorChain, Caller};
use crate::client::verify_response;
use crate::mesh::{Mesh, MeshRegistry, NamespaceScope};
use crate::pb::IstioCertificateRequest;
use crate::pb::istio_certificate_service_server::IstioCertificateService;
use crate::pki::csr::build_workload_csr;
use crate::pki::{Authority, CaSpec, KeyAlgorithm, PrivateKey, SigningChain, TrustBundle};
use crate::telemetry::Metrics;
use prost_types::{Struct, Value, value::Kind};
use std::sync::Arc;
use time::{Duration, OffsetDateTime};
use tonic::Code;

struct Fixture {
    service: CertificateService,
    registry: Arc<MeshRegistry>,
    bundle: TrustBundle,
    meshes: Vec<Arc<Mesh>>,
}

fn mesh(
    root: &Authority,
    bundle: &TrustBundle,
    name: &str,
    td: &str,
    namespaces: &[&str],
    trusted: &[&str],
) -> Arc<Mesh> {
    let int =
        root.new_intermediate(&CaSpec::intermediate(name, Duration::days(30)), OffsetDateTime::now_utc()).unwrap();
    Arc::new(Mesh {
        name: name.into(),
        trust_domain: td.into(),
        scope: NamespaceScope::Only(namespaces.iter().map(|s| s.to_string()).collect()),
        signer: Ok(Arc::new(SigningChain::new(int, vec![], bundle.clone()).unwrap())),
        default_ttl: Duration::hours(24),
        max_ttl: Duration::days(90),
        trusted_node_accounts: trusted.iter().map(|s| s.to_string()).collect(),
        node_authorizer: Arc::new(TrustedAccountOnly),
    })
}

fn fixture() -> Fixture {
    let root = Authority::new_root(&CaSpec::root(Duration::days(365)), OffsetDateTime::now_utc()).unwrap();
    let bundle = TrustBundle::new(vec![root.certificate().clone()]).unwrap();
    let meshes = vec![
        mesh(&root, &bundle, "a", "a.td", &["ns1", "shared", "istio-system"], &["istio-system/ztunnel"]),
        mesh(&root, &bundle, "b", "b.td", &["ns2", "shared"], &[]),
    ];
    let registry = Arc::new(MeshRegistry::new(meshes.clone()));
    let tokens =
        StaticTokenAuthenticator::parse("t1 ns1 app\nt2 ns2 app\nt3 ns3 app\nzt istio-system ztunnel\nts shared app\n")
            .unwrap();
    let service = CertificateService::new(
        ServiceConfig::default(),
        AuthenticatorChain::new(vec![Arc::new(tokens)]),
        registry.clone(),
        Metrics::new(),
    );
    Fixture { service, registry, bundle, meshes }
}

async fn ask(
    f: &Fixture,
    token: &str,
    identity: &str,
    impersonate: Option<&str>,
) -> Result<crate::pb::IstioCertificateResponse, tonic::Status> {
    send(&f.service, Some(token), identity, impersonate).await
}

/// Asks `service` for `identity` with a fresh key, impersonating it if asked.
async fn send(
    service: &CertificateService,
    token: Option<&str>,
    identity: &str,
    impersonate: Option<&str>,
) -> Result<crate::pb::IstioCertificateResponse, tonic::Status> {
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let csr = build_workload_csr(&key, identity).unwrap();
    let metadata = impersonate.map(|id| Struct {
        fields: [(IMPERSONATED_IDENTITY.to_string(), Value { kind: Some(Kind::StringValue(id.into())) })].into(),
    });
    let mut req = tonic::Request::new(IstioCertificateRequest { csr, validity_duration: 0, metadata });
    if let Some(token) = token {
        req.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    service.create_certificate(req).await.map(|r| r.into_inner())
}

/// A caller as an authenticator would recognise it.
fn caller(namespace: &str, service_account: &str, trust_domain: Option<&str>, node: Option<&str>) -> Caller {
    Caller {
        namespace: namespace.into(),
        service_account: service_account.into(),
        pod: None,
        cluster_id: "Kubernetes".into(),
        trust_domain: trust_domain.map(Into::into),
        node: node.map(Into::into),
        authenticated_by: "fixed",
    }
}

/// A service whose one authenticator is `authenticator`.
fn service_with(
    authenticator: Arc<dyn crate::auth::Authenticator>,
    registry: Arc<MeshRegistry>,
    rate_limits: RateLimits,
) -> CertificateService {
    CertificateService::new(
        ServiceConfig { rate_limits, ..Default::default() },
        AuthenticatorChain::new(vec![authenticator]),
        registry,
        Metrics::new(),
    )
}

fn signer_of(m: &Mesh) -> &SigningChain {
    m.signer.as_ref().unwrap()
}

fn issuer_of(resp: &crate::pb::IstioCertificateResponse) -> String {
    resp.cert_chain[1].clone()
}

#[tokio::test]
async fn each_namespace_is_signed_by_its_own_mesh_in_its_trust_domain() {
    let f = fixture();
    let a = ask(&f, "t1", "spiffe://a.td/ns/ns1/sa/app", None).await.unwrap();
    verify_response(&a, &f.bundle, "spiffe://a.td/ns/ns1/sa/app").unwrap();
    assert_eq!(issuer_of(&a), signer_of(&f.meshes[0]).authority().certificate_pem());
    let b = ask(&f, "t2", "spiffe://b.td/ns/ns2/sa/app", None).await.unwrap();
    verify_response(&b, &f.bundle, "spiffe://b.td/ns/ns2/sa/app").unwrap();
    assert_eq!(issuer_of(&b), signer_of(&f.meshes[1]).authority().certificate_pem());
    // The trust domain is the mesh's, not the caller's choice.
    let s = ask(&f, "t1", "spiffe://b.td/ns/ns1/sa/app", None).await.unwrap_err();
    assert_eq!(s.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn namespaces_outside_every_mesh_or_in_two_are_refused() {
    let f = fixture();
    let s = ask(&f, "t3", "spiffe://a.td/ns/ns3/sa/app", None).await.unwrap_err();
    assert_eq!(s.code(), Code::Unauthenticated);
    assert!(s.message().contains("not part of any mesh"), "{}", s.message());
    let s = ask(&f, "ts", "spiffe://a.td/ns/shared/sa/app", None).await.unwrap_err();
    assert_eq!(s.code(), Code::Unauthenticated);
    assert!(s.message().contains("more than one mesh (a, b)"), "{}", s.message());
    f.registry.replace(vec![]);
    let s = ask(&f, "t1", "spiffe://a.td/ns/ns1/sa/app", None).await.unwrap_err();
    assert_eq!(s.code(), Code::Unavailable);
}

#[tokio::test]
async fn impersonation_is_routed_by_the_target_and_needs_that_meshs_trust() {
    let f = fixture();
    let target = "spiffe://a.td/ns/ns1/sa/app";
    let ok = ask(&f, "zt", target, Some(target)).await.unwrap();
    verify_response(&ok, &f.bundle, target).unwrap();
    assert_eq!(issuer_of(&ok), signer_of(&f.meshes[0]).authority().certificate_pem());
    // Mesh b does not trust the node account.
    let other = "spiffe://b.td/ns/ns2/sa/app";
    let s = ask(&f, "zt", other, Some(other)).await.unwrap_err();
    assert_eq!(s.code(), Code::Unauthenticated);
    assert!(s.message().contains("not a trusted node account of mesh b"), "{}", s.message());
    // Right namespace, wrong trust domain.
    let wrong_td = "spiffe://b.td/ns/ns1/sa/app";
    let s = ask(&f, "zt", wrong_td, Some(wrong_td)).await.unwrap_err();
    assert!(s.message().contains("trust domain"), "{}", s.message());
}

/// An authenticator that recognises every request as one fixed caller.
#[derive(Debug)]
struct Fixed(Caller);

#[async_trait::async_trait]
impl crate::auth::Authenticator for Fixed {
    fn name(&self) -> &'static str {
        "fixed"
    }
    async fn authenticate(&self, _: &crate::auth::Credentials) -> Result<Option<Caller>, crate::auth::AuthError> {
        Ok(Some(self.0.clone()))
    }
}

#[tokio::test]
async fn a_credential_bound_to_another_trust_domain_is_refused() {
    let f = fixture();
    for (td, ok) in [("a.td", true), ("b.td", false)] {
        let fixed = Arc::new(Fixed(caller("ns1", "app", Some(td), None)));
        let service = service_with(fixed, f.registry.clone(), RateLimits::default());
        let outcome = send(&service, None, "spiffe://a.td/ns/ns1/sa/app", None).await;
        assert_eq!(outcome.is_ok(), ok, "{td}: {:?}", outcome.err());
    }
}

#[tokio::test]
async fn cluster_aliases_are_the_local_cluster_and_others_are_refused() {
    let f = fixture();
    let tokens = StaticTokenAuthenticator::parse("t1 ns1 app\n").unwrap();
    let service = CertificateService::new(
        ServiceConfig {
            cluster_id: "east".into(),
            cluster_aliases: vec!["Kubernetes".into(), "east-alias".into()],
            ..Default::default()
        },
        AuthenticatorChain::new(vec![Arc::new(tokens)]),
        f.registry.clone(),
        Metrics::new(),
    );
    for (cluster, ok) in [("east", true), ("Kubernetes", true), ("east-alias", true), ("", true), ("west", false)] {
        let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let csr = build_workload_csr(&key, "spiffe://a.td/ns/ns1/sa/app").unwrap();
        let mut req = tonic::Request::new(IstioCertificateRequest { csr, validity_duration: 0, metadata: None });
        req.metadata_mut().insert("authorization", "Bearer t1".parse().unwrap());
        req.metadata_mut().insert("clusterid", cluster.parse().unwrap());
        let outcome = service.create_certificate(req).await;
        assert_eq!(outcome.is_ok(), ok, "{cluster}: {:?}", outcome.err());
    }
}

#[tokio::test]
async fn per_node_rate_limits_refuse_with_a_retry_hint_and_spare_other_nodes() {
    let f = fixture();
    let limits = RateLimits { node: Limit { per_second: 1, burst: 2 }, ..RateLimits::OFF };
    let service_on =
        |node: &str| service_with(Arc::new(Fixed(caller("ns1", "app", None, Some(node)))), f.registry.clone(), limits);
    let ask = async |service: &CertificateService| send(service, None, "spiffe://a.td/ns/ns1/sa/app", None).await;
    let n1 = service_on("n1");
    ask(&n1).await.unwrap();
    ask(&n1).await.unwrap();
    let refused = ask(&n1).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(
        refused.message().starts_with("rate limited: node n1 (namespace ns1) is over its rate limit of 1/s (burst 2)"),
        "{}",
        refused.message()
    );
    let hint: u64 =
        refused.metadata().get(crate::ca::error::RETRY_PUSHBACK_HEADER).unwrap().to_str().unwrap().parse().unwrap();
    assert!((1..=1000).contains(&hint), "{hint}");
    // Each service has its own limiter; within one, another node is not affected.
    ask(&service_on("n2")).await.unwrap();
}

#[tokio::test]
async fn a_client_certificate_trust_domain_is_checked_on_the_impersonation_path_too() {
    let root = Authority::new_root(&CaSpec::root(Duration::days(365)), OffsetDateTime::now_utc()).unwrap();
    let bundle = TrustBundle::new(vec![root.certificate().clone()]).unwrap();
    // Mesh c trusts the node account of mesh a (istio-system/ztunnel).
    let registry = Arc::new(MeshRegistry::new(vec![
        mesh(&root, &bundle, "a", "a.td", &["istio-system", "ns1"], &["istio-system/ztunnel"]),
        mesh(&root, &bundle, "c", "c.td", &["ns9"], &["istio-system/ztunnel"]),
    ]));
    let ask_as = async |td: &str, target: &str| {
        let fixed = Arc::new(Fixed(caller("istio-system", "ztunnel", Some(td), None)));
        send(&service_with(fixed, registry.clone(), RateLimits::default()), None, target, Some(target)).await
    };
    // Its own mesh's trust domain, impersonating in its own mesh: fine.
    ask_as("a.td", "spiffe://a.td/ns/ns1/sa/app").await.unwrap();
    // A credential for another trust domain than the caller's own mesh.
    let s = ask_as("b.td", "spiffe://a.td/ns/ns1/sa/app").await.unwrap_err();
    assert_eq!(s.code(), Code::Unauthenticated);
    assert!(
        s.message().contains("trust domain \"b.td\"")
            && s.message().contains("mesh a, which covers the caller's namespace, is trust domain \"a.td\""),
        "{}",
        s.message()
    );
    // A credential of mesh a impersonating into mesh c (which trusts the
    // account by name): the target mesh's trust domain must match too.
    let s = ask_as("a.td", "spiffe://c.td/ns/ns9/sa/app").await.unwrap_err();
    assert_eq!(s.code(), Code::Unauthenticated);
    assert!(
        s.message().contains("trust domain \"a.td\"")
            && s.message().contains("mesh c, which covers the impersonated namespace, is trust domain \"c.td\""),
        "{}",
        s.message()
    );
}

/// An authenticator whose caller the test changes between requests.
#[derive(Debug)]
struct Switch(std::sync::Mutex<Caller>);

#[async_trait::async_trait]
impl crate::auth::Authenticator for Switch {
    fn name(&self) -> &'static str {
        "switch"
    }
    async fn authenticate(&self, _: &crate::auth::Credentials) -> Result<Option<Caller>, crate::auth::AuthError> {
        Ok(self.0.lock().ok().map(|c| c.clone()))
    }
}

#[tokio::test]
async fn one_identity_over_its_limit_spends_none_of_its_nodes_budget() {
    let f = fixture();
    let switch = Arc::new(Switch(std::sync::Mutex::new(caller("ns1", "noisy", None, Some("n1")))));
    let limits = RateLimits {
        identity: Limit { per_second: 1, burst: 2 },
        node: Limit { per_second: 1, burst: 3 },
        ..RateLimits::OFF
    };
    let service = service_with(switch.clone(), f.registry.clone(), limits);
    let ask = async |sa: &str| send(&service, None, &format!("spiffe://a.td/ns/ns1/sa/{sa}"), None).await;
    let mut refused = 0;
    for _ in 0..6 {
        if let Err(s) = ask("noisy").await {
            assert!(s.message().contains("identity spiffe://a.td/ns/ns1/sa/noisy"), "{}", s.message());
            refused += 1;
        }
    }
    assert_eq!(refused, 4, "the identity's own limit refuses it");
    // Its neighbour on the same node still has the node's third token.
    *switch.0.lock().unwrap() = caller("ns1", "quiet", None, Some("n1"));
    ask("quiet").await.unwrap();
}

/// A CSR that asks for the caller's own identity and one more name of some kind is refused, naming the
/// kind; so is one that asks for nothing.
#[tokio::test]
async fn a_csr_with_any_name_besides_the_identity_is_refused() {
    use rcgen::{CertificateParams, KeyPair, OtherNameValue, SanType};
    let f = fixture();
    let identity = "spiffe://a.td/ns/ns1/sa/app";
    let uri = || SanType::URI(identity.try_into().unwrap());
    let upn =
        SanType::OtherName((vec![1, 3, 6, 1, 4, 1, 311, 20, 2, 3], OtherNameValue::Utf8String("app@a.td".into())));
    for (extra, named) in [
        (Some(SanType::DnsName("app.example.com".try_into().unwrap())), "1 DNS name(s)"),
        (Some(SanType::IpAddress("10.0.0.1".parse().unwrap())), "1 IP address(es)"),
        (Some(SanType::Rfc822Name("app@example.com".try_into().unwrap())), "1 email address(es)"),
        (Some(upn), "1 other name(s)"),
        (None, "the CSR has no URI SAN"),
    ] {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = match extra {
            Some(san) => vec![uri(), san],
            None => vec![],
        };
        let csr = params.serialize_request(&key).unwrap().pem().unwrap();
        let mut req = tonic::Request::new(IstioCertificateRequest { csr, validity_duration: 0, metadata: None });
        req.metadata_mut().insert("authorization", "Bearer t1".parse().unwrap());
        let refused = f.service.create_certificate(req).await.unwrap_err();
        assert_eq!(refused.code(), Code::Unauthenticated, "{named}: {refused:?}");
        assert!(refused.message().starts_with("not authorized: "), "{named}: {}", refused.message());
        assert!(refused.message().contains(named), "{named}: {}", refused.message());
    }
}
