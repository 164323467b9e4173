//! Trust bundles and signing chains: a signing authority, the intermediates
//! between it and a root, and every root clients must trust.

use super::authority::{Authority, MAX_CERT_PEM_BYTES, parse_certificate};
use super::error::{PkiError, Result};
use super::pem;
use super::profile::{self, IssuedCertificate};
use rustls_pki_types::{CertificateDer, UnixTime};
use time::{Duration, OffsetDateTime};

/// Every root that must be trusted: one normally, two during a rotation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustBundle {
    roots: Vec<CertificateDer<'static>>,
    pem: String,
}

impl TrustBundle {
    /// A bundle of CA certificates (deduplicated, order kept). Each must
    /// parse and carry CA:TRUE.
    pub fn new(roots: Vec<CertificateDer<'static>>) -> Result<Self> {
        let mut unique: Vec<CertificateDer<'static>> = Vec::with_capacity(roots.len());
        for root in roots {
            let cert = parse_certificate(&root)?;
            if !cert.basic_constraints().ok().flatten().is_some_and(|bc| bc.value.ca) {
                return Err(PkiError::NotCa(format!("trust bundle entry {} is not a CA", cert.subject())));
            }
            if !unique.contains(&root) {
                unique.push(root);
            }
        }
        if unique.is_empty() {
            return Err(PkiError::Invalid("a trust bundle needs at least one root".into()));
        }
        let pem = unique.iter().map(|c| pem::encode_certificate(c)).collect();
        Ok(Self { roots: unique, pem })
    }

    /// A bundle from concatenated PEM certificates (at most [`MAX_CERT_PEM_BYTES`]), checked as
    /// [`TrustBundle::new`] checks them.
    pub fn from_pem(input: &[u8]) -> Result<Self> {
        Self::new(pem::decode_certificates(input, MAX_CERT_PEM_BYTES)?)
    }

    /// The roots, without repeats, in the order given.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// Every root, concatenated, each ending in a newline.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// Unix time at which the first of the roots expires.
    pub fn earliest_expiry(&self) -> i64 {
        self.roots
            .iter()
            .filter_map(|r| parse_certificate(r).ok().map(|c| c.validity().not_after.timestamp()))
            .min()
            .unwrap_or(0)
    }

    /// SHA-256 fingerprints of the roots, lowercase hex.
    pub fn fingerprints(&self) -> Vec<String> {
        self.roots.iter().map(|r| sha256_hex(r)).collect()
    }

    /// Verifies that `leaf` chains through `intermediates` to a root of this
    /// bundle at `now`, for client authentication, with the same verifier
    /// (webpki) that ztunnel uses.
    pub fn verify(
        &self,
        leaf: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: OffsetDateTime,
    ) -> Result<()> {
        self.verify_for(leaf, intermediates, now, webpki::KeyUsage::client_auth())
    }

    /// As [`TrustBundle::verify`], for TLS server use.
    pub fn verify_server(
        &self,
        leaf: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: OffsetDateTime,
    ) -> Result<()> {
        self.verify_for(leaf, intermediates, now, webpki::KeyUsage::server_auth())
    }

    fn verify_for(
        &self,
        leaf: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: OffsetDateTime,
        usage: webpki::KeyUsage,
    ) -> Result<()> {
        let anchors: Vec<_> = self
            .roots
            .iter()
            .map(|r| webpki::anchor_from_trusted_cert(r).map(|a| a.to_owned()))
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| PkiError::Invalid(format!("trust anchor: {e}")))?;
        let leaf = webpki::EndEntityCert::try_from(leaf).map_err(|e| PkiError::Invalid(format!("leaf: {e}")))?;
        let secs = u64::try_from(now.unix_timestamp()).unwrap_or(0);
        leaf.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            intermediates,
            UnixTime::since_unix_epoch(std::time::Duration::from_secs(secs)),
            usage,
            None,
            None,
        )
        .map(|_| ())
        .map_err(|e| PkiError::Invalid(format!("chain does not verify: {e}")))
    }
}

/// Whether a certificate names itself as its issuer: a root, as trust anchors are judged (a
/// root's own signature is not what makes it trusted).
pub fn names_itself(cert: &CertificateDer<'_>) -> bool {
    parse_certificate(cert).is_ok_and(|c| c.subject().as_raw() == c.issuer().as_raw())
}

/// The root `signer` chains to, and the path from `signer` (included) up to it (excluded): each
/// link found by signature, not by name, among `above`; the root a certificate of `roots`, then
/// of `above`, that names itself and signed the last link. A signer that names itself is its own
/// root, with an empty path. `None` when the chain does not reach a root.
pub fn path_to_root(
    signer: &CertificateDer<'static>,
    above: &[CertificateDer<'static>],
    roots: &[CertificateDer<'static>],
) -> Option<(CertificateDer<'static>, Vec<CertificateDer<'static>>)> {
    if names_itself(signer) {
        return Some((signer.clone(), Vec::new()));
    }
    let mut path = vec![signer.clone()];
    let mut current = signer.clone();
    // Each step adds a certificate not yet in the path, so this ends.
    for _ in 0..=above.len() {
        let issuer = |c: &&CertificateDer<'static>| super::authority::issued_by(c, &current);
        if let Some(root) = roots.iter().chain(above).filter(|r| names_itself(r)).find(issuer) {
            return Some((root.clone(), path));
        }
        let next = above.iter().filter(|c| !path.contains(c)).find(issuer)?.clone();
        path.push(next.clone());
        current = next;
    }
    None
}

/// SHA-256 of `data` as lowercase hex: how certificates and bundles are named in logs and status.
pub fn sha256_hex(data: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// A signing authority with its chain and trust bundle. The PEM strings of
/// everything above the leaf are built once here, not per request.
#[derive(Debug)]
pub struct SigningChain {
    authority: Authority,
    /// CA certificates between the authority and a root, nearest first.
    intermediates: Vec<CertificateDer<'static>>,
    bundle: TrustBundle,
    /// Istio's response after the leaf: each CA certificate as its own
    /// element, then the whole bundle as one element.
    response_tail: Vec<String>,
}

impl SigningChain {
    /// Assembles and proves a chain: a probe certificate signed by the
    /// authority must verify against the bundle through the intermediates.
    pub fn new(authority: Authority, intermediates: Vec<CertificateDer<'static>>, bundle: TrustBundle) -> Result<Self> {
        Self::new_at(authority, intermediates, bundle, OffsetDateTime::now_utc())
    }

    /// As [`SigningChain::new`], proving the chain at `now`.
    pub fn new_at(
        authority: Authority,
        intermediates: Vec<CertificateDer<'static>>,
        bundle: TrustBundle,
        now: OffsetDateTime,
    ) -> Result<Self> {
        authority.check_valid_at(now)?;
        let signer_is_root = bundle.roots().contains(authority.certificate());
        let mut path: Vec<CertificateDer<'static>> = Vec::new();
        if !signer_is_root {
            path.push(authority.certificate().clone());
        }
        // Roots that appear in the chain file are dropped: the bundle carries them.
        path.extend(intermediates.into_iter().filter(|c| !bundle.roots().contains(c)));

        let probe = profile::issue_probe(&authority, now)?;
        bundle
            .verify(&probe.der, &path, now)
            .map_err(|e| PkiError::SelfCheck(format!("the signer does not chain to the trust bundle: {e}")))?;

        let mut response_tail: Vec<String> = path.iter().map(|c| pem::encode_certificate(c)).collect();
        response_tail.push(bundle.pem().to_string());
        let intermediates = path.into_iter().skip(usize::from(!signer_is_root)).collect();
        Ok(Self { authority, intermediates, bundle, response_tail })
    }

    /// The authority that signs the certificates this chain issues.
    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// The roots that certificates signed with this chain verify against.
    pub fn bundle(&self) -> &TrustBundle {
        &self.bundle
    }

    /// The CA certificates above the authority, excluding roots.
    pub fn intermediates(&self) -> &[CertificateDer<'static>] {
        &self.intermediates
    }

    /// The chain from the authority's certificate up to, not including, the
    /// roots: what a TLS server sends after its leaf.
    pub fn ca_path(&self) -> Vec<CertificateDer<'static>> {
        let mut path = Vec::with_capacity(self.intermediates.len().saturating_add(1));
        if !self.bundle.roots().contains(self.authority.certificate()) {
            path.push(self.authority.certificate().clone());
        }
        path.extend(self.intermediates.iter().cloned());
        path
    }

    /// Signs a workload certificate with this chain's authority, as
    /// [`profile::issue_workload`] describes.
    pub fn issue_workload(
        &self,
        spki_der: &[u8],
        identity: &str,
        ttl: Duration,
        now: OffsetDateTime,
    ) -> Result<IssuedCertificate> {
        profile::issue_workload(&self.authority, spki_der, identity, ttl, now)
    }

    /// Istio's `cert_chain`: `[leaf, intermediate…, bundle]`, each certificate
    /// element ending in a newline, never fewer than two elements.
    pub fn response_chain(&self, leaf_pem: String) -> Vec<String> {
        let mut chain = Vec::with_capacity(self.response_tail.len().saturating_add(1));
        chain.push(leaf_pem);
        chain.extend(self.response_tail.iter().cloned());
        chain
    }
}

/// The current root, shared by every part of a replica: the signing
/// authority when its key is online, and the trust bundle.
#[derive(Clone, Debug)]
pub struct RootState {
    /// The root's signing authority, or `None` when its private key is offline and the root only anchors trust.
    pub authority: Option<std::sync::Arc<Authority>>,
    /// Every root to trust, the current one included: one normally, two during a rotation.
    pub bundle: std::sync::Arc<TrustBundle>,
    /// What a certificate the authority signs chains through to the bundle's first root: empty
    /// when the authority is that root; an imported intermediate (whose root's key is held
    /// elsewhere) and any CA above it otherwise.
    pub chain: std::sync::Arc<Vec<CertificateDer<'static>>>,
}
