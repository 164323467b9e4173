//! Supervision of long-running tasks. A supervised task that panics or
//! returns is logged with its name, counted (`meshroot_task_restarts_total`),
//! marks readiness down (naming it) and is restarted with exponential
//! backoff. Aborting the supervisor stops the task; that is not a failure.

use crate::telemetry::Metrics;
use crate::telemetry::http::Readiness;
use crate::telemetry::metrics::TaskLabels;
use std::any::Any;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How long to wait before each restart.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    /// The first delay; doubled after each failure.
    pub initial: Duration,
    /// The longest delay; doubling stops here.
    pub max: Duration,
    /// A run at least this long resets the delay to `initial`.
    pub healthy_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { initial: Duration::from_secs(1), max: Duration::from_secs(60), healthy_after: Duration::from_secs(60) }
    }
}

/// Starts supervised tasks that report to one set of metrics and readiness.
#[derive(Clone, Debug)]
pub struct Supervisor {
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
    backoff: Backoff,
}

/// Aborts the task when dropped, so a task is never left running by an
/// owner that was itself aborted or panicked.
#[derive(Debug)]
pub struct AbortOnDrop(pub JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A task spawned elsewhere (a `spawn(...) -> JoinHandle` function) as one
/// supervised run: its panic is raised again here, so the supervisor sees
/// it, and dropping this future aborts the task.
pub async fn join(handle: JoinHandle<()>) {
    let mut task = AbortOnDrop(handle);
    if let Err(e) = (&mut task.0).await
        && e.is_panic()
    {
        resume_unwind(e.into_panic());
    }
}

/// A panic payload as text, for the log.
pub fn panic_message(payload: &(dyn Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(a panic without a message)")
}

/// One supervised task's marks in readiness and metrics, undone when the
/// supervisor stops (also when it is aborted mid-backoff).
struct Marks {
    name: &'static str,
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
    running: bool,
    down: bool,
}

impl Marks {
    fn running(&mut self) {
        if self.down {
            self.readiness.task_recovered(self.name);
            self.down = false;
        }
        if !self.running {
            self.metrics.task_up.get_or_create(&TaskLabels { task: self.name }).inc();
            self.running = true;
        }
    }

    fn failed(&mut self) {
        if self.running {
            self.metrics.task_up.get_or_create(&TaskLabels { task: self.name }).dec();
            self.running = false;
        }
        if !self.down {
            self.readiness.task_down(self.name);
            self.down = true;
        }
        self.metrics.task_restarts.get_or_create(&TaskLabels { task: self.name }).inc();
    }
}

impl Drop for Marks {
    fn drop(&mut self) {
        if self.running {
            self.metrics.task_up.get_or_create(&TaskLabels { task: self.name }).dec();
        }
        if self.down {
            self.readiness.task_recovered(self.name);
        }
    }
}

impl Supervisor {
    /// A supervisor with the default [`Backoff`] (1 s doubling to 60 s).
    pub fn new(metrics: Arc<Metrics>, readiness: Arc<Readiness>) -> Self {
        Self { metrics, readiness, backoff: Backoff::default() }
    }

    /// The same supervisor with another restart backoff (tests use short ones).
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Runs `factory()`'s future as the task `name`, again after every panic
    /// or return, until the returned handle is aborted (which stops the
    /// current run too).
    pub fn spawn<F, Fut>(&self, name: &'static str, factory: F) -> JoinHandle<()>
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        tokio::spawn(self.clone().supervise(name, factory))
    }

    async fn supervise<F, Fut>(self, name: &'static str, mut factory: F)
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let mut marks = Marks {
            name,
            metrics: self.metrics.clone(),
            readiness: self.readiness.clone(),
            running: false,
            down: false,
        };
        let mut delay = self.backoff.initial;
        loop {
            let started = Instant::now();
            // Its own task, so a panic is caught by tokio and not by this loop.
            let why = match catch_unwind(AssertUnwindSafe(&mut factory)) {
                Ok(run) => {
                    marks.running();
                    let mut child = AbortOnDrop(tokio::spawn(run));
                    match (&mut child.0).await {
                        Ok(()) => "it returned".to_string(),
                        Err(e) if e.is_panic() => format!("it panicked: {}", panic_message(e.into_panic().as_ref())),
                        // Cancelled by the runtime shutting down: not a failure.
                        Err(_) => return,
                    }
                }
                Err(payload) => format!("starting it panicked: {}", panic_message(payload.as_ref())),
            };
            if started.elapsed() >= self.backoff.healthy_after {
                delay = self.backoff.initial;
            }
            marks.failed();
            tracing::error!(task = name, reason = %why, restart_in = ?delay, "supervised task failed; not ready until it restarts");
            tokio::time::sleep(delay).await;
            delay = delay.saturating_mul(2).min(self.backoff.max);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::sync::{mpsc, oneshot};

    fn quick() -> Backoff {
        Backoff {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(200),
            healthy_after: Duration::from_secs(60),
        }
    }

    fn restarts(m: &Metrics, task: &'static str) -> u64 {
        m.task_restarts.get_or_create(&TaskLabels { task }).get()
    }

    fn up(m: &Metrics, task: &'static str) -> i64 {
        m.task_up.get_or_create(&TaskLabels { task }).get()
    }

    async fn until(what: &str, f: impl Fn() -> bool) {
        for _ in 0..2000 {
            if f() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("never: {what}");
    }

    #[tokio::test]
    async fn a_task_that_panics_twice_is_restarted_twice_and_readiness_follows_it() {
        let metrics = Metrics::new();
        let readiness = Readiness::new();
        readiness.set(true);
        // Each run reports that it started, then the first two panic when told.
        let (started_tx, mut started) = mpsc::unbounded_channel::<(usize, oneshot::Sender<()>)>();
        let runs = Arc::new(AtomicUsize::new(0));
        let counter = runs.clone();
        let handle =
            Supervisor::new(metrics.clone(), readiness.clone()).with_backoff(quick()).spawn("flaky", move || {
                let n = counter.fetch_add(1, Ordering::SeqCst);
                let tx = started_tx.clone();
                async move {
                    let (go_tx, go) = oneshot::channel();
                    let _ = tx.send((n, go_tx));
                    let _ = go.await;
                    if n < 2 {
                        panic!("poisoned run {n}");
                    }
                    std::future::pending::<()>().await;
                }
            });
        for n in 0..2 {
            let (run, go) = started.recv().await.unwrap();
            assert_eq!(run, n);
            assert!(readiness.is_ready(), "up while run {n} runs");
            assert_eq!(up(&metrics, "flaky"), 1);
            go.send(()).unwrap();
            until("the failure is counted", || restarts(&metrics, "flaky") == n as u64 + 1).await;
            assert!(!readiness.is_ready(), "down after run {n} panicked");
            assert_eq!(readiness.down_tasks(), vec!["flaky".to_string()]);
            let (ready, body) = readiness.report();
            assert!(!ready && body.contains("flaky"), "{body}");
            assert_eq!(up(&metrics, "flaky"), 0);
        }
        let (run, _keep) = started.recv().await.unwrap();
        assert_eq!(run, 2);
        until("ready again", || readiness.is_ready()).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(restarts(&metrics, "flaky"), 2);
        assert_eq!(runs.load(Ordering::SeqCst), 3);
        assert_eq!(up(&metrics, "flaky"), 1);
        assert_eq!(readiness.report(), (true, "ready\n".to_string()));

        handle.abort();
        let _ = handle.await;
        assert_eq!(up(&metrics, "flaky"), 0);
        assert!(readiness.is_ready());
    }

    #[tokio::test]
    async fn a_task_aborted_by_its_owner_is_stopped_and_not_restarted() {
        let metrics = Metrics::new();
        let readiness = Readiness::new();
        readiness.set(true);
        let runs = Arc::new(AtomicUsize::new(0));
        let (dropped_tx, dropped) = oneshot::channel::<()>();
        let mut dropped_tx = Some(dropped_tx);
        let counter = runs.clone();
        let handle =
            Supervisor::new(metrics.clone(), readiness.clone()).with_backoff(quick()).spawn("steady", move || {
                counter.fetch_add(1, Ordering::SeqCst);
                // Signals when the run's future is dropped.
                let guard = dropped_tx.take().map(|tx| {
                    scopeguard(move || {
                        let _ = tx.send(());
                    })
                });
                async move {
                    let _guard = guard;
                    std::future::pending::<()>().await;
                }
            });
        until("running", || up(&metrics, "steady") == 1).await;
        handle.abort();
        assert!(handle.await.unwrap_err().is_cancelled());
        tokio::time::timeout(Duration::from_secs(5), dropped).await.unwrap().unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(restarts(&metrics, "steady"), 0);
        assert_eq!(up(&metrics, "steady"), 0);
        assert!(readiness.is_ready());
    }

    #[tokio::test]
    async fn a_return_is_a_failure_and_an_abort_during_backoff_clears_readiness() {
        let metrics = Metrics::new();
        let readiness = Readiness::new();
        readiness.set(true);
        let backoff = Backoff { initial: Duration::from_secs(3600), ..quick() };
        let handle =
            Supervisor::new(metrics.clone(), readiness.clone()).with_backoff(backoff).spawn("ends", || async {});
        until("the return is counted", || restarts(&metrics, "ends") == 1).await;
        assert_eq!(readiness.down_tasks(), vec!["ends".to_string()]);
        handle.abort();
        let _ = handle.await;
        assert!(readiness.is_ready(), "a stopped task is not down");
    }

    #[tokio::test]
    async fn a_joined_task_reports_its_panic_to_the_supervisor() {
        let metrics = Metrics::new();
        let readiness = Readiness::new();
        let backoff = Backoff { initial: Duration::from_secs(3600), ..quick() };
        let _handle = Supervisor::new(metrics.clone(), readiness.clone())
            .with_backoff(backoff)
            .spawn("spawned", || join(tokio::spawn(async { panic!("inner") })));
        until("the panic is counted", || restarts(&metrics, "spawned") == 1).await;
        assert_eq!(readiness.down_tasks(), vec!["spawned".to_string()]);
    }

    /// Runs `f` when dropped.
    fn scopeguard(f: impl FnOnce() + Send + 'static) -> impl Send + 'static {
        struct Guard<F: FnOnce()>(Option<F>);
        impl<F: FnOnce()> Drop for Guard<F> {
            fn drop(&mut self) {
                if let Some(f) = self.0.take() {
                    f();
                }
            }
        }
        Guard(Some(f))
    }
}
