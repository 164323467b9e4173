//! meshroot: one certificate authority for every Istio mesh in a cluster and
//! for cert-manager, so that all workloads chain to one root.

pub mod pki;
