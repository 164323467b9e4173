//! Unit tests of the PKI rules, checked by parsing what is issued.

use super::*;
use crate::chain::sha256_hex;
use time::{Duration, OffsetDateTime};
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::{FromDer, X509Certificate};

// The openssl-made fixtures the whole workspace shares (tests/fixtures).
macro_rules! fixture {
    ($name:literal) => {
        include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/openssl/", $name))
    };
}

const IDENTITY: &str = "spiffe://cluster.local/ns/default/sa/default";

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

fn root() -> Authority {
    Authority::new_root(&CaSpec::root(Duration::days(3650)), now()).unwrap()
}

fn chain_under(root: &Authority, alg: KeyAlgorithm, lifetime: Duration) -> SigningChain {
    let mut spec = CaSpec::intermediate("default", lifetime);
    spec.key_algorithm = alg;
    let int = root.new_intermediate(&spec, now()).unwrap();
    let bundle = TrustBundle::new(vec![root.certificate().clone()]).unwrap();
    SigningChain::new(int, vec![], bundle).unwrap()
}

fn parse(der: &[u8]) -> X509Certificate<'_> {
    let (rest, cert) = X509Certificate::from_der(der).unwrap();
    assert!(rest.is_empty());
    cert
}

fn ski(cert: &X509Certificate<'_>) -> Vec<u8> {
    authority::subject_key_id(cert).expect("SKI")
}

fn aki(cert: &X509Certificate<'_>) -> Vec<u8> {
    authority::authority_key_id(cert).expect("AKI")
}

#[test]
fn root_is_a_self_signed_ca_with_critical_key_usage() {
    let root = root();
    let cert = parse(root.certificate());
    assert_eq!(cert.subject().as_raw(), cert.issuer().as_raw());
    let bc = cert.basic_constraints().unwrap().unwrap();
    assert!(bc.critical && bc.value.ca);
    let ku = cert.key_usage().unwrap().unwrap();
    assert!(ku.critical && ku.value.key_cert_sign() && ku.value.crl_sign() && !ku.value.digital_signature());
    assert!(root.is_self_signed());
    cert.verify_signature(None).unwrap();
    assert_eq!(root.key_kind(), PublicKeyKind::EcdsaP256);
}

#[test]
fn intermediate_has_path_len_zero_and_key_identifiers() {
    let root = root();
    let int = root.new_intermediate(&CaSpec::intermediate("m", Duration::days(365)), now()).unwrap();
    let cert = parse(int.certificate());
    let bc = cert.basic_constraints().unwrap().unwrap();
    assert!(bc.critical && bc.value.ca);
    assert_eq!(bc.value.path_len_constraint, Some(0));
    let ku = cert.key_usage().unwrap().unwrap();
    assert!(ku.critical && ku.value.key_cert_sign() && ku.value.crl_sign());
    assert_eq!(aki(&cert), ski(&parse(root.certificate())));
    assert!(!ski(&cert).is_empty());
    assert_eq!(cert.issuer().as_raw(), parse(root.certificate()).subject().as_raw());
    cert.verify_signature(Some(parse(root.certificate()).public_key())).unwrap();
    assert!(!int.is_self_signed());
}

#[test]
fn intermediate_never_outlives_its_root() {
    let root = Authority::new_root(&CaSpec::root(Duration::days(30)), now()).unwrap();
    let int = root.new_intermediate(&CaSpec::intermediate("m", Duration::days(365)), now()).unwrap();
    assert_eq!(int.not_after(), root.not_after());
}

fn check_workload_leaf(chain: &SigningChain, csr: &CertificateSigningRequest) {
    let issued_at = now();
    let ttl = Duration::hours(24);
    let issued = chain.issue_workload(csr.spki_der(), IDENTITY, ttl, issued_at).unwrap();
    let cert = parse(&issued.der);
    let int = parse(chain.authority().certificate());

    // Public key is the CSR's, bit for bit.
    assert_eq!(cert.public_key().raw, csr.spki_der());
    // Serial: positive, at least 128 bits, reported correctly.
    let serial = cert.raw_serial();
    assert!(serial[0] & 0x80 == 0 && serial.len() * 8 >= 128 + 8);
    assert_eq!(cert.raw_serial_as_string().replace(':', ""), issued.serial_hex);
    // Empty subject.
    assert_eq!(cert.subject().iter().count(), 0);
    // Exactly one SAN, the URI identity, critical.
    let san = cert.subject_alternative_name().unwrap().unwrap();
    assert!(san.critical);
    assert_eq!(san.value.general_names, vec![GeneralName::URI(IDENTITY)]);
    // KeyUsage digitalSignature + keyEncipherment only, critical.
    let ku = cert.key_usage().unwrap().unwrap();
    assert!(ku.critical);
    assert!(ku.value.digital_signature() && ku.value.key_encipherment());
    assert!(!ku.value.key_cert_sign() && !ku.value.crl_sign() && !ku.value.non_repudiation());
    // EKU serverAuth + clientAuth, nothing else.
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
    assert!(!eku.code_signing && !eku.any && eku.other.is_empty() && !eku.email_protection);
    // CA:FALSE.
    let bc = cert.basic_constraints().unwrap().unwrap();
    assert!(!bc.value.ca);
    // AKI = issuer SKI; issuer name = issuer subject; signature verifies.
    assert_eq!(aki(&cert), ski(&int));
    assert_eq!(cert.issuer().as_raw(), int.subject().as_raw());
    cert.verify_signature(Some(int.public_key())).unwrap();
    // Validity: back-dated two minutes; NotAfter = now + TTL.
    let nb = cert.validity().not_before.timestamp();
    let na = cert.validity().not_after.timestamp();
    let t = issued_at.unix_timestamp();
    assert_eq!(nb, t - 120);
    assert_eq!(na, t + ttl.whole_seconds());
    assert_eq!(issued.not_after.unix_timestamp(), na);
    // The workload mark: the key identifier derived for workloads, not the plain one.
    let spki = cert.public_key().raw;
    assert_eq!(ski(&cert), profile::workload_key_id(spki));
    assert_ne!(ski(&cert), plain_key_id(spki));
    assert!(profile::is_workload_certificate(&cert));
    // Go's crypto/x509 (pilot-agent, istiod) refuses a certificate with an OID arc of 2^31 or
    // more: "malformed extension OID field".
    for ext in cert.extensions() {
        assert!(ext.oid.iter().is_some_and(|mut arcs| arcs.all(|arc| arc < 1 << 31)), "{} is not for Go", ext.oid);
    }
    // Only the extensions of the profile.
    for ext in cert.extensions() {
        assert!(
            matches!(
                ext.parsed_extension(),
                ParsedExtension::SubjectAlternativeName(_)
                    | ParsedExtension::KeyUsage(_)
                    | ParsedExtension::ExtendedKeyUsage(_)
                    | ParsedExtension::BasicConstraints(_)
                    | ParsedExtension::AuthorityKeyIdentifier(_)
                    | ParsedExtension::SubjectKeyIdentifier(_)
            ),
            "unexpected extension {}",
            ext.oid
        );
    }
    // And the whole chain verifies with webpki, as ztunnel would check it.
    chain.bundle().verify(&issued.der, &chain.ca_path(), now()).unwrap();
}

#[test]
fn every_csr_key_type_gets_the_workload_profile() {
    let root = root();
    let chain = chain_under(&root, KeyAlgorithm::EcdsaP256, Duration::days(365));
    for (name, pem, kind) in [
        ("rsa2048", fixture!("csr-rsa2048-sha256.pem"), PublicKeyKind::Rsa { bits: 2048 }),
        ("rsa-pss", fixture!("csr-rsa2048-pss.pem"), PublicKeyKind::Rsa { bits: 2048 }),
        ("p256", fixture!("csr-p256.pem"), PublicKeyKind::EcdsaP256),
        ("p256/sha384", fixture!("csr-p256-sha384.pem"), PublicKeyKind::EcdsaP256),
        ("p384", fixture!("csr-p384.pem"), PublicKeyKind::EcdsaP384),
        ("ed25519", fixture!("csr-ed25519.pem"), PublicKeyKind::Ed25519),
        ("ztunnel", fixture!("csr-p256-empty-subject.pem"), PublicKeyKind::EcdsaP256),
    ] {
        let csr = CertificateSigningRequest::from_pem(pem.as_bytes()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(csr.key_kind(), kind, "{name}");
        assert_eq!(csr.names().uris, vec![IDENTITY.to_string()], "{name}");
        assert_eq!(csr.san_critical(), Some(true), "{name}");
        check_workload_leaf(&chain, &csr);
    }
}

#[test]
fn every_signer_key_type_signs_verifiable_leaves() {
    let csr = CertificateSigningRequest::from_pem(fixture!("csr-p256.pem").as_bytes()).unwrap();
    let root = root();
    for alg in [KeyAlgorithm::EcdsaP256, KeyAlgorithm::EcdsaP384, KeyAlgorithm::Rsa2048] {
        let chain = chain_under(&root, alg, Duration::days(30));
        assert_eq!(chain.authority().key_kind().to_string(), alg.name());
        check_workload_leaf(&chain, &csr);
    }
}

#[test]
fn openssl_rsa4096_root_works_as_signer_in_pkcs1_and_pkcs8() {
    let csr = CertificateSigningRequest::from_pem(fixture!("csr-rsa2048-sha256.pem").as_bytes()).unwrap();
    for key in [fixture!("rsa4096-root-key.pkcs8.pem"), fixture!("rsa4096-root-key.pkcs1.pem")] {
        let root = Authority::from_pem(fixture!("rsa4096-root-cert.pem").as_bytes(), key.as_bytes()).unwrap();
        assert_eq!(root.key_kind(), PublicKeyKind::Rsa { bits: 4096 });
        assert!(root.is_self_signed());
        // Signing directly with the root, and through an intermediate under it.
        let bundle = TrustBundle::new(vec![root.certificate().clone()]).unwrap();
        let int = root.new_intermediate(&CaSpec::intermediate("m", Duration::days(30)), now()).unwrap();
        let direct = SigningChain::new(root, vec![], bundle.clone()).unwrap();
        check_workload_leaf(&direct, &csr);
        let via_int = SigningChain::new(int, vec![], bundle).unwrap();
        check_workload_leaf(&via_int, &csr);
        // The key round-trips in the encoding it was loaded in.
        let reloaded = PrivateKey::from_pem(direct.authority().key().to_pem().as_bytes()).unwrap();
        assert_eq!(reloaded.spki_der(), direct.authority().key().spki_der());
        assert_eq!(direct.authority().key().to_pem().lines().next(), key.lines().next());
    }
}

#[test]
fn openssl_sec1_ec_roots_work_as_signers() {
    let csr = CertificateSigningRequest::from_pem(fixture!("csr-p384.pem").as_bytes()).unwrap();
    for (cert, key, kind) in [
        (
            fixture!("ec-prime256v1-root-cert.pem"),
            fixture!("ec-prime256v1-root-key.sec1.pem"),
            PublicKeyKind::EcdsaP256,
        ),
        (fixture!("ec-secp384r1-root-cert.pem"), fixture!("ec-secp384r1-root-key.sec1.pem"), PublicKeyKind::EcdsaP384),
    ] {
        let root = Authority::from_pem(cert.as_bytes(), key.as_bytes()).unwrap();
        assert_eq!(root.key_kind(), kind);
        let bundle = TrustBundle::new(vec![root.certificate().clone()]).unwrap();
        check_workload_leaf(&SigningChain::new(root, vec![], bundle).unwrap(), &csr);
    }
}

#[test]
fn refuses_mismatched_keys_and_non_ca_certificates() {
    let err =
        Authority::from_pem(fixture!("rsa4096-root-cert.pem").as_bytes(), fixture!("other-p256-key.pem").as_bytes())
            .unwrap_err();
    assert!(matches!(err, PkiError::KeyMismatch), "{err}");
    let err = Authority::from_pem(
        fixture!("not-ca-cert.pem").as_bytes(),
        fixture!("ec-prime256v1-root-key.sec1.pem").as_bytes(),
    )
    .unwrap_err();
    assert!(matches!(err, PkiError::NotCa(_)), "{err}");
    let two = format!("{}{}", fixture!("rsa4096-root-cert.pem"), fixture!("ec-prime256v1-root-cert.pem"));
    let err = Authority::from_pem(two.as_bytes(), fixture!("rsa4096-root-key.pkcs8.pem").as_bytes()).unwrap_err();
    assert!(matches!(err, PkiError::PemCount(2)), "{err}");
}

#[test]
fn csr_refusals_name_the_problem() {
    let cases: [(&str, &str, &str); 5] = [
        ("sha1", fixture!("csr-rsa2048-sha1.pem"), "SHA-1"),
        ("rsa1024", fixture!("csr-rsa1024.pem"), "1024 bits"),
        ("dsa", fixture!("csr-dsa.pem"), "DSA"),
        ("p521", fixture!("csr-p521.pem"), "P-521"),
        ("key instead of csr", fixture!("k-p256.pem"), "expected PEM label"),
    ];
    for (name, pem, expect) in cases {
        let err = CertificateSigningRequest::from_pem(pem.as_bytes()).unwrap_err().to_string();
        assert!(err.contains(expect), "{name}: {err}");
    }
}

/// OIDs are compared as encoded; the ones refused are still named as dotted text. Each case
/// rewrites one OID of an openssl P-256 CSR (the checks run before its signature is verified).
#[test]
fn csr_refusals_name_the_oids_they_do_not_accept() {
    let der = pem::decode_one(fixture!("csr-p256.pem").as_bytes(), pem::CERTIFICATE_REQUEST, 1 << 16).unwrap().to_vec();
    let rewritten = |from: &[u8], to: &[u8]| {
        let at: Vec<_> = der.windows(from.len()).enumerate().filter(|(_, w)| *w == from).map(|(i, _)| i).collect();
        assert_eq!(at.len(), 1, "{from:02x?} occurs once");
        let mut out = der.clone();
        out[at[0]..at[0] + from.len()].copy_from_slice(to);
        out
    };
    let ec_key = [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
    let p256 = [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    let ecdsa_sha256 = [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];
    let cases = [
        (
            "key algorithm",
            rewritten(&ec_key, &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x02]),
            "key algorithm 1.2.840.10045.2.2",
        ),
        ("curve", rewritten(&p256, &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x01]), "EC curve 1.2.840.10045.3.1.1"),
        (
            "signature",
            rewritten(&ecdsa_sha256, &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04]),
            "1.2.840.10045.4.3.4",
        ),
        // The curve's OID turned into an OCTET STRING of the same bytes: no named curve.
        (
            "no curve",
            rewritten(&[&[0x06, 0x08][..], &p256].concat(), &[&[0x04, 0x08][..], &p256].concat()),
            "EC key without a named curve",
        ),
    ];
    for (name, der, expect) in cases {
        let err = CertificateSigningRequest::from_der(&der).unwrap_err().to_string();
        assert!(err.contains(expect), "{name}: {err}");
    }
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    let twice = rcgen::CustomExtension::from_oid_content(&[1, 2, 3, 4], vec![0x05, 0x00]);
    params.custom_extensions = vec![twice.clone(), twice];
    let err = CertificateSigningRequest::from_der(params.serialize_request(&key).unwrap().der()).unwrap_err();
    assert!(err.to_string().contains("the CSR repeats extension 1.2.3.4"), "{err}");
    let mut params = rcgen::CertificateParams::default();
    params.custom_extensions = vec![rcgen::CustomExtension::from_oid_content(&[1, 2, 3, 4], vec![0x05, 0x00])];
    let once = CertificateSigningRequest::from_der(params.serialize_request(&key).unwrap().der()).unwrap();
    assert_eq!(once.extension_oids(), ["1.2.3.4"]);
}

/// An OID in non-canonical DER reads as another's dotted text (`55 1d 80 11` as 2.5.29.17, the
/// SAN's): refused wherever the CSR has one, before its signature is even checked. Each case
/// patches one byte of an rcgen CSR whose OID has an arc of two bytes, the first `81`.
#[test]
fn csrs_with_padded_or_unfinished_oids_are_refused() {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let patched = |params: rcgen::CertificateParams, from: &[u8], to: &[u8]| {
        let mut der = params.serialize_request(&key).unwrap().der().to_vec();
        let at = der.windows(from.len()).position(|w| w == from).expect("the OID is in the CSR");
        der[at..at + to.len()].copy_from_slice(to);
        der
    };
    let mut san = rcgen::CertificateParams::default();
    san.custom_extensions =
        vec![rcgen::CustomExtension::from_oid_content(&[2, 5, 29, 145], vec![0x30, 0x03, 0x86, 0x01, b'x'])];
    let mut subject = rcgen::CertificateParams::default();
    subject.distinguished_name.push(rcgen::DnType::CustomDnType(vec![2, 5, 4, 131]), "x");
    let mut eku = rcgen::CertificateParams::default();
    eku.custom_extensions = vec![rcgen::CustomExtension::from_oid_content(
        &[2, 5, 29, 37],
        // SEQUENCE { 1.3.6.1.5.5.7.3.129 }, to be made serverAuth's dotted text.
        vec![0x30, 0x0b, 0x06, 0x09, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x81, 0x01],
    )];
    let cases = [
        (
            "padded SAN",
            patched(san.clone(), &[0x55, 0x1d, 0x81, 0x11], &[0x55, 0x1d, 0x80]),
            "extension OID (55 1d 80 11)",
        ),
        (
            "padded CN",
            patched(subject, &[0x55, 0x04, 0x81, 0x03], &[0x55, 0x04, 0x80]),
            "subject attribute OID (55 04 80 03)",
        ),
        (
            "padded serverAuth",
            patched(eku, &[0x03, 0x81, 0x01], &[0x03, 0x80]),
            "extended key usage OID (2b 06 01 05 05 07 03 80 01)",
        ),
    ];
    for (name, der, expect) in cases {
        let err = CertificateSigningRequest::from_der(&der).unwrap_err().to_string();
        assert!(err.contains(expect) && err.contains("not in canonical DER"), "{name}: {err}");
    }
    // Under arc 2.48 or above, which asn1-rs would print as another OID (2.999.1 as 3...).
    let mut high = rcgen::CertificateParams::default();
    high.custom_extensions = vec![rcgen::CustomExtension::from_oid_content(&[2, 999, 1], vec![0x05, 0x00])];
    let err = CertificateSigningRequest::from_der(high.serialize_request(&key).unwrap().der()).unwrap_err();
    assert!(err.to_string().contains("is under arc 2.48 or above"), "{err}");
    // A SAN with a byte after its names: the names are copied into certificates, so refused.
    let mut trailing = rcgen::CertificateParams::default();
    trailing.custom_extensions =
        vec![rcgen::CustomExtension::from_oid_content(&[2, 5, 29, 17], vec![0x30, 0x03, 0x86, 0x01, b'x', 0x00])];
    let err = CertificateSigningRequest::from_der(trailing.serialize_request(&key).unwrap().der()).unwrap_err();
    assert!(err.to_string().contains("SAN extension is not exactly one list of names"), "{err}");
    // A refusal names a long OID by its first bytes and length, not all of it.
    let arcs: Vec<u64> = [1, 2].into_iter().chain(std::iter::repeat_n(1_000_000, 2000)).collect();
    let twice = rcgen::CustomExtension::from_oid_content(&arcs, vec![0x05, 0x00]);
    let mut long = rcgen::CertificateParams::default();
    long.custom_extensions = vec![twice.clone(), twice];
    let err = CertificateSigningRequest::from_der(long.serialize_request(&key).unwrap().der()).unwrap_err().to_string();
    assert!(err.contains("the CSR repeats extension 2a ") && err.contains("(6001 bytes)") && err.len() < 200, "{err}");
    // So does what the policy reports of a subject attribute's type.
    let mut subject = rcgen::CertificateParams::default();
    subject.distinguished_name = rcgen::DistinguishedName::new();
    subject.distinguished_name.push(rcgen::DnType::CustomDnType(arcs.clone()), "x");
    let csr = CertificateSigningRequest::from_der(subject.serialize_request(&key).unwrap().der()).unwrap();
    let oid = &csr.subject_attributes()[0].oid;
    assert!(oid.starts_with("2a ") && oid.ends_with("(6001 bytes)") && oid.len() < 100, "{oid}");
    // The last subidentifier left unfinished: refused, by whichever reader meets it first.
    let unfinished = patched(san, &[0x55, 0x1d, 0x81, 0x11], &[0x55, 0x1d, 0x81, 0x91]);
    assert!(CertificateSigningRequest::from_der(&unfinished).is_err());
}

#[test]
fn csr_with_a_tampered_body_or_signature_is_refused() {
    let der = pem::decode_one(fixture!("csr-p256.pem").as_bytes(), pem::CERTIFICATE_REQUEST, 10_000).unwrap();
    // Change one byte of the SAN URI ("default" -> "defaulu").
    let at = der.windows(7).rposition(|w| w == b"default").unwrap() + 6;
    let mut tampered = der.to_vec();
    tampered[at] ^= 0x01;
    let err = CertificateSigningRequest::from_der(&tampered).unwrap_err();
    assert!(matches!(err, PkiError::CsrSignature(_)), "{err}");
    // Change the last byte of the signature.
    let mut tampered = der.to_vec();
    let last = tampered.len() - 1;
    tampered[last] ^= 0x01;
    assert!(CertificateSigningRequest::from_der(&tampered).is_err());
    // Truncated and trailing garbage.
    assert!(matches!(CertificateSigningRequest::from_der(&der[..der.len() - 10]), Err(PkiError::Der(_))));
    let mut trailing = der.to_vec();
    trailing.push(0);
    assert!(matches!(CertificateSigningRequest::from_der(&trailing), Err(PkiError::Der(_))));
    assert!(matches!(CertificateSigningRequest::from_der(b"\x30\x03\x02\x01\x00"), Err(PkiError::Der(_))));
}

#[test]
fn csr_size_limit_is_enforced() {
    let big = "A".repeat(csr::MAX_CSR_PEM_BYTES + 1);
    let err = CertificateSigningRequest::from_pem(big.as_bytes()).unwrap_err();
    assert!(matches!(err, PkiError::TooLarge { .. }));
}

#[test]
fn csr_reports_what_it_asks_for() {
    let csr = CertificateSigningRequest::from_pem(fixture!("csr-p256-wants-ca.pem").as_bytes()).unwrap();
    assert!(csr.requests_ca());
    assert_eq!(csr.names().dns, vec!["evil.example".to_string()]);
    assert_eq!(csr.san_critical(), Some(false));
    assert!(csr.subject().contains("evil"));
    assert!(csr.extension_oids().contains(&"2.5.29.37".to_string()));
    let old_ztunnel = CertificateSigningRequest::from_pem(fixture!("csr-p256-noncritical-san.pem").as_bytes()).unwrap();
    assert_eq!(old_ztunnel.san_critical(), Some(false));
    assert!(old_ztunnel.subject().is_empty());
}

#[test]
fn a_csr_asking_to_be_a_ca_still_gets_only_the_workload_profile() {
    let root = root();
    let chain = chain_under(&root, KeyAlgorithm::EcdsaP256, Duration::days(30));
    let csr = CertificateSigningRequest::from_pem(fixture!("csr-p256-wants-ca.pem").as_bytes()).unwrap();
    // check_workload_leaf asserts CA:FALSE, the fixed KU/EKU and the single SAN.
    check_workload_leaf(&chain, &csr);
}

#[test]
fn leaf_not_after_is_clamped_to_the_signer() {
    let root = root();
    let chain = chain_under(&root, KeyAlgorithm::EcdsaP256, Duration::hours(1));
    let csr = CertificateSigningRequest::from_pem(fixture!("csr-p256.pem").as_bytes()).unwrap();
    let issued = chain.issue_workload(csr.spki_der(), IDENTITY, Duration::hours(24), now()).unwrap();
    assert_eq!(issued.not_after, chain.authority().not_after());
    assert_eq!(parse(&issued.der).validity().not_after.timestamp(), chain.authority().not_after().unix_timestamp());
    // A TTL that overflows the calendar is clamped too, not an error.
    let issued = chain.issue_workload(csr.spki_der(), IDENTITY, Duration::MAX, now()).unwrap();
    assert_eq!(issued.not_after, chain.authority().not_after());
}

#[test]
fn an_expired_signer_refuses_to_sign() {
    let long_ago = now() - Duration::days(10);
    let root = Authority::new_root(&CaSpec::root(Duration::days(1)), long_ago).unwrap();
    assert!(matches!(root.check_valid_at(now()), Err(PkiError::Expired { .. })));
    let bundle = TrustBundle::new(vec![root.certificate().clone()]).unwrap();
    assert!(matches!(SigningChain::new(root, vec![], bundle), Err(PkiError::Expired { .. })));
}

#[test]
fn a_chain_that_does_not_reach_the_bundle_is_refused() {
    let root = root();
    let other = Authority::new_root(&CaSpec::root(Duration::days(30)), now()).unwrap();
    let int = root.new_intermediate(&CaSpec::intermediate("m", Duration::days(30)), now()).unwrap();
    let wrong = TrustBundle::new(vec![other.certificate().clone()]).unwrap();
    assert!(matches!(SigningChain::new(int, vec![], wrong), Err(PkiError::SelfCheck(_))));
}

#[test]
fn response_chain_has_one_certificate_per_element_then_the_bundle() {
    let root = root();
    let next_root = Authority::new_root(&CaSpec::root(Duration::days(30)), now()).unwrap();
    let int = root.new_intermediate(&CaSpec::intermediate("m", Duration::days(30)), now()).unwrap();
    let bundle = TrustBundle::new(vec![root.certificate().clone(), next_root.certificate().clone()]).unwrap();
    assert_eq!(bundle.fingerprints(), vec![sha256_hex(root.certificate()), sha256_hex(next_root.certificate())]);
    let int_pem = int.certificate_pem().to_string();
    // A chain file that repeats the root (Istio's cert-chain.pem layout) does not repeat it in responses.
    let chain = SigningChain::new(int, vec![root.certificate().clone()], bundle.clone()).unwrap();
    let response = chain.response_chain("LEAF\n".into());
    assert_eq!(response.len(), 3);
    assert_eq!(response[1], int_pem);
    assert_eq!(response[2], bundle.pem());
    assert_eq!(pem::decode_certificates(response[2].as_bytes(), 100_000).unwrap().len(), 2);
    assert!(response.iter().all(|e| e.ends_with('\n')));
    assert!(chain.intermediates().is_empty());

    // A root signing directly: [leaf, bundle].
    let root_bundle = TrustBundle::new(vec![root.certificate().clone()]).unwrap();
    let direct = SigningChain::new(root, vec![], root_bundle).unwrap();
    assert_eq!(direct.response_chain("LEAF\n".into()).len(), 2);
    assert!(direct.ca_path().is_empty());
}

#[test]
fn trust_bundle_deduplicates_and_refuses_non_cas() {
    let root = root();
    let b = TrustBundle::new(vec![root.certificate().clone(), root.certificate().clone()]).unwrap();
    assert_eq!(b.roots().len(), 1);
    assert!(TrustBundle::from_pem(fixture!("not-ca-cert.pem").as_bytes()).is_err());
    assert!(TrustBundle::new(vec![]).is_err());
}

#[test]
fn server_certificates_carry_dns_and_ip_names() {
    let root = root();
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let issued = profile::issue_server(
        &root,
        &key.spki_der(),
        &["localhost".into()],
        &["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()],
        Duration::days(90),
        now(),
    )
    .unwrap();
    let cert = parse(&issued.der);
    let san = cert.subject_alternative_name().unwrap().unwrap().value;
    assert_eq!(san.general_names.len(), 3);
    assert!(san.general_names.contains(&GeneralName::DNSName("localhost")));
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && !eku.client_auth);
    assert!(profile::issue_server(&root, &key.spki_der(), &[], &[], Duration::days(1), now()).is_err());
}

#[test]
fn every_generated_key_type_works_as_signer_and_as_csr_key() {
    let root = root();
    let mut signers = Vec::new();
    for alg in KeyAlgorithm::ALL {
        let chain = chain_under(&root, alg, Duration::days(30));
        assert_eq!(chain.authority().key_kind().to_string(), alg.name());
        signers.push(chain);
    }
    for alg in KeyAlgorithm::ALL {
        let key = PrivateKey::generate(alg).unwrap();
        let pem = csr::build_workload_csr(&key, IDENTITY).unwrap();
        let csr = CertificateSigningRequest::from_pem(pem.as_bytes()).unwrap();
        assert_eq!(csr.key_kind().to_string(), alg.name());
        assert_eq!(csr.san_critical(), Some(true), "empty subject, so the SAN is critical");
        assert_eq!(csr.spki_der(), key.spki_der().as_slice());
        for chain in &signers {
            check_workload_leaf(chain, &csr);
        }
    }
}

#[test]
fn bundle_reports_its_earliest_root_expiry() {
    let long = Authority::new_root(&CaSpec::root(Duration::days(3650)), now()).unwrap();
    let short = Authority::new_root(&CaSpec::root(Duration::days(30)), now()).unwrap();
    let b = TrustBundle::new(vec![long.certificate().clone(), short.certificate().clone()]).unwrap();
    assert_eq!(b.earliest_expiry(), short.not_after().unix_timestamp());
    assert!(profile::renewal_due(now(), now() + Duration::days(30), now() + Duration::days(21)));
    assert!(!profile::renewal_due(now(), now() + Duration::days(30), now() + Duration::days(19)));
}

/// RFC 7093 method 1, as rcgen writes every key identifier but the workload one.
fn plain_key_id(spki: &[u8]) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, spki).as_ref()[..20].to_vec()
}

#[test]
fn the_workload_key_id_is_sha256_over_its_context_and_the_key() {
    // Computed independently: python3 -c 'import hashlib;
    // print(hashlib.sha256(b"meshroot workload certificate v1\0" + b"spki").hexdigest()[:40])'
    let expected = "335b472dff231a75e2d56bd1f4c009db0522b947";
    let hex: String = profile::workload_key_id(b"spki").iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(hex, expected);
    assert_ne!(profile::workload_key_id(b"spki"), profile::workload_key_id(b"spkj"));
}

#[test]
fn only_the_workload_profile_carries_the_workload_mark() {
    let root = root();
    let chain = chain_under(&root, KeyAlgorithm::EcdsaP256, Duration::days(30));
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let workload = chain.issue_workload(&key.spki_der(), IDENTITY, Duration::hours(1), now()).unwrap();
    assert!(profile::is_workload_certificate(&parse(&workload.der)));
    let server = profile::issue_server(
        chain.authority(),
        &key.spki_der(),
        &["a.example".into()],
        &[],
        Duration::hours(1),
        now(),
    )
    .unwrap();
    assert!(!profile::is_workload_certificate(&parse(&server.der)));
    let istiod = profile::issue_istiod(
        chain.authority(),
        &key.spki_der(),
        &["istiod.istio-system.svc".into()],
        "spiffe://cluster.local/ns/istio-system/sa/istiod",
        Duration::hours(1),
        now(),
    )
    .unwrap();
    assert!(!profile::is_workload_certificate(&parse(&istiod.der)));
}

#[test]
fn a_csr_asking_for_the_workload_mark_does_not_get_it_from_the_template_path() {
    use x509_parser::certification_request::X509CertificationRequest;
    // An openssl CSR asking for a private extension (the UUID-arc marker that
    // earlier versions wrote): never copied.
    const PRIVATE_OID_DER: &[u8] = &[
        0x69, 0x83, 0x92, 0x94, 0xdb, 0xab, 0xd4, 0xe9, 0xf2, 0xb9, 0xcd, 0xb6, 0x99, 0x8c, 0xe1, 0xa7, 0xd2, 0xc3,
        0xa7, 0x12,
    ];
    let openssl_pem = fixture!("csr-p256-wants-workload-marker.pem");
    let der = pem::decode_one(openssl_pem.as_bytes(), pem::CERTIFICATE_REQUEST, 1 << 16).unwrap();
    let (_, request) = X509CertificationRequest::from_der(&der).unwrap();
    let asked = request
        .requested_extensions()
        .unwrap()
        .any(|e| matches!(e, ParsedExtension::UnsupportedExtension { oid } if oid.as_bytes() == PRIVATE_OID_DER));
    assert!(asked, "the fixture must request the private extension");
    // A CSR asking for the workload key identifier of its own key as its SubjectKeyIdentifier.
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(IDENTITY.try_into().unwrap())];
    let wanted = profile::workload_key_id(&rcgen::PublicKeyData::subject_public_key_info(&key));
    let mut octets = vec![0x04, wanted.len() as u8];
    octets.extend(&wanted);
    params.custom_extensions = vec![rcgen::CustomExtension::from_oid_content(&[2, 5, 29, 14], octets)];
    let rcgen_pem = params.serialize_request(&key).unwrap().pem().unwrap();
    let chain = chain_under(&root(), KeyAlgorithm::EcdsaP256, Duration::days(30));
    let usages = usage::Usages::from_names(&["digital signature", "client auth", "server auth"], false).unwrap();
    for pem in [openssl_pem, rcgen_pem.as_str()] {
        let csr = CertificateSigningRequest::from_pem(pem.as_bytes()).unwrap();
        for is_ca in [false, true] {
            let template = template::CertificateTemplate {
                csr: &csr,
                is_ca,
                max_path_length: None,
                name_constraints: None,
                usages: &usages,
                lifetime: Duration::hours(1),
            };
            let issued = template::issue_from_template(chain.authority(), &template, now()).unwrap();
            let cert = parse(&issued.der);
            assert_eq!(authority::uri_sans(&cert), vec![IDENTITY], "the SAN is copied");
            assert!(
                cert.extensions().iter().all(|e| e.oid.as_bytes() != PRIVATE_OID_DER),
                "a private extension never comes from a CSR (is_ca: {is_ca})"
            );
            assert_eq!(ski(&cert), plain_key_id(cert.public_key().raw), "the plain key identifier (is_ca: {is_ca})");
            assert!(!profile::is_workload_certificate(&cert));
        }
    }
}

/// A CSR built with every kind of name, a two-attribute subject and the
/// CA-related extensions, and a bare one: each accessor reports exactly what
/// was asked, and nothing for what was not.
#[test]
fn csr_accessors_report_exactly_what_was_asked() {
    use crate::usage::KeyUsage;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
    };
    let key = KeyPair::generate().unwrap();
    let mut asked = CertificateParams::default();
    asked.distinguished_name.push(DnType::CommonName, "svc.example");
    asked.distinguished_name.push(DnType::OrganizationName, "Example Org");
    asked.subject_alt_names = vec![
        SanType::DnsName("a.example".try_into().unwrap()),
        SanType::URI("spiffe://cluster.local/ns/a/sa/b".try_into().unwrap()),
        SanType::IpAddress("10.0.0.1".parse().unwrap()),
        SanType::Rfc822Name("ops@example.com".try_into().unwrap()),
    ];
    asked.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyCertSign];
    asked.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    asked.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let der = asked.serialize_request(&key).unwrap().der().to_vec();
    let csr = CertificateSigningRequest::from_der(&der).unwrap();

    let names = csr.names();
    assert_eq!(names.dns, ["a.example"]);
    assert_eq!(names.uris, ["spiffe://cluster.local/ns/a/sa/b"]);
    assert_eq!(names.ips, ["10.0.0.1".parse::<std::net::IpAddr>().unwrap()]);
    assert_eq!(names.emails, ["ops@example.com"]);
    assert_eq!(names.other, 0);
    assert!(!names.is_empty());
    assert_eq!(csr.common_names(), ["svc.example"]);
    assert!(!csr.subject_is_empty());
    let attributes: Vec<(&str, Option<&str>)> =
        csr.subject_attributes().iter().map(|a| (a.oid.as_str(), a.value.as_deref())).collect();
    assert_eq!(attributes, [("2.5.4.3", Some("svc.example")), ("2.5.4.10", Some("Example Org"))]);
    assert!(csr.requests_ca());
    assert_eq!(csr.basic_constraints_ca(), Some(true));
    let key_usage: Vec<KeyUsage> = csr.key_usage().unwrap().iter().copied().collect();
    assert_eq!(key_usage, [KeyUsage::DigitalSignature, KeyUsage::CertSign]);
    let eku: Vec<&str> = csr.extended_key_usage().unwrap().iter().map(String::as_str).collect();
    assert_eq!(eku, ["1.3.6.1.5.5.7.3.1"]);

    // rcgen's default subject is a placeholder CN: clear it.
    let mut bare = CertificateParams::default();
    bare.distinguished_name = rcgen::DistinguishedName::new();
    let bare = bare.serialize_request(&key).unwrap().der().to_vec();
    let bare = CertificateSigningRequest::from_der(&bare).unwrap();
    assert!(bare.names().is_empty());
    assert!(bare.subject_is_empty());
    assert!(bare.common_names().is_empty() && bare.subject_attributes().is_empty());
    assert!(!bare.requests_ca());
    assert_eq!((bare.basic_constraints_ca(), bare.key_usage(), bare.extended_key_usage()), (None, None, None));

    // Each kind of name alone makes the set non-empty.
    let one_of_each = [
        csr::RequestedNames { dns: vec!["a".into()], ..Default::default() },
        csr::RequestedNames { uris: vec!["spiffe://td/x".into()], ..Default::default() },
        csr::RequestedNames { ips: vec!["::1".parse().unwrap()], ..Default::default() },
        csr::RequestedNames { emails: vec!["a@b".into()], ..Default::default() },
        csr::RequestedNames { other: 1, ..Default::default() },
    ];
    for names in one_of_each {
        assert!(!names.is_empty(), "{names:?}");
    }
}

/// A requested extension that does not parse is refused, not ignored.
#[test]
fn a_csr_with_a_malformed_extension_is_refused() {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name.push(rcgen::DnType::CommonName, "x");
    // A KeyUsage whose BIT STRING is cut short.
    params.custom_extensions = vec![rcgen::CustomExtension::from_oid_content(&[2, 5, 29, 15], vec![0x03, 0x05, 0x00])];
    let der = params.serialize_request(&key).unwrap().der().to_vec();
    let refused = CertificateSigningRequest::from_der(&der).unwrap_err();
    assert!(matches!(&refused, PkiError::Der(m) if m.contains("2.5.29.15")), "{refused:?}");
}

/// The size limit is inclusive: a DER input of exactly the limit is parsed
/// (and refused only for what it is), one byte more is refused unread.
#[test]
fn the_csr_size_limit_is_inclusive() {
    let at_limit = vec![0u8; csr::MAX_CSR_PEM_BYTES];
    assert!(matches!(CertificateSigningRequest::from_der(&at_limit), Err(PkiError::Der(_))));
    let over = vec![0u8; csr::MAX_CSR_PEM_BYTES + 1];
    assert!(matches!(CertificateSigningRequest::from_der(&over), Err(PkiError::TooLarge { .. })));
}

/// The path to a root is followed by signature: a root names itself; an intermediate reaches
/// the root that signed its chain, not another of the same name; a chain without it reaches none.
#[test]
fn path_to_root_follows_signatures_to_a_root_that_names_itself() {
    let now = OffsetDateTime::now_utc();
    let root = Authority::new_root(&CaSpec::root(Duration::days(30)), now).unwrap();
    let impostor = Authority::new_root(&CaSpec::root(Duration::days(30)), now).unwrap();
    let upper = root.new_intermediate(&CaSpec::intermediate("upper", Duration::days(1)), now).unwrap();
    let lower = upper.new_intermediate(&CaSpec::intermediate("lower", Duration::days(1)), now).unwrap();
    let c = |a: &Authority| a.certificate().clone();
    assert_eq!(path_to_root(&c(&root), &[], &[]), Some((c(&root), vec![])), "a root is its own");
    let found = path_to_root(&c(&lower), &[c(&upper)], &[c(&impostor), c(&root)]);
    assert_eq!(found, Some((c(&root), vec![c(&lower), c(&upper)])));
    // The root may end the chain instead of standing apart.
    assert_eq!(path_to_root(&c(&lower), &[c(&upper), c(&root)], &[]), Some((c(&root), vec![c(&lower), c(&upper)])));
    assert_eq!(path_to_root(&c(&lower), &[c(&upper)], &[c(&impostor)]), None);
    assert_eq!(path_to_root(&c(&lower), &[], &[c(&root)]), None, "a missing link");
    assert!(names_itself(&c(&impostor)) && !names_itself(&c(&upper)));
}

/// Thousands of extensions fit in 64 KiB, and each check over them must stay cheap: a CSR may
/// carry at most MAX_CSR_ITEMS extensions, request attributes and subject attributes each.
#[test]
fn csrs_with_more_extensions_or_attributes_than_meshroot_reads_are_refused() {
    use crate::csr::MAX_CSR_ITEMS;
    let key = rcgen::KeyPair::generate().unwrap();
    let extensions = |n: u64| {
        let mut params = rcgen::CertificateParams::default();
        params.custom_extensions =
            (0..n).map(|i| rcgen::CustomExtension::from_oid_content(&[1, 3, 9999, i], vec![0x05, 0x00])).collect();
        CertificateSigningRequest::from_der(params.serialize_request(&key).unwrap().der())
    };
    let at_most = extensions(MAX_CSR_ITEMS as u64).unwrap();
    assert_eq!(at_most.extension_oids().len(), MAX_CSR_ITEMS);
    let err = extensions(MAX_CSR_ITEMS as u64 + 1).unwrap_err().to_string();
    assert!(err.contains(&format!("{} extensions, more than the {MAX_CSR_ITEMS}", MAX_CSR_ITEMS + 1)), "{err}");
    // 5,000 distinct extensions, the attack: refused before any of them is compared.
    assert!(extensions(5000).unwrap_err().to_string().contains("5000 extensions"));
    let mut subject = rcgen::CertificateParams::default();
    subject.distinguished_name = rcgen::DistinguishedName::new();
    for i in 0..=MAX_CSR_ITEMS as u64 {
        subject.distinguished_name.push(rcgen::DnType::CustomDnType(vec![1, 3, 9999, i]), "x");
    }
    let err = CertificateSigningRequest::from_der(subject.serialize_request(&key).unwrap().der()).unwrap_err();
    assert!(err.to_string().contains(&format!("{} subject attributes", MAX_CSR_ITEMS + 1)), "{err}");
}

/// `::ffff:a.b.c.d` is the IPv4 address to Go's TLS clients, but to every rule written for
/// a.b.c.d it is another address: refused, naming the IPv4 form to ask for.
#[test]
fn ipv4_addresses_written_as_ipv6_are_refused() {
    let key = rcgen::KeyPair::generate().unwrap();
    let csr = |ip: std::net::IpAddr| {
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = vec![rcgen::SanType::IpAddress(ip)];
        CertificateSigningRequest::from_der(params.serialize_request(&key).unwrap().der())
    };
    let mapped: std::net::IpAddr = "::ffff:10.96.0.50".parse().unwrap();
    let err = csr(mapped).unwrap_err().to_string();
    assert!(err.contains("is the IPv4 address 10.96.0.50 written as IPv6: ask for 10.96.0.50"), "{err}");
    for ip in ["10.96.0.50", "fd00::1", "::1", "::a60:32"] {
        let parsed = csr(ip.parse().unwrap()).unwrap();
        assert_eq!(parsed.names().ips, [ip.parse::<std::net::IpAddr>().unwrap()], "{ip}");
    }
}

/// A DER header for `tag` with `len` bytes of content (short or two-byte long form).
fn der_header(tag: u8, len: usize) -> Vec<u8> {
    match len {
        0..=0x7f => vec![tag, len as u8],
        0x80..=0xff => vec![tag, 0x81, len as u8],
        _ => vec![tag, 0x82, (len >> 8) as u8, len as u8],
    }
}

/// A CSR for `spki`, signed with `key` (whose public key `spki` encodes, in whatever way).
fn csr_with_spki(key: &rcgen::KeyPair, spki: &[u8], signature_algorithm: &[u8]) -> Vec<u8> {
    use rcgen::SigningKey as _;
    let tlv = |tag: u8, content: &[u8]| [der_header(tag, content.len()), content.to_vec()].concat();
    // version 0, an empty subject, the key, no attributes.
    let info = tlv(0x30, &[&[0x02, 0x01, 0x00, 0x30, 0x00][..], spki, &[0xa0, 0x00]].concat());
    let signature = [&[0u8][..], &key.sign(&info).unwrap()].concat();
    tlv(0x30, &[info.as_slice(), signature_algorithm, &tlv(0x03, &signature)].concat())
}

/// x509-parser reads a key that is not in its one DER encoding; certificates carry the canonical
/// one. Such a CSR is refused as a bad request when it is parsed (it had come out of the gRPC
/// path as an internal error, and stayed Pending for ever on the cert-manager path).
#[test]
fn csrs_whose_key_is_not_in_canonical_der_are_refused() {
    use rcgen::PublicKeyData as _;
    const SHA256_RSA: &[u8] =
        &[0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b, 0x05, 0x00];
    const ECDSA_SHA256: &[u8] = &[0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];
    let rsa = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256);
    // rcgen cannot generate RSA keys; take one from the PKCS#8 PEM of aws-lc's.
    let rsa = rsa.unwrap_or_else(|_| {
        let pem = PrivateKey::generate(KeyAlgorithm::Rsa2048).unwrap().to_pem();
        rcgen::KeyPair::from_pem(&pem).unwrap()
    });
    let canonical = rsa.subject_public_key_info();
    // The same key, its algorithm without the NULL parameters: 05 00 dropped, lengths two less.
    let null = [0x05, 0x00];
    let at = canonical.windows(2).position(|w| w == null).unwrap();
    assert_eq!(canonical[4..6], [0x30, 0x0d], "an RSA-2048 SubjectPublicKeyInfo");
    let body = [&[0x30, 0x0b][..], &canonical[6..at], &canonical[at + 2..]].concat();
    let no_null = [der_header(0x30, body.len()), body].concat();
    assert!(CertificateSigningRequest::from_der(&csr_with_spki(&rsa, &canonical, SHA256_RSA)).is_ok());
    let err = CertificateSigningRequest::from_der(&csr_with_spki(&rsa, &no_null, SHA256_RSA)).unwrap_err();
    assert!(matches!(err, PkiError::UnsupportedKey(_)), "{err}");

    // A P-256 key whose BIT STRING says one bit is unused (the point's last bit is zero).
    let p256 = std::iter::repeat_with(|| rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap())
        .find(|k| k.subject_public_key_info().last().is_some_and(|b| b & 1 == 0))
        .unwrap();
    let mut unused_bits = p256.subject_public_key_info();
    let bits = unused_bits.windows(3).position(|w| w == [0x03, 0x42, 0x00]).unwrap();
    unused_bits[bits + 2] = 0x01;
    assert!(
        CertificateSigningRequest::from_der(&csr_with_spki(&p256, &p256.subject_public_key_info(), ECDSA_SHA256))
            .is_ok()
    );
    let err = CertificateSigningRequest::from_der(&csr_with_spki(&p256, &unused_bits, ECDSA_SHA256)).unwrap_err();
    assert!(err.to_string().contains("canonical DER") || err.to_string().contains("unused bits"), "{err}");
}
