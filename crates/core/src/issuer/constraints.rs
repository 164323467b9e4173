//! Name constraints for the CAs an issuer signs, derived from its policy, so
//! an issued CA cannot sign outside what the issuer itself may sign.
//!
//! RFC 5280 constraints are coarser than policy patterns: a dNSName
//! constraint admits a domain and everything under it, a URI constraint
//! only a host. So each pattern becomes the tightest constraint that
//! contains it, and a CA is refused when that constraint would cover a
//! protected name the policy does not literally grant. A name kind the
//! policy does not allow at all is held to a placeholder no real name
//! matches (`invalid`, RFC 2606; the unspecified IP addresses). URIs are
//! the exception: see [`for_ca`].

use super::policy::Policy;
use super::tenancy::Tenancy;
use super::violation::{Violation, Violations};
use der::asn1::Any;
use der::{Encode, Tag, TagNumber};

/// Why a CA cannot get name constraints.
#[derive(Debug, thiserror::Error)]
pub enum ConstraintsError {
    /// The constraints would let the CA sign what the policy may not grant.
    #[error(transparent)]
    Denied(#[from] Violations),
    /// The extension does not encode.
    #[error("encoding name constraints: {0}")]
    Encoding(der::Error),
}

// Not `#[from]`: the message already says the encoder's error, so it is not also a `source()`.
impl From<der::Error> for ConstraintsError {
    fn from(e: der::Error) -> Self {
        ConstraintsError::Encoding(e)
    }
}

/// The DER value of a NameConstraints extension for a CA issued under
/// `policy`, or every reason it cannot be issued.
pub fn for_ca(policy: &Policy, tenancy: &Tenancy) -> Result<Vec<u8>, ConstraintsError> {
    let mut violations = Vec::new();
    let mut permitted: Vec<(u32, Vec<u8>)> = Vec::new();

    let dns: Vec<String> = policy.dns_names.iter().map(|p| domain_of_pattern(p)).collect();
    for (pattern, domain) in policy.dns_names.iter().zip(&dns) {
        if domain.is_empty() {
            violations.push(Violation::CaUnconstrainedDns(pattern.clone()));
            continue;
        }
        // Under a cluster domain other than cluster.local, istiod's names end
        // in `<ns>.svc.<domain>`: a constraint holding such a label covers them.
        let labels: Vec<&str> = domain.split('.').collect();
        if let Some(label) = labels.iter().find(|l| **l == "svc" || tenancy.is_istiod_namespace(l))
            && !policy.dns_names.iter().any(|n| n == domain)
        {
            violations.push(Violation::CaServiceNames {
                pattern: pattern.clone(),
                domain: domain.clone(),
                label: label.to_string(),
            });
            continue;
        }
        // The constraint may itself be a protected name (any istiod revision).
        if let Some(why) = tenancy.protected_dns(domain)
            && !policy.dns_names.iter().any(|n| n == domain)
        {
            violations.push(Violation::CaProtectedName {
                pattern: pattern.clone(),
                name: domain.clone(),
                why: why.to_string(),
            });
        }
        for (name, owner) in tenancy.protected_dns_names() {
            if covers(domain, &name) && *domain != name && !policy.dns_names.contains(&name) {
                violations.push(Violation::CaProtectedName { pattern: pattern.clone(), name, why: owner });
            }
        }
    }
    push_all(&mut permitted, DNS, dns.into_iter().map(String::into_bytes), PLACEHOLDER);

    // URI constraints cannot be used: rustls-webpki (ztunnel, meshroot's own
    // client-certificate check) rejects every URI SAN below a CA that has
    // any. So a CA gets no URIs at all, or every URI, which includes every
    // identity of every mesh: that needs each trust domain granted literally.
    if policy.uris.is_empty() {
        permitted.push((URI, PLACEHOLDER.to_vec()));
    } else {
        for domain in tenancy.trust_domains() {
            let literal = policy.uris.iter().any(|p| p.eq_ignore_ascii_case(&format!("spiffe://{domain}")));
            if !literal {
                violations.push(Violation::CaTrustDomain(domain.to_string()));
            }
        }
    }

    let emails = policy.emails.iter().map(|p| email_constraint(p).into_bytes());
    push_all(&mut permitted, EMAIL, emails, PLACEHOLDER);

    let ips: Vec<Vec<u8>> = policy
        .ip_ranges
        .iter()
        .map(|net| match net {
            ipnet::IpNet::V4(n) => [n.network().octets().as_slice(), n.netmask().octets().as_slice()].concat(),
            ipnet::IpNet::V6(n) => [n.network().octets().as_slice(), n.netmask().octets().as_slice()].concat(),
        })
        .collect();
    for net in &policy.ip_ranges {
        for protected in tenancy.protected_ips() {
            let literal = net.prefix_len() == net.max_prefix_len() && net.addr() == protected;
            // A sub-CA's leaf may carry an IPv4 address as ::ffff:a.b.c.d, which Go's clients
            // take for a.b.c.d: a range of IPv6 addresses must not hold that form either.
            let mapped = match protected {
                std::net::IpAddr::V4(v4) => net.contains(&std::net::IpAddr::V6(v4.to_ipv6_mapped())),
                std::net::IpAddr::V6(_) => false,
            };
            if (net.contains(&protected) && !literal) || mapped {
                violations.push(Violation::CaProtectedIp { net: *net, ip: protected });
            }
        }
    }
    if ips.is_empty() {
        // The unspecified addresses with full masks: 0.0.0.0/32 and ::/128.
        permitted.push((IP, [[0u8; 4], [255u8; 4]].concat()));
        permitted.push((IP, [[0u8; 16], [255u8; 16]].concat()));
    } else {
        permitted.extend(ips.into_iter().map(|ip| (IP, ip)));
    }

    if !violations.is_empty() {
        return Err(Violations(violations).into());
    }
    Ok(encode(&permitted)?)
}

const EMAIL: u32 = 1;
const DNS: u32 = 2;
const URI: u32 = 6;
const IP: u32 = 7;
const PLACEHOLDER: &[u8] = b"invalid";

fn push_all(out: &mut Vec<(u32, Vec<u8>)>, kind: u32, values: impl Iterator<Item = Vec<u8>>, placeholder: &[u8]) {
    let before = out.len();
    out.extend(values.map(|v| (kind, v)));
    if out.len() == before {
        out.push((kind, placeholder.to_vec()));
    }
}

/// Whether a dNSName constraint `domain` admits `name` (the name itself or
/// any name under it; an empty constraint admits every name).
fn covers(domain: &str, name: &str) -> bool {
    let (domain, name) = (domain.to_ascii_lowercase(), name.to_ascii_lowercase());
    domain.is_empty() || name == domain || name.ends_with(&format!(".{domain}"))
}

/// The domain a DNS pattern lives under: the labels after the last one
/// that holds a wildcard (`*.apps.example.com` → `apps.example.com`).
fn domain_of_pattern(pattern: &str) -> String {
    let labels: Vec<&str> = pattern.split('.').collect();
    let literal_from = labels.iter().rposition(|l| l.contains('*')).map_or(0, |i| i.saturating_add(1));
    labels.get(literal_from..).unwrap_or_default().join(".")
}

/// The rfc822Name constraint for an email pattern: the mailbox when it is
/// literal, else its domain (`.domain` when the domain has a wildcard).
fn email_constraint(pattern: &str) -> String {
    let (local, domain) = pattern.rsplit_once('@').unwrap_or(("*", pattern));
    if !local.contains('*') && !domain.contains('*') {
        return pattern.to_string();
    }
    if domain.contains('*') {
        let base = domain_of_pattern(domain);
        return if base.is_empty() { PLACEHOLDER_EMAIL_ALL.to_string() } else { format!(".{base}") };
    }
    domain.to_string()
}

/// A pattern like `*@*` can only be held to "any mailbox".
const PLACEHOLDER_EMAIL_ALL: &str = "";

/// NameConstraints ::= SEQUENCE { permittedSubtrees [0] GeneralSubtrees }
/// with each GeneralSubtree ::= SEQUENCE { base GeneralName } and the
/// GeneralName an implicitly tagged IA5String or OCTET STRING.
fn encode(permitted: &[(u32, Vec<u8>)]) -> der::Result<Vec<u8>> {
    let mut subtrees = Vec::new();
    for (kind, value) in permitted {
        let base = Any::new(Tag::ContextSpecific { constructed: false, number: TagNumber(*kind) }, value.clone())?;
        subtrees.extend(Any::new(Tag::Sequence, base.to_der()?)?.to_der()?);
    }
    let permitted = Any::new(Tag::ContextSpecific { constructed: true, number: TagNumber(0) }, subtrees)?;
    Any::new(Tag::Sequence, permitted.to_der()?)?.to_der()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::issuer::tenancy::OwnService;
    use x509_parser::extensions::{GeneralName, NameConstraints};
    use x509_parser::prelude::FromDer;

    fn policy(yaml: &str) -> Policy {
        Policy::from_spec(&serde_saphyr::from_str(yaml).unwrap()).unwrap()
    }

    fn tenancy() -> Tenancy {
        let mesh: crate::api::mesh::MeshSpec =
            serde_saphyr::from_str("trustDomain: cluster.local\nistiod: {namespace: istio-system}").unwrap();
        let own = OwnService { namespace: "meshroot".into(), name: "meshroot".into(), extra_names: vec![] };
        Tenancy::new([("default", &mesh)], &own)
    }

    fn permitted(der: &[u8]) -> Vec<String> {
        let (rest, nc) = NameConstraints::from_der(der).unwrap();
        assert!(rest.is_empty());
        assert!(nc.excluded_subtrees.is_none());
        nc.permitted_subtrees
            .unwrap()
            .iter()
            .map(|s| match &s.base {
                GeneralName::DNSName(d) => format!("dns:{d}"),
                GeneralName::URI(u) => format!("uri:{u}"),
                GeneralName::RFC822Name(e) => format!("email:{e}"),
                GeneralName::IPAddress(ip) => format!("ip:{ip:?}"),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn constraints_follow_the_policy_and_shut_unlisted_kinds() {
        let p = policy(
            "allowCA: true\nallowedDNSNames: ['*.apps.example.com', 'api.example.com']\n\
             allowedURIs: ['spiffe://cluster.local']\nallowedEmails: ['*@example.com']\n\
             allowedIPRanges: ['10.0.0.0/8']",
        );
        let got = permitted(&for_ca(&p, &tenancy()).unwrap());
        // No URI constraint: URIs are allowed, and the trust domain is granted literally.
        assert_eq!(
            got,
            ["dns:apps.example.com", "dns:api.example.com", "email:example.com", "ip:[10, 0, 0, 0, 255, 0, 0, 0]"]
        );
        let closed = permitted(&for_ca(&policy("allowCA: true"), &tenancy()).unwrap());
        assert_eq!(closed[..3], ["dns:invalid", "uri:invalid", "email:invalid"]);
        // The unspecified addresses with full masks, not /0.
        assert_eq!(closed[3], format!("ip:{:?}", [0u8, 0, 0, 0, 255, 255, 255, 255]));
        assert_eq!(closed.len(), 5, "{closed:?}");
    }

    /// meshroot's own serving names (`ca.example.com`, `10.96.0.50`) are protected as well.
    fn tenancy_with_serving_names() -> Tenancy {
        crate::issuer::policy::tests::tenancy()
    }

    #[test]
    fn a_ca_constrained_to_a_protected_name_or_address_needs_the_literal_grant() {
        let t = tenancy_with_serving_names();
        let refused = |yaml: &str| match for_ca(&policy(yaml), &t) {
            Err(ConstraintsError::Denied(v)) => v.0,
            other => panic!("{yaml}: expected a refusal, got {other:?}"),
        };
        // The constraint `ca.example.com` is itself meshroot's serving name.
        let v = refused("allowCA: true\nallowedDNSNames: ['*.ca.example.com']");
        assert!(matches!(v.as_slice(), [Violation::CaProtectedName { name, .. }] if name == "ca.example.com"), "{v:?}");
        for_ca(&policy("allowCA: true\nallowedDNSNames: ['*.ca.example.com', 'ca.example.com']"), &t).unwrap();
        // A range holding meshroot's address, unless that address alone is the grant.
        let v = refused("allowCA: true\nallowedIPRanges: ['10.96.0.0/16']");
        assert!(
            matches!(v.as_slice(), [Violation::CaProtectedIp { ip, .. }] if ip.to_string() == "10.96.0.50"),
            "{v:?}"
        );
        // Host bits set: written with the address, but a whole /16.
        let v = refused("allowCA: true\nallowedIPRanges: ['10.96.0.50/16']");
        assert!(matches!(v.as_slice(), [Violation::CaProtectedIp { .. }]), "{v:?}");
        let v = refused("allowCA: true\nallowedIPRanges: ['10.96.0.51/32', '10.96.0.0/24']");
        assert_eq!(v.len(), 1, "only the range that holds the address: {v:?}");
        for_ca(&policy("allowCA: true\nallowedIPRanges: ['10.96.0.50/32', '10.97.0.0/16']"), &t).unwrap();
        // The address written as IPv6, which Go's clients take for the IPv4 one: never granted.
        for range in ["::ffff:0:0/96", "::ffff:10.96.0.50/128", "::/0"] {
            let v = refused(&format!("allowCA: true\nallowedIPRanges: ['{range}']"));
            assert!(matches!(v.as_slice(), [Violation::CaProtectedIp { .. }]), "{range}: {v:?}");
        }
        for_ca(&policy("allowCA: true\nallowedIPRanges: ['fd00::/8']"), &t).unwrap();
    }

    #[test]
    fn a_ca_that_could_sign_protected_names_is_refused() {
        let t = tenancy();
        let e = for_ca(&policy("allowCA: true\nallowedDNSNames: ['*.istiod-next.istio-system.svc']"), &t)
            .unwrap_err()
            .to_string();
        assert!(e.contains("in-cluster Service names of \"istio-system\""), "{e}");
        let e = for_ca(&policy("allowCA: true\nallowedDNSNames: ['*.cluster.local']"), &t).unwrap_err().to_string();
        // `cluster.local` would admit istiod.istio-system.svc.cluster.local and meshroot's.
        assert!(e.contains("could sign istiod.istio-system.svc.cluster.local"), "{e}");
        assert!(e.contains("meshroot.meshroot.svc.cluster.local"), "{e}");
        for uris in ["['spiffe://cluster.local/ns/team-a/**']", "['https://*.example.com/**']", "['**']"] {
            let e = for_ca(&policy(&format!("allowCA: true\nallowedURIs: {uris}")), &t).unwrap_err().to_string();
            assert!(e.contains("every identity of mesh trust domain cluster.local"), "{uris}: {e}");
        }
        for pattern in ["**.svc.corp.internal", "*.istio-system.corp.internal", "*.svc"] {
            let e =
                for_ca(&policy(&format!("allowCA: true\nallowedDNSNames: ['{pattern}']")), &t).unwrap_err().to_string();
            assert!(e.contains("in-cluster Service names"), "{pattern}: {e}");
        }
        // The trust domain granted literally: an istiod cacerts intermediate.
        let ok = for_ca(&policy("allowCA: true\nallowedURIs: ['spiffe://cluster.local']"), &t).unwrap();
        assert!(!permitted(&ok).iter().any(|p| p.starts_with("uri:")));
    }

    #[test]
    fn pattern_domains() {
        assert_eq!(domain_of_pattern("*.apps.example.com"), "apps.example.com");
        assert_eq!(domain_of_pattern("**.example.com"), "example.com");
        assert_eq!(domain_of_pattern("web-*.example.com"), "example.com");
        assert_eq!(domain_of_pattern("*"), "");
        assert_eq!(domain_of_pattern("a.example.com"), "a.example.com");
        assert_eq!(email_constraint("ops@example.com"), "ops@example.com");
        assert_eq!(email_constraint("*@*.example.com"), ".example.com");
        assert!(covers("", "anything") && covers("svc", "a.b.svc") && !covers("b.svc", "ab.svc"));
    }
}
