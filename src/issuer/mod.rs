//! cert-manager external issuer logic, free of Kubernetes I/O: issuer
//! policies, signer resolution, and signing one request.

pub mod glob;
pub mod policy;
pub mod sign;
pub mod signer;

pub use policy::Policy;
pub use sign::{SignError, Signed, SigningRequest, sign};
pub use signer::{IssuingCa, SignerProblem, resolve};

use crate::api::issuer::IssuerResource;
use crate::k8s::root::RootState;
use crate::mesh::MeshRegistry;

/// An issuer ready to sign: its validated policy and resolved CA.
#[derive(Clone, Debug)]
pub struct ReadyIssuer {
    pub policy: Policy,
    pub ca: IssuingCa,
}

/// Validates an issuer's spec and resolves its signer. An invalid spec is
/// [`SignerProblem::Invalid`]; a signer that is not there yet is
/// [`SignerProblem::Unavailable`].
pub fn prepare(
    issuer: &dyn IssuerResource,
    root: &RootState,
    registry: &MeshRegistry,
) -> Result<ReadyIssuer, SignerProblem> {
    let policy = Policy::from_spec(issuer.policy()).map_err(SignerProblem::Invalid)?;
    let ca = resolve(issuer.signer(), root, registry)?;
    ca.authority()
        .check_valid_at(time::OffsetDateTime::now_utc())
        .map_err(|e| SignerProblem::Unavailable(format!("{}: {e}", ca.description())))?;
    Ok(ReadyIssuer { policy, ca })
}
