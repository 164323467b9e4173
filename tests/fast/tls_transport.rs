//! The gRPC port's TLS and HTTP/2 behaviour, as Istio's clients need it.

use crate::support;

use rustls::crypto::aws_lc_rs::{self as provider, cipher_suite, kx_group};
use rustls::pki_types::ServerName;
use std::sync::Arc;
use support::*;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

struct ClientTls {
    versions: Vec<&'static rustls::SupportedProtocolVersion>,
    suites: Vec<rustls::SupportedCipherSuite>,
    groups: Vec<&'static dyn rustls::crypto::SupportedKxGroup>,
    alpn: Vec<Vec<u8>>,
}

impl Default for ClientTls {
    fn default() -> Self {
        let p = provider::default_provider();
        Self {
            versions: vec![&rustls::version::TLS13, &rustls::version::TLS12],
            suites: p.cipher_suites,
            groups: p.kx_groups,
            alpn: vec![b"h2".to_vec()],
        }
    }
}

async fn handshake(
    ca: &TestCa,
    server_name: &str,
    tls: ClientTls,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, std::io::Error> {
    let mut p = provider::default_provider();
    p.cipher_suites = tls.suites;
    p.kx_groups = tls.groups;
    let mut roots = rustls::RootCertStore::empty();
    for r in ca.bundle().roots() {
        roots.add(r.clone()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(p))
        .with_protocol_versions(&tls.versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = tls.alpn;
    let tcp = TcpStream::connect(ca.server.grpc_addr).await.unwrap();
    let name = ServerName::try_from(server_name.to_string()).unwrap();
    TlsConnector::from(Arc::new(config)).connect(name, tcp).await
}

#[tokio::test]
async fn negotiates_h2_over_tls13_by_default() {
    let ca = start_ca().await;
    let s = handshake(&ca, "localhost", ClientTls::default()).await.unwrap();
    let (_, conn) = s.get_ref();
    assert_eq!(conn.alpn_protocol(), Some(&b"h2"[..]));
    assert_eq!(conn.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
}

#[tokio::test]
async fn refuses_clients_that_cannot_speak_h2() {
    let ca = start_ca().await;
    let tls = ClientTls { alpn: vec![b"http/1.1".to_vec()], ..Default::default() };
    assert!(handshake(&ca, "localhost", tls).await.is_err());
}

#[tokio::test]
async fn tls12_fips_suites_on_p256_work_and_others_do_not() {
    let ca = start_ca().await;
    for suite in
        [cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384]
    {
        let tls = ClientTls {
            versions: vec![&rustls::version::TLS12],
            suites: vec![suite],
            groups: vec![kx_group::SECP256R1],
            ..Default::default()
        };
        let s = handshake(&ca, "localhost", tls).await.unwrap_or_else(|e| panic!("{suite:?}: {e}"));
        let (_, conn) = s.get_ref();
        assert_eq!(conn.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_2));
        assert_eq!(conn.negotiated_cipher_suite(), Some(suite));
        assert_eq!(conn.alpn_protocol(), Some(&b"h2"[..]));
    }
    let chacha_only = ClientTls {
        versions: vec![&rustls::version::TLS12],
        suites: vec![cipher_suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256],
        ..Default::default()
    };
    assert!(handshake(&ca, "localhost", chacha_only).await.is_err());
}

#[tokio::test]
async fn serving_certificate_names_what_clients_dial() {
    let ca = start_ca_with(|o| o.serving_names = vec!["meshroot.example".into()]).await;
    for name in ["localhost", "127.0.0.1", "::1", "meshroot.example"] {
        handshake(&ca, name, ClientTls::default()).await.unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    assert!(handshake(&ca, "istiod.istio-system.svc", ClientTls::default()).await.is_err());
}

#[tokio::test]
async fn keepalive_pings_without_data_are_answered_not_refused() {
    let ca = start_ca().await;
    let tls = handshake(&ca, "localhost", ClientTls::default()).await.unwrap();
    let (mut client, mut connection) = h2::client::handshake(tls).await.unwrap();
    let mut ping_pong = connection.ping_pong().unwrap();
    let conn_task = tokio::spawn(connection);
    // grpc-go servers answer this with GOAWAY too_many_pings; meshroot must not.
    for _ in 0..10 {
        tokio::time::timeout(std::time::Duration::from_secs(5), ping_pong.ping(h2::Ping::opaque()))
            .await
            .expect("pong in time")
            .expect("pong");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(!conn_task.is_finished(), "the server closed the connection");
    // The same connection still carries a request (no credentials: Unauthenticated, 16).
    assert_eq!(grpc_status(&mut client).await, "16");
}

/// A bare gRPC server with a swappable serving certificate and no meshes.
struct Bare {
    addr: std::net::SocketAddr,
    root: meshroot::pki::Authority,
    tls: Arc<meshroot::ca::tls::ServerTls>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

fn serving_cert(
    root: &meshroot::pki::Authority,
) -> (Vec<rustls::pki_types::CertificateDer<'static>>, meshroot::pki::PrivateKey, String) {
    let key = meshroot::pki::PrivateKey::generate(meshroot::pki::KeyAlgorithm::EcdsaP256).unwrap();
    let issued = meshroot::pki::profile::issue_server(
        root,
        &key.spki_der(),
        &["localhost".into()],
        &[],
        time::Duration::hours(1),
        time::OffsetDateTime::now_utc(),
    )
    .unwrap();
    (vec![issued.der], key, issued.serial_hex)
}

async fn bare() -> (Bare, String) {
    use meshroot::auth::AuthenticatorChain;
    use meshroot::ca::{
        service::{CertificateService, ServiceConfig},
        tls::{ServerTls, ServingCertificate},
    };
    let root = meshroot::pki::Authority::new_root(
        &meshroot::pki::CaSpec::root(time::Duration::days(1)),
        time::OffsetDateTime::now_utc(),
    )
    .unwrap();
    let (chain, key, serial) = serving_cert(&root);
    let tls = ServerTls::new(ServingCertificate::new(chain, &key).unwrap(), None).unwrap();
    let service = CertificateService::new(
        ServiceConfig::default(),
        AuthenticatorChain::default(),
        Arc::new(meshroot::mesh::MeshRegistry::default()),
        meshroot::telemetry::Metrics::new(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(meshroot::ca::server::serve(
        listener,
        tls.clone(),
        service,
        Default::default(),
        meshroot::telemetry::Metrics::new(),
        async {
            let _ = rx.await;
        },
    ));
    (Bare { addr, root, tls, _stop: stop }, serial)
}

async fn bare_handshake(b: &Bare) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(b.root.certificate().clone()).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(provider::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = TcpStream::connect(b.addr).await.unwrap();
    TlsConnector::from(Arc::new(config)).connect(ServerName::try_from("localhost").unwrap(), tcp).await.unwrap()
}

fn peer_serial(s: &tokio_rustls::client::TlsStream<TcpStream>) -> String {
    let leaf = &s.get_ref().1.peer_certificates().unwrap()[0];
    meshroot::pki::authority::parse_certificate(leaf).unwrap().raw_serial_as_string().replace(':', "")
}

async fn grpc_status(client: &mut h2::client::SendRequest<bytes::Bytes>) -> String {
    let req = http::Request::builder()
        .method("POST")
        .uri("https://localhost/istio.v1.auth.IstioCertificateService/CreateCertificate")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (resp, mut send) = client.clone().ready().await.unwrap().send_request(req, false).unwrap();
    send.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]), true).unwrap();
    let resp = resp.await.unwrap();
    if let Some(v) = resp.headers().get("grpc-status") {
        return v.to_str().unwrap().to_string();
    }
    let mut body = resp.into_body();
    while body.data().await.is_some() {}
    body.trailers().await.unwrap().unwrap().get("grpc-status").unwrap().to_str().unwrap().to_string()
}

#[tokio::test]
async fn rotating_the_serving_certificate_keeps_open_connections() {
    let (b, first_serial) = bare().await;
    let tls = bare_handshake(&b).await;
    assert_eq!(peer_serial(&tls), first_serial);
    let (mut client, connection) = h2::client::handshake(tls).await.unwrap();
    let conn = tokio::spawn(connection);
    // No credentials: Unauthenticated (16), but a gRPC answer on this connection.
    assert_eq!(grpc_status(&mut client).await, "16");

    let (chain, key, second_serial) = serving_cert(&b.root);
    b.tls.serving().replace(chain, &key).unwrap();
    // The open connection keeps working ...
    assert_eq!(grpc_status(&mut client).await, "16");
    assert!(!conn.is_finished());
    // ... and a new handshake gets the new certificate.
    assert_eq!(peer_serial(&bare_handshake(&b).await), second_serial);
    assert_ne!(first_serial, second_serial);
}

fn connection_limits(
    per_peer: usize,
    idle: Option<std::time::Duration>,
) -> impl FnOnce(&mut meshroot::dev::DevOptions) {
    move |opts| {
        opts.server.connections.max_connections_per_peer = per_peer;
        opts.server.connections.idle_timeout = idle;
    }
}

/// One address cannot take the whole port: beyond its limit a connection is closed before its
/// handshake, counted, and a closed connection makes room again.
#[tokio::test]
async fn connections_beyond_the_per_peer_limit_are_closed_before_the_handshake() {
    let ca = start_ca_with(connection_limits(2, None)).await;
    let first = handshake(&ca, "localhost", ClientTls::default()).await.unwrap();
    let _second = handshake(&ca, "localhost", ClientTls::default()).await.unwrap();
    assert!(handshake(&ca, "localhost", ClientTls::default()).await.is_err(), "a third connection was served");
    let metrics = ca.server.metrics.render(0);
    assert!(metrics.contains("meshroot_grpc_connections_refused_total{reason=\"max_connections_per_peer\"} 1"));
    assert!(metrics.contains("meshroot_grpc_connections 2\n"), "{metrics}");
    drop(first);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if handshake(&ca, "localhost", ClientTls::default()).await.is_ok() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no room after a connection closed");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A connection nothing is read from is closed (between one and two idle timeouts), so dead
/// peers and idle clients do not hold memory for ever.
#[tokio::test]
async fn a_silent_connection_is_closed_after_the_idle_timeout() {
    use tokio::io::AsyncReadExt;
    let ca = start_ca_with(connection_limits(10, Some(std::time::Duration::from_secs(1)))).await;
    let started = std::time::Instant::now();
    let mut tls = handshake(&ca, "localhost", ClientTls::default()).await.unwrap();
    let mut buf = [0u8; 1024];
    // The server's HTTP/2 preface (SETTINGS) comes first; then nothing, until the close.
    let closed = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            match tls.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "still open after 10 s");
    assert!(started.elapsed() >= std::time::Duration::from_secs(1), "closed after {:?}", started.elapsed());
    assert_eq!(ca.server.metrics.grpc_connections_idle_closed.get(), 1);
}

/// Requests keep a connection open: it is closed for silence, never for age.
#[tokio::test]
async fn a_connection_in_use_outlives_the_idle_timeout() {
    let ca = start_ca_with(connection_limits(10, Some(std::time::Duration::from_secs(1)))).await;
    let mut client = ca.client().await;
    let (_key, csr) = csr_for(DEFAULT_ID, meshroot::pki::KeyAlgorithm::EcdsaP256);
    let started = std::time::Instant::now();
    while started.elapsed() < std::time::Duration::from_secs(3) {
        let headers = [("authorization", bearer(DEV_TOKEN))];
        let headers: Vec<_> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        client.create_certificate(request(&csr, 3600, None, &headers)).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    assert_eq!(ca.server.metrics.grpc_connections_idle_closed.get(), 0);
    assert_eq!(ca.server.metrics.grpc_connections.get(), 1, "the client had to reconnect");
}

/// ztunnel's client is Rust's (tonic over hyper): after meshroot closes its idle connection, the
/// same channel's next request reconnects and is served. (Istio's Go client: tests/real/istio.rs.)
#[tokio::test]
async fn a_rust_client_reconnects_after_its_idle_connection_is_closed() {
    let ca = start_ca_with(connection_limits(10, Some(std::time::Duration::from_millis(300)))).await;
    let mut client = ca.client().await;
    let (_key, csr) = csr_for(DEFAULT_ID, meshroot::pki::KeyAlgorithm::EcdsaP256);
    let ask = |csr: &str| {
        let token = bearer(DEV_TOKEN);
        request(csr, 3600, None, &[("authorization", token.as_str())])
    };
    client.create_certificate(ask(&csr)).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while ca.server.metrics.grpc_connections_idle_closed.get() == 0 {
        assert!(std::time::Instant::now() < deadline, "the idle connection was never closed");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    client.create_certificate(ask(&csr)).await.unwrap();
}
