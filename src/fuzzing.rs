//! The bodies of the fuzz targets in `fuzz/`, kept in the library so the
//! corpus replay test (`tests/fuzz_corpus.rs`) runs the very same checks on
//! every CI run. Each function must never panic for any input; the
//! assertions inside are the properties the fuzzer hunts for violations of.

use crate::ca::auth::AuthenticatorChain;
use crate::ca::node::TrustedAccountOnly;
use crate::ca::service::{CertificateService, IMPERSONATED_IDENTITY, ServiceConfig};
use crate::ca::static_tokens::StaticTokenAuthenticator;
use crate::mesh::{Mesh, MeshRegistry, NamespaceScope};
use crate::pb::IstioCertificateRequest;
use crate::pb::istio_certificate_service_server::IstioCertificateService;
use crate::pki::authority::parse_certificate;
use crate::pki::{Authority, CaSpec, CertificateSigningRequest, PrivateKey, SpiffeId, TrustBundle, WorkloadIdentity};
use crate::pki::{keys, pem};
use crate::telemetry::Metrics;
use prost::Message;
use std::sync::{Arc, OnceLock};
use time::{Duration, OffsetDateTime};
use tonic::Code;

const PEM_LIMIT: usize = 1 << 20;

/// CSR parsing and validation, PEM and DER.
pub fn csr(data: &[u8]) {
    for parsed in [CertificateSigningRequest::from_pem(data), CertificateSigningRequest::from_der(data)] {
        let Ok(csr) = parsed else { continue };
        // An accepted CSR has a verified signature over a key we support,
        // and every accessor answers.
        keys::classify_spki_der(csr.spki_der()).expect("an accepted CSR has a supported key");
        let _ = (csr.names(), csr.subject(), csr.subject_der(), csr.requests_ca(), csr.san_der());
        let _ = (csr.key_usage(), csr.extended_key_usage(), csr.basic_constraints_ca(), csr.common_names());
    }
}

/// PEM decoding and key, certificate, bundle and authority loading.
pub fn pem_and_keys(data: &[u8]) {
    let _ = pem::decode_all(data, PEM_LIMIT);
    let _ = pem::decode_certificates(data, PEM_LIMIT);
    let _ = TrustBundle::from_pem(data);
    if let Ok(key) = PrivateKey::from_pem(data) {
        // A loaded key survives its own encoding unchanged.
        let again = PrivateKey::from_pem(key.to_pem().as_bytes()).expect("a loaded key re-loads");
        assert_eq!(again.spki_der(), key.spki_der());
    }
    // A certificate followed by its key, as in a `tls.crt`/`tls.key` pair.
    let split = data.windows(11).skip(1).position(|w| w == b"\n-----BEGIN").map(|i| i + 2);
    if let Some(at) = split
        && let Ok(authority) = Authority::from_pem(&data[..at], &data[at..])
    {
        // A loaded authority passed its self-check; its certificate parses.
        parse_certificate(authority.certificate()).expect("an accepted authority's certificate parses");
    }
}

/// SPIFFE ID and Istio identity parsing.
pub fn spiffe(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(id) = SpiffeId::parse(text) {
        // Accepted IDs are canonical: printing gives back the input.
        assert_eq!(id.to_string(), text);
        assert!(text.is_ascii(), "a SPIFFE ID is ASCII");
    }
    if let Ok(identity) = WorkloadIdentity::parse(text) {
        assert_eq!(identity.to_string(), text);
        let rebuilt = WorkloadIdentity::new(&identity.trust_domain, &identity.namespace, &identity.service_account)
            .expect("the parts of a parsed identity form it again");
        assert_eq!(rebuilt, identity);
    }
}

/// The callers the handler target can pick from with its first byte.
const TOKENS: &str = "fuzz-app ns1 app\nfuzz-ztunnel istio-system ztunnel\n";
const APP_IDENTITY: &str = "spiffe://cluster.local/ns/ns1/sa/app";

struct HandlerFixture {
    runtime: tokio::runtime::Runtime,
    service: CertificateService,
    bundle: TrustBundle,
}

fn handler_fixture() -> &'static HandlerFixture {
    static FIXTURE: OnceLock<HandlerFixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let now = OffsetDateTime::now_utc();
        let root = Authority::new_root(&CaSpec::root(Duration::days(365)), now).expect("root");
        let bundle = TrustBundle::new(vec![root.certificate().clone()]).expect("bundle");
        let int = root.new_intermediate(&CaSpec::intermediate("fuzz", Duration::days(30)), now).expect("intermediate");
        let mesh = Arc::new(Mesh {
            name: "fuzz".into(),
            trust_domain: "cluster.local".into(),
            scope: NamespaceScope::All,
            signer: Ok(Arc::new(crate::pki::SigningChain::new(int, vec![], bundle.clone()).expect("chain"))),
            default_ttl: Duration::hours(24),
            max_ttl: Duration::days(90),
            trusted_node_accounts: ["istio-system/ztunnel".to_string()].into(),
            node_authorizer: Arc::new(TrustedAccountOnly),
        });
        let tokens = StaticTokenAuthenticator::parse(TOKENS).expect("tokens");
        let service = CertificateService::new(
            ServiceConfig { rate_limits: crate::ca::rate_limit::RateLimits::OFF, ..Default::default() },
            AuthenticatorChain::new(vec![Arc::new(tokens)]),
            Arc::new(MeshRegistry::new(vec![mesh])),
            Metrics::new(),
        );
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        HandlerFixture { runtime, service, bundle }
    })
}

/// What the handler decided for one input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Not a protobuf request: tonic refuses it before the handler runs.
    NotDecoded,
    Issued,
    Refused(Code),
}

/// The handler's input path: the first byte picks the headers, the rest is
/// the protobuf request as it arrives off the wire. The decision must be a
/// certificate for exactly the right identity, or a clean refusal, never an
/// internal error.
pub fn handler(data: &[u8]) -> Decision {
    let Some((&selector, body)) = data.split_first() else { return Decision::NotDecoded };
    let Ok(body) = IstioCertificateRequest::decode(body) else { return Decision::NotDecoded };
    let fixture = handler_fixture();
    let impersonated =
        body.metadata.as_ref().and_then(|m| m.fields.get(IMPERSONATED_IDENTITY)).and_then(|v| match &v.kind {
            Some(prost_types::value::Kind::StringValue(s)) if !s.is_empty() => Some(s.clone()),
            _ => None,
        });
    let mut request = tonic::Request::new(body);
    let token = match selector & 0b11 {
        0 => None,
        1 => Some("Bearer fuzz-app"),
        2 => Some("Bearer fuzz-ztunnel"),
        _ => Some("Bearer not-a-known-token"),
    };
    if let Some(token) = token {
        request.metadata_mut().insert("authorization", tonic::metadata::MetadataValue::from_static(token));
    }
    let cluster = match (selector >> 2) & 0b11 {
        0 => None,
        1 => Some("Kubernetes"),
        2 => Some(""),
        _ => Some("another-cluster"),
    };
    if let Some(cluster) = cluster {
        request.metadata_mut().insert("clusterid", tonic::metadata::MetadataValue::from_static(cluster));
    }
    let outcome = fixture.runtime.block_on(fixture.service.create_certificate(request));
    match outcome {
        Ok(response) => {
            let expected = match token {
                Some("Bearer fuzz-ztunnel") => impersonated.expect("ztunnel is only served when impersonating"),
                Some("Bearer fuzz-app") if impersonated.is_none() => APP_IDENTITY.to_string(),
                other => panic!("issued to {other:?} impersonating {impersonated:?}"),
            };
            crate::client::verify_response(response.get_ref(), &fixture.bundle, &expected)
                .expect("an issued chain verifies and names exactly the caller's identity");
            Decision::Issued
        }
        Err(status) => {
            assert!(
                matches!(status.code(), Code::Unauthenticated | Code::InvalidArgument | Code::ResourceExhausted),
                "unexpected {:?}: {}",
                status.code(),
                status.message()
            );
            assert!(!status.message().is_empty() && status.message().len() <= 4096, "{:?}", status.message());
            assert!(!status.message().chars().any(char::is_control), "{:?}", status.message());
            Decision::Refused(status.code())
        }
    }
}
