//! Issuance profiles: what meshroot puts in the certificates it signs,
//! decided by policy and never copied from a CSR.

use super::authority::Authority;
use super::error::{PkiError, Result};
use super::pem;
use super::resign::EditError;
use super::serial::random_serial;
use der::asn1::Any;
use der::{Decode, Encode, Tag, TagNumber, Tagged};
use rcgen::{CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose, SanType};
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

/// The workload marker: a private, non-critical extension that only the
/// workload profile ([`issue_workload`], what CreateCertificate signs) puts in
/// a certificate. Client-certificate authentication on the CA API accepts
/// only leaves that carry it, so a leaf that the same intermediate signed
/// through another path (a cert-manager Issuer or the Kubernetes CSR signer,
/// which build certificates in `template.rs` and never copy CSR extensions
/// other than the SAN) can never renew a workload identity by itself.
/// Its OID sits under the UUID arc `2.25` (ITU-T X.667), so it needs no
/// registration and collides with nothing: the UUID is
/// c914b6ae-a69e-4e66-b632-330a7a50d392, fixed once, at random.
pub const WORKLOAD_MARKER_OID: &str = "2.25.267282378325752821241372292871766463378";

/// The DER content octets of [`WORKLOAD_MARKER_OID`] (what x509-parser's
/// `Oid::as_bytes` returns). Its arc does not fit in 64 bits, so it is spelled
/// out here and checked against the dotted form in the tests.
pub const WORKLOAD_MARKER_OID_DER: &[u8] = &[
    0x69, 0x83, 0x92, 0x94, 0xdb, 0xab, 0xd4, 0xe9, 0xf2, 0xb9, 0xcd, 0xb6, 0x99, 0x8c, 0xe1, 0xa7, 0xd2, 0xc3, 0xa7,
    0x12,
];

/// The marker's extnValue: DER NULL. Its presence is the whole message.
pub const WORKLOAD_MARKER_VALUE: &[u8] = &[0x05, 0x00];

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
    let san =
        SanType::URI(identity.try_into().map_err(|_| PkiError::Invalid("the identity is not an ASCII URI".into()))?);
    let mut issued = issue_leaf(
        authority,
        spki_der,
        vec![san],
        &[ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth],
        ttl,
        now,
    )?;
    issued.der = with_workload_marker(&issued.der, authority)?;
    issued.pem = pem::encode_certificate(&issued.der);
    Ok(issued)
}

/// Appends the [`WORKLOAD_MARKER_OID`] extension (non-critical, DER NULL) to
/// a certificate this authority just signed, and signs it again with the
/// same key and algorithm. (rcgen writes OIDs with 64-bit arcs only.)
fn with_workload_marker(cert: &CertificateDer<'_>, authority: &Authority) -> Result<CertificateDer<'static>> {
    let marker = workload_marker_extension()?;
    super::resign::resign(cert, authority, "adding the workload marker", |fields| {
        // TBSCertificate ends with `extensions [3] EXPLICIT SEQUENCE OF Extension`.
        let extensions_tag = Tag::ContextSpecific { constructed: true, number: TagNumber(3) };
        let last = fields.last_mut().filter(|f| f.tag() == extensions_tag).ok_or(EditError::Layout("certificate"))?;
        let mut extensions: Vec<Any> = Vec::from_der(last.value())?;
        extensions.push(Any::from_der(&marker)?);
        *last = Any::new(extensions_tag, extensions.to_der()?)?;
        Ok(())
    })
}

/// `Extension ::= SEQUENCE { extnID, extnValue OCTET STRING }` for the
/// marker; `critical` is left out (DEFAULT FALSE).
fn workload_marker_extension() -> Result<Vec<u8>> {
    let der_err = |e: der::Error| PkiError::Signing(format!("encoding the workload marker: {e}"));
    let oid = Any::new(Tag::ObjectIdentifier, WORKLOAD_MARKER_OID_DER).map_err(der_err)?;
    let value = Any::new(Tag::OctetString, WORKLOAD_MARKER_VALUE).map_err(der_err)?;
    vec![oid, value].to_der().map_err(der_err)
}

/// Whether `cert` carries the workload marker exactly as [`issue_workload`]
/// writes it: once, non-critical, with a DER NULL value.
pub fn has_workload_marker(cert: &x509_parser::certificate::X509Certificate<'_>) -> bool {
    let mut markers = cert.extensions().iter().filter(|e| e.oid.as_bytes() == WORKLOAD_MARKER_OID_DER);
    matches!((markers.next(), markers.next()), (Some(m), None) if !m.critical && m.value == WORKLOAD_MARKER_VALUE)
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
    let not_before = now.checked_sub(CLOCK_SKEW_GRACE).ok_or(PkiError::TimeOutOfRange("the leaf's NotBefore"))?;
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
