//! Kubernetes object name rules (DNS-1123).

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

#[cfg(test)]
mod tests {
    use super::*;

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
