//! Kubernetes plumbing shared by `meshroot serve`'s parts.

pub mod intermediates;
pub mod leader;
pub mod node_authz;
pub mod registry;
pub mod root;
pub mod rotation;
pub mod selector;
pub mod tokenreview;
pub mod watch;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use std::collections::BTreeMap;

/// Label on every object meshroot creates and may later change or delete.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY_VALUE: &str = "meshroot";
pub const FIELD_MANAGER: &str = "meshroot";

pub fn managed_labels() -> BTreeMap<String, String> {
    [(MANAGED_BY_LABEL.to_string(), MANAGED_BY_VALUE.to_string())].into()
}

pub fn is_managed(labels: Option<&BTreeMap<String, String>>) -> bool {
    labels.and_then(|l| l.get(MANAGED_BY_LABEL)).is_some_and(|v| v == MANAGED_BY_VALUE)
}

/// A Secret's value, if present.
pub fn secret_value<'a>(secret: &'a Secret, key: &str) -> Option<&'a [u8]> {
    secret.data.as_ref()?.get(key).map(|b| b.0.as_slice()).filter(|b| !b.is_empty())
}

pub fn secret_data(entries: &[(&str, &[u8])]) -> BTreeMap<String, ByteString> {
    entries.iter().map(|(k, v)| (k.to_string(), ByteString(v.to_vec()))).collect()
}

/// `kube::Error` as status code and reason, never with request bodies.
pub fn error_summary(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} {}: {}", s.code, s.reason, s.message),
        other => other.to_string(),
    }
}
