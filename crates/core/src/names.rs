//! Kubernetes object name rules (DNS-1123), and the names meshroot assumes
//! when it is told none.

/// The cluster id Istio's clients send (`clusterid`) unless configured
/// otherwise: Istio's default for the local cluster.
pub const DEFAULT_CLUSTER_ID: &str = "Kubernetes";

/// A DNS-1123 label: at most 63 of `[a-z0-9-]`, alphanumeric at both ends.
/// Namespaces and mesh names are labels.
pub fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A DNS-1123 subdomain: dot-separated labels, at most 253 bytes.
/// Service account names are subdomains.
pub fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

/// `NAMESPACE/SERVICEACCOUNT`, as node accounts trusted to impersonate are
/// written (a Mesh's `trustedNodeAccounts`, dev's `--trusted-node-account`).
pub fn is_service_account_ref(s: &str) -> bool {
    s.split_once('/').is_some_and(|(ns, sa)| is_dns1123_label(ns) && is_dns1123_subdomain(sa))
}

/// A host name, optionally with a leading `*.` wildcard label.
pub fn is_dns_name(name: &str) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_account_refs() {
        assert!(is_service_account_ref("istio-system/ztunnel"));
        assert!(is_service_account_ref("ns/my.service-account"));
        for bad in ["ztunnel", "/ztunnel", "istio-system/", "Istio/ztunnel", "a/b/c", "a.b/c"] {
            assert!(!is_service_account_ref(bad), "{bad}");
        }
    }

    #[test]
    fn labels_and_subdomains() {
        assert!(is_dns1123_label("istio-system"));
        assert!(is_dns1123_label("a1"));
        for bad in ["", "-a", "a-", "A", "a_b", "a.b", &"a".repeat(64)] {
            assert!(!is_dns1123_label(bad), "{bad}");
        }
        assert!(is_dns1123_subdomain("my.service-account"));
        assert!(!is_dns1123_subdomain("my..sa"));
        assert!(!is_dns1123_subdomain("Sa"));
    }
}
