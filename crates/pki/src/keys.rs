//! Private keys (generate, load, encode) and public key classification.

use super::error::{PkiError, Result};
use super::pem;
use rcgen::{KeyPair, PublicKeyData};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs1KeyDer, PrivatePkcs8KeyDer, PrivateSec1KeyDer};
use std::fmt;
use x509_parser::asn1_rs::{Oid, Tag, oid};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;
use x509_parser::x509::AlgorithmIdentifier;
use x509_parser::x509::SubjectPublicKeyInfo;
use zeroize::Zeroizing;

/// Key files are small; anything larger is not a key.
pub const MAX_KEY_PEM_BYTES: usize = 64 * 1024;

/// Key algorithms meshroot can generate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyAlgorithm {
    /// ECDSA on NIST P-256, signing with SHA-256; meshroot's default.
    EcdsaP256,
    /// ECDSA on NIST P-384, signing with SHA-384.
    EcdsaP384,
    /// RSA with a 2048-bit modulus, signing with PKCS#1 v1.5 and SHA-256.
    Rsa2048,
    /// RSA with a 3072-bit modulus, signing with PKCS#1 v1.5 and SHA-256.
    Rsa3072,
    /// RSA with a 4096-bit modulus, signing with PKCS#1 v1.5 and SHA-256.
    Rsa4096,
}

impl KeyAlgorithm {
    /// Every algorithm, in the order error messages list them.
    pub const ALL: [KeyAlgorithm; 5] = [
        KeyAlgorithm::EcdsaP256,
        KeyAlgorithm::EcdsaP384,
        KeyAlgorithm::Rsa2048,
        KeyAlgorithm::Rsa3072,
        KeyAlgorithm::Rsa4096,
    ];

    /// The algorithm's name in configuration and messages (`ecdsa-p256`, `rsa-2048`, ...), as `FromStr` parses it.
    pub fn name(self) -> &'static str {
        match self {
            KeyAlgorithm::EcdsaP256 => "ecdsa-p256",
            KeyAlgorithm::EcdsaP384 => "ecdsa-p384",
            KeyAlgorithm::Rsa2048 => "rsa-2048",
            KeyAlgorithm::Rsa3072 => "rsa-3072",
            KeyAlgorithm::Rsa4096 => "rsa-4096",
        }
    }
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for KeyAlgorithm {
    type Err = PkiError;
    fn from_str(s: &str) -> Result<Self> {
        KeyAlgorithm::ALL.into_iter().find(|a| a.name() == s).ok_or_else(|| {
            let names: Vec<_> = KeyAlgorithm::ALL.iter().map(|a| a.name()).collect();
            PkiError::UnsupportedKey(format!("{s:?}; expected one of {}", names.join(", ")))
        })
    }
}

/// What kind of public key a certificate or CSR carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PublicKeyKind {
    /// RSA, of [`MIN_RSA_BITS`] to [`MAX_RSA_BITS`] bits.
    Rsa {
        /// Modulus size, in bits.
        bits: usize,
    },
    /// ECDSA on NIST P-256.
    EcdsaP256,
    /// ECDSA on NIST P-384.
    EcdsaP384,
    /// Ed25519: accepted in CSRs, refused as a signing key.
    Ed25519,
}

impl fmt::Display for PublicKeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PublicKeyKind::Rsa { bits } => write!(f, "rsa-{bits}"),
            PublicKeyKind::EcdsaP256 => f.write_str("ecdsa-p256"),
            PublicKeyKind::EcdsaP384 => f.write_str("ecdsa-p384"),
            PublicKeyKind::Ed25519 => f.write_str("ed25519"),
        }
    }
}

/// The smallest RSA modulus accepted, in bits.
pub const MIN_RSA_BITS: usize = 2048;
/// The largest RSA modulus accepted, in bits.
pub const MAX_RSA_BITS: usize = 8192;

const OID_RSA: &[u8] = &oid!(raw 1.2.840.113549.1.1.1);
const OID_RSA_PSS: &[u8] = &oid!(raw 1.2.840.113549.1.1.10);
const OID_EC: &[u8] = &oid!(raw 1.2.840.10045.2.1);
const OID_P256: &[u8] = &oid!(raw 1.2.840.10045.3.1.7);
const OID_P384: &[u8] = &oid!(raw 1.3.132.0.34);
const OID_P521: &[u8] = &oid!(raw 1.3.132.0.35);
const OID_ED25519: &[u8] = &oid!(raw 1.3.101.112);
const OID_ED448: &[u8] = &oid!(raw 1.3.101.113);
const OID_DSA: &[u8] = &oid!(raw 1.2.840.10040.4.1);

/// Classifies a SubjectPublicKeyInfo and enforces the key policy: RSA of
/// 2048 to 8192 bits, ECDSA P-256 or P-384, or Ed25519.
pub fn classify_spki(spki: &SubjectPublicKeyInfo<'_>) -> Result<PublicKeyKind> {
    // OIDs are compared as encoded: turning them into dotted text costs more than the rest of
    // this check, once per CSR on the signing path.
    let alg = &spki.algorithm.algorithm;
    match alg.as_bytes() {
        OID_RSA => {
            let Ok(PublicKey::RSA(rsa)) = spki.parsed() else {
                return Err(PkiError::UnsupportedKey("malformed RSA public key".into()));
            };
            let bits = rsa.key_size();
            if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
                return Err(PkiError::UnsupportedKey(format!(
                    "RSA key of {bits} bits; {MIN_RSA_BITS} to {MAX_RSA_BITS} bits are accepted"
                )));
            }
            Ok(PublicKeyKind::Rsa { bits })
        }
        OID_EC => {
            let Some(curve) = named_curve(&spki.algorithm) else {
                return Err(PkiError::UnsupportedKey("EC key without a named curve".into()));
            };
            match curve.as_bytes() {
                OID_P256 => Ok(PublicKeyKind::EcdsaP256),
                OID_P384 => Ok(PublicKeyKind::EcdsaP384),
                OID_P521 => Err(PkiError::UnsupportedKey("ECDSA P-521 (use P-256 or P-384)".into())),
                _ => Err(PkiError::UnsupportedKey(format!("EC curve {}", super::csr::oid_text(&curve)))),
            }
        }
        OID_ED25519 => Ok(PublicKeyKind::Ed25519),
        OID_DSA => Err(PkiError::UnsupportedKey("DSA keys are not accepted".into())),
        OID_ED448 => Err(PkiError::UnsupportedKey("Ed448 keys are not accepted".into())),
        OID_RSA_PSS => Err(PkiError::UnsupportedKey("RSASSA-PSS-only keys are not accepted".into())),
        _ => Err(PkiError::UnsupportedKey(format!("key algorithm {}", super::csr::oid_text(alg)))),
    }
}

/// The curve an algorithm's parameters name. Only an OID names one: `as_oid()` reads NULL (an
/// RSA key's parameters) or any other value as an empty OID.
pub(crate) fn named_curve<'a>(algorithm: &'a AlgorithmIdentifier<'_>) -> Option<Oid<'a>> {
    algorithm.parameters.as_ref().filter(|p| p.tag() == Tag::Oid).and_then(|p| p.as_oid().ok())
}

/// Classifies a DER SubjectPublicKeyInfo.
pub fn classify_spki_der(der: &[u8]) -> Result<PublicKeyKind> {
    let (rest, spki) = SubjectPublicKeyInfo::from_der(der).map_err(|e| PkiError::Der(format!("public key: {e}")))?;
    if !rest.is_empty() {
        return Err(PkiError::Der("trailing bytes after public key".into()));
    }
    classify_spki(&spki)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KeyEncoding {
    Pkcs8,
    Pkcs1,
    Sec1,
}

/// A private key that can sign certificates. Its bytes never appear in
/// `Debug` output and are wiped on drop.
pub struct PrivateKey {
    pair: KeyPair,
    kind: PublicKeyKind,
    encoding: KeyEncoding,
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrivateKey").field("kind", &self.kind).field("key", &"[redacted]").finish()
    }
}

impl Drop for PrivateKey {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.pair);
    }
}

impl PrivateKey {
    /// Generates a new key from the system RNG; it is written out as PKCS#8.
    pub fn generate(alg: KeyAlgorithm) -> Result<Self> {
        let pair = match alg {
            KeyAlgorithm::EcdsaP256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?,
            KeyAlgorithm::EcdsaP384 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384)?,
            KeyAlgorithm::Rsa2048 => KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)?,
            KeyAlgorithm::Rsa3072 => KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_3072)?,
            KeyAlgorithm::Rsa4096 => KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_4096)?,
        };
        Self::from_pair(pair, KeyEncoding::Pkcs8)
    }

    /// Loads a PEM private key: PKCS#8 (`PRIVATE KEY`), PKCS#1
    /// (`RSA PRIVATE KEY`) or SEC1 (`EC PRIVATE KEY`).
    pub fn from_pem(input: &[u8]) -> Result<Self> {
        let mut blocks = pem::decode_all(input, MAX_KEY_PEM_BYTES)?;
        // openssl's `ecparam -genkey` writes an `EC PARAMETERS` block first.
        blocks.retain(|b| b.label != "EC PARAMETERS");
        if blocks.len() != 1 {
            return Err(PkiError::PemCount(blocks.len()));
        }
        let block = blocks.remove(0);
        let (der, encoding) = match block.label.as_str() {
            "PRIVATE KEY" => (PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(block.der.as_slice())), KeyEncoding::Pkcs8),
            "RSA PRIVATE KEY" => {
                (PrivateKeyDer::Pkcs1(PrivatePkcs1KeyDer::from(block.der.as_slice())), KeyEncoding::Pkcs1)
            }
            "EC PRIVATE KEY" => (PrivateKeyDer::Sec1(PrivateSec1KeyDer::from(block.der.as_slice())), KeyEncoding::Sec1),
            "ENCRYPTED PRIVATE KEY" => {
                return Err(PkiError::UnsupportedKey(
                    "encrypted private keys are not supported; decrypt it first (openssl pkey)".into(),
                ));
            }
            other => {
                return Err(PkiError::PemLabel { expected: "PRIVATE KEY", found: other.to_string() });
            }
        };
        let pair = load_pair(&der, encoding)?;
        Self::from_pair(pair, encoding)
    }

    fn from_pair(pair: KeyPair, encoding: KeyEncoding) -> Result<Self> {
        let kind = classify_spki_der(&pair.subject_public_key_info())?;
        if kind == PublicKeyKind::Ed25519 {
            return Err(PkiError::UnsupportedKey(
                "Ed25519 signing keys are not supported; use ECDSA P-256/P-384 or RSA".into(),
            ));
        }
        Ok(Self { pair, kind, encoding })
    }

    /// The type and size of this key: ECDSA or RSA, since Ed25519 signing keys are refused.
    pub fn kind(&self) -> PublicKeyKind {
        self.kind
    }

    /// The DER SubjectPublicKeyInfo of this key.
    pub fn spki_der(&self) -> Vec<u8> {
        self.pair.subject_public_key_info()
    }

    /// The key as PEM, in the encoding it was loaded in (PKCS#8 when generated).
    pub fn to_pem(&self) -> Zeroizing<String> {
        let label = match self.encoding {
            KeyEncoding::Pkcs8 => "PRIVATE KEY",
            KeyEncoding::Pkcs1 => "RSA PRIVATE KEY",
            KeyEncoding::Sec1 => "EC PRIVATE KEY",
        };
        Zeroizing::new(pem::encode(label, self.pair.serialized_der()))
    }

    /// The key in the encoding it was loaded in, for TLS libraries.
    pub fn to_der(&self) -> PrivateKeyDer<'static> {
        let der = self.pair.serialized_der().to_vec();
        match self.encoding {
            KeyEncoding::Pkcs8 => PrivateKeyDer::Pkcs8(der.into()),
            KeyEncoding::Pkcs1 => PrivateKeyDer::Pkcs1(der.into()),
            KeyEncoding::Sec1 => PrivateKeyDer::Sec1(der.into()),
        }
    }

    pub(crate) fn key_pair(&self) -> &KeyPair {
        &self.pair
    }
}

fn load_pair(der: &PrivateKeyDer<'_>, encoding: KeyEncoding) -> Result<KeyPair> {
    // Choose the signature algorithm from the key itself, so an EC key is
    // never paired with the wrong curve.
    let candidates: &[&'static rcgen::SignatureAlgorithm] = match encoding {
        KeyEncoding::Pkcs1 => &[&rcgen::PKCS_RSA_SHA256],
        KeyEncoding::Sec1 => &[&rcgen::PKCS_ECDSA_P256_SHA256, &rcgen::PKCS_ECDSA_P384_SHA384],
        KeyEncoding::Pkcs8 => {
            return KeyPair::try_from(der).map_err(|_| PkiError::KeyLoad);
        }
    };
    candidates.iter().find_map(|alg| KeyPair::from_der_and_sign_algo(der, alg).ok()).ok_or(PkiError::KeyLoad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_every_algorithm_and_reloads_it() {
        for alg in [KeyAlgorithm::EcdsaP256, KeyAlgorithm::EcdsaP384, KeyAlgorithm::Rsa2048] {
            let key = PrivateKey::generate(alg).unwrap();
            let expected = match alg {
                KeyAlgorithm::EcdsaP256 => PublicKeyKind::EcdsaP256,
                KeyAlgorithm::EcdsaP384 => PublicKeyKind::EcdsaP384,
                _ => PublicKeyKind::Rsa { bits: 2048 },
            };
            assert_eq!(key.kind(), expected);
            let pem = key.to_pem();
            assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
            let again = PrivateKey::from_pem(pem.as_bytes()).unwrap();
            assert_eq!(again.spki_der(), key.spki_der());
        }
    }

    #[test]
    fn debug_output_redacts_the_key() {
        let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let pem = key.to_pem();
        let body: String = pem.lines().nth(1).unwrap().to_string();
        let debug = format!("{key:?}");
        assert!(debug.contains("[redacted]"));
        assert!(!debug.contains(&body[..20]));
    }

    /// Everything here that holds a key redacts it, down to the derived
    /// Debug of a signing chain. (The root state and bearer tokens of the
    /// service are checked beside them, in meshroot's `k8s::root`.)
    #[test]
    fn holders_of_keys_redact_them_in_debug_output() {
        use crate::{Authority, CaSpec, SigningChain, TrustBundle};
        let now = time::OffsetDateTime::now_utc();
        let root = Authority::new_root(&CaSpec::root(time::Duration::days(1)), now).unwrap();
        let int = root.new_intermediate(&CaSpec::intermediate("m", time::Duration::hours(1)), now).unwrap();
        // Full base64 lines of each key (the short last line could occur anywhere by chance).
        let key_lines: Vec<String> = [root.key().to_pem(), int.key().to_pem()]
            .iter()
            .flat_map(|p| p.lines().filter(|l| l.len() == 64).map(String::from).collect::<Vec<_>>())
            .collect();
        let bundle = TrustBundle::new(vec![root.certificate().clone()]).unwrap();
        let chain = SigningChain::new(int, vec![], bundle).unwrap();
        for debug in [format!("{chain:?}"), format!("{chain:#?}"), format!("{root:?}")] {
            assert!(debug.contains("redacted"), "{debug}");
            for line in &key_lines {
                assert!(!debug.contains(line.as_str()), "a key line in {debug}");
            }
        }
    }

    #[test]
    fn algorithm_names_round_trip() {
        for alg in KeyAlgorithm::ALL {
            assert_eq!(alg.name().parse::<KeyAlgorithm>().unwrap(), alg);
        }
        assert!("dsa-1024".parse::<KeyAlgorithm>().is_err());
    }

    #[test]
    fn refuses_non_keys_and_encrypted_keys() {
        let cert = pem::encode("CERTIFICATE", &[1, 2, 3]);
        assert!(matches!(PrivateKey::from_pem(cert.as_bytes()), Err(PkiError::PemLabel { .. })));
        let enc = pem::encode("ENCRYPTED PRIVATE KEY", &[1, 2, 3]);
        assert!(matches!(PrivateKey::from_pem(enc.as_bytes()), Err(PkiError::UnsupportedKey(_))));
        let junk = pem::encode("PRIVATE KEY", &[1, 2, 3]);
        assert!(matches!(PrivateKey::from_pem(junk.as_bytes()), Err(PkiError::KeyLoad)));
    }
}
