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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CaSpec, usage::Usages};
    use rcgen::{DnType, KeyPair, SanType};
    use x509_parser::prelude::{FromDer, X509Certificate};

    fn signer() -> Authority {
        let now = OffsetDateTime::now_utc();
        let root = Authority::new_root(&CaSpec::root(Duration::days(30)), now).unwrap();
        root.new_intermediate(&CaSpec::intermediate("default", Duration::days(7)), now).unwrap()
    }

    /// A CSR for `a.example` with the subject `dn` (organization, common name), as rcgen writes it.
    fn csr(dn: &[(DnType, &str)]) -> CertificateSigningRequest {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        for (kind, value) in dn {
            params.distinguished_name.push(kind.clone(), *value);
        }
        params.subject_alt_names = vec![SanType::DnsName("a.example".try_into().unwrap())];
        CertificateSigningRequest::from_der(params.serialize_request(&key).unwrap().der()).unwrap()
    }

    fn template<'a>(csr: &'a CertificateSigningRequest, usages: &'a Usages, is_ca: bool) -> CertificateTemplate<'a> {
        CertificateTemplate {
            csr,
            is_ca,
            max_path_length: is_ca.then_some(0),
            name_constraints: None,
            usages,
            lifetime: Duration::hours(1),
        }
    }

    fn issue(authority: &Authority, template: &CertificateTemplate<'_>) -> Result<IssuedCertificate> {
        issue_from_template(authority, template, OffsetDateTime::now_utc())
    }

    #[test]
    fn the_requested_subject_is_written_and_a_ca_gets_cert_sign() {
        let authority = signer();
        let csr = csr(&[(DnType::OrganizationName, "Example"), (DnType::CommonName, "svc.example")]);
        let leaf_usages = Usages::from_names(&["digital signature", "server auth"], false).unwrap();
        let issued = issue(&authority, &template(&csr, &leaf_usages, false)).unwrap();
        let (_, cert) = X509Certificate::from_der(&issued.der).unwrap();
        assert_eq!(cert.subject().as_raw(), csr.subject_der(), "the subject is the CSR's, byte for byte");
        assert_eq!(cert.subject().to_string(), "O=Example, CN=svc.example");
        assert!(!cert.basic_constraints().unwrap().unwrap().value.ca);

        let ca_usages = Usages::from_names(&["cert sign", "digital signature"], true).unwrap();
        let issued = issue(&authority, &template(&csr, &ca_usages, true)).unwrap();
        let (_, cert) = X509Certificate::from_der(&issued.der).unwrap();
        assert!(cert.basic_constraints().unwrap().unwrap().value.ca);
        assert!(cert.key_usage().unwrap().unwrap().value.key_cert_sign());
        assert_eq!(cert.subject().as_raw(), csr.subject_der());
    }

    #[test]
    fn name_constraints_are_refused_on_a_leaf() {
        let authority = signer();
        let csr = csr(&[]);
        let usages = Usages::from_names::<&str>(&[], false).unwrap();
        // Any DER will do: the leaf is refused before the constraints are read.
        let constraints = [0x30, 0x00];
        let leaf = CertificateTemplate { name_constraints: Some(&constraints), ..template(&csr, &usages, false) };
        assert!(matches!(issue(&authority, &leaf), Err(PkiError::Invalid(_))));
    }

    #[test]
    fn a_subject_equal_to_the_signers_is_refused_by_the_self_check() {
        let authority = signer();
        let csr = csr(&[
            (DnType::OrganizationName, "meshroot"),
            (DnType::CommonName, "meshroot intermediate CA for mesh default"),
        ]);
        let (_, ca) = X509Certificate::from_der(authority.certificate()).unwrap();
        assert_eq!(csr.subject_der(), ca.subject().as_raw(), "the CSR must ask for the signer's exact name");
        let usages = Usages::from_names::<&str>(&[], false).unwrap();
        let refused = issue(&authority, &template(&csr, &usages, false)).unwrap_err();
        assert!(matches!(&refused, PkiError::SelfCheck(m) if m.contains("carries its issuer's name")), "{refused}");
    }

    #[test]
    fn the_self_check_refuses_a_certificate_other_than_the_one_asked_for() {
        let authority = signer();
        let usages = Usages::from_names::<&str>(&[], false).unwrap();
        let asked = csr(&[(DnType::CommonName, "svc.example")]);
        let issued = issue(&authority, &template(&asked, &usages, false)).unwrap();
        assert!(check_issued(&issued.der, &authority, &template(&asked, &usages, false)).is_ok());
        // Another CSR's key, another subject, a CA flag not asked for, another signer.
        let other = csr(&[(DnType::CommonName, "svc.example")]);
        for (why, result) in [
            ("public key", check_issued(&issued.der, &authority, &template(&other, &usages, false))),
            ("CA flag", check_issued(&issued.der, &authority, &template(&asked, &usages, true))),
            ("signer's key", check_issued(&issued.der, &signer(), &template(&asked, &usages, false))),
        ] {
            assert!(matches!(&result, Err(PkiError::SelfCheck(_))), "{why}: {result:?}");
        }
    }

    #[test]
    fn the_subject_is_written_only_into_a_certificate_laid_out_as_meshroot_signs_it() {
        let authority = signer();
        let subject = csr(&[(DnType::CommonName, "svc.example")]).subject_der().to_vec();
        // The signer's own certificate has a subject already: it is not one to rewrite.
        let refused = with_subject(authority.certificate(), &subject, &authority).unwrap_err();
        assert!(refused.to_string().contains("unexpected TBSCertificate layout"), "{refused}");
    }
}
