//! The plain-HTTP operations port: `/metrics`, `/healthz` (alive) and
//! `/readyz` (serving and able to sign).

use super::Metrics;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use tokio::net::TcpListener;

/// Whether this replica should receive traffic: it has started (and is not
/// draining) and no supervised task is down.
#[derive(Debug, Default)]
pub struct Readiness {
    ready: AtomicBool,
    /// Supervised tasks waiting to be restarted, with how many instances of
    /// each are down (a name can briefly run twice across a leadership change).
    down: Mutex<BTreeMap<String, usize>>,
}

impl Readiness {
    /// Not ready yet, with no task down.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }
    /// Marks the replica as started (`true`) or as not serving, such as while draining (`false`).
    pub fn set(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }
    /// Whether marked ready with no supervised task down.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst) && self.down_tasks().is_empty()
    }

    /// Marks one instance of `task` as down (failed, waiting to restart).
    pub fn task_down(&self, task: &str) {
        let mut down = self.down.lock().unwrap_or_else(PoisonError::into_inner);
        let n = down.entry(task.to_string()).or_insert(0);
        *n = n.saturating_add(1);
    }

    /// Undoes one [`Readiness::task_down`] for `task`.
    pub fn task_recovered(&self, task: &str) {
        let mut down = self.down.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = down.get_mut(task) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                down.remove(task);
            }
        }
    }

    /// The supervised tasks that are down, by name.
    pub fn down_tasks(&self) -> Vec<String> {
        self.down.lock().unwrap_or_else(PoisonError::into_inner).keys().cloned().collect()
    }

    /// Whether ready, and the `/readyz` body saying why not (naming any
    /// task that is down), from one look at the state.
    pub fn report(&self) -> (bool, String) {
        let down = self.down_tasks();
        match (self.ready.load(Ordering::SeqCst), down.is_empty()) {
            (true, true) => (true, "ready\n".into()),
            (_, false) => (false, format!("not ready: supervised task down: {}\n", down.join(", "))),
            (false, true) => (false, "not ready\n".into()),
        }
    }
}

#[derive(Clone)]
struct OpsState {
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
}

/// The operations routes: `/metrics` (OpenMetrics text), `/healthz` (always `ok`) and `/readyz` (200 when
/// ready, otherwise 503 saying why).
pub fn router(metrics: Arc<Metrics>, readiness: Arc<Readiness>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready_handler))
        .with_state(OpsState { metrics, readiness })
}

async fn metrics_handler(State(s): State<OpsState>) -> impl IntoResponse {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], s.metrics.render(now))
}

async fn ready_handler(State(s): State<OpsState>) -> impl IntoResponse {
    let (ready, body) = s.readiness.report();
    (if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, body)
}

/// Serves the operations port until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(metrics, readiness)).with_graceful_shutdown(shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn readyz(addr: std::net::SocketAddr) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn readyz_is_down_and_names_the_task_while_a_supervised_task_is_down() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let readiness = Readiness::new();
        readiness.set(true);
        tokio::spawn(serve(listener, Metrics::new(), readiness.clone(), std::future::pending()));
        assert!(readyz(addr).await.starts_with("HTTP/1.1 200"));
        readiness.task_down("kube_csrs");
        readiness.task_down("kube_csrs");
        let down = readyz(addr).await;
        assert!(down.starts_with("HTTP/1.1 503"), "{down}");
        assert!(down.ends_with("not ready: supervised task down: kube_csrs\n"), "{down}");
        readiness.task_recovered("kube_csrs");
        assert!(readyz(addr).await.starts_with("HTTP/1.1 503"), "one instance is still down");
        readiness.task_recovered("kube_csrs");
        assert!(readyz(addr).await.starts_with("HTTP/1.1 200"));
        readiness.set(false);
        assert!(readyz(addr).await.ends_with("not ready\n"));
    }
}
