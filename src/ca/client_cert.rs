//! Client-certificate authentication, so a workload can renew with its
//! still-valid meshroot-issued certificate. rustls has already verified the
//! chain against the trust bundle (including the clientAuth usage); this
//! maps the leaf's one SPIFFE URI SAN to a caller bound to its trust domain.

use super::auth::{AuthError, Authenticator, Caller, Credentials};
use crate::pki::WorkloadIdentity;
use crate::pki::authority::{parse_certificate, uri_sans};
use async_trait::async_trait;

#[derive(Debug, Default)]
pub struct ClientCertificateAuthenticator;

#[async_trait]
impl Authenticator for ClientCertificateAuthenticator {
    fn name(&self) -> &'static str {
        "client-certificate"
    }

    async fn authenticate(&self, credentials: &Credentials) -> Result<Option<Caller>, AuthError> {
        let Some(leaf) = credentials.peer_certificates.as_ref().and_then(|c| c.first()) else {
            return Ok(None);
        };
        let cert = parse_certificate(leaf).map_err(|e| AuthError::Rejected(format!("client certificate: {e}")))?;
        let uris = uri_sans(&cert);
        let [uri] = uris.as_slice() else {
            return Err(AuthError::Rejected(format!(
                "a client certificate must carry exactly one URI SAN, this one has {}",
                uris.len()
            )));
        };
        let id = WorkloadIdentity::parse(uri).map_err(|e| AuthError::Rejected(format!("client certificate: {e}")))?;
        Ok(Some(Caller {
            namespace: id.namespace,
            service_account: id.service_account,
            pod: None,
            cluster_id: credentials.cluster_id.clone(),
            trust_domain: Some(id.trust_domain),
            node: None,
            authenticated_by: self.name(),
        }))
    }
}
