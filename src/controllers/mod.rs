//! Kubernetes reconcilers. They run on the elected leader only.

pub mod root_configmaps;
