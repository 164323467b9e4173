//! Node authorization for impersonation (ztunnel asks for certificates on
//! behalf of the workloads on its node).

use super::{AuthError, Caller};
use crate::pki::WorkloadIdentity;
use async_trait::async_trait;
use std::fmt;

/// Decides whether a trusted node account may act for `target`. The
/// service has already checked that the caller is a trusted node account of
/// the mesh and that `target` is in the mesh's trust domain.
#[async_trait]
pub trait NodeAuthorizer: Send + Sync + fmt::Debug {
    /// `Ok` if `caller` may obtain a certificate for `target`; `Rejected` if not; `Unavailable` if that
    /// cannot be decided now.
    async fn authorize(&self, caller: &Caller, target: &WorkloadIdentity) -> Result<(), AuthError>;
}

/// Dev mode has no pods to look at: being a listed trusted node account is
/// the whole check. Kubernetes mode checks the caller's pod and node.
#[derive(Debug, Default)]
pub struct TrustedAccountOnly;

#[async_trait]
impl NodeAuthorizer for TrustedAccountOnly {
    async fn authorize(&self, _caller: &Caller, _target: &WorkloadIdentity) -> Result<(), AuthError> {
        Ok(())
    }
}
