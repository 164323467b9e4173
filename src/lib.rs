//! meshroot: one certificate authority for every Istio mesh in a cluster and
//! for cert-manager, so that all workloads chain to one root.
// Input and API objects reach most of this crate: a panic there is a
// denial of service, so panicking constructs are refused outside tests.
// Where one is provably safe, an `allow` with its reason says why.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects
    )
)]

pub mod api;
#[allow(
    clippy::arithmetic_side_effects,
    clippy::indexing_slicing,
    reason = "the benchmark's own statistics over its own samples; no input reaches them"
)]
pub mod bench;
pub mod ca;
pub mod client;
pub mod cmd;
pub mod controllers;
#[doc(hidden)]
#[allow(
    clippy::expect_used,
    clippy::panic,
    clippy::arithmetic_side_effects,
    clippy::indexing_slicing,
    reason = "test fixtures for the fuzz targets: a broken fixture must stop the fuzzer"
)]
pub mod fuzzing;
pub mod issuer;
pub mod mesh;
pub mod names;
pub use meshroot_pki as pki;
pub mod serve;
pub mod supervise;
pub mod telemetry;

/// Generated from `proto/istio/v1/auth/ca.proto`.
#[allow(clippy::all, clippy::pedantic, unused_qualifications, rust_2018_idioms)]
pub mod pb {
    tonic::include_proto!("istio.v1.auth");
}
pub mod dev;
pub mod fsutil;
pub mod k8s;
