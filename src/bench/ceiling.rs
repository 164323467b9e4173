//! The crypto ceiling: what one core can do when it does nothing but the
//! work each certificate needs (parse and verify the CSR, sign the leaf,
//! encode it), with the same signer and CSRs the server gets.

use crate::pki::{CertificateSigningRequest, SigningChain};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Certificates per second on the calling thread, over `duration`.
pub fn measure(
    chain: &SigningChain,
    csrs: &[String],
    identities: &[String],
    duration: Duration,
) -> anyhow::Result<f64> {
    let start = Instant::now();
    let mut done = 0u64;
    while start.elapsed() < duration {
        let i = done as usize % csrs.len();
        let csr = CertificateSigningRequest::from_pem(csrs[i].as_bytes())?;
        let now = time::OffsetDateTime::now_utc();
        chain.issue_workload(csr.spki_der(), &identities[i], time::Duration::hours(1), now)?;
        done += 1;
    }
    Ok(done as f64 / start.elapsed().as_secs_f64())
}

/// [`measure`] on a thread pinned to `core` (when given).
pub fn measure_on(
    core: Option<usize>,
    chain: Arc<SigningChain>,
    csrs: Arc<Vec<String>>,
    identities: Arc<Vec<String>>,
    duration: Duration,
) -> anyhow::Result<f64> {
    std::thread::spawn(move || {
        if let Some(id) = core {
            core_affinity::set_for_current(core_affinity::CoreId { id });
        }
        measure(&chain, &csrs, &identities, duration)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the ceiling thread panicked"))?
}
