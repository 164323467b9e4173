//! SPIFFE IDs (SPIFFE-ID.md) and Istio's workload identity shape.

use super::error::{PkiError, Result};
use std::fmt;

/// The longest SPIFFE ID accepted, in bytes (the SPIFFE spec's limit; a URI of exactly this length passes).
pub const MAX_SPIFFE_ID_BYTES: usize = 2048;
/// The longest trust domain accepted, in bytes (the SPIFFE spec's limit; inclusive).
pub const MAX_TRUST_DOMAIN_BYTES: usize = 255;

/// A parsed, validated SPIFFE ID.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SpiffeId {
    trust_domain: String,
    path: String,
}

impl SpiffeId {
    /// Parses and validates a SPIFFE ID: the lowercase `spiffe://` scheme, a trust domain as
    /// [`validate_trust_domain`] allows, and an optional path of non-empty segments of letters,
    /// digits, `.`, `-` and `_`, with no dot segments and no trailing slash.
    pub fn parse(input: &str) -> Result<Self> {
        let (td, path) = split(input)?;
        Ok(Self { trust_domain: td.to_string(), path: path.to_string() })
    }

    /// The trust domain, e.g. `cluster.local`.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The path, starting with `/`, or empty when the ID has none.
    pub fn path(&self) -> &str {
        &self.path
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}{}", self.trust_domain, self.path)
    }
}

/// Validates a SPIFFE ID as [`SpiffeId::parse`] does and returns its trust domain and path
/// (empty or starting with `/`), borrowed: the signing path needs only the parts.
fn split(input: &str) -> Result<(&str, &str)> {
    if input.len() > MAX_SPIFFE_ID_BYTES {
        return Err(err(format!("longer than {MAX_SPIFFE_ID_BYTES} bytes")));
    }
    let Some(rest) = input.strip_prefix("spiffe://") else {
        return Err(err("scheme must be spiffe://, in lowercase"));
    };
    let (td, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    validate_trust_domain(td)?;
    validate_path(path)?;
    Ok((td, path))
}

/// Validates a trust domain name: lowercase letters, digits, `.`, `-`, `_`.
pub fn validate_trust_domain(td: &str) -> Result<()> {
    if td.is_empty() {
        return Err(err("trust domain is empty"));
    }
    if td.len() > MAX_TRUST_DOMAIN_BYTES {
        return Err(err(format!("trust domain is longer than {MAX_TRUST_DOMAIN_BYTES} bytes")));
    }
    if let Some(c) = td.chars().find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '.' | '-' | '_')) {
        let what = match c {
            ':' => "a port".to_string(),
            '@' => "userinfo".to_string(),
            '%' => "percent-encoding".to_string(),
            '?' => "a query".to_string(),
            '#' => "a fragment".to_string(),
            'A'..='Z' => "uppercase letters".to_string(),
            _ => format!("the character {c:?}"),
        };
        return Err(err(format!("trust domain contains {what}")));
    }
    Ok(())
}

fn validate_path(path: &str) -> Result<()> {
    if path.is_empty() {
        return Ok(());
    }
    if path.ends_with('/') {
        return Err(err("path has a trailing slash"));
    }
    let Some(segments) = path.strip_prefix('/') else {
        return Err(err("path does not start with /"));
    };
    for segment in segments.split('/') {
        match segment {
            "" => return Err(err("path has an empty segment")),
            "." | ".." => return Err(err("path has a dot segment")),
            _ => {}
        }
        if let Some(c) = segment.chars().find(|c| !matches!(c, 'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' | '_')) {
            let what = match c {
                '?' => "a query".to_string(),
                '#' => "a fragment".to_string(),
                '%' => "percent-encoding".to_string(),
                _ => format!("the character {c:?}"),
            };
            return Err(err(format!("path contains {what}")));
        }
    }
    Ok(())
}

fn err(msg: impl Into<String>) -> PkiError {
    PkiError::Spiffe(msg.into())
}

/// An Istio workload identity: `spiffe://<trust domain>/ns/<ns>/sa/<sa>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct WorkloadIdentity {
    /// The SPIFFE trust domain, e.g. `cluster.local`.
    pub trust_domain: String,
    /// The workload's Kubernetes namespace.
    pub namespace: String,
    /// The workload's Kubernetes service account.
    pub service_account: String,
}

impl WorkloadIdentity {
    /// Builds an identity from its parts, which must form a valid SPIFFE ID.
    pub fn new(trust_domain: &str, namespace: &str, service_account: &str) -> Result<Self> {
        // Validate by parsing the URI form, so both constructors agree.
        Self::parse(&format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"))
    }

    /// Parses `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`; any other path is refused.
    pub fn parse(input: &str) -> Result<Self> {
        let (trust_domain, path) = split(input)?;
        match namespace_and_account(path) {
            Some((ns, sa)) => Ok(Self {
                trust_domain: trust_domain.to_string(),
                namespace: ns.to_string(),
                service_account: sa.to_string(),
            }),
            None => {
                Err(err("an Istio identity has the form spiffe://<trust domain>/ns/<namespace>/sa/<service account>"))
            }
        }
    }
}

/// The namespace and service account of a path `/ns/<namespace>/sa/<service account>`, with
/// any (even empty) segments and no others, as Istio's `spiffe.ParseIdentity` splits it.
pub fn namespace_and_account(path: &str) -> Option<(&str, &str)> {
    let mut parts = path.split('/');
    match (parts.next(), parts.next(), parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(""), Some("ns"), Some(ns), Some("sa"), Some(sa), None) => Some((ns, sa)),
        _ => None,
    }
}

impl fmt::Display for WorkloadIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}/ns/{}/sa/{}", self.trust_domain, self.namespace, self.service_account)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_valid_ids() {
        let id = SpiffeId::parse("spiffe://cluster.local/ns/default/sa/bookinfo").unwrap();
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.path(), "/ns/default/sa/bookinfo");
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/default/sa/bookinfo");
        assert!(SpiffeId::parse("spiffe://td").is_ok());
        assert!(SpiffeId::parse("spiffe://my_td-1.example/a/B.c_d-e").is_ok());
    }

    #[test]
    fn rejects_each_invalid_form() {
        let cases = [
            ("SPIFFE://cluster.local/ns/a/sa/b", "scheme"),
            ("https://cluster.local/ns/a/sa/b", "scheme"),
            ("spiffe://Cluster.local/ns/a/sa/b", "uppercase"),
            ("spiffe://cluster.local:8080/ns/a/sa/b", "port"),
            ("spiffe://user@cluster.local/ns/a/sa/b", "userinfo"),
            ("spiffe://clu%73ter.local/ns/a", "percent"),
            ("spiffe:///ns/a/sa/b", "empty"),
            ("spiffe://cluster.local/ns/a/sa/b?x=1", "query"),
            ("spiffe://cluster.local/ns/a/sa/b#frag", "fragment"),
            ("spiffe://cluster.local/ns/../sa/b", "dot segment"),
            ("spiffe://cluster.local/ns/./sa/b", "dot segment"),
            ("spiffe://cluster.local/ns//sa/b", "empty segment"),
            ("spiffe://cluster.local/ns/a/sa/b/", "trailing"),
            ("spiffe://cluster.local/ns/a/sa/b\0", "character"),
            ("spiffe://cluster.local/ns/a/sa/bé", "character"),
            ("spiffe://cluster.local/ns/a%2F/sa/b", "percent"),
        ];
        for (input, why) in cases {
            let e = SpiffeId::parse(input).expect_err(input).to_string();
            assert!(e.contains(why), "{input}: {e} should mention {why}");
        }
        let long = format!("spiffe://td/{}", "a".repeat(MAX_SPIFFE_ID_BYTES));
        assert!(SpiffeId::parse(&long).is_err());
        let long_td = format!("spiffe://{}/a", "a".repeat(256));
        assert!(SpiffeId::parse(&long_td).is_err());
    }

    /// Killed mutants: the limits are inclusive (`>` not `>=`), and a
    /// query or fragment in the trust domain is named as such.
    #[test]
    fn limits_are_inclusive_and_trust_domain_refusals_say_why() {
        let prefix = "spiffe://td/";
        let at_limit = format!("{prefix}{}", "a".repeat(2048 - prefix.len()));
        assert_eq!(at_limit.len(), 2048);
        SpiffeId::parse(&at_limit).unwrap();
        let e = SpiffeId::parse(&format!("{at_limit}a")).unwrap_err().to_string();
        assert!(e.contains("longer than 2048 bytes"), "{e}");
        let td = "a".repeat(255);
        SpiffeId::parse(&format!("spiffe://{td}/a")).unwrap();
        let e = SpiffeId::parse(&format!("spiffe://{td}a/a")).unwrap_err().to_string();
        assert!(e.contains("trust domain is longer than 255 bytes"), "{e}");
        for (input, why) in [
            ("spiffe://td?x=1/ns/a", "trust domain contains a query"),
            ("spiffe://td#f/ns/a", "trust domain contains a fragment"),
        ] {
            let e = SpiffeId::parse(input).unwrap_err().to_string();
            assert!(e.contains(why), "{input}: {e}");
        }
    }

    #[test]
    fn workload_identity_requires_istio_shape() {
        let w = WorkloadIdentity::parse("spiffe://cluster.local/ns/default/sa/bookinfo").unwrap();
        assert_eq!((w.namespace.as_str(), w.service_account.as_str()), ("default", "bookinfo"));
        assert_eq!(WorkloadIdentity::new("cluster.local", "default", "bookinfo").unwrap(), w);
        for bad in [
            "spiffe://cluster.local/ns/default",
            "spiffe://cluster.local/ns/default/sa/b/extra",
            "spiffe://cluster.local/namespace/default/sa/b",
            "spiffe://cluster.local",
        ] {
            assert!(WorkloadIdentity::parse(bad).is_err(), "{bad}");
        }
        assert!(WorkloadIdentity::new("Bad", "a", "b").is_err());
    }
}
