//! Signing one request (a CertificateRequest or a Kubernetes CSR) for an
//! issuer: parse and check the CSR, apply the policy, issue, and assemble
//! what the request's status gets.

use super::policy::{Asked, Policy};
use super::signer::{CaAllowance, IssuingCa};
use crate::pki::template::{CertificateTemplate, issue_from_template};
use crate::pki::usage::Usages;
use crate::pki::{CertificateSigningRequest, PkiError, pem, rfc3339};
use thiserror::Error;
use time::{Duration, OffsetDateTime};

/// cert-manager's default when a request names no duration.
pub const DEFAULT_DURATION: Duration = Duration::days(90);

/// Shorter lifetimes are refused: the certificate would be due for renewal
/// before anything could use it (Kubernetes' own minimum for CSRs).
pub const MIN_DURATION: Duration = Duration::minutes(10);

/// One request to sign.
#[derive(Clone, Debug)]
pub struct SigningRequest<'a> {
    pub csr_pem: &'a [u8],
    pub is_ca: bool,
    pub usages: &'a [String],
    /// `None` means [`DEFAULT_DURATION`].
    pub duration: Option<Duration>,
    /// CertificateRequests must carry KeyUsage, ExtendedKeyUsage and
    /// BasicConstraints extensions (if any) that agree with the spec.
    /// Kubernetes CSRs take usages from the spec alone.
    pub csr_extensions_must_match: bool,
}

/// What a request's status gets.
#[derive(Clone, Debug)]
pub struct Signed {
    /// The leaf, then every CA certificate up to (excluding) the root.
    pub chain_pem: String,
    /// The root the chain ends at.
    pub ca_pem: String,
    pub not_after: OffsetDateTime,
    pub serial_hex: String,
    /// Why the certificate is shorter than requested, if it is.
    pub shortened: Option<String>,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum SignError {
    /// The request can never be signed as it is.
    #[error("{0}")]
    Invalid(String),
    /// The issuer's policy does not allow what the request asks for.
    #[error("{0}")]
    Policy(String),
    /// The signer cannot sign right now; retry.
    #[error("{0}")]
    Unavailable(String),
}

pub fn sign(
    req: &SigningRequest<'_>,
    policy: &Policy,
    ca: &IssuingCa,
    now: OffsetDateTime,
) -> Result<Signed, SignError> {
    let invalid = |m: String| Err(SignError::Invalid(m));
    let csr = CertificateSigningRequest::from_pem(req.csr_pem)
        .map_err(|e| SignError::Invalid(format!("the CSR is invalid: {e}")))?;
    let names = csr.names();
    if csr.subject_is_empty() && names.is_empty() {
        return invalid("the CSR has neither a subject nor subject alternative names".into());
    }
    for dns in &names.dns {
        if !is_dns_name(dns) {
            return invalid(format!("DNS name {dns:?} is not a valid host name"));
        }
    }
    let usages = Usages::from_names(req.usages, req.is_ca).map_err(|e| SignError::Invalid(e.to_string()))?;
    if req.csr_extensions_must_match {
        check_csr_extensions(&csr, req.is_ca, &usages)?;
    }
    let lifetime = req.duration.unwrap_or(DEFAULT_DURATION);
    if lifetime < MIN_DURATION {
        return invalid(format!("the duration {} is shorter than the minimum of 10m", human(lifetime)));
    }
    policy
        .check(&Asked { names, common_names: csr.common_names(), is_ca: req.is_ca, usages: &usages })
        .map_err(|why| SignError::Policy(format!("denied by the issuer's policy: {why}")))?;
    let max_path_length = if req.is_ca {
        match ca.ca_allowance() {
            CaAllowance::Forbidden => {
                return invalid(format!(
                    "{} cannot issue CA certificates (path length constraint); use an issuer that signs with the root",
                    ca.description()
                ));
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
        shortened = Some(format!("the issuer's maxDuration is {}", human(max)));
    }
    let template =
        CertificateTemplate { csr: &csr, is_ca: req.is_ca, max_path_length, usages: &usages, lifetime: effective };
    let issued = issue_from_template(ca.authority(), &template, now).map_err(|e| match e {
        PkiError::Expired { .. } | PkiError::SelfCheck(_) | PkiError::Signing(_) => {
            SignError::Unavailable(format!("{} cannot sign: {e}", ca.description()))
        }
        other => SignError::Invalid(other.to_string()),
    })?;
    let requested_end = now.replace_nanosecond(0).unwrap_or(now) + effective;
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

/// cert-manager's rule: CSR extensions, where present, must say exactly
/// what the request's spec says.
fn check_csr_extensions(csr: &CertificateSigningRequest, is_ca: bool, usages: &Usages) -> Result<(), SignError> {
    if let Some(ca) = csr.basic_constraints_ca()
        && ca != is_ca
    {
        return Err(SignError::Invalid(format!(
            "the CSR's basicConstraints say CA:{} but spec.isCA is {is_ca}",
            if ca { "TRUE" } else { "FALSE" }
        )));
    }
    if let Some(key) = csr.key_usage()
        && *key != usages.key
    {
        let csr_usages = Usages { key: key.clone(), extended: Vec::new() };
        let spec_usages = Usages { key: usages.key.clone(), extended: Vec::new() };
        return Err(SignError::Invalid(format!(
            "the CSR's key usages ({}) do not match the requested ones ({})",
            csr_usages.describe(),
            spec_usages.describe()
        )));
    }
    if let Some(extended) = csr.extended_key_usage()
        && *extended != usages.extended_set()
    {
        return Err(SignError::Invalid(format!(
            "the CSR's extended key usages ({}) do not match the requested ones ({})",
            extended.iter().cloned().collect::<Vec<_>>().join(", "),
            usages.extended.join(", ")
        )));
    }
    Ok(())
}

/// A host name, optionally with a leading `*.` wildcard label.
fn is_dns_name(name: &str) -> bool {
    let rest = name.strip_prefix("*.").unwrap_or(name);
    !rest.is_empty()
        && name.len() <= 253
        && rest.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

fn human(d: Duration) -> String {
    humantime::format_duration(std::time::Duration::from_secs(d.whole_seconds().max(0) as u64)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::issuer::SignerRef;
    use crate::issuer::signer::{CaAllowance, resolve};
    use crate::k8s::root::RootState;
    use crate::mesh::MeshRegistry;
    use crate::pki::{Authority, CaSpec, KeyAlgorithm, PrivateKey, TrustBundle};
    use std::sync::Arc;

    fn root_state(lifetime: Duration) -> RootState {
        let root = Authority::new_root(&CaSpec::root(lifetime), OffsetDateTime::now_utc()).unwrap();
        let bundle = TrustBundle::new(vec![root.certificate().clone()]).unwrap();
        RootState { authority: Some(Arc::new(root)), bundle: Arc::new(bundle) }
    }

    fn dns_csr(name: &str) -> String {
        let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.serialize_request(&key).unwrap().pem().unwrap()
    }

    fn request<'a>(csr: &'a str, duration: Option<Duration>, is_ca: bool) -> SigningRequest<'a> {
        SigningRequest { csr_pem: csr.as_bytes(), is_ca, usages: &[], duration, csr_extensions_must_match: true }
    }

    #[test]
    fn not_after_is_clamped_to_the_signer_and_the_reason_given() {
        let root = root_state(Duration::days(30));
        let ca = resolve(&SignerRef { root: true, mesh: None }, &root, &MeshRegistry::default()).unwrap();
        let csr = dns_csr("a.example.com");
        let now = OffsetDateTime::now_utc();
        let signed = sign(&request(&csr, None, false), &Policy::default(), &ca, now).unwrap();
        assert_eq!(signed.not_after, ca.authority().not_after());
        let why = signed.shortened.unwrap();
        assert!(why.contains("because the root expires at"), "{why}");
        let short = sign(&request(&csr, Some(Duration::days(1)), false), &Policy::default(), &ca, now).unwrap();
        assert!(short.shortened.is_none());
        assert_eq!(short.not_after, now.replace_nanosecond(0).unwrap() + Duration::days(1));
    }

    #[test]
    fn an_expired_signer_is_unavailable_not_invalid() {
        let root = root_state(Duration::days(1));
        let ca = resolve(&SignerRef { root: true, mesh: None }, &root, &MeshRegistry::default()).unwrap();
        let csr = dns_csr("a.example.com");
        let later = OffsetDateTime::now_utc() + Duration::days(2);
        let e = sign(&request(&csr, None, false), &Policy::default(), &ca, later).unwrap_err();
        assert!(matches!(e, SignError::Unavailable(_)), "{e:?}");
    }

    #[test]
    fn path_length_allowance_follows_the_chain() {
        let root = root_state(Duration::days(30));
        let by_root = resolve(&SignerRef { root: true, mesh: None }, &root, &MeshRegistry::default()).unwrap();
        assert_eq!(by_root.ca_allowance(), CaAllowance::Unlimited);
        let spec =
            crate::api::issuer::IssuancePolicy { allow_ca: true, max_path_length: Some(2), ..Default::default() };
        let policy = Policy::from_spec(&spec).unwrap();
        let csr = dns_csr("ca.example.com");
        let signed = sign(&request(&csr, None, true), &policy, &by_root, OffsetDateTime::now_utc()).unwrap();
        let der = crate::pki::pem::decode_certificates(signed.chain_pem.as_bytes(), 1 << 20).unwrap();
        let cert = crate::pki::authority::parse_certificate(&der[0]).unwrap();
        assert_eq!(cert.basic_constraints().unwrap().unwrap().value.path_len_constraint, Some(2));
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
