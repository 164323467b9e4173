//! `meshroot serve`: run until SIGTERM or Ctrl-C, then shut down gracefully.

use super::rate_limits;
use crate::ca::connection::ConnectionLimits;
use crate::ca::server::ServerOptions;
use crate::duration;
use crate::k8s::leader::LeaseTimings;
use crate::k8s::tokenreview::TokenReviewConfig;
use crate::names::DEFAULT_CLUSTER_ID;
use crate::serve::{ServeOptions, start};
use anyhow::Context;
use std::net::SocketAddr;

/// The flags of `meshroot serve`, each also read from the environment (the
/// Helm chart sets those).
#[derive(clap::Args)]
pub struct Args {
    /// meshroot's namespace; default: the pod's (service account namespace file).
    #[arg(long, env = "POD_NAMESPACE")]
    namespace: Option<String>,
    /// This replica's name, for leader election; default: the host name.
    #[arg(long, env = "POD_NAME")]
    pod_name: Option<String>,
    /// gRPC (Istio CA API) listen address.
    #[arg(long, env = "MESHROOT_LISTEN", default_value = "0.0.0.0:15012")]
    listen: SocketAddr,
    /// Metrics, /healthz and /readyz listen address.
    #[arg(long, env = "MESHROOT_METRICS_LISTEN", default_value = "0.0.0.0:15014")]
    metrics_listen: SocketAddr,
    /// Secret holding the root (tls.crt, tls.key, optional ca.crt).
    #[arg(long, env = "MESHROOT_ROOT_SECRET", default_value = crate::k8s::root::DEFAULT_SECRET)]
    root_secret: String,
    /// Generate the root into that Secret if it does not exist (ECDSA P-256). Like every switch
    /// of `serve`, both `--generate-root` and `--generate-root=true|false` are accepted.
    #[arg(long, env = "MESHROOT_GENERATE_ROOT", default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    generate_root: bool,
    /// The local cluster id (`clusterid` header).
    #[arg(long, env = "MESHROOT_CLUSTER_ID", default_value = DEFAULT_CLUSTER_ID)]
    cluster_id: String,
    /// Other names for the local cluster. Repeatable.
    #[arg(long = "cluster-alias", env = "MESHROOT_CLUSTER_ALIASES", value_delimiter = ',')]
    cluster_aliases: Vec<String>,
    /// A root ConfigMap name meshroot may write and delete (the chart passes its RBAC's list): meshroot's
    /// ConfigMaps under a name no Mesh uses any more are deleted only under these names. Repeatable.
    #[arg(long = "root-configmap-name", env = "MESHROOT_ROOT_CONFIGMAP_NAMES", value_delimiter = ',')]
    root_configmap_names: Vec<String>,
    /// TokenReview audiences. Repeatable.
    #[arg(
        long = "token-audience",
        env = "MESHROOT_TOKEN_AUDIENCES",
        value_delimiter = ',',
        default_value = "istio-ca"
    )]
    token_audiences: Vec<String>,
    /// How long a TokenReview result is reused (never past the token's expiry).
    #[arg(long, env = "MESHROOT_TOKEN_CACHE_TTL", default_value = "60s", value_parser = duration::parse)]
    token_cache_ttl: time::Duration,
    /// Most TokenReview results kept at once.
    #[arg(long, env = "MESHROOT_TOKEN_CACHE_SIZE", default_value = "10000")]
    token_cache_size: usize,
    /// The Service that fronts meshroot (serving certificate names).
    #[arg(long, env = "MESHROOT_SERVICE_NAME", default_value = "meshroot")]
    service_name: String,
    /// Extra DNS names or IPs for the serving certificate. Repeatable.
    #[arg(long = "serving-name", env = "MESHROOT_SERVING_NAMES", value_delimiter = ',')]
    serving_names: Vec<String>,
    /// The Lease used to elect the replica that runs the controllers.
    #[arg(long, env = "MESHROOT_LEASE_NAME", default_value = "meshroot-leader")]
    lease_name: String,
    /// How long the Lease stays held without renewal: the longest the controllers go leaderless after a
    /// replica dies. Default 15s.
    #[arg(long, env = "MESHROOT_LEASE_DURATION", value_parser = duration::parse)]
    lease_duration: Option<time::Duration>,
    /// How often the leader renews the Lease and the others retry; the duration must be at least 4 times this
    /// plus 1s. Default 2s.
    #[arg(long, env = "MESHROOT_LEASE_RETRY_PERIOD", value_parser = duration::parse)]
    lease_retry_period: Option<time::Duration>,
    /// A gRPC client that has not finished its TLS handshake by then is dropped. Default 10s.
    #[arg(long, env = "MESHROOT_HANDSHAKE_TIMEOUT", value_parser = duration::parse)]
    handshake_timeout: Option<time::Duration>,
    /// Server-side deadline for one CreateCertificate; longer than --token-review-timeout. Default 30s.
    #[arg(long, env = "MESHROOT_REQUEST_TIMEOUT", value_parser = duration::parse)]
    request_timeout: Option<time::Duration>,
    /// The most concurrent requests (HTTP/2 streams) on one gRPC connection; further ones wait in the client. Default 100.
    #[arg(long, env = "MESHROOT_MAX_CONCURRENT_STREAMS")]
    max_concurrent_streams: Option<u32>,
    /// The largest header block a request may send, in bytes (at least 8192). Default 65536.
    #[arg(long, env = "MESHROOT_MAX_HEADER_BYTES")]
    max_header_bytes: Option<u32>,
    /// The most gRPC connections open at once, handshakes included; further ones are closed at accept.
    /// Default 4096.
    #[arg(long, env = "MESHROOT_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// The most gRPC connections open at once from one IP address. Default 256.
    #[arg(long, env = "MESHROOT_MAX_CONNECTIONS_PER_PEER")]
    max_connections_per_peer: Option<usize>,
    /// A gRPC connection from which nothing was read for this long is closed, within twice as long (0 to
    /// never); longer than --request-timeout. Default 5m.
    #[arg(long, env = "MESHROOT_IDLE_TIMEOUT", value_parser = duration::parse_or_zero)]
    idle_timeout: Option<time::Duration>,
    /// How long the API server has to answer a TokenReview before the request is refused as unavailable.
    /// Default 5s.
    #[arg(long, env = "MESHROOT_TOKEN_REVIEW_TIMEOUT", value_parser = duration::parse)]
    token_review_timeout: Option<time::Duration>,
    /// How long a rejected token is refused from cache without asking again (0 to never; at most 5m).
    /// Default 10s.
    #[arg(long, env = "MESHROOT_TOKEN_NEGATIVE_CACHE_TTL", value_parser = duration::parse_or_zero)]
    token_negative_cache_ttl: Option<time::Duration>,
    /// Periodic re-sync of controllers (renewals, drift in istiod namespaces).
    #[arg(long, env = "MESHROOT_RESYNC", default_value = "60s", value_parser = duration::parse)]
    resync: time::Duration,
    /// How long readiness is down before shutting the listeners.
    #[arg(long, env = "MESHROOT_DRAIN_DELAY", default_value = "5s", value_parser = duration::parse)]
    drain_delay: time::Duration,
    /// Sign cert-manager CertificateRequests for meshroot's Issuers and ClusterIssuers.
    #[arg(long, env = "MESHROOT_CERT_MANAGER_ISSUER", default_value_t = true, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    cert_manager_issuer: bool,
    /// Sign Kubernetes CertificateSigningRequests for meshroot's signer names.
    #[arg(long, env = "MESHROOT_KUBERNETES_CSR_SIGNER", default_value_t = true, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    kubernetes_csr_signer: bool,
    #[command(flatten)]
    pub(super) rate_limits: rate_limits::Args,
    /// Check the flags and environment, print the effective settings, and exit
    /// without contacting the cluster.
    #[arg(long, default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    check_config: bool,
}

impl Args {
    /// The options `serve::start` takes, validated: what `--check-config`
    /// accepts, `run` accepts.
    pub fn options(self) -> anyhow::Result<ServeOptions> {
        let std_duration = |d: time::Duration| std::time::Duration::try_from(d).unwrap_or_default();
        // Unset flags keep the library's defaults, which live in one place (the types' Default).
        let or = |flag: Option<time::Duration>, default| flag.map_or(default, std_duration);
        let (lease, server, token) = (LeaseTimings::default(), ServerOptions::default(), TokenReviewConfig::default());
        let opts = ServeOptions {
            namespace: crate::serve::own_namespace(self.namespace)?,
            pod_name: self.pod_name.unwrap_or_else(host_name),
            listen: self.listen,
            ops_listen: self.metrics_listen,
            root_secret: self.root_secret,
            generate_root: self.generate_root,
            cluster_id: self.cluster_id,
            cluster_aliases: self.cluster_aliases,
            root_configmap_names: self.root_configmap_names,
            token: TokenReviewConfig {
                audiences: self.token_audiences,
                cache_ttl: std_duration(self.token_cache_ttl),
                max_entries: self.token_cache_size,
                negative_cache_ttl: or(self.token_negative_cache_ttl, token.negative_cache_ttl),
                timeout: or(self.token_review_timeout, token.timeout),
                ..token
            },
            service_name: self.service_name,
            serving_names: self.serving_names,
            lease_name: self.lease_name,
            lease: LeaseTimings {
                duration: or(self.lease_duration, lease.duration),
                retry_period: or(self.lease_retry_period, lease.retry_period),
            },
            server: ServerOptions {
                handshake_timeout: or(self.handshake_timeout, server.handshake_timeout),
                request_timeout: or(self.request_timeout, server.request_timeout),
                max_concurrent_streams: self.max_concurrent_streams.unwrap_or(server.max_concurrent_streams),
                max_header_list_bytes: self.max_header_bytes.unwrap_or(server.max_header_list_bytes),
                connections: ConnectionLimits {
                    max_connections: self.max_connections.unwrap_or(server.connections.max_connections),
                    max_connections_per_peer: self
                        .max_connections_per_peer
                        .unwrap_or(server.connections.max_connections_per_peer),
                    idle_timeout: match self.idle_timeout {
                        Some(flag) => Some(std_duration(flag)).filter(|d| !d.is_zero()),
                        None => server.connections.idle_timeout,
                    },
                },
            },
            resync: std_duration(self.resync),
            drain_delay: std_duration(self.drain_delay),
            cert_manager_issuer: self.cert_manager_issuer,
            kubernetes_csr_signer: self.kubernetes_csr_signer,
            rate_limits: self.rate_limits.limits(),
        };
        opts.validate()?;
        Ok(opts)
    }
}

/// `meshroot serve`, or with `--check-config` its settings.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let check_only = args.check_config;
    let opts = args.options()?;
    if check_only {
        print!("{}", describe(&opts));
        return Ok(());
    }
    let client =
        kube::Client::try_default().await.context("connecting to the Kubernetes API (in-cluster or KUBECONFIG)")?;
    let server = start(client, opts.clone()).await?;
    println!(
        "meshroot serve: Istio CA API on {}, metrics and health on {}, namespace {}, replica {}",
        server.grpc_addr, server.ops_addr, opts.namespace, opts.pod_name
    );
    super::dev::wait_for_signal().await;
    tracing::info!("shutting down: readiness off, draining");
    server.shutdown().await
}

/// The effective settings, one `name: value` line each, for `--check-config`.
pub fn describe(opts: &ServeOptions) -> String {
    let lines = [
        ("namespace", opts.namespace.clone()),
        ("pod name", opts.pod_name.clone()),
        ("listen", opts.listen.to_string()),
        ("metrics listen", opts.ops_listen.to_string()),
        ("root secret", opts.root_secret.clone()),
        ("generate root", opts.generate_root.to_string()),
        ("cluster id", opts.cluster_id.clone()),
        ("cluster aliases", opts.cluster_aliases.join(",")),
        ("root configmap names", opts.root_configmap_names.join(",")),
        ("token audiences", opts.token.audiences.join(",")),
        ("service name", opts.service_name.clone()),
        ("serving names", opts.serving_names.join(",")),
        ("lease name", opts.lease_name.clone()),
        ("lease duration", humantime::format_duration(opts.lease.duration).to_string()),
        ("lease retry period", humantime::format_duration(opts.lease.retry_period).to_string()),
        ("handshake timeout", humantime::format_duration(opts.server.handshake_timeout).to_string()),
        ("request timeout", humantime::format_duration(opts.server.request_timeout).to_string()),
        ("max concurrent streams", opts.server.max_concurrent_streams.to_string()),
        ("max header bytes", opts.server.max_header_list_bytes.to_string()),
        ("max connections", opts.server.connections.max_connections.to_string()),
        ("max connections per peer", opts.server.connections.max_connections_per_peer.to_string()),
        (
            "idle timeout",
            opts.server.connections.idle_timeout.map_or("never".into(), |d| humantime::format_duration(d).to_string()),
        ),
        ("token review timeout", humantime::format_duration(opts.token.timeout).to_string()),
        ("token negative cache ttl", humantime::format_duration(opts.token.negative_cache_ttl).to_string()),
        ("resync", humantime::format_duration(opts.resync).to_string()),
        ("drain delay", humantime::format_duration(opts.drain_delay).to_string()),
        ("cert-manager issuer", opts.cert_manager_issuer.to_string()),
        ("kubernetes csr signer", opts.kubernetes_csr_signer.to_string()),
        ("identity rate limit", opts.rate_limits.identity.to_string()),
        ("node rate limit", opts.rate_limits.node.to_string()),
        ("peer rate limit", opts.rate_limits.peer.to_string()),
    ];
    let mut out = String::from("meshroot serve: configuration is valid\n");
    for (name, value) in lines {
        out.push_str(&format!("{name}: {value}\n"));
    }
    out
}

/// The host name, as a replica identity outside a pod.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| format!("meshroot-{}", std::process::id()))
}
