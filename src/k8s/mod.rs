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
