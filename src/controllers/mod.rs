//! Kubernetes reconcilers. They run on the elected leader only.

pub mod certificate_requests;
pub mod conditions;
pub mod events;
pub mod issuer_cache;
pub mod issuers;
pub mod istiod_tls;
pub mod kube_csrs;
pub mod meshes;
pub mod panic_guard;
pub mod root_configmaps;
pub mod signing;
