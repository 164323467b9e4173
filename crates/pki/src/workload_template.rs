//! Workload certificates (what CreateCertificate signs) laid out from a template made once per
//! authority. Of a workload certificate's TBSCertificate only the serial, the validity, the public
//! key, the URI SAN and the key identifier vary; the rest (version, signature algorithm, issuer,
//! empty subject, AKI, KeyUsage, EKU, BasicConstraints) is copied from a prototype that rcgen
//! signed when the authority was loaded. The output is byte for byte what rcgen writes for the same
//! fields (the authority does not load otherwise, and a test holds it to that), at a fraction of
//! the work: no parameter structures, no algorithm search per key, a handful of allocations.

use super::error::{PkiError, Result};
use der::asn1::{GeneralizedTime, ObjectIdentifier, UtcTime};
use der::{Decode, Encode, Header, Length, Tag, TagNumber};
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;

const OID_SUBJECT_ALT_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.17");
const OID_SUBJECT_KEY_ID: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.14");
const OID_AUTHORITY_KEY_ID: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.35");
const OID_KEY_USAGE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.15");
const OID_EXT_KEY_USAGE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.37");
const OID_BASIC_CONSTRAINTS: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.19");

/// The public-key algorithms a workload key may have, each as the AlgorithmIdentifier a
/// certificate carries for it (rcgen's canonical form; a CSR with another encoding is refused).
const KEY_ALGORITHMS: [&[u8]; 4] = [
    // rsaEncryption, NULL parameters
    &[0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00],
    // id-ecPublicKey, prime256v1
    &[
        0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d,
        0x03, 0x01, 0x07,
    ],
    // id-ecPublicKey, secp384r1
    &[0x30, 0x10, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22],
    // id-Ed25519
    &[0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70],
];

/// The fields every workload certificate of one authority shares, as DER.
#[derive(Clone, Debug)]
pub(crate) struct WorkloadTemplate {
    /// The AlgorithmIdentifier of the authority's signatures (in the TBS and after it).
    signature_algorithm: Vec<u8>,
    /// The issuer Name: the authority's subject.
    issuer: Vec<u8>,
    /// The AuthorityKeyIdentifier extension.
    authority_key_id: Vec<u8>,
    /// The KeyUsage and ExtendedKeyUsage extensions, adjacent.
    usages: Vec<u8>,
    /// The BasicConstraints extension (CA:FALSE).
    basic_constraints: Vec<u8>,
}

/// The variable fields of one workload certificate.
#[derive(Clone, Copy)]
pub(crate) struct WorkloadFields<'a> {
    /// Serial number: 20 bytes, positive, first byte non-zero ([`super::serial::random_serial`]).
    pub serial: &'a [u8; super::serial::SERIAL_BYTES],
    /// Start of validity (whole seconds).
    pub not_before: OffsetDateTime,
    /// End of validity (whole seconds).
    pub not_after: OffsetDateTime,
    /// The certified key, as it will be written ([`canonical_spki`]).
    pub spki: &'a [u8],
    /// The SPIFFE ID, the only SAN.
    pub identity: &'a str,
}

/// A template field that is not laid out as expected.
fn layout(what: &str) -> PkiError {
    PkiError::Signing(format!("the workload certificate template: unexpected {what}"))
}

fn der_err(e: der::Error) -> PkiError {
    PkiError::Signing(format!("encoding a workload certificate: {e}"))
}

impl WorkloadTemplate {
    /// Takes the shared fields from `prototype`, a workload certificate rcgen signed with the
    /// authority for `fields` and `key_id`. Its extensions must be exactly AKI, SAN, KeyUsage, EKU,
    /// SKI and BasicConstraints in rcgen's order, which is what lets the variable ones be written
    /// between the constant ones; and the template must write the prototype's TBSCertificate
    /// again from `fields`, byte for byte, or it is refused (so a change in how rcgen lays out a
    /// field fails when an authority loads, never in a certificate).
    pub(crate) fn from_prototype(prototype: &[u8], fields: &WorkloadFields<'_>, key_id: &[u8]) -> Result<Self> {
        let cert: Vec<der::asn1::AnyRef<'_>> = Vec::from_der(prototype).map_err(der_err)?;
        let tbs = cert.first().ok_or_else(|| layout("certificate"))?;
        let tbs = tbs.to_der().map_err(der_err)?;
        let parts: Vec<der::asn1::AnyRef<'_>> = Vec::from_der(&tbs).map_err(der_err)?;
        let [_version, _serial, algorithm, issuer, _validity, _subject, _spki, extensions] = parts.as_slice() else {
            return Err(layout("TBSCertificate"));
        };
        let extensions: Vec<der::asn1::AnyRef<'_>> = Vec::from_der(extensions.value()).map_err(der_err)?;
        let extensions = extensions
            .iter()
            .map(|ext| {
                let der = ext.to_der().map_err(der_err)?;
                let parts: Vec<der::asn1::AnyRef<'_>> = Vec::from_der(&der).map_err(der_err)?;
                let oid = parts
                    .first()
                    .and_then(|oid| oid.decode_as::<ObjectIdentifier>().ok())
                    .ok_or_else(|| layout("extension"))?;
                Ok((oid, der))
            })
            .collect::<Result<Vec<_>>>()?;
        let expected = [
            OID_AUTHORITY_KEY_ID,
            OID_SUBJECT_ALT_NAME,
            OID_KEY_USAGE,
            OID_EXT_KEY_USAGE,
            OID_SUBJECT_KEY_ID,
            OID_BASIC_CONSTRAINTS,
        ];
        if extensions.len() != expected.len() || extensions.iter().zip(expected).any(|((oid, _), want)| *oid != want) {
            return Err(layout("extensions"));
        }
        let mut ders = extensions.into_iter().map(|(_, der)| der);
        let mut next = || ders.next().ok_or_else(|| layout("extensions"));
        let authority_key_id = next()?;
        let _san = next()?;
        let mut usages = next()?;
        usages.extend(next()?);
        let _ski = next()?;
        let basic_constraints = next()?;
        let template = Self {
            signature_algorithm: algorithm.to_der().map_err(der_err)?,
            issuer: issuer.to_der().map_err(der_err)?,
            authority_key_id,
            usages,
            basic_constraints,
        };
        if template.tbs(fields, key_id)? != tbs {
            return Err(PkiError::SelfCheck("the workload certificate template does not rebuild its prototype".into()));
        }
        Ok(template)
    }

    /// The TBSCertificate for `fields`, with `key_id` as its SubjectKeyIdentifier.
    pub(crate) fn tbs(&self, fields: &WorkloadFields<'_>, key_id: &[u8]) -> Result<Vec<u8>> {
        if !fields.identity.is_ascii() {
            return Err(PkiError::Invalid("the identity is not an ASCII URI".into()));
        }
        // [0] EXPLICIT INTEGER 2: three bytes inside a two-byte header.
        const VERSION_3: [u8; 5] = [0xa0, 0x03, 0x02, 0x01, 0x02];
        const EMPTY_NAME: [u8; 2] = [0x30, 0x00];
        let serial = Tlv::new(Tag::Integer, fields.serial.len())?;
        let validity = Validity::new(fields.not_before, fields.not_after)?;
        let uri = Tlv::new(Tag::ContextSpecific { constructed: false, number: TagNumber(6) }, fields.identity.len())?;
        let names = Tlv::new(Tag::Sequence, uri.total)?;
        let san_value = Tlv::new(Tag::OctetString, names.total)?;
        let san_oid = OID_SUBJECT_ALT_NAME.encoded_len().and_then(usize::try_from).map_err(der_err)?;
        // extnID, critical TRUE (the subject is empty: RFC 5280 4.1.2.6), extnValue.
        let san = Tlv::new(Tag::Sequence, sum(&[san_oid, 3, san_value.total])?)?;
        let ski_inner = Tlv::new(Tag::OctetString, key_id.len())?;
        let ski_value = Tlv::new(Tag::OctetString, ski_inner.total)?;
        let ski_oid = OID_SUBJECT_KEY_ID.encoded_len().and_then(usize::try_from).map_err(der_err)?;
        let ski = Tlv::new(Tag::Sequence, sum(&[ski_oid, ski_value.total])?)?;
        let extension_list = Tlv::new(
            Tag::Sequence,
            sum(&[self.authority_key_id.len(), san.total, self.usages.len(), ski.total, self.basic_constraints.len()])?,
        )?;
        let extensions =
            Tlv::new(Tag::ContextSpecific { constructed: true, number: TagNumber(3) }, extension_list.total)?;
        let tbs = Tlv::new(
            Tag::Sequence,
            sum(&[
                VERSION_3.len(),
                serial.total,
                self.signature_algorithm.len(),
                self.issuer.len(),
                validity.sequence.total,
                EMPTY_NAME.len(),
                fields.spki.len(),
                extensions.total,
            ])?,
        )?;

        let mut out = Vec::with_capacity(tbs.total);
        tbs.header(&mut out)?;
        out.extend_from_slice(&VERSION_3);
        serial.header(&mut out)?;
        out.extend_from_slice(fields.serial);
        out.extend_from_slice(&self.signature_algorithm);
        out.extend_from_slice(&self.issuer);
        validity.write(&mut out)?;
        out.extend_from_slice(&EMPTY_NAME);
        out.extend_from_slice(fields.spki);
        extensions.header(&mut out)?;
        extension_list.header(&mut out)?;
        out.extend_from_slice(&self.authority_key_id);
        san.header(&mut out)?;
        OID_SUBJECT_ALT_NAME.encode_to_vec(&mut out).map_err(der_err)?;
        true.encode_to_vec(&mut out).map_err(der_err)?;
        san_value.header(&mut out)?;
        names.header(&mut out)?;
        uri.header(&mut out)?;
        out.extend_from_slice(fields.identity.as_bytes());
        out.extend_from_slice(&self.usages);
        ski.header(&mut out)?;
        OID_SUBJECT_KEY_ID.encode_to_vec(&mut out).map_err(der_err)?;
        ski_value.header(&mut out)?;
        ski_inner.header(&mut out)?;
        out.extend_from_slice(key_id);
        out.extend_from_slice(&self.basic_constraints);
        if out.len() != tbs.total {
            return Err(layout("length"));
        }
        Ok(out)
    }

    /// The Certificate: `tbs`, the signature algorithm and `signature`.
    pub(crate) fn certificate(&self, tbs: &[u8], signature: &[u8]) -> Result<CertificateDer<'static>> {
        // A BIT STRING's content starts with its count of unused bits: none.
        let bits = Tlv::new(Tag::BitString, sum(&[1, signature.len()])?)?;
        let cert = Tlv::new(Tag::Sequence, sum(&[tbs.len(), self.signature_algorithm.len(), bits.total])?)?;
        let mut out = Vec::with_capacity(cert.total);
        cert.header(&mut out)?;
        out.extend_from_slice(tbs);
        out.extend_from_slice(&self.signature_algorithm);
        bits.header(&mut out)?;
        out.push(0);
        out.extend_from_slice(signature);
        Ok(CertificateDer::from(out))
    }
}

/// `spki_der` as a certificate carries it: the algorithm in its canonical encoding (one of the four
/// a workload key may have) and the key's bits, read from the CSR's DER. A key of any other algorithm, or
/// with its parameters encoded another way, is refused, as rcgen refuses it.
pub(crate) fn canonical_spki(spki_der: &[u8]) -> Result<Vec<u8>> {
    let unsupported = |why: &str| PkiError::UnsupportedKey(format!("public key: {why}"));
    let parts: Vec<der::asn1::AnyRef<'_>> =
        Vec::from_der(spki_der).map_err(|e: der::Error| unsupported(&e.to_string()))?;
    let [algorithm, key] = parts.as_slice() else { return Err(unsupported("not a SubjectPublicKeyInfo")) };
    let algorithm = algorithm.to_der().map_err(|e| unsupported(&e.to_string()))?;
    let algorithm = KEY_ALGORITHMS
        .iter()
        .find(|known| **known == algorithm.as_slice())
        .ok_or_else(|| unsupported("an algorithm or encoding that is not accepted"))?;
    let key = key.decode_as::<der::asn1::BitStringRef<'_>>().map_err(|e| unsupported(&e.to_string()))?;
    let key = key.as_bytes().ok_or_else(|| unsupported("a key with unused bits"))?;
    let bits = Tlv::new(Tag::BitString, sum(&[1, key.len()])?)?;
    let spki = Tlv::new(Tag::Sequence, sum(&[algorithm.len(), bits.total])?)?;
    let mut out = Vec::with_capacity(spki.total);
    spki.header(&mut out)?;
    out.extend_from_slice(algorithm);
    bits.header(&mut out)?;
    out.push(0);
    out.extend_from_slice(key);
    Ok(out)
}

/// A TLV whose content is written piece by piece: its header, and the bytes it takes in all.
struct Tlv {
    header: Header,
    total: usize,
}

impl Tlv {
    fn new(tag: Tag, content_len: usize) -> Result<Self> {
        let length = Length::try_from(content_len).map_err(der_err)?;
        let header = Header::new(tag, length);
        let header_len = header.encoded_len().and_then(usize::try_from).map_err(der_err)?;
        Ok(Self { header, total: sum(&[header_len, content_len])? })
    }

    fn header(&self, out: &mut Vec<u8>) -> Result<()> {
        self.header.encode_to_vec(out).map(|_| ()).map_err(der_err)
    }
}

/// Validity: UTCTime through 2049, GeneralizedTime from 2050 (RFC 5280 4.1.2.5).
struct Validity {
    times: [Time; 2],
    sequence: Tlv,
}

enum Time {
    Utc(UtcTime),
    Generalized(GeneralizedTime),
}

impl Time {
    fn new(t: OffsetDateTime) -> Result<Self> {
        let since_epoch = u64::try_from(t.unix_timestamp())
            .map_err(|_| PkiError::TimeOutOfRange("a workload certificate's validity"))?;
        let since_epoch = std::time::Duration::from_secs(since_epoch);
        // The year in UTC, the zone X.509 times are written in.
        Ok(if (1950..2050).contains(&t.to_offset(time::UtcOffset::UTC).year()) {
            Self::Utc(UtcTime::from_unix_duration(since_epoch).map_err(der_err)?)
        } else {
            Self::Generalized(GeneralizedTime::from_unix_duration(since_epoch).map_err(der_err)?)
        })
    }

    fn encoded_len(&self) -> Result<usize> {
        match self {
            Self::Utc(t) => t.encoded_len(),
            Self::Generalized(t) => t.encoded_len(),
        }
        .and_then(usize::try_from)
        .map_err(der_err)
    }

    fn write(&self, out: &mut Vec<u8>) -> Result<()> {
        match self {
            Self::Utc(t) => t.encode_to_vec(out),
            Self::Generalized(t) => t.encode_to_vec(out),
        }
        .map(|_| ())
        .map_err(der_err)
    }
}

impl Validity {
    fn new(not_before: OffsetDateTime, not_after: OffsetDateTime) -> Result<Self> {
        let times = [Time::new(not_before)?, Time::new(not_after)?];
        let [a, b] = &times;
        let sequence = Tlv::new(Tag::Sequence, sum(&[a.encoded_len()?, b.encoded_len()?])?)?;
        Ok(Self { times, sequence })
    }

    fn write(&self, out: &mut Vec<u8>) -> Result<()> {
        self.sequence.header(out)?;
        self.times.iter().try_for_each(|t| t.write(out))
    }
}

fn sum(parts: &[usize]) -> Result<usize> {
    parts
        .iter()
        .try_fold(0usize, |total, part| total.checked_add(*part))
        .ok_or_else(|| PkiError::Invalid("a workload certificate too large to encode".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Authority, CaSpec, KeyAlgorithm, PrivateKey};
    use rcgen::PublicKeyData;

    fn tbs_of(cert: &[u8]) -> Vec<u8> {
        let (_, cert) = x509_parser::parse_x509_certificate(cert).unwrap();
        cert.tbs_certificate.as_ref().to_vec()
    }

    /// The template writes exactly what rcgen writes for the same fields: for every signer key
    /// type, every workload key type, both time encodings, and identities whose lengths cross the
    /// one- and two-byte DER length forms.
    #[test]
    fn writes_what_rcgen_writes_byte_for_byte() {
        let now = OffsetDateTime::now_utc();
        let root = Authority::new_root(&CaSpec::root(time::Duration::days(365 * 100)), now).unwrap();
        let workload_keys: Vec<Vec<u8>> = [KeyAlgorithm::Rsa2048, KeyAlgorithm::EcdsaP256, KeyAlgorithm::EcdsaP384]
            .into_iter()
            .map(|alg| PrivateKey::generate(alg).unwrap().spki_der())
            .chain([rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap().subject_public_key_info()])
            .collect();
        let at = |unix| OffsetDateTime::from_unix_timestamp(unix).unwrap();
        // 2026-12-03T07:00:00Z to a day later (UTCTime), and 2049-12-31T23:59:59Z to
        // 2050-01-01T00:00:00Z (UTCTime, then GeneralizedTime).
        let times = [(at(1_796_281_200), at(1_796_367_600)), (at(2_524_607_999), at(2_524_608_000))];
        let identities: Vec<String> = [0usize, 60, 100, 200, 300]
            .into_iter()
            .map(|pad| format!("spiffe://cluster.local/ns/{}/sa/default", "n".repeat(pad.max(1))))
            .collect();
        for signer in [KeyAlgorithm::EcdsaP256, KeyAlgorithm::EcdsaP384, KeyAlgorithm::Rsa2048] {
            let spec =
                CaSpec { key_algorithm: signer, ..CaSpec::intermediate("oracle", time::Duration::days(365 * 50)) };
            let authority = root.new_intermediate(&spec, now).unwrap();
            let template = authority.workload_template().unwrap();
            for spki in &workload_keys {
                for (not_before, not_after) in times {
                    for identity in &identities {
                        let (serial, _) = crate::serial::random_serial_bytes().unwrap();
                        let expected =
                            crate::profile::rcgen_workload(&authority, spki, identity, &serial, not_before, not_after)
                                .unwrap();
                        let canonical = canonical_spki(spki).unwrap();
                        assert_eq!(&canonical, spki, "{signer}: the generated keys are canonical already");
                        let fields =
                            WorkloadFields { serial: &serial, not_before, not_after, spki: &canonical, identity };
                        let key_id = crate::profile::workload_key_id(&canonical);
                        let tbs = template.tbs(&fields, &key_id).unwrap();
                        assert_eq!(
                            tbs,
                            tbs_of(&expected),
                            "{signer} signer, {} byte key, {not_after}, identity of {} bytes",
                            spki.len(),
                            identity.len()
                        );
                    }
                }
            }
        }
    }

    /// What the template signs verifies under the authority and parses as the workload profile.
    #[test]
    fn its_certificates_verify_under_the_authority() {
        let now = OffsetDateTime::now_utc();
        let root = Authority::new_root(&CaSpec::root(time::Duration::days(30)), now).unwrap();
        for signer in [KeyAlgorithm::EcdsaP256, KeyAlgorithm::Rsa2048] {
            let spec = CaSpec { key_algorithm: signer, ..CaSpec::intermediate("verify", time::Duration::days(10)) };
            let authority = root.new_intermediate(&spec, now).unwrap();
            let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
            let identity = "spiffe://cluster.local/ns/a/sa/b";
            let issued =
                crate::profile::issue_workload(&authority, &key.spki_der(), identity, time::Duration::hours(1), now)
                    .unwrap();
            let (_, cert) = x509_parser::parse_x509_certificate(&issued.der).unwrap();
            let (_, ca) = x509_parser::parse_x509_certificate(authority.certificate()).unwrap();
            cert.verify_signature(Some(ca.public_key())).unwrap();
            assert_eq!(cert.issuer().as_raw(), ca.subject().as_raw());
            assert_eq!(crate::authority::uri_sans(&cert), vec![identity]);
            assert!(crate::profile::is_workload_certificate(&cert));
            assert_eq!(cert.raw_serial_as_string().replace(':', ""), issued.serial_hex);
            assert_eq!(cert.validity().not_before.to_datetime(), issued.not_before);
            assert_eq!(cert.validity().not_after.to_datetime(), issued.not_after);
        }
    }

    #[test]
    fn refuses_keys_a_certificate_cannot_carry_as_they_are() {
        let p256 = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap().spki_der();
        let rsa = PrivateKey::generate(KeyAlgorithm::Rsa2048).unwrap().spki_der();
        // RSA without its NULL parameters: a different AlgorithmIdentifier encoding.
        let (_, parsed) =
            <x509_parser::x509::SubjectPublicKeyInfo<'_> as x509_parser::prelude::FromDer<'_, _>>::from_der(&rsa)
                .unwrap();
        let key = parsed.subject_public_key.data.to_vec();
        let mut no_null = vec![0x30, 0x0b, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
        no_null.extend(der::asn1::BitStringRef::new(0, &key).unwrap().to_der().unwrap());
        let no_null = der::asn1::AnyRef::new(Tag::Sequence, &no_null).unwrap().to_der().unwrap();
        // Ed448 (1.3.101.113), which meshroot does not accept.
        let ed448 = [0x30, 0x0a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x71, 0x03, 0x01, 0x00];
        let spki = |algorithm: &[u8], key: &[u8]| {
            let mut body = algorithm.to_vec();
            body.extend(der::asn1::BitStringRef::new(0, key).unwrap().to_der().unwrap());
            der::asn1::AnyRef::new(Tag::Sequence, &body).unwrap().to_der().unwrap()
        };
        // id-ecPublicKey on secp521r1, and id-Ed25519 with NULL parameters (RFC 8410 says absent).
        let p521 = spki(
            &[
                0x30, 0x10, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x05, 0x2b, 0x81, 0x04, 0x00,
                0x23,
            ],
            &[4; 133],
        );
        let ed25519_null = spki(&[0x30, 0x07, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x05, 0x00], &[7; 32]);
        let mut trailing = p256.clone();
        trailing.push(0);
        let mut unused_bits = p256.clone();
        let bit_string = unused_bits.len() - 66;
        unused_bits[bit_string] = 1;
        for (what, spki) in [
            ("no NULL", no_null),
            ("Ed448", ed448.to_vec()),
            ("P-521", p521),
            ("Ed25519 with NULL", ed25519_null),
            ("trailing", trailing),
            ("unused bits", unused_bits),
        ] {
            let err = canonical_spki(&spki).unwrap_err();
            assert!(matches!(err, PkiError::UnsupportedKey(_)), "{what}: {err}");
        }
        assert_eq!(canonical_spki(&p256).unwrap(), p256);
    }

    /// A prototype laid out otherwise, or one the template cannot write again from its fields, is
    /// refused: the template never drifts from what rcgen writes without the authority failing to load.
    #[test]
    fn refuses_a_prototype_it_cannot_rebuild() {
        let now = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
        let later = now + time::Duration::minutes(1);
        let root = Authority::new_root(&CaSpec::root(time::Duration::days(30)), now).unwrap();
        let spki = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap().spki_der();
        let (serial, _) = crate::serial::random_serial_bytes().unwrap();
        let identity = "spiffe://td/ns/a/sa/b";
        let fields = WorkloadFields { serial: &serial, not_before: now, not_after: later, spki: &spki, identity };
        let key_id = crate::profile::workload_key_id(&spki);
        let prototype = crate::profile::rcgen_workload(&root, &spki, identity, &serial, now, later).unwrap();
        WorkloadTemplate::from_prototype(&prototype, &fields, &key_id).unwrap();

        // A CA certificate: other extensions.
        let err = WorkloadTemplate::from_prototype(root.certificate(), &fields, &key_id).unwrap_err();
        assert!(err.to_string().contains("unexpected extensions"), "{err}");
        // The right layout, but not what these fields make: another identity, time or key id.
        let other_identity = WorkloadFields { identity: "spiffe://td/ns/a/sa/c", ..fields };
        let other_time = WorkloadFields { not_after: later + time::Duration::seconds(1), ..fields };
        for (what, fields, key_id) in [
            ("identity", &other_identity, key_id.as_slice()),
            ("time", &other_time, key_id.as_slice()),
            ("key id", &fields, &[0u8; 20][..]),
        ] {
            let err = WorkloadTemplate::from_prototype(&prototype, fields, key_id).unwrap_err();
            assert!(matches!(err, PkiError::SelfCheck(_)), "{what}: {err}");
        }
    }

    #[test]
    fn refuses_an_identity_an_ia5_string_cannot_hold() {
        let now = OffsetDateTime::now_utc();
        let root = Authority::new_root(&CaSpec::root(time::Duration::days(30)), now).unwrap();
        let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let err = crate::profile::issue_workload(
            &root,
            &key.spki_der(),
            "spiffe://td/ns/é/sa/x",
            time::Duration::hours(1),
            now,
        )
        .unwrap_err();
        assert!(err.to_string().contains("not an ASCII URI"), "{err}");
    }
}
