//! cert-manager external issuer logic, free of Kubernetes I/O: issuer
//! policies, signer resolution, and signing one request.

pub mod constraints;
pub mod glob;
pub mod policy;
pub mod sign;
pub mod signer;
pub mod tenancy;
pub mod violation;

pub use policy::Policy;
pub use sign::{SignError, Signed, SigningRequest, sign};
pub use signer::{IssuingCa, SignerProblem, resolve};
pub use tenancy::{OwnService, Tenancy};

use crate::api::issuer::{IssuerResource, IssuerScope};
use crate::mesh::MeshRegistry;
use crate::pki::RootState;
pub use signer::{IssuerSpecError, NotGranted, SignerUnavailable};

/// An issuer ready to sign: its validated policy and resolved CA.
#[derive(Clone, Debug)]
pub struct ReadyIssuer {
    /// The validated policy; a namespaced Issuer's is held to its namespace.
    pub policy: Policy,
    /// The CA it signs with, valid when prepared.
    pub ca: IssuingCa,
    /// For a ClusterIssuer, the namespaces it serves (`*`: all); `None`
    /// for a namespaced Issuer, which serves its own namespace only.
    pub namespaces: Option<Vec<String>>,
}

impl ReadyIssuer {
    /// Whether this issuer signs for a requester in `namespace` (`None`: a
    /// cluster-scoped requester that is no service account).
    pub fn serves(&self, namespace: Option<&str>) -> bool {
        match &self.namespaces {
            None => true,
            Some(list) => list.iter().any(|n| n == "*" || Some(n.as_str()) == namespace),
        }
    }
}

/// Validates an issuer's spec and resolves its signer. An invalid spec is
/// [`SignerProblem::Invalid`]; a signer that is not there yet is
/// [`SignerProblem::Unavailable`].
pub fn prepare(
    issuer: &dyn IssuerResource,
    root: &RootState,
    registry: &MeshRegistry,
    tenancy: &Tenancy,
) -> Result<ReadyIssuer, SignerProblem> {
    let scope = issuer.scope();
    let policy = Policy::from_spec(issuer.policy()).map_err(IssuerSpecError::Policy)?;
    let namespaces = match scope {
        IssuerScope::Namespaced { .. } => None,
        IssuerScope::Cluster { allowed_namespaces: [] } => {
            return Err(NotGranted::NoNamespaces.into());
        }
        IssuerScope::Cluster { allowed_namespaces } => Some(allowed_namespaces.to_vec()),
    };
    let resolved = resolve(issuer.signer(), scope, root, registry, tenancy);
    let ca = if namespaces.is_none() && policy.allow_ca {
        return Err(NotGranted::CaToNamespaced(match resolved {
            Err(SignerProblem::NotGranted(also)) => Some(Box::new(also)),
            _ => None,
        })
        .into());
    } else {
        resolved?
    };
    // A namespaced Issuer's policy is its tenant's own: held to that namespace and to the trust
    // domain of the mesh it signs with (a namespace never signs with the root, so there is one; were
    // there none, the empty trust domain would match no identity).
    let policy = match scope {
        IssuerScope::Namespaced { namespace } => policy.held_to(namespace, ca.trust_domain().unwrap_or_default()),
        IssuerScope::Cluster { .. } => policy,
    };
    ca.authority()
        .check_valid_at(time::OffsetDateTime::now_utc())
        .map_err(|e| SignerUnavailable::NotValidNow { signer: ca.description().to_string(), why: e.to_string() })?;
    Ok(ReadyIssuer { policy, ca, namespaces })
}
