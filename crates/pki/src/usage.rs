//! Key usages and extended key usages by the names cert-manager and the
//! Kubernetes CSR API use (`digital signature`, `server auth`, ...).

use std::collections::BTreeSet;
use std::fmt;

/// One bit of the X.509 KeyUsage extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KeyUsage {
    /// `digitalSignature`: the key signs, as in a TLS handshake.
    DigitalSignature,
    /// `contentCommitment` (formerly `nonRepudiation`).
    ContentCommitment,
    /// `keyEncipherment`: the key encrypts other keys, as in RSA key exchange.
    KeyEncipherment,
    /// `dataEncipherment`: the key encrypts data directly.
    DataEncipherment,
    /// `keyAgreement`: the key takes part in key agreement, as in (EC)DH.
    KeyAgreement,
    /// `keyCertSign`: the key signs certificates; for CA certificates only.
    CertSign,
    /// `cRLSign`: the key signs certificate revocation lists.
    CrlSign,
    /// `encipherOnly`: with `keyAgreement`, the key may only encipher.
    EncipherOnly,
    /// `decipherOnly`: with `keyAgreement`, the key may only decipher.
    DecipherOnly,
}

impl KeyUsage {
    /// The same bit as rcgen names it, for building a certificate.
    pub fn to_rcgen(self) -> rcgen::KeyUsagePurpose {
        use rcgen::KeyUsagePurpose as P;
        match self {
            KeyUsage::DigitalSignature => P::DigitalSignature,
            KeyUsage::ContentCommitment => P::ContentCommitment,
            KeyUsage::KeyEncipherment => P::KeyEncipherment,
            KeyUsage::DataEncipherment => P::DataEncipherment,
            KeyUsage::KeyAgreement => P::KeyAgreement,
            KeyUsage::CertSign => P::KeyCertSign,
            KeyUsage::CrlSign => P::CrlSign,
            KeyUsage::EncipherOnly => P::EncipherOnly,
            KeyUsage::DecipherOnly => P::DecipherOnly,
        }
    }

    /// The bits set in a parsed KeyUsage extension.
    pub fn from_x509(ku: &x509_parser::extensions::KeyUsage) -> BTreeSet<KeyUsage> {
        [
            (ku.digital_signature(), KeyUsage::DigitalSignature),
            (ku.non_repudiation(), KeyUsage::ContentCommitment),
            (ku.key_encipherment(), KeyUsage::KeyEncipherment),
            (ku.data_encipherment(), KeyUsage::DataEncipherment),
            (ku.key_agreement(), KeyUsage::KeyAgreement),
            (ku.key_cert_sign(), KeyUsage::CertSign),
            (ku.crl_sign(), KeyUsage::CrlSign),
            (ku.encipher_only(), KeyUsage::EncipherOnly),
            (ku.decipher_only(), KeyUsage::DecipherOnly),
        ]
        .into_iter()
        .filter_map(|(set, bit)| set.then_some(bit))
        .collect()
    }
}

/// OID of `anyExtendedKeyUsage` (usage name `any`).
pub const EKU_ANY: &str = "2.5.29.37.0";
/// OID of `serverAuth`, TLS server authentication (usage name `server auth`).
pub const EKU_SERVER_AUTH: &str = "1.3.6.1.5.5.7.3.1";
/// OID of `clientAuth`, TLS client authentication (usage name `client auth`).
pub const EKU_CLIENT_AUTH: &str = "1.3.6.1.5.5.7.3.2";
/// OID of `codeSigning` (usage name `code signing`).
pub const EKU_CODE_SIGNING: &str = "1.3.6.1.5.5.7.3.3";
/// OID of `emailProtection` (usage names `email protection` and `s/mime`).
pub const EKU_EMAIL_PROTECTION: &str = "1.3.6.1.5.5.7.3.4";
/// OID of `ipsecEndSystem` (usage name `ipsec end system`).
pub const EKU_IPSEC_END_SYSTEM: &str = "1.3.6.1.5.5.7.3.5";
/// OID of `ipsecTunnel` (usage name `ipsec tunnel`).
pub const EKU_IPSEC_TUNNEL: &str = "1.3.6.1.5.5.7.3.6";
/// OID of `ipsecUser` (usage name `ipsec user`).
pub const EKU_IPSEC_USER: &str = "1.3.6.1.5.5.7.3.7";
/// OID of `timeStamping` (usage name `timestamping`).
pub const EKU_TIME_STAMPING: &str = "1.3.6.1.5.5.7.3.8";
/// OID of `OCSPSigning` (usage name `ocsp signing`).
pub const EKU_OCSP_SIGNING: &str = "1.3.6.1.5.5.7.3.9";
/// OID of Microsoft's legacy Server Gated Cryptography usage (usage name `microsoft sgc`).
pub const EKU_MICROSOFT_SGC: &str = "1.3.6.1.4.1.311.10.3.3";
/// OID of Netscape's legacy Server Gated Cryptography usage (usage name `netscape sgc`).
pub const EKU_NETSCAPE_SGC: &str = "2.16.840.1.113730.4.1";

/// A usage name as written in a CertificateRequest or Kubernetes CSR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Usage {
    /// A KeyUsage bit.
    Key(KeyUsage),
    /// An extended key usage, by OID.
    Extended(&'static str),
}

/// Every usage name cert-manager and Kubernetes accept, with its meaning.
const USAGE_NAMES: &[(&str, Usage)] = &[
    ("signing", Usage::Key(KeyUsage::DigitalSignature)),
    ("digital signature", Usage::Key(KeyUsage::DigitalSignature)),
    ("content commitment", Usage::Key(KeyUsage::ContentCommitment)),
    ("key encipherment", Usage::Key(KeyUsage::KeyEncipherment)),
    ("key agreement", Usage::Key(KeyUsage::KeyAgreement)),
    ("data encipherment", Usage::Key(KeyUsage::DataEncipherment)),
    ("cert sign", Usage::Key(KeyUsage::CertSign)),
    ("crl sign", Usage::Key(KeyUsage::CrlSign)),
    ("encipher only", Usage::Key(KeyUsage::EncipherOnly)),
    ("decipher only", Usage::Key(KeyUsage::DecipherOnly)),
    ("any", Usage::Extended(EKU_ANY)),
    ("server auth", Usage::Extended(EKU_SERVER_AUTH)),
    ("client auth", Usage::Extended(EKU_CLIENT_AUTH)),
    ("code signing", Usage::Extended(EKU_CODE_SIGNING)),
    ("email protection", Usage::Extended(EKU_EMAIL_PROTECTION)),
    ("s/mime", Usage::Extended(EKU_EMAIL_PROTECTION)),
    ("ipsec end system", Usage::Extended(EKU_IPSEC_END_SYSTEM)),
    ("ipsec tunnel", Usage::Extended(EKU_IPSEC_TUNNEL)),
    ("ipsec user", Usage::Extended(EKU_IPSEC_USER)),
    ("timestamping", Usage::Extended(EKU_TIME_STAMPING)),
    ("ocsp signing", Usage::Extended(EKU_OCSP_SIGNING)),
    ("microsoft sgc", Usage::Extended(EKU_MICROSOFT_SGC)),
    ("netscape sgc", Usage::Extended(EKU_NETSCAPE_SGC)),
];

impl Usage {
    /// The usage a name stands for (an exact, lowercase match), or `None` for a name not known.
    pub fn parse(name: &str) -> Option<Usage> {
        USAGE_NAMES.iter().find(|(n, _)| *n == name).map(|(_, u)| *u)
    }
}

/// The KeyUsage bits and extended key usages a certificate gets.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Usages {
    /// KeyUsage bits to set.
    pub key: BTreeSet<KeyUsage>,
    /// Extended key usage OIDs, in the order requested, without repeats.
    pub extended: Vec<&'static str>,
}

/// A usage name that neither cert-manager nor Kubernetes defines; holds the name as given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownUsage(pub String);

impl std::error::Error for UnknownUsage {}

impl fmt::Display for UnknownUsage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown usage {:?}", self.0)
    }
}

impl Usages {
    /// Resolves usage names as cert-manager does: none means `digital
    /// signature` and `key encipherment`; a CA also gets `cert sign`.
    pub fn from_names<S: AsRef<str>>(names: &[S], is_ca: bool) -> Result<Self, UnknownUsage> {
        let mut usages = Usages::default();
        if names.is_empty() {
            usages.key.extend([KeyUsage::DigitalSignature, KeyUsage::KeyEncipherment]);
        }
        for name in names {
            match Usage::parse(name.as_ref()).ok_or_else(|| UnknownUsage(name.as_ref().to_string()))? {
                Usage::Key(k) => {
                    usages.key.insert(k);
                }
                Usage::Extended(oid) => {
                    if !usages.extended.contains(&oid) {
                        usages.extended.push(oid);
                    }
                }
            }
        }
        if is_ca {
            usages.key.insert(KeyUsage::CertSign);
        }
        Ok(usages)
    }

    /// The extended key usage OIDs as an owned set, to compare with what a CSR requests.
    pub fn extended_set(&self) -> BTreeSet<String> {
        self.extended.iter().map(|s| s.to_string()).collect()
    }

    /// The KeyUsage bits in rcgen's form, for building a certificate.
    pub fn rcgen_key_usages(&self) -> Vec<rcgen::KeyUsagePurpose> {
        self.key.iter().map(|k| k.to_rcgen()).collect()
    }

    /// The extended key usages in rcgen's form, in order; OIDs that rcgen has no name for go as their arcs.
    pub fn rcgen_extended_key_usages(&self) -> Vec<rcgen::ExtendedKeyUsagePurpose> {
        use rcgen::ExtendedKeyUsagePurpose as E;
        self.extended
            .iter()
            .map(|oid| match *oid {
                EKU_ANY => E::Any,
                EKU_SERVER_AUTH => E::ServerAuth,
                EKU_CLIENT_AUTH => E::ClientAuth,
                EKU_CODE_SIGNING => E::CodeSigning,
                EKU_EMAIL_PROTECTION => E::EmailProtection,
                EKU_TIME_STAMPING => E::TimeStamping,
                EKU_OCSP_SIGNING => E::OcspSigning,
                other => E::Other(other.split('.').filter_map(|arc| arc.parse().ok()).collect()),
            })
            .collect()
    }

    /// The usage names, for messages.
    pub fn describe(&self) -> String {
        let mut names: Vec<&str> = Vec::new();
        for (name, usage) in USAGE_NAMES {
            let present = match usage {
                Usage::Key(k) => self.key.contains(k),
                Usage::Extended(oid) => self.extended.contains(oid),
            };
            // "signing" and "s/mime" are aliases; name each usage once.
            if present && *name != "signing" && *name != "s/mime" {
                names.push(name);
            }
        }
        names.join(", ")
    }
}

/// The extended key usage OIDs in a parsed extension.
pub fn extended_from_x509(eku: &x509_parser::extensions::ExtendedKeyUsage<'_>) -> BTreeSet<String> {
    let mut set: BTreeSet<String> = [
        (eku.any, EKU_ANY),
        (eku.server_auth, EKU_SERVER_AUTH),
        (eku.client_auth, EKU_CLIENT_AUTH),
        (eku.code_signing, EKU_CODE_SIGNING),
        (eku.email_protection, EKU_EMAIL_PROTECTION),
        (eku.time_stamping, EKU_TIME_STAMPING),
        (eku.ocsp_signing, EKU_OCSP_SIGNING),
    ]
    .into_iter()
    .filter(|(set, _)| *set)
    .map(|(_, oid)| oid.to_string())
    .collect();
    set.extend(eku.other.iter().map(super::csr::oid_text));
    set
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_usages_default_to_signature_and_encipherment() {
        let u = Usages::from_names::<&str>(&[], false).unwrap();
        assert_eq!(u.key, [KeyUsage::DigitalSignature, KeyUsage::KeyEncipherment].into());
        assert!(u.extended.is_empty());
    }

    #[test]
    fn ca_adds_cert_sign_and_aliases_collapse() {
        let u = Usages::from_names(&["signing", "digital signature", "server auth", "server auth"], true).unwrap();
        assert_eq!(u.key, [KeyUsage::DigitalSignature, KeyUsage::CertSign].into());
        assert_eq!(u.extended, vec![EKU_SERVER_AUTH]);
        assert_eq!(u.describe(), "digital signature, cert sign, server auth");
    }

    #[test]
    fn unknown_usage_is_named() {
        let e = Usages::from_names(&["server auth", "teleport"], false).unwrap_err();
        assert_eq!(e.to_string(), "unknown usage \"teleport\"");
    }

    #[test]
    fn every_extended_usage_maps_to_its_oid_in_rcgen() {
        let names = ["ipsec tunnel", "microsoft sgc", "client auth"];
        let u = Usages::from_names(&names, false).unwrap();
        let ekus = u.rcgen_extended_key_usages();
        assert_eq!(ekus[0], rcgen::ExtendedKeyUsagePurpose::Other(vec![1, 3, 6, 1, 5, 5, 7, 3, 6]));
        assert_eq!(ekus[1], rcgen::ExtendedKeyUsagePurpose::Other(vec![1, 3, 6, 1, 4, 1, 311, 10, 3, 3]));
        assert_eq!(ekus[2], rcgen::ExtendedKeyUsagePurpose::ClientAuth);
    }
}
