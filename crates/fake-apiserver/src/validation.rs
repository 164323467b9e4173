//! What a real API server refuses before it stores a write, where meshroot
//! could get it wrong: label syntax, Secret `type` changes and the keys a
//! `kubernetes.io/tls` Secret must hold. Each refusal is a 422 with the
//! field path, as kube-apiserver words it.

use crate::store::{ApiError, ResourceKey};
use serde_json::Value;

const SECRET_TYPE_TLS: &str = "kubernetes.io/tls";

fn invalid(message: String) -> ApiError {
    ApiError::new(422, "Invalid", message)
}

/// A label value: at most 63 characters, alphanumerics with `-`, `_` and `.`
/// inside, or empty.
fn label_value_problem(value: &str) -> Option<&'static str> {
    if value.len() > 63 {
        return Some("must be no more than 63 characters");
    }
    let inner_ok = value.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    let ends_ok = value.bytes().next().is_none_or(|b| b.is_ascii_alphanumeric())
        && value.bytes().last().is_none_or(|b| b.is_ascii_alphanumeric());
    if !(inner_ok && ends_ok) {
        return Some(
            "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
        );
    }
    None
}

/// A label key: an optional DNS-subdomain prefix and `/`, then a non-empty name valid as a value.
fn label_key_problem(key: &str) -> Option<&'static str> {
    let name = match key.split_once('/') {
        Some((prefix, name)) => {
            if !crate::store::is_subdomain(prefix) {
                return Some("prefix part must be a lowercase RFC 1123 subdomain");
            }
            name
        }
        None => key,
    };
    if name.is_empty() {
        return Some("name part must be non-empty");
    }
    label_value_problem(name)
}

fn validate_labels(obj: &Value) -> Result<(), ApiError> {
    let Some(labels) = obj.pointer("/metadata/labels").and_then(Value::as_object) else { return Ok(()) };
    for (key, value) in labels {
        if let Some(problem) = label_key_problem(key) {
            return Err(invalid(format!("metadata.labels: Invalid value: {key:?}: {problem}")));
        }
        let value = value.as_str().unwrap_or_default();
        if let Some(problem) = label_value_problem(value) {
            return Err(invalid(format!("metadata.labels: Invalid value: {value:?}: {problem}")));
        }
    }
    Ok(())
}

fn secret_type(obj: &Value) -> &str {
    obj.get("type").and_then(Value::as_str).filter(|t| !t.is_empty()).unwrap_or("Opaque")
}

fn validate_secret(old: Option<&Value>, new: &Value) -> Result<(), ApiError> {
    let kind = secret_type(new);
    if let Some(old) = old
        && secret_type(old) != kind
    {
        return Err(invalid(format!("type: Invalid value: {kind:?}: field is immutable")));
    }
    if kind == SECRET_TYPE_TLS {
        for required in ["tls.crt", "tls.key"] {
            // Present is enough; an empty value is allowed.
            if new.pointer("/data").and_then(|d| d.get(required)).is_none() {
                return Err(invalid(format!("data[{required}]: Required value")));
            }
        }
    }
    Ok(())
}

/// Checks a create (`old` is `None`) or an update of `key`'s object.
pub fn validate(key: &ResourceKey, old: Option<&Value>, new: &Value) -> Result<(), ApiError> {
    validate_labels(new)?;
    if key.group.is_empty() && key.plural == "secrets" {
        validate_secret(old, new)?;
    }
    Ok(())
}

/// A Secret's `type` as stored: `Opaque` when the write left it out.
pub fn default_secret_type(key: &ResourceKey, obj: &mut Value) {
    if key.group.is_empty()
        && key.plural == "secrets"
        && let Some(o) = obj.as_object_mut()
        && o.get("type").and_then(Value::as_str).is_none_or(str::is_empty)
    {
        o.insert("type".into(), Value::String("Opaque".into()));
    }
}
