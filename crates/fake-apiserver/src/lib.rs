//! A faithful in-memory Kubernetes API server for tests. It speaks the real
//! HTTP/JSON protocol to a real `kube::Client`, in-process or over loopback
//! through a kubeconfig (so the compiled binary can use it too).
//!
//! Modelled: list/get/create/update/patch/delete with resourceVersion,
//! 409 Conflict and AlreadyExists, 404 and 422 `Status` bodies, generateName,
//! generation, the status subresource, finalizers and deletionTimestamp,
//! label and field selectors, watch with replay, 410 Gone and objects
//! entering or leaving a selector, merge/strategic/apply/JSON patches,
//! Secret `stringData`, namespaced objects requiring their namespace,
//! TokenReview answers configured per test, SubjectAccessReviews answered
//! from configured grants, field selectors limited to the fields each
//! resource declares, CertificateSigningRequests with their /approval
//! subresource, an outage switch that also cuts open watches, and one-shot
//! faults on a write (refused before it applies, or applied with the
//! response lost).
//!
//! Strict where a real server is, and meshroot could get it wrong: label
//! syntax, Secret `type` immutable and a `kubernetes.io/tls` Secret's keys
//! required (`validation`), updates of custom resources and Leases refused
//! without a resourceVersion, `/status` only on kinds that have it, no
//! strategic merge patches on custom resources, and opaque resourceVersions
//! (scrambled, so ordering them as numbers gives nonsense). A pause switch
//! holds requests unanswered, as a server stopped with SIGSTOP.
//!
//! Server-side apply merges like a merge patch, except that lists a CRD
//! declares `x-kubernetes-list-type: map` merge element by element on their
//! keys (so an applier's condition leaves another manager's in place).
//!
//! Not modelled: admission and CRD schema validation, field managers and
//! apply conflicts (nothing an applier stops applying is removed), strategic
//! merge by list keys (treated as a merge patch), paging (everything in one
//! page), watch bookmarks, RBAC.
//!
//! The real-cluster tier (`tests/real`, a real kube-apiserver) checks the
//! validation refusals above (labels, Secret type and keys, resourceVersion
//! required, `/status`, patch types) against the real server
//! (`api_server::the_fakes_refusals_are_the_real_servers`), and covers what
//! the fake does not model: the chart's RBAC as the real authorizer evaluates
//! it (the Kubernetes CSR `sign` grant among it), real TokenRequest tokens
//! bound to pods, server-side apply with field managers, and a server
//! stopped with SIGSTOP.

pub mod selectors;
pub mod store;
pub mod validation;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, Response, StatusCode, Uri};
use selectors::{FieldSelector, LabelSelector};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use store::{ApiError, Event, ListOptions, ResourceInfo, ResourceKey, Store, TokenAnswer};
use tokio::sync::broadcast;

/// The header [`FakeApi::client_as`] adds, naming the client.
const CLIENT_HEADER: &str = "x-fake-api-client";

#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: String,
    pub content_type: String,
    /// The HTTP status the fake answered with.
    pub status: u16,
    /// For a create, the name in the body (the path names only the collection).
    pub created_name: Option<String>,
    /// Who sent it: the name given to [`FakeApi::client_as`], else the bearer token of a kubeconfig
    /// other than the served admin one, else empty.
    pub client: String,
}

/// Who sent a request: the name [`FakeApi::client_as`] gave it, else the bearer token of a
/// kubeconfig other than [`FakeApi::serve`]'s own admin one (so processes sharing one served fake
/// can be told apart by their tokens), else empty.
fn client_name(headers: &HeaderMap) -> String {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(name) = header(CLIENT_HEADER) {
        return name.to_string();
    }
    header("authorization")
        .and_then(|v| v.strip_prefix("Bearer "))
        .filter(|token| *token != ADMIN_TOKEN)
        .unwrap_or_default()
        .to_string()
}

/// The token of the kubeconfig [`FakeApi::serve`] writes.
const ADMIN_TOKEN: &str = "fake-admin-token";

/// A one-shot failure of the next matching write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// 503 before anything is applied.
    Refused,
    /// The write is applied, then the client gets a 504 (a lost response).
    ResponseLost,
}

struct Inner {
    store: Mutex<Store>,
    events: broadcast::Sender<Event>,
    outage: tokio::sync::watch::Sender<bool>,
    /// While true, requests are held unanswered (a server stopped with SIGSTOP).
    paused: tokio::sync::watch::Sender<bool>,
    requests: Mutex<Vec<Recorded>>,
    /// (method, path suffix, fault), each used once.
    faults: Mutex<Vec<(Method, String, Fault)>>,
}

#[derive(Clone)]
pub struct FakeApi {
    inner: Arc<Inner>,
}

/// A fake served over loopback HTTP, with a kubeconfig pointing at it.
pub struct Served {
    pub addr: SocketAddr,
    pub kubeconfig: PathBuf,
    _dir: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.task.abort();
    }
}

enum Target {
    Collection { key: ResourceKey, version: String, ns: Option<String> },
    Object { key: ResourceKey, version: String, ns: String, name: String, sub: Option<String> },
    TokenReview,
    SubjectAccessReview,
    Version,
}

fn builtin(store: &mut Store) {
    let r = |kind: &str, versions: &[&str], namespaced: bool, status: bool| ResourceInfo {
        kind: kind.into(),
        versions: versions.iter().map(|v| v.to_string()).collect(),
        namespaced,
        status_subresource: status,
        selectable_fields: Vec::new(),
        custom: false,
        update_needs_resource_version: kind == "Lease",
        list_maps: Vec::new(),
    };
    let with_fields = |mut info: ResourceInfo, fields: &[&str]| {
        info.selectable_fields = fields.iter().map(|f| f.to_string()).collect();
        info
    };
    store.register("", "namespaces", with_fields(r("Namespace", &["v1"], false, true), &["status.phase"]));
    store.register("", "configmaps", r("ConfigMap", &["v1"], true, false));
    store.register("", "secrets", with_fields(r("Secret", &["v1"], true, false), &["type"]));
    let pod_fields = ["spec.nodeName", "spec.serviceAccountName", "spec.restartPolicy", "status.phase", "status.podIP"];
    store.register("", "pods", with_fields(r("Pod", &["v1"], true, true), &pod_fields));
    store.register("", "serviceaccounts", r("ServiceAccount", &["v1"], true, false));
    store.register("", "events", r("Event", &["v1"], true, false));
    store.register("events.k8s.io", "events", r("Event", &["v1"], true, false));
    store.register("coordination.k8s.io", "leases", r("Lease", &["v1"], true, false));
    let csr = r("CertificateSigningRequest", &["v1"], false, true);
    store.register("certificates.k8s.io", "certificatesigningrequests", with_fields(csr, &["spec.signerName"]));
}

impl Default for FakeApi {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeApi {
    /// Built-in resources plus meshroot's CRDs (`crds/`) and cert-manager's
    /// (`tests/fixtures/crds/`), from the meshroot workspace this crate sits
    /// in (`crates/fake-apiserver`).
    pub fn new() -> Self {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        Self::with_crd_dirs(&[workspace.join("crds"), workspace.join("tests/fixtures/crds")])
    }

    pub fn with_crd_dirs(dirs: &[PathBuf]) -> Self {
        let mut store = Store::default();
        builtin(&mut store);
        for dir in dirs {
            // A missing directory is a broken test setup, not an empty one.
            let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("CRD directory {}: {e}", dir.display()));
            let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
            paths.sort();
            for path in paths.iter().filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml")) {
                let text = std::fs::read_to_string(path).unwrap();
                for doc in text.split("\n---").filter(|d| d.contains("CustomResourceDefinition")) {
                    let crd: Value = serde_saphyr::from_str(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                    register_crd(&mut store, &crd);
                }
            }
        }
        let (events, _) = broadcast::channel(65_536);
        Self {
            inner: Arc::new(Inner {
                store: Mutex::new(store),
                events,
                outage: tokio::sync::watch::Sender::new(false),
                paused: tokio::sync::watch::Sender::new(false),
                requests: Mutex::new(Vec::new()),
                faults: Mutex::new(Vec::new()),
            }),
        }
    }

    /// A `kube::Client` wired straight to the fake, in-process.
    pub fn client(&self) -> kube::Client {
        kube::Client::new(self.router(), "default")
    }

    /// Like [`Self::client`], but every request it sends is recorded as
    /// sent by `who` (so two replicas' writes can be told apart).
    pub fn client_as(&self, who: &str) -> kube::Client {
        async fn tag(State(who): State<HeaderValue>, mut req: axum::extract::Request) -> axum::extract::Request {
            req.headers_mut().insert(CLIENT_HEADER, who);
            req
        }
        let who = HeaderValue::from_str(who).unwrap();
        kube::Client::new(self.router().layer(axum::middleware::map_request_with_state(who, tag)), "default")
    }

    pub fn router(&self) -> axum::Router {
        axum::Router::new().fallback(handle).with_state(self.clone())
    }

    /// Serves over loopback HTTP and writes a kubeconfig for it.
    pub async fn serve(&self) -> Served {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = self.router();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{addr}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: default\ncurrent-context: fake\nusers:\n- name: fake\n  user:\n    token: {ADMIN_TOKEN}\n"
            ),
        )
        .unwrap();
        Served { addr, kubeconfig, _dir: dir, task }
    }

    /// While on, every request fails with 503 and open watches are cut, as
    /// when the API server is unreachable.
    pub fn set_outage(&self, on: bool) {
        self.inner.outage.send_replace(on);
    }

    /// While on, every new request is held without an answer, as by an API
    /// server stopped with SIGSTOP; once off, held requests are served.
    /// (Open watches are not held.)
    pub fn set_paused(&self, on: bool) {
        self.inner.paused.send_replace(on);
    }

    /// The next `method` request whose path ends with `path_suffix` fails with `fault`.
    pub fn inject(&self, method: &str, path_suffix: &str, fault: Fault) {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        self.inner.faults.lock().unwrap().push((method, path_suffix.to_string(), fault));
    }

    pub fn add_token(&self, token: &str, answer: TokenAnswer) {
        self.inner.store.lock().unwrap().tokens.insert(token.to_string(), answer);
    }

    /// A bound service-account token, as kubelet projects them for pods.
    pub fn add_service_account_token(
        &self,
        token: &str,
        ns: &str,
        sa: &str,
        pod: Option<(&str, &str)>,
        audiences: &[&str],
    ) {
        let mut extra = BTreeMap::new();
        if let Some((name, uid)) = pod {
            extra.insert("authentication.kubernetes.io/pod-name".to_string(), vec![name.to_string()]);
            extra.insert("authentication.kubernetes.io/pod-uid".to_string(), vec![uid.to_string()]);
        }
        self.add_token(
            token,
            TokenAnswer {
                username: format!("system:serviceaccount:{ns}:{sa}"),
                uid: format!("uid-{ns}-{sa}"),
                groups: vec![
                    "system:serviceaccounts".into(),
                    format!("system:serviceaccounts:{ns}"),
                    "system:authenticated".into(),
                ],
                extra,
                audiences: audiences.iter().map(|a| a.to_string()).collect(),
                ..Default::default()
            },
        );
    }

    /// A bound token that also names its node, as Kubernetes 1.30+ issues them.
    pub fn add_node_bound_token(&self, token: &str, ns: &str, sa: &str, pod: (&str, &str), node: &str) {
        self.add_service_account_token(token, ns, sa, Some(pod), &["istio-ca"]);
        let mut store = self.inner.store.lock().unwrap();
        if let Some(answer) = store.tokens.get_mut(token) {
            answer.extra.insert("authentication.kubernetes.io/node-name".into(), vec![node.into()]);
        }
    }

    /// Changes how the API server answers for an already configured token.
    pub fn set_token_answer(&self, token: &str, change: impl FnOnce(&mut TokenAnswer)) {
        let mut store = self.inner.store.lock().unwrap();
        change(store.tokens.get_mut(token).expect("configure the token first"));
    }

    pub fn token_reviews(&self) -> u64 {
        self.inner.store.lock().unwrap().token_reviews
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.inner.requests.lock().unwrap().clone()
    }

    pub fn clear_requests(&self) {
        self.inner.requests.lock().unwrap().clear();
    }

    /// Requests that change state (not GET, not the reviews).
    pub fn writes(&self) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| {
                r.method != "GET" && !r.path.ends_with("/tokenreviews") && !r.path.ends_with("/subjectaccessreviews")
            })
            .collect()
    }

    /// Grants `subject` (a user or group) `verb` on `group`/`resource` in
    /// `namespace`, for one `name` or (with `None`) every name.
    pub fn grant(&self, subject: &str, verb: &str, group: &str, resource: &str, namespace: &str, name: Option<&str>) {
        self.inner.store.lock().unwrap().grants.push(store::Grant {
            subject: subject.into(),
            verb: verb.into(),
            group: group.into(),
            resource: resource.into(),
            namespace: namespace.into(),
            name: name.map(String::from),
        });
    }

    /// Replaces an object's status directly, as another controller (an
    /// approver) would through the status subresource; panics on an API error.
    pub fn set_status(&self, api_version: &str, plural: &str, ns: &str, name: &str, status: Value) {
        let (group, _) = split_api_version(api_version);
        let key = ResourceKey { group, plural: plural.into() };
        let mut s = self.inner.store.lock().unwrap();
        let mut obj = s.get(&key, ns, name).unwrap_or_else(|e| panic!("get {plural}/{name}: {}", e.message));
        obj["status"] = status;
        let (_, evs) = s.update(&key, ns, name, obj, Some("status")).unwrap_or_else(|e| panic!("{}", e.message));
        for ev in evs {
            let _ = self.inner.events.send(ev);
        }
    }

    /// `n` namespaces `ns-0`.. plus `istio-system`, and one External Mesh
    /// covering all of them (root distribution at scale).
    pub fn namespaces_with_one_mesh(&self, n: usize) {
        for i in 0..n {
            self.namespace(&format!("ns-{i}"), json!({}));
        }
        self.namespace("istio-system", json!({}));
        self.create(
            "meshroot.io/v1alpha1",
            "meshes",
            "",
            json!({"metadata": {"name": "all"}, "spec": {"trustDomain": "cluster.local", "istiod": {"namespace": "istio-system"}}}),
        );
    }

    /// Creates an object directly (test setup); panics on an API error.
    pub fn create(&self, api_version: &str, plural: &str, ns: &str, obj: Value) -> Value {
        let (group, version) = split_api_version(api_version);
        let key = ResourceKey { group, plural: plural.into() };
        let mut s = self.inner.store.lock().unwrap();
        let (obj, ev) = s.create(&key, &version, ns, obj).unwrap_or_else(|e| panic!("create {plural}: {}", e.message));
        let _ = self.inner.events.send(ev);
        obj
    }

    pub fn namespace(&self, name: &str, labels: Value) -> Value {
        self.create("v1", "namespaces", "", json!({"metadata": {"name": name, "labels": labels}}))
    }

    pub fn get(&self, api_version: &str, plural: &str, ns: &str, name: &str) -> Option<Value> {
        let (group, _) = split_api_version(api_version);
        self.inner.store.lock().unwrap().get(&ResourceKey { group, plural: plural.into() }, ns, name).ok()
    }

    pub fn list(&self, api_version: &str, plural: &str) -> Vec<Value> {
        let (group, _) = split_api_version(api_version);
        let opts = ListOptions { namespace: None, labels: LabelSelector::default(), fields: FieldSelector::default() };
        self.inner.store.lock().unwrap().list(&ResourceKey { group, plural: plural.into() }, &opts)
    }

    fn record(&self, method: &Method, uri: &Uri, headers: &HeaderMap, body: &Bytes, status: u16) {
        let created_name = (method == Method::POST)
            .then(|| serde_json::from_slice::<Value>(body).ok())
            .flatten()
            .and_then(|v| v["metadata"]["name"].as_str().map(String::from));
        self.inner.requests.lock().unwrap().push(Recorded {
            created_name,
            method: method.to_string(),
            path: uri.path().to_string(),
            query: uri.query().unwrap_or_default().to_string(),
            content_type: headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string(),
            status,
            client: client_name(headers),
        });
    }

    fn take_fault(&self, method: &Method, path: &str) -> Option<Fault> {
        let mut faults = self.inner.faults.lock().unwrap();
        let i = faults.iter().position(|(m, suffix, _)| m == method && path.ends_with(suffix.as_str()))?;
        Some(faults.remove(i).2)
    }

    fn publish(&self, events: Vec<Event>) {
        for e in events {
            let _ = self.inner.events.send(e);
        }
    }
}

fn split_api_version(api_version: &str) -> (String, String) {
    match api_version.split_once('/') {
        Some((g, v)) => (g.to_string(), v.to_string()),
        None => (String::new(), api_version.to_string()),
    }
}

fn register_crd(store: &mut Store, crd: &Value) {
    let spec = &crd["spec"];
    let group = spec["group"].as_str().unwrap_or_default();
    let plural = spec["names"]["plural"].as_str().unwrap_or_default();
    let versions = spec["versions"].as_array().cloned().unwrap_or_default();
    store.register(
        group,
        plural,
        ResourceInfo {
            kind: spec["names"]["kind"].as_str().unwrap_or_default().to_string(),
            versions: versions.iter().filter_map(|v| v["name"].as_str().map(String::from)).collect(),
            namespaced: spec["scope"] == "Namespaced",
            status_subresource: versions.iter().any(|v| v.pointer("/subresources/status").is_some()),
            selectable_fields: versions
                .iter()
                .flat_map(|v| v["selectableFields"].as_array().cloned().unwrap_or_default())
                .filter_map(|f| f["jsonPath"].as_str().map(|p| p.trim_start_matches('.').to_string()))
                .collect(),
            custom: true,
            update_needs_resource_version: true,
            list_maps: versions
                .iter()
                .flat_map(|v| {
                    let mut found = Vec::new();
                    list_maps(v.pointer("/schema/openAPIV3Schema").unwrap_or(&Value::Null), "", &mut found);
                    found
                })
                .collect(),
        },
    );
}

/// The lists under `schema`'s properties declared `x-kubernetes-list-type: map`, with their keys.
fn list_maps(schema: &Value, path: &str, found: &mut Vec<(String, Vec<String>)>) {
    if schema["x-kubernetes-list-type"] == "map" {
        let keys = schema["x-kubernetes-list-map-keys"].as_array().cloned().unwrap_or_default();
        found.push((path.to_string(), keys.iter().filter_map(|k| k.as_str().map(String::from)).collect()));
    }
    for (name, child) in schema["properties"].as_object().into_iter().flatten() {
        let child_path = if path.is_empty() { name.clone() } else { format!("{path}.{name}") };
        list_maps(child, &child_path, found);
    }
}

fn status_response(e: &ApiError) -> Response<Body> {
    json_response(StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), &e.body())
}

fn json_response(code: StatusCode, v: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(v).unwrap()))
        .unwrap()
}

fn parse_target(store: &Store, path: &str) -> Result<Target, ApiError> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["version"] => return Ok(Target::Version),
        ["apis", "authentication.k8s.io", "v1", "tokenreviews"] => return Ok(Target::TokenReview),
        ["apis", "authorization.k8s.io", "v1", "subjectaccessreviews"] => return Ok(Target::SubjectAccessReview),
        ["api", v, rest @ ..] => (String::new(), v.to_string(), rest),
        ["apis", g, v, rest @ ..] => (g.to_string(), v.to_string(), rest),
        _ => return Err(ApiError::new(404, "NotFound", format!("no route for {path}"))),
    };
    let key = |plural: &str| ResourceKey { group: group.clone(), plural: plural.to_string() };
    let namespaced = |plural: &str| store.resources.get(&key(plural)).is_some_and(|i| i.namespaced);
    let target = match rest {
        [plural] => Target::Collection { key: key(plural), version, ns: None },
        ["namespaces", ns, plural] if namespaced(plural) => {
            Target::Collection { key: key(plural), version, ns: Some(ns.to_string()) }
        }
        ["namespaces", ns, plural, name] if namespaced(plural) => {
            Target::Object { key: key(plural), version, ns: ns.to_string(), name: name.to_string(), sub: None }
        }
        ["namespaces", ns, plural, name, sub] if namespaced(plural) => Target::Object {
            key: key(plural),
            version,
            ns: ns.to_string(),
            name: name.to_string(),
            sub: Some(sub.to_string()),
        },
        [plural, name] => {
            Target::Object { key: key(plural), version, ns: String::new(), name: name.to_string(), sub: None }
        }
        [plural, name, sub] => Target::Object {
            key: key(plural),
            version,
            ns: String::new(),
            name: name.to_string(),
            sub: Some(sub.to_string()),
        },
        _ => return Err(ApiError::new(404, "NotFound", format!("no route for {path}"))),
    };
    let (Target::Collection { key, version, .. } | Target::Object { key, version, .. }) = &target else {
        return Ok(target);
    };
    let info = store.info(key)?;
    if !info.versions.contains(version) {
        return Err(ApiError::new(404, "NotFound", format!("{} is not served at version {version}", key.plural)));
    }
    Ok(target)
}

fn query_map(uri: &Uri) -> BTreeMap<String, String> {
    form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes()).into_owned().collect()
}

async fn handle(
    State(api): State<FakeApi>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response<Body> {
    let unavailable =
        || ApiError::new(503, "ServiceUnavailable", "the server is currently unable to handle the request");
    let mut paused = api.inner.paused.subscribe();
    // A closed channel (the fake dropped) answers as if unpaused.
    let _ = paused.wait_for(|held| !held).await;
    let fault = api.take_fault(&method, uri.path());
    let response = if *api.inner.outage.borrow() || fault == Some(Fault::Refused) {
        status_response(&unavailable())
    } else {
        let applied = match dispatch(&api, &method, &uri, &headers, &body) {
            Ok(resp) => resp,
            Err(e) => status_response(&e),
        };
        match fault {
            Some(Fault::ResponseLost) => status_response(&ApiError::new(504, "Timeout", "the response was lost")),
            _ => applied,
        }
    };
    api.record(&method, &uri, &headers, &body, response.status().as_u16());
    response
}

fn parse_body(body: &Bytes) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .or_else(|_| serde_saphyr::from_str::<Value>(std::str::from_utf8(body).unwrap_or_default()))
        .map_err(|e| ApiError::new(400, "BadRequest", format!("cannot decode the body: {e}")))
}

fn dispatch(
    api: &FakeApi,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response<Body>, ApiError> {
    let q = query_map(uri);
    let mut store = api.inner.store.lock().unwrap();
    let target = parse_target(&store, uri.path())?;
    match (method.clone(), target) {
        (Method::GET, Target::Version) => Ok(json_response(
            StatusCode::OK,
            &json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-fake", "platform": "linux/amd64"}),
        )),
        (Method::POST, Target::TokenReview) => {
            let review = parse_body(body)?;
            Ok(json_response(StatusCode::CREATED, &store.review_token(&review)))
        }
        (Method::POST, Target::SubjectAccessReview) => {
            let review = parse_body(body)?;
            Ok(json_response(StatusCode::CREATED, &store.review_access(&review)))
        }
        (Method::GET, Target::Collection { key, version, ns }) => {
            let opts = ListOptions {
                namespace: ns,
                labels: LabelSelector::parse(q.get("labelSelector").map(String::as_str).unwrap_or_default())
                    .map_err(|e| ApiError::new(400, "BadRequest", e))?,
                fields: FieldSelector::parse(q.get("fieldSelector").map(String::as_str).unwrap_or_default())
                    .map_err(|e| ApiError::new(400, "BadRequest", e))?,
            };
            let info = store.info(&key)?;
            for path in opts.fields.paths() {
                if !matches!(path, "metadata.name" | "metadata.namespace")
                    && !info.selectable_fields.iter().any(|f| f == path)
                {
                    return Err(ApiError::new(400, "BadRequest", format!("field label not supported: {path}")));
                }
            }
            if matches!(q.get("watch").map(String::as_str), Some("true" | "1")) {
                let timeout = q.get("timeoutSeconds").and_then(|t| t.parse().ok()).unwrap_or(1800u64);
                return watch(
                    api,
                    &mut store,
                    key,
                    opts,
                    q.get("resourceVersion").cloned().unwrap_or_default(),
                    timeout,
                );
            }
            let info = store.info(&key)?.clone();
            let items = store.list(&key, &opts);
            Ok(json_response(
                StatusCode::OK,
                &json!({
                    "apiVersion": info.api_version(&version, &key.group),
                    "kind": format!("{}List", info.kind),
                    "metadata": {"resourceVersion": store::rv_string(store.rv)},
                    "items": items,
                }),
            ))
        }
        (Method::POST, Target::Collection { key, version, ns }) => {
            let (obj, ev) = store.create(&key, &version, ns.as_deref().unwrap_or_default(), parse_body(body)?)?;
            drop(store);
            api.publish(vec![ev]);
            Ok(json_response(StatusCode::CREATED, &obj))
        }
        (Method::GET, Target::Object { key, ns, name, .. }) => {
            Ok(json_response(StatusCode::OK, &store.get(&key, &ns, &name)?))
        }
        (Method::PUT, Target::Object { key, ns, name, sub, .. }) => {
            let (obj, evs) = store.update(&key, &ns, &name, parse_body(body)?, sub.as_deref())?;
            drop(store);
            api.publish(evs);
            Ok(json_response(StatusCode::OK, &obj))
        }
        (Method::PATCH, Target::Object { key, version, ns, name, sub }) => {
            let content_type = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default();
            let patch = parse_body(body)?;
            let current = store.get(&key, &ns, &name);
            let patched = match content_type {
                "application/strategic-merge-patch+json" if store.info(&key)?.custom => {
                    return Err(ApiError::new(
                        415,
                        "UnsupportedMediaType",
                        "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml",
                    ));
                }
                "application/merge-patch+json" | "application/strategic-merge-patch+json" => {
                    let mut cur = current?;
                    store::merge_patch(&mut cur, &patch);
                    cur
                }
                "application/apply-patch+yaml" => {
                    if q.get("fieldManager").is_none_or(|m| m.is_empty()) {
                        return Err(ApiError::new(400, "BadRequest", "PATCH with apply requires a fieldManager"));
                    }
                    match current {
                        Ok(mut cur) => {
                            store::apply_patch(&mut cur, &patch, &store.info(&key)?.list_maps, "");
                            cur
                        }
                        Err(e) if e.code == 404 && sub.is_none() => {
                            let mut obj = patch.clone();
                            obj["metadata"]["name"] = Value::String(name.clone());
                            let (obj, ev) = store.create(&key, &version, &ns, obj)?;
                            drop(store);
                            api.publish(vec![ev]);
                            return Ok(json_response(StatusCode::CREATED, &obj));
                        }
                        Err(e) => return Err(e),
                    }
                }
                "application/json-patch+json" => {
                    let mut cur = current?;
                    let ops: json_patch::Patch = serde_json::from_value(patch)
                        .map_err(|e| ApiError::new(400, "BadRequest", format!("invalid JSON patch: {e}")))?;
                    json_patch::patch(&mut cur, &ops).map_err(|e| ApiError::new(422, "Invalid", e.to_string()))?;
                    cur
                }
                other => {
                    return Err(ApiError::new(
                        415,
                        "UnsupportedMediaType",
                        format!("unsupported patch type {other:?}"),
                    ));
                }
            };
            let (obj, evs) = store.update(&key, &ns, &name, patched, sub.as_deref())?;
            drop(store);
            api.publish(evs);
            Ok(json_response(StatusCode::OK, &obj))
        }
        (Method::DELETE, Target::Object { key, ns, name, sub: None, .. }) => {
            let (obj, evs) = store.delete(&key, &ns, &name)?;
            drop(store);
            api.publish(evs);
            Ok(json_response(StatusCode::OK, &obj))
        }
        (m, _) => Err(ApiError::new(405, "MethodNotAllowed", format!("{m} is not supported here"))),
    }
}

/// What a watcher with `opts` sees of `e`: objects entering the selection
/// are ADDED, leaving it DELETED.
fn view(e: &Event, key: &ResourceKey, opts: &ListOptions) -> Option<(&'static str, Value)> {
    if &e.key != key {
        return None;
    }
    let now = opts.matches(&e.object);
    let before = e.old.as_ref().map(|o| opts.matches(o));
    match (e.kind, before, now) {
        ("ADDED", _, true) => Some(("ADDED", e.object.clone())),
        ("DELETED", b, n) if n || b == Some(true) => Some(("DELETED", e.object.clone())),
        ("MODIFIED", Some(true), true) => Some(("MODIFIED", e.object.clone())),
        ("MODIFIED", Some(false), true) => Some(("ADDED", e.object.clone())),
        ("MODIFIED", Some(true), false) => Some(("DELETED", e.object.clone())),
        _ => None,
    }
}

fn line(kind: &str, object: &Value) -> Bytes {
    let mut v = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap();
    v.push(b'\n');
    Bytes::from(v)
}

/// Resolves when the outage switch turns on.
async fn went_down(outage: &mut tokio::sync::watch::Receiver<bool>) {
    loop {
        if *outage.borrow_and_update() {
            return;
        }
        if outage.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

fn watch(
    api: &FakeApi,
    store: &mut Store,
    key: ResourceKey,
    opts: ListOptions,
    rv: String,
    timeout_secs: u64,
) -> Result<Response<Body>, ApiError> {
    store.info(&key)?;
    // Subscribe under the store lock so no event falls between replay and live.
    let mut rx = api.inner.events.subscribe();
    let mut initial: Vec<Bytes> = Vec::new();
    let from: u64 = match rv.as_str() {
        "" | "0" => {
            for obj in store.list(&key, &opts) {
                initial.push(line("ADDED", &obj));
            }
            store.rv
        }
        n => store::parse_rv(n)
            .ok_or_else(|| ApiError::new(400, "BadRequest", format!("invalid resourceVersion {n:?}")))?,
    };
    if from < store.oldest_rv {
        let gone = ApiError::new(
            410,
            "Expired",
            format!("too old resource version: {} ({})", store::rv_string(from), store::rv_string(store.oldest_rv)),
        );
        initial.push(line("ERROR", &gone.body()));
    } else {
        for e in store.log.iter().filter(|e| e.rv > from) {
            if let Some((kind, obj)) = view(e, &key, &opts) {
                initial.push(line(kind, &obj));
            }
        }
    }
    let last_replayed = store.rv;
    let (tx, body_rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(1024);
    let mut outage = api.inner.outage.subscribe();
    tokio::spawn(async move {
        for b in initial {
            if tx.send(Ok(b)).await.is_err() {
                return;
            }
        }
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(timeout_secs);
        loop {
            let next = tokio::select! {
                next = tokio::time::timeout_at(deadline, rx.recv()) => next,
                _ = went_down(&mut outage) => {
                    let reset = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "the API server went away");
                    let _ = tx.send(Err(reset)).await;
                    return;
                }
            };
            let event = match next {
                Err(_) => return,
                Ok(Ok(e)) => e,
                Ok(Err(broadcast::error::RecvError::Lagged(_))) => {
                    let gone = ApiError::new(410, "Expired", "watch fell behind; relist");
                    let _ = tx.send(Ok(line("ERROR", &gone.body()))).await;
                    return;
                }
                Ok(Err(broadcast::error::RecvError::Closed)) => return,
            };
            if event.rv <= last_replayed {
                continue;
            }
            if let Some((kind, obj)) = view(&event, &key, &opts)
                && tx.send(Ok(line(kind, &obj))).await.is_err()
            {
                return;
            }
        }
    });
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(body_rx)))
        .unwrap())
}
