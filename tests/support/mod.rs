//! Shared helpers for integration tests: an in-process dev server on
//! loopback, clients, and CSR builders.
#![allow(dead_code)]

pub mod binary;
pub mod helm;
pub mod issuers;
pub mod openssl;
pub mod rbac;
pub mod replica;

use meshroot::dev::{DevOptions, DevServer};
use meshroot::pb::istio_certificate_service_client::IstioCertificateServiceClient;
use meshroot::pb::{IstioCertificateRequest, IstioCertificateResponse};
use meshroot::pki::{KeyAlgorithm, PrivateKey, TrustBundle};
use prost_types::{Struct, Value, value::Kind};
use std::path::PathBuf;
use tonic::transport::Channel;

pub const TD: &str = "cluster.local";
pub const DEV_TOKEN: &str = "dev-token-default";
pub const ZTUNNEL_TOKEN: &str = "dev-token-ztunnel";
pub const OTHER_TOKEN: &str = "dev-token-other";
pub const DEFAULT_ID: &str = "spiffe://cluster.local/ns/default/sa/default";

pub struct TestCa {
    pub server: DevServer,
    pub dir: tempfile::TempDir,
}

impl TestCa {
    pub fn root_pem(&self) -> Vec<u8> {
        std::fs::read(&self.server.state.bundle_path).unwrap()
    }

    pub fn bundle(&self) -> TrustBundle {
        TrustBundle::from_pem(&self.root_pem()).unwrap()
    }

    pub fn addr(&self) -> String {
        format!("localhost:{}", self.server.grpc_addr.port())
    }

    pub async fn client(&self) -> IstioCertificateServiceClient<Channel> {
        meshroot::client::connect(&self.addr(), &self.root_pem()).await.unwrap()
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
}

/// Starts a dev server on ephemeral loopback ports with three known tokens.
pub async fn start_ca() -> TestCa {
    start_ca_with(|_| {}).await
}

pub async fn start_ca_with(customize: impl FnOnce(&mut DevOptions)) -> TestCa {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(
        &tokens,
        format!("{DEV_TOKEN} default default\n{ZTUNNEL_TOKEN} istio-system ztunnel\n{OTHER_TOKEN} other sa1\n"),
    )
    .unwrap();
    let mut opts = DevOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        ops_listen: "127.0.0.1:0".parse().unwrap(),
        state_dir: dir.path().join("state"),
        token_file: Some(tokens),
        ..DevOptions::default()
    };
    customize(&mut opts);
    let server = meshroot::dev::start(opts).await.unwrap();
    TestCa { server, dir }
}

pub fn csr_for(identity: &str, alg: KeyAlgorithm) -> (PrivateKey, String) {
    let key = PrivateKey::generate(alg).unwrap();
    let csr = meshroot::pki::csr::build_workload_csr(&key, identity).unwrap();
    (key, csr)
}

pub fn metadata(pairs: &[(&str, Kind)]) -> Option<Struct> {
    Some(Struct { fields: pairs.iter().map(|(k, v)| (k.to_string(), Value { kind: Some(v.clone()) })).collect() })
}

/// A request with the given headers (each may repeat).
pub fn request(
    csr: &str,
    ttl: i64,
    meta: Option<Struct>,
    headers: &[(&'static str, &str)],
) -> tonic::Request<IstioCertificateRequest> {
    let mut req =
        tonic::Request::new(IstioCertificateRequest { csr: csr.to_string(), validity_duration: ttl, metadata: meta });
    for (k, v) in headers {
        req.metadata_mut().append(*k, v.parse().unwrap());
    }
    req
}

pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

pub async fn call(
    ca: &TestCa,
    req: tonic::Request<IstioCertificateRequest>,
) -> Result<IstioCertificateResponse, tonic::Status> {
    ca.client().await.create_certificate(req).await.map(|r| r.into_inner())
}

pub fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{}/tests/fixtures/openssl/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// A client presenting `chain_pem` + `key_pem` as its TLS client certificate.
pub async fn client_with_identity(
    ca: &TestCa,
    chain_pem: &str,
    key_pem: &str,
) -> Result<IstioCertificateServiceClient<Channel>, tonic::transport::Error> {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca.root_pem()))
        .domain_name("localhost")
        .identity(Identity::from_pem(chain_pem, key_pem));
    let channel = Endpoint::from_shared(format!("https://{}", ca.addr())).unwrap().tls_config(tls)?.connect().await?;
    Ok(IstioCertificateServiceClient::new(channel))
}

/// Polls `f` every 50 ms until it holds (at most 15 s).
pub async fn until(what: &str, mut f: impl FnMut() -> bool) {
    eventually(what, || f().then_some(())).await
}

/// Polls `f` every 50 ms until it yields a value (at most 15 s).
pub async fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    for _ in 0..300 {
        if let Some(v) = f() {
            return v;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

/// As [`eventually`], for checks that are themselves asynchronous (at most 30 s).
pub async fn eventually_async<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    for _ in 0..300 {
        if let Some(v) = f().await {
            return v;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

/// A TLS client connector (aws-lc, ALPN h2) trusting only `roots`.
pub fn h2_tls_connector(
    roots: impl IntoIterator<Item = rustls::pki_types::CertificateDer<'static>>,
) -> tokio_rustls::TlsConnector {
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        store.add(root).unwrap();
    }
    let mut config =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(store)
            .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
}

/// A raw HTTP/2 client over TLS (ALPN h2) to the CA's gRPC port, trusting its roots, for tests
/// that write frames themselves. `nagle` keeps Nagle's algorithm on, as ztunnel's client does.
pub async fn h2_client(ca: &TestCa, nagle: bool) -> h2::client::SendRequest<bytes::Bytes> {
    h2_client_with(ca, nagle, &h2::client::Builder::new()).await
}

/// [`h2_client`] with the HTTP/2 settings of `builder`.
pub async fn h2_client_with(
    ca: &TestCa,
    nagle: bool,
    builder: &h2::client::Builder,
) -> h2::client::SendRequest<bytes::Bytes> {
    let tcp = tokio::net::TcpStream::connect(ca.server.grpc_addr).await.unwrap();
    tcp.set_nodelay(!nagle).unwrap();
    let tls = h2_tls_connector(ca.bundle().roots().iter().cloned())
        .connect(rustls::pki_types::ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let (client, connection) = builder.handshake(tls).await.unwrap();
    tokio::spawn(connection);
    client
}

/// A minimal HTTP/1.1 GET (so the tests need no HTTP client crate): the whole response.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}
