//! Every way a request (or a CA's name constraints) can break an issuer's
//! policy: one variant per rule, so a refusal lists causes, not prose, and
//! its text is written in one place.

use super::tenancy::Protection;
use crate::pki::pem::printable;
use ipnet::IpNet;
use std::fmt;
use std::net::IpAddr;
use thiserror::Error;

/// One rule of the policy a request breaks.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum Violation {
    /// Matching the request's names against the policy's patterns would cost more than one
    /// request may: pattern matching takes the product of the lengths.
    #[error(
        "matching this request's names against the policy's patterns would take {work} steps, more \
         than the {limit} meshroot spends on one request: ask for fewer or shorter names, or shorten the \
         policy's patterns"
    )]
    TooMuchMatching {
        /// The steps the request would take: each name's length times its patterns' lengths.
        work: usize,
        /// The most one request may take.
        limit: usize,
    },
    /// A CA certificate asked of a policy without `allowCA`.
    #[error("isCA is not allowed (policy.allowCA is false)")]
    CaNotAllowed,
    /// meshroot's serving address, without a ClusterIssuer's literal grant.
    #[error(
        "IP address {ip} is protected (meshroot's serving address); only a ClusterIssuer's literal \
         policy.allowedIPRanges entry ({ip}/{}) grants it",
        host_prefix(.ip)
    )]
    ProtectedIp {
        /// The address asked for.
        ip: IpAddr,
    },
    /// An address outside `allowedIPRanges`.
    #[error("IP address {0} is not in policy.allowedIPRanges")]
    IpNotAllowed(IpAddr),
    /// SANs of kinds meshroot never issues.
    #[error("{0} SAN entries of other types (otherName, directoryName, ...) are never issued")]
    OtherSans(usize),
    /// A URI no `allowedURIs` entry matches.
    #[error("URI {} is not allowed by policy.allowedURIs", shown(.0))]
    UriNotAllowed(String),
    /// A protected URI (a mesh's trust domain, or one istiod reads as an identity) that is not a
    /// plain workload identity.
    #[error(
        "URI {} is protected ({why}) but is not a workload identity of the form \
         spiffe://<trust domain>/ns/<namespace>/sa/<service account>",
        shown(.uri)
    )]
    UriNotWorkloadIdentity {
        /// The URI asked for.
        uri: String,
        /// Whose trust domain it is in.
        why: Protection,
    },
    /// A namespaced Issuer asked for an identity of another namespace.
    #[error(
        "URI {} is protected ({why}); a namespaced Issuer in {namespace:?} never grants identities of another \
         namespace",
        shown(.uri)
    )]
    UriOtherNamespace {
        /// The URI asked for.
        uri: String,
        /// Whose identity it is.
        why: Protection,
        /// The Issuer's namespace.
        namespace: String,
    },
    /// A namespaced Issuer's identity in another trust domain than its signing mesh's.
    #[error(
        "URI {} is protected ({why}); a namespace's Issuer issues identities only in the trust domain of the \
         mesh it signs with, {trust_domain:?}: every mesh under the root accepts its own trust domain's \
         identities from any of them",
        shown(.uri)
    )]
    UriOtherTrustDomain {
        /// The URI asked for.
        uri: String,
        /// Whose identity it is.
        why: Protection,
        /// The signing mesh's trust domain.
        trust_domain: String,
    },
    /// A protected identity matched by a pattern only, in a namespaced Issuer's policy.
    #[error(
        "URI {} is protected ({why}); only a literal entry in policy.allowedURIs grants it, not a pattern",
        shown(.uri)
    )]
    UriPatternInNamespace {
        /// The URI asked for.
        uri: String,
        /// Whose identity it is.
        why: Protection,
    },
    /// A protected identity matched by a pattern only, in a ClusterIssuer's policy.
    #[error(
        "URI {} is protected ({why}); only a literal entry in policy.allowedURIs grants it (the identity \
         itself, or its whole trust domain as spiffe://<trust domain>), not a pattern",
        shown(.uri)
    )]
    UriPattern {
        /// The URI asked for.
        uri: String,
        /// Whose identity it is.
        why: Protection,
    },
    /// A common name with a wildcard some verifiers would match against host names.
    #[error(
        "{what} {} has a wildcard other than a leading \"*.\" label, which some verifiers match against host \
         names",
        shown(.name)
    )]
    Wildcard {
        /// "DNS name" or "common name".
        what: &'static str,
        /// The name asked for.
        name: String,
    },
    /// A protected name asked of a namespaced Issuer.
    #[error("{what} {} is protected ({why}); a namespaced Issuer never grants it", shown(.name))]
    ProtectedNameInNamespace {
        /// "DNS name" or "common name".
        what: &'static str,
        /// The name asked for.
        name: String,
        /// Whose name it is.
        why: Protection,
    },
    /// A protected name matched by a pattern only.
    #[error(
        "{what} {} is protected ({why}); only a literal entry (no wildcards) in {lists} grants it, not a pattern",
        shown(.name)
    )]
    ProtectedNamePattern {
        /// "DNS name" or "common name".
        what: &'static str,
        /// The name asked for.
        name: String,
        /// Whose name it is.
        why: Protection,
        /// The policy lists that could grant it.
        lists: &'static str,
    },
    /// A namespaced Issuer asked for another namespace's Service or pod name, as the cluster's DNS
    /// reads it (`<svc>.<ns>`, `….<ns>.svc…`, `….<ns>.pod…`).
    #[error(
        "{what} {} is a Service or pod name of namespace {namespace:?} (as the cluster's DNS reads it); a \
         namespaced Issuer signs its own namespace's names only, and a ClusterIssuer grants others",
        shown(.name)
    )]
    OtherNamespaceService {
        /// "DNS name" or "common name".
        what: &'static str,
        /// The name asked for.
        name: String,
        /// The namespace whose Service it names.
        namespace: String,
    },
    /// A namespaced Issuer asked for a single-label DNS name (not a common name).
    #[error(
        "{what} {} has one label, which every namespace's clients read as a Service of their own namespace; a \
         namespaced Issuer never grants it, a ClusterIssuer may",
        shown(.name)
    )]
    SingleLabelName {
        /// "DNS name" or "common name".
        what: &'static str,
        /// The name asked for.
        name: String,
    },
    /// A name no entry matches.
    #[error("{what} {} is not allowed by {lists}", shown(.name))]
    NameNotAllowed {
        /// "DNS name" or "common name".
        what: &'static str,
        /// The name asked for.
        name: String,
        /// The policy lists that could grant it.
        lists: &'static str,
    },
    /// An email address no `allowedEmails` entry matches.
    #[error("{what} {} is not allowed by policy.allowedEmails", shown(.email))]
    EmailNotAllowed {
        /// "email" (a SAN) or "subject emailAddress".
        what: &'static str,
        /// The address asked for.
        email: String,
    },
    /// A URI or email with a comma: istiod's CA joins a caller's SANs with commas and splits them
    /// again, so one entry could become several, a workload identity among them.
    #[error(
        "{what} {} contains a comma, which istiod's CA splits SAN lists on; never issued",
        shown(.name)
    )]
    CommaInName {
        /// "URI", "email" or "subject emailAddress".
        what: &'static str,
        /// The name asked for.
        name: String,
    },
    /// A subject value with `/ns/` in it, which Istio's authorization policies match as a
    /// namespace when Envoy takes the subject for the principal.
    #[error(
        "subject attribute {name}={} reads as a namespace to Istio's authorization policies (/ns/ in it); \
         never issued",
        shown(.value)
    )]
    SubjectLooksLikeIdentity {
        /// The attribute's short name or dotted OID.
        name: String,
        /// The value asked for.
        value: String,
    },
    /// An identity in the trust domain `ns`.
    #[error(
        "URI {} has the trust domain ns, so Istio's namespace pattern .*/ns/<namespace>/.* would also read \
         it as namespace \"ns\"; never issued",
        shown(.0)
    )]
    TrustDomainNs(String),
    /// An email address outside the plain `local@domain` form meshroot issues.
    #[error(
        "{what} {} is not a plain address (dot-separated letters, digits and !#$%&'*+=?^_`{{|}}~- before one @, \
         a DNS name without a wildcard after it): istiod's CA would turn it into a DNS name that authorization \
         policies match; never issued",
        shown(.email)
    )]
    EmailNotPlain {
        /// "email" (a SAN) or "subject emailAddress".
        what: &'static str,
        /// The address asked for.
        email: String,
    },
    /// An email address that istiod would read as a workload identity.
    #[error(
        "{what} {} starts with spiffe:, and istiod reads every SAN entry, whatever its type, as a workload \
         identity when it has that form; never issued",
        shown(.email)
    )]
    EmailLooksLikeIdentity {
        /// "email" (a SAN) or "subject emailAddress".
        what: &'static str,
        /// The address asked for.
        email: String,
    },
    /// A subject attribute whose value is not in a string type meshroot reads as text.
    #[error(
        "subject attribute {0} has a value meshroot does not read as text (not a UTF8, Printable, IA5 or \
         Numeric string); never issued, since verifiers may read it as text that no check saw"
    )]
    AttributeNotString(String),
    /// A subject attribute no `allowedSubjectAttributes` entry matches.
    #[error("subject attribute {name}={} is not allowed by policy.allowedSubjectAttributes", shown(.value))]
    AttributeNotAllowed {
        /// The attribute's short name or OID.
        name: String,
        /// Its value.
        value: String,
    },
    /// Usages outside the allowed ones.
    #[error(
        "usages {denied} are not in {}{}",
        if *.listed { "policy.allowedUsages" } else { DEFAULT_USAGES_HINT },
        if *.any_or_ocsp { " (any and ocsp signing are issued only when listed explicitly)" } else { "" }
    )]
    Usages {
        /// The refused usages, described.
        denied: String,
        /// Whether the policy lists its usages (else the defaults applied).
        listed: bool,
        /// Whether `any` or `ocsp signing` is among them.
        any_or_ocsp: bool,
    },
    /// A CA's DNS constraint would be empty: every name.
    #[error("DNS pattern {0:?} would leave a CA unconstrained for DNS names; name a domain (`*.example.com`)")]
    CaUnconstrainedDns(String),
    /// A CA's DNS constraint would hold in-cluster Service names.
    #[error(
        "a CA constrained to DNS pattern {pattern:?} ({domain}) could sign in-cluster Service names of {label:?}, \
         istiod's or meshroot's among them; only a literal policy.allowedDNSNames entry grants one"
    )]
    CaServiceNames {
        /// The policy's pattern.
        pattern: String,
        /// The constraint's domain.
        domain: String,
        /// The label that makes it in-cluster (`svc` or istiod's namespace).
        label: String,
    },
    /// A CA's DNS constraint would cover a protected name.
    #[error(
        "a CA constrained to DNS pattern {pattern:?} could sign {name} ({why}), which only a literal \
         policy.allowedDNSNames entry grants"
    )]
    CaProtectedName {
        /// The policy's pattern.
        pattern: String,
        /// The protected name it covers.
        name: String,
        /// Whose name it is.
        why: String,
    },
    /// A CA allowed URIs would cover a mesh's whole trust domain.
    #[error(
        "a CA allowed URIs could sign every identity of mesh trust domain {0}, istiod's included (URI name \
         constraints are not honoured by every verifier, so they cannot narrow it); only a literal \
         policy.allowedURIs entry spiffe://{0} grants that"
    )]
    CaTrustDomain(String),
    /// A CA's IP constraint would cover meshroot's serving address.
    #[error(
        "a CA constrained to {net} could sign {ip} (meshroot's serving address), which only a literal \
         policy.allowedIPRanges entry ({ip}/{}) grants",
        net.max_prefix_len()
    )]
    CaProtectedIp {
        /// The policy's range.
        net: IpNet,
        /// The protected address in it.
        ip: IpAddr,
    },
}

/// Every rule a request breaks: shown as at most [`MAX_REPORTED`] of them, then how many more, so a request
/// with thousands of names does not make a message as big.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub struct Violations(pub Vec<Violation>);

/// At most this many violations are spelled out in one refusal.
pub const MAX_REPORTED: usize = 8;

impl fmt::Display for Violations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, violation) in self.0.iter().take(MAX_REPORTED).enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{violation}")?;
        }
        let more = self.0.len().saturating_sub(MAX_REPORTED);
        if more > 0 {
            write!(f, "; and {more} more")?;
        }
        Ok(())
    }
}

const DEFAULT_USAGES_HINT: &str = "the default usages (digital signature, key encipherment, server auth, client \
                                   auth); list others in policy.allowedUsages";

/// The prefix length of a single address: 32 or 128.
fn host_prefix(ip: &IpAddr) -> u8 {
    if ip.is_ipv4() { 32 } else { 128 }
}

/// Requested text echoed in a refusal: quoted, cut short, no control characters.
pub(super) fn shown(text: &str) -> String {
    format!("{:?}", printable(text, 200))
}
