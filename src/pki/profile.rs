//! Issuance profiles: what meshroot puts in the certificates it signs,
//! decided by policy and never copied from a CSR.

use super::authority::Authority;
use super::error::{PkiError, Result};
use super::pem;
use super::serial::random_serial;
use rcgen::{CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose, SanType};
use rustls_pki_types::CertificateDer;
use std::net::IpAddr;
use time::{Duration, OffsetDateTime};

/// How far NotBefore is back-dated, for clients with skewed clocks (istiod uses 2 minutes).
pub const CLOCK_SKEW_GRACE: Duration = Duration::minutes(2);

/// Whether a certificate valid from `not_before` to `not_after` should be
/// renewed at `now`: once two thirds of its life have passed.
pub fn renewal_due(not_before: OffsetDateTime, not_after: OffsetDateTime, now: OffsetDateTime) -> bool {
    now >= not_before + (not_after - not_before) * 2 / 3
}

/// A freshly signed certificate and the facts callers report about it.
#[derive(Clone, Debug)]
pub struct IssuedCertificate {
    pub der: CertificateDer<'static>,
    pub pem: String,
    pub serial_hex: String,
    pub not_before: OffsetDateTime,
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
    let san =
        SanType::URI(identity.try_into().map_err(|_| PkiError::Invalid("the identity is not an ASCII URI".into()))?);
    issue_leaf(
        authority,
        spki_der,
        vec![san],
        &[ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth],
        ttl,
        now,
    )
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
    let mut sans = Vec::with_capacity(dns_names.len() + ips.len());
    for name in dns_names {
        sans.push(SanType::DnsName(
            name.as_str().try_into().map_err(|_| PkiError::Invalid(format!("DNS name {name:?} is not ASCII")))?,
        ));
    }
    sans.extend(ips.iter().copied().map(SanType::IpAddress));
    issue_leaf(authority, spki_der, sans, &[ExtendedKeyUsagePurpose::ServerAuth], lifetime, now)
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
    let mut sans = Vec::with_capacity(dns_names.len() + 1);
    for name in dns_names {
        sans.push(SanType::DnsName(
            name.as_str().try_into().map_err(|_| PkiError::Invalid(format!("DNS name {name:?} is not ASCII")))?,
        ));
    }
    sans.push(SanType::URI(
        identity.try_into().map_err(|_| PkiError::Invalid("the identity is not an ASCII URI".into()))?,
    ));
    let ekus = [ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    issue_leaf(authority, spki_der, sans, &ekus, lifetime, now)
}

fn issue_leaf(
    authority: &Authority,
    spki_der: &[u8],
    sans: Vec<SanType>,
    ekus: &[ExtendedKeyUsagePurpose],
    ttl: Duration,
    now: OffsetDateTime,
) -> Result<IssuedCertificate> {
    if ttl <= Duration::ZERO {
        return Err(PkiError::Invalid("the lifetime must be positive".into()));
    }
    // X.509 times have whole seconds; truncate so what we report is exact.
    let now = now.replace_nanosecond(0).map_err(|e| PkiError::Invalid(e.to_string()))?;
    authority.check_valid_at(now)?;
    let not_before = now - CLOCK_SKEW_GRACE;
    let not_after = now.checked_add(ttl).unwrap_or(authority.not_after()).min(authority.not_after());
    let (serial, serial_hex) = random_serial()?;

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

    let der = authority.sign(&params, spki_der)?;
    Ok(IssuedCertificate { pem: pem::encode_certificate(&der), der, serial_hex, not_before, not_after })
}
