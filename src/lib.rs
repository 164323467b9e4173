//! meshroot: one certificate authority for every Istio mesh in a cluster and
//! for cert-manager, so that all workloads chain to one root.

pub mod api;
pub mod bench;
pub mod ca;
pub mod client;
pub mod cmd;
pub mod controllers;
#[doc(hidden)]
pub mod fuzzing;
pub mod issuer;
pub mod mesh;
pub mod names;
pub mod pki;
pub mod serve;
pub mod supervise;
pub mod telemetry;

/// Generated from `proto/istio/v1/auth/ca.proto`.
#[allow(clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("istio.v1.auth");
}
pub mod dev;
pub mod fsutil;
pub mod k8s;
