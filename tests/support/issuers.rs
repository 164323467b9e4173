//! A leader's issuer controllers (issuer status, CertificateRequests,
//! Kubernetes CSRs) running against the fake API with an in-memory root.
#![allow(dead_code)]

use base64::Engine as _;
use fake_apiserver::FakeApi;
use meshroot::controllers::panic_guard::PanicGuard;
use meshroot::controllers::signing::Signers;
use meshroot::controllers::{certificate_requests, issuer_cache, issuers, kube_csrs};
use meshroot::k8s::root::RootState;
use meshroot::mesh::{Mesh, MeshRegistry};
use meshroot::pki::{Authority, CaSpec, SigningChain, TrustBundle};
use meshroot::telemetry::Metrics;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;
use tokio::sync::watch;

pub const CR_API: &str = "cert-manager.io/v1";
pub const ISSUER_API: &str = "meshroot.io/v1alpha1";
pub const CSR_API: &str = "certificates.k8s.io/v1";

pub struct IssuerWorld {
    pub fake: FakeApi,
    pub root: Arc<Authority>,
    pub bundle: Arc<TrustBundle>,
    pub registry: Arc<MeshRegistry>,
    pub root_tx: watch::Sender<RootState>,
    pub metrics: Arc<Metrics>,
    pub dir: tempfile::TempDir,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for IssuerWorld {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl IssuerWorld {
    pub fn start() -> Self {
        Self::start_with(FakeApi::new())
    }

    pub fn start_with(fake: FakeApi) -> Self {
        Self::start_hooked(fake, None)
    }

    /// As [`Self::start`], with `hook` called with each request's name
    /// (`namespace/name`, or the CSR's name) inside the signing panic guard.
    pub fn start_poisoned(hook: fn(&str)) -> Self {
        Self::start_hooked(FakeApi::new(), Some(hook))
    }

    fn start_hooked(fake: FakeApi, hook: Option<fn(&str)>) -> Self {
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "meshroot=info,kube=warn".into()))
            .try_init();
        for ns in ["default", "meshroot", "istio-system", "openshift-ingress", "apps"] {
            fake.namespace(ns, json!({}));
        }
        let root = Arc::new(
            Authority::new_root(&CaSpec::root(time::Duration::days(3650)), OffsetDateTime::now_utc()).unwrap(),
        );
        let bundle = Arc::new(TrustBundle::new(vec![root.certificate().clone()]).unwrap());
        let (root_tx, root_rx) = watch::channel(RootState {
            authority: Some(root.clone()),
            bundle: bundle.clone(),
            chain: Default::default(),
        });
        let registry = Arc::new(MeshRegistry::default());
        let client = fake.client();
        let (cache, cache_task) = issuer_cache::IssuerCache::spawn(client.clone());
        let own = meshroot::issuer::OwnService {
            namespace: "meshroot".into(),
            name: "meshroot".into(),
            extra_names: Vec::new(),
        };
        let signers = Signers { issuers: cache, root: root_rx, registry: registry.clone(), own: Arc::new(own) };
        let metrics = Metrics::new();
        let guard = |controller| {
            let guard = PanicGuard::new(controller, metrics.clone());
            match hook {
                Some(hook) => guard.with_hook(hook),
                None => guard,
            }
        };
        let tasks = vec![
            cache_task,
            issuers::spawn(client.clone(), signers.clone(), Duration::from_secs(3600)),
            certificate_requests::spawn(client.clone(), signers.clone(), "test".into(), guard("certificate_requests")),
            kube_csrs::spawn(client, signers, "test".into(), guard("kube_csrs")),
        ];
        Self { fake, root, bundle, registry, root_tx, metrics, dir: tempfile::tempdir().unwrap(), tasks }
    }

    pub fn root_pem(&self) -> String {
        self.root.certificate_pem().to_string()
    }

    /// Adds an External mesh with a fresh intermediate under the root (its
    /// Mesh object has istiod in `istio-system`, no issuer grants).
    pub fn add_mesh(&self, name: &str) -> Arc<SigningChain> {
        self.add_mesh_granting(name, &[])
    }

    /// As [`Self::add_mesh`], granting the mesh's intermediate to the
    /// Issuers of `issuer_namespaces`.
    pub fn add_mesh_granting(&self, name: &str, issuer_namespaces: &[&str]) -> Arc<SigningChain> {
        self.fake.create(
            ISSUER_API,
            "meshes",
            "",
            json!({"metadata": {"name": name}, "spec": {
                "trustDomain": "cluster.local",
                "istiod": {"namespace": "istio-system"},
                "issuerNamespaces": issuer_namespaces,
            }}),
        );
        let intermediate = self
            .root
            .new_intermediate(&CaSpec::intermediate(name, time::Duration::days(365)), OffsetDateTime::now_utc())
            .unwrap();
        let chain = Arc::new(SigningChain::new(intermediate, Vec::new(), (*self.bundle).clone()).unwrap());
        let mut meshes: Vec<Arc<Mesh>> = self.registry.meshes().iter().cloned().collect();
        meshes.push(Arc::new(Mesh::of_all_namespaces(name, "cluster.local", chain.clone())));
        self.registry.replace(meshes);
        chain
    }

    pub fn cluster_issuer(&self, name: &str, spec: Value) {
        self.fake.create(ISSUER_API, "clusterissuers", "", json!({"metadata": {"name": name}, "spec": spec}));
    }

    pub fn issuer(&self, ns: &str, name: &str, spec: Value) {
        self.fake.create(ISSUER_API, "issuers", ns, json!({"metadata": {"name": name}, "spec": spec}));
    }

    /// Creates a CertificateRequest for `csr_pem`; `extra` is merged into its spec.
    pub fn request(&self, ns: &str, name: &str, csr_pem: &str, issuer_ref: Value, extra: Value) {
        let mut spec = json!({
            "request": base64::engine::general_purpose::STANDARD.encode(csr_pem),
            "issuerRef": issuer_ref,
        });
        if let Value::Object(extra) = extra {
            for (k, v) in extra {
                spec[k] = v;
            }
        }
        self.fake.create(CR_API, "certificaterequests", ns, json!({"metadata": {"name": name}, "spec": spec}));
    }

    /// Sets `Approved=True` (or `Denied=True`) as an approver would.
    pub fn decide(&self, ns: &str, name: &str, approve: bool) {
        let (type_, verb) = if approve { ("Approved", "approved") } else { ("Denied", "denied") };
        let mut status = self.cr(ns, name)["status"].clone();
        if !status.is_object() {
            status = json!({});
        }
        let mut conditions = status["conditions"].as_array().cloned().unwrap_or_default();
        conditions.push(json!({
            "type": type_, "status": "True", "reason": "cert-manager.io",
            "message": format!("Certificate request has been {verb} by cert-manager.io"),
            "lastTransitionTime": "2026-01-01T00:00:00Z",
        }));
        status["conditions"] = Value::Array(conditions);
        self.fake.set_status(CR_API, "certificaterequests", ns, name, status);
    }

    pub fn cr(&self, ns: &str, name: &str) -> Value {
        self.fake.get(CR_API, "certificaterequests", ns, name).expect("the CertificateRequest exists")
    }

    /// Waits until the request's Ready condition has `reason`; returns the request.
    pub async fn wait_ready_reason(&self, ns: &str, name: &str, reason: &str) -> Value {
        self.wait_until(ns, name, |cr| condition(cr, "Ready").is_some_and(|c| c["reason"] == reason)).await
    }

    /// Waits until the request satisfies `check`; returns it.
    pub async fn wait_until(&self, ns: &str, name: &str, check: impl Fn(&Value) -> bool) -> Value {
        for _ in 0..400 {
            let cr = self.cr(ns, name);
            if check(&cr) {
                return cr;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{ns}/{name} never got the expected status; its status: {}", self.cr(ns, name)["status"]);
    }

    /// An Issuer (`ns` set) or ClusterIssuer (`ns` empty).
    pub fn issuer_object(&self, ns: &str, name: &str) -> Value {
        let plural = if ns.is_empty() { "clusterissuers" } else { "issuers" };
        self.fake.get(ISSUER_API, plural, ns, name).expect("the issuer exists")
    }

    /// Waits until the issuer satisfies `check`; returns it.
    pub async fn wait_issuer_until(&self, ns: &str, name: &str, check: impl Fn(&Value) -> bool) -> Value {
        for _ in 0..400 {
            let issuer = self.issuer_object(ns, name);
            if check(&issuer) {
                return issuer;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("issuer {ns}/{name} never got the expected status: {}", self.issuer_object(ns, name)["status"]);
    }

    /// Waits until the issuer's Ready condition has `status` ("True"/"False").
    pub async fn wait_issuer_ready(&self, ns: &str, name: &str, status: &str) -> Value {
        self.wait_issuer_until(ns, name, |i| condition(i, "Ready").is_some_and(|c| c["status"] == status)).await
    }

    /// How many writes touched the named object (any subresource).
    pub fn writes_to(&self, plural: &str, name: &str) -> usize {
        self.fake
            .writes()
            .iter()
            .filter(|w| w.path.contains(&format!("/{plural}/{name}")) && !w.path.contains("/events"))
            .count()
    }
}

pub fn condition<'a>(obj: &'a Value, type_: &str) -> Option<&'a Value> {
    obj["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == type_)
}

pub fn decode_b64(v: &Value) -> String {
    String::from_utf8(base64::engine::general_purpose::STANDARD.decode(v.as_str().unwrap_or_default()).unwrap())
        .unwrap()
}

pub fn cluster_ref(name: &str) -> Value {
    json!({"name": name, "kind": "ClusterIssuer", "group": "meshroot.io"})
}

pub fn issuer_ref(name: &str) -> Value {
    json!({"name": name, "kind": "Issuer", "group": "meshroot.io"})
}
