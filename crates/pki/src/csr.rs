//! PKCS#10 certificate signing requests: bounded parsing, signature
//! verification, key policy, and what the requester asked for.
//!
//! Nothing here decides what gets issued: a CA builds certificates from its
//! own policy and takes only the public key from the CSR.

use super::error::{PkiError, Result};
use super::keys::{PublicKeyKind, classify_spki};
use super::pem;
use super::usage::{KeyUsage, extended_from_x509};
use std::borrow::Cow;
use std::collections::BTreeSet;
use std::net::IpAddr;
use x509_parser::asn1_rs::{Oid, oid};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::cri_attributes::ParsedCriAttribute;
use x509_parser::extensions::{GeneralName, ParsedExtension, SubjectAlternativeName, X509Extension};
use x509_parser::prelude::FromDer;

/// The largest CSR PEM meshroot reads. An RSA-8192 CSR is under 3 KiB.
pub const MAX_CSR_PEM_BYTES: usize = 64 * 1024;

/// The most extensions, request attributes and subject attributes a CSR may carry, each. Real
/// requests carry a handful; a cap keeps each one's checks cheap (64 KiB holds thousands).
pub const MAX_CSR_ITEMS: usize = 64;

const OID_SAN: &[u8] = &oid!(raw 2.5.29.17);

/// The subject alternative names a CSR asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestedNames {
    /// URI SANs (SPIFFE IDs among them), as written in the CSR.
    pub uris: Vec<String>,
    /// DNS name SANs, as written in the CSR (not validated here).
    pub dns: Vec<String>,
    /// IP address SANs, IPv4 or IPv6.
    pub ips: Vec<IpAddr>,
    /// Email (rfc822Name) SANs, as written in the CSR.
    pub emails: Vec<String>,
    /// SAN entries of any other type (directory names, otherName, ...).
    pub other: usize,
}

impl RequestedNames {
    /// Whether the CSR asks for no SAN of any type.
    pub fn is_empty(&self) -> bool {
        self.uris.is_empty() && self.dns.is_empty() && self.ips.is_empty() && self.emails.is_empty() && self.other == 0
    }
}

/// One attribute of a requested subject.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubjectAttribute {
    /// The attribute type, as a dotted OID.
    pub oid: String,
    /// The value, when it is a string type.
    pub value: Option<String>,
}

/// A parsed CSR whose signature has been verified.
#[derive(Clone, Debug)]
pub struct CertificateSigningRequest {
    spki_der: Vec<u8>,
    key_kind: PublicKeyKind,
    names: RequestedNames,
    san_critical: Option<bool>,
    requests_ca: bool,
    subject: String,
    subject_der: Vec<u8>,
    common_names: Vec<String>,
    subject_attributes: Vec<SubjectAttribute>,
    san_der: Option<Vec<u8>>,
    basic_constraints_ca: Option<bool>,
    key_usage: Option<BTreeSet<KeyUsage>>,
    extended_key_usage: Option<BTreeSet<String>>,
    /// Each requested extension's OID, as encoded (without tag and length).
    extension_oids: Vec<Vec<u8>>,
}

impl CertificateSigningRequest {
    /// Parses and verifies a PEM CSR.
    pub fn from_pem(input: &[u8]) -> Result<Self> {
        let der = pem::decode_one(input, pem::CERTIFICATE_REQUEST, MAX_CSR_PEM_BYTES)?;
        Self::from_der(&der)
    }

    /// Parses and verifies a DER CSR.
    pub fn from_der(der: &[u8]) -> Result<Self> {
        if der.len() > MAX_CSR_PEM_BYTES {
            return Err(PkiError::TooLarge { size: der.len(), limit: MAX_CSR_PEM_BYTES });
        }
        let (rest, csr) =
            X509CertificationRequest::from_der(der).map_err(|e| PkiError::Der(format!("not a PKCS#10 CSR: {e}")))?;
        if !rest.is_empty() {
            return Err(PkiError::Der("trailing bytes after the CSR".into()));
        }
        let info = &csr.certification_request_info;
        let extensions = check_oids_are_canonical(&csr)?;
        let key_kind = classify_spki(&info.subject_pki)?;
        // Certificates carry the key in its one DER encoding. A key encoded any other way (RSA
        // without its NULL parameters, unused bits in the key's BIT STRING) is a bad request
        // here, not a failure to sign later.
        if super::workload_template::canonical_spki(info.subject_pki.raw)? != info.subject_pki.raw {
            return Err(PkiError::UnsupportedKey("public key: not in its canonical DER encoding".into()));
        }
        check_signature_algorithm(&csr, key_kind)?;
        csr.verify_signature().map_err(|e| PkiError::CsrSignature(e.to_string()))?;

        let mut names = RequestedNames::default();
        let mut san_critical = None;
        let mut san_der = None;
        let mut basic_constraints_ca = None;
        let mut key_usage = None;
        let mut extended_key_usage = None;
        let mut extension_oids = Vec::new();
        let mut seen = BTreeSet::new();
        if let Some(extensions) = extensions {
            for ext in extensions {
                // Compared as encoded; dotted text only for what is reported.
                if ext.oid.as_bytes() == OID_SAN {
                    // Its bytes are copied into certificates, so they must be exactly the names
                    // x509-parser read: it ignores anything after them.
                    match SubjectAlternativeName::from_der(ext.value) {
                        Ok(([], _)) => {}
                        _ => {
                            return Err(PkiError::Der(
                                "the CSR's SAN extension is not exactly one list of names".into(),
                            ));
                        }
                    }
                    san_critical = Some(ext.critical);
                    san_der = Some(ext.value.to_vec());
                }
                if !seen.insert(ext.oid.as_bytes()) {
                    return Err(PkiError::Invalid(format!("the CSR repeats extension {}", oid_text(&ext.oid))));
                }
                match ext.parsed_extension() {
                    ParsedExtension::SubjectAlternativeName(san) => {
                        for name in &san.general_names {
                            collect_name(name, &mut names)?;
                        }
                    }
                    ParsedExtension::BasicConstraints(bc) => basic_constraints_ca = Some(bc.ca),
                    ParsedExtension::KeyUsage(ku) => key_usage = Some(KeyUsage::from_x509(ku)),
                    ParsedExtension::ExtendedKeyUsage(eku) => extended_key_usage = Some(extended_from_x509(eku)),
                    ParsedExtension::ParseError { error } => {
                        return Err(PkiError::Der(format!("extension {}: {error}", oid_text(&ext.oid))));
                    }
                    _ => {}
                }
                extension_oids.push(ext.oid.as_bytes().to_vec());
            }
        }
        Ok(Self {
            spki_der: info.subject_pki.raw.to_vec(),
            key_kind,
            names,
            san_critical,
            requests_ca: basic_constraints_ca == Some(true),
            subject: info.subject.to_string(),
            subject_der: info.subject.as_raw().to_vec(),
            common_names: info
                .subject
                .iter_common_name()
                .map(|cn| {
                    cn.as_str()
                        .map(str::to_string)
                        .map_err(|_| PkiError::Invalid("a common name is not a string".into()))
                })
                .collect::<Result<_>>()?,
            subject_attributes: info
                .subject
                .iter_attributes()
                .map(|a| SubjectAttribute {
                    oid: oid_text(a.attr_type()),
                    // None for a value in a string type x509-parser does not decode: never issued.
                    value: a.as_str().map(str::to_string).ok(),
                })
                .collect(),
            san_der,
            basic_constraints_ca,
            key_usage,
            extended_key_usage,
            extension_oids,
        })
    }

    /// The requester's public key, as DER SubjectPublicKeyInfo.
    pub fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }

    /// The type and size of the requester's key, which has passed the key policy.
    pub fn key_kind(&self) -> PublicKeyKind {
        self.key_kind
    }

    /// The subject alternative names the CSR asks for.
    pub fn names(&self) -> &RequestedNames {
        &self.names
    }

    /// Whether the SAN extension was marked critical; `None` without one.
    pub fn san_critical(&self) -> Option<bool> {
        self.san_critical
    }

    /// Whether the CSR asked for `CA:TRUE`.
    pub fn requests_ca(&self) -> bool {
        self.requests_ca
    }

    /// The requested subject, in RFC 4514 form (for logs and policy).
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The requested subject exactly as encoded (DER Name).
    pub fn subject_der(&self) -> &[u8] {
        &self.subject_der
    }

    /// Whether the subject has no RDNs.
    pub fn subject_is_empty(&self) -> bool {
        // DER of an empty SEQUENCE.
        self.subject_der == [0x30, 0x00]
    }

    /// The subject's common names.
    pub fn common_names(&self) -> &[String] {
        &self.common_names
    }

    /// Every attribute of the requested subject, in order.
    pub fn subject_attributes(&self) -> &[SubjectAttribute] {
        &self.subject_attributes
    }

    /// The requested SubjectAltName extension value (DER GeneralNames).
    pub fn san_der(&self) -> Option<&[u8]> {
        self.san_der.as_deref()
    }

    /// The CA flag of a requested BasicConstraints extension.
    pub fn basic_constraints_ca(&self) -> Option<bool> {
        self.basic_constraints_ca
    }

    /// The bits of a requested KeyUsage extension.
    pub fn key_usage(&self) -> Option<&BTreeSet<KeyUsage>> {
        self.key_usage.as_ref()
    }

    /// The OIDs of a requested ExtendedKeyUsage extension.
    pub fn extended_key_usage(&self) -> Option<&BTreeSet<String>> {
        self.extended_key_usage.as_ref()
    }

    /// OIDs of every requested extension, in order, as dotted text.
    pub fn extension_oids(&self) -> Vec<String> {
        self.extension_oids.iter().map(|raw| Oid::new(Cow::Borrowed(raw)).to_id_string()).collect()
    }
}

/// Refuses a CSR with an OID that is not in canonical DER anywhere meshroot reads one: the
/// signature and key algorithms, the curve, the subject's attribute types, the request's
/// attributes, the requested extensions and extended key usages. asn1-rs reads a padded
/// subidentifier (`55 1d 80 11`) as 2.5.29.17 like the real encoding (`55 1d 11`), while
/// x509-parser and certificate verifiers match OIDs by their bytes: a CSR that means one thing to
/// one reader and another to the next is refused before anything is read from it.
/// Returns the requested extensions, which it had to find.
fn check_oids_are_canonical<'b>(csr: &'b X509CertificationRequest<'_>) -> Result<Option<&'b [X509Extension<'b>]>> {
    let info = &csr.certification_request_info;
    let check = |what: &str, oid: &Oid<'_>| {
        if !is_canonical_oid(oid.as_bytes()) {
            return Err(PkiError::Der(format!(
                "the CSR's {what} OID ({}) is not in canonical DER: a padded or unfinished subidentifier",
                hex(oid.as_bytes())
            )));
        }
        // asn1-rs decodes the first two arcs from the first byte alone, so 2.48 and above
        // (`81 00`) would read as another OID's text (3.9.0). No OID a CSR needs is there.
        if oid.as_bytes().first().is_some_and(|b| b & 0x80 != 0) {
            return Err(PkiError::Der(format!(
                "the CSR's {what} OID ({}) is under arc 2.48 or above, which meshroot does not read",
                hex(oid.as_bytes())
            )));
        }
        Ok(())
    };
    let too_many = |what: &str, count: usize| {
        if count > MAX_CSR_ITEMS {
            return Err(PkiError::Invalid(format!(
                "the CSR has {count} {what}, more than the {MAX_CSR_ITEMS} meshroot reads"
            )));
        }
        Ok(())
    };
    too_many("subject attributes", info.subject.iter_attributes().count())?;
    too_many("request attributes", info.iter_attributes().count())?;
    check("signature algorithm", &csr.signature_algorithm.algorithm)?;
    check("key algorithm", &info.subject_pki.algorithm.algorithm)?;
    if let Some(curve) = super::keys::named_curve(&info.subject_pki.algorithm) {
        check("curve", &curve)?;
    }
    for attribute in info.subject.iter_attributes() {
        check("subject attribute", attribute.attr_type())?;
    }
    for attribute in info.iter_attributes() {
        check("request attribute", &attribute.oid)?;
    }
    let extensions = requested_extensions(csr)?;
    too_many("extensions", extensions.map_or(0, <[_]>::len))?;
    for ext in extensions.unwrap_or_default() {
        check("extension", &ext.oid)?;
        if let ParsedExtension::ExtendedKeyUsage(eku) = ext.parsed_extension() {
            for usage in &eku.other {
                check("extended key usage", usage)?;
            }
        }
    }
    Ok(extensions)
}

/// Whether `content` (an OID's bytes, without tag and length) is canonical DER: not empty, no
/// subidentifier starting with a padding byte (0x80), and the last one finished.
fn is_canonical_oid(content: &[u8]) -> bool {
    let mut starts_subidentifier = true;
    for &byte in content {
        if starts_subidentifier && byte == 0x80 {
            return false;
        }
        starts_subidentifier = byte & 0x80 == 0;
    }
    !content.is_empty() && starts_subidentifier
}

/// An OID as a refusal names it: dotted text, or, for an OID of more than 32 bytes (a CSR may
/// hold one of kilobytes), its first 16 bytes in hex and its length.
pub(crate) fn oid_text(oid: &Oid<'_>) -> String {
    match oid.as_bytes() {
        long if long.len() > 32 => format!("{}… ({} bytes)", hex(long.get(..16).unwrap_or(long)), long.len()),
        _ => oid.to_id_string(),
    }
}

/// `bytes` in hex, at most 32 of them.
fn hex(bytes: &[u8]) -> String {
    let shown: Vec<String> = bytes.iter().take(32).map(|b| format!("{b:02x}")).collect();
    let more = if bytes.len() > 32 { format!(" … ({} bytes)", bytes.len()) } else { String::new() };
    format!("{}{more}", shown.join(" "))
}

fn requested_extensions<'b>(csr: &'b X509CertificationRequest<'_>) -> Result<Option<&'b [X509Extension<'b>]>> {
    let mut found = None;
    for attr in csr.certification_request_info.iter_attributes() {
        if let ParsedCriAttribute::ExtensionRequest(req) = attr.parsed_attribute() {
            if found.is_some() {
                return Err(PkiError::Invalid("the CSR has two extension requests".into()));
            }
            found = Some(req.extensions.as_slice());
        }
    }
    Ok(found)
}

fn collect_name(name: &GeneralName<'_>, names: &mut RequestedNames) -> Result<()> {
    match name {
        GeneralName::URI(u) => names.uris.push((*u).to_string()),
        GeneralName::DNSName(d) => names.dns.push((*d).to_string()),
        GeneralName::RFC822Name(e) => names.emails.push((*e).to_string()),
        GeneralName::IPAddress(bytes) => {
            let ip = match bytes.len() {
                4 => IpAddr::from(<[u8; 4]>::try_from(*bytes).unwrap_or_default()),
                16 => IpAddr::from(<[u8; 16]>::try_from(*bytes).unwrap_or_default()),
                n => return Err(PkiError::Invalid(format!("IP address SAN of {n} bytes"))),
            };
            // Go's TLS clients match ::ffff:a.b.c.d to a.b.c.d, so the form would slip past
            // every rule written for the IPv4 address.
            if let IpAddr::V6(v6) = ip
                && let Some(v4) = v6.to_ipv4_mapped()
            {
                return Err(PkiError::Invalid(format!(
                    "IP address SAN {v6} is the IPv4 address {v4} written as IPv6: ask for {v4}"
                )));
            }
            names.ips.push(ip);
        }
        _ => names.other = names.other.saturating_add(1),
    }
    Ok(())
}

const OID_SHA1_RSA: &[u8] = &oid!(raw 1.2.840.113549.1.1.5);
const OID_SHA1_RSA_OLD: &[u8] = &oid!(raw 1.3.14.3.2.29);
const OID_SHA256_RSA: &[u8] = &oid!(raw 1.2.840.113549.1.1.11);
const OID_SHA384_RSA: &[u8] = &oid!(raw 1.2.840.113549.1.1.12);
const OID_SHA512_RSA: &[u8] = &oid!(raw 1.2.840.113549.1.1.13);
const OID_RSA_PSS: &[u8] = &oid!(raw 1.2.840.113549.1.1.10);
const OID_ECDSA_SHA1: &[u8] = &oid!(raw 1.2.840.10045.4.1);
const OID_ECDSA_SHA256: &[u8] = &oid!(raw 1.2.840.10045.4.3.2);
const OID_ECDSA_SHA384: &[u8] = &oid!(raw 1.2.840.10045.4.3.3);
const OID_ED25519_SIG: &[u8] = &oid!(raw 1.3.101.112);
const OID_MD5_RSA: &[u8] = &oid!(raw 1.2.840.113549.1.1.4);

/// Accepts SHA-2 RSA (PKCS#1 v1.5 and PSS), ECDSA with SHA-256/384 and
/// Ed25519, each only with a matching key type. SHA-1 and MD5 are refused
/// even though the verifier would accept SHA-1 "for legacy use".
fn check_signature_algorithm(csr: &X509CertificationRequest<'_>, key: PublicKeyKind) -> Result<()> {
    let oid = &csr.signature_algorithm.algorithm;
    let key_matches = match oid.as_bytes() {
        OID_SHA256_RSA | OID_SHA384_RSA | OID_SHA512_RSA | OID_RSA_PSS => {
            matches!(key, PublicKeyKind::Rsa { .. })
        }
        OID_ECDSA_SHA256 | OID_ECDSA_SHA384 => {
            matches!(key, PublicKeyKind::EcdsaP256 | PublicKeyKind::EcdsaP384)
        }
        OID_ED25519_SIG => key == PublicKeyKind::Ed25519,
        OID_SHA1_RSA | OID_SHA1_RSA_OLD | OID_ECDSA_SHA1 => {
            return Err(PkiError::UnsupportedSignature("SHA-1 (use SHA-256 or stronger)".into()));
        }
        OID_MD5_RSA => return Err(PkiError::UnsupportedSignature("MD5".into())),
        _ => return Err(PkiError::UnsupportedSignature(oid_text(oid))),
    };
    if !key_matches {
        return Err(PkiError::UnsupportedSignature(format!("{} does not match a {key} key", oid_text(oid))));
    }
    Ok(())
}

/// Builds a workload CSR the way ztunnel does: empty subject and exactly one
/// critical URI SAN, signed by `key`. Used by `meshroot request` and tests.
pub fn build_workload_csr(key: &super::PrivateKey, identity: &str) -> Result<String> {
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.subject_alt_names = vec![rcgen::SanType::URI(
        identity.try_into().map_err(|_| PkiError::Invalid("the identity is not an ASCII URI".into()))?,
    )];
    Ok(params.serialize_request(key)?.pem()?)
}
