//! Signing one request (a CertificateRequest or a Kubernetes CSR) with the
//! issuer it names, and what came of it.

use super::issuer_cache::{IssuerCache, IssuerName, signer_changes};
use crate::api::issuer::IssuerResource;
use crate::issuer::sign::{SignError, Signed, SigningRequest, sign};
use crate::issuer::{OwnService, Tenancy, prepare};
use crate::k8s::root::RootState;
use crate::mesh::MeshRegistry;
use std::sync::Arc;
use time::OffsetDateTime;
use tokio::sync::watch;

/// Everything signing a request needs from the leader: the issuers, the
/// root and the meshes, as currently known.
#[derive(Clone)]
pub struct Signers {
    /// Every Issuer and ClusterIssuer, and the Meshes' grants, as the leader watches them.
    pub issuers: IssuerCache,
    /// The current root, which issuers with `signer.root` sign with when its key is online.
    pub root: watch::Receiver<RootState>,
    /// The meshes, whose intermediates issuers with `signer.mesh` sign with.
    pub registry: Arc<MeshRegistry>,
    /// meshroot's own Service, whose names no issuer grants by pattern.
    pub own: Arc<OwnService>,
}

impl Signers {
    /// Yields `()` whenever any of them changes.
    pub fn changes(&self) -> impl futures::Stream<Item = ()> + Send + 'static {
        signer_changes(&self.issuers, &self.root, &self.registry)
    }

    /// The tenant boundary now.
    pub fn tenancy(&self) -> Tenancy {
        self.issuers.tenancy(&self.own)
    }

    /// Signs `request` with the named issuer, as [`sign_with_issuer`].
    pub fn sign(
        &self,
        issuer_name: &IssuerName,
        request: Result<SigningRequest<'_>, Unsignable>,
        now: OffsetDateTime,
    ) -> Outcome {
        let root = self.root.borrow().clone();
        let issuer = self.issuers.get(issuer_name);
        let issuer = issuer.as_deref().map(|i| i as &dyn IssuerResource);
        let context = SigningContext { root: &root, registry: &self.registry, tenancy: &self.tenancy() };
        sign_with_issuer(issuer_name, issuer, &context, request, now)
    }
}

/// Why a request can never be signed: the `reason` of its failure
/// condition, Event and audit line, as cert-manager and Kubernetes show it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureReason {
    /// The request itself is malformed (CSR, usages, annotations).
    InvalidRequest,
    /// `spec.duration` or the duration annotation cannot be read.
    InvalidDuration,
    /// The issuer's policy does not allow what was asked.
    PolicyViolation,
    /// The ClusterIssuer does not serve the requester's namespace.
    NamespaceNotAllowed,
    /// `issuerRef.kind` is not one of meshroot's kinds.
    UnknownIssuerKind,
    /// The CSR's requester may not reference a namespaced issuer.
    DeniedReference,
    /// Signing failed inside meshroot (a caught panic); details are logged.
    InternalError,
}

impl FailureReason {
    /// The reason as written in conditions, Events and audit lines (the variant's name).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidRequest => "InvalidRequest",
            Self::InvalidDuration => "InvalidDuration",
            Self::PolicyViolation => "PolicyViolation",
            Self::NamespaceNotAllowed => "NamespaceNotAllowed",
            Self::UnknownIssuerKind => "UnknownIssuerKind",
            Self::DeniedReference => "DeniedReference",
            Self::InternalError => "InternalError",
        }
    }
}

impl std::fmt::Display for FailureReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A request that can never be signed: why, and what to tell its owner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unsignable {
    /// The failure's reason, for its condition, Event and audit line.
    pub reason: FailureReason,
    /// What is wrong with the request, for its owner.
    pub message: String,
}

/// The result of working on one request (CertificateRequest or CSR).
#[derive(Clone, Debug)]
pub enum Outcome {
    /// Signed: the certificate, its chain and root.
    Issued(Signed),
    /// Waiting for something that will change (the issuer, the signer).
    Pending(String),
    /// The request can never be signed, for this reason.
    Failed {
        /// Why, as the failure condition's reason.
        reason: FailureReason,
        /// What is wrong, for the request's owner.
        message: String,
    },
    /// An approver denied the request.
    Denied,
}

/// What signing needs besides the issuer and the request.
#[derive(Clone, Copy)]
pub struct SigningContext<'a> {
    /// The current root, for issuers that sign with it.
    pub root: &'a RootState,
    /// The meshes, for issuers that sign with a mesh's intermediate.
    pub registry: &'a MeshRegistry,
    /// What issuers may not sign for, and which namespaces each mesh grants its intermediate to.
    pub tenancy: &'a Tenancy,
}

/// Signs `request` with the named issuer once it is there and ready; a
/// request that could not be read (`Err(Unsignable)`) fails only
/// after that, as cert-manager's own issuers do.
pub fn sign_with_issuer(
    issuer_name: &IssuerName,
    issuer: Option<&dyn IssuerResource>,
    context: &SigningContext<'_>,
    request: Result<SigningRequest<'_>, Unsignable>,
    now: OffsetDateTime,
) -> Outcome {
    let Some(issuer) = issuer else {
        return Outcome::Pending(format!("{issuer_name} not found; waiting for it to be created"));
    };
    let ready = match prepare(issuer, context.root, context.registry, context.tenancy) {
        Ok(r) => r,
        Err(why) => return Outcome::Pending(format!("waiting for {issuer_name} to become ready: {why}")),
    };
    let request = match request {
        Ok(r) => r,
        Err(Unsignable { reason, message }) => return Outcome::Failed { reason, message },
    };
    if !ready.serves(request.namespace) {
        let who =
            request.namespace.map_or("a requester outside any namespace".to_string(), |n| format!("namespace {n:?}"));
        return Outcome::Failed {
            reason: FailureReason::NamespaceNotAllowed,
            message: format!("{issuer_name} does not serve {who} (its spec.allowedNamespaces does not list it)"),
        };
    }
    match sign(&request, &ready.policy, &ready.ca, context.tenancy, now) {
        Ok(signed) => Outcome::Issued(signed),
        Err(e @ SignError::Invalid(_)) => {
            Outcome::Failed { reason: FailureReason::InvalidRequest, message: e.to_string() }
        }
        Err(e @ SignError::Policy(_)) => {
            Outcome::Failed { reason: FailureReason::PolicyViolation, message: e.to_string() }
        }
        Err(e @ SignError::Unavailable { .. }) => Outcome::Pending(e.to_string()),
    }
}
