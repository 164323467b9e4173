//! Signing one request (a CertificateRequest or a Kubernetes CSR) for an
//! issuer: parse and check the CSR, apply the policy, issue, and assemble
//! what the request's status gets.

use super::constraints::ConstraintsError;
use super::policy::{Asked, Policy};
use super::signer::{CaAllowance, IssuingCa};
use super::tenancy::Tenancy;
use super::violation::Violations;
use crate::duration;
use crate::names::is_dns_name;
use crate::pki::authority::parse_certificate;
use crate::pki::template::{CertificateTemplate, issue_from_template};
use crate::pki::usage::{KeyUsage, UnknownUsage, Usages};
use crate::pki::{CertificateSigningRequest, PkiError, pem, rfc3339};
use rustls_pki_types::CertificateDer;
use thiserror::Error;
use time::{Duration, OffsetDateTime};

/// cert-manager's default when a request names no duration.
pub const DEFAULT_DURATION: Duration = Duration::days(90);

pub use super::policy::MIN_DURATION;

/// One request to sign.
#[derive(Clone, Debug)]
pub struct SigningRequest<'a> {
    /// The PEM CSR.
    pub csr_pem: &'a [u8],
    /// Whether a CA certificate is asked for.
    pub is_ca: bool,
    /// The usages asked for, by name (`digital signature`, `server auth`, ...).
    pub usages: &'a [String],
    /// `None` means [`DEFAULT_DURATION`].
    pub duration: Option<Duration>,
    /// CertificateRequests must carry KeyUsage, ExtendedKeyUsage and
    /// BasicConstraints extensions (if any) that agree with the spec.
    /// Kubernetes CSRs take usages from the spec alone.
    pub csr_extensions_must_match: bool,
    /// The requester's namespace: a CertificateRequest's, or a Kubernetes
    /// CSR requester's service account namespace (`None` for other users).
    pub namespace: Option<&'a str>,
}

/// What a request's status gets.
#[derive(Clone, Debug)]
pub struct Signed {
    /// The leaf, then every CA certificate up to (excluding) the root.
    pub chain_pem: String,
    /// The root the chain ends at.
    pub ca_pem: String,
    /// The certificate's NotAfter.
    pub not_after: OffsetDateTime,
    /// The certificate's serial number, as lowercase hex.
    pub serial_hex: String,
    /// Why the certificate is shorter than requested, if it is.
    pub shortened: Option<String>,
}

/// Why a request was not signed.
#[derive(Debug, Error)]
pub enum SignError {
    /// The request can never be signed as it is.
    #[error(transparent)]
    Invalid(#[from] InvalidRequest),
    /// The issuer's policy does not allow what the request asks for.
    #[error("denied by the issuer's policy: {0}")]
    Policy(Violations),
    /// The signer cannot sign right now (expired, or its self-check failed); retry.
    #[error("{signer} cannot sign: {error}")]
    Unavailable {
        /// The signer, described ("the root", "mesh X's intermediate").
        signer: String,
        /// Why.
        error: PkiError,
    },
}

// Not `#[from]`: the message already says the violations, so they are not also a `source()`.
impl From<Violations> for SignError {
    fn from(violations: Violations) -> Self {
        SignError::Policy(violations)
    }
}

/// Why a request can never be signed as it is, whatever the policy.
#[derive(Debug, Error)]
pub enum InvalidRequest {
    /// The CSR does not parse or its signature does not verify.
    #[error("the CSR is invalid: {0}")]
    Csr(PkiError),
    /// The CSR names nothing to certify.
    #[error("the CSR has neither a subject nor subject alternative names")]
    NoNames,
    /// A DNS SAN is not a host name.
    #[error("DNS name {:?} is not a valid host name", pem::printable(.0, 200))]
    DnsName(String),
    /// A usage name meshroot does not know.
    #[error(transparent)]
    Usage(#[from] UnknownUsage),
    /// keyCertSign asked for a certificate that is not a CA.
    #[error("usage cert sign needs isCA: true (RFC 5280 4.2.1.3: keyCertSign only with CA:TRUE)")]
    CertSignWithoutCa,
    /// The requested duration is below [`MIN_DURATION`].
    #[error("the duration {} is shorter than the minimum of 10m", duration::exact(*.0))]
    TooShort(Duration),
    /// The requested duration is above [`duration::MAX`].
    #[error("the duration {} is longer than the maximum of 100 years", duration::exact(*.0))]
    TooLong(Duration),
    /// A CA asked of a signer whose path length constraint forbids one.
    #[error("{0} cannot issue CA certificates (path length constraint); use an issuer that signs with the root")]
    CaNotIssuable(String),
    /// The requested subject is a signer's name.
    #[error(
        "the requested subject {:?} is the name of a CA in the signing chain ({signer}); a certificate may not \
         carry a signer's name",
        pem::printable(.subject, 200)
    )]
    SubjectIsSigner {
        /// The requested subject.
        subject: String,
        /// The signer, described.
        signer: String,
    },
    /// The CSR's basicConstraints disagree with the request's isCA.
    #[error("the CSR's basicConstraints say CA:{} but spec.isCA is {spec}", if *.csr { "TRUE" } else { "FALSE" })]
    CsrBasicConstraints {
        /// The CSR's cA flag.
        csr: bool,
        /// The request's isCA.
        spec: bool,
    },
    /// The CSR's key usages disagree with the request's.
    #[error("the CSR's key usages ({csr}) do not match the requested ones ({spec})")]
    CsrKeyUsages {
        /// The CSR's, described.
        csr: String,
        /// The request's, described.
        spec: String,
    },
    /// The CSR's extended key usages disagree with the request's.
    #[error("the CSR's extended key usages ({csr}) do not match the requested ones ({spec})")]
    CsrExtendedKeyUsages {
        /// The CSR's OIDs, comma-separated.
        csr: String,
        /// The request's OIDs, comma-separated.
        spec: String,
    },
    /// The name constraints for the CA do not encode.
    #[error("encoding name constraints: {0}")]
    NameConstraints(der::Error),
    /// The certificate could not be made from the request.
    #[error(transparent)]
    Template(PkiError),
}

/// Signs `req` with `ca` under `policy`. Checks the CSR (its names, usages and requested lifetime, from
/// [`MIN_DURATION`] to 100 years; its subject may not be a signer's name), then the policy; a CA gets name
/// constraints from the policy and the path length the policy and the signer's chain allow. The lifetime is
/// cut to the policy's maxDuration and the signer's NotAfter, and [`Signed::shortened`] says so.
pub fn sign(
    req: &SigningRequest<'_>,
    policy: &Policy,
    ca: &IssuingCa,
    tenancy: &Tenancy,
    now: OffsetDateTime,
) -> Result<Signed, SignError> {
    let invalid = |why: InvalidRequest| Err(SignError::Invalid(why));
    let csr = CertificateSigningRequest::from_pem(req.csr_pem).map_err(InvalidRequest::Csr)?;
    let names = csr.names();
    if csr.subject_is_empty() && names.is_empty() {
        return invalid(InvalidRequest::NoNames);
    }
    for dns in &names.dns {
        if !is_dns_name(dns) {
            return invalid(InvalidRequest::DnsName(dns.clone()));
        }
    }
    let usages = Usages::from_names(req.usages, req.is_ca).map_err(InvalidRequest::Usage)?;
    if !req.is_ca && usages.key.contains(&KeyUsage::CertSign) {
        return invalid(InvalidRequest::CertSignWithoutCa);
    }
    if req.csr_extensions_must_match {
        check_csr_extensions(&csr, req.is_ca, &usages)?;
    }
    let lifetime = req.duration.unwrap_or(DEFAULT_DURATION);
    if lifetime < MIN_DURATION {
        return invalid(InvalidRequest::TooShort(lifetime));
    }
    if lifetime > duration::MAX {
        return invalid(InvalidRequest::TooLong(lifetime));
    }
    check_subject_is_not_a_signer(&csr, ca)?;
    policy.check(&Asked { names, subject: csr.subject_attributes(), is_ca: req.is_ca, usages: &usages }, tenancy)?;
    let name_constraints = if req.is_ca {
        Some(super::constraints::for_ca(policy, tenancy).map_err(|e| match e {
            ConstraintsError::Denied(violations) => SignError::Policy(violations),
            ConstraintsError::Encoding(e) => InvalidRequest::NameConstraints(e).into(),
        })?)
    } else {
        None
    };
    let max_path_length = if req.is_ca {
        match ca.ca_allowance() {
            CaAllowance::Forbidden => {
                return invalid(InvalidRequest::CaNotIssuable(ca.description().to_string()));
            }
            CaAllowance::UpTo(n) => Some(n.min(policy.max_path_length)),
            CaAllowance::Unlimited => Some(policy.max_path_length),
        }
    } else {
        None
    };

    let mut effective = lifetime;
    let mut shortened = None;
    if let Some(max) = policy.max_duration.filter(|max| *max < lifetime) {
        effective = max;
        shortened = Some(format!("the issuer's maxDuration is {}", duration::exact(max)));
    }
    let template = CertificateTemplate {
        csr: &csr,
        is_ca: req.is_ca,
        max_path_length,
        name_constraints: name_constraints.as_deref(),
        usages: &usages,
        lifetime: effective,
    };
    let issued = issue_from_template(ca.authority(), &template, now).map_err(|e| match e {
        PkiError::Expired { .. } | PkiError::SelfCheck(_) | PkiError::Signing(_) => {
            SignError::Unavailable { signer: ca.description().to_string(), error: e }
        }
        other => InvalidRequest::Template(other).into(),
    })?;
    let requested_end = now.replace_nanosecond(0).unwrap_or(now).checked_add(effective).unwrap_or(issued.not_after);
    if issued.not_after < requested_end {
        shortened = Some(format!("{} expires at {}", ca.description(), rfc3339(issued.not_after)));
    }
    let mut chain_pem = issued.pem.clone();
    for cert in ca.path() {
        chain_pem.push_str(&pem::encode_certificate(cert));
    }
    Ok(Signed {
        chain_pem,
        ca_pem: ca.root_pem(),
        not_after: issued.not_after,
        serial_hex: issued.serial_hex,
        shortened: shortened.map(|why| {
            format!("valid until {} instead of {} because {why}", rfc3339(issued.not_after), rfc3339(requested_end))
        }),
    })
}

/// RFC 5280 forbids nothing here, but a certificate whose subject is its
/// issuer's (or any CA's above it) name confuses path building and reads as
/// that CA to people and tools that match names.
fn check_subject_is_not_a_signer(csr: &CertificateSigningRequest, ca: &IssuingCa) -> Result<(), SignError> {
    if csr.subject_is_empty() {
        return Ok(());
    }
    let requested = canonical_name(csr.subject());
    let signers = std::iter::once(ca.authority().certificate()).chain(ca.path()).chain(std::iter::once(ca.root()));
    for cert in signers {
        let Ok(parsed) = parse_certificate(cert as &CertificateDer<'_>) else { continue };
        let subject = parsed.subject();
        if subject.as_raw() == csr.subject_der() || canonical_name(&subject.to_string()) == requested {
            return Err(InvalidRequest::SubjectIsSigner {
                subject: csr.subject().to_string(),
                signer: ca.description().to_string(),
            }
            .into());
        }
    }
    Ok(())
}

/// A distinguished name compared as verifiers do (RFC 4518, roughly): case
/// folded, each attribute trimmed, inner runs of spaces collapsed.
fn canonical_name(rfc4514: &str) -> String {
    rfc4514
        .to_lowercase()
        .split([',', '+'])
        .map(|part| part.split_whitespace().collect::<Vec<_>>().join(" ").replace(" =", "=").replace("= ", "="))
        .collect::<Vec<_>>()
        .join(",")
}

/// cert-manager's rule: CSR extensions, where present, must say exactly
/// what the request's spec says.
fn check_csr_extensions(csr: &CertificateSigningRequest, is_ca: bool, usages: &Usages) -> Result<(), SignError> {
    if let Some(ca) = csr.basic_constraints_ca()
        && ca != is_ca
    {
        return Err(InvalidRequest::CsrBasicConstraints { csr: ca, spec: is_ca }.into());
    }
    if let Some(key) = csr.key_usage()
        && *key != usages.key
    {
        let csr_usages = Usages { key: key.clone(), extended: Vec::new() };
        let spec_usages = Usages { key: usages.key.clone(), extended: Vec::new() };
        return Err(InvalidRequest::CsrKeyUsages { csr: csr_usages.describe(), spec: spec_usages.describe() }.into());
    }
    if let Some(extended) = csr.extended_key_usage()
        && *extended != usages.extended_set()
    {
        return Err(InvalidRequest::CsrExtendedKeyUsages {
            csr: extended.iter().cloned().collect::<Vec<_>>().join(", "),
            spec: usages.extended.join(", "),
        }
        .into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::issuer::{IssuerScope, SignerRef};
    use crate::issuer::signer::{CaAllowance, NotGranted, SignerProblem, SignerUnavailable, resolve};
    use crate::issuer::tenancy::{OwnService, Tenancy};
    use crate::issuer::violation::Violation;
    use crate::mesh::MeshRegistry;
    use crate::pki::RootState;
    use crate::pki::{Authority, CaSpec, KeyAlgorithm, PrivateKey, TrustBundle};
    use std::sync::Arc;

    const CLUSTER: IssuerScope<'static> = IssuerScope::Cluster { allowed_namespaces: &[] };

    fn root_state(lifetime: Duration) -> RootState {
        let root = Authority::new_root(&CaSpec::root(lifetime), OffsetDateTime::now_utc()).unwrap();
        let bundle = TrustBundle::new(vec![root.certificate().clone()]).unwrap();
        RootState { authority: Some(Arc::new(root)), bundle: Arc::new(bundle), chain: Default::default() }
    }

    fn tenancy() -> Tenancy {
        let mesh: crate::api::mesh::MeshSpec = serde_saphyr::from_str(
            "trustDomain: cluster.local\nistiod: {namespace: istio-system}\nissuerNamespaces: [team-a]",
        )
        .unwrap();
        let own = OwnService { namespace: "meshroot".into(), name: "meshroot".into(), extra_names: vec![] };
        Tenancy::new([("default", &mesh)], &own)
    }

    fn by_root(root: &RootState) -> IssuingCa {
        resolve(&SignerRef { root: true, mesh: None }, CLUSTER, root, &MeshRegistry::default(), &tenancy()).unwrap()
    }

    fn policy(yaml: &str) -> Policy {
        Policy::from_spec(&serde_saphyr::from_str(yaml).unwrap()).unwrap()
    }

    fn open() -> Policy {
        policy("allowedDNSNames: ['**.example.com']")
    }

    fn dns_csr(name: &str) -> String {
        csr_with(name, rcgen::DistinguishedName::new())
    }

    fn csr_with(name: &str, subject: rcgen::DistinguishedName) -> String {
        let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
        params.distinguished_name = subject;
        params.serialize_request(&key).unwrap().pem().unwrap()
    }

    fn request<'a>(csr: &'a str, duration: Option<Duration>, is_ca: bool) -> SigningRequest<'a> {
        SigningRequest {
            csr_pem: csr.as_bytes(),
            is_ca,
            usages: &[],
            duration,
            csr_extensions_must_match: true,
            namespace: Some("team-a"),
        }
    }

    fn leaf(signed: &Signed) -> Vec<u8> {
        pem::decode_certificates(signed.chain_pem.as_bytes(), 1 << 20).unwrap()[0].to_vec()
    }

    #[test]
    fn not_after_is_clamped_to_the_signer_and_the_reason_given() {
        let root = root_state(Duration::days(30));
        let ca = by_root(&root);
        let csr = dns_csr("a.example.com");
        let now = OffsetDateTime::now_utc();
        let signed = sign(&request(&csr, None, false), &open(), &ca, &tenancy(), now).unwrap();
        assert_eq!(signed.not_after, ca.authority().not_after());
        let why = signed.shortened.unwrap();
        assert!(why.contains("because the root expires at"), "{why}");
        let short = sign(&request(&csr, Some(Duration::days(1)), false), &open(), &ca, &tenancy(), now).unwrap();
        assert!(short.shortened.is_none());
        assert_eq!(short.not_after, now.replace_nanosecond(0).unwrap() + Duration::days(1));
    }

    #[test]
    fn duration_limits_are_inclusive() {
        let root = root_state(Duration::days(365));
        let ca = by_root(&root);
        let csr = dns_csr("a.example.com");
        let now = OffsetDateTime::now_utc();
        let sign_for = |d: Duration, p: &Policy| sign(&request(&csr, Some(d), false), p, &ca, &tenancy(), now);
        // Exactly the shortest lifetime is issued; a second less is refused.
        assert!(sign_for(MIN_DURATION, &open()).is_ok());
        let e = sign_for(MIN_DURATION - Duration::SECOND, &open()).unwrap_err();
        assert!(matches!(e, SignError::Invalid(InvalidRequest::TooShort(_))), "{e:?}");
        // Exactly 100 years is a request to shorten, not a refusal.
        assert!(sign_for(duration::MAX, &open()).unwrap().shortened.is_some());
        // A request for exactly maxDuration is not "shortened".
        let p = policy("allowedDNSNames: ['a.example.com']\nmaxDuration: 48h");
        assert!(sign_for(Duration::hours(48), &p).unwrap().shortened.is_none());
    }

    /// cert-manager's rule: what the CSR's extensions say must be what the request says.
    #[test]
    fn csr_extensions_that_disagree_with_the_request_are_refused() {
        use rcgen::{BasicConstraints, ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose};
        let root = root_state(Duration::days(365));
        let ca = by_root(&root);
        let p = policy(
            "allowCA: true\nallowedDNSNames: ['a.example.com']\nallowedUsages: [digital signature, key encipherment, server auth, client auth, cert sign]",
        );
        let csr = |edit: &dyn Fn(&mut rcgen::CertificateParams)| {
            let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
            let mut params = rcgen::CertificateParams::new(vec!["a.example.com".to_string()]).unwrap();
            params.distinguished_name = rcgen::DistinguishedName::new();
            edit(&mut params);
            params.serialize_request(&key).unwrap().pem().unwrap()
        };
        let now = OffsetDateTime::now_utc();
        let usages: Vec<String> = ["digital signature", "key encipherment", "server auth"].map(String::from).to_vec();
        let ask = |pem: &str, is_ca: bool| {
            let req = SigningRequest { usages: &usages, ..request(pem, None, is_ca) };
            sign(&req, &p, &ca, &tenancy(), now)
        };
        // Extensions that say exactly what the request says pass.
        let agreeing = csr(&|c| {
            c.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
            c.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            c.is_ca = IsCa::ExplicitNoCa;
        });
        ask(&agreeing, false).unwrap();
        let ca_flag = csr(&|c| c.is_ca = IsCa::Ca(BasicConstraints::Unconstrained));
        let e = ask(&ca_flag, false).unwrap_err();
        assert!(
            matches!(e, SignError::Invalid(InvalidRequest::CsrBasicConstraints { csr: true, spec: false })),
            "{e:?}"
        );
        let key_usages = csr(&|c| c.key_usages = vec![KeyUsagePurpose::DigitalSignature]);
        let e = ask(&key_usages, false).unwrap_err();
        assert!(matches!(e, SignError::Invalid(InvalidRequest::CsrKeyUsages { .. })), "{e:?}");
        let extended = csr(&|c| c.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth]);
        let e = ask(&extended, false).unwrap_err();
        assert!(matches!(e, SignError::Invalid(InvalidRequest::CsrExtendedKeyUsages { .. })), "{e:?}");
    }

    #[test]
    fn max_duration_shortens_the_certificate_itself() {
        let root = root_state(Duration::days(365));
        let ca = by_root(&root);
        let csr = dns_csr("a.example.com");
        let now = OffsetDateTime::now_utc();
        let p = policy("allowedDNSNames: ['a.example.com']\nmaxDuration: 48h");
        let signed = sign(&request(&csr, Some(Duration::days(30)), false), &p, &ca, &tenancy(), now).unwrap();
        let der = CertificateDer::from(leaf(&signed));
        let cert = parse_certificate(&der).unwrap();
        let lifetime = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
        assert_eq!(lifetime, 48 * 3600, "NotAfter - NotBefore must be the issuer's maxDuration");
        assert!(signed.shortened.unwrap().contains("maxDuration is 2days"));
    }

    #[test]
    fn absurd_durations_are_refused_without_panicking() {
        let root = root_state(Duration::days(30));
        let ca = by_root(&root);
        let csr = dns_csr("a.example.com");
        for years in [101i64, 8000, 1_000_000] {
            let d = Duration::days(365 * years);
            let e =
                sign(&request(&csr, Some(d), false), &open(), &ca, &tenancy(), OffsetDateTime::now_utc()).unwrap_err();
            assert!(matches!(&e, SignError::Invalid(InvalidRequest::TooLong(asked)) if *asked == d), "{e:?}");
            assert!(e.to_string().contains("longer than the maximum of 100 years"), "{e}");
        }
        let e = sign(&request(&csr, Some(Duration::MAX), false), &open(), &ca, &tenancy(), OffsetDateTime::now_utc());
        assert!(e.is_err());
    }

    #[test]
    fn an_expired_signer_is_unavailable_not_invalid() {
        let root = root_state(Duration::days(1));
        let ca = by_root(&root);
        let csr = dns_csr("a.example.com");
        let later = OffsetDateTime::now_utc() + Duration::days(2);
        let e = sign(&request(&csr, None, false), &open(), &ca, &tenancy(), later).unwrap_err();
        assert!(matches!(e, SignError::Unavailable { error: PkiError::Expired { .. }, .. }), "{e:?}");
    }

    #[test]
    fn issued_cas_carry_a_path_length_and_name_constraints() {
        let root = root_state(Duration::days(30));
        let ca = by_root(&root);
        assert_eq!(ca.ca_allowance(), CaAllowance::Unlimited);
        let p = policy("allowCA: true\nmaxPathLength: 2\nallowedDNSNames: ['*.apps.example.com']");
        let csr = dns_csr("ca.apps.example.com");
        let signed = sign(&request(&csr, None, true), &p, &ca, &tenancy(), OffsetDateTime::now_utc()).unwrap();
        let der = CertificateDer::from(leaf(&signed));
        let cert = parse_certificate(&der).unwrap();
        assert_eq!(cert.basic_constraints().unwrap().unwrap().value.path_len_constraint, Some(2));
        let nc = cert.name_constraints().unwrap().unwrap();
        assert!(nc.critical);
        let permitted = nc.value.permitted_subtrees.as_ref().unwrap();
        assert!(
            permitted.iter().any(|s| s.base == x509_parser::extensions::GeneralName::DNSName("apps.example.com")),
            "{permitted:?}"
        );
    }

    #[test]
    fn a_ca_that_could_sign_istiod_is_refused() {
        let root = root_state(Duration::days(30));
        let ca = by_root(&root);
        let p = policy("allowCA: true\nallowedDNSNames: ['**.svc']");
        let csr = dns_csr("ca.team-a.svc");
        let e = sign(&request(&csr, None, true), &p, &ca, &tenancy(), OffsetDateTime::now_utc()).unwrap_err();
        assert!(
            matches!(&e, SignError::Policy(v) if matches!(v.0.as_slice(), [Violation::CaServiceNames { .. }])),
            "{e:?}"
        );
        assert!(e.to_string().contains("in-cluster Service names"), "{e}");
    }

    #[test]
    fn cert_sign_on_a_leaf_is_refused() {
        let root = root_state(Duration::days(30));
        let ca = by_root(&root);
        let csr = dns_csr("a.example.com");
        let usages = ["cert sign".to_string(), "digital signature".to_string()];
        let mut req = request(&csr, None, false);
        req.usages = &usages;
        req.csr_extensions_must_match = false;
        let p = policy("allowedDNSNames: ['a.example.com']\nallowedUsages: ['cert sign', 'digital signature']");
        let e = sign(&req, &p, &ca, &tenancy(), OffsetDateTime::now_utc()).unwrap_err();
        assert!(matches!(&e, SignError::Invalid(InvalidRequest::CertSignWithoutCa)), "{e:?}");
    }

    /// A validly signed CSR whose SAN extension's OID is padded: `55 1d 80 11` reads as
    /// 2.5.29.17 in dotted text but is not the SAN's encoding (`55 1d 11`), so x509-parser and
    /// every verifier see an unknown extension. Made with extension 2.5.29.145 (`55 1d 81 11`),
    /// patched, and signed again.
    fn csr_with_a_padded_san_oid(common_name: &str, uri: &str) -> String {
        use x509_parser::certification_request::X509CertificationRequest;
        use x509_parser::prelude::FromDer;
        let tlv = |tag: u8, content: &[u8]| {
            let mut out = vec![tag, u8::try_from(content.len()).unwrap()];
            out.extend_from_slice(content);
            out
        };
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name.push(rcgen::DnType::CommonName, common_name);
        let general_names = tlv(0x30, &tlv(0x86, uri.as_bytes()));
        params.custom_extensions = vec![rcgen::CustomExtension::from_oid_content(&[2, 5, 29, 145], general_names)];
        let mut der = params.serialize_request(&key).unwrap().der().to_vec();
        let at = der.windows(4).position(|w| w == [0x55, 0x1d, 0x81, 0x11]).unwrap();
        der[at + 2] = 0x80;
        let (_, csr) = X509CertificationRequest::from_der(&der).unwrap();
        let info = csr.certification_request_info.raw;
        let signature = rcgen::SigningKey::sign(&key, info).unwrap();
        let ecdsa_with_sha256 = [0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];
        let bits = tlv(0x03, &[&[0u8][..], &signature].concat());
        let body = [info, &ecdsa_with_sha256[..], &bits].concat();
        let mut outer = vec![0x30, 0x82];
        outer.extend_from_slice(&u16::try_from(body.len()).unwrap().to_be_bytes());
        outer.extend_from_slice(&body);
        pem::encode(pem::CERTIFICATE_REQUEST, &outer)
    }

    /// Before OIDs were compared as encoded, meshroot took the padded extension for the SAN by
    /// its dotted text and copied its names into the certificate, while the policy, reading
    /// x509-parser's parse, saw none: a namespace allowed one common name could get istiod's
    /// identity. Such a CSR is now refused before anything is read from it.
    #[test]
    fn a_san_under_a_padded_oid_is_refused_not_copied() {
        let root = root_state(Duration::days(30));
        let ca = by_root(&root);
        let policy = policy("allowedCommonNames: [app.example.com]\nallowedDNSNames: ['**.example.com']");
        let istiod = "spiffe://cluster.local/ns/istio-system/sa/istiod";
        let forged = csr_with_a_padded_san_oid("app.example.com", istiod);
        let now = OffsetDateTime::now_utc();
        let refused = sign(&request(&forged, None, false), &policy, &ca, &tenancy(), now).unwrap_err();
        assert!(refused.to_string().contains("OID (55 1d 80 11) is not in canonical DER"), "{refused}");
        // The same CSR with the SAN's own OID is judged on its names.
        let honest = {
            let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
            let mut params = rcgen::CertificateParams::default();
            params.distinguished_name.push(rcgen::DnType::CommonName, "app.example.com");
            params.subject_alt_names = vec![rcgen::SanType::URI(istiod.try_into().unwrap())];
            params.serialize_request(&key).unwrap().pem().unwrap()
        };
        let refused = sign(&request(&honest, None, false), &policy, &ca, &tenancy(), now).unwrap_err();
        assert!(matches!(refused, SignError::Policy(_)), "{refused}");
    }

    #[test]
    fn a_subject_equal_to_a_signer_name_is_refused() {
        let root = root_state(Duration::days(30));
        let ca = by_root(&root);
        let root_subject = parse_certificate(ca.root()).unwrap().subject().to_string();
        let cn = root_subject.strip_prefix("CN=").unwrap_or(&root_subject).to_string();
        let mut dn = rcgen::DistinguishedName::new();
        for part in root_subject.split(", ") {
            match part.split_once('=') {
                Some(("CN", v)) => dn.push(rcgen::DnType::CommonName, v),
                Some(("O", v)) => dn.push(rcgen::DnType::OrganizationName, v),
                _ => {}
            }
        }
        let csr = csr_with("a.example.com", dn);
        let p = policy(&format!(
            "allowedDNSNames: ['a.example.com']\nallowedCommonNames: ['{cn}', '*']\nallowedSubjectAttributes: {{O: ['*']}}"
        ));
        let e = sign(&request(&csr, None, false), &p, &ca, &tenancy(), OffsetDateTime::now_utc()).unwrap_err();
        assert!(matches!(&e, SignError::Invalid(InvalidRequest::SubjectIsSigner { .. })), "{e:?}");
        assert!(e.to_string().contains("is the name of a CA in the signing chain"), "{e}");

        // The same name in other case and spacing is the same name to verifiers: refused too.
        let mut shouted = rcgen::DistinguishedName::new();
        shouted.push(rcgen::DnType::OrganizationName, "MESHROOT");
        let root_cn = root_subject.split(", ").find_map(|part| part.strip_prefix("CN=")).unwrap();
        shouted.push(rcgen::DnType::CommonName, format!("  {}", root_cn.to_uppercase()).as_str());
        let csr = csr_with("a.example.com", shouted);
        let p = policy(
            "allowedDNSNames: ['a.example.com']\nallowedCommonNames: ['*']\nallowedSubjectAttributes: {O: ['*']}",
        );
        let e = sign(&request(&csr, None, false), &p, &ca, &tenancy(), OffsetDateTime::now_utc()).unwrap_err();
        assert!(matches!(&e, SignError::Invalid(InvalidRequest::SubjectIsSigner { .. })), "{e:?}");
        // Another name is signed, and the certificate carries it.
        let mut other = rcgen::DistinguishedName::new();
        other.push(rcgen::DnType::OrganizationName, "meshroot");
        other.push(rcgen::DnType::CommonName, "a.example.com");
        let csr = csr_with("a.example.com", other);
        let signed = sign(&request(&csr, None, false), &p, &ca, &tenancy(), OffsetDateTime::now_utc()).unwrap();
        let der = CertificateDer::from(leaf(&signed));
        assert_eq!(parse_certificate(&der).unwrap().subject().to_string(), "O=meshroot, CN=a.example.com");
    }

    #[test]
    fn namespaced_issuers_never_sign_with_the_root_or_an_ungranted_mesh() {
        let root = root_state(Duration::days(30));
        let t = tenancy();
        let registry = MeshRegistry::default();
        let team_b = IssuerScope::Namespaced { namespace: "team-b" };
        let e = resolve(&SignerRef { root: true, mesh: None }, team_b, &root, &registry, &t).unwrap_err();
        assert_eq!(e, SignerProblem::NotGranted(NotGranted::RootToNamespaced));
        let mesh = SignerRef { root: false, mesh: Some("default".into()) };
        let e = resolve(&mesh, team_b, &root, &registry, &t).unwrap_err();
        let expected = NotGranted::MeshToNamespace { mesh: "default".into(), namespace: "team-b".into() };
        assert_eq!(e, SignerProblem::NotGranted(expected));
        // team-a is granted: it gets past the grant (the mesh is not served here).
        let e = resolve(&mesh, IssuerScope::Namespaced { namespace: "team-a" }, &root, &registry, &t).unwrap_err();
        assert_eq!(e, SignerProblem::Unavailable(SignerUnavailable::NoSuchMesh("default".into())));
    }

    /// A namespaced Issuer's identities are held to the trust domain its signer carries.
    #[test]
    fn a_mesh_signer_carries_its_trust_domain_and_the_root_none() {
        use crate::mesh::Mesh;
        let root = root_state(Duration::days(30));
        let authority = root.authority.clone().unwrap();
        let intermediate = authority
            .new_intermediate(&CaSpec::intermediate("default", Duration::days(10)), OffsetDateTime::now_utc())
            .unwrap();
        let chain = crate::pki::SigningChain::new(intermediate, vec![], (*root.bundle).clone()).unwrap();
        let registry =
            MeshRegistry::new(vec![Arc::new(Mesh::of_all_namespaces("default", "mesh.example", Arc::new(chain)))]);
        let mesh = SignerRef { root: false, mesh: Some("default".into()) };
        let team_a = IssuerScope::Namespaced { namespace: "team-a" };
        assert_eq!(resolve(&mesh, team_a, &root, &registry, &tenancy()).unwrap().trust_domain(), Some("mesh.example"));
        let by_root = resolve(&SignerRef { root: true, mesh: None }, CLUSTER, &root, &registry, &tenancy()).unwrap();
        assert_eq!(by_root.trust_domain(), None);
    }

    #[test]
    fn names_compare_as_verifiers_compare_them() {
        assert_eq!(
            canonical_name("O=meshroot, CN=meshroot root CA"),
            canonical_name("o=Meshroot,CN=meshroot  root CA ")
        );
        assert_ne!(canonical_name("CN=meshroot root CA"), canonical_name("CN=meshroot rootCA"));
    }

    #[test]
    fn host_names() {
        for good in ["a", "example.com", "*.example.com", &format!("{}.com", "a".repeat(63)), "_acme.x"] {
            assert!(is_dns_name(good), "{good}");
        }
        for bad in ["", "*", "a.*.com", "a..b", "-a.com", "a-.com", &format!("{}.com", "a".repeat(64)), "a b", "é.com"]
        {
            assert!(!is_dns_name(bad), "{bad}");
        }
    }
}
