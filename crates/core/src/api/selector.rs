//! Kubernetes `LabelSelector` matching (matchLabels and matchExpressions).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use std::collections::BTreeMap;

/// Why a selector cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// `In` or `NotIn` with no values.
    #[error("matchExpressions: {key} {operator} needs values")]
    NeedsValues {
        /// The expression's label key.
        key: String,
        /// The operator, as written.
        operator: String,
    },
    /// `Exists` or `DoesNotExist` with values.
    #[error("matchExpressions: {key} {operator} takes no values")]
    TakesNoValues {
        /// The expression's label key.
        key: String,
        /// The operator, as written.
        operator: String,
    },
    /// An operator other than `In`, `NotIn`, `Exists` and `DoesNotExist`, which [`matches()`] would treat as
    /// never matching.
    #[error("matchExpressions: unknown operator {0:?}")]
    UnknownOperator(String),
}

/// Checks a selector's operators, so a bad one is reported, not ignored.
pub fn validate(selector: &LabelSelector) -> Result<(), SelectorError> {
    for e in selector.match_expressions.iter().flatten() {
        let values = e.values.as_deref().unwrap_or_default();
        let (key, operator) = (e.key.clone(), e.operator.clone());
        match e.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => return Err(SelectorError::NeedsValues { key, operator }),
            "Exists" | "DoesNotExist" if !values.is_empty() => {
                return Err(SelectorError::TakesNoValues { key, operator });
            }
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => return Err(SelectorError::UnknownOperator(other.to_string())),
        }
    }
    Ok(())
}

/// Whether `labels` satisfy `selector`. An empty selector matches everything.
pub fn matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let by_labels = selector.match_labels.iter().flatten().all(|(k, v)| labels.get(k) == Some(v));
    let by_expressions = selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        let value = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    by_labels && by_expressions
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sel(v: serde_json::Value) -> LabelSelector {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn match_labels_and_expressions() {
        let labels: BTreeMap<String, String> =
            [("mesh".into(), "default".into()), ("env".into(), "prod".into())].into();
        assert!(matches(&sel(json!({})), &labels));
        assert!(matches(&sel(json!({"matchLabels": {"mesh": "default"}})), &labels));
        assert!(!matches(&sel(json!({"matchLabels": {"mesh": "gateway"}})), &labels));
        let expr = |op: &str, values: serde_json::Value| {
            sel(json!({"matchExpressions": [{"key": "env", "operator": op, "values": values}]}))
        };
        assert!(matches(&expr("In", json!(["prod", "dev"])), &labels));
        assert!(!matches(&expr("NotIn", json!(["prod"])), &labels));
        assert!(matches(&sel(json!({"matchExpressions": [{"key": "env", "operator": "Exists"}]})), &labels));
        assert!(!matches(&sel(json!({"matchExpressions": [{"key": "env", "operator": "DoesNotExist"}]})), &labels));
        assert!(validate(&expr("Near", json!(["x"]))).is_err());
        assert!(validate(&expr("In", json!([]))).is_err());
        assert!(validate(&expr("In", json!(["a"]))).is_ok());
    }
}
