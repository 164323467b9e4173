//! Kubernetes RBAC as the API server evaluates it, over the roles a chart
//! renders: enough to ask whether every request a run made was allowed.
#![allow(dead_code)]

use serde_json::Value;

/// What the authorizer sees of one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attributes {
    pub verb: String,
    pub group: String,
    /// `resource` or `resource/subresource`.
    pub resource: String,
    pub namespace: String,
    pub name: String,
}

/// Every authorization check a recorded request needs: its own, plus
/// `create` for a server-side apply of an object (which creates it when it
/// is missing, and the API server then checks `create` too). An apply to a
/// subresource (`/status`) never creates: the object must exist, so only
/// `patch` is checked.
pub fn checks(r: &fake_apiserver::Recorded) -> Vec<Attributes> {
    let Some(a) = attributes(&r.method, &r.path, &r.query) else { return Vec::new() };
    let mut out = vec![a.clone()];
    let subresource = a.resource.contains('/');
    if r.method == "PATCH" && r.content_type.starts_with("application/apply-patch") && !subresource {
        out.push(Attributes { verb: "create".into(), ..a });
    }
    out
}

/// Maps a request line to its RBAC attributes (as the API server's
/// request-info resolver does).
pub fn attributes(method: &str, path: &str, query: &str) -> Option<Attributes> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match segs.as_slice() {
        ["api", _v, rest @ ..] => (String::new(), rest),
        ["apis", g, _v, rest @ ..] => (g.to_string(), rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (ns.to_string(), rest),
        _ => (String::new(), rest),
    };
    let (resource, name) = match rest {
        [r] => (r.to_string(), String::new()),
        [r, n] => (r.to_string(), n.to_string()),
        [r, n, sub] => (format!("{r}/{sub}"), n.to_string()),
        _ => return None,
    };
    let watching = query.split('&').any(|kv| kv == "watch=true" || kv == "watch=1");
    let verb = match (method, name.is_empty()) {
        ("GET", true) if watching => "watch",
        ("GET", true) => "list",
        ("GET", false) => "get",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", false) => "delete",
        ("DELETE", true) => "deletecollection",
        _ => return None,
    };
    Some(Attributes { verb: verb.into(), group, resource, namespace, name })
}

/// The rules granted to one service account by rendered manifests.
pub struct Granted {
    cluster: Vec<Value>,
    namespaced: Vec<(String, Value)>,
}

fn bound_to(binding: &Value, namespace: &str, account: &str) -> bool {
    binding["subjects"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|s| s["kind"] == "ServiceAccount" && s["name"] == account && s["namespace"] == namespace)
}

impl Granted {
    pub fn for_service_account(docs: &[Value], namespace: &str, account: &str) -> Self {
        let find = |kind: &str, name: &Value, ns: Option<&Value>| {
            docs.iter()
                .find(|d| {
                    d["kind"] == kind
                        && d["metadata"]["name"] == *name
                        && ns.is_none_or(|n| d["metadata"]["namespace"] == *n)
                })
                .cloned()
        };
        let mut cluster = Vec::new();
        let mut namespaced = Vec::new();
        for b in docs.iter().filter(|d| bound_to(d, namespace, account)) {
            let role_ref = &b["roleRef"];
            match (b["kind"].as_str(), role_ref["kind"].as_str()) {
                (Some("ClusterRoleBinding"), _) => {
                    if let Some(r) = find("ClusterRole", &role_ref["name"], None) {
                        cluster.extend(r["rules"].as_array().cloned().unwrap_or_default());
                    }
                }
                (Some("RoleBinding"), Some(kind)) => {
                    let ns = b["metadata"]["namespace"].as_str().unwrap_or_default().to_string();
                    let role = if kind == "Role" {
                        find("Role", &role_ref["name"], Some(&b["metadata"]["namespace"]))
                    } else {
                        find("ClusterRole", &role_ref["name"], None)
                    };
                    for rule in role.and_then(|r| r["rules"].as_array().cloned()).unwrap_or_default() {
                        namespaced.push((ns.clone(), rule));
                    }
                }
                _ => {}
            }
        }
        Self { cluster, namespaced }
    }

    pub fn allows(&self, a: &Attributes) -> bool {
        let matches = |rule: &Value| {
            let has =
                |field: &str, want: &str| rule[field].as_array().into_iter().flatten().any(|v| v == "*" || v == want);
            let names: Vec<&str> =
                rule["resourceNames"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
            has("apiGroups", &a.group)
                && has("resources", &a.resource)
                && has("verbs", &a.verb)
                && (names.is_empty() || names.contains(&a.name.as_str()))
        };
        self.cluster.iter().any(matches) || self.namespaced.iter().any(|(ns, rule)| *ns == a.namespace && matches(rule))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines_map_to_rbac_verbs() {
        let a = attributes("GET", "/api/v1/namespaces/ns/secrets", "watch=true&labelSelector=x").unwrap();
        assert_eq!((a.verb.as_str(), a.resource.as_str(), a.namespace.as_str()), ("watch", "secrets", "ns"));
        let a = attributes("PATCH", "/apis/cert-manager.io/v1/namespaces/a/certificaterequests/r/status", "").unwrap();
        assert_eq!(
            (a.verb.as_str(), a.group.as_str(), a.resource.as_str(), a.name.as_str()),
            ("patch", "cert-manager.io", "certificaterequests/status", "r")
        );
        let a = attributes("GET", "/api/v1/namespaces", "").unwrap();
        assert_eq!((a.verb.as_str(), a.resource.as_str(), a.namespace.as_str()), ("list", "namespaces", ""));
        let a = attributes("GET", "/api/v1/namespaces/default", "").unwrap();
        assert_eq!((a.verb.as_str(), a.resource.as_str(), a.name.as_str()), ("get", "namespaces", "default"));
    }
}
