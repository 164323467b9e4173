//! meshroot's CA core: who may have which certificate, and the service that
//! hands them out. The Istio CA gRPC front end (`ca`), its authenticators and
//! rate limits, the mesh registry (`mesh`), cert-manager issuer policy and
//! signing (`issuer`), the CRD types (`api`), metrics, audit and health
//! (`telemetry`).
//!
//! The middle layer (docs/architecture.md): it builds on meshroot-pki and
//! makes no Kubernetes API call. What reads the cluster (TokenReview, node
//! authorization, the registry's watches) implements this crate's traits in
//! the `meshroot` crate above it.
// The same policy as the other crates: no panicking constructs outside tests.
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
// The public API of this layer is documented, item by item.
#![warn(missing_docs)]

pub mod api;
pub mod auth;
pub mod ca;
pub mod client;
pub mod duration;
pub mod frontend;
pub mod issuer;
pub mod mesh;
pub mod names;
pub mod telemetry;

pub use meshroot_pki as pki;

/// Generated from `proto/istio/v1/auth/ca.proto`.
#[allow(clippy::all, clippy::pedantic, unused_qualifications, rust_2018_idioms, missing_docs)]
pub mod pb {
    tonic::include_proto!("istio.v1.auth");
}
