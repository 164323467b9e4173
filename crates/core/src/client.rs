//! A CreateCertificate client that behaves like pilot-agent: TLS to the CA
//! verified against a root file, bearer token and `clusterid` headers, and
//! the response checked as pilot-agent and ztunnel check it.

use crate::pb::istio_certificate_service_client::IstioCertificateServiceClient;
use crate::pb::{IstioCertificateRequest, IstioCertificateResponse};
use crate::pki::authority::{parse_certificate, uri_sans};
use crate::pki::{TrustBundle, pem};
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
    Response(String),
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
    let bad = |m: String| ClientError::Response(m);
    let chain = &response.cert_chain;
    let (Some((root_element, elements)), 2..) = (chain.split_last(), chain.len()) else {
        return Err(bad(format!("cert_chain has {} element(s); at least 2 are required", chain.len())));
    };
    let mut single = Vec::with_capacity(elements.len());
    for (i, element) in elements.iter().enumerate() {
        if !element.ends_with('\n') {
            return Err(bad(format!("element {i} does not end in a newline")));
        }
        let certs =
            pem::decode_certificates(element.as_bytes(), 1 << 20).map_err(|e| bad(format!("element {i}: {e}")))?;
        let count = certs.len();
        let Ok([cert]) = <[_; 1]>::try_from(certs) else {
            return Err(bad(format!("element {i} holds {count} certificates; exactly one is required")));
        };
        single.push(cert);
    }
    let bundle = TrustBundle::from_pem(root_element.as_bytes()).map_err(|e| bad(format!("root bundle: {e}")))?;
    if single.is_empty() {
        return Err(bad("cert_chain holds no leaf".into()));
    }
    let leaf = single.remove(0);
    let now = OffsetDateTime::now_utc();
    trusted.verify(&leaf, &single, now).map_err(|e| bad(format!("leaf does not chain to the trusted root: {e}")))?;
    let parsed = parse_certificate(&leaf).map_err(|e| bad(e.to_string()))?;
    let uris: Vec<String> = uri_sans(&parsed).into_iter().map(String::from).collect();
    let Ok([uri_san]) = <[String; 1]>::try_from(uris.clone()) else {
        return Err(bad(format!("leaf URI SANs are {uris:?}; expected exactly [{identity:?}]")));
    };
    if uri_san != identity {
        return Err(bad(format!("leaf URI SANs are {uris:?}; expected exactly [{identity:?}]")));
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
