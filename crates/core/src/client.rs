//! A CreateCertificate client that behaves like pilot-agent: TLS to the CA
//! verified against a root file, bearer token and `clusterid` headers, and
//! the response checked as pilot-agent and ztunnel check it.

use crate::pb::istio_certificate_service_client::IstioCertificateServiceClient;
use crate::pb::{IstioCertificateRequest, IstioCertificateResponse};
use crate::pki::authority::{parse_certificate, uri_sans};
use crate::pki::{PkiError, TrustBundle, pem};
use rustls_pki_types::CertificateDer;
use thiserror::Error;
use time::OffsetDateTime;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// Why a CreateCertificate through this client failed.
#[derive(Debug, Error)]
pub enum ClientError {
    /// The CA address is not `HOST:PORT`.
    #[error("invalid CA address {0:?}: expected HOST:PORT")]
    Address(String),
    /// The detail is in the source chain (tonic's own message is generic).
    #[error("connecting to the CA")]
    Connect(#[from] tonic::transport::Error),
    /// The CA answered with an error status.
    #[error("the CA refused: {code:?}: {message}")]
    Refused {
        /// The gRPC status code.
        code: tonic::Code,
        /// The status message, as the CA sent it.
        message: String,
    },
    /// The response failed a check of [`verify_response`].
    #[error("the response is invalid: {0}")]
    Response(ResponseError),
    /// A request header cannot carry the value (gRPC metadata is printable
    /// ASCII); the value itself is not shown, as it may be a token.
    #[error("the {0} cannot be sent: it is not printable ASCII")]
    Header(&'static str),
}

/// Connects over TLS, trusting only `root_pem`. The TLS server name is the
/// host part of `addr`, as pilot-agent does.
pub async fn connect(addr: &str, root_pem: &[u8]) -> Result<IstioCertificateServiceClient<Channel>, ClientError> {
    let host = host_of(addr).ok_or_else(|| ClientError::Address(addr.to_string()))?;
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(root_pem)).domain_name(host);
    let endpoint = Endpoint::from_shared(format!("https://{addr}"))
        .map_err(|_| ClientError::Address(addr.to_string()))?
        .tls_config(tls)?;
    Ok(IstioCertificateServiceClient::new(endpoint.connect().await?))
}

/// `host` from `host:port` or `[v6]:port`.
fn host_of(addr: &str) -> Option<String> {
    let (host, port) = addr.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    (!host.is_empty()).then(|| host.to_string())
}

/// The request headers pilot-agent sends.
pub fn request(
    body: IstioCertificateRequest,
    token: Option<&str>,
    cluster_id: &str,
) -> Result<tonic::Request<IstioCertificateRequest>, ClientError> {
    let mut req = tonic::Request::new(body);
    if let Some(token) = token {
        let value = format!("Bearer {token}").parse().map_err(|_| ClientError::Header("bearer token"))?;
        req.metadata_mut().insert("authorization", value);
    }
    let cluster = cluster_id.parse().map_err(|_| ClientError::Header("cluster id"))?;
    req.metadata_mut().insert("clusterid", cluster);
    Ok(req)
}

/// A response that passed every check.
#[derive(Debug)]
pub struct VerifiedResponse {
    /// The issued certificate.
    pub leaf: CertificateDer<'static>,
    /// The certificates between the leaf and the bundle, in the order sent.
    pub intermediates: Vec<CertificateDer<'static>>,
    /// The last element: every root the CA says to trust.
    pub bundle: TrustBundle,
    /// The leaf's NotAfter.
    pub not_after: OffsetDateTime,
    /// The leaf's one URI SAN, equal to the identity asked for.
    pub uri_san: String,
}

/// Which check of [`verify_response`] a response failed.
#[derive(Debug, Error)]
pub enum ResponseError {
    /// `cert_chain` has fewer than two elements (a leaf and the root bundle).
    #[error("cert_chain has {0} element(s); at least 2 are required")]
    TooShort(usize),
    /// An element does not end in a newline (pilot-agent concatenates them).
    #[error("element {0} does not end in a newline")]
    NoNewline(usize),
    /// An element is not PEM certificates.
    #[error("element {index}: {error}")]
    Element {
        /// The element's index.
        index: usize,
        /// Why it does not decode.
        error: PkiError,
    },
    /// An element holds other than one certificate.
    #[error("element {index} holds {count} certificates; exactly one is required")]
    NotOne {
        /// The element's index.
        index: usize,
        /// How many it holds.
        count: usize,
    },
    /// The last element is not a root bundle.
    #[error("root bundle: {0}")]
    Bundle(PkiError),
    /// The leaf does not chain to the root the client trusts.
    #[error("leaf does not chain to the trusted root: {0}")]
    Untrusted(PkiError),
    /// The leaf does not parse.
    #[error(transparent)]
    Leaf(PkiError),
    /// The leaf's URI SANs are not exactly the identity asked for.
    #[error("leaf URI SANs are {found:?}; expected exactly [{expected:?}]")]
    UriSans {
        /// The leaf's URI SANs.
        found: Vec<String>,
        /// The identity asked for.
        expected: String,
    },
}

// Not `#[from]`: the message already says the cause, so it is not also a `source()` (printed twice in a chain).
impl From<ResponseError> for ClientError {
    fn from(e: ResponseError) -> Self {
        ClientError::Response(e)
    }
}

/// Checks a response: at least two elements; the leaf and each intermediate
/// one certificate per element (ztunnel keeps only the first of each); the
/// last element a bundle; the leaf chaining to `trusted` (the root we
/// already trust, not the one the server sent) with exactly one URI SAN
/// equal to `identity`.
pub fn verify_response(
    response: &IstioCertificateResponse,
    trusted: &TrustBundle,
    identity: &str,
) -> Result<VerifiedResponse, ClientError> {
    let chain = &response.cert_chain;
    let (Some((root_element, elements)), 2..) = (chain.split_last(), chain.len()) else {
        return Err(ResponseError::TooShort(chain.len()).into());
    };
    let mut single = Vec::with_capacity(elements.len());
    for (index, element) in elements.iter().enumerate() {
        if !element.ends_with('\n') {
            return Err(ResponseError::NoNewline(index).into());
        }
        let certs = pem::decode_certificates(element.as_bytes(), 1 << 20)
            .map_err(|error| ResponseError::Element { index, error })?;
        let count = certs.len();
        let Ok([cert]) = <[_; 1]>::try_from(certs) else {
            return Err(ResponseError::NotOne { index, count }.into());
        };
        single.push(cert);
    }
    let bundle = TrustBundle::from_pem(root_element.as_bytes()).map_err(ResponseError::Bundle)?;
    // The first element is the leaf, the others up to the bundle are intermediates.
    let mut certificates = single.into_iter();
    let Some(leaf) = certificates.next() else {
        return Err(ResponseError::TooShort(chain.len()).into());
    };
    let single: Vec<_> = certificates.collect();
    let now = OffsetDateTime::now_utc();
    trusted.verify(&leaf, &single, now).map_err(ResponseError::Untrusted)?;
    let parsed = parse_certificate(&leaf).map_err(ResponseError::Leaf)?;
    let uris: Vec<String> = uri_sans(&parsed).into_iter().map(String::from).collect();
    let wrong_sans = || ResponseError::UriSans { found: uris.clone(), expected: identity.to_string() };
    let Ok([uri_san]) = <[String; 1]>::try_from(uris.clone()) else {
        return Err(wrong_sans().into());
    };
    if uri_san != identity {
        return Err(wrong_sans().into());
    }
    let not_after = parsed.validity().not_after.to_datetime();
    drop(parsed);
    Ok(VerifiedResponse { intermediates: single, bundle, not_after, uri_san, leaf })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsendable_headers_say_which_and_never_echo_the_token() {
        let body = IstioCertificateRequest::default;
        let bad_token = request(body(), Some("secret\ntoken"), "Kubernetes").unwrap_err();
        assert!(matches!(bad_token, ClientError::Header("bearer token")), "{bad_token:?}");
        assert!(!bad_token.to_string().contains("secret"));
        let bad_cluster = request(body(), Some("token"), "Kube\nrnetes").unwrap_err();
        assert!(matches!(bad_cluster, ClientError::Header("cluster id")), "{bad_cluster:?}");
        assert!(request(body(), None, "Kubernetes").is_ok());
    }

    /// A response signed by a mesh intermediate for `identity`, and the root bundle to trust.
    fn response(identity: &str) -> (IstioCertificateResponse, TrustBundle) {
        use crate::pki::{Authority, CaSpec, KeyAlgorithm, PrivateKey, SigningChain};
        let now = OffsetDateTime::now_utc();
        let root = Authority::new_root(&CaSpec::root(time::Duration::days(30)), now).unwrap();
        let bundle = TrustBundle::new(vec![root.certificate().clone()]).unwrap();
        let int = root.new_intermediate(&CaSpec::intermediate("default", time::Duration::days(7)), now).unwrap();
        let chain = SigningChain::new(int, vec![], bundle.clone()).unwrap();
        let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let issued = chain.issue_workload(&key.spki_der(), identity, time::Duration::hours(1), now).unwrap();
        (IstioCertificateResponse { cert_chain: chain.response_chain(issued.pem) }, bundle)
    }

    #[test]
    fn responses_are_refused_for_the_check_they_fail() {
        let id = "spiffe://cluster.local/ns/bookinfo/sa/reviews";
        let (good, bundle) = response(id);
        let verified = verify_response(&good, &bundle, id).unwrap();
        assert_eq!(verified.uri_san, id);
        assert_eq!(verified.intermediates.len(), 1);
        let refused =
            |r: &IstioCertificateResponse, trusted: &TrustBundle, id: &str| match verify_response(r, trusted, id) {
                Err(ClientError::Response(why)) => why,
                other => panic!("expected a refusal, got {other:?}"),
            };

        let short = IstioCertificateResponse { cert_chain: good.cert_chain[..1].to_vec() };
        assert!(matches!(refused(&short, &bundle, id), ResponseError::TooShort(1)));
        let mut unterminated = good.clone();
        unterminated.cert_chain[0] = unterminated.cert_chain[0].trim_end().to_string();
        assert!(matches!(refused(&unterminated, &bundle, id), ResponseError::NoNewline(0)));
        let mut two_in_one = good.clone();
        two_in_one.cert_chain[0] = format!("{}{}", good.cert_chain[0], good.cert_chain[1]);
        assert!(matches!(refused(&two_in_one, &bundle, id), ResponseError::NotOne { index: 0, count: 2 }));
        let mut no_bundle = good.clone();
        *no_bundle.cert_chain.last_mut().unwrap() = "not pem\n".into();
        assert!(matches!(refused(&no_bundle, &bundle, id), ResponseError::Bundle(_)));
        // Chained to a root this client does not trust (the server's own bundle does not count).
        let (_, other_root) = response(id);
        assert!(matches!(refused(&good, &other_root, id), ResponseError::Untrusted(_)));
        let other = "spiffe://cluster.local/ns/bookinfo/sa/ratings";
        let why = refused(&good, &bundle, other);
        assert!(matches!(&why, ResponseError::UriSans { found, expected } if found == &[id] && expected == other));
    }

    #[test]
    fn host_parsing() {
        assert_eq!(host_of("localhost:15012").as_deref(), Some("localhost"));
        assert_eq!(host_of("[::1]:15012").as_deref(), Some("::1"));
        assert_eq!(host_of("meshroot.ns.svc:443").as_deref(), Some("meshroot.ns.svc"));
        assert_eq!(host_of("localhost"), None);
        assert_eq!(host_of(":80"), None);
        assert_eq!(host_of("h:port"), None);
    }
}
