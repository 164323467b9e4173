//! Client-certificate authentication, so a workload can renew with its
//! still-valid meshroot-issued certificate.
//!
//! rustls has already verified the chain against the trust bundle (including
//! the clientAuth usage). That alone proves only that *some* CA under the
//! root issued the leaf, and the root also signs cert-manager issuers and
//! Kubernetes CSRs, so it is not enough. A leaf authenticates only if it is a
//! workload certificate that a mesh issued for itself:
//!
//! - it carries the workload mark (its key identifier is
//!   [`workload_key_id`] of its key), which only the workload profile writes
//!   (cert-manager and CSR-signer certificates are made by `pki::template`,
//!   which never copies CSR extensions but the SAN);
//! - it has exactly one URI SAN, a SPIFFE ID in the trust domain of the mesh
//!   covering its namespace;
//! - it is not a CA (basicConstraints absent or cA false) and its EKU lists
//!   clientAuth;
//! - its issuer is that mesh's current signing certificate or one it had
//!   before a recent renewal: the issuer name equals that certificate's
//!   subject, byte for byte, and the signature verifies with its key.
//!
//! A leaf that fails any of these is rejected with the reason, and the
//! authenticator chain then tries the next authenticator: a request that
//! also carries a valid token is still served by the token.
//!
//! [`workload_key_id`]: crate::pki::profile::workload_key_id

use crate::auth::{
    AuthError, Authenticator, Caller, ClientCertificateRejection as Refused, Credentials, Rejection, Unavailable,
};
use crate::mesh::{MeshRegistry, RouteError};
use crate::pki::WorkloadIdentity;
use crate::pki::authority::{issued_by, parse_certificate, uri_sans};
use crate::pki::profile::is_workload_certificate;
use async_trait::async_trait;
use std::sync::Arc;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Authenticates a caller by its verified TLS client certificate, which must be a workload leaf of the mesh
/// covering its namespace, as the module documentation lists. Does not apply when no certificate was presented.
#[derive(Debug)]
pub struct ClientCertificateAuthenticator {
    registry: Arc<MeshRegistry>,
}

impl ClientCertificateAuthenticator {
    /// Accepts workload leaves of the meshes in `registry`.
    pub fn new(registry: Arc<MeshRegistry>) -> Self {
        Self { registry }
    }
}

fn rejected(why: Refused) -> AuthError {
    Rejection::ClientCertificate(why).into()
}

fn malformed(why: impl std::fmt::Display) -> AuthError {
    rejected(Refused::Malformed(why.to_string()))
}

#[async_trait]
impl Authenticator for ClientCertificateAuthenticator {
    fn name(&self) -> &'static str {
        "client-certificate"
    }

    async fn authenticate(&self, credentials: &Credentials) -> Result<Option<Caller>, AuthError> {
        let Some(leaf) = credentials.peer_certificates.as_ref().and_then(|c| c.first()) else {
            return Ok(None);
        };
        let cert = parse_certificate(leaf).map_err(malformed)?;
        if !is_workload_certificate(&cert) {
            return Err(rejected(Refused::NotWorkload));
        }
        // The handshake checked the validity period, but TLS resumption copies a session's client
        // certificate forward unchecked, and a connection may outlive its certificate.
        let now = OffsetDateTime::now_utc();
        let validity = cert.validity();
        if now < validity.not_before.to_datetime() || now > validity.not_after.to_datetime() {
            let shown = |t: x509_parser::time::ASN1Time| t.to_datetime().format(&Rfc3339).unwrap_or_default();
            return Err(rejected(Refused::NotValidNow {
                not_before: shown(validity.not_before),
                not_after: shown(validity.not_after),
            }));
        }
        let is_ca = cert.basic_constraints().map_err(malformed)?.is_some_and(|bc| bc.value.ca);
        if is_ca {
            return Err(rejected(Refused::Ca));
        }
        let client_auth = cert.extended_key_usage().map_err(malformed)?.is_some_and(|eku| eku.value.client_auth);
        if !client_auth {
            return Err(rejected(Refused::NoClientAuth));
        }
        let uris = uri_sans(&cert);
        let [uri] = uris.as_slice() else {
            return Err(rejected(Refused::UriSans(uris.len())));
        };
        let id = WorkloadIdentity::parse(uri).map_err(|e| rejected(Refused::Identity(e.to_string())))?;
        let mesh = self.registry.route(&id.namespace).map_err(|e| match e {
            RouteError::NotReady => Unavailable::NoMeshYet.into(),
            RouteError::NoMesh(namespace) => rejected(Refused::NoMesh(namespace)),
            RouteError::Ambiguous { namespace, meshes } => rejected(Refused::AmbiguousMesh { namespace, meshes }),
        })?;
        if id.trust_domain != mesh.trust_domain {
            return Err(rejected(Refused::TrustDomain {
                certificate: id.trust_domain,
                mesh: mesh.name.clone(),
                namespace: id.namespace,
                mesh_trust_domain: mesh.trust_domain.clone(),
            }));
        }
        let signers = self.registry.signing_certificates(&mesh, now);
        if !signers.iter().any(|signer| issued_by(signer, leaf)) {
            return Err(rejected(Refused::NotIssuedByMesh { mesh: mesh.name.clone() }));
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{AuthenticatorChain, BearerToken};
    use crate::ca::static_tokens::StaticTokenAuthenticator;
    use crate::pki::{Authority, CaSpec};

    /// TLS checks a client certificate's validity at the full handshake only: a resumed session, or a
    /// connection that outlives it, would carry it on. The authenticator checks it at each request.
    #[tokio::test]
    async fn a_workload_certificate_outside_its_validity_is_refused_at_each_request() {
        use crate::mesh::Mesh;
        use crate::pki::{KeyAlgorithm, PrivateKey, SigningChain, TrustBundle};
        let now = OffsetDateTime::now_utc();
        let long_ago = now - time::Duration::days(1);
        let root = Authority::new_root(&CaSpec::root(time::Duration::days(30)), long_ago).unwrap();
        let bundle = TrustBundle::new(vec![root.certificate().clone()]).unwrap();
        let intermediate =
            root.new_intermediate(&CaSpec::intermediate("a", time::Duration::days(10)), long_ago).unwrap();
        let chain = Arc::new(SigningChain::new(intermediate, vec![], bundle).unwrap());
        let registry = Arc::new(MeshRegistry::new(vec![Arc::new(Mesh::of_all_namespaces("a", "a.td", chain.clone()))]));
        let authenticator = ClientCertificateAuthenticator::new(registry);
        let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let presenting = |issued_at: OffsetDateTime| {
            let issued = chain
                .issue_workload(&key.spki_der(), "spiffe://a.td/ns/ns1/sa/app", time::Duration::hours(1), issued_at)
                .unwrap();
            let der = crate::pki::pem::decode_certificates(issued.pem.as_bytes(), 1 << 16).unwrap().remove(0);
            Credentials { peer_certificates: Some(Arc::new(vec![der])), ..Credentials::default() }
        };
        let caller = authenticator.authenticate(&presenting(now)).await.unwrap().unwrap();
        assert_eq!((caller.namespace.as_str(), caller.service_account.as_str()), ("ns1", "app"));
        for issued_at in [now - time::Duration::hours(2), now + time::Duration::hours(2)] {
            let refused = authenticator.authenticate(&presenting(issued_at)).await.unwrap_err();
            assert!(
                matches!(&refused, AuthError::Rejected(Rejection::ClientCertificate(Refused::NotValidNow { .. }))),
                "{refused:?}"
            );
            assert!(refused.to_string().contains("is not valid now (valid from "), "{refused}");
        }
    }

    /// A chain's refusal names the authenticator that refused, as the client and the audit log see it.
    #[tokio::test]
    async fn a_refusal_names_the_authenticator_that_refused() {
        let root = Authority::new_root(&CaSpec::root(time::Duration::days(1)), OffsetDateTime::now_utc()).unwrap();
        let tokens = StaticTokenAuthenticator::parse("t1 ns1 app\n").unwrap();
        let certs = ClientCertificateAuthenticator::new(Arc::new(MeshRegistry::default()));
        let chain = AuthenticatorChain::new(vec![Arc::new(tokens), Arc::new(certs)]);
        // A certificate that is not a workload's (the root itself), and no token.
        let credentials = Credentials {
            peer_certificates: Some(Arc::new(vec![root.certificate().clone()])),
            ..Credentials::default()
        };
        let refused = chain.authenticate(&credentials).await.unwrap_err();
        assert!(
            matches!(&refused, AuthError::Rejected(Rejection::By { authenticator: "client-certificate", reason })
                if matches!(**reason, Rejection::ClientCertificate(Refused::NotWorkload))),
            "{refused:?}"
        );
        assert!(refused.to_string().starts_with("client-certificate: client certificate: not a meshroot workload"));
        // An unknown token, and no certificate.
        let credentials = Credentials { bearer_token: Some(BearerToken::new("nope".into())), ..Credentials::default() };
        let refused = chain.authenticate(&credentials).await.unwrap_err();
        assert_eq!(refused.to_string(), "static-token: the bearer token is not recognised");
    }
}
