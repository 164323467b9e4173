//! The load generator: gRPC clients over TLS, as pilot-agent and ztunnel
//! connect, sending CreateCertificate with bearer tokens.

use super::fixture::token;
use crate::client::{connect, request, verify_response};
use crate::pb::IstioCertificateRequest;
use crate::pb::istio_certificate_service_client::IstioCertificateServiceClient;
use crate::pki::TrustBundle;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// One load-generator connection: a CreateCertificate client over its own TLS channel.
pub type Client = IstioCertificateServiceClient<Channel>;

/// What one phase measured on the client side.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The latency of each successful request, in no particular order.
    pub latencies: Vec<Duration>,
    /// Requests that failed, and load tasks that did not finish.
    pub errors: u64,
    /// Wall-clock time from the phase's start until its last request finished.
    pub elapsed: Duration,
    /// Paced load only: how long after its due time each request was sent.
    pub lags: Vec<Duration>,
    /// The first error, as the client saw it.
    pub first_error: Option<String>,
}

impl Outcome {
    /// Counts a failed request, keeping the first error's text.
    fn error(&mut self, status: &tonic::Status) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(format!("{}: {}", status.code(), status.message()));
        }
    }

    /// Successful requests.
    pub fn completed(&self) -> u64 {
        self.latencies.len() as u64
    }

    /// Successful requests per second of `elapsed`.
    pub fn throughput(&self) -> f64 {
        self.completed() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Opens `n` connections (each its own TLS session and HTTP/2 connection).
pub async fn connect_all(addr: &str, root_pem: &[u8], n: usize) -> anyhow::Result<Vec<Client>> {
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        clients.push(connect(addr, root_pem).await?);
    }
    Ok(clients)
}

async fn call(client: &mut Client, csrs: &[String], i: usize) -> Result<(), tonic::Status> {
    let body = IstioCertificateRequest { csr: csrs[i].clone(), validity_duration: 3600, metadata: None };
    let req = request(body, Some(&token(i)), crate::names::DEFAULT_CLUSTER_ID)
        .map_err(|e| tonic::Status::internal(e.to_string()))?;
    client.create_certificate(req).await.map(|_| ())
}

/// Checks one full response against the root, as pilot-agent would, so a
/// benchmark can never measure a server that answers wrongly.
pub async fn check_one(client: &mut Client, csrs: &[String], root: &TrustBundle) -> anyhow::Result<()> {
    let body = IstioCertificateRequest { csr: csrs[0].clone(), validity_duration: 3600, metadata: None };
    let resp = client
        .create_certificate(request(body, Some(&token(0)), crate::names::DEFAULT_CLUSTER_ID)?)
        .await?
        .into_inner();
    verify_response(&resp, root, &super::fixture::identity(0))?;
    Ok(())
}

/// Every connection sends back to back, one request in flight each, for
/// `duration`.
pub async fn closed_loop(clients: &[Client], csrs: Arc<Vec<String>>, duration: Duration) -> Outcome {
    let deadline = Instant::now() + duration;
    back_to_back(clients, csrs, move |_| Instant::now() < deadline).await
}

/// Every connection sends back to back, one request in flight each, until
/// `total` requests have been sent in all (for counting, not timing).
pub async fn counted(clients: &[Client], csrs: Arc<Vec<String>>, total: usize) -> Outcome {
    back_to_back(clients, csrs, move |sent| sent < total).await
}

/// One request in flight per connection, back to back, while `more(requests sent so far)`
/// holds; the CSRs are taken in turn.
async fn back_to_back(
    clients: &[Client],
    csrs: Arc<Vec<String>>,
    more: impl Fn(usize) -> bool + Send + Sync + 'static,
) -> Outcome {
    let start = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let more = Arc::new(more);
    let mut tasks = Vec::with_capacity(clients.len());
    for client in clients.iter().cloned() {
        let (csrs, next, more) = (csrs.clone(), next.clone(), more.clone());
        tasks.push(tokio::spawn(async move {
            let mut client = client;
            let mut out = Outcome::default();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if !more(i) {
                    break;
                }
                let sent = Instant::now();
                match call(&mut client, &csrs, i % csrs.len()).await {
                    Ok(()) => out.latencies.push(sent.elapsed()),
                    Err(status) => out.error(&status),
                }
            }
            out
        }));
    }
    gather(tasks, start).await
}

/// Paced load: `rate` requests per second in all, dealt round-robin to the
/// connections. Latency counts from when a request was due, so a server
/// that falls behind cannot hide it (no coordinated omission).
///
/// The schedule is kept by an OS thread that sleeps to each due time and
/// hands the request to its connection's task: the async runtime's timer has
/// 1 ms granularity, which alone put about a millisecond into every
/// request's latency. How late each request still started is in
/// [`Outcome::lags`].
pub async fn open_loop(clients: &[Client], csrs: Arc<Vec<String>>, rate: f64, duration: Duration) -> Outcome {
    let n = clients.len().max(1);
    let interval = Duration::from_secs_f64(1.0 / rate.max(1.0));
    let total = (duration.as_secs_f64() * rate.max(1.0)) as usize;
    let mut senders = Vec::with_capacity(n);
    let mut tasks = Vec::with_capacity(n);
    for (c, client) in clients.iter().cloned().enumerate() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, Instant)>();
        senders.push(tx);
        let csrs = csrs.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = client;
            let mut out = Outcome::default();
            while let Some((k, due)) = rx.recv().await {
                out.lags.push(due.elapsed());
                match call(&mut client, &csrs, (c + k) % csrs.len()).await {
                    Ok(()) => out.latencies.push(due.elapsed()),
                    Err(status) => out.error(&status),
                }
            }
            out
        }));
    }
    let start = Instant::now();
    let pacer = std::thread::spawn(move || {
        for k in 0..total {
            let due = start + interval.mul_f64(k as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            if let Some(tx) = k.checked_rem(senders.len()).and_then(|c| senders.get(c)) {
                let _ = tx.send((k, due));
            }
        }
        // Dropping the senders ends each connection's task once its queue is empty.
    });
    let mut outcome = gather(tasks, start).await;
    if pacer.join().is_err() {
        outcome.errors += 1;
    }
    outcome
}

/// Every identity at once: each connection sends its share of `csrs`
/// concurrently (HTTP/2 streams), as the proxies of a restarted node do.
pub async fn burst(clients: &[Client], csrs: Arc<Vec<String>>) -> Outcome {
    let start = Instant::now();
    let n = clients.len();
    let mut tasks = Vec::with_capacity(csrs.len());
    for i in 0..csrs.len() {
        let mut client = clients[i % n].clone();
        let csrs = csrs.clone();
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            let mut out = Outcome::default();
            match call(&mut client, &csrs, i).await {
                Ok(()) => out.latencies.push(sent.elapsed()),
                Err(status) => out.error(&status),
            }
            out
        }));
    }
    gather(tasks, start).await
}

async fn gather(tasks: Vec<tokio::task::JoinHandle<Outcome>>, start: Instant) -> Outcome {
    let mut all = Outcome::default();
    for t in tasks {
        match t.await {
            Ok(o) => {
                all.latencies.extend(o.latencies);
                all.lags.extend(o.lags);
                all.errors += o.errors;
                if all.first_error.is_none() {
                    all.first_error = o.first_error;
                }
            }
            Err(_) => all.errors += 1,
        }
    }
    all.elapsed = start.elapsed();
    all
}
