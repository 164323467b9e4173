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
// Every public item says what it is (clippy's -D warnings makes this an error in CI).
#![warn(missing_docs)]

// The layers below, under the names the rest of this crate uses.
pub use meshroot_core::{api, auth, ca, client, duration, frontend, issuer, mesh, names, pb, telemetry};
pub use meshroot_pki as pki;

#[cfg(feature = "bench")]
#[allow(
    clippy::arithmetic_side_effects,
    clippy::indexing_slicing,
    reason = "the benchmark's own statistics over its own samples; no input reaches them"
)]
pub mod bench;
pub mod cmd;
pub mod controllers;
#[cfg(feature = "fuzzing")]
#[allow(
    clippy::expect_used,
    clippy::panic,
    clippy::arithmetic_side_effects,
    clippy::indexing_slicing,
    reason = "test fixtures for the fuzz targets: a broken fixture must stop the fuzzer"
)]
pub mod fuzzing;
pub mod serve;
pub mod supervise;

pub mod dev;
pub mod doctor;
pub mod fsutil;
pub mod k8s;
