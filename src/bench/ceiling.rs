//! The crypto ceiling: what one core can do when it does nothing but the
//! work each certificate needs (parse and verify the CSR, sign the leaf,
//! encode it), with the same signer and CSRs the server gets.

use super::stats::Percentiles;
use crate::pki::{CertificateSigningRequest, KeyAlgorithm, SigningChain};
use anyhow::Context as _;
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

/// How a gap before each certificate's work is spent, in [`measure_after_gap`].
#[derive(Clone, Copy, Debug)]
pub enum Gap {
    /// No gap: back to back.
    None,
    /// The thread spins, so the core never idles.
    Spin(Duration),
    /// The thread sleeps, so the core idles (and a virtual machine's vCPU may halt), as the
    /// server's core does between requests at half of peak.
    Sleep(Duration),
}

/// The crypto ceiling's work, timed one certificate at a time after `gap`: the median of
/// `count`. Only the work is timed, never the gap.
pub fn measure_after_gap(
    chain: &SigningChain,
    csrs: &[String],
    identities: &[String],
    gap: Gap,
    count: usize,
) -> anyhow::Result<Duration> {
    let mut times = Vec::with_capacity(count);
    for (csr, identity) in csrs.iter().zip(identities).cycle().take(count) {
        match gap {
            Gap::None => {}
            Gap::Spin(d) => {
                let until = Instant::now() + d;
                while Instant::now() < until {
                    std::hint::spin_loop();
                }
            }
            Gap::Sleep(d) => std::thread::sleep(d),
        }
        let start = Instant::now();
        let csr = CertificateSigningRequest::from_pem(csr.as_bytes())?;
        chain.issue_workload(csr.spki_der(), identity, time::Duration::hours(1), time::OffsetDateTime::now_utc())?;
        times.push(start.elapsed());
    }
    Ok(Percentiles::of(&mut times).p50)
}

/// The primitive ceiling: only the two public-key operations each certificate needs, with the
/// same crypto library (aws-lc): verify a CSR's signature (CSRs parsed beforehand) and sign a
/// message the size of a leaf's TBSCertificate with a key of the signer's algorithm. Nothing
/// that serves certificates can go faster; the gap to [`measure`] is parsing and encoding.
pub fn measure_primitives(
    signer: KeyAlgorithm,
    chain: &SigningChain,
    csrs: &[String],
    identity: &str,
    duration: Duration,
) -> anyhow::Result<f64> {
    use x509_parser::certification_request::X509CertificationRequest;
    use x509_parser::prelude::FromDer;
    let ders = csrs
        .iter()
        .map(|p| Ok(crate::pki::pem::decode_one(p.as_bytes(), crate::pki::pem::CERTIFICATE_REQUEST, 1 << 16)?.to_vec()))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let parsed = ders
        .iter()
        .map(|der| X509CertificationRequest::from_der(der).map(|(_, r)| r).map_err(|e| anyhow::anyhow!("CSR: {e}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let first = CertificateSigningRequest::from_pem(csrs.first().context("no CSRs")?.as_bytes())?;
    let leaf =
        chain.issue_workload(first.spki_der(), identity, time::Duration::hours(1), time::OffsetDateTime::now_utc())?;
    let (_, cert) = x509_parser::parse_x509_certificate(&leaf.der).map_err(|e| anyhow::anyhow!("leaf: {e}"))?;
    let tbs = cert.tbs_certificate.as_ref().to_vec();
    let key = match signer {
        KeyAlgorithm::EcdsaP256 => rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?,
        KeyAlgorithm::EcdsaP384 => rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384)?,
        KeyAlgorithm::Rsa2048 => rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)?,
        KeyAlgorithm::Rsa3072 => rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_3072)?,
        KeyAlgorithm::Rsa4096 => rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_4096)?,
    };
    let start = Instant::now();
    let mut done = 0u64;
    while start.elapsed() < duration {
        let request = &parsed[done as usize % parsed.len()];
        request.verify_signature().map_err(|e| anyhow::anyhow!("CSR signature: {e}"))?;
        rcgen::SigningKey::sign(&key, &tbs)?;
        done += 1;
    }
    Ok(done as f64 / start.elapsed().as_secs_f64())
}

/// `measure` run on a thread of its own, pinned to `core` (when given), as the ceilings are.
pub fn on_core<T: Send + 'static>(
    core: Option<usize>,
    measure: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    std::thread::spawn(move || {
        if let Some(id) = core {
            core_affinity::set_for_current(core_affinity::CoreId { id });
        }
        measure()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("a ceiling thread panicked"))?
}
