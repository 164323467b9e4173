//! Bounds on the gRPC port's connections: how many may be open at once, from
//! everyone and from one peer address, and how long one may stay silent.
//!
//! Without them any client that reaches the port could open connections until
//! meshroot runs out of file descriptors or memory (a connection holds its TLS
//! state and HTTP/2 tables, tens of KiB), and a peer that vanished without a
//! FIN would hold its connection for ever. A connection is counted from its
//! accept, so handshakes in progress count too.

use crate::telemetry::Metrics;
use crate::telemetry::metrics::RefusalLabels;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};
use tonic::transport::server::Connected;

/// The limits, as configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// The most connections open at once, handshakes included.
    pub max_connections: usize,
    /// The most connections open at once from one IP address.
    pub max_connections_per_peer: usize,
    /// A connection from which nothing has been read for this long is closed (`None`: never).
    pub idle_timeout: Option<Duration>,
}

/// The most connections, by default: far above what a cluster's CA clients
/// keep open (one each while in use, closed when idle), and at about 30 KiB
/// each once handshaken, about 120 MiB, well inside the chart's memory limit.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// The most connections from one address, by default: generous for a node's
/// host-network pods or an east-west gateway in front of a remote cluster, yet
/// one pod cannot take the whole port.
pub const DEFAULT_MAX_CONNECTIONS_PER_PEER: usize = 256;
/// Silence before a connection is closed, by default. Istio's clients keep
/// their CA connection between rotations hours apart, and reconnect when they
/// next need it.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_peer: DEFAULT_MAX_CONNECTIONS_PER_PEER,
            idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
        }
    }
}

/// Why a connection was closed at once instead of served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The port already has its most connections.
    Full,
    /// The peer's address already has its most connections.
    PeerFull,
}

impl Refusal {
    /// The metric label.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Full => "max_connections",
            Self::PeerFull => "max_connections_per_peer",
        }
    }
}

/// Counts open connections against the limits.
#[derive(Debug)]
pub struct Admission {
    limits: ConnectionLimits,
    open: Mutex<OpenConnections>,
    metrics: Arc<Metrics>,
    last_warning: Mutex<Option<Instant>>,
}

/// Refusals are counted each, but warned of at most this often: a client that
/// retries at once could otherwise flood the log.
const WARNING_INTERVAL: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
struct OpenConnections {
    total: usize,
    // Only addresses with a connection open: the map is as small as the port's load.
    by_peer: HashMap<IpAddr, usize>,
}

impl Admission {
    /// No connection open yet.
    pub fn new(limits: ConnectionLimits, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self { limits, open: Mutex::new(OpenConnections::default()), metrics, last_warning: Mutex::new(None) })
    }

    /// Counts a new connection from `peer`, or says why it may not be served. The
    /// permit uncounts it when dropped, with the connection.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<Permit, Refusal> {
        let refusal = {
            let mut open = self.lock();
            let from_peer = open.by_peer.get(&peer).copied().unwrap_or(0);
            if open.total >= self.limits.max_connections {
                Some(Refusal::Full)
            } else if from_peer >= self.limits.max_connections_per_peer {
                Some(Refusal::PeerFull)
            } else {
                open.total = open.total.saturating_add(1);
                open.by_peer.insert(peer, from_peer.saturating_add(1));
                None
            }
        };
        match refusal {
            Some(refusal) => {
                self.metrics.grpc_connections_refused.get_or_create(&RefusalLabels { reason: refusal.reason() }).inc();
                Err(refusal)
            }
            None => {
                self.metrics.grpc_connections.inc();
                Ok(Permit { admission: self.clone(), peer })
            }
        }
    }

    /// Logs a refusal: a warning at most once a minute, each at debug level.
    pub fn report(&self, refusal: Refusal, peer: SocketAddr) {
        let (total, from_peer) = self.open(peer.ip().to_canonical());
        let now = Instant::now();
        let warn = {
            let mut last = self.last_warning.lock().unwrap_or_else(PoisonError::into_inner);
            let due = last.is_none_or(|at| now.duration_since(at) >= WARNING_INTERVAL);
            if due {
                *last = Some(now);
            }
            due
        };
        let (limit, max) = match refusal {
            Refusal::Full => ("--max-connections", self.limits.max_connections),
            Refusal::PeerFull => ("--max-connections-per-peer", self.limits.max_connections_per_peer),
        };
        if warn {
            tracing::warn!(
                %peer, open = total, open_from_peer = from_peer, limit, max,
                "gRPC connection closed unserved: a connection limit is met (further refusals this minute are \
                 counted in meshroot_grpc_connections_refused_total)"
            );
        } else {
            tracing::debug!(%peer, open = total, open_from_peer = from_peer, limit, max, "gRPC connection refused");
        }
    }

    /// Connections open now, in all and from `peer`.
    pub fn open(&self, peer: IpAddr) -> (usize, usize) {
        let open = self.lock();
        (open.total, open.by_peer.get(&peer).copied().unwrap_or(0))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, OpenConnections> {
        // The counts are updated whole under the lock, so a panic elsewhere cannot leave them torn.
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn release(&self, peer: IpAddr) {
        let mut open = self.lock();
        open.total = open.total.saturating_sub(1);
        if let Some(count) = open.by_peer.get_mut(&peer) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.by_peer.remove(&peer);
            }
        }
        drop(open);
        self.metrics.grpc_connections.dec();
    }
}

/// One admitted connection; uncounted when dropped.
#[derive(Debug)]
pub struct Permit {
    admission: Arc<Admission>,
    peer: IpAddr,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.admission.release(self.peer);
    }
}

/// An admitted connection: holds its permit for as long as it lives, and ends
/// with an error on every read and write once nothing has been read from it
/// for the idle timeout.
///
/// The timer is not reset on every read (a timer-wheel update per read costs
/// the hot path): it fires every idle timeout, and closes the connection if
/// nothing was read since it last fired. So a silent connection closes between
/// one and two idle timeouts after its last byte. The server answers every
/// request within the request timeout, shorter than the idle timeout, so a
/// connection is never closed with a call in flight for being silent.
#[derive(Debug)]
pub struct Watched<T> {
    inner: T,
    _permit: Permit,
    idle: Option<Idle>,
}

#[derive(Debug)]
struct Idle {
    timeout: Duration,
    timer: Pin<Box<Sleep>>,
    heard: bool,
    /// The connection was found silent: it stays closed.
    expired: bool,
    metrics: Arc<Metrics>,
}

impl<T> Watched<T> {
    /// Wraps `inner`, admitted under `permit`.
    pub fn new(inner: T, permit: Permit) -> Self {
        let idle = permit.admission.limits.idle_timeout.map(|timeout| Idle {
            timeout,
            timer: Box::pin(tokio::time::sleep(timeout)),
            heard: false,
            expired: false,
            metrics: permit.admission.metrics.clone(),
        });
        Self { inner, _permit: permit, idle }
    }

    /// A read or a write that has to wait checks for silence. Writes too: h2 stops reading while
    /// its writes are blocked, so a peer that sends nothing and reads nothing would otherwise never
    /// reach a read's check.
    fn blocked<R>(&mut self, cx: &mut Context<'_>, polled: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        match (polled, self.idle.as_mut()) {
            (Poll::Pending, Some(idle)) => idle.poll_silent(cx).map(Err),
            (polled, _) => polled,
        }
    }

    /// The error every read and write gets once the connection was found silent.
    fn expired(&self) -> Option<io::Error> {
        self.idle.as_ref().filter(|idle| idle.expired).map(Idle::error)
    }
}

impl Idle {
    fn error(&self) -> io::Error {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!("nothing read for {}", humantime::format_duration(self.timeout)),
        )
    }

    /// Ready with an error once the connection has been silent for a whole period.
    fn poll_silent(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        if self.expired {
            return Poll::Ready(self.error());
        }
        while self.timer.as_mut().poll(cx).is_ready() {
            if !std::mem::take(&mut self.heard) {
                // Latched: every later read or write fails too, and the close is counted once.
                self.expired = true;
                self.metrics.grpc_connections_idle_closed.inc();
                return Poll::Ready(self.error());
            }
            // Out of the clock's range only for timeouts no configuration accepts (at most a day):
            // the timer stays elapsed, and the next silent period closes the connection.
            let Some(next) = Instant::now().checked_add(self.timeout) else { return Poll::Pending };
            self.timer.as_mut().reset(next);
        }
        Poll::Pending
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(error) = this.expired() {
            return Poll::Ready(Err(error));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if let Some(idle) = this.idle.as_mut()
                    && buf.filled().len() > before
                {
                    idle.heard = true;
                }
                Poll::Ready(result)
            }
            Poll::Pending => this.blocked(cx, Poll::Pending),
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if let Some(error) = self.expired() {
            return Poll::Ready(Err(error));
        }
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.blocked(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if let Some(error) = self.expired() {
            return Poll::Ready(Err(error));
        }
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.blocked(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(error) = self.expired() {
            return Poll::Ready(Err(error));
        }
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.blocked(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<T: Connected> Connected for Watched<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const A: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));

    fn admission(max: usize, per_peer: usize, idle: Option<Duration>) -> (Arc<Admission>, Arc<Metrics>) {
        let metrics = Metrics::new();
        let limits = ConnectionLimits { max_connections: max, max_connections_per_peer: per_peer, idle_timeout: idle };
        (Admission::new(limits, metrics.clone()), metrics)
    }

    #[test]
    fn a_peer_at_its_limit_is_refused_while_others_are_admitted_up_to_the_total() {
        let (admission, metrics) = admission(3, 2, None);
        let a1 = admission.admit(A).unwrap();
        let _a2 = admission.admit(A).unwrap();
        assert_eq!(admission.admit(A).unwrap_err(), Refusal::PeerFull);
        let _b1 = admission.admit(B).unwrap();
        assert_eq!(admission.open(A), (3, 2));
        // The port is full: B is refused although it has one.
        assert_eq!(admission.admit(B).unwrap_err(), Refusal::Full);
        assert_eq!(metrics.grpc_connections.get(), 3);
        // A closed connection makes room for its peer again.
        drop(a1);
        assert_eq!(admission.open(A), (2, 1));
        let _a3 = admission.admit(A).unwrap();
        let rendered = metrics.render(0);
        assert!(rendered.contains("meshroot_grpc_connections_refused_total{reason=\"max_connections_per_peer\"} 1"));
        assert!(rendered.contains("meshroot_grpc_connections_refused_total{reason=\"max_connections\"} 1"));
        assert!(rendered.contains("meshroot_grpc_connections 3"), "{rendered}");
    }

    #[test]
    fn a_peer_whose_connections_all_closed_leaves_no_entry() {
        let (admission, metrics) = admission(10, 10, None);
        let permits: Vec<_> = (0..5).map(|_| admission.admit(A).unwrap()).collect();
        drop(permits);
        assert_eq!(admission.open(A), (0, 0));
        assert!(admission.lock().by_peer.is_empty());
        assert_eq!(metrics.grpc_connections.get(), 0);
    }

    /// A watched server end of a loopback connection with `idle` as its idle timeout, its client
    /// end, the admission that counts it and the metrics.
    async fn watched(
        idle: Option<Duration>,
    ) -> (Watched<tokio::net::TcpStream>, tokio::net::TcpStream, Arc<Admission>, Arc<Metrics>) {
        let (admission, metrics) = admission(10, 10, idle);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let server = Watched::new(listener.accept().await.unwrap().0, admission.admit(A).unwrap());
        (server, client, admission, metrics)
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_silent_from_the_start_ends_with_an_error_after_one_idle_timeout() {
        let (mut watched, _client, admission, metrics) = watched(Some(Duration::from_secs(60))).await;
        let started = Instant::now();
        let error = watched.read(&mut [0u8; 16]).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert!(error.to_string().contains("nothing read for 1m"), "{error}");
        // Silent from the start: closed when the first period ends.
        assert_eq!(started.elapsed(), Duration::from_secs(60));
        assert_eq!(metrics.grpc_connections_idle_closed.get(), 1);
        // Closed for good, and counted once, whichever side asks next.
        assert_eq!(watched.write(b"late").await.unwrap_err().kind(), io::ErrorKind::TimedOut);
        assert_eq!(watched.read(&mut [0u8; 16]).await.unwrap_err().kind(), io::ErrorKind::TimedOut);
        assert_eq!(metrics.grpc_connections_idle_closed.get(), 1);
        drop(watched);
        assert_eq!(admission.open(A), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_keeps_sending_is_not_closed() {
        let (mut watched, mut client, _, metrics) = watched(Some(Duration::from_secs(60))).await;
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 16];
            let mut total = 0;
            loop {
                match watched.read(&mut buf).await {
                    Ok(0) => return Ok(total),
                    Ok(n) => total += n,
                    Err(e) => return Err(e),
                }
            }
        });
        // One byte every 50 s for 10 minutes: never a whole period silent.
        for _ in 0..12 {
            tokio::time::sleep(Duration::from_secs(50)).await;
            client.write_all(b"x").await.unwrap();
        }
        drop(client);
        assert_eq!(reader.await.unwrap().unwrap(), 12);
        assert_eq!(metrics.grpc_connections_idle_closed.get(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_falls_silent_is_closed_within_two_periods_of_its_last_byte() {
        let (mut watched, mut client, _, _) = watched(Some(Duration::from_secs(60))).await;
        let started = Instant::now();
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 16];
            loop {
                if let Err(e) = watched.read(&mut buf).await {
                    return e;
                }
            }
        });
        tokio::time::sleep(Duration::from_secs(30)).await;
        client.write_all(b"x").await.unwrap();
        let error = reader.await.unwrap();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        // Heard at 30 s: the period ending at 60 s saw it, the one ending at 120 s did not.
        assert_eq!(started.elapsed(), Duration::from_secs(120));
    }

    /// A peer that reads nothing blocks the writes; h2 then stops reading, so the write side must
    /// notice the silence too.
    #[tokio::test(start_paused = true)]
    async fn a_connection_whose_writes_are_blocked_and_that_sends_nothing_is_closed() {
        let (mut watched, _client, _, _) = watched(Some(Duration::from_secs(60))).await;
        let started = Instant::now();
        let chunk = vec![0u8; 1 << 16];
        let error = loop {
            // The client never reads: the socket buffers fill, then the write waits.
            if let Err(e) = watched.write(&chunk).await {
                break e;
            }
        };
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(60));
    }

    #[tokio::test(start_paused = true)]
    async fn without_an_idle_timeout_a_silent_connection_stays() {
        let (mut watched, _client, _, _) = watched(None).await;
        let read = tokio::time::timeout(Duration::from_secs(24 * 3600), watched.read(&mut [0u8; 16])).await;
        assert!(read.is_err(), "the read should still be waiting");
        let _ = watched.shutdown().await;
    }
}
