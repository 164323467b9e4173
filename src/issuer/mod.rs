//! cert-manager external issuer logic, free of Kubernetes I/O: issuer
//! policies, signer resolution, and signing one request.

pub mod glob;
pub mod policy;
pub mod sign;
pub mod signer;

pub use policy::Policy;
pub use sign::{SignError, Signed, SigningRequest, sign};
pub use signer::{IssuingCa, SignerProblem, resolve};
