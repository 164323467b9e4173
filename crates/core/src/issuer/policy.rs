//! An issuer's policy, validated once from its spec and applied to every
//! request it signs. Deny by default: every SAN kind and subject attribute
//! must be allowed by a list, and protected names (see [`Tenancy`]) only
//! by a literal entry.

use super::glob;
use super::tenancy::{Tenancy, contains_ignore_ascii_case};
use super::violation::{Violation, Violations};
use crate::api::issuer::IssuancePolicy;
use crate::duration;
use crate::pki::csr::{RequestedNames, SubjectAttribute};
use crate::pki::usage::{EKU_ANY, EKU_CLIENT_AUTH, EKU_OCSP_SIGNING, EKU_SERVER_AUTH, KeyUsage, Usage, Usages};
use ipnet::IpNet;
use std::collections::BTreeMap;
use thiserror::Error;
use time::Duration;

/// The most pattern matching one request may take ([`Policy::matching_work`]). At the limit,
/// with the costliest patterns, that is about 60 ms of one core (release build, this project's
/// 2-vCPU test machine). 100 DNS names of 33 characters against 200 patterns of 26 such as
/// `*.s001.example-company.com` (linear) take 1.2 million.
pub const MAX_MATCHING_WORK: usize = 16 << 20;

const OID_COMMON_NAME: &str = "2.5.4.3";
const OID_EMAIL_ADDRESS: &str = "1.2.840.113549.1.9.1";

/// Short names of subject attributes, as policies may name them.
const ATTRIBUTE_NAMES: &[(&str, &str)] = &[
    ("C", "2.5.4.6"),
    ("ST", "2.5.4.8"),
    ("L", "2.5.4.7"),
    ("O", "2.5.4.10"),
    ("OU", "2.5.4.11"),
    ("street", "2.5.4.9"),
    ("postalCode", "2.5.4.17"),
    ("serialNumber", "2.5.4.5"),
];

/// Usages an issuer allows when its policy lists none: what a TLS server or
/// client needs, nothing that signs for others.
const DEFAULT_USAGES: &[Usage] = &[
    Usage::Key(KeyUsage::DigitalSignature),
    Usage::Key(KeyUsage::KeyEncipherment),
    Usage::Extended(EKU_SERVER_AUTH),
    Usage::Extended(EKU_CLIENT_AUTH),
];

/// Why an issuer's `spec.policy` is invalid. Each message names the field.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum PolicySpecError {
    /// `maxDuration` does not parse.
    #[error(transparent)]
    MaxDuration(#[from] duration::DurationError),
    /// `maxDuration` is shorter than any certificate meshroot issues.
    #[error("policy.maxDuration {0:?} is shorter than the shortest certificate meshroot issues (10m)")]
    MaxDurationTooShort(String),
    /// An `allowedIPRanges` entry is not CIDR.
    #[error("policy.allowedIPRanges: {0:?} is not a CIDR range")]
    IpRange(String),
    /// An `allowedUsages` entry names no usage.
    #[error("policy.allowedUsages: unknown usage {0:?}")]
    Usage(String),
    /// An `allowedSubjectAttributes` key names no attribute meshroot knows.
    #[error(
        "policy.allowedSubjectAttributes: unknown attribute {0:?} (use C, ST, L, O, OU, street, postalCode, \
         serialNumber or a dotted OID; the common name and email have their own lists)"
    )]
    SubjectAttribute(String),
    /// An `allowedDNSNames` pattern could reach past the domain it names.
    #[error(
        "policy.allowedDNSNames: {0:?}: `*` may appear in the first label only, and `**` only as that whole label \
         (`**.example.com`)"
    )]
    DnsPattern(String),
}

/// Shorter lifetimes are refused: the certificate would be due for renewal
/// before anything could use it (Kubernetes' own minimum for CSRs).
pub const MIN_DURATION: Duration = Duration::minutes(10);

/// A validated [`IssuancePolicy`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Policy {
    /// `allowCA`: whether CA certificates may be issued.
    pub allow_ca: bool,
    /// `maxPathLength` (default 0): the pathLenConstraint an issued CA gets, lower if the signer's chain
    /// allows less.
    pub max_path_length: u8,
    /// `maxDuration`: longer requests are shortened to it. `None`: no limit of the policy's own.
    pub max_duration: Option<Duration>,
    pub(super) dns_names: Vec<String>,
    pub(super) uris: Vec<String>,
    pub(super) ip_ranges: Vec<IpNet>,
    pub(super) emails: Vec<String>,
    common_names: Vec<String>,
    usages: Option<Vec<Usage>>,
    /// Attribute OID → value patterns.
    subject_attributes: BTreeMap<String, Vec<String>>,
    /// The namespace of a namespaced Issuer, whose own author writes its
    /// policy: such a policy never grants a protected name, a SPIFFE ID
    /// outside its namespace, or another namespace's Service names.
    issuer_namespace: Option<String>,
    /// For a namespaced Issuer: its signing mesh's trust domain, the only one its identities may have.
    issuer_trust_domain: Option<String>,
}

/// What a request asks for, as the policy sees it.
#[derive(Clone, Copy, Debug)]
pub struct Asked<'a> {
    /// The subject alternative names the CSR asks for.
    pub names: &'a RequestedNames,
    /// The CSR's subject attributes.
    pub subject: &'a [SubjectAttribute],
    /// Whether a CA certificate is asked for.
    pub is_ca: bool,
    /// The usages asked for.
    pub usages: &'a Usages,
}

impl Policy {
    /// Validates `spec`: the maximum duration (at least [`MIN_DURATION`]), CIDR
    /// ranges, usage and attribute names, and DNS patterns. The error names the field.
    pub fn from_spec(spec: &IssuancePolicy) -> Result<Self, PolicySpecError> {
        let max_duration =
            spec.max_duration.as_deref().map(|d| duration::parse_field("policy.maxDuration", d)).transpose()?;
        if let Some(max) = max_duration
            && max < MIN_DURATION
        {
            return Err(PolicySpecError::MaxDurationTooShort(spec.max_duration.clone().unwrap_or_default()));
        }
        let ip_ranges = spec
            .allowed_ip_ranges
            .iter()
            .flatten()
            .map(|r| r.parse::<IpNet>().map_err(|_| PolicySpecError::IpRange(r.clone())))
            .collect::<Result<Vec<_>, _>>()?;
        let usages = spec
            .allowed_usages
            .as_ref()
            .map(|names| {
                names
                    .iter()
                    .map(|n| Usage::parse(n).ok_or_else(|| PolicySpecError::Usage(n.clone())))
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?;
        let mut subject_attributes = BTreeMap::new();
        for (name, patterns) in spec.allowed_subject_attributes.iter().flatten() {
            let oid = attribute_oid(name).ok_or_else(|| PolicySpecError::SubjectAttribute(name.clone()))?;
            subject_attributes.insert(oid, patterns.clone());
        }
        for pattern in spec.allowed_dns_names.iter().flatten() {
            check_dns_pattern(pattern)?;
        }
        let lowercase = |v: &Option<Vec<String>>| v.iter().flatten().map(|p| p.to_ascii_lowercase()).collect();
        Ok(Self {
            allow_ca: spec.allow_ca,
            max_path_length: spec.max_path_length.unwrap_or(0),
            max_duration,
            dns_names: lowercase(&spec.allowed_dns_names),
            uris: spec.allowed_uris.clone().unwrap_or_default(),
            ip_ranges,
            emails: lowercase(&spec.allowed_emails),
            common_names: spec.allowed_common_names.clone().unwrap_or_default(),
            usages,
            subject_attributes,
            issuer_namespace: None,
            issuer_trust_domain: None,
        })
    }

    /// This policy as a namespaced Issuer in `namespace`, signing with a mesh of `trust_domain`, holds
    /// it: written by that namespace's users, so held to that namespace, and to that trust domain
    /// (every mesh under the root accepts its own trust domain's identities from any of them).
    pub fn held_to(self, namespace: &str, trust_domain: &str) -> Self {
        Self {
            issuer_namespace: Some(namespace.to_string()),
            issuer_trust_domain: Some(trust_domain.to_ascii_lowercase()),
            ..self
        }
    }

    /// Every way `asked` breaks the policy or touches a protected name, or
    /// `Ok` when it does neither.
    pub fn check(&self, asked: &Asked<'_>, tenancy: &Tenancy) -> Result<(), Violations> {
        let work = self.matching_work(asked);
        if work > MAX_MATCHING_WORK {
            return Err(Violations(vec![Violation::TooMuchMatching { work, limit: MAX_MATCHING_WORK }]));
        }
        let mut violations = Vec::new();
        let issuer_namespace = self.issuer_namespace.as_deref();
        if asked.is_ca && !self.allow_ca {
            violations.push(Violation::CaNotAllowed);
        }
        let names = asked.names;
        for dns in &names.dns {
            self.check_dns(&mut violations, "DNS name", dns, false, issuer_namespace, tenancy);
        }
        for uri in &names.uris {
            self.check_uri(&mut violations, uri, issuer_namespace, tenancy);
        }
        for email in &names.emails {
            self.check_email(&mut violations, "email", email);
        }
        for ip in &names.ips {
            let literal = self.ip_ranges.iter().any(|r| r.prefix_len() == r.max_prefix_len() && r.addr() == *ip);
            if tenancy.protected_ips().any(|p| p == *ip) && (issuer_namespace.is_some() || !literal) {
                violations.push(Violation::ProtectedIp { ip: *ip });
            } else if !self.ip_ranges.iter().any(|r| r.contains(ip)) {
                violations.push(Violation::IpNotAllowed(*ip));
            }
        }
        if names.other > 0 {
            violations.push(Violation::OtherSans(names.other));
        }
        for attribute in asked.subject {
            self.check_attribute(&mut violations, attribute, issuer_namespace, tenancy);
        }
        self.check_usages(&mut violations, asked);
        if violations.is_empty() { Ok(()) } else { Err(Violations(violations)) }
    }

    /// A URI against `allowedURIs`. A URI in a mesh's trust domain must be a
    /// well-formed workload identity (`spiffe://<td>/ns/<ns>/sa/<sa>`, no
    /// more segments: Istio's authorization policies match namespaces and
    /// service accounts by pattern inside the path) and be granted literally:
    /// the identity itself, or (ClusterIssuers only) its whole trust domain
    /// as `spiffe://<trust domain>`. A namespaced Issuer grants identities
    /// of its own namespace only.
    fn check_uri(&self, violations: &mut Vec<Violation>, uri: &str, issuer_namespace: Option<&str>, tenancy: &Tenancy) {
        if uri.contains(',') {
            violations.push(Violation::CommaInName { what: "URI", name: uri.to_string() });
            return;
        }
        let allowed = self.uris.iter().any(|p| glob::matches(p, uri, &['/']));
        let Some(why) = tenancy.protected_uri(uri) else {
            if !allowed {
                violations.push(Violation::UriNotAllowed(uri.to_string()));
            }
            return;
        };
        let identity = crate::pki::WorkloadIdentity::parse(uri).ok().filter(|id| id.to_string() == uri);
        let Some(identity) = identity else {
            violations.push(Violation::UriNotWorkloadIdentity { uri: uri.to_string(), why });
            return;
        };
        // In spiffe://ns/ns/<n>/... Istio's pattern .*/ns/ns/.* finds namespace "ns" as well.
        if identity.trust_domain == "ns" {
            violations.push(Violation::TrustDomainNs(uri.to_string()));
            return;
        }
        let literal = self.uris.iter().any(|p| p == uri);
        // Only a mesh's own trust domain can be granted whole: istiod compares no trust domain, so
        // another one's would grant every namespace's identities.
        let domain_grant = format!("spiffe://{}", identity.trust_domain);
        let whole_domain = tenancy.is_mesh_trust_domain(&identity.trust_domain)
            && self.uris.iter().any(|p| p.eq_ignore_ascii_case(&domain_grant));
        let uri = uri.to_string();
        let signing_trust_domain = self.issuer_trust_domain.as_deref().unwrap_or_default();
        match issuer_namespace {
            Some(ns) if identity.namespace != ns => {
                violations.push(Violation::UriOtherNamespace { uri, why, namespace: ns.to_string() });
            }
            Some(_) if !identity.trust_domain.eq_ignore_ascii_case(signing_trust_domain) => {
                let trust_domain = signing_trust_domain.to_string();
                violations.push(Violation::UriOtherTrustDomain { uri, why, trust_domain });
            }
            Some(_) if !literal => violations.push(Violation::UriPatternInNamespace { uri, why }),
            None if !(literal || whole_domain) => violations.push(Violation::UriPattern { uri, why }),
            _ if !allowed => violations.push(Violation::UriNotAllowed(uri)),
            _ => {}
        }
    }

    /// A DNS name (or a common name, `is_cn`) against `allowedDNSNames`
    /// (and `allowedCommonNames`). A protected name needs an entry without
    /// wildcards equal to it, in a ClusterIssuer's policy; a wildcard name
    /// that covers one is never granted; a namespaced Issuer signs no
    /// protected name and no other namespace's Service names.
    fn check_dns(
        &self,
        violations: &mut Vec<Violation>,
        what: &'static str,
        name: &str,
        is_cn: bool,
        issuer_namespace: Option<&str>,
        tenancy: &Tenancy,
    ) {
        let lower = name.to_ascii_lowercase();
        let by_dns = self.dns_names.iter().any(|p| glob::matches(p, &lower, &['.']));
        let by_cn = is_cn && self.common_names.iter().any(|p| glob::matches(p, name, &[]));
        let literal = !name.contains('*')
            && (self.dns_names.iter().any(|p| !p.contains('*') && *p == lower)
                || (is_cn && self.common_names.iter().any(|p| !p.contains('*') && p.eq_ignore_ascii_case(name))));
        let lists =
            if is_cn { "policy.allowedCommonNames or policy.allowedDNSNames" } else { "policy.allowedDNSNames" };
        if is_cn && name.contains('*') && (!name.starts_with("*.") || name.get(2..).is_some_and(|r| r.contains('*'))) {
            violations.push(Violation::Wildcard { what, name: name.to_string() });
            return;
        }
        let other_namespace = issuer_namespace.and_then(|ns| other_namespace_named(&lower, ns, tenancy));
        let name = name.to_string();
        match (tenancy.protected_dns(&name), other_namespace) {
            (Some(why), _) if issuer_namespace.is_some() => {
                violations.push(Violation::ProtectedNameInNamespace { what, name, why });
            }
            (Some(why), _) if !literal => violations.push(Violation::ProtectedNamePattern { what, name, why, lists }),
            (None, Some(ClusterDnsNamespace::Named(other))) => {
                let namespace = other.to_string();
                violations.push(Violation::OtherNamespaceService { what, name, namespace });
            }
            // A one-label common name is as often a user's or a client's name; TLS clients match
            // host names against SANs only (Go, and RFC 6125 when a SAN is present).
            (None, Some(ClusterDnsNamespace::Every)) if !is_cn => {
                violations.push(Violation::SingleLabelName { what, name });
            }
            _ if !(by_dns || by_cn) => violations.push(Violation::NameNotAllowed { what, name, lists }),
            _ => {}
        }
    }

    fn check_email(&self, violations: &mut Vec<Violation>, what: &'static str, email: &str) {
        if email.contains(',') {
            violations.push(Violation::CommaInName { what, name: email.to_string() });
            return;
        }
        // Never an identity by another name: istiod reads any SAN entry of that form as one.
        if email.get(..7).is_some_and(|scheme| scheme.eq_ignore_ascii_case("spiffe:")) {
            violations.push(Violation::EmailLooksLikeIdentity { what, email: email.to_string() });
            return;
        }
        // istiod's CA turns a SAN entry it cannot classify into a DNS name, which Envoy takes for
        // the principal when there is no URI: no `/` (so no `/ns/`) may ride along.
        if !is_plain_email(email) {
            violations.push(Violation::EmailNotPlain { what, email: email.to_string() });
            return;
        }
        // `*` stays within the local part, or within one label of the domain.
        let lowercase = email.to_ascii_lowercase();
        let asked = lowercase.rsplit_once('@');
        let matches = |pattern: &str| match (pattern.rsplit_once('@'), asked) {
            (Some((pl, pd)), Some((el, ed))) => glob::matches(pl, el, &[]) && glob::matches(pd, ed, &['.']),
            _ => false,
        };
        if !self.emails.iter().any(|p| matches(p)) {
            violations.push(Violation::EmailNotAllowed { what, email: email.to_string() });
        }
    }

    /// What matching `asked` against this policy's patterns costs at most, in steps: for each
    /// name and subject value, [`glob::cost`] over the patterns it may be matched with.
    fn matching_work(&self, asked: &Asked<'_>) -> usize {
        let over = |names: &[String], patterns: &[String]| {
            names.iter().map(|n| glob::cost(patterns, n.len())).fold(0, usize::saturating_add)
        };
        let names = asked.names;
        let mut work = over(&names.dns, &self.dns_names)
            .saturating_add(over(&names.uris, &self.uris))
            .saturating_add(over(&names.emails, &self.emails));
        for attribute in asked.subject {
            let value = attribute.value.as_deref().map_or(0, str::len);
            let cost = match attribute.oid.as_str() {
                OID_COMMON_NAME => {
                    glob::cost(&self.dns_names, value).saturating_add(glob::cost(&self.common_names, value))
                }
                OID_EMAIL_ADDRESS => glob::cost(&self.emails, value),
                oid => self.subject_attributes.get(oid).map_or(0, |ps| glob::cost(ps, value)),
            };
            work = work.saturating_add(cost);
        }
        work
    }

    fn check_attribute(
        &self,
        violations: &mut Vec<Violation>,
        attribute: &SubjectAttribute,
        issuer_namespace: Option<&str>,
        tenancy: &Tenancy,
    ) {
        let name = attribute_name(&attribute.oid);
        // Envoy's principal is the subject when a certificate has no URI or DNS SAN, and Istio
        // matches a namespace as /ns/<namespace>/ anywhere in it.
        if let Some(value) = attribute.value.as_deref().filter(|v| contains_ignore_ascii_case(v, "/ns/")) {
            violations.push(Violation::SubjectLooksLikeIdentity { name: name.to_string(), value: value.to_string() });
            return;
        }
        // A value of another string type (BMP, Teletex, Universal...) would pass no check here and
        // still be text to Envoy, which reads the subject as the principal when there is no SAN.
        let Some(value) = &attribute.value else {
            violations.push(Violation::AttributeNotString(name.to_string()));
            return;
        };
        match attribute.oid.as_str() {
            OID_COMMON_NAME => self.check_dns(violations, "common name", value, true, issuer_namespace, tenancy),
            OID_EMAIL_ADDRESS => self.check_email(violations, "subject emailAddress", value),
            oid => {
                let allowed =
                    self.subject_attributes.get(oid).is_some_and(|ps| ps.iter().any(|p| glob::matches(p, value, &[])));
                if !allowed {
                    violations.push(Violation::AttributeNotAllowed { name: name.to_string(), value: value.clone() });
                }
            }
        }
    }

    fn check_usages(&self, violations: &mut Vec<Violation>, asked: &Asked<'_>) {
        let allowed = self.usages.as_deref().unwrap_or(DEFAULT_USAGES);
        let requested = asked
            .usages
            .key
            .iter()
            // An allowed CA gets cert sign implicitly; allowCA governs it.
            .filter(|k| !(asked.is_ca && **k == KeyUsage::CertSign))
            .map(|k| Usage::Key(*k))
            .chain(asked.usages.extended.iter().map(|oid| Usage::Extended(oid)));
        let denied: Vec<Usage> = requested.filter(|u| !allowed.contains(u)).collect();
        if denied.is_empty() {
            return;
        }
        let shown = Usages {
            key: denied.iter().filter_map(|u| if let Usage::Key(k) = u { Some(*k) } else { None }).collect(),
            extended: denied.iter().filter_map(|u| if let Usage::Extended(e) = u { Some(*e) } else { None }).collect(),
        };
        violations.push(Violation::Usages {
            denied: shown.describe(),
            listed: self.usages.is_some(),
            any_or_ocsp: shown.extended.iter().any(|e| *e == EKU_ANY || *e == EKU_OCSP_SIGNING),
        });
    }
}

/// A DNS pattern may hold `*` in its first label only, and `**` only as that
/// whole label, so a pattern never reaches past the domain it names.
fn check_dns_pattern(pattern: &str) -> Result<(), PolicySpecError> {
    let mut labels = pattern.split('.');
    let first = labels.next().unwrap_or_default();
    let bad_first = first.contains("**") && first != "**";
    if bad_first || labels.any(|l| l.contains('*')) || pattern.is_empty() {
        return Err(PolicySpecError::DnsPattern(pattern.to_string()));
    }
    Ok(())
}

/// The OID a policy's attribute name stands for.
fn attribute_oid(name: &str) -> Option<String> {
    if let Some((_, oid)) = ATTRIBUTE_NAMES.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)) {
        return Some((*oid).to_string());
    }
    let dotted = name.split('.').count() >= 2
        && name.split('.').all(|arc| !arc.is_empty() && arc.bytes().all(|b| b.is_ascii_digit()));
    (dotted && name != OID_COMMON_NAME && name != OID_EMAIL_ADDRESS).then(|| name.to_string())
}

/// The short name of an attribute OID, for messages.
fn attribute_name(oid: &str) -> &str {
    match oid {
        OID_COMMON_NAME => "CN",
        OID_EMAIL_ADDRESS => "emailAddress",
        _ => ATTRIBUTE_NAMES.iter().find(|(_, o)| *o == oid).map_or(oid, |(n, _)| n),
    }
}

/// A namespace other than the Issuer's own that a DNS name designates to the cluster's DNS.
#[derive(Debug, PartialEq, Eq)]
enum ClusterDnsNamespace<'a> {
    /// One label: a client's search path makes it a Service of the client's own namespace, whichever.
    Every,
    /// A namespace, or `*` standing for any.
    Named(&'a str),
}

/// Which namespace other than `own` the cluster's DNS reads `name` (lowercase) as, if any: the label
/// before any `svc` or `pod` label after the first (`<svc>.<ns>.svc…`, `<pod>.<svc>.<ns>.svc…`,
/// `<ip>.<ns>.pod…`), and the last label of a name of two to four labels when that namespace exists
/// (pods' search path completes `<svc>.<ns>`, `<pod>.<svc>.<ns>` and `<port>.<proto>.<svc>.<ns>`
/// with `svc.<zone>`). A name whose last label is no namespace, such as `api.example.com` in a
/// cluster without namespace `com`, names none.
fn other_namespace_named<'a>(name: &'a str, own: &str, tenancy: &Tenancy) -> Option<ClusterDnsNamespace<'a>> {
    let labels: Vec<&str> = name.split('.').collect();
    if labels.len() == 1 {
        return Some(ClusterDnsNamespace::Every);
    }
    let explicit = labels.windows(2).filter_map(|pair| match pair {
        [namespace, "svc" | "pod"] => Some(*namespace),
        _ => None,
    });
    let completed =
        labels.last().copied().filter(|last| (2..=4).contains(&labels.len()) && tenancy.namespace_exists(last));
    explicit.chain(completed).find(|namespace| *namespace != own).map(ClusterDnsNamespace::Named)
}

/// `local@domain` with an RFC 5322 dot-atom local part without `/`, and a DNS name without a
/// wildcard for the domain.
fn is_plain_email(email: &str) -> bool {
    let Some((local, domain)) = email.rsplit_once('@') else { return false };
    let atext = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+=?^_`{|}~-".contains(c);
    local.split('.').all(|atom| !atom.is_empty() && atom.chars().all(atext))
        && !domain.starts_with('*')
        && crate::names::is_dns_name(domain)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::issuer::tenancy::{OwnService, Tenancy};

    fn policy(yaml: &str) -> Policy {
        Policy::from_spec(&serde_saphyr::from_str(yaml).unwrap()).unwrap()
    }

    fn names(dns: &[&str], uris: &[&str], ips: &[&str], emails: &[&str]) -> RequestedNames {
        RequestedNames {
            dns: dns.iter().map(|s| s.to_string()).collect(),
            uris: uris.iter().map(|s| s.to_string()).collect(),
            ips: ips.iter().map(|s| s.parse().unwrap()).collect(),
            emails: emails.iter().map(|s| s.to_string()).collect(),
            other: 0,
        }
    }

    /// One mesh (`cluster.local`, istiod in istio-system) and meshroot's serving names `10.96.0.50` and
    /// `ca.example.com`: the protected names the issuer tests check against.
    pub(in crate::issuer) fn tenancy() -> Tenancy {
        let mesh: crate::api::mesh::MeshSpec =
            serde_saphyr::from_str("trustDomain: cluster.local\nistiod: {namespace: istio-system}").unwrap();
        let own = OwnService {
            namespace: "meshroot".into(),
            name: "meshroot".into(),
            extra_names: vec!["10.96.0.50".into(), "ca.example.com".into()],
        };
        Tenancy::new([("default", &mesh)], &own)
            .with_namespaces(["default", "finance", "bookinfo", "team-a", "istio-system", "meshroot"].map(String::from))
    }

    /// As `check_in`, for a request whose only name is the common name `cn`.
    fn check_in_with_cn(ns: &str, p: &Policy, cn: &str) -> Result<(), String> {
        let usages = Usages::from_names::<&str>(&[], false).unwrap();
        let subject = [SubjectAttribute { oid: OID_COMMON_NAME.to_string(), value: Some(cn.to_string()) }];
        let names = names(&[], &[], &[], &[]);
        p.clone()
            .held_to(ns, "cluster.local")
            .check(&Asked { names: &names, subject: &subject, is_ca: false, usages: &usages }, &tenancy())
            .map_err(|v| v.to_string())
    }

    /// As `check`, for a namespaced Issuer in `ns`.
    fn check_in(ns: &str, p: &Policy, names: &RequestedNames) -> Result<(), String> {
        let usages = Usages::from_names::<&str>(&[], false).unwrap();
        p.clone()
            .held_to(ns, "cluster.local")
            .check(&Asked { names, subject: &[], is_ca: false, usages: &usages }, &tenancy())
            .map_err(|v| v.to_string())
    }

    fn attrs(pairs: &[(&str, &str)]) -> Vec<SubjectAttribute> {
        pairs.iter().map(|(oid, v)| SubjectAttribute { oid: oid.to_string(), value: Some(v.to_string()) }).collect()
    }

    fn check_subject(
        p: &Policy,
        names: &RequestedNames,
        subject: &[SubjectAttribute],
        is_ca: bool,
        usages: &[&str],
    ) -> Result<(), String> {
        let usages = Usages::from_names(usages, is_ca).unwrap();
        p.check(&Asked { names, subject, is_ca, usages: &usages }, &tenancy()).map_err(|v| v.to_string())
    }

    fn check(p: &Policy, names: &RequestedNames, cns: &[&str], is_ca: bool, usages: &[&str]) -> Result<(), String> {
        let subject: Vec<SubjectAttribute> = cns
            .iter()
            .map(|cn| SubjectAttribute { oid: OID_COMMON_NAME.into(), value: Some(cn.to_string()) })
            .collect();
        check_subject(p, names, &subject, is_ca, usages)
    }

    /// Pattern matching takes the product of the lengths, and a namespace's Issuer writes both the
    /// patterns and the names: a request that would take more than MAX_MATCHING_WORK steps is
    /// refused before any pattern is matched; one just under it is checked as usual.
    #[test]
    fn a_request_that_would_take_too_much_matching_is_refused_before_any() {
        // One pattern of 4,096 characters, not linear: (len + 2) * 4,096 steps for a URI of len, so
        // a URI of 4,094 takes exactly the limit.
        let pattern = format!("https://{}*b", "a*".repeat(2043));
        assert_eq!(pattern.len() * pattern.len(), MAX_MATCHING_WORK);
        let p = policy(&format!("allowedURIs: ['{pattern}']"));
        let uri = |len: usize| format!("https://{}", "a".repeat(len - 8));
        let e = check(&p, &names(&[], &[&uri(4094)], &[], &[]), &[], false, &[]).unwrap_err();
        assert!(e.contains("is not allowed by policy.allowedURIs"), "checked as usual at the limit: {e}");
        let e = check(&p, &names(&[], &[&uri(4095)], &[], &[]), &[], false, &[]).unwrap_err();
        let refusal = "matching this request's names against the policy's patterns would take";
        assert!(e.starts_with(&format!("{refusal} {} steps", MAX_MATCHING_WORK + 4096)), "{e}");
        // Empty names cost their patterns' length each: 10,000 of them are refused.
        let many = RequestedNames { uris: vec![String::new(); 10_000], ..names(&[], &[], &[], &[]) };
        let e = check(&p, &many, &[], false, &[]).unwrap_err();
        assert!(e.starts_with(refusal), "{e}");
        // Linear patterns cost the sum of the lengths, not their product: 100 names against 200 pass.
        let patterns: Vec<String> = (0..200).map(|i| format!("'*.s{i:03}.example-company.com'")).collect();
        let p = policy(&format!("allowedDNSNames: [{}]", patterns.join(", ")));
        let hosts: Vec<String> = (0..100).map(|i| format!("host-{i:03}.s{i:03}.example-company.com")).collect();
        let hosts: Vec<&str> = hosts.iter().map(String::as_str).collect();
        check(&p, &names(&hosts, &[], &[], &[]), &[], false, &[]).unwrap();
        // Counted over every name and subject value, each against its own patterns.
        let p = policy(&format!(
            "allowedDNSNames: ['*.example.com']\nallowedCommonNames: ['{pattern}']\nallowedSubjectAttributes: {{O: ['{pattern}']}}"
        ));
        let asked_names = names(&["a.example.com"], &[], &[], &[]);
        let subject = attrs(&[(OID_COMMON_NAME, "cn"), ("2.5.4.10", "org")]);
        let usages = Usages::from_names::<&str>(&[], false).unwrap();
        let asked = Asked { names: &asked_names, subject: &subject, is_ca: false, usages: &usages };
        let linear = |name: usize| name + "*.example.com".len() + 1;
        let product = |name: usize| (name + 2) * pattern.len();
        assert_eq!(p.matching_work(&asked), linear(13) + linear(2) + product(2) + product(3));
    }

    #[test]
    fn the_boundaries_of_protection_are_exact() {
        // maxDuration may be exactly the shortest certificate issued.
        assert_eq!(policy("maxDuration: 10m").max_duration, Some(MIN_DURATION));
        // A namespaced Issuer may sign an unprotected address its policy allows.
        let p = policy("allowedIPRanges: ['10.0.0.0/8']");
        check_in("team-a", &p, &names(&[], &[], &["10.0.0.1"], &[])).unwrap();
        // meshroot's address is granted by its own /32 only, not by a range written with it (host bits set).
        let p = policy("allowedIPRanges: ['10.96.0.50/16']");
        let e = check(&p, &names(&[], &[], &["10.96.0.50"], &[]), &[], false, &[]).unwrap_err();
        assert!(e.contains("is protected"), "{e}");
        check(&policy("allowedIPRanges: ['10.96.0.50/32']"), &names(&[], &[], &["10.96.0.50"], &[]), &[], false, &[])
            .unwrap();
        // Every violation is listed, one after another.
        let e = check(&policy("{}"), &names(&["a.example.com"], &[], &["10.0.0.1"], &[]), &[], false, &[]).unwrap_err();
        assert_eq!(
            e,
            "DNS name \"a.example.com\" is not allowed by policy.allowedDNSNames; IP address 10.0.0.1 is not in \
             policy.allowedIPRanges"
        );
        // A literal entry for some other name does not make a pattern's match literal.
        let p = policy("allowedDNSNames: ['other.example.com', '*.istio-system.svc']");
        let e = check(&p, &names(&["istiod.istio-system.svc"], &[], &[], &[]), &[], false, &[]).unwrap_err();
        assert!(e.contains("only a literal entry"), "{e}");
        // A protected common name is granted by its literal allowedCommonNames entry, and only by that.
        let p = policy("allowedCommonNames: ['istiod.istio-system.svc']\nallowedDNSNames: ['*.istio-system.svc']");
        check(&p, &names(&[], &[], &[], &[]), &["istiod.istio-system.svc"], false, &[]).unwrap();
        let p = policy("allowedCommonNames: ['ca.example.org']\nallowedDNSNames: ['*.istio-system.svc']");
        let e = check(&p, &names(&[], &[], &[], &[]), &["istiod.istio-system.svc"], false, &[]).unwrap_err();
        assert!(e.contains("only a literal entry"), "{e}");
    }

    #[test]
    fn attribute_names_are_short_names_or_dotted_oids_other_than_cn_and_email() {
        let spec = |name: &str| {
            let yaml = format!("allowedSubjectAttributes: {{'{name}': ['*']}}");
            Policy::from_spec(&serde_saphyr::from_str(&yaml).unwrap())
        };
        for good in ["O", "ou", "postalCode", "1.2.3", "2.5.4.97"] {
            assert!(spec(good).is_ok(), "{good}");
        }
        for bad in ["1", "1..2", ".1.2", "1.2.", "1.2.a", "2.5.4.3", "1.2.840.113549.1.9.1", "CN", "Planet"] {
            assert_eq!(spec(bad), Err(PolicySpecError::SubjectAttribute(bad.into())), "{bad}");
        }
        // Refusals name attributes as policies do: CN and emailAddress, not their OIDs.
        let p = policy("{}");
        for (oid, name) in [(OID_COMMON_NAME, "CN"), (OID_EMAIL_ADDRESS, "emailAddress"), ("2.5.4.10", "O")] {
            let subject = [SubjectAttribute { oid: oid.into(), value: None }];
            let e = check_subject(&p, &names(&[], &[], &[], &[]), &subject, false, &[]).unwrap_err();
            assert!(
                e.starts_with(&format!("subject attribute {name} has a value meshroot does not read as text")),
                "{e}"
            );
        }
    }

    #[test]
    fn an_empty_policy_allows_nothing() {
        let p = policy("{}");
        let n = names(&["a.example.com"], &["urn:example:x"], &["10.0.0.1"], &["a@b.c"]);
        let e = check(&p, &n, &["anything"], true, &["code signing"]).unwrap_err();
        for part in [
            "isCA is not allowed",
            "DNS name \"a.example.com\" is not allowed by policy.allowedDNSNames",
            "URI \"urn:example:x\" is not allowed by policy.allowedURIs",
            "IP address 10.0.0.1 is not in policy.allowedIPRanges",
            "email \"a@b.c\" is not allowed by policy.allowedEmails",
            "common name \"anything\" is not allowed",
            "usages code signing are not in the default usages",
        ] {
            assert!(e.contains(part), "missing {part:?} in {e}");
        }
        // A request with only an allowed name passes.
        let p = policy("allowedDNSNames: ['a.example.com']");
        assert_eq!(check(&p, &names(&["a.example.com"], &[], &[], &[]), &[], false, &["server auth"]), Ok(()));
    }

    #[test]
    fn only_the_kinds_a_policy_lists_are_allowed() {
        // The case: DNS names and usages set, nothing else.
        let p = policy("allowedDNSNames: ['*.apps.example.com']\nallowedUsages: ['digital signature', 'server auth']");
        let n = names(&["web.apps.example.com"], &["https://evil.example/"], &["10.0.0.1"], &["x@example.com"]);
        let e = check(&p, &n, &[], false, &["server auth"]).unwrap_err();
        for part in ["URI \"https://evil.example/\"", "IP address 10.0.0.1", "email \"x@example.com\""] {
            assert!(e.contains(part), "missing {part:?} in {e}");
        }
    }

    #[test]
    fn names_outside_the_patterns_are_each_reported() {
        let p = policy(
            "allowedDNSNames: ['*.apps.example.com']\nallowedURIs: ['spiffe://other.domain/svc/*']\n\
             allowedIPRanges: ['10.0.0.0/8', 'fd00::/8']\nallowedEmails: ['*@example.com']",
        );
        let good = names(
            &["web.apps.example.com"],
            &["spiffe://other.domain/svc/b"],
            &["10.1.2.3", "fd00::1"],
            &["ops@example.com"],
        );
        assert_eq!(check(&p, &good, &["web.apps.example.com"], false, &[]), Ok(()));
        let bad = names(&["evil.com"], &["spiffe://third/svc/b"], &["192.168.0.1"], &["x@evil.com"]);
        let e = check(&p, &bad, &["not-a-host"], false, &[]).unwrap_err();
        for part in [
            "DNS name \"evil.com\" is not allowed by policy.allowedDNSNames",
            "URI \"spiffe://third/svc/b\" is not allowed by policy.allowedURIs",
            "IP address 192.168.0.1 is not in policy.allowedIPRanges",
            "email \"x@evil.com\" is not allowed by policy.allowedEmails",
            "common name \"not-a-host\" is not allowed by policy.allowedCommonNames or policy.allowedDNSNames",
        ] {
            assert!(e.contains(part), "missing {part:?} in {e}");
        }
    }

    #[test]
    fn mesh_identities_need_a_literal_grant() {
        let istiod = "spiffe://cluster.local/ns/istio-system/sa/istiod";
        let n = names(&[], &[istiod], &[], &[]);
        for glob in ["spiffe://cluster.local/**", "spiffe://cluster.local/ns/*/sa/*", "**"] {
            let e = check(&policy(&format!("allowedURIs: ['{glob}']")), &n, &[], false, &[]).unwrap_err();
            assert!(e.contains("is protected (it is a workload identity of mesh default)"), "{glob}: {e}");
            assert!(e.contains("only a literal entry in policy.allowedURIs"), "{e}");
        }
        let literal = policy(&format!("allowedURIs: ['{istiod}']"));
        assert_eq!(check(&literal, &n, &[], false, &[]), Ok(()));
        // The whole trust domain, granted literally, with a pattern that matches (istiod's RA mode).
        let domain = policy("allowedURIs: ['spiffe://cluster.local', 'spiffe://cluster.local/ns/*/sa/*']");
        assert_eq!(check(&domain, &n, &[], false, &[]), Ok(()));
        let e = check(&policy("allowedURIs: ['spiffe://cluster.local']"), &n, &[], false, &[]).unwrap_err();
        assert!(e.contains("is not allowed by policy.allowedURIs"), "the grant is not a pattern: {e}");
        // The scheme and trust domain are case-insensitive: no way around it.
        let upper = names(&[], &["SPIFFE://Cluster.Local/ns/istio-system/sa/istiod"], &[], &[]);
        let e = check(&policy("allowedURIs: ['**']"), &upper, &[], false, &[]).unwrap_err();
        assert!(e.contains("mesh default"), "{e}");
    }

    #[test]
    fn istiod_and_meshroot_dns_names_need_a_literal_grant() {
        let open = policy("allowedDNSNames: ['**.svc', '**']\nallowedCommonNames: ['*']");
        for name in ["istiod.istio-system.svc", "meshroot.meshroot.svc", "*.istio-system.svc"] {
            let e = check(&open, &names(&[name], &[], &[], &[]), &[], false, &[]).unwrap_err();
            assert!(e.contains("is protected"), "{name}: {e}");
            let e = check(&open, &names(&[], &[], &[], &[]), &[name], false, &[]).unwrap_err();
            assert!(e.contains("common name") && e.contains("is protected"), "{name}: {e}");
        }
        let literal = policy("allowedDNSNames: ['istiod.istio-system.svc']");
        assert_eq!(check(&literal, &names(&["ISTIOD.istio-system.svc"], &[], &[], &[]), &[], false, &[]), Ok(()));
        assert_eq!(check(&open, &names(&["web.team-a.svc"], &[], &[], &[]), &[], false, &[]), Ok(()));
    }

    #[test]
    fn subject_attributes_are_denied_unless_listed() {
        let p = policy("allowedEmails: ['*@example.com']\nallowedSubjectAttributes: {O: ['Example Inc'], OU: ['*']}");
        let none = names(&[], &[], &[], &[]);
        let ok =
            attrs(&[("2.5.4.10", "Example Inc"), ("2.5.4.11", "anything"), (OID_EMAIL_ADDRESS, "ops@example.com")]);
        assert_eq!(check_subject(&p, &none, &ok, false, &[]), Ok(()));
        let bad = attrs(&[("2.5.4.10", "Evil Corp"), ("2.5.4.6", "US"), (OID_EMAIL_ADDRESS, "ceo@evil.org")]);
        let e = check_subject(&p, &none, &bad, false, &[]).unwrap_err();
        for part in [
            "subject attribute O=\"Evil Corp\" is not allowed",
            "subject attribute C=\"US\" is not allowed",
            "subject emailAddress \"ceo@evil.org\" is not allowed by policy.allowedEmails",
        ] {
            assert!(e.contains(part), "missing {part:?} in {e}");
        }
        // A value in a string type meshroot does not read (a BMPString, say): never, even under "*".
        let opaque = vec![SubjectAttribute { oid: "2.5.4.11".into(), value: None }];
        let e =
            check_subject(&policy("allowedSubjectAttributes: {OU: ['*']}"), &none, &opaque, false, &[]).unwrap_err();
        assert!(e.contains("has a value meshroot does not read as text"), "{e}");
    }

    #[test]
    fn refusals_stay_short_however_much_is_asked() {
        let many: Vec<String> = (0..2000).map(|i| format!("host-{i}.evil.org")).collect();
        let long = format!("{}.evil.org", "a".repeat(5000));
        let mut n = names(&[], &[], &[], &[]);
        n.dns = many;
        n.dns.insert(0, long);
        let e = check(&policy("allowedDNSNames: ['*.example.com']"), &n, &[], false, &[]).unwrap_err();
        assert!(e.len() < 4096, "{} bytes", e.len());
        assert!(e.ends_with("and 1993 more"), "{e}");
        assert!(e.contains("aaaa…"), "a long name is cut: {e}");
    }

    #[test]
    fn a_namespaced_issuer_never_grants_protected_names_whatever_it_lists() {
        let istiod = "spiffe://cluster.local/ns/istio-system/sa/istiod";
        let own = "spiffe://cluster.local/ns/team-a/sa/web";
        let p = policy(&format!(
            "allowedURIs: ['spiffe://cluster.local', '{istiod}', '{own}']\n\
             allowedDNSNames: ['istiod.istio-system.svc', 'meshroot.meshroot.svc', '*.svc', 'web.team-a.svc']\n\
             allowedIPRanges: ['10.96.0.50/32']"
        ));
        for (n, why) in [
            (names(&[], &[istiod], &[], &[]), "never grants identities of another namespace"),
            (names(&["istiod.istio-system.svc"], &[], &[], &[]), "a namespaced Issuer never grants it"),
            (names(&["meshroot.meshroot.svc"], &[], &[], &[]), "a namespaced Issuer never grants it"),
            (names(&["reviews.bookinfo.svc"], &[], &[], &[]), "is a Service or pod name of namespace \"bookinfo\""),
            (names(&[], &[], &["10.96.0.50"], &[]), "is protected (meshroot's serving address)"),
        ] {
            let e = check_in("team-a", &p, &n).unwrap_err();
            assert!(e.contains(why), "{n:?}: {e}");
        }
        // Every form in which the cluster's DNS names another namespace, whatever the policy allows.
        let anything = policy("allowedDNSNames: ['**']\nallowedCommonNames: ['*']");
        for (name, namespace) in [
            ("payments.finance", "finance"),
            ("*.finance", "finance"),
            ("payments.finance.svc.cluster.local", "finance"),
            ("kafka-0.kafka-hl.finance.svc.cluster.local", "finance"),
            ("*.kafka-hl.finance.svc.cluster.local", "finance"),
            ("10-0-0-1.finance.pod.cluster.local", "finance"),
            ("*.svc.cluster.local", "*"),
            ("web.team-a.x.svc", "x"),
            // Short forms the search path completes with svc.<zone>: the last label is the namespace.
            ("kafka-0.kafka-hl.finance", "finance"),
            ("*.kafka-hl.finance", "finance"),
            ("https-dns.tcp.istiod.istio-system", "istio-system"),
            // Both readings count: the explicit one is team-a's, the completed one finance's.
            ("team-a.svc.finance", "finance"),
        ] {
            let e = check_in("team-a", &anything, &names(&[name], &[], &[], &[])).unwrap_err();
            assert!(e.contains(&format!("is a Service or pod name of namespace {namespace:?}")), "{name}: {e}");
            let e = check_in_with_cn("team-a", &anything, name).unwrap_err();
            assert!(e.contains(&format!("namespace {namespace:?}")), "{name} as a common name: {e}");
        }
        for name in ["payments", "*"] {
            let e = check_in("team-a", &anything, &names(&[name], &[], &[], &[])).unwrap_err();
            assert!(e.contains("has one label"), "{name}: {e}");
        }
        // As a common name, one label is a client's or a user's name as often.
        assert_eq!(check_in_with_cn("team-a", &anything, "payments"), Ok(()));
        // Its own namespace's names in each form, and names the cluster's DNS does not read as one.
        for name in [
            "web.team-a",
            "*.team-a",
            "web.team-a.svc.cluster.local",
            "web-0.web-hl.team-a.svc.cluster.local",
            "10-0-0-1.team-a.pod.cluster.local",
            "api.example.com",
            "svc.example.com",
            "kafka-0.kafka-hl.team-a",
            // A last label that is no namespace here, as in most public names.
            "payments.elsewhere",
            "a.b.c.finance.example.com",
        ] {
            assert_eq!(check_in("team-a", &anything, &names(&[name], &[], &[], &[])), Ok(()), "{name}");
        }
        // A ClusterIssuer, an administrator's, may grant them.
        for name in ["payments", "payments.finance", "kafka-0.kafka-hl.finance.svc.cluster.local"] {
            assert_eq!(check(&anything, &names(&[name], &[], &[], &[]), &[], false, &[]), Ok(()), "{name}");
        }
        // Its own namespace: its identities (literally) and its Service names.
        assert_eq!(check_in("team-a", &p, &names(&["web.team-a.svc"], &[own], &[], &[])), Ok(()));
        // The trust domain is no grant for a namespaced Issuer.
        let domain_only = policy("allowedURIs: ['spiffe://cluster.local', 'spiffe://cluster.local/ns/team-a/sa/*']");
        let e = check_in("team-a", &domain_only, &names(&[], &[own], &[], &[])).unwrap_err();
        assert!(e.contains("only a literal entry"), "{e}");
    }

    #[test]
    fn a_wildcard_name_is_never_a_literal_grant() {
        // The pattern equals the requested wildcard, which covers istiod's name.
        let p = policy("allowedDNSNames: ['*.istio-system.svc', '*.example.com']\nallowedCommonNames: ['*']");
        let e = check(&p, &names(&["*.istio-system.svc"], &[], &[], &[]), &[], false, &[]).unwrap_err();
        assert!(e.contains("is protected"), "{e}");
        let e = check(&p, &names(&["*.example.com"], &[], &[], &[]), &[], false, &[]).unwrap_err();
        assert!(e.contains("covers ca.example.com"), "meshroot's serving name: {e}");
        for cn in ["istiod*.istio-system.svc", "i*.istio-system.svc", "*d.istio-system.svc", "*.*.svc"] {
            let e = check(&p, &names(&[], &[], &[], &[]), &[cn], false, &[]).unwrap_err();
            assert!(e.contains("has a wildcard other than a leading"), "{cn}: {e}");
        }
    }

    /// istiod takes every SAN entry of the form spiffe://<any>/ns/<ns>/sa/<sa> for a workload
    /// identity of that namespace, whatever the entry's type or trust domain (its XDS
    /// authentication compares only the namespace and service account). Such a URI in a foreign
    /// trust domain is protected like a mesh identity, and such an email is never issued.
    #[test]
    fn what_istiod_reads_as_an_identity_is_protected_in_any_trust_domain_and_san_type() {
        let foreign_istiod = "spiffe://evil.example/ns/istio-system/sa/istiod";
        let n = names(&[], &[foreign_istiod], &[], &[]);
        for glob in ["spiffe://evil.example/**", "**"] {
            let e = check(&policy(&format!("allowedURIs: ['{glob}']")), &n, &[], false, &[]).unwrap_err();
            assert!(e.contains("istiod reads it as a workload identity, whatever its trust domain"), "{glob}: {e}");
            assert!(e.contains("only a literal entry in policy.allowedURIs"), "{e}");
        }
        let literal = policy(&format!("allowedURIs: ['{foreign_istiod}', 'spiffe://evil.example/ns/team-a/sa/web']"));
        assert_eq!(check(&literal, &n, &[], false, &[]), Ok(()), "a ClusterIssuer's literal grant");
        let e = check_in("team-a", &literal, &n).unwrap_err();
        assert!(e.contains("never grants identities of another namespace"), "{e}");
        // Its own namespace, but in another trust domain than its signing mesh's (cluster.local): every
        // mesh of that trust domain would take it for one of its own.
        let own = names(&[], &["spiffe://evil.example/ns/team-a/sa/web"], &[], &[]);
        let e = check_in("team-a", &literal, &own).unwrap_err();
        assert!(e.contains("only in the trust domain of the mesh it signs with, \"cluster.local\""), "{e}");
        let in_mesh = "spiffe://cluster.local/ns/team-a/sa/web";
        let p = policy(&format!("allowedURIs: ['{in_mesh}']"));
        assert_eq!(check_in("team-a", &p, &names(&[], &[in_mesh], &[], &[])), Ok(()));
        // Held to the signing mesh's trust domain, whichever that is.
        let usages = Usages::from_names::<&str>(&[], false).unwrap();
        let held = literal.clone().held_to("team-a", "Evil.Example");
        assert_eq!(held.check(&Asked { names: &own, subject: &[], is_ca: false, usages: &usages }, &tenancy()), Ok(()));
        // Not of that form, but a namespace to an authorization policy: never issued.
        for uri in ["spiffe://evil.example/ns/istio-system/sa/istiod/x", "https://example.org/ns/istio-system/"] {
            let p = policy(&format!("allowedURIs: ['**', '{uri}']"));
            let e = check(&p, &names(&[], &[uri], &[], &[]), &[], false, &[]).unwrap_err();
            assert!(e.contains("is not a workload identity of the form"), "{uri}: {e}");
        }
        // A foreign trust domain cannot be granted whole: istiod would take it for every namespace's.
        let whole = policy("allowedURIs: ['spiffe://evil.example', 'spiffe://evil.example/ns/*/sa/*']");
        let e = check(&whole, &n, &[], false, &[]).unwrap_err();
        assert!(e.contains("only a literal entry"), "{e}");
        // A comma: istiod's CA joins a caller's SANs with commas and splits them again.
        let commas = policy("allowedURIs: ['https://example.org/**']\nallowedEmails: ['*@example.com']");
        let smuggled = "spiffe://cluster.local/ns/victim/sa/admin";
        let n =
            names(&[], &[&format!("https://example.org/a,{smuggled}")], &[], &[&format!("a,{smuggled},b@example.com")]);
        let e = check(&commas, &n, &[], false, &[]).unwrap_err();
        assert!(e.contains("URI") && e.contains("email") && e.matches("contains a comma").count() == 2, "{e}");
        // The trust domain "ns" would put a second namespace in front of the real one.
        let ns_domain = policy("allowedURIs: ['spiffe://ns/ns/team-a/sa/web']");
        let e = check_in("team-a", &ns_domain, &names(&[], &["spiffe://ns/ns/team-a/sa/web"], &[], &[])).unwrap_err();
        assert!(e.contains("has the trust domain ns"), "{e}");
        // A principal pattern such as */sa/admin matches a URI without /ns/.
        let leaf = |p: &str, n: RequestedNames, cns: &[&str]| check(&policy(p), &n, cns, false, &[]);
        let e =
            leaf("allowedURIs: ['**']", names(&[], &["spiffe://foreign.example/sa/admin"], &[], &[]), &[]).unwrap_err();
        assert!(e.contains("is protected"), "{e}");
        // An email istiod's CA would turn into a DNS name with /ns/ in it, and other non-plain forms.
        let open_emails = policy("allowedEmails: ['*@example.com', '*@*']");
        for email in [
            "x/ns/victim/y@example.com",
            "a@b@example.com",
            "\"x\"@example.com",
            "x@example..com",
            "@example.com",
            ".x@example.com",
            "x.@example.com",
            "x..y@example.com",
            "x@*.example.com",
        ] {
            let e = check(&open_emails, &names(&[], &[], &[], &[email]), &[], false, &[]).unwrap_err();
            assert!(e.contains("is not a plain address"), "{email}: {e}");
        }
        assert_eq!(
            check(&open_emails, &names(&[], &[], &[], &["first.last+tag@example.com"]), &[], false, &[]),
            Ok(())
        );
        // A subject value that reads as a namespace, where Envoy falls back to the subject.
        let e = leaf("allowedCommonNames: ['*']", names(&[], &[], &[], &[]), &["x/ns/victim/sa/admin"]).unwrap_err();
        assert!(e.contains("reads as a namespace"), "{e}");
        // The same identity as an email SAN, under an email pattern that matches it.
        let emails = policy("allowedEmails: ['*@example.com']");
        for email in
            ["spiffe://cluster.local/ns/victim/sa/x@example.com", "SPIFFE://cluster.local/ns/victim/sa/x@example.com"]
        {
            let e = check(&emails, &names(&[], &[], &[], &[email]), &[], false, &[]).unwrap_err();
            assert!(e.contains("starts with spiffe:") && e.contains("never issued"), "{email}: {e}");
        }
        assert_eq!(check(&emails, &names(&[], &[], &[], &["ops@example.com"]), &[], false, &[]), Ok(()));
    }

    #[test]
    fn mesh_identities_must_be_exactly_namespace_and_service_account() {
        let p = policy("allowedURIs: ['spiffe://cluster.local', 'spiffe://cluster.local/ns/team-a/**']");
        for uri in [
            "spiffe://cluster.local/ns/team-a/sa/x/ns/istio-system/sa/istiod",
            "spiffe://cluster.local/ns/team-a/sa/../../istio-system/sa/istiod",
            "spiffe://cluster.local/ns/team-a/sa/x?ns=istio-system",
            "spiffe://Cluster.Local/ns/team-a/sa/x",
        ] {
            let e = check(&p, &names(&[], &[uri], &[], &[]), &[], false, &[]).unwrap_err();
            assert!(e.contains("is not a workload identity of the form"), "{uri}: {e}");
        }
        let ok = names(&[], &["spiffe://cluster.local/ns/team-a/sa/x"], &[], &[]);
        assert_eq!(check(&p, &ok, &[], false, &[]), Ok(()));
    }

    #[test]
    fn meshroots_serving_ip_needs_a_literal_range() {
        let n = names(&[], &[], &["10.96.0.50"], &[]);
        let e = check(&policy("allowedIPRanges: ['10.0.0.0/8']"), &n, &[], false, &[]).unwrap_err();
        assert!(e.contains("10.96.0.50/32"), "{e}");
        assert_eq!(check(&policy("allowedIPRanges: ['10.96.0.50/32']"), &n, &[], false, &[]), Ok(()));
    }

    #[test]
    fn email_wildcards_stay_within_a_label() {
        let p = policy("allowedEmails: ['*@example.*']");
        assert_eq!(check(&p, &names(&[], &[], &[], &["first.last@example.com"]), &[], false, &[]), Ok(()));
        let e = check(&p, &names(&[], &[], &[], &["x@example.evil.org"]), &[], false, &[]).unwrap_err();
        assert!(e.contains("x@example.evil.org"), "{e}");
    }

    #[test]
    fn dns_patterns_reach_no_further_than_their_domain() {
        for bad in ["www.example.**", "a.*.com", "a**.example.com", ""] {
            let e =
                Policy::from_spec(&IssuancePolicy { allowed_dns_names: Some(vec![bad.into()]), ..Default::default() })
                    .unwrap_err();
            assert_eq!(e, PolicySpecError::DnsPattern(bad.into()));
            assert!(e.to_string().contains("may appear in the first label only"), "{bad}: {e}");
        }
        for good in ["**.example.com", "*.example.com", "web-*.example.com", "a.example.com"] {
            Policy::from_spec(&IssuancePolicy { allowed_dns_names: Some(vec![good.into()]), ..Default::default() })
                .unwrap();
        }
    }

    #[test]
    fn other_san_types_are_never_issued() {
        let mut n = names(&[], &[], &[], &[]);
        n.other = 2;
        let e = check(&policy("allowedDNSNames: ['**']"), &n, &[], false, &[]).unwrap_err();
        assert!(e.contains("2 SAN entries of other types"), "{e}");
    }

    #[test]
    fn usages_are_compared_by_meaning_and_cert_sign_follows_allow_ca() {
        let p = policy("allowCA: true\nallowedUsages: ['signing', 'key encipherment', 'server auth']");
        let n = names(&[], &[], &[], &[]);
        assert_eq!(check(&p, &n, &[], true, &["digital signature", "server auth"]), Ok(()));
        assert_eq!(check(&p, &n, &[], false, &[]), Ok(()), "the defaults are allowed");
        let e = check(&p, &n, &[], false, &["client auth", "cert sign"]).unwrap_err();
        assert_eq!(e, "usages cert sign, client auth are not in policy.allowedUsages");
    }

    #[test]
    fn any_and_ocsp_signing_need_explicit_listing() {
        let n = names(&[], &[], &[], &[]);
        let e = check(&policy("{}"), &n, &[], false, &["any", "ocsp signing"]).unwrap_err();
        assert!(e.contains("any and ocsp signing are issued only when listed explicitly"), "{e}");
        assert_eq!(check(&policy("{}"), &n, &[], false, &["server auth", "client auth"]), Ok(()));
        assert_eq!(check(&policy("allowedUsages: ['any']"), &n, &[], false, &["any"]), Ok(()));
    }

    #[test]
    fn invalid_specs_are_rejected_with_the_field_named() {
        for (yaml, field) in [
            ("allowedIPRanges: ['10.0.0.0/33']", "allowedIPRanges"),
            ("allowedUsages: ['fly']", "allowedUsages"),
            ("maxDuration: 'soon'", "maxDuration"),
            ("maxDuration: '0s'", "maxDuration"),
            ("maxDuration: '5m'", "maxDuration"),
            ("maxDuration: '8000y'", "maxDuration"),
            ("allowedSubjectAttributes: {Planet: ['x']}", "allowedSubjectAttributes"),
            ("allowedSubjectAttributes: {'2.5.4.3': ['x']}", "allowedSubjectAttributes"),
        ] {
            let e = Policy::from_spec(&serde_saphyr::from_str(yaml).unwrap()).unwrap_err();
            assert!(e.to_string().contains(field), "{yaml}: {e}");
        }
    }
}
