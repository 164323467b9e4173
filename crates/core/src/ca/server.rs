//! The gRPC server: concurrent TLS handshakes feeding tonic.

use super::coalesce::Coalesce;
use super::connection::{Admission, ConnectionLimits, Watched};
use super::quick_ack::QuickAck;
use super::service::{CertificateService, MAX_REQUEST_BYTES};
use super::tls::ServerTls;
use super::unary_body::AnswerOnMessage;
use crate::pb::istio_certificate_service_server::IstioCertificateServiceServer;
use crate::telemetry::Metrics;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;

/// Timeouts and limits of the gRPC server.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// A client that has not finished its handshake by then is dropped.
    pub handshake_timeout: Duration,
    /// Server-side deadline for one CreateCertificate.
    pub request_timeout: Duration,
    /// The most concurrent HTTP/2 streams (requests) on one connection. h2 keeps the
    /// per-stream tables a connection ever needed for as long as it lives, so this also
    /// bounds what one connection holds after a burst.
    pub max_concurrent_streams: u32,
    /// Largest header block a request may send (a bearer token is a few KiB).
    pub max_header_list_bytes: u32,
    /// How many connections may be open, in all and from one address, and how long one may be silent.
    pub connections: ConnectionLimits,
}

/// What Rust's h2 client and grpc-go assume a server allows until its SETTINGS arrive. A lower
/// cap would refuse (REFUSED_STREAM) the streams such a client opens on a fresh connection
/// before it has read the limit; at this one they never exceed it, and later ones wait.
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 100;

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
            max_header_list_bytes: 64 * 1024,
            connections: ConnectionLimits::default(),
        }
    }
}

/// Serves CreateCertificate on `listener` until `shutdown` resolves, then
/// lets in-flight requests finish.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<ServerTls>,
    service: CertificateService,
    options: ServerOptions,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    let handshake_timeout = options.handshake_timeout;
    let admission = Admission::new(options.connections.clone(), metrics);
    // Each handshake runs in its own task, so a slow client cannot hold up
    // the others.
    let accept_loop = tokio::spawn(async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            // Refused before any work: closing it at once tells the client to back off.
            let permit = match admission.admit(peer.ip().to_canonical()) {
                Ok(permit) => permit,
                Err(refusal) => {
                    admission.report(refusal, peer);
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = TlsAcceptor::from(tls.current());
            let tx = tx.clone();
            tokio::spawn(async move {
                let stream = Coalesce::new(Watched::new(QuickAck::new(tcp), permit));
                match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(mut stream)) => {
                        stream.get_mut().0.enable();
                        let _ = tx.send(Ok::<_, std::io::Error>(stream)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    let grpc = IstioCertificateServiceServer::new(service).max_decoding_message_size(MAX_REQUEST_BYTES);
    let result = tonic::transport::Server::builder()
        .max_concurrent_streams(options.max_concurrent_streams)
        .http2_max_header_list_size(options.max_header_list_bytes)
        .timeout(options.request_timeout)
        // Answer once the request's message is in, not at its END_STREAM (unary_body.rs).
        .add_service(AnswerOnMessage::new(grpc))
        .serve_with_incoming_shutdown(ReceiverStream::new(rx), shutdown)
        .await;
    accept_loop.abort();
    result
}
