//! Pure X.509: keys, CSRs, authorities, issuance profiles, chains, trust
//! bundles and SPIFFE IDs. No I/O and no async, so it can be unit-tested
//! exhaustively and fuzzed.
//!
//! The bottom layer of meshroot (docs/architecture.md): it depends on no
//! other meshroot crate, so nothing here can reach Kubernetes or the network.
// The same policy as meshroot's library: no panicking constructs outside tests.
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

pub mod authority;
pub mod chain;
pub mod csr;
pub mod error;
pub mod keys;
pub mod pem;
pub mod profile;
mod resign;
pub mod serial;
pub mod spiffe;
pub mod template;
pub mod usage;
mod workload_template;

pub use authority::{Authority, CaSpec};
pub use chain::{RootState, SigningChain, TrustBundle, names_itself, path_to_root};
pub use csr::CertificateSigningRequest;
pub use error::PkiError;
pub use keys::{KeyAlgorithm, PrivateKey, PublicKeyKind};
pub use profile::IssuedCertificate;
pub use spiffe::{SpiffeId, WorkloadIdentity};

#[cfg(test)]
mod tests;

/// A time as RFC 3339 (`2026-11-22T01:43:52Z`), for statuses and messages.
pub fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_else(|_| t.to_string())
}
