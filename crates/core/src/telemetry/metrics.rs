//! Prometheus metrics. istiod's `citadel_server_*` names are kept exactly
//! (dashboards query `citadel_server_csr_count`, with no `_total`), so those
//! counters are exposed untyped; meshroot's own metrics are typed.

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

/// A monotonically increasing count exposed under its exact name.
#[derive(Clone, Debug, Default)]
pub struct IstioCounter(Counter);

impl IstioCounter {
    /// Adds one.
    pub fn inc(&self) {
        self.0.inc();
    }
    /// The current count.
    pub fn get(&self) -> u64 {
        self.0.get()
    }
}

impl TypedMetric for IstioCounter {
    const TYPE: MetricType = MetricType::Unknown;
}

impl EncodeMetric for IstioCounter {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> std::fmt::Result {
        encoder.encode_gauge(&(self.0.get() as i64))
    }
    fn metric_type(&self) -> MetricType {
        MetricType::Unknown
    }
}

/// The labels of `citadel_server_csr_sign_err_count`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SignErrorLabels {
    /// istiod's name for the error, such as `CSR_ERROR` or `CA_NOT_READY`.
    pub error: &'static str,
}

/// The labels of the CreateCertificate latency histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// The gRPC status name, such as `OK` or `Unauthenticated`.
    pub code: &'static str,
}

/// A supervised task, by name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TaskLabels {
    /// The task's name.
    pub task: &'static str,
}

/// A controller, by name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    /// The controller's name.
    pub controller: &'static str,
}

/// Why a gRPC connection was closed unserved.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    /// The limit it met: `max_connections` or `max_connections_per_peer`.
    pub reason: &'static str,
}

/// Every metric meshroot exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// `citadel_server_csr_count`: CreateCertificate requests received.
    pub csr_count: IstioCounter,
    /// `citadel_server_authentication_failure_count`: requests refused as unauthenticated (credentials,
    /// headers, or an impersonation the caller may not make).
    pub authentication_failure_count: IstioCounter,
    /// `citadel_server_csr_parsing_err_count`: CSRs that could not be parsed or verified.
    pub csr_parsing_err_count: IstioCounter,
    /// `citadel_server_id_extraction_err_count`: requests refused as forbidden (the caller may not have
    /// what it asked for, or no single mesh covers the namespace).
    pub id_extraction_err_count: IstioCounter,
    /// `citadel_server_csr_sign_err_count`: failures other than authentication and authorization, by
    /// istiod's error name.
    pub csr_sign_err_count: Family<SignErrorLabels, IstioCounter>,
    /// `citadel_server_success_cert_issuance_count`: certificates issued.
    pub success_cert_issuance_count: IstioCounter,
    root_cert_expiry_timestamp: Gauge,
    root_cert_expiry_seconds: Gauge,
    cert_chain_expiry_timestamp: Gauge,
    cert_chain_expiry_seconds: Gauge,
    /// `meshroot_create_certificate_duration_seconds`: CreateCertificate latency, by gRPC status name.
    pub request_duration: Family<OutcomeLabels, Histogram>,
    /// Failures (panic or return) of a supervised task, each followed by a restart.
    pub task_restarts: Family<TaskLabels, Counter>,
    /// Running instances of a supervised task: 1 while it runs, 0 while it
    /// waits to be restarted or is stopped (a follower's controllers).
    pub task_up: Family<TaskLabels, Gauge>,
    /// Objects whose signing panicked (each failed alone).
    pub reconcile_panics: Family<ControllerLabels, Counter>,
    /// gRPC connections open now, handshakes included.
    pub grpc_connections: Gauge,
    /// gRPC connections closed at accept because a connection limit was met.
    pub grpc_connections_refused: Family<RefusalLabels, Counter>,
    /// gRPC connections closed because nothing was read from them for the idle timeout.
    pub grpc_connections_idle_closed: Counter,
    root_expiry: AtomicI64,
    chain_expiry: AtomicI64,
}

fn latency_histogram() -> Histogram {
    // 50 µs to ~0.8 s: signing is sub-millisecond, TokenReview misses are not.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(0.00005, 2.0, 15))
}

impl Metrics {
    /// Every metric at zero, registered under its exported name.
    pub fn new() -> Arc<Self> {
        let mut m = Self {
            registry: Registry::default(),
            csr_count: IstioCounter::default(),
            authentication_failure_count: IstioCounter::default(),
            csr_parsing_err_count: IstioCounter::default(),
            id_extraction_err_count: IstioCounter::default(),
            csr_sign_err_count: Family::default(),
            success_cert_issuance_count: IstioCounter::default(),
            root_cert_expiry_timestamp: Gauge::default(),
            root_cert_expiry_seconds: Gauge::default(),
            cert_chain_expiry_timestamp: Gauge::default(),
            cert_chain_expiry_seconds: Gauge::default(),
            request_duration: Family::new_with_constructor(latency_histogram),
            task_restarts: Family::default(),
            task_up: Family::default(),
            reconcile_panics: Family::default(),
            grpc_connections: Gauge::default(),
            grpc_connections_refused: Family::default(),
            grpc_connections_idle_closed: Counter::default(),
            root_expiry: AtomicI64::new(0),
            chain_expiry: AtomicI64::new(0),
        };
        // Registered clones share state with the fields (they are Arc-backed).
        let r = &mut m.registry;
        r.register("citadel_server_csr_count", "The number of CSRs received", m.csr_count.clone());
        r.register(
            "citadel_server_authentication_failure_count",
            "The number of authentication failures",
            m.authentication_failure_count.clone(),
        );
        r.register(
            "citadel_server_csr_parsing_err_count",
            "The number of CSRs that could not be parsed or verified",
            m.csr_parsing_err_count.clone(),
        );
        r.register(
            "citadel_server_id_extraction_err_count",
            "The number of CSRs whose identities the caller may not have",
            m.id_extraction_err_count.clone(),
        );
        r.register(
            "citadel_server_csr_sign_err_count",
            "The number of CSR signing errors, by error",
            m.csr_sign_err_count.clone(),
        );
        r.register(
            "citadel_server_success_cert_issuance_count",
            "The number of certificates issued",
            m.success_cert_issuance_count.clone(),
        );
        r.register(
            "citadel_server_root_cert_expiry_timestamp",
            "Unix time at which the earliest trusted root expires",
            m.root_cert_expiry_timestamp.clone(),
        );
        r.register(
            "citadel_server_root_cert_expiry_seconds",
            "Seconds until the earliest trusted root expires",
            m.root_cert_expiry_seconds.clone(),
        );
        r.register(
            "citadel_server_cert_chain_expiry_timestamp",
            "Unix time at which the earliest signing chain expires",
            m.cert_chain_expiry_timestamp.clone(),
        );
        r.register(
            "citadel_server_cert_chain_expiry_seconds",
            "Seconds until the earliest signing chain expires",
            m.cert_chain_expiry_seconds.clone(),
        );
        r.register(
            "meshroot_create_certificate_duration_seconds",
            "CreateCertificate latency, by gRPC status code",
            m.request_duration.clone(),
        );
        // Counters get `_total` appended when encoded.
        r.register(
            "meshroot_task_restarts",
            "Failures (panic or unexpected return) of a supervised task, each followed by a restart",
            m.task_restarts.clone(),
        );
        r.register("meshroot_task_up", "Whether a supervised task is running (1) or not (0)", m.task_up.clone());
        r.register(
            "meshroot_reconcile_panics",
            "Objects whose signing panicked and that were failed alone, by controller",
            m.reconcile_panics.clone(),
        );
        r.register(
            "meshroot_grpc_connections",
            "gRPC connections open, handshakes included",
            m.grpc_connections.clone(),
        );
        r.register(
            "meshroot_grpc_connections_refused",
            "gRPC connections closed at accept because a connection limit was met, by limit",
            m.grpc_connections_refused.clone(),
        );
        r.register(
            "meshroot_grpc_connections_idle_closed",
            "gRPC connections closed because nothing was read from them for the idle timeout",
            m.grpc_connections_idle_closed.clone(),
        );
        Arc::new(m)
    }

    /// Records the earliest root and signing-chain expiry, in Unix seconds.
    pub fn set_expiries(&self, root_expiry: i64, chain_expiry: i64) {
        self.root_expiry.store(root_expiry, Ordering::Relaxed);
        self.chain_expiry.store(chain_expiry, Ordering::Relaxed);
        self.root_cert_expiry_timestamp.set(root_expiry);
        self.cert_chain_expiry_timestamp.set(chain_expiry);
    }

    /// Observes one CreateCertificate's latency, in seconds, under the gRPC status name `code`.
    pub fn record_duration(&self, code: &'static str, seconds: f64) {
        self.request_duration.get_or_create(&OutcomeLabels { code }).observe(seconds);
    }

    /// Renders the OpenMetrics text, refreshing time-relative gauges first.
    pub fn render(&self, now_unix: i64) -> String {
        self.root_cert_expiry_seconds.set(self.root_expiry.load(Ordering::Relaxed).saturating_sub(now_unix));
        self.cert_chain_expiry_seconds.set(self.chain_expiry.load(Ordering::Relaxed).saturating_sub(now_unix));
        let mut out = String::new();
        // Encoding into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istio_counters_keep_their_exact_names() {
        let m = Metrics::new();
        m.csr_count.inc();
        m.csr_count.inc();
        m.csr_sign_err_count.get_or_create(&SignErrorLabels { error: "CSR_ERROR" }).inc();
        m.set_expiries(2_000, 1_500);
        m.record_duration("OK", 0.0002);
        let text = m.render(1_000);
        assert!(text.lines().any(|l| l == "citadel_server_csr_count 2"), "{text}");
        assert!(text.lines().any(|l| l == "citadel_server_csr_sign_err_count{error=\"CSR_ERROR\"} 1"), "{text}");
        assert!(text.lines().any(|l| l == "citadel_server_root_cert_expiry_seconds 1000"), "{text}");
        assert!(text.lines().any(|l| l == "citadel_server_cert_chain_expiry_timestamp 1500"), "{text}");
        assert!(text.contains("meshroot_create_certificate_duration_seconds_count{code=\"OK\"} 1"), "{text}");
        assert!(!text.contains("citadel_server_csr_count_total"));
        m.task_restarts.get_or_create(&TaskLabels { task: "kube_csrs" }).inc();
        m.reconcile_panics.get_or_create(&ControllerLabels { controller: "kube_csrs" }).inc();
        m.task_up.get_or_create(&TaskLabels { task: "kube_csrs" }).set(1);
        let text = m.render(1_000);
        assert!(text.lines().any(|l| l == "meshroot_task_restarts_total{task=\"kube_csrs\"} 1"), "{text}");
        assert!(text.lines().any(|l| l == "meshroot_reconcile_panics_total{controller=\"kube_csrs\"} 1"), "{text}");
        assert!(text.lines().any(|l| l == "meshroot_task_up{task=\"kube_csrs\"} 1"), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }
}
