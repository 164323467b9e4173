//! Authentication: who is calling. Each `Authenticator` looks at the
//! request's credentials and either recognises a caller, does not apply, or
//! rejects. Kubernetes TokenReview and client certificates plug in here.

mod error;
pub mod node;

pub use error::{AuthError, ClientCertificateRejection, NodeRejection, Rejection, Unavailable};

use async_trait::async_trait;
use rustls_pki_types::CertificateDer;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use zeroize::Zeroizing;

/// A bearer token. Its value never appears in `Debug` output and is wiped on drop.
#[derive(Clone)]
pub struct BearerToken(Zeroizing<String>);

impl BearerToken {
    /// Wraps a token read from a request header or a token file.
    pub fn new(token: String) -> Self {
        Self(Zeroizing::new(token))
    }
    /// The token text itself, only for passing the token on (as to a TokenReview); never log or echo it.
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// SHA-256 of the token: a safe key for lookups and caches.
    pub fn digest(&self) -> [u8; 32] {
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, self.0.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        out
    }
}

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BearerToken([redacted])")
    }
}

/// Everything a request presents to prove who it is.
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    /// The token of the `authorization: Bearer` header, if the request sent one.
    pub bearer_token: Option<BearerToken>,
    /// The `clusterid` header, already checked against the local cluster.
    pub cluster_id: String,
    /// The verified TLS client certificate chain, leaf first, if any.
    pub peer_certificates: Option<Arc<Vec<CertificateDer<'static>>>>,
    /// The TCP peer's address, if known.
    pub remote_addr: Option<SocketAddr>,
}

/// The pod a caller runs in, when the credential names one (bound tokens do).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodRef {
    /// The pod's name, in the caller's namespace.
    pub name: String,
    /// The pod's UID, which tells it from a later pod of the same name.
    pub uid: String,
}

/// An authenticated caller: a Kubernetes service account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The service account's namespace.
    pub namespace: String,
    /// The service account's name.
    pub service_account: String,
    /// The caller's pod, if the credential names one.
    pub pod: Option<PodRef>,
    /// The node the caller runs on, when the credential names it (bound
    /// tokens do from Kubernetes 1.30); the key of the per-node rate limit.
    pub node: Option<String>,
    /// The local cluster id, from [`Credentials::cluster_id`].
    pub cluster_id: String,
    /// The trust domain the credential itself binds (a client certificate's
    /// SPIFFE ID), which must then be the mesh's.
    pub trust_domain: Option<String>,
    /// Which authenticator recognised the caller (for audit).
    pub authenticated_by: &'static str,
}

impl Caller {
    /// `namespace/serviceaccount`, the form trusted node accounts are listed in.
    pub fn account(&self) -> String {
        format!("{}/{}", self.namespace, self.service_account)
    }
}

/// One way of recognising a caller from its credentials, such as a bearer token or a client certificate.
#[async_trait]
pub trait Authenticator: Send + Sync + fmt::Debug {
    /// A short, fixed name for messages and the audit log ([`Caller::authenticated_by`]).
    fn name(&self) -> &'static str;

    /// `Ok(None)` when this authenticator does not apply to these
    /// credentials (for example, no token was sent).
    async fn authenticate(&self, credentials: &Credentials) -> Result<Option<Caller>, AuthError>;
}

/// Tries authenticators in order; the first that recognises the caller wins.
/// A rejection by one does not stop the next from recognising the caller
/// (a stale token plus a valid client certificate still authenticates), but
/// if none does, an `Unavailable` outcome wins over a rejection so clients retry.
#[derive(Debug, Default)]
pub struct AuthenticatorChain {
    authenticators: Vec<Arc<dyn Authenticator>>,
}

impl AuthenticatorChain {
    /// A chain that tries `authenticators` in this order.
    pub fn new(authenticators: Vec<Arc<dyn Authenticator>>) -> Self {
        Self { authenticators }
    }

    /// The caller the first authenticator recognises. Failing that, `Unavailable` if any authenticator was
    /// unavailable, else `Rejected` with the last rejection (each message prefixed with the authenticator's
    /// name), or saying that no credentials were presented.
    pub async fn authenticate(&self, credentials: &Credentials) -> Result<Caller, AuthError> {
        let mut unavailable = None;
        let mut rejected = None;
        for a in &self.authenticators {
            match a.authenticate(credentials).await {
                Ok(Some(caller)) => return Ok(caller),
                Ok(None) => {}
                Err(AuthError::Unavailable(reason)) => {
                    unavailable = Some(Unavailable::By { authenticator: a.name(), reason: Box::new(reason) });
                }
                Err(AuthError::Rejected(reason)) => {
                    rejected = Some(Rejection::By { authenticator: a.name(), reason: Box::new(reason) });
                }
            }
        }
        if let Some(reason) = unavailable {
            return Err(reason.into());
        }
        Err(rejected.unwrap_or(Rejection::NoCredentials).into())
    }
}
