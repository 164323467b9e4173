//! Kubernetes reconcilers. They run on the elected leader only.

pub mod istiod_tls;
pub mod meshes;
pub mod root_configmaps;
