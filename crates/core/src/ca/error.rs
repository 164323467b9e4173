//! Why a CreateCertificate failed, and how each failure maps to a gRPC
//! status and to istiod's metrics.

use super::rate_limit::Exceeded;
use crate::auth::{Rejection, Unavailable};
use crate::mesh::{NoSigner, RouteError};
use crate::pki::PkiError;
use crate::telemetry::Metrics;
use crate::telemetry::metrics::SignErrorLabels;
use thiserror::Error;
use tonic::{Code, Status};

/// Why a CreateCertificate failed: one variant per cause. Its `Display` is the reason the client is told
/// and the audit log records; [`Failure::category`] decides the gRPC status and the metrics.
#[derive(Debug, Error)]
pub enum Failure {
    /// The authenticators rejected the caller's credentials, or none was presented.
    #[error(transparent)]
    Authentication(Rejection),
    /// The credentials could not be checked now.
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
    /// A header that may appear once appears more than once.
    #[error("more than one {0} header")]
    RepeatedHeader(&'static str),
    /// A header is not printable ASCII.
    #[error("the {0} header is not printable ASCII")]
    UnprintableHeader(&'static str),
    /// `clusterid` names neither the local cluster nor an alias.
    #[error("unknown cluster id {}; this CA serves cluster {served:?}", quote_input(.given))]
    UnknownCluster {
        /// The header's value.
        given: String,
        /// The local cluster id.
        served: String,
    },
    /// `authorization` is not `Bearer <token>`.
    #[error("the authorization header is not a Bearer token")]
    NotBearer,
    /// `authorization: Bearer` with nothing after it.
    #[error("the bearer token is empty")]
    EmptyBearerToken,
    /// `ImpersonatedIdentity` is not a workload SPIFFE ID.
    #[error("impersonated identity {}: {error}", quote_input(.requested))]
    BadImpersonatedIdentity {
        /// The identity asked for.
        requested: String,
        /// Why it does not parse.
        error: PkiError,
    },
    /// The caller asks to impersonate but is not a trusted node account of the target's mesh.
    #[error("{account} is not a trusted node account of mesh {mesh} and may not impersonate")]
    NotTrustedNode {
        /// The caller, `namespace/serviceaccount`.
        account: String,
        /// The target's mesh.
        mesh: String,
    },
    /// The impersonated identity's trust domain is not its mesh's.
    #[error("impersonated identity is in trust domain {requested:?}, but mesh {mesh} is {mesh_trust_domain:?}")]
    ImpersonatedTrustDomain {
        /// The identity's trust domain.
        requested: String,
        /// The mesh covering the identity's namespace.
        mesh: String,
        /// That mesh's trust domain.
        mesh_trust_domain: String,
    },
    /// The node authorizer refused: the caller's pod does not check out, or the target has no pod on its node.
    #[error("impersonation refused: {0}")]
    ImpersonationRefused(Rejection),
    /// No single mesh covers the namespace (or none is loaded yet).
    #[error(transparent)]
    Route(#[from] RouteError),
    /// The credential binds a trust domain other than the mesh's.
    #[error(
        "the credential is for trust domain {credential:?}, but mesh {mesh}, which covers {whose} namespace, is \
         trust domain {mesh_trust_domain:?}"
    )]
    CredentialTrustDomain {
        /// The credential's trust domain.
        credential: String,
        /// The mesh.
        mesh: String,
        /// Whose namespace the mesh covers: "the caller's" or "the impersonated".
        whose: &'static str,
        /// The mesh's trust domain.
        mesh_trust_domain: String,
    },
    /// The CSR asks for names besides the identity's URI SAN.
    #[error("the CSR asks for {asked}; only the URI SAN {identity} is allowed")]
    ExtraNames {
        /// What else it asks for, such as "2 DNS name(s), 1 IP address(es)".
        asked: String,
        /// The identity the caller may have.
        identity: String,
    },
    /// The CSR's one URI SAN is another identity.
    #[error("the CSR asks for {} but the caller may only have {identity}", quote_input(.asked))]
    OtherIdentity {
        /// The URI SAN it asks for.
        asked: String,
        /// The identity the caller may have.
        identity: String,
    },
    /// The CSR has no URI SAN.
    #[error("the CSR has no URI SAN; it must ask for {identity}")]
    NoIdentity {
        /// The identity the caller may have.
        identity: String,
    },
    /// The CSR has several URI SANs.
    #[error("the CSR asks for {count} URI SANs; exactly one ({identity}) is allowed")]
    ManyIdentities {
        /// How many.
        count: usize,
        /// The identity the caller may have.
        identity: String,
    },
    /// The CSR is malformed, unsigned, or uses a refused key or algorithm.
    #[error(transparent)]
    Csr(PkiError),
    /// The request metadata has more fields than any client sends.
    #[error("metadata has {count} fields; at most {max} are accepted")]
    TooManyMetadataFields {
        /// How many it has.
        count: usize,
        /// How many are accepted.
        max: usize,
    },
    /// A metadata field that must be a string (`ImpersonatedIdentity`) is not; names the field.
    #[error("metadata {0} must be a string")]
    NotAString(&'static str),
    /// The mesh has no usable signer yet (its intermediate is not loaded).
    #[error("mesh {mesh} cannot sign yet: {why}")]
    MeshNotReady {
        /// The mesh.
        mesh: String,
        /// Why.
        why: NoSigner,
    },
    /// The mesh's signing certificate has expired or is not yet valid.
    #[error("the signing certificate of mesh {mesh} is not valid now: {error}")]
    SignerNotValidNow {
        /// The mesh.
        mesh: String,
        /// The validity error.
        error: PkiError,
    },
    /// The caller's own SPIFFE ID cannot be formed (a name the API server allowed but SPIFFE does not).
    #[error("cannot form the caller's identity: {0}")]
    CallerIdentity(PkiError),
    /// Signing failed unexpectedly.
    #[error(transparent)]
    Issue(PkiError),
    /// Over a per-peer, per-identity or per-node rate limit.
    #[error(transparent)]
    RateLimited(#[from] Exceeded),
}

/// The kind of a [`Failure`]: its gRPC status, the prefix of the message the client sees, and how istiod's
/// metrics count it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Category {
    /// The caller could not be authenticated.
    Unauthenticated,
    /// The caller is known but may not have what it asked for.
    Forbidden,
    /// The CSR is malformed, unsigned, or uses a refused key or algorithm.
    BadCsr,
    /// The request is malformed in some other way (metadata).
    BadRequest,
    /// Could not decide now (for example the API server is unreachable). Retryable.
    Unavailable,
    /// No usable signer (none loaded yet, or expired). Retryable.
    NotReady,
    /// Signing failed unexpectedly.
    Internal,
    /// Over a per-identity or per-node rate limit. Retryable, later.
    RateLimited,
}

/// The gRPC retry-pushback header: how long a client should wait.
pub const RETRY_PUSHBACK_HEADER: &str = "grpc-retry-pushback-ms";

impl Failure {
    /// What kind of failure this is.
    pub fn category(&self) -> Category {
        match self {
            Failure::Authentication(_)
            | Failure::RepeatedHeader(_)
            | Failure::UnprintableHeader(_)
            | Failure::UnknownCluster { .. }
            | Failure::NotBearer
            | Failure::EmptyBearerToken
            | Failure::BadImpersonatedIdentity { .. }
            | Failure::NotTrustedNode { .. }
            | Failure::ImpersonatedTrustDomain { .. }
            | Failure::ImpersonationRefused(_) => Category::Unauthenticated,
            Failure::Route(RouteError::NotReady) => Category::NotReady,
            Failure::Route(RouteError::NoMesh(_) | RouteError::Ambiguous { .. })
            | Failure::CredentialTrustDomain { .. }
            | Failure::ExtraNames { .. }
            | Failure::OtherIdentity { .. }
            | Failure::NoIdentity { .. }
            | Failure::ManyIdentities { .. } => Category::Forbidden,
            Failure::Csr(_) => Category::BadCsr,
            Failure::TooManyMetadataFields { .. } | Failure::NotAString(_) => Category::BadRequest,
            Failure::Unavailable(_) => Category::Unavailable,
            Failure::MeshNotReady { .. } | Failure::SignerNotValidNow { .. } => Category::NotReady,
            Failure::CallerIdentity(_) | Failure::Issue(_) => Category::Internal,
            Failure::RateLimited(_) => Category::RateLimited,
        }
    }

    /// The gRPC status code. `Forbidden` is `Unauthenticated` too; a rate limit is `ResourceExhausted`.
    pub fn code(&self) -> Code {
        match self.category() {
            Category::Unauthenticated | Category::Forbidden => Code::Unauthenticated,
            Category::BadCsr | Category::BadRequest => Code::InvalidArgument,
            Category::Unavailable | Category::NotReady => Code::Unavailable,
            Category::Internal => Code::Internal,
            Category::RateLimited => Code::ResourceExhausted,
        }
    }

    /// The name of [`Failure::code`], as the audit log and the latency metric's `code` label show it.
    pub fn code_name(&self) -> &'static str {
        match self.code() {
            Code::Unauthenticated => "Unauthenticated",
            Code::InvalidArgument => "InvalidArgument",
            Code::Unavailable => "Unavailable",
            Code::ResourceExhausted => "ResourceExhausted",
            _ => "Internal",
        }
    }

    /// The gRPC status the client gets, `<category>: <reason>`; when rate limited, with the
    /// [`RETRY_PUSHBACK_HEADER`] hint in milliseconds (at least 1).
    pub fn to_status(&self) -> Status {
        let prefix = match self.category() {
            Category::Unauthenticated => "authentication failed",
            Category::Forbidden => "not authorized",
            Category::BadCsr => "invalid CSR",
            Category::BadRequest => "invalid request",
            Category::Unavailable => "temporarily unavailable",
            Category::NotReady => "CA not ready",
            Category::Internal => "certificate signing failed",
            Category::RateLimited => "rate limited",
        };
        let mut status = Status::new(self.code(), format!("{prefix}: {self}"));
        if let Failure::RateLimited(e) = self {
            let millis = e.retry_after.as_millis().max(1).to_string();
            if let Ok(value) = millis.parse() {
                status.metadata_mut().insert(RETRY_PUSHBACK_HEADER, value);
            }
        }
        status
    }

    /// Counts the failure the way istiod does.
    pub fn record(&self, metrics: &Metrics) {
        let sign_err = |error| metrics.csr_sign_err_count.get_or_create(&SignErrorLabels { error }).inc();
        match self.category() {
            Category::Unauthenticated => metrics.authentication_failure_count.inc(),
            Category::Forbidden => metrics.id_extraction_err_count.inc(),
            Category::BadCsr => {
                metrics.csr_parsing_err_count.inc();
                sign_err("CSR_ERROR");
            }
            Category::BadRequest => sign_err("INVALID_REQUEST"),
            Category::Unavailable => sign_err("UNAVAILABLE"),
            Category::NotReady => sign_err("CA_NOT_READY"),
            Category::Internal => sign_err("CERT_GEN_ERROR"),
            Category::RateLimited => sign_err("RATE_LIMITED"),
        }
    }
}

/// Attacker-controlled text echoed in a message is cut short and stripped
/// of control characters.
pub fn quote_input(s: &str) -> String {
    const MAX: usize = 200;
    let mut out: String = s.chars().take(MAX).map(|c| if c.is_control() { '\u{fffd}' } else { c }).collect();
    if s.chars().count() > MAX {
        out.push('…');
    }
    format!("{out:?}")
}
