//! Issuance profiles: what meshroot puts in the certificates it signs,
//! decided by policy and never copied from a CSR.

use super::authority::Authority;
use super::error::{PkiError, Result};
use super::pem;
use super::serial::{random_serial, random_serial_bytes};
use super::workload_template::{WorkloadFields, canonical_spki};
use rcgen::{
    CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use std::net::IpAddr;
use time::{Duration, OffsetDateTime};

/// How far NotBefore is back-dated, for clients with skewed clocks (istiod uses 2 minutes).
pub const CLOCK_SKEW_GRACE: Duration = Duration::minutes(2);

/// Whether a certificate valid from `not_before` to `not_after` should be
/// renewed at `now`: once two thirds of its life have passed.
pub fn renewal_due(not_before: OffsetDateTime, not_after: OffsetDateTime, now: OffsetDateTime) -> bool {
    let two_thirds = (not_after - not_before).checked_mul(2).and_then(|d| d.checked_div(3));
    // Out of range only for absurd validity periods: renew.
    two_thirds.and_then(|d| not_before.checked_add(d)).is_none_or(|due| now >= due)
}

/// The workload mark: a workload certificate's SubjectKeyIdentifier is
/// [`workload_key_id`] of its own public key, which only the workload
/// profile ([`issue_workload`], what CreateCertificate signs) writes. Every
/// other leaf (a cert-manager Issuer's, the Kubernetes CSR signer's, made in
/// `template.rs`, which never copies a CSR's extensions but the SAN; istiod's
/// and meshroot's serving certificates) gets rcgen's plain SHA-256 key
/// identifier. Client-certificate authentication on the CA API accepts only
/// marked leaves, so a leaf that the same intermediate signed through
/// another path can never renew a workload identity by itself.
///
/// An identifier rather than an extension of meshroot's own: an OID needs a
/// registered arc, and the registration-free UUID arc (2.25) has arcs of 128
/// bits, which Go's crypto/x509 refuses to parse ("malformed extension OID
/// field"): pilot-agent and istiod would reject every certificate. The
/// identifier is a hash, so no CSR can ask for it and nothing but meshroot's
/// own code path can write it.
pub const WORKLOAD_KEY_ID_CONTEXT: &[u8] = b"meshroot workload certificate v1\0";

/// The SubjectKeyIdentifier of a workload certificate for the public key
/// `spki_der` (a whole SubjectPublicKeyInfo): the first 20 octets of
/// SHA-256 over [`WORKLOAD_KEY_ID_CONTEXT`] and the key, where other leaves
/// get SHA-256 over the key alone (RFC 7093 method 1).
pub fn workload_key_id(spki_der: &[u8]) -> Vec<u8> {
    let mut hash = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    hash.update(WORKLOAD_KEY_ID_CONTEXT);
    hash.update(spki_der);
    hash.finish().as_ref().iter().take(20).copied().collect()
}

/// A freshly signed certificate and the facts callers report about it.
#[derive(Clone, Debug)]
pub struct IssuedCertificate {
    /// The certificate, as DER.
    pub der: CertificateDer<'static>,
    /// The same certificate as PEM, ending in a newline.
    pub pem: String,
    /// The serial number, as 40 lowercase hex digits.
    pub serial_hex: String,
    /// Start of validity, exactly as written in the certificate (whole seconds).
    pub not_before: OffsetDateTime,
    /// End of validity, exactly as written: the requested lifetime, cut at the signer's NotAfter.
    pub not_after: OffsetDateTime,
}

/// Signs an Istio workload certificate for `identity` (a SPIFFE URI that the
/// caller has already authorized), as istiod issues them: empty subject, one
/// critical URI SAN, KeyUsage digitalSignature+keyEncipherment (critical),
/// EKU serverAuth+clientAuth, CA:FALSE, AKI, a random serial. NotAfter is
/// `now + ttl`, clamped to the signer's own NotAfter.
pub fn issue_workload(
    authority: &Authority,
    spki_der: &[u8],
    identity: &str,
    ttl: Duration,
    now: OffsetDateTime,
) -> Result<IssuedCertificate> {
    let (not_before, not_after) = leaf_validity(authority, ttl, now)?;
    // The key as the certificate carries it; the workload mark is derived from that. CSR parsing
    // already refuses keys in any other encoding, but this takes bytes from any caller.
    let spki = canonical_spki(spki_der)?;
    let key_id = workload_key_id(&spki);
    let (serial, serial_hex) = random_serial_bytes()?;
    let template = authority.workload_template()?;
    let fields = WorkloadFields { serial: &serial, not_before, not_after, spki: &spki, identity };
    let tbs = template.tbs(&fields, &key_id)?;
    let signature = rcgen::SigningKey::sign(authority.key(), &tbs)?;
    let der = template.certificate(&tbs, &signature)?;
    Ok(IssuedCertificate { pem: pem::encode_certificate(&der), der, serial_hex, not_before, not_after })
}

/// A workload certificate `authority` signs at `now` for a throwaway key, valid for a minute: a
/// probe to check a chain of trust with, never stored or sent.
pub fn issue_probe(authority: &Authority, now: OffsetDateTime) -> Result<IssuedCertificate> {
    let key = crate::keys::PrivateKey::generate(crate::keys::KeyAlgorithm::EcdsaP256)?;
    issue_workload(authority, &key.spki_der(), "spiffe://meshroot.invalid/ns/probe/sa/probe", Duration::minutes(1), now)
}

/// A workload certificate for `spki_der` signed the general way, with rcgen: the prototype the
/// workload template takes its constant fields from (and, in tests, the template's oracle).
/// No validity check: an authority is loaded before anyone asks whether it is current.
pub(crate) fn rcgen_workload(
    authority: &Authority,
    spki_der: &[u8],
    identity: &str,
    serial: &[u8],
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<CertificateDer<'static>> {
    let san =
        SanType::URI(identity.try_into().map_err(|_| PkiError::Invalid("the identity is not an ASCII URI".into()))?);
    let ekus = [ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    let params = leaf_params(vec![san], &ekus, not_before, not_after, SerialNumber::from_slice(serial));
    rcgen_sign(authority, params, spki_der, KeyId::Workload)
}

/// Which SubjectKeyIdentifier a leaf gets.
enum KeyId {
    /// rcgen's: SHA-256 over the key.
    Plain,
    /// [`workload_key_id`] of the key as the certificate carries it.
    Workload,
}

/// Whether `cert` carries the workload mark: its SubjectKeyIdentifier is
/// [`workload_key_id`] of its own public key.
pub fn is_workload_certificate(cert: &x509_parser::certificate::X509Certificate<'_>) -> bool {
    super::authority::subject_key_id(cert).is_some_and(|id| id == workload_key_id(cert.public_key().raw))
}

/// Signs a TLS server certificate for the given DNS names and IP addresses.
pub fn issue_server(
    authority: &Authority,
    spki_der: &[u8],
    dns_names: &[String],
    ips: &[IpAddr],
    lifetime: Duration,
    now: OffsetDateTime,
) -> Result<IssuedCertificate> {
    if dns_names.is_empty() && ips.is_empty() {
        return Err(PkiError::Invalid("a server certificate needs at least one DNS name or IP".into()));
    }
    let mut sans = Vec::with_capacity(dns_names.len().saturating_add(ips.len()));
    for name in dns_names {
        sans.push(SanType::DnsName(
            name.as_str().try_into().map_err(|_| PkiError::Invalid(format!("DNS name {name:?} is not ASCII")))?,
        ));
    }
    sans.extend(ips.iter().copied().map(SanType::IpAddress));
    issue_leaf(authority, spki_der, sans, &[ExtendedKeyUsagePurpose::ServerAuth], lifetime, now, KeyId::Plain)
}

/// Signs istiod's serving certificate: DNS names plus istiod's SPIFFE ID,
/// usable for serving and as a client (EKU serverAuth + clientAuth).
pub fn issue_istiod(
    authority: &Authority,
    spki_der: &[u8],
    dns_names: &[String],
    identity: &str,
    lifetime: Duration,
    now: OffsetDateTime,
) -> Result<IssuedCertificate> {
    let mut sans = Vec::with_capacity(dns_names.len().saturating_add(1));
    for name in dns_names {
        sans.push(SanType::DnsName(
            name.as_str().try_into().map_err(|_| PkiError::Invalid(format!("DNS name {name:?} is not ASCII")))?,
        ));
    }
    sans.push(SanType::URI(
        identity.try_into().map_err(|_| PkiError::Invalid("the identity is not an ASCII URI".into()))?,
    ));
    let ekus = [ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    issue_leaf(authority, spki_der, sans, &ekus, lifetime, now, KeyId::Plain)
}

fn issue_leaf(
    authority: &Authority,
    spki_der: &[u8],
    sans: Vec<SanType>,
    ekus: &[ExtendedKeyUsagePurpose],
    ttl: Duration,
    now: OffsetDateTime,
    key_id: KeyId,
) -> Result<IssuedCertificate> {
    let (not_before, not_after) = leaf_validity(authority, ttl, now)?;
    let (serial, serial_hex) = random_serial()?;
    let der = rcgen_sign(authority, leaf_params(sans, ekus, not_before, not_after, serial), spki_der, key_id)?;
    Ok(IssuedCertificate { pem: pem::encode_certificate(&der), der, serial_hex, not_before, not_after })
}

/// A leaf's NotBefore and NotAfter for `ttl` from `now`: back-dated by [`CLOCK_SKEW_GRACE`], cut at
/// the authority's NotAfter, in whole seconds. Fails unless the authority is valid at `now`.
fn leaf_validity(
    authority: &Authority,
    ttl: Duration,
    now: OffsetDateTime,
) -> Result<(OffsetDateTime, OffsetDateTime)> {
    if ttl <= Duration::ZERO {
        return Err(PkiError::Invalid("the lifetime must be positive".into()));
    }
    // X.509 times have whole seconds; truncate so what we report is exact.
    let now = now.replace_nanosecond(0).map_err(|e| PkiError::Invalid(e.to_string()))?;
    authority.check_valid_at(now)?;
    let not_before = now.checked_sub(CLOCK_SKEW_GRACE).ok_or(PkiError::TimeOutOfRange("the leaf's NotBefore"))?;
    let not_after = now.checked_add(ttl).unwrap_or(authority.not_after()).min(authority.not_after());
    Ok((not_before, not_after))
}

fn leaf_params(
    sans: Vec<SanType>,
    ekus: &[ExtendedKeyUsagePurpose],
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    serial: SerialNumber,
) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = sans;
    params.not_before = not_before;
    params.not_after = not_after;
    params.serial_number = Some(serial);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = ekus.to_vec();
    params.use_authority_key_identifier_extension = true;
    params
}

fn rcgen_sign(
    authority: &Authority,
    mut params: CertificateParams,
    spki_der: &[u8],
    key_id: KeyId,
) -> Result<CertificateDer<'static>> {
    // Parsed once: rcgen writes the key again from it, and the workload mark is
    // derived from what it writes, not from the CSR's bytes (which need not be
    // canonical DER).
    let spki = super::authority::parse_spki(spki_der)?;
    if let KeyId::Workload = key_id {
        let written = rcgen::PublicKeyData::subject_public_key_info(&spki);
        params.key_identifier_method = rcgen::KeyIdMethod::PreSpecified(workload_key_id(&written));
    }
    authority.sign_key(&params, &spki)
}
