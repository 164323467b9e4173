//! Certificates issued from a CSR the way cert-manager's CA issuer does:
//! the requested subject verbatim, the requested SANs, the usages and CA
//! flag from the request's spec (never from CSR extensions), a random
//! serial, and a lifetime clamped to the signer's.

use super::authority::{Authority, parse_certificate};
use super::csr::CertificateSigningRequest;
use super::error::{PkiError, Result};
use super::pem;
use super::profile::IssuedCertificate;
use super::resign::EditError;
use super::serial::random_serial;
use super::usage::Usages;
use der::asn1::Any;
use der::{Decode, Encode};
use rcgen::{BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, IsCa};
use rustls_pki_types::CertificateDer;
use time::{Duration, OffsetDateTime};

const OID_SAN: &[u64] = &[2, 5, 29, 17];
const OID_NAME_CONSTRAINTS: &[u64] = &[2, 5, 29, 30];

/// What to issue for a verified CSR.
#[derive(Clone, Debug)]
pub struct CertificateTemplate<'a> {
    /// The verified CSR: the certificate takes its public key, subject and SANs, nothing else.
    pub csr: &'a CertificateSigningRequest,
    /// Whether to issue a CA certificate (CA:TRUE). Comes from the request's spec, never from the CSR.
    pub is_ca: bool,
    /// pathLenConstraint of an issued CA certificate; `None` leaves it out.
    pub max_path_length: Option<u8>,
    /// DER NameConstraints for an issued CA, added as a critical extension.
    pub name_constraints: Option<&'a [u8]>,
    /// The KeyUsage bits and extended key usages to write.
    pub usages: &'a Usages,
    /// Validity requested from `now`; must be positive, and is cut at the authority's NotAfter.
    pub lifetime: Duration,
}

/// Signs `template` with `authority` at `now`. NotBefore is `now` (as
/// cert-manager does, so NotAfter − NotBefore is the requested duration);
/// NotAfter is clamped to the authority's own.
pub fn issue_from_template(
    authority: &Authority,
    template: &CertificateTemplate<'_>,
    now: OffsetDateTime,
) -> Result<IssuedCertificate> {
    if template.lifetime <= Duration::ZERO {
        return Err(PkiError::Invalid("the duration must be positive".into()));
    }
    let now = now.replace_nanosecond(0).map_err(|e| PkiError::Invalid(e.to_string()))?;
    authority.check_valid_at(now)?;
    let not_after = now.checked_add(template.lifetime).unwrap_or(authority.not_after()).min(authority.not_after());
    let (serial, serial_hex) = random_serial()?;
    let csr = template.csr;

    let mut params = CertificateParams::default();
    // rcgen cannot encode repeated attribute types or multi-valued RDNs, so
    // the subject is written empty here and the requested one spliced in.
    params.distinguished_name = DistinguishedName::new();
    params.not_before = now;
    params.not_after = not_after;
    params.serial_number = Some(serial);
    params.is_ca = if template.is_ca {
        IsCa::Ca(template.max_path_length.map_or(BasicConstraints::Unconstrained, BasicConstraints::Constrained))
    } else {
        IsCa::ExplicitNoCa
    };
    params.key_usages = template.usages.rcgen_key_usages();
    params.extended_key_usages = template.usages.rcgen_extended_key_usages();
    params.use_authority_key_identifier_extension = true;
    if let Some(san) = csr.san_der() {
        // The requested SANs verbatim (otherName and all); critical exactly
        // when the subject is empty (RFC 5280 4.2.1.6).
        let mut ext = CustomExtension::from_oid_content(OID_SAN, san.to_vec());
        ext.set_criticality(csr.subject_is_empty());
        params.custom_extensions.push(ext);
    }

    if let Some(constraints) = template.name_constraints {
        if !template.is_ca {
            return Err(PkiError::Invalid("name constraints belong on CA certificates only".into()));
        }
        let mut ext = CustomExtension::from_oid_content(OID_NAME_CONSTRAINTS, constraints.to_vec());
        ext.set_criticality(true);
        params.custom_extensions.push(ext);
    }

    let mut der = authority.sign(&params, csr.spki_der())?;
    if !csr.subject_is_empty() {
        der = with_subject(&der, csr.subject_der(), authority)?;
    }
    check_issued(&der, authority, template)?;
    Ok(IssuedCertificate { pem: pem::encode_certificate(&der), der, serial_hex, not_before: now, not_after })
}

/// Replaces the (empty) subject of a certificate meshroot just signed and
/// signs it again with the same key and algorithm.
fn with_subject(cert: &CertificateDer<'_>, subject: &[u8], authority: &Authority) -> Result<CertificateDer<'static>> {
    super::resign::resign(cert, authority, "writing the requested subject", |fields| {
        // TBSCertificate: [0] version, serial, signature, issuer, validity, subject, ...
        const SUBJECT: usize = 5;
        let version_present = fields.first().and_then(|f| f.to_der().ok()).is_some_and(|d| d.first() == Some(&0xa0));
        let placeholder = fields.get(SUBJECT).and_then(|f| f.to_der().ok());
        if !version_present || placeholder.as_deref() != Some([0x30, 0x00].as_slice()) {
            return Err(EditError::Layout("TBSCertificate"));
        }
        let subject = Any::from_der(subject)?;
        let slot = fields.get_mut(SUBJECT).ok_or(EditError::Layout("TBSCertificate"))?;
        *slot = subject;
        Ok(())
    })
}

/// Proves what was issued: signed by the authority, for the CSR's key and
/// subject, with the requested CA flag, and not already expired.
fn check_issued(der: &CertificateDer<'_>, authority: &Authority, template: &CertificateTemplate<'_>) -> Result<()> {
    let issued = parse_certificate(der)?;
    let ca = parse_certificate(authority.certificate())?;
    let fail = |what: &str| Err(PkiError::SelfCheck(format!("the issued certificate {what}")));
    if issued.verify_signature(Some(ca.public_key())).is_err() {
        return fail("does not verify with the signer's key");
    }
    if issued.issuer().as_raw() != ca.subject().as_raw() {
        return fail("does not name the signer as its issuer");
    }
    if issued.public_key().raw != template.csr.spki_der() {
        return fail("does not carry the CSR's public key");
    }
    if issued.subject().as_raw() != template.csr.subject_der() {
        return fail("does not carry the requested subject");
    }
    let is_ca = issued.basic_constraints().ok().flatten().is_some_and(|bc| bc.value.ca);
    if is_ca != template.is_ca {
        return fail("has the wrong CA flag");
    }
    let cert_sign = issued.key_usage().ok().flatten().is_some_and(|ku| ku.value.key_cert_sign());
    if cert_sign && !is_ca {
        return fail("has keyCertSign without CA:TRUE");
    }
    let constrained = issued.name_constraints().ok().flatten().is_some_and(|nc| nc.critical);
    if constrained != template.name_constraints.is_some() {
        return fail("does not carry the requested name constraints");
    }
    if issued.subject().as_raw() == ca.subject().as_raw() && !issued.subject().as_raw().is_empty() {
        return fail("carries its issuer's name as its subject");
    }
    Ok(())
}
