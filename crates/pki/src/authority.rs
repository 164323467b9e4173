//! Certificate authorities: a root, an intermediate, or one loaded from PEM.
//! Every authority passes a self-check (a probe certificate whose issuer and
//! signature must match the CA certificate) before it may sign.

use super::error::{PkiError, Result};
use super::keys::{KeyAlgorithm, PrivateKey, PublicKeyKind, classify_spki};
use super::pem;
use super::serial::{random_serial, random_serial_bytes};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyUsagePurpose, PublicKeyData,
    SignatureAlgorithm, SigningKey,
};
use rustls_pki_types::CertificateDer;
use std::fmt;
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::{FromDer, X509Certificate};

/// Certificates meshroot reads are small; a chain file of several is too.
pub const MAX_CERT_PEM_BYTES: usize = 256 * 1024;

impl PublicKeyData for PrivateKey {
    fn der_bytes(&self) -> &[u8] {
        self.key_pair().der_bytes()
    }
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.key_pair().algorithm()
    }
}

impl SigningKey for PrivateKey {
    fn sign(&self, msg: &[u8]) -> std::result::Result<Vec<u8>, rcgen::Error> {
        self.key_pair().sign(msg)
    }
}

/// How to make a new CA certificate.
#[derive(Clone, Debug)]
pub struct CaSpec {
    /// CommonName of the CA's subject.
    pub common_name: String,
    /// Organization (O) of the CA's subject.
    pub organization: String,
    /// Algorithm of the CA's newly generated key.
    pub key_algorithm: KeyAlgorithm,
    /// How long the CA is valid from its creation (NotBefore is back-dated 2 minutes). An intermediate's
    /// validity is also cut at its issuer's NotAfter.
    pub lifetime: Duration,
}

impl CaSpec {
    /// meshroot's default root: CommonName `meshroot root CA`, organization `meshroot`, an ECDSA P-256 key.
    pub fn root(lifetime: Duration) -> Self {
        Self {
            common_name: "meshroot root CA".into(),
            organization: "meshroot".into(),
            key_algorithm: KeyAlgorithm::EcdsaP256,
            lifetime,
        }
    }

    /// meshroot's default intermediate for `mesh`, named after it, with an ECDSA P-256 key.
    pub fn intermediate(mesh: &str, lifetime: Duration) -> Self {
        Self {
            common_name: format!("meshroot intermediate CA for mesh {mesh}"),
            organization: "meshroot".into(),
            key_algorithm: KeyAlgorithm::EcdsaP256,
            lifetime,
        }
    }
}

/// A CA certificate with its private key, ready to sign.
pub struct Authority {
    cert: CertificateDer<'static>,
    cert_pem: String,
    subject: String,
    serial_hex: String,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    self_signed: bool,
    issuer: rcgen::Issuer<'static, PrivateKey>,
    /// What every workload certificate it signs shares; `None` only while it is being loaded.
    workload: Option<super::workload_template::WorkloadTemplate>,
}

impl fmt::Debug for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authority")
            .field("subject", &self.subject)
            .field("serial", &self.serial_hex)
            .field("not_after", &self.not_after)
            .field("key", &"[redacted]")
            .finish()
    }
}

impl Authority {
    /// Generates a self-signed root.
    pub fn new_root(spec: &CaSpec, now: OffsetDateTime) -> Result<Self> {
        let key = PrivateKey::generate(spec.key_algorithm)?;
        let not_after = now.checked_add(spec.lifetime).ok_or(PkiError::TimeOutOfRange("the root's NotAfter"))?;
        let mut params = ca_params(spec, now, not_after)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key)?;
        Self::from_parts(cert.der().clone(), key)
    }

    /// Generates an intermediate (pathLen 0) signed by `self`. Its lifetime
    /// never extends past this authority's.
    pub fn new_intermediate(&self, spec: &CaSpec, now: OffsetDateTime) -> Result<Self> {
        self.check_valid_at(now)?;
        let key = PrivateKey::generate(spec.key_algorithm)?;
        let not_after = now.checked_add(spec.lifetime).map_or(self.not_after, |end| end.min(self.not_after));
        let mut params = ca_params(spec, now, not_after)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.use_authority_key_identifier_extension = true;
        let cert = self.sign(&params, &key.spki_der())?;
        Self::from_parts(cert, key)
    }

    /// Loads a CA certificate (exactly one PEM block) and its private key.
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Self> {
        let mut certs = pem::decode_certificates(cert_pem, MAX_CERT_PEM_BYTES)?;
        if certs.len() != 1 {
            return Err(PkiError::PemCount(certs.len()));
        }
        let key = PrivateKey::from_pem(key_pem)?;
        Self::from_parts(certs.remove(0), key)
    }

    fn from_parts(cert: CertificateDer<'static>, key: PrivateKey) -> Result<Self> {
        let (subject, serial_hex, not_before, not_after, self_signed) = {
            let x509 = parse_certificate(&cert)?;
            check_is_ca(&x509)?;
            if x509.public_key().raw != key.spki_der().as_slice() {
                return Err(PkiError::KeyMismatch);
            }
            classify_spki(x509.public_key())?;
            // rcgen re-encodes the issuer name from parsed attributes; it only
            // handles one attribute per RDN and panics on an empty one.
            for rdn in x509.subject().iter() {
                if rdn.iter().count() != 1 {
                    return Err(PkiError::NotCa(
                        "the subject has a multi-valued or empty RDN, which meshroot cannot sign under".into(),
                    ));
                }
            }
            (
                x509.subject().to_string(),
                x509.raw_serial_as_string().replace(':', ""),
                x509.validity().not_before.to_datetime(),
                x509.validity().not_after.to_datetime(),
                x509.subject().as_raw() == x509.issuer().as_raw(),
            )
        };
        let issuer = rcgen::Issuer::from_ca_cert_der(&cert, key)?;
        let mut authority = Self {
            cert_pem: pem::encode_certificate(&cert),
            cert,
            subject,
            serial_hex,
            not_before,
            not_after,
            self_signed,
            issuer,
            workload: None,
        };
        authority.workload = Some(authority.self_check()?);
        Ok(authority)
    }

    /// Signs a probe, a workload certificate for this authority's own key (a real certificate,
    /// never stored or sent, dropped here), and checks that its issuer name, AKI and signature
    /// match this CA certificate exactly, so a re-encoded name or a wrong key can never produce
    /// certificates that do not chain. The same probe is the workload template's prototype: only
    /// the fields all workload certificates share are kept, and the template must rebuild it.
    fn self_check(&self) -> Result<super::workload_template::WorkloadTemplate> {
        let now = OffsetDateTime::now_utc().replace_nanosecond(0).map_err(|e| PkiError::Invalid(e.to_string()))?;
        let later = now.checked_add(Duration::minutes(1)).ok_or(PkiError::TimeOutOfRange("the probe's NotAfter"))?;
        let (serial, _) = random_serial_bytes()?;
        let spki = self.issuer.key().spki_der();
        let identity = "spiffe://prototype/ns/prototype/sa/prototype";
        let der = super::profile::rcgen_workload(self, &spki, identity, &serial, now, later)?;
        let probe = parse_certificate(&der)?;
        let ca = parse_certificate(&self.cert)?;
        if probe.issuer().as_raw() != ca.subject().as_raw() {
            return Err(PkiError::SelfCheck("issued certificates would not name this CA as issuer".into()));
        }
        probe
            .verify_signature(Some(ca.public_key()))
            .map_err(|e| PkiError::SelfCheck(format!("probe signature does not verify: {e}")))?;
        if let (Some(ski), Some(aki)) = (subject_key_id(&ca), authority_key_id(&probe))
            && ski != aki
        {
            return Err(PkiError::SelfCheck("authority key identifier does not match".into()));
        }
        let fields = super::workload_template::WorkloadFields {
            serial: &serial,
            not_before: now,
            not_after: later,
            spki: &spki,
            identity,
        };
        super::workload_template::WorkloadTemplate::from_prototype(
            &der,
            &fields,
            &super::profile::workload_key_id(&spki),
        )
    }

    /// What every workload certificate this authority signs shares.
    pub(crate) fn workload_template(&self) -> Result<&super::workload_template::WorkloadTemplate> {
        self.workload.as_ref().ok_or_else(|| PkiError::Signing("the authority is still being loaded".into()))
    }

    /// Signs `params` for the public key `spki_der` (DER SubjectPublicKeyInfo).
    pub fn sign(&self, params: &CertificateParams, spki_der: &[u8]) -> Result<CertificateDer<'static>> {
        self.sign_key(params, &parse_spki(spki_der)?)
    }

    /// Signs `params` for a public key already parsed with [`parse_spki`].
    pub fn sign_key(
        &self,
        params: &CertificateParams,
        spki: &rcgen::SubjectPublicKeyInfo,
    ) -> Result<CertificateDer<'static>> {
        Ok(params.signed_by(spki, &self.issuer)?.der().clone())
    }

    /// Fails unless `now` lies within this CA certificate's validity.
    pub fn check_valid_at(&self, now: OffsetDateTime) -> Result<()> {
        if now < self.not_before || now >= self.not_after {
            return Err(PkiError::Expired {
                not_before: self.not_before.to_string(),
                not_after: self.not_after.to_string(),
            });
        }
        Ok(())
    }

    /// The CA certificate, as DER.
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// The CA certificate as PEM (LF line endings, ending in a newline).
    pub fn certificate_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA's private key, to store it and to sign edited certificates again.
    pub fn key(&self) -> &PrivateKey {
        self.issuer.key()
    }

    /// The type and size of the CA's key.
    pub fn key_kind(&self) -> PublicKeyKind {
        self.issuer.key().kind()
    }

    /// The CA certificate's subject, in RFC 4514 form (for logs and messages).
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The CA certificate's serial number, as lowercase hex without separators.
    pub fn serial_hex(&self) -> &str {
        &self.serial_hex
    }

    /// Start of the CA certificate's validity.
    pub fn not_before(&self) -> OffsetDateTime {
        self.not_before
    }

    /// End of the CA certificate's validity. Nothing this authority signs outlives it.
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// Whether the certificate names itself as its issuer, i.e. is a root (judged by name, not by signature).
    pub fn is_self_signed(&self) -> bool {
        self.self_signed
    }

    /// Whether `cert` was signed by this authority's key, under its name.
    /// (During a root rotation both roots are trusted, and this tells which
    /// one an intermediate is under.)
    pub fn issued(&self, cert: &CertificateDer<'_>) -> bool {
        issued_by(&self.cert, cert)
    }
}

/// Whether `cert` names `issuer` as its issuer and carries its signature.
pub fn issued_by(issuer: &CertificateDer<'_>, cert: &CertificateDer<'_>) -> bool {
    let (Ok(issuer), Ok(cert)) = (parse_certificate(issuer), parse_certificate(cert)) else { return false };
    cert.issuer().as_raw() == issuer.subject().as_raw() && cert.verify_signature(Some(issuer.public_key())).is_ok()
}

fn ca_params(spec: &CaSpec, not_before: OffsetDateTime, not_after: OffsetDateTime) -> Result<CertificateParams> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, spec.organization.as_str());
    dn.push(DnType::CommonName, spec.common_name.as_str());
    params.distinguished_name = dn;
    params.not_before =
        not_before.checked_sub(Duration::minutes(2)).ok_or(PkiError::TimeOutOfRange("the CA's NotBefore"))?;
    params.not_after = not_after;
    params.serial_number = Some(random_serial()?.0);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(params)
}

/// Parses one DER certificate, refusing trailing bytes.
pub fn parse_certificate<'a>(der: &'a CertificateDer<'_>) -> Result<X509Certificate<'a>> {
    let (rest, cert) =
        X509Certificate::from_der(der.as_ref()).map_err(|e| PkiError::Der(format!("certificate: {e}")))?;
    if !rest.is_empty() {
        return Err(PkiError::Der("trailing bytes after the certificate".into()));
    }
    Ok(cert)
}

fn check_is_ca(cert: &X509Certificate<'_>) -> Result<()> {
    let bc = cert.basic_constraints().map_err(|e| PkiError::Der(e.to_string()))?;
    if !bc.is_some_and(|bc| bc.value.ca) {
        return Err(PkiError::NotCa(format!("{} lacks basicConstraints CA:TRUE", cert.subject())));
    }
    let ku = cert.key_usage().map_err(|e| PkiError::Der(e.to_string()))?;
    if let Some(ku) = ku
        && !ku.value.key_cert_sign()
    {
        return Err(PkiError::NotCa(format!("{} lacks the keyCertSign key usage", cert.subject())));
    }
    Ok(())
}

/// The URI subject alternative names of a certificate, in order.
pub fn uri_sans<'a>(cert: &'a X509Certificate<'_>) -> Vec<&'a str> {
    use x509_parser::extensions::GeneralName;
    let Ok(Some(san)) = cert.subject_alternative_name() else { return Vec::new() };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(*u),
            _ => None,
        })
        .collect()
}

/// Parses a DER SubjectPublicKeyInfo for signing.
pub fn parse_spki(spki_der: &[u8]) -> Result<rcgen::SubjectPublicKeyInfo> {
    rcgen::SubjectPublicKeyInfo::from_der(spki_der).map_err(|e| PkiError::UnsupportedKey(format!("public key: {e}")))
}

pub(crate) fn subject_key_id(cert: &X509Certificate<'_>) -> Option<Vec<u8>> {
    use x509_parser::extensions::ParsedExtension;
    cert.extensions().iter().find_map(|e| match e.parsed_extension() {
        ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
        _ => None,
    })
}

pub(crate) fn authority_key_id(cert: &X509Certificate<'_>) -> Option<Vec<u8>> {
    use x509_parser::extensions::ParsedExtension;
    cert.extensions().iter().find_map(|e| match e.parsed_extension() {
        ParsedExtension::AuthorityKeyIdentifier(k) => k.key_identifier.as_ref().map(|k| k.0.to_vec()),
        _ => None,
    })
}
