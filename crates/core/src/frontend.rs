//! The front end every mode runs: the gRPC port (TLS and the
//! CreateCertificate service) and the operations port (`/metrics`,
//! `/healthz`, `/readyz`), with readiness, drain and shutdown in one place.
//! `serve`, `dev` and the bench server differ only in the service and TLS
//! they hand it.

use crate::ca::server::{self, ServerOptions};
use crate::ca::service::CertificateService;
use crate::ca::tls::ServerTls;
use crate::telemetry::Metrics;
use crate::telemetry::http::{self as ops, Readiness};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Why the front end could not start, or did not stop cleanly.
#[derive(Debug, Error)]
pub enum FrontEndError {
    /// A port could not be bound.
    #[error("binding the {port} port {addr}")]
    Bind {
        /// Which port: `gRPC` or `metrics/health`.
        port: &'static str,
        /// The address asked for.
        addr: SocketAddr,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// [`FrontEnd::serve`] was called a second time.
    #[error("the gRPC server was started twice")]
    AlreadyServing,
    /// The `gRPC` or `operations` server task panicked or was cancelled.
    #[error("the {0} server task stopped abnormally")]
    Task(&'static str, #[source] tokio::task::JoinError),
    /// The gRPC server returned an error.
    #[error("the gRPC server failed")]
    Grpc(#[source] tonic::transport::Error),
    /// The operations server returned an error.
    #[error("the operations server failed")]
    Ops(#[source] std::io::Error),
}

/// Both ports, bound. The operations port answers from the start (alive,
/// not ready), so a probe sees the process while the rest starts.
pub struct FrontEnd {
    /// The gRPC port's bound address (with the actual port when port 0 was asked for).
    pub grpc_addr: SocketAddr,
    /// None when there is no operations port (the bench server).
    pub ops_addr: Option<SocketAddr>,
    readiness: Arc<Readiness>,
    shutdown: watch::Sender<bool>,
    grpc_listener: Option<TcpListener>,
    grpc: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
    ops: Option<JoinHandle<std::io::Result<()>>>,
    drain_delay: Duration,
    metrics: Arc<Metrics>,
}

impl FrontEnd {
    /// Binds the operations port (if any) and then the gRPC port.
    /// `drain_delay` is how long readiness is down before the listeners
    /// close at shutdown, so endpoints stop sending traffic first.
    pub async fn bind(
        grpc: SocketAddr,
        ops_port: Option<SocketAddr>,
        metrics: Arc<Metrics>,
        drain_delay: Duration,
    ) -> Result<Self, FrontEndError> {
        let (shutdown, shutdown_rx) = watch::channel(false);
        let readiness = Readiness::new();
        let (ops_addr, ops) = match ops_port {
            Some(addr) => {
                let (listener, local) = bind("metrics/health", addr).await?;
                let task =
                    tokio::spawn(ops::serve(listener, metrics.clone(), readiness.clone(), wait_for(shutdown_rx)));
                (Some(local), Some(task))
            }
            None => (None, None),
        };
        let (grpc_listener, grpc_addr) = bind("gRPC", grpc).await?;
        Ok(Self {
            grpc_addr,
            ops_addr,
            readiness,
            shutdown,
            grpc_listener: Some(grpc_listener),
            grpc: None,
            ops,
            drain_delay,
            metrics,
        })
    }

    /// Starts answering CreateCertificate on the bound gRPC port.
    pub fn serve(
        &mut self,
        tls: Arc<ServerTls>,
        service: CertificateService,
        options: ServerOptions,
    ) -> Result<(), FrontEndError> {
        let listener = self.grpc_listener.take().ok_or(FrontEndError::AlreadyServing)?;
        let stop = wait_for(self.shutdown.subscribe());
        self.grpc = Some(tokio::spawn(server::serve(listener, tls, service, options, self.metrics.clone(), stop)));
        Ok(())
    }

    /// What `/readyz` reports; the mode decides when it is ready.
    pub fn readiness(&self) -> &Arc<Readiness> {
        &self.readiness
    }

    /// Graceful shutdown: readiness drops, traffic drains for the drain
    /// delay, the listeners close and in-flight requests finish.
    pub async fn shutdown(self) -> Result<(), FrontEndError> {
        self.readiness.set(false);
        tokio::time::sleep(self.drain_delay).await;
        let _ = self.shutdown.send(true);
        if let Some(grpc) = self.grpc {
            grpc.await.map_err(|e| FrontEndError::Task("gRPC", e))?.map_err(FrontEndError::Grpc)?;
        }
        if let Some(ops) = self.ops {
            ops.await.map_err(|e| FrontEndError::Task("operations", e))?.map_err(FrontEndError::Ops)?;
        }
        Ok(())
    }
}

/// Binds `addr`; the listener and the address it got (port 0 picks one).
async fn bind(port: &'static str, addr: SocketAddr) -> Result<(TcpListener, SocketAddr), FrontEndError> {
    let refused = |source| FrontEndError::Bind { port, addr, source };
    let listener = TcpListener::bind(addr).await.map_err(refused)?;
    let local = listener.local_addr().map_err(refused)?;
    Ok((listener, local))
}

async fn wait_for(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const ANY_PORT: ([u8; 4], u16) = ([127, 0, 0, 1], 0);

    async fn readyz(addr: SocketAddr) -> std::io::Result<String> {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await?;
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        Ok(out)
    }

    #[tokio::test]
    async fn ready_only_when_told_and_closed_after_shutdown() {
        let front =
            FrontEnd::bind(ANY_PORT.into(), Some(ANY_PORT.into()), Metrics::new(), Duration::ZERO).await.unwrap();
        let ops = front.ops_addr.unwrap();
        assert!(readyz(ops).await.unwrap().starts_with("HTTP/1.1 503"), "alive but not ready at first");
        front.readiness().set(true);
        assert!(readyz(ops).await.unwrap().starts_with("HTTP/1.1 200"));
        front.shutdown().await.unwrap();
        assert!(readyz(ops).await.is_err(), "the operations port is closed after shutdown");
    }

    #[tokio::test]
    async fn a_taken_port_is_named_in_the_error() {
        let first = FrontEnd::bind(ANY_PORT.into(), None, Metrics::new(), Duration::ZERO).await.unwrap();
        let taken = first.grpc_addr;
        let Err(error) = FrontEnd::bind(taken, None, Metrics::new(), Duration::ZERO).await else {
            panic!("bound a taken port");
        };
        assert!(matches!(&error, FrontEndError::Bind { port: "gRPC", addr, .. } if *addr == taken), "{error:?}");
        assert_eq!(error.to_string(), format!("binding the gRPC port {taken}"));
        assert!(first.ops_addr.is_none());
    }
}
