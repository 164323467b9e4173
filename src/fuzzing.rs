//! The bodies of the fuzz targets in `fuzz/`, kept in the library so the
//! corpus replay test (`tests/fast/fuzz_corpus.rs`) runs the very same checks on
//! every CI run. Each function must never panic for any input; the
//! assertions inside are the properties the fuzzer hunts for violations of.

use crate::auth::AuthenticatorChain;
use crate::ca::service::{CertificateService, IMPERSONATED_IDENTITY, ServiceConfig};
use crate::ca::static_tokens::StaticTokenAuthenticator;
use crate::mesh::{Mesh, MeshRegistry};
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
        let chain = Arc::new(crate::pki::SigningChain::new(int, vec![], bundle.clone()).expect("chain"));
        let mesh = Arc::new(Mesh {
            trusted_node_accounts: ["istio-system/ztunnel".to_string()].into(),
            ..Mesh::of_all_namespaces("fuzz", "cluster.local", chain)
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
    /// A certificate was issued, and it verified for the caller's identity.
    Issued,
    /// A clean refusal with this gRPC status code.
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

struct IssuerFixture {
    root: Arc<Authority>,
    mesh: Arc<crate::pki::SigningChain>,
    policy: crate::issuer::Policy,
    tenancy: crate::issuer::Tenancy,
}

/// Usage names the issuer target picks from with its second byte.
const ISSUER_USAGES: [&str; 8] = [
    "digital signature",
    "key encipherment",
    "server auth",
    "client auth",
    "cert sign",
    "any",
    "ocsp signing",
    "code signing",
];

/// The issuer target's one ClusterIssuer policy: allows CAs, a few name
/// kinds, and the mesh's trust domain granted literally, with one namespace's
/// identities by pattern.
const ISSUER_POLICY: &str = "allowCA: true\nmaxDuration: 2160h\nallowedDNSNames: ['*.example.com']\n\
     allowedURIs: ['spiffe://cluster.local', 'spiffe://cluster.local/ns/fuzz/sa/*']\nallowedIPRanges: ['10.0.0.0/8']\n\
     allowedEmails: ['*@example.com']\nallowedCommonNames: ['*']\nallowedSubjectAttributes: {O: ['*']}";

fn issuer_fixture() -> &'static IssuerFixture {
    static FIXTURE: OnceLock<IssuerFixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let now = OffsetDateTime::now_utc();
        let root = Authority::new_root(&CaSpec::root(Duration::days(365)), now).expect("root");
        let bundle = TrustBundle::new(vec![root.certificate().clone()]).expect("bundle");
        let int = root.new_intermediate(&CaSpec::intermediate("fuzz", Duration::days(30)), now).expect("intermediate");
        let mesh = Arc::new(crate::pki::SigningChain::new(int, vec![], bundle).expect("chain"));
        let spec: crate::api::issuer::IssuancePolicy = serde_saphyr::from_str(ISSUER_POLICY).expect("policy");
        let mesh_spec: crate::api::mesh::MeshSpec =
            serde_saphyr::from_str("trustDomain: cluster.local\nistiod: {namespace: istio-system}").expect("mesh");
        let own =
            crate::issuer::OwnService { namespace: "meshroot".into(), name: "meshroot".into(), extra_names: vec![] };
        IssuerFixture {
            root: Arc::new(root),
            mesh,
            policy: crate::issuer::Policy::from_spec(&spec).expect("policy"),
            tenancy: crate::issuer::Tenancy::new([("fuzz", &mesh_spec)], &own),
        }
    })
}

/// What the issuer path decided for one input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IssuerDecision {
    /// Signed, and the certificate stayed inside the policy and the profile.
    Issued,
    /// Refused: the request can never be signed as it is.
    Invalid,
    /// Refused: the issuer's policy does not allow what the request asks for.
    Policy,
}

/// The issuer path (CertificateRequest → template): byte 0 holds flags (bit
/// 0 isCA, bit 1 the mesh intermediate instead of the root, bit 2 CSR
/// extensions must match), byte 1 picks usages, bytes 2..10 are the duration
/// in seconds (little-endian i64, 0 for none), the rest is the CSR (PEM or
/// DER). What is issued must stay inside the policy and the RFC 5280
/// profile; a refusal must be a short, printable message.
pub fn issuer(data: &[u8]) -> Option<IssuerDecision> {
    let (header, csr) = (data.get(..10)?, data.get(10..)?);
    let (flags, usage_bits) = (header.first().copied()?, header.get(1).copied()?);
    let seconds = i64::from_le_bytes(header.get(2..10)?.try_into().ok()?);
    let fixture = issuer_fixture();
    let usages: Vec<String> = ISSUER_USAGES
        .iter()
        .enumerate()
        .filter(|(i, _)| usage_bits & (1 << i) != 0)
        .map(|(_, u)| u.to_string())
        .collect();
    let csr_pem = match CertificateSigningRequest::from_der(csr) {
        Ok(_) => pem::encode(pem::CERTIFICATE_REQUEST, csr).into_bytes(),
        Err(_) => csr.to_vec(),
    };
    let request = crate::issuer::SigningRequest {
        csr_pem: &csr_pem,
        is_ca: flags & 1 != 0,
        usages: &usages,
        duration: (seconds != 0).then(|| Duration::seconds(seconds)),
        csr_extensions_must_match: flags & 4 != 0,
        namespace: Some("apps"),
    };
    let scope = crate::api::issuer::IssuerScope::Cluster { allowed_namespaces: &[] };
    let root_state = crate::k8s::root::RootState {
        authority: Some(fixture.root.clone()),
        bundle: Arc::new(fixture.mesh.bundle().clone()),
        chain: Default::default(),
    };
    let registry =
        MeshRegistry::new(vec![Arc::new(Mesh::of_all_namespaces("fuzz", "cluster.local", fixture.mesh.clone()))]);
    let signer =
        crate::api::issuer::SignerRef { root: flags & 2 == 0, mesh: (flags & 2 != 0).then(|| "fuzz".to_string()) };
    let ca = crate::issuer::resolve(&signer, scope, &root_state, &registry, &fixture.tenancy).expect("signer");
    let now = OffsetDateTime::now_utc();
    match crate::issuer::sign(&request, &fixture.policy, &ca, &fixture.tenancy, now) {
        Ok(signed) => {
            check_issued(&signed, &request, &ca, fixture);
            Some(IssuerDecision::Issued)
        }
        Err(e) => {
            let m = e.to_string();
            assert!(!m.is_empty() && m.len() <= 16 * 1024, "{} bytes: {m:?}", m.len());
            assert!(!m.chars().any(char::is_control), "{m:?}");
            assert!(!matches!(e, crate::issuer::SignError::Unavailable { .. }), "the fixture's signers are valid: {m}");
            Some(if matches!(e, crate::issuer::SignError::Policy(_)) {
                IssuerDecision::Policy
            } else {
                IssuerDecision::Invalid
            })
        }
    }
}

/// What an issued certificate must be, whatever the input.
fn check_issued(
    signed: &crate::issuer::Signed,
    request: &crate::issuer::SigningRequest<'_>,
    ca: &crate::issuer::IssuingCa,
    fixture: &IssuerFixture,
) {
    use x509_parser::extensions::GeneralName;
    let chain = pem::decode_certificates(signed.chain_pem.as_bytes(), PEM_LIMIT).expect("the chain parses");
    let leaf = chain.first().expect("a leaf");
    let cert = parse_certificate(leaf).expect("the leaf parses");
    let signer = parse_certificate(ca.authority().certificate()).expect("the signer parses");
    cert.verify_signature(Some(signer.public_key())).expect("signed by the signer");
    let is_ca = cert.basic_constraints().ok().flatten().is_some_and(|bc| bc.value.ca);
    assert_eq!(is_ca, request.is_ca, "the CA flag is the request's");
    let ku = cert.key_usage().ok().flatten().map(|k| k.value);
    assert!(is_ca || !ku.is_some_and(|k| k.key_cert_sign()), "keyCertSign only with CA:TRUE");
    let nc = cert.name_constraints().ok().flatten();
    assert_eq!(nc.is_some_and(|n| n.critical), is_ca, "a CA, and only a CA, carries critical name constraints");
    if let Some(eku) = cert.extended_key_usage().ok().flatten() {
        assert!(!eku.value.any && !eku.value.ocsp_signing, "any and ocsp signing are not in the policy");
    }
    let lifetime = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
    assert!(lifetime <= 2160 * 3600, "maxDuration holds: {lifetime}s");
    assert!(cert.validity().not_after.to_datetime() <= ca.authority().not_after(), "never outlives the signer");
    assert_ne!(cert.subject().as_raw(), signer.subject().as_raw(), "never the signer's name");
    for name in cert.subject_alternative_name().ok().flatten().iter().flat_map(|s| s.value.general_names.iter()) {
        match name {
            GeneralName::DNSName(d) => {
                assert!(crate::issuer::glob::matches("*.example.com", &d.to_ascii_lowercase(), &['.']), "{d}");
                assert!(fixture.tenancy.protected_dns(d).is_none(), "{d} is protected");
            }
            GeneralName::URI(u) => assert!(
                *u == "spiffe://cluster.local"
                    || crate::issuer::glob::matches("spiffe://cluster.local/ns/fuzz/sa/*", u, &['/']),
                "{u} is outside the policy"
            ),
            GeneralName::IPAddress(_) | GeneralName::RFC822Name(_) => {}
            other => panic!("unexpected SAN {other:?}"),
        }
    }
}
