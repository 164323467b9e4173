//! The fake API server's state and the semantics of each operation,
//! independent of HTTP.

use super::selectors::{FieldSelector, LabelSelector};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashMap, VecDeque};

/// How many watch events are kept for resuming watches; older resource
/// versions get 410 Gone, as from a compacted etcd.
pub const EVENT_LOG_CAPACITY: usize = 100_000;

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceKey {
    pub group: String,
    pub plural: String,
}

#[derive(Clone, Debug)]
pub struct ResourceInfo {
    pub kind: String,
    pub versions: Vec<String>,
    pub namespaced: bool,
    pub status_subresource: bool,
    /// Field selector paths beyond `metadata.name` and `metadata.namespace`.
    pub selectable_fields: Vec<String>,
    /// A custom resource (from a CRD): no strategic merge patches.
    pub custom: bool,
    /// An update must carry the resourceVersion it read (custom resources
    /// and Leases); others may be updated unconditionally.
    pub update_needs_resource_version: bool,
    /// Lists the schema declares `x-kubernetes-list-type: map`: their
    /// dotted path (`status.conditions`) and key fields. A server-side apply
    /// merges them element by element.
    pub list_maps: Vec<(String, Vec<String>)>,
}

impl ResourceInfo {
    pub fn api_version(&self, version: &str, group: &str) -> String {
        if group.is_empty() { version.to_string() } else { format!("{group}/{version}") }
    }
}

/// A Kubernetes `Status` failure.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Value,
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self { code, reason, message: message.into(), details: Value::Null }
    }
    pub fn not_found(key: &ResourceKey, name: &str) -> Self {
        Self {
            code: 404,
            reason: "NotFound",
            message: format!("{}{} \"{name}\" not found", key.plural, group_suffix(&key.group)),
            details: json!({"name": name, "group": key.group, "kind": key.plural}),
        }
    }
    pub fn body(&self) -> Value {
        let mut v = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": self.message, "reason": self.reason, "code": self.code,
        });
        if !self.details.is_null() {
            v["details"] = self.details.clone();
        }
        v
    }
}

fn group_suffix(group: &str) -> String {
    if group.is_empty() { String::new() } else { format!(".{group}") }
}

#[derive(Clone, Debug)]
pub struct Event {
    pub key: ResourceKey,
    pub namespace: String,
    pub rv: u64,
    pub kind: &'static str,
    pub object: Value,
    /// The object before a modification, so watches with selectors can tell
    /// objects entering and leaving the selection.
    pub old: Option<Value>,
}

/// A configured TokenReview answer.
#[derive(Clone, Debug)]
pub struct TokenAnswer {
    pub username: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
    /// Audiences the token is valid for; empty means any.
    pub audiences: Vec<String>,
    /// `status.authenticated`. `false` answers with the user all the same,
    /// as a confused or hostile API server might.
    pub authenticated: bool,
    /// When set, `status.audiences` is exactly this, whatever was asked.
    pub answered_audiences: Option<Vec<String>>,
}

impl Default for TokenAnswer {
    fn default() -> Self {
        Self {
            username: String::new(),
            uid: String::new(),
            groups: Vec::new(),
            extra: BTreeMap::new(),
            audiences: Vec::new(),
            authenticated: true,
            answered_audiences: None,
        }
    }
}

#[derive(Default)]
pub struct Store {
    pub rv: u64,
    pub resources: BTreeMap<ResourceKey, ResourceInfo>,
    pub objects: BTreeMap<ResourceKey, BTreeMap<(String, String), Value>>,
    pub log: VecDeque<Event>,
    /// Watches from a resource version below this get 410 Gone.
    pub oldest_rv: u64,
    pub tokens: HashMap<String, TokenAnswer>,
    pub token_reviews: u64,
    pub uid: u64,
    pub grants: Vec<Grant>,
}

/// One RBAC permission, as SubjectAccessReviews see it. `name: None`
/// grants every name (a rule without `resourceNames`).
#[derive(Clone, Debug)]
pub struct Grant {
    /// A user name, or a group name.
    pub subject: String,
    pub verb: String,
    pub group: String,
    pub resource: String,
    pub namespace: String,
    pub name: Option<String>,
}

pub struct ListOptions {
    pub namespace: Option<String>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

impl ListOptions {
    pub fn matches(&self, obj: &Value) -> bool {
        let ns_ok = self
            .namespace
            .as_ref()
            .is_none_or(|ns| obj.pointer("/metadata/namespace").and_then(Value::as_str) == Some(ns));
        ns_ok && self.labels.matches(obj) && self.fields.matches(obj)
    }
}

/// Multiplying by this odd constant (mod 2^64) scrambles resourceVersions,
/// which are opaque: clients may only compare them for equality, and a
/// client that orders them as numbers gets nonsense here.
const RV_SCRAMBLE: u64 = 0x9E37_79B9_7F4A_7C15;

fn rv_unscramble_factor() -> u64 {
    // Newton's iteration for the inverse of an odd number mod 2^64.
    let mut inverse = RV_SCRAMBLE;
    for _ in 0..6 {
        inverse = inverse.wrapping_mul(2u64.wrapping_sub(RV_SCRAMBLE.wrapping_mul(inverse)));
    }
    inverse
}

/// The resourceVersion clients see for the store's `rv`.
pub fn rv_string(rv: u64) -> String {
    rv.wrapping_mul(RV_SCRAMBLE).to_string()
}

/// The store's `rv` for a resourceVersion a client sent back.
pub fn parse_rv(s: &str) -> Option<u64> {
    s.parse::<u64>().ok().map(|v| v.wrapping_mul(rv_unscramble_factor()))
}

fn meta(obj: &Value, field: &str) -> Option<String> {
    obj.get("metadata")?.get(field)?.as_str().map(String::from)
}

fn now() -> String {
    time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
}

/// Everything but server-managed metadata, for no-op detection.
fn comparable(obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Some(m) = o.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
        m.remove("managedFields");
    }
    o
}

fn spec_of(obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Some(m) = o.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
        m.remove("kind");
        m.remove("apiVersion");
    }
    o
}

/// RFC 7386 JSON merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            let t = target.as_object_mut().expect("object");
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

/// A server-side apply as far as the fake models it: a merge patch, except
/// that lists declared as maps (`list_maps`) merge element by element on
/// their keys: the applier's elements replace those with the same keys, and
/// the others (another manager's) stay. Field ownership is not modelled.
pub fn apply_patch(target: &mut Value, patch: &Value, list_maps: &[(String, Vec<String>)], path: &str) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let t = target.as_object_mut().expect("object");
    for (k, v) in p {
        let child = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
        let keys = list_maps.iter().find(|(p, _)| *p == child).map(|(_, keys)| keys);
        match (v, keys) {
            (Value::Null, _) => {
                t.remove(k);
            }
            (Value::Array(applied), Some(keys)) => {
                let entry = t.entry(k.clone()).or_insert_with(|| Value::Array(Vec::new()));
                if !entry.is_array() {
                    *entry = Value::Array(Vec::new());
                }
                let merged = entry.as_array_mut().expect("array");
                for element in applied {
                    let same = |e: &Value| keys.iter().all(|key| e.get(key) == element.get(key));
                    match merged.iter_mut().find(|e| same(e)) {
                        Some(existing) => *existing = element.clone(),
                        None => merged.push(element.clone()),
                    }
                }
            }
            _ => apply_patch(t.entry(k.clone()).or_insert(Value::Null), v, list_maps, &child),
        }
    }
}

impl Store {
    pub fn register(&mut self, group: &str, plural: &str, info: ResourceInfo) {
        self.resources.insert(ResourceKey { group: group.into(), plural: plural.into() }, info);
    }

    pub fn info(&self, key: &ResourceKey) -> Result<&ResourceInfo, ApiError> {
        self.resources.get(key).ok_or_else(|| {
            ApiError::new(404, "NotFound", format!("the server could not find the requested resource ({})", key.plural))
        })
    }

    fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    fn emit(
        &mut self,
        key: &ResourceKey,
        namespace: &str,
        kind: &'static str,
        object: Value,
        old: Option<Value>,
    ) -> Event {
        let rv = self.rv;
        let event = Event { key: key.clone(), namespace: namespace.to_string(), rv, kind, object, old };
        self.log.push_back(event.clone());
        while self.log.len() > EVENT_LOG_CAPACITY {
            if let Some(e) = self.log.pop_front() {
                self.oldest_rv = e.rv;
            }
        }
        event
    }

    pub fn get(&self, key: &ResourceKey, ns: &str, name: &str) -> Result<Value, ApiError> {
        self.objects
            .get(key)
            .and_then(|m| m.get(&(ns.to_string(), name.to_string())))
            .cloned()
            .ok_or_else(|| ApiError::not_found(key, name))
    }

    pub fn list(&self, key: &ResourceKey, opts: &ListOptions) -> Vec<Value> {
        self.objects.get(key).map(|m| m.values().filter(|o| opts.matches(o)).cloned().collect()).unwrap_or_default()
    }

    fn namespace_exists(&self, ns: &str) -> bool {
        self.objects
            .get(&ResourceKey { group: String::new(), plural: "namespaces".into() })
            .is_some_and(|m| m.contains_key(&(String::new(), ns.to_string())))
    }

    fn put(&mut self, key: &ResourceKey, ns: &str, name: &str, obj: Value) {
        self.objects.entry(key.clone()).or_default().insert((ns.to_string(), name.to_string()), obj);
    }

    /// Server-side normalisation of writes: Secret `stringData` becomes `data`.
    fn normalise(key: &ResourceKey, obj: &mut Value) {
        if key.group.is_empty() && key.plural == "secrets" {
            use base64::Engine as _;
            if let Some(Value::Object(sd)) = obj.as_object_mut().and_then(|o| o.remove("stringData")) {
                let data = obj.as_object_mut().expect("object").entry("data").or_insert_with(|| json!({}));
                for (k, v) in sd {
                    let s = v.as_str().unwrap_or_default();
                    data[k] = Value::String(base64::engine::general_purpose::STANDARD.encode(s));
                }
            }
        }
    }

    pub fn create(
        &mut self,
        key: &ResourceKey,
        version: &str,
        ns: &str,
        mut obj: Value,
    ) -> Result<(Value, Event), ApiError> {
        let info = self.info(key)?.clone();
        if !obj.is_object() {
            return Err(ApiError::new(400, "BadRequest", "the body is not a JSON object"));
        }
        let body_ns = meta(&obj, "namespace").unwrap_or_default();
        if info.namespaced && !body_ns.is_empty() && body_ns != ns {
            return Err(ApiError::new(
                400,
                "BadRequest",
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        let mut name = meta(&obj, "name").unwrap_or_default();
        if name.is_empty() {
            let Some(prefix) = meta(&obj, "generateName") else {
                return Err(ApiError::new(
                    422,
                    "Invalid",
                    "metadata.name: Required value: name or generateName is required",
                ));
            };
            self.uid += 1;
            name = format!("{prefix}{:05x}", self.uid);
        }
        if !is_subdomain(&name) {
            return Err(ApiError::new(422, "Invalid", format!("metadata.name: Invalid value: {name:?}")));
        }
        if info.namespaced && !self.namespace_exists(ns) {
            return Err(ApiError::not_found(&ResourceKey { group: String::new(), plural: "namespaces".into() }, ns));
        }
        if self.get(key, ns, &name).is_ok() {
            let mut e = ApiError::new(
                409,
                "AlreadyExists",
                format!("{}{} \"{name}\" already exists", key.plural, group_suffix(&key.group)),
            );
            e.details = json!({"name": name, "group": key.group, "kind": key.plural});
            return Err(e);
        }
        Self::normalise(key, &mut obj);
        crate::validation::default_secret_type(key, &mut obj);
        crate::validation::validate(key, None, &obj)?;
        if info.status_subresource {
            obj.as_object_mut().expect("object").remove("status");
        }
        if key.group.is_empty() && key.plural == "namespaces" {
            obj["status"] = json!({"phase": "Active"});
        }
        let rv = self.next_rv();
        self.uid += 1;
        let o = obj.as_object_mut().expect("object");
        o.insert("apiVersion".into(), Value::String(info.api_version(version, &key.group)));
        o.insert("kind".into(), Value::String(info.kind.clone()));
        let m = o.entry("metadata").or_insert_with(|| json!({}));
        m["name"] = Value::String(name.clone());
        if info.namespaced {
            m["namespace"] = Value::String(ns.to_string());
        } else if let Some(m) = m.as_object_mut() {
            m.remove("namespace");
        }
        m["uid"] = Value::String(format!("00000000-0000-4000-8000-{:012x}", self.uid));
        m["resourceVersion"] = Value::String(rv_string(rv));
        m["creationTimestamp"] = Value::String(now());
        m["generation"] = json!(1);
        if let Some(m) = m.as_object_mut() {
            m.remove("deletionTimestamp");
        }
        self.put(key, ns, &name, obj.clone());
        let event = self.emit(key, ns, "ADDED", obj.clone(), None);
        Ok((obj, event))
    }

    /// Stores `new` in place of the current object, keeping what the server
    /// owns. `subresource` is `Some("status")` for status writes. Returns
    /// the stored object and the events (none for a no-op).
    pub fn update(
        &mut self,
        key: &ResourceKey,
        ns: &str,
        name: &str,
        mut new: Value,
        subresource: Option<&str>,
    ) -> Result<(Value, Vec<Event>), ApiError> {
        let info = self.info(key)?.clone();
        let old = self.get(key, ns, name)?;
        if !new.is_object() {
            return Err(ApiError::new(400, "BadRequest", "the body is not a JSON object"));
        }
        if let Some(body_name) = meta(&new, "name")
            && body_name != name
        {
            return Err(ApiError::new(400, "BadRequest", "the name of the object does not match the name on the URL"));
        }
        let sent_rv = meta(&new, "resourceVersion").filter(|rv| !rv.is_empty());
        if sent_rv.is_none() && info.update_needs_resource_version {
            return Err(ApiError::new(
                422,
                "Invalid",
                "metadata.resourceVersion: Invalid value: 0x0: must be specified for an update",
            ));
        }
        if subresource == Some("status") && !info.status_subresource {
            return Err(ApiError::new(
                404,
                "NotFound",
                format!("the server could not find the requested resource ({}/status)", key.plural),
            ));
        }
        if let Some(rv) = sent_rv
            && Some(rv) != meta(&old, "resourceVersion")
        {
            let mut e = ApiError::new(
                409,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {}{} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                    key.plural,
                    group_suffix(&key.group)
                ),
            );
            e.details = json!({"name": name, "group": key.group, "kind": key.plural});
            return Err(e);
        }
        Self::normalise(key, &mut new);
        let mut stored = match subresource {
            Some("status") => {
                // Only .status changes through the status subresource.
                let mut s = old.clone();
                match new.get("status") {
                    Some(st) => s["status"] = st.clone(),
                    None => {
                        s.as_object_mut().expect("object").remove("status");
                    }
                }
                s
            }
            Some("approval") if key.group == "certificates.k8s.io" && key.plural == "certificatesigningrequests" => {
                // Only the approval conditions change through /approval.
                let mut s = old.clone();
                s["status"]["conditions"] = new.pointer("/status/conditions").cloned().unwrap_or(Value::Null);
                s
            }
            Some(other) => {
                return Err(ApiError::new(404, "NotFound", format!("subresource {other} is not served")));
            }
            None => {
                let mut s = new.clone();
                if info.status_subresource || (key.group.is_empty() && key.plural == "namespaces") {
                    match old.get("status") {
                        Some(st) => s["status"] = st.clone(),
                        None => {
                            s.as_object_mut().expect("object").remove("status");
                        }
                    }
                }
                s
            }
        };
        // Server-owned metadata survives every write.
        for field in ["uid", "creationTimestamp", "deletionTimestamp", "namespace", "name", "generation"] {
            match old.pointer(&format!("/metadata/{field}")) {
                Some(v) => stored["metadata"][field] = v.clone(),
                None => {
                    if let Some(m) = stored.get_mut("metadata").and_then(Value::as_object_mut) {
                        m.remove(field);
                    }
                }
            }
        }
        stored["apiVersion"] = old["apiVersion"].clone();
        stored["kind"] = old["kind"].clone();
        crate::validation::default_secret_type(key, &mut stored);
        crate::validation::validate(key, Some(&old), &stored)?;
        if comparable(&stored) == comparable(&old) {
            return Ok((old, Vec::new()));
        }
        if subresource.is_none() && spec_of(&stored) != spec_of(&old) {
            let g = old.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(1);
            stored["metadata"]["generation"] = json!(g + 1);
        }
        let rv = self.next_rv();
        stored["metadata"]["resourceVersion"] = Value::String(rv_string(rv));
        let deleting = stored.pointer("/metadata/deletionTimestamp").is_some();
        let finalizers_left =
            stored.pointer("/metadata/finalizers").and_then(Value::as_array).is_some_and(|f| !f.is_empty());
        if deleting && !finalizers_left {
            self.objects.get_mut(key).map(|m| m.remove(&(ns.to_string(), name.to_string())));
            let e = self.emit(key, ns, "DELETED", stored.clone(), Some(old));
            return Ok((stored, vec![e]));
        }
        self.put(key, ns, name, stored.clone());
        let e = self.emit(key, ns, "MODIFIED", stored.clone(), Some(old));
        Ok((stored, vec![e]))
    }

    pub fn delete(&mut self, key: &ResourceKey, ns: &str, name: &str) -> Result<(Value, Vec<Event>), ApiError> {
        let old = self.get(key, ns, name)?;
        let has_finalizers =
            old.pointer("/metadata/finalizers").and_then(Value::as_array).is_some_and(|f| !f.is_empty());
        if has_finalizers {
            if old.pointer("/metadata/deletionTimestamp").is_some() {
                return Ok((old, Vec::new()));
            }
            let mut marked = old.clone();
            marked["metadata"]["deletionTimestamp"] = Value::String(now());
            let rv = self.next_rv();
            marked["metadata"]["resourceVersion"] = Value::String(rv_string(rv));
            self.put(key, ns, name, marked.clone());
            let e = self.emit(key, ns, "MODIFIED", marked.clone(), Some(old));
            return Ok((marked, vec![e]));
        }
        let mut events = Vec::new();
        // Deleting a namespace deletes what is in it (immediately; the real
        // namespace controller does this asynchronously).
        if key.group.is_empty() && key.plural == "namespaces" {
            let keys: Vec<ResourceKey> = self.objects.keys().cloned().collect();
            for k in keys {
                let names: Vec<String> = self
                    .objects
                    .get(&k)
                    .map(|m| m.keys().filter(|(n, _)| n == name).map(|(_, o)| o.clone()).collect())
                    .unwrap_or_default();
                for n in names {
                    if let Ok((_, mut ev)) = self.force_remove(&k, name, &n) {
                        events.append(&mut ev);
                    }
                }
            }
        }
        let (obj, mut ev) = self.force_remove(key, ns, name)?;
        events.append(&mut ev);
        Ok((obj, events))
    }

    fn force_remove(&mut self, key: &ResourceKey, ns: &str, name: &str) -> Result<(Value, Vec<Event>), ApiError> {
        let mut old = self
            .objects
            .get_mut(key)
            .and_then(|m| m.remove(&(ns.to_string(), name.to_string())))
            .ok_or_else(|| ApiError::not_found(key, name))?;
        let rv = self.next_rv();
        old["metadata"]["resourceVersion"] = Value::String(rv_string(rv));
        let e = self.emit(key, ns, "DELETED", old.clone(), None);
        Ok((old, vec![e]))
    }

    /// Answers a SubjectAccessReview from the configured grants.
    pub fn review_access(&self, review: &Value) -> Value {
        let spec = &review["spec"];
        let attrs = &spec["resourceAttributes"];
        let mut subjects: Vec<String> = spec["user"].as_str().map(String::from).into_iter().collect();
        subjects.extend(spec["groups"].as_array().into_iter().flatten().filter_map(|g| g.as_str().map(String::from)));
        let field = |k: &str| attrs[k].as_str().unwrap_or_default().to_string();
        let allowed = self.grants.iter().any(|g| {
            subjects.contains(&g.subject)
                && g.verb == field("verb")
                && g.group == field("group")
                && g.resource == field("resource")
                && g.namespace == field("namespace")
                && g.name.as_ref().is_none_or(|n| *n == field("name"))
        });
        let mut out = review.clone();
        out["apiVersion"] = json!("authorization.k8s.io/v1");
        out["kind"] = json!("SubjectAccessReview");
        out["status"] = json!({ "allowed": allowed });
        out
    }

    /// Answers a TokenReview as the API server would for the configured tokens.
    pub fn review_token(&mut self, review: &Value) -> Value {
        self.token_reviews += 1;
        let token = review.pointer("/spec/token").and_then(Value::as_str).unwrap_or_default();
        let requested: Vec<String> = review
            .pointer("/spec/audiences")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|v| v.as_str().map(String::from)).collect())
            .unwrap_or_default();
        let status = match self.tokens.get(token) {
            Some(a) => {
                let audiences: Vec<String> = if requested.is_empty() {
                    a.audiences.clone()
                } else if a.audiences.is_empty() {
                    requested.clone()
                } else {
                    requested.iter().filter(|r| a.audiences.contains(r)).cloned().collect()
                };
                if !requested.is_empty() && audiences.is_empty() {
                    json!({"authenticated": false, "error": "[invalid bearer token, token audiences do not match]"})
                } else {
                    json!({
                        "authenticated": a.authenticated,
                        "user": {"username": a.username, "uid": a.uid, "groups": a.groups, "extra": a.extra},
                        "audiences": a.answered_audiences.clone().unwrap_or(audiences),
                    })
                }
            }
            None => json!({"authenticated": false, "error": "[invalid bearer token]"}),
        };
        let mut out = review.clone();
        out["apiVersion"] = json!("authentication.k8s.io/v1");
        out["kind"] = json!("TokenReview");
        out["status"] = status;
        out
    }
}

/// A DNS-1123 subdomain as kube-apiserver checks object names: at most 253
/// characters, dot-separated parts of lowercase alphanumerics and `-`, each
/// starting and ending with an alphanumeric. (Like the real check, no
/// 63-character limit per part.)
pub fn is_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}
