//! An issuer's policy, validated once from its spec and applied to every
//! request it signs.

use super::glob;
use crate::api::issuer::IssuancePolicy;
use crate::k8s::intermediates::parse_duration;
use crate::pki::csr::RequestedNames;
use crate::pki::usage::{KeyUsage, Usage, Usages};
use ipnet::IpNet;
use time::Duration;

/// A validated [`IssuancePolicy`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Policy {
    pub allow_ca: bool,
    pub max_path_length: u8,
    pub max_duration: Option<Duration>,
    dns_names: Option<Vec<String>>,
    uris: Option<Vec<String>>,
    ip_ranges: Option<Vec<IpNet>>,
    emails: Option<Vec<String>>,
    common_names: Option<Vec<String>>,
    usages: Option<Vec<Usage>>,
}

/// What a request asks for, as the policy sees it.
#[derive(Clone, Copy, Debug)]
pub struct Asked<'a> {
    pub names: &'a RequestedNames,
    pub common_names: &'a [String],
    pub is_ca: bool,
    pub usages: &'a Usages,
}

impl Policy {
    pub fn from_spec(spec: &IssuancePolicy) -> Result<Self, String> {
        let max_duration = spec.max_duration.as_deref().map(|d| parse_duration("policy.maxDuration", d)).transpose()?;
        if let Some(max) = max_duration
            && max < super::sign::MIN_DURATION
        {
            return Err(format!(
                "policy.maxDuration {:?} is shorter than the shortest certificate meshroot issues (10m)",
                spec.max_duration.as_deref().unwrap_or_default()
            ));
        }
        let ip_ranges = spec
            .allowed_ip_ranges
            .as_ref()
            .map(|ranges| {
                ranges
                    .iter()
                    .map(|r| {
                        r.parse::<IpNet>().map_err(|_| format!("policy.allowedIPRanges: {r:?} is not a CIDR range"))
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?;
        let usages = spec
            .allowed_usages
            .as_ref()
            .map(|names| {
                names
                    .iter()
                    .map(|n| Usage::parse(n).ok_or_else(|| format!("policy.allowedUsages: unknown usage {n:?}")))
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?;
        let lowercase =
            |v: &Option<Vec<String>>| v.as_ref().map(|v| v.iter().map(|p| p.to_ascii_lowercase()).collect());
        Ok(Self {
            allow_ca: spec.allow_ca,
            max_path_length: spec.max_path_length.unwrap_or(0),
            max_duration,
            dns_names: lowercase(&spec.allowed_dns_names),
            uris: spec.allowed_uris.clone(),
            ip_ranges,
            emails: lowercase(&spec.allowed_emails),
            common_names: spec.allowed_common_names.clone(),
            usages,
        })
    }

    /// Every way `asked` breaks the policy, or `Ok` when it breaks none.
    pub fn check(&self, asked: &Asked<'_>) -> Result<(), String> {
        let mut violations = Vec::new();
        if asked.is_ca && !self.allow_ca {
            violations.push("isCA is not allowed (policy.allowCA is false)".to_string());
        }
        let names = asked.names;
        let dns_ok = |n: &str| patterns_match(&self.dns_names, &n.to_ascii_lowercase(), &['.']);
        check_each(&mut violations, "DNS name", "allowedDNSNames", &names.dns, dns_ok);
        check_each(&mut violations, "URI", "allowedURIs", &names.uris, |u| match &self.uris {
            Some(patterns) => patterns.iter().any(|p| glob::matches(p, u, &['/'])),
            // SPIFFE IDs are the meshes' workload identities: an issuer mints
            // them only when its policy names which ones.
            None => !is_spiffe(u),
        });
        check_each(&mut violations, "email", "allowedEmails", &names.emails, |e| {
            patterns_match(&self.emails, &e.to_ascii_lowercase(), &['@'])
        });
        if let Some(ranges) = &self.ip_ranges {
            for ip in &names.ips {
                if !ranges.iter().any(|r| r.contains(ip)) {
                    violations.push(format!("IP address {ip} is not in policy.allowedIPRanges"));
                }
            }
        }
        let restricts_names = self.dns_names.is_some()
            || self.uris.is_some()
            || self.ip_ranges.is_some()
            || self.emails.is_some()
            || self.common_names.is_some();
        if restricts_names && names.other > 0 {
            violations.push(format!(
                "{} SAN entries of other types (otherName, directoryName, ...) cannot be checked against the name policy",
                names.other
            ));
        }
        for cn in asked.common_names {
            let ok = match (&self.common_names, &self.dns_names) {
                (Some(patterns), _) => patterns.iter().any(|p| glob::matches(p, cn, &[])),
                (None, Some(_)) => dns_ok(cn),
                (None, None) => true,
            };
            if !ok {
                let list = if self.common_names.is_some() { "allowedCommonNames" } else { "allowedDNSNames" };
                violations.push(format!("common name {cn:?} is not allowed by policy.{list}"));
            }
        }
        if let Some(allowed) = &self.usages {
            let requested = asked
                .usages
                .key
                .iter()
                // An allowed CA gets cert sign implicitly; allowCA governs it.
                .filter(|k| !(asked.is_ca && **k == KeyUsage::CertSign))
                .map(|k| Usage::Key(*k))
                .chain(asked.usages.extended.iter().map(|oid| Usage::Extended(oid)));
            let denied: Vec<Usage> = requested.filter(|u| !allowed.contains(u)).collect();
            if !denied.is_empty() {
                let shown = Usages {
                    key: denied.iter().filter_map(|u| if let Usage::Key(k) = u { Some(*k) } else { None }).collect(),
                    extended: denied
                        .iter()
                        .filter_map(|u| if let Usage::Extended(e) = u { Some(*e) } else { None })
                        .collect(),
                };
                violations.push(format!("usages {} are not in policy.allowedUsages", shown.describe()));
            }
        }
        if violations.is_empty() { Ok(()) } else { Err(violations.join("; ")) }
    }
}

fn is_spiffe(uri: &str) -> bool {
    uri.get(..9).is_some_and(|scheme| scheme.eq_ignore_ascii_case("spiffe://"))
}

fn patterns_match(patterns: &Option<Vec<String>>, name: &str, separators: &[char]) -> bool {
    patterns.as_ref().is_none_or(|ps| ps.iter().any(|p| glob::matches(p, name, separators)))
}

fn check_each(violations: &mut Vec<String>, what: &str, list: &str, values: &[String], allowed: impl Fn(&str) -> bool) {
    for v in values {
        if !allowed(v) {
            violations.push(format!("{what} {v:?} is not allowed by policy.{list}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn check(p: &Policy, names: &RequestedNames, cns: &[&str], is_ca: bool, usages: &[&str]) -> Result<(), String> {
        let cns: Vec<String> = cns.iter().map(|s| s.to_string()).collect();
        let usages = Usages::from_names(usages, is_ca).unwrap();
        p.check(&Asked { names, common_names: &cns, is_ca, usages: &usages })
    }

    #[test]
    fn an_empty_policy_allows_everything_but_ca() {
        let p = policy("{}");
        let n = names(&["a.example.com"], &["urn:example:x"], &["10.0.0.1"], &["a@b.c"]);
        assert_eq!(check(&p, &n, &["anything"], false, &["code signing"]), Ok(()));
        let e = check(&p, &n, &[], true, &[]).unwrap_err();
        assert!(e.contains("isCA is not allowed"), "{e}");
    }

    #[test]
    fn names_outside_the_patterns_are_each_reported() {
        let p = policy(
            "allowedDNSNames: ['*.apps.example.com']\nallowedURIs: ['spiffe://cluster.local/ns/*/sa/*']\n\
             allowedIPRanges: ['10.0.0.0/8', 'fd00::/8']\nallowedEmails: ['*@example.com']",
        );
        let good = names(
            &["web.apps.example.com"],
            &["spiffe://cluster.local/ns/a/sa/b"],
            &["10.1.2.3", "fd00::1"],
            &["ops@example.com"],
        );
        assert_eq!(check(&p, &good, &["web.apps.example.com"], false, &[]), Ok(()));
        let bad = names(&["evil.com"], &["spiffe://other/ns/a/sa/b"], &["192.168.0.1"], &["x@evil.com"]);
        let e = check(&p, &bad, &["not-a-host"], false, &[]).unwrap_err();
        for part in [
            "DNS name \"evil.com\" is not allowed by policy.allowedDNSNames",
            "URI \"spiffe://other/ns/a/sa/b\" is not allowed by policy.allowedURIs",
            "IP address 192.168.0.1 is not in policy.allowedIPRanges",
            "email \"x@evil.com\" is not allowed by policy.allowedEmails",
            "common name \"not-a-host\" is not allowed by policy.allowedDNSNames",
        ] {
            assert!(e.contains(part), "missing {part:?} in {e}");
        }
    }

    #[test]
    fn spiffe_ids_need_an_explicit_uri_policy() {
        let n = names(&[], &["SPIFFE://cluster.local/ns/istio-system/sa/istiod"], &[], &[]);
        let e = check(&policy("{}"), &n, &[], false, &[]).unwrap_err();
        assert!(e.contains("is not allowed by policy.allowedURIs"), "{e}");
        let other = names(&[], &["https://example.com/id"], &[], &[]);
        assert_eq!(check(&policy("{}"), &other, &[], false, &[]), Ok(()));
        let allowed = policy("allowedURIs: ['spiffe://cluster.local/ns/istio-system/**']");
        // Patterns match case-sensitively.
        let e = check(&allowed, &n, &[], false, &[]).unwrap_err();
        assert_eq!(e, "URI \"SPIFFE://cluster.local/ns/istio-system/sa/istiod\" is not allowed by policy.allowedURIs");
        let n = names(&[], &["spiffe://cluster.local/ns/istio-system/sa/istiod"], &[], &[]);
        assert_eq!(check(&allowed, &n, &[], false, &[]), Ok(()));
    }

    #[test]
    fn an_empty_list_allows_none_of_its_kind() {
        let p = policy("allowedIPRanges: []");
        let e = check(&p, &names(&[], &[], &["10.0.0.1"], &[]), &[], false, &[]).unwrap_err();
        assert!(e.contains("10.0.0.1"), "{e}");
        assert_eq!(check(&p, &names(&["x.example"], &[], &[], &[]), &[], false, &[]), Ok(()));
    }

    #[test]
    fn unverifiable_san_types_are_refused_under_a_name_policy() {
        let mut n = names(&[], &[], &[], &[]);
        n.other = 2;
        assert_eq!(check(&policy("{}"), &n, &[], false, &[]), Ok(()));
        let e = check(&policy("allowedDNSNames: ['*']"), &n, &[], false, &[]).unwrap_err();
        assert!(e.contains("2 SAN entries of other types"), "{e}");
    }

    #[test]
    fn usages_are_compared_by_meaning_and_cert_sign_follows_allow_ca() {
        let p = policy("allowCA: true\nallowedUsages: ['signing', 'key encipherment', 'server auth']");
        let n = names(&["a.b"], &[], &[], &[]);
        assert_eq!(check(&p, &n, &[], true, &["digital signature", "server auth"]), Ok(()));
        assert_eq!(check(&p, &n, &[], false, &[]), Ok(()), "the defaults are allowed");
        let e = check(&p, &n, &[], false, &["client auth", "cert sign"]).unwrap_err();
        assert_eq!(e, "usages cert sign, client auth are not in policy.allowedUsages");
    }

    #[test]
    fn invalid_specs_are_rejected_with_the_field_named() {
        for (yaml, field) in [
            ("allowedIPRanges: ['10.0.0.0/33']", "allowedIPRanges"),
            ("allowedUsages: ['fly']", "allowedUsages"),
            ("maxDuration: 'soon'", "maxDuration"),
            ("maxDuration: '0s'", "maxDuration"),
            ("maxDuration: '5m'", "maxDuration"),
        ] {
            let e = Policy::from_spec(&serde_saphyr::from_str(yaml).unwrap()).unwrap_err();
            assert!(e.contains(field), "{yaml}: {e}");
        }
    }
}
