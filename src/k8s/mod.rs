//! Kubernetes plumbing shared by `meshroot serve`'s parts.

pub mod intermediates;
pub mod leader;
pub mod node_authz;
pub mod registry;
pub mod root;
pub mod rotation;
pub mod tokenreview;
pub mod watch;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use std::collections::BTreeMap;

/// Label on every object meshroot creates and may later change or delete.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// The value of [`MANAGED_BY_LABEL`] on meshroot's objects.
pub const MANAGED_BY_VALUE: &str = "meshroot";
/// The field manager meshroot's creates, replaces and server-side applies write as.
pub const FIELD_MANAGER: &str = "meshroot";

/// The labels that mark an object as meshroot's: [`MANAGED_BY_LABEL`] = [`MANAGED_BY_VALUE`].
pub fn managed_labels() -> BTreeMap<String, String> {
    [(MANAGED_BY_LABEL.to_string(), MANAGED_BY_VALUE.to_string())].into()
}

/// Whether `labels` mark the object as meshroot's, so that meshroot may change or delete it.
pub fn is_managed(labels: Option<&BTreeMap<String, String>>) -> bool {
    labels.and_then(|l| l.get(MANAGED_BY_LABEL)).is_some_and(|v| v == MANAGED_BY_VALUE)
}

/// The annotation by which an administrator hands an existing object to meshroot (value
/// `"true"`): an `istiod-tls` or `cacerts` another tool wrote, for example istio-csr through
/// cert-manager. meshroot never overwrites an object it did not create without it; its first
/// write replaces the object whole, annotation included.
pub const ADOPT_ANNOTATION: &str = "meshroot.io/adopt";

/// Whether an administrator asked meshroot to take the object over ([`ADOPT_ANNOTATION`]).
pub fn adoption_requested(annotations: Option<&BTreeMap<String, String>>) -> bool {
    annotation_is_true(annotations, ADOPT_ANNOTATION)
}

/// Whether annotation `key` is set to `"true"`, as meshroot's opt-in annotations are.
pub fn annotation_is_true(annotations: Option<&BTreeMap<String, String>>, key: &str) -> bool {
    annotations.and_then(|a| a.get(key)).is_some_and(|v| v == "true")
}

/// `name` if it is at most `max - 11` bytes; otherwise exactly `max` bytes:
/// its start, then `-` and 10 hex digits of its SHA-256. Different long
/// names stay different, and a shortened name can never equal a name used
/// as it is (those are at least 11 bytes shorter), so no name can be crafted
/// to land on another's. `name` is a DNS subdomain (every Kubernetes object
/// name meshroot derives names from is), so the result is one, and also a
/// valid label value when `max` is 63.
pub fn bounded_name(name: &str, max: usize) -> String {
    const SUFFIX: usize = 11;
    if name.len().saturating_add(SUFFIX) <= max {
        return name.to_string();
    }
    let hash = crate::pki::chain::sha256_hex(name.as_bytes());
    let digest = hash.get(..SUFFIX - 1).unwrap_or(&hash);
    // A DNS subdomain is ASCII, so any byte index is a char boundary. The
    // start must end on an alphanumeric: trailing `-` or `.` become `0`, so
    // the length stays exactly `max`.
    let start = name.get(..max.saturating_sub(SUFFIX)).unwrap_or_default();
    let kept = start.trim_end_matches(|c: char| !c.is_ascii_alphanumeric());
    let padding = "0".repeat(start.len().saturating_sub(kept.len()));
    format!("{kept}{padding}-{digest}")
}

/// Replaces an object's whole `status` with a JSON patch of `/status`: fields the new status leaves out are removed, where a merge
/// patch would leave them behind, stale. For the statuses meshroot alone
/// writes (Mesh, Issuer, ClusterIssuer).
pub async fn replace_status<K, T>(api: &kube::Api<K>, name: &str, status: &T) -> Result<(), kube::Error>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    T: serde::Serialize,
{
    let operations = serde_json::json!([{"op": "add", "path": "/status", "value": status}]);
    let patch: kube::api::Patch<()> =
        kube::api::Patch::Json(serde_json::from_value(operations).map_err(kube::Error::SerdeError)?);
    api.patch_status(name, &kube::api::PatchParams::default(), &patch).await.map(|_| ())
}

/// A Secret's value, if present.
pub fn secret_value<'a>(secret: &'a Secret, key: &str) -> Option<&'a [u8]> {
    secret.data.as_ref()?.get(key).map(|b| b.0.as_slice()).filter(|b| !b.is_empty())
}

/// A Secret's `data` map from `(key, value)` pairs.
pub fn secret_data(entries: &[(&str, &[u8])]) -> BTreeMap<String, ByteString> {
    entries.iter().map(|(k, v)| (k.to_string(), ByteString(v.to_vec()))).collect()
}

/// `kube::Error` as status code and reason, never with request bodies.
pub fn error_summary(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} {}: {}", s.code, s.reason, s.message),
        // serde's message quotes the offending value, which may be a key.
        kube::Error::SerdeError(e) => {
            format!("cannot read the API server's response (invalid at line {}, column {})", e.line(), e.column())
        }
        other => other.to_string(),
    }
}

/// A Kubernetes API error as meshroot reports it: `Display` is
/// [`error_summary`] (code, reason and the server's message, no bodies), and
/// `source()` is the cause beneath it (a refused connection, a TLS failure),
/// so the chain survives. A response that did not deserialize has no
/// source: its parser error may quote the body.
pub struct ApiError(kube::Error);

impl From<kube::Error> for ApiError {
    fn from(e: kube::Error) -> Self {
        Self(e)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&error_summary(&self.0))
    }
}

/// The summary only: kube's own `Debug` may print a response body.
impl std::fmt::Debug for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiError({:?})", error_summary(&self.0))
    }
}

impl std::error::Error for ApiError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.0 {
            kube::Error::SerdeError(_) | kube::Error::Api(_) => None,
            other => std::error::Error::source(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::bounded_name;

    #[test]
    fn bounded_names_fit_stay_distinct_and_leave_short_names_alone() {
        assert_eq!(bounded_name("default", 63), "default");
        let longest_verbatim = "a".repeat(52);
        assert_eq!(bounded_name(&longest_verbatim, 63), longest_verbatim);
        let long = |tail: &str| format!("{}.{tail}", "mesh-".repeat(60));
        let (a, b) = (bounded_name(&long("a"), 63), bounded_name(&long("b"), 63));
        assert_ne!(a, b, "different long names stay different");
        for bounded in [&a, &b, &bounded_name(&"a".repeat(53), 63)] {
            assert_eq!(bounded.len(), 63, "{bounded}");
            assert!(bounded.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.'));
            assert!(bounded.ends_with(|c: char| c.is_ascii_alphanumeric()));
        }
        assert!(a.starts_with("mesh-mesh-"), "{a}");
        assert_eq!(bounded_name(&long("a"), 63), a, "the same name, the same result");
        // A cut that ends in `-` or `.` is padded, not trimmed: still exactly the limit.
        let dashes = format!("a{}b", "-".repeat(70));
        assert!(
            bounded_name(&dashes, 63).starts_with(&format!("a{}-", "0".repeat(51))),
            "{}",
            bounded_name(&dashes, 63)
        );
        // A name crafted to be another's shortened form is shortened itself, differently.
        assert_ne!(bounded_name(&a, 63), a);
        assert_eq!(bounded_name("x".repeat(300).as_str(), 253).len(), 253);
    }

    use super::ApiError;
    use std::error::Error as _;

    #[test]
    fn api_errors_keep_their_cause_and_never_quote_a_body() {
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        let error = ApiError::from(kube::Error::ReadEvents(refused));
        assert_eq!(error.source().map(|s| s.to_string()).as_deref(), Some("connection refused"));

        // A response whose parse error would quote a value from the body.
        let body = serde_json::from_str::<u32>(r#""tls.key=c2VjcmV0LWtleQ""#).unwrap_err();
        assert!(body.to_string().contains("c2VjcmV0LWtleQ"), "serde quotes the value: {body}");
        let error = ApiError::from(kube::Error::SerdeError(body));
        for shown in [error.to_string(), format!("{error:?}")] {
            assert!(!shown.contains("c2VjcmV0LWtleQ"), "{shown}");
            assert!(shown.contains("line 1"), "{shown}");
        }
        assert!(error.source().is_none(), "no cause that could quote the body");
    }
}
