//! An in-process `meshroot serve` replica against the fake API, with the
//! usual world: an External mesh `default` over istio-system and bookinfo,
//! and a PluginCA mesh `gateway` in openshift-ingress.

use fake_apiserver::FakeApi;
use meshroot::serve::{ServeOptions, Server};
use serde_json::json;
use std::time::Duration;

pub const NS: &str = "meshroot";
pub const ROOT_SECRET: &str = "meshroot-root-ca";

/// meshroot's namespace, two labelled `mesh: default` (istio-system,
/// bookinfo), and openshift-ingress.
pub fn namespaces(fake: &FakeApi) {
    for (ns, labels) in [
        (NS, json!({})),
        ("istio-system", json!({"mesh": "default"})),
        ("bookinfo", json!({"mesh": "default"})),
        ("openshift-ingress", json!({})),
    ] {
        fake.namespace(ns, labels);
    }
}

/// The ClusterIssuer `mesh-root`: signs with the root for `bookinfo`,
/// names under `*.example.com` (what request_a_certificate asks for).
pub fn root_cluster_issuer(fake: &FakeApi) {
    fake.create(
        "meshroot.io/v1alpha1",
        "clusterissuers",
        "",
        json!({"metadata": {"name": "mesh-root"}, "spec": {
            "signer": {"root": true}, "allowedNamespaces": ["bookinfo"],
            "policy": {"allowedDNSNames": ["*.example.com"]}}}),
    );
}

pub fn world(fake: &FakeApi) {
    namespaces(fake);
    fake.create(
        "meshroot.io/v1alpha1",
        "meshes",
        "",
        json!({"metadata": {"name": "default"}, "spec": {
        "trustDomain": "cluster.local", "istiod": {"namespace": "istio-system"},
        "namespaceSelector": {"matchLabels": {"mesh": "default"}}}}),
    );
    fake.create(
        "meshroot.io/v1alpha1",
        "meshes",
        "",
        json!({"metadata": {"name": "gateway"}, "spec": {
        "trustDomain": "cluster.local", "mode": "PluginCA", "istiod": {"namespace": "openshift-ingress"}}}),
    );
}

pub fn options(pod_name: &str) -> ServeOptions {
    ServeOptions {
        namespace: NS.into(),
        pod_name: pod_name.into(),
        listen: "127.0.0.1:0".parse().unwrap(),
        ops_listen: "127.0.0.1:0".parse().unwrap(),
        root_secret: ROOT_SECRET.into(),
        generate_root: true,
        cluster_id: "Kubernetes".into(),
        cluster_aliases: vec![],
        // The chart's list when no Mesh names another.
        root_configmap_names: vec!["istio-ca-root-cert".into()],
        token: Default::default(),
        service_name: "meshroot".into(),
        serving_names: vec!["localhost".into()],
        lease_name: "meshroot-leader".into(),
        lease: Default::default(),
        server: Default::default(),
        resync: Duration::from_secs(1),
        drain_delay: Duration::ZERO,
        cert_manager_issuer: false,
        kubernetes_csr_signer: false,
        rate_limits: Default::default(),
    }
}

pub async fn start(fake: &FakeApi, pod_name: &str) -> Server {
    meshroot::serve::start(fake.client(), options(pod_name)).await.unwrap()
}

/// A Secret value as text.
pub fn secret_text(fake: &FakeApi, ns: &str, name: &str, key: &str) -> Option<String> {
    use base64::Engine as _;
    let s = fake.get("v1", "secrets", ns, name)?;
    let b = base64::engine::general_purpose::STANDARD.decode(s["data"][key].as_str()?).ok()?;
    String::from_utf8(b).ok()
}

/// The root Secret's bundle (tls.crt then ca.crt), for clients to trust.
pub fn trusted_roots(fake: &FakeApi) -> String {
    secret_text(fake, NS, ROOT_SECRET, "tls.crt").unwrap_or_default()
        + &secret_text(fake, NS, ROOT_SECRET, "ca.crt").unwrap_or_default()
}

/// Asks replica `port` for `identity` with `token`, as pilot-agent does.
pub async fn ask(
    fake: &FakeApi,
    port: u16,
    token: &str,
    identity: &str,
) -> Result<meshroot::pb::IstioCertificateResponse, tonic::Status> {
    ask_trusting(port, trusted_roots(fake).as_bytes(), token, identity, None).await
}

/// Asks the replica on `port` (TLS verified against `roots_pem`) for
/// `identity` with `token`, as pilot-agent does, or as ztunnel does for a
/// pod when `impersonate` names the identity it acts for.
pub async fn ask_trusting(
    port: u16,
    roots_pem: &[u8],
    token: &str,
    identity: &str,
    impersonate: Option<&str>,
) -> Result<meshroot::pb::IstioCertificateResponse, tonic::Status> {
    use prost_types::{Struct, Value, value::Kind};
    let mut client = meshroot::client::connect(&format!("localhost:{port}"), roots_pem)
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let key = meshroot::pki::PrivateKey::generate(meshroot::pki::KeyAlgorithm::EcdsaP256).unwrap();
    let csr = meshroot::pki::csr::build_workload_csr(&key, identity).unwrap();
    let metadata = impersonate.map(|id| Struct {
        fields: [("ImpersonatedIdentity".to_string(), Value { kind: Some(Kind::StringValue(id.into())) })].into(),
    });
    let body = meshroot::pb::IstioCertificateRequest { csr, validity_duration: 3600, metadata };
    let req = meshroot::client::request(body, Some(token), "Kubernetes").unwrap();
    client.create_certificate(req).await.map(|r| r.into_inner())
}

/// A Mesh condition as (status, reason, message).
pub fn mesh_condition(fake: &FakeApi, mesh: &str, type_: &str) -> Option<(String, String, String)> {
    let m = fake.get("meshroot.io/v1alpha1", "meshes", "", mesh)?;
    let c = m["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == type_)?.clone();
    Some((c["status"].as_str()?.into(), c["reason"].as_str()?.into(), c["message"].as_str()?.into()))
}

/// An approved CertificateRequest in bookinfo for `shop.example.com`, to the
/// root-signing ClusterIssuer `mesh-root`.
pub fn request_a_certificate(fake: &FakeApi, name: &str) {
    let key = meshroot::pki::PrivateKey::generate(meshroot::pki::KeyAlgorithm::EcdsaP256).unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["shop.example.com".to_string()]).unwrap();
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr_pem = params.serialize_request(&key).unwrap().pem().unwrap();
    fake.create(
        "cert-manager.io/v1",
        "certificaterequests",
        "bookinfo",
        json!({"metadata": {"name": name}, "spec": {
            "request": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &csr_pem),
            "issuerRef": {"group": "meshroot.io", "kind": "ClusterIssuer", "name": "mesh-root"}}}),
    );
    fake.set_status(
        "cert-manager.io/v1",
        "certificaterequests",
        "bookinfo",
        name,
        json!({"conditions": [{"type": "Approved", "status": "True", "reason": "cert-manager.io", "message": "ok"}]}),
    );
}
