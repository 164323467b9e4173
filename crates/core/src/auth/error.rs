//! Why a caller was not authenticated, or not authorized to act for a
//! workload: one variant per cause, so callers and tests match on the cause
//! and the text a client sees is written in one place.

// Nothing from `mesh` here: `mesh` holds a NodeAuthorizer, so `auth` sits below it.
use thiserror::Error;

/// Why a caller was not authenticated (or not authorized to act for a workload), and whether to retry.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum AuthError {
    /// The credentials are wrong. Never retried by Istio clients.
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// The credentials could not be checked right now (for example the API
    /// server is unreachable). Retryable.
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
}

/// Why credentials were refused.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum Rejection {
    /// No authenticator applied: no token, no client certificate.
    #[error("no credentials were presented")]
    NoCredentials,
    /// The rejection of one authenticator of a chain, named by it.
    #[error("{authenticator}: {reason}")]
    By {
        /// The authenticator's [`name`](super::Authenticator::name).
        authenticator: &'static str,
        /// Its reason.
        reason: Box<Rejection>,
    },
    /// A static token that is not on the list.
    #[error("the bearer token is not recognised")]
    UnknownToken,
    /// The API server answered the TokenReview with `authenticated: false`.
    #[error("TokenReview: {0}")]
    TokenReview(String),
    /// The TokenReview names none of the audiences asked for.
    #[error("the token is not valid for audience {}", .0.join(", "))]
    Audience(Vec<String>),
    /// The token's user is not in the service accounts group.
    #[error("{0:?} is not a service account")]
    NotServiceAccount(String),
    /// The token's username is not `system:serviceaccount:NAMESPACE:NAME`.
    #[error("{0:?} is not a service account username")]
    NotServiceAccountUsername(String),
    /// The client certificate is not a current workload certificate of the caller's mesh.
    #[error("client certificate: {0}")]
    ClientCertificate(ClientCertificateRejection),
    /// The node account may not act for the workload it names.
    #[error(transparent)]
    Node(NodeRejection),
}

/// Why a TLS client certificate does not authenticate its holder.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum ClientCertificateRejection {
    /// The certificate or one of its extensions does not parse (the parser's words).
    #[error("{0}")]
    Malformed(String),
    /// It lacks meshroot's workload mark (its key identifier is not the workload one).
    #[error(
        "not a meshroot workload certificate (its subject key identifier is not the one CreateCertificate \
         writes); only certificates from CreateCertificate renew, others need a token"
    )]
    NotWorkload,
    /// It is not valid now: TLS checked it at the handshake, but a resumed session or a long-lived
    /// connection carries it past its expiry.
    #[error("it is not valid now (valid from {not_before} to {not_after}); renew before it expires, or use a token")]
    NotValidNow {
        /// Its notBefore, RFC 3339.
        not_before: String,
        /// Its notAfter, RFC 3339.
        not_after: String,
    },
    /// basicConstraints says CA:TRUE.
    #[error("it is a CA certificate (basicConstraints CA:TRUE)")]
    Ca,
    /// extendedKeyUsage lacks clientAuth.
    #[error("its extended key usage does not include clientAuth")]
    NoClientAuth,
    /// It carries no or several URI SANs.
    #[error("it must carry exactly one URI SAN, this one has {0}")]
    UriSans(usize),
    /// Its URI SAN is not a workload SPIFFE ID (the parser's words).
    #[error("{0}")]
    Identity(String),
    /// No mesh covers the identity's namespace.
    #[error("namespace {0:?} is not part of any mesh")]
    NoMesh(String),
    /// Several meshes cover the identity's namespace.
    #[error("namespace {namespace:?} is selected by more than one mesh ({meshes}); refusing to choose")]
    AmbiguousMesh {
        /// The identity's namespace.
        namespace: String,
        /// The meshes that cover it, comma-separated.
        meshes: String,
    },
    /// The identity's trust domain is not the mesh's.
    #[error(
        "it is for trust domain {certificate:?}, but mesh {mesh} (namespace {namespace:?}) is trust domain \
         {mesh_trust_domain:?}"
    )]
    TrustDomain {
        /// The certificate's trust domain.
        certificate: String,
        /// The mesh covering the identity's namespace.
        mesh: String,
        /// The identity's namespace.
        namespace: String,
        /// The mesh's trust domain.
        mesh_trust_domain: String,
    },
    /// No current or recent signing certificate of the mesh issued it.
    #[error("it was not issued by the current or a recent signing certificate of mesh {mesh}")]
    NotIssuedByMesh {
        /// The mesh.
        mesh: String,
    },
}

/// Why a node account may not obtain a certificate for a workload.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum NodeRejection {
    /// The credential names no pod (not a bound token).
    #[error("the caller's credential names no pod; node authorization needs a bound token")]
    NoPod,
    /// The caller's pod is gone.
    #[error("the caller's pod {namespace}/{name} does not exist")]
    PodMissing {
        /// The pod's namespace.
        namespace: String,
        /// The pod's name.
        name: String,
    },
    /// A pod of that name exists, but it is a later one.
    #[error("the caller's pod {namespace}/{name} has another uid")]
    PodReplaced {
        /// The pod's namespace.
        namespace: String,
        /// The pod's name.
        name: String,
    },
    /// The pod runs as another service account than the credential's.
    #[error("the caller's pod {namespace}/{name} runs as another service account")]
    PodServiceAccount {
        /// The pod's namespace.
        namespace: String,
        /// The pod's name.
        name: String,
    },
    /// The caller's pod has failed.
    #[error("the caller's pod {namespace}/{name} has failed")]
    PodFailed {
        /// The pod's namespace.
        namespace: String,
        /// The pod's name.
        name: String,
    },
    /// The caller's pod is not scheduled.
    #[error("the caller's pod is not on a node")]
    PodNotOnNode,
    /// No running pod of the target workload is on the caller's node.
    #[error("no running pod of {namespace}/{service_account} is on node {node}")]
    NotOnNode {
        /// The target's namespace.
        namespace: String,
        /// The target's service account.
        service_account: String,
        /// The caller's node.
        node: String,
    },
}

/// Why credentials could not be checked now. Every variant is retryable.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum Unavailable {
    /// The unavailability of one authenticator of a chain, named by it.
    #[error("{authenticator}: {reason}")]
    By {
        /// The authenticator's [`name`](super::Authenticator::name).
        authenticator: &'static str,
        /// Its reason.
        reason: Box<Unavailable>,
    },
    /// The API server did not answer the TokenReview within its timeout.
    #[error("the Kubernetes API did not answer the TokenReview in time")]
    TokenReviewTimeout,
    /// The TokenReview failed; the summary holds the status code and reason, never a body.
    #[error("cannot reach the Kubernetes API for a TokenReview: {summary}")]
    TokenReviewFailed {
        /// The API error's redacted summary.
        summary: String,
    },
    /// The task running the TokenReview ended without an answer.
    #[error("the TokenReview was interrupted")]
    TokenReviewInterrupted,
    /// No mesh is loaded yet, so a client certificate cannot be checked.
    #[error("client certificate: no mesh is ready to sign yet")]
    NoMeshYet,
    /// The pod cache has not listed the pods yet.
    #[error("the pod cache has not synced yet")]
    PodCacheNotSynced,
    /// The pod cache's lock is poisoned.
    #[error("pod cache unavailable")]
    PodCache,
}
