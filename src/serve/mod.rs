//! `meshroot serve`: Kubernetes mode. Every replica serves gRPC from watch
//! caches; the elected leader runs the controllers.

pub mod serving;

use crate::auth::AuthenticatorChain;
use crate::auth::node::NodeAuthorizer;
use crate::ca::client_cert::ClientCertificateAuthenticator;
use crate::ca::server::ServerOptions;
use crate::ca::service::{CertificateService, ServiceConfig};
use crate::ca::tls::{ServerTls, ServingCertificate};
use crate::controllers::panic_guard::PanicGuard;
use crate::controllers::{certificate_requests, issuer_cache, issuers, kube_csrs, meshes, root_configmaps, signing};
use crate::frontend::FrontEnd;
use crate::k8s::leader::LeaseTimings;
use crate::k8s::node_authz::PodNodeAuthorizer;
use crate::k8s::root::{self, RootState};
use crate::k8s::tokenreview::{TokenReviewAuthenticator, TokenReviewConfig};
use crate::k8s::{leader, registry};
use crate::mesh::MeshRegistry;
use crate::supervise::{self, AbortOnDrop, Supervisor};
use crate::telemetry::Metrics;
use anyhow::Context;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How a replica runs: the settings of `meshroot serve`, from its flags and environment.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// meshroot's own namespace (root and intermediate Secrets, Lease).
    pub namespace: String,
    /// This replica's name (the Lease holder identity).
    pub pod_name: String,
    /// Where the gRPC server (Istio CA API) listens.
    pub listen: SocketAddr,
    /// Where metrics, /healthz and /readyz are served.
    pub ops_listen: SocketAddr,
    /// The Secret in `namespace` that holds the root.
    pub root_secret: String,
    /// Whether to generate the root into `root_secret` when that Secret does not exist.
    pub generate_root: bool,
    /// The local cluster id; a request's `clusterid` must be empty, this, or an alias.
    pub cluster_id: String,
    /// Other names of the local cluster that `clusterid` may carry.
    pub cluster_aliases: Vec<String>,
    /// The root ConfigMap names meshroot may write (its RBAC's): leftovers under a name no Mesh uses any
    /// more are deleted.
    pub root_configmap_names: Vec<String>,
    /// How callers' tokens are checked with TokenReview: audiences, timeout, and the caches of accepted and
    /// rejected tokens.
    pub token: TokenReviewConfig,
    /// The Service clients dial (`<service>.<namespace>.svc`).
    pub service_name: String,
    /// Extra DNS names or IPs for the serving certificate.
    pub serving_names: Vec<String>,
    /// The Lease in `namespace` that elects the replica running the controllers.
    pub lease_name: String,
    /// How long that Lease is held without renewal, and how often it is renewed.
    pub lease: LeaseTimings,
    /// The gRPC server's timeouts and limits.
    pub server: ServerOptions,
    /// How often the controllers re-check everything besides reacting to changes
    /// (renewals, drift of the Secrets and ConfigMaps they write).
    pub resync: Duration,
    /// How long readiness is down before the listeners close, so endpoints
    /// stop sending traffic first.
    pub drain_delay: Duration,
    /// Run the cert-manager external issuer (CertificateRequests).
    pub cert_manager_issuer: bool,
    /// Run the Kubernetes CSR signer.
    pub kubernetes_csr_signer: bool,
    /// The CreateCertificate rate limits, per identity, node and peer address.
    pub rate_limits: crate::ca::rate_limit::RateLimits,
}

impl ServeOptions {
    /// Refuses every setting `start` could not run with, all at once and
    /// before anything starts: `serve --check-config` runs exactly this.
    pub fn validate(&self) -> anyhow::Result<()> {
        use crate::names::{is_dns_name, is_dns1123_label, is_dns1123_subdomain};
        let mut problems = Vec::new();
        if !is_dns1123_label(&self.namespace) {
            problems.push(format!("namespace {:?} is not a DNS-1123 label", self.namespace));
        }
        if self.pod_name.trim().is_empty() {
            problems.push("the pod name (--pod-name, POD_NAME) is empty".to_string());
        }
        for (flag, name) in [("--root-secret", &self.root_secret), ("--lease-name", &self.lease_name)] {
            if !is_dns1123_subdomain(name) {
                problems.push(format!("{flag} {name:?} is not a valid object name (DNS-1123 subdomain)"));
            }
        }
        for name in &self.root_configmap_names {
            if !is_dns1123_subdomain(name) {
                problems
                    .push(format!("--root-configmap-name {name:?} is not a valid object name (DNS-1123 subdomain)"));
            }
        }
        if !is_dns1123_label(&self.service_name) {
            problems
                .push(format!("--service-name {:?} is not a valid Service name (DNS-1123 label)", self.service_name));
        }
        if self.cluster_id.trim().is_empty() || self.cluster_aliases.iter().any(|a| a.trim().is_empty()) {
            problems.push("--cluster-id and each --cluster-alias must be non-empty".to_string());
        }
        if self.token.audiences.is_empty() || self.token.audiences.iter().any(|a| a.trim().is_empty()) {
            problems.push("--token-audience: at least one, and none empty".to_string());
        }
        // Port 0 (any free port, in tests) cannot collide.
        if self.listen == self.ops_listen && self.listen.port() != 0 {
            problems.push(format!("--listen and --metrics-listen are the same address ({})", self.listen));
        }
        problems.extend(self.timing_problems());
        for name in &self.serving_names {
            if name.parse::<std::net::IpAddr>().is_err() && !is_dns_name(name) {
                problems.push(format!("--serving-name {name:?} is neither an IP address nor a DNS name"));
            }
        }
        if problems.is_empty() {
            return Ok(());
        }
        anyhow::bail!("invalid configuration:\n  - {}", problems.join("\n  - "))
    }

    /// What is wrong with the Lease timings, the gRPC server's limits and the TokenReview timeout.
    fn timing_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let LeaseTimings { duration, retry_period } = self.lease;
        if duration < Duration::from_secs(1) || duration.subsec_nanos() != 0 || duration > MAX_LEASE_DURATION {
            problems.push(format!(
                "--lease-duration {} must be whole seconds, from 1s to {}",
                humantime::format_duration(duration),
                humantime::format_duration(MAX_LEASE_DURATION)
            ));
        }
        // A leader that cannot renew steps down at the renew deadline (duration - 2 x retry - 1 s), which
        // must leave it at least two attempts: so the duration is at least 4 retry periods and a second.
        let needed = retry_period.saturating_mul(4).saturating_add(Duration::from_secs(1));
        if retry_period.is_zero() || needed > duration {
            problems.push(format!(
                "--lease-retry-period {} must be above zero, and --lease-duration ({}) at least 4 times it plus 1s, \
                 so a leader that cannot renew steps down before another replica may take over",
                humantime::format_duration(retry_period),
                humantime::format_duration(duration)
            ));
        }
        let server = &self.server;
        // Bounded above too: a long handshake timeout lets idle clients hold connections open (slowloris),
        // and a long negative cache keeps refusing a token the API server rejected once by mistake.
        for (flag, value, max, zero_allowed) in [
            ("--handshake-timeout", server.handshake_timeout, MAX_HANDSHAKE_TIMEOUT, false),
            ("--request-timeout", server.request_timeout, MAX_REQUEST_TIMEOUT, false),
            ("--token-review-timeout", self.token.timeout, MAX_REQUEST_TIMEOUT, false),
            ("--token-negative-cache-ttl", self.token.negative_cache_ttl, MAX_NEGATIVE_CACHE_TTL, true),
        ] {
            if value > max || (value.is_zero() && !zero_allowed) {
                problems.push(format!(
                    "{flag} {} must be {}at most {}",
                    humantime::format_duration(value),
                    if zero_allowed { "" } else { "above zero and " },
                    humantime::format_duration(max)
                ));
            }
        }
        if !self.token.timeout.is_zero()
            && !server.request_timeout.is_zero()
            && server.request_timeout <= self.token.timeout
        {
            problems.push(format!(
                "--request-timeout ({}) must be longer than --token-review-timeout ({}): a request may wait for a \
                 TokenReview",
                humantime::format_duration(server.request_timeout),
                humantime::format_duration(self.token.timeout)
            ));
        }
        if server.max_concurrent_streams == 0 {
            problems.push("--max-concurrent-streams must be at least 1".to_string());
        }
        let connections = &server.connections;
        if connections.max_connections == 0 || connections.max_connections_per_peer == 0 {
            problems.push("--max-connections and --max-connections-per-peer must be at least 1".to_string());
        }
        // A silent connection may be one waiting for its answer, which comes within the request timeout.
        if let Some(idle) = connections.idle_timeout
            && (idle <= server.request_timeout || idle > MAX_IDLE_TIMEOUT)
        {
            problems.push(format!(
                "--idle-timeout ({}) must be 0 (never), or longer than --request-timeout ({}) and at most {}: a \
                 client waiting for its answer sends nothing",
                humantime::format_duration(idle),
                humantime::format_duration(server.request_timeout),
                humantime::format_duration(MAX_IDLE_TIMEOUT)
            ));
        }
        if server.max_header_list_bytes < MIN_HEADER_LIST_BYTES {
            problems.push(format!(
                "--max-header-bytes {} is below {MIN_HEADER_LIST_BYTES}: a bound service account token alone can \
                 take several KiB",
                server.max_header_list_bytes
            ));
        }
        problems
    }
}

/// The longest TLS handshake a client is given.
pub const MAX_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(300);

/// The longest a request (or its TokenReview) may be given.
pub const MAX_REQUEST_TIMEOUT: Duration = Duration::from_secs(600);

/// The longest `--idle-timeout`; `0` keeps silent connections for ever.
pub const MAX_IDLE_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// The longest a rejected token is refused from cache (0 turns that cache off).
pub const MAX_NEGATIVE_CACHE_TTL: Duration = Duration::from_secs(300);

/// The longest Lease duration accepted: longer only delays a takeover after a crash.
pub const MAX_LEASE_DURATION: Duration = Duration::from_secs(3600);

/// The smallest header block limit accepted (a bound token with its claims is a few KiB).
pub const MIN_HEADER_LIST_BYTES: u32 = 8 * 1024;

/// A running replica.
pub struct Server {
    /// The gRPC listener's bound address (with the actual port when port 0 was asked for).
    pub grpc_addr: SocketAddr,
    /// The metrics and health listener's bound address.
    pub ops_addr: SocketAddr,
    front: FrontEnd,
    election: leader::Election,
    tasks: Vec<JoinHandle<()>>,
}

/// Loads the root, retrying (with the reason logged) until it is usable.
async fn load_root(client: &kube::Client, opts: &ServeOptions) -> RootState {
    let mut delay = Duration::from_millis(500);
    loop {
        match root::load_or_generate(client.clone(), &opts.namespace, &opts.root_secret, opts.generate_root).await {
            Ok(r) => return r.into(),
            Err(e) => {
                tracing::error!(error = %e, retry_in = ?delay, "cannot load the root; not ready");
                tokio::time::sleep(delay).await;
                delay = delay.saturating_mul(2).min(Duration::from_secs(30));
            }
        }
    }
}

/// Starts a replica against `client`.
pub async fn start(client: kube::Client, opts: ServeOptions) -> anyhow::Result<Server> {
    opts.validate()?;
    let metrics = Metrics::new();
    // /healthz answers while the root loads; /readyz once the caches synced.
    let mut front = FrontEnd::bind(opts.listen, Some(opts.ops_listen), metrics.clone(), opts.drain_delay).await?;
    let readiness = front.readiness().clone();

    let initial_root = load_root(&client, &opts).await;
    let (root_tx, root_rx) = watch::channel(initial_root.clone());
    let (bundle_tx, bundle_rx) = watch::channel(initial_root.bundle.clone());
    // Every long-running task is supervised: a panic is logged, counted,
    // shown in /readyz and restarted, never a silently dead task.
    let supervisor = Supervisor::new(metrics.clone(), readiness.clone());
    let mut tasks = vec![{
        let (client, namespace, name) = (client.clone(), opts.namespace.clone(), opts.root_secret.clone());
        supervisor.spawn("root_watch", move || {
            supervise::join(root::spawn_watch(client.clone(), &namespace, &name, root_tx.clone()))
        })
    }];

    let pods = PodNodeAuthorizer::new();
    tasks.push({
        let (pods, client) = (pods.clone(), client.clone());
        supervisor.spawn("pod_authorizer", move || pods.watch(client.clone()))
    });
    let node_authorizer: Arc<dyn NodeAuthorizer> = pods;
    let registry = Arc::new(MeshRegistry::default());
    let (synced_tx, mut synced_rx) = watch::channel(false);
    tasks.push({
        let (client, namespace, registry) = (client.clone(), opts.namespace.clone(), registry.clone());
        supervisor.spawn("registry", move || {
            supervise::join(registry::spawn(
                client.clone(),
                &namespace,
                registry.clone(),
                bundle_rx.clone(),
                node_authorizer.clone(),
                synced_tx.clone(),
            ))
        })
    });

    // The serving certificate; with an offline root this waits for a mesh.
    let names = serving::names(&opts.namespace, &opts.service_name, &opts.serving_names);
    let first = loop {
        match serving::issue(&root_rx.borrow().clone(), &registry, &names, OffsetDateTime::now_utc()) {
            Ok(s) => break s,
            Err(why) => {
                tracing::warn!(reason = %why, "no serving certificate yet; not ready");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    let serving_cert = ServingCertificate::new(first.chain.clone(), &first.key)?;
    let tls = ServerTls::new(serving_cert.clone(), Some(&initial_root.bundle))?;
    metrics.set_expiries(initial_root.bundle.earliest_expiry(), 0);
    tasks.push({
        let (root, registry, tls, metrics) = (root_rx.clone(), registry.clone(), tls.clone(), metrics.clone());
        // The current serving certificate outlives a failed run.
        let current = Arc::new(tokio::sync::Mutex::new(first));
        supervisor.spawn("rotation", move || {
            rotation(
                root.clone(),
                bundle_tx.clone(),
                registry.clone(),
                tls.clone(),
                names.clone(),
                current.clone(),
                metrics.clone(),
            )
        })
    });

    let authenticators = AuthenticatorChain::new(vec![
        Arc::new(ClientCertificateAuthenticator::new(registry.clone())),
        Arc::new(TokenReviewAuthenticator::new(client.clone(), opts.token.clone())),
    ]);
    let service = CertificateService::new(
        ServiceConfig {
            cluster_id: opts.cluster_id.clone(),
            cluster_aliases: opts.cluster_aliases.clone(),
            rate_limits: opts.rate_limits,
        },
        authenticators,
        registry.clone(),
        metrics.clone(),
    );
    front.serve(tls, service, opts.server.clone())?;

    let lease = leader::LeaseConfig::new(&opts.namespace, &opts.lease_name, &opts.pod_name, opts.lease);
    let election = leader::spawn(client.clone(), lease);
    tasks.push({
        let (client, opts, is_leader) = (client.clone(), opts.clone(), election.is_leader.clone());
        let (registry, metrics, children) = (registry.clone(), metrics.clone(), supervisor.clone());
        supervisor.spawn("controllers", move || {
            run_controllers(
                client.clone(),
                opts.clone(),
                is_leader.clone(),
                root_rx.clone(),
                registry.clone(),
                children.clone(),
                metrics.clone(),
            )
        })
    });

    let ready = readiness.clone();
    tasks.push(tokio::spawn(async move {
        if synced_rx.wait_for(|s| *s).await.is_ok() {
            ready.set(true);
            tracing::info!("ready");
        }
    }));
    let (grpc_addr, ops_addr) = (front.grpc_addr, front.ops_addr.unwrap_or(opts.ops_listen));
    Ok(Server { grpc_addr, ops_addr, front, election, tasks })
}

/// Re-issues the serving certificate when due or when the root changes, and
/// keeps client-certificate roots and metrics in step with the bundle.
async fn rotation(
    mut root: watch::Receiver<RootState>,
    bundle: watch::Sender<Arc<crate::pki::TrustBundle>>,
    registry: Arc<MeshRegistry>,
    tls: Arc<ServerTls>,
    names: Vec<String>,
    current: Arc<tokio::sync::Mutex<serving::Serving>>,
    metrics: Arc<Metrics>,
) {
    let mut current = current.lock().await;
    let mut tick = tokio::time::interval(Duration::from_secs(30));
    loop {
        let root_changed = tokio::select! {
            r = root.changed() => { if r.is_err() { return } true }
            _ = tick.tick() => false,
        };
        let state = root.borrow().clone();
        if root_changed {
            bundle.send_replace(state.bundle.clone());
            if let Err(e) = tls.set_client_roots(Some(&state.bundle)) {
                tracing::error!(error = %e, "cannot use the new bundle for client certificates");
            }
        }
        let chain_expiry = registry
            .meshes()
            .iter()
            .filter_map(|m| m.signer.as_ref().ok().map(|c| c.authority().not_after().unix_timestamp()))
            .min()
            .unwrap_or(0);
        metrics.set_expiries(state.bundle.earliest_expiry(), chain_expiry);
        let issuer_changed = state.authority.as_ref().is_some_and(|a| a.serial_hex() != current.issuer_serial);
        if !(current.due(OffsetDateTime::now_utc()) || issuer_changed) {
            continue;
        }
        match serving::issue(&state, &registry, &names, OffsetDateTime::now_utc()) {
            Ok(next) => match tls.serving().replace(next.chain.clone(), &next.key) {
                Ok(()) => {
                    tracing::info!(not_after = %next.not_after, "rotated the serving certificate");
                    *current = next;
                }
                Err(e) => tracing::error!(error = %e, "cannot use the new serving certificate"),
            },
            Err(why) => tracing::warn!(reason = %why, "cannot rotate the serving certificate yet"),
        }
    }
}

/// Runs the controllers while this replica leads, and stops them when it
/// does not; each controller is supervised on its own.
async fn run_controllers(
    client: kube::Client,
    opts: ServeOptions,
    mut is_leader: watch::Receiver<bool>,
    root: watch::Receiver<RootState>,
    registry: Arc<MeshRegistry>,
    supervisor: Supervisor,
    metrics: Arc<Metrics>,
) {
    // Dropped (so aborted) with this run, too, if it fails.
    let mut running: Vec<AbortOnDrop> = Vec::new();
    loop {
        let leading = *is_leader.borrow_and_update();
        if leading && running.is_empty() {
            tracing::info!("leading: starting controllers");
            running = start_controllers(&client, &opts, &root, &registry, &supervisor, &metrics);
        } else if !leading && !running.is_empty() {
            tracing::info!("not leading: stopping controllers");
            running.clear();
        }
        if is_leader.changed().await.is_err() {
            // The election stopped (shutdown): stop the controllers, then
            // wait to be stopped rather than end as if failed.
            running.clear();
            std::future::pending::<()>().await;
        }
    }
}

/// The leader's controllers, each supervised; dropping them stops them.
fn start_controllers(
    client: &kube::Client,
    opts: &ServeOptions,
    root: &watch::Receiver<RootState>,
    registry: &Arc<MeshRegistry>,
    supervisor: &Supervisor,
    metrics: &Arc<Metrics>,
) -> Vec<AbortOnDrop> {
    let mut running = Vec::new();
    let coverage = root_configmaps::Coverage::default();
    let (bundle_tx, bundle_rx) = watch::channel(root.borrow().bundle.clone());
    let root_for_bundle = root.clone();
    running.push(supervisor.spawn("root_bundle", move || {
        let (mut root, bundle) = (root_for_bundle.clone(), bundle_tx.clone());
        async move {
            // A restarted run may have missed a change: send the current bundle first.
            loop {
                bundle.send_replace(root.borrow_and_update().bundle.clone());
                if root.changed().await.is_err() {
                    // The replica is stopping; wait to be stopped too.
                    std::future::pending::<()>().await;
                }
            }
        }
    }));
    running.push({
        let (client, resync, coverage) = (client.clone(), opts.resync, coverage.clone());
        let names: std::collections::BTreeSet<String> = opts.root_configmap_names.iter().cloned().collect();
        supervisor.spawn("root_configmaps", move || {
            let (client, bundle, coverage, names) =
                (client.clone(), bundle_rx.clone(), coverage.clone(), names.clone());
            supervise::join(root_configmaps::spawn(client, bundle, resync, coverage, names))
        })
    });
    running.push({
        let (client, namespace, root, resync) = (client.clone(), opts.namespace.clone(), root.clone(), opts.resync);
        supervisor.spawn("meshes", move || {
            supervise::join(meshes::spawn(client.clone(), namespace.clone(), root.clone(), coverage.clone(), resync))
        })
    });
    let (issuer_cache, feed) = issuer_cache::IssuerCache::new(client.clone());
    running.push(supervisor.spawn("issuer_cache", move || feed.run()));
    let signers = signing::Signers {
        issuers: issuer_cache,
        root: root.clone(),
        registry: registry.clone(),
        own: Arc::new(crate::issuer::OwnService {
            namespace: opts.namespace.clone(),
            name: opts.service_name.clone(),
            extra_names: opts.serving_names.clone(),
        }),
    };
    running.push({
        let (client, signers, resync) = (client.clone(), signers.clone(), opts.resync);
        supervisor.spawn("issuers", move || supervise::join(issuers::spawn(client.clone(), signers.clone(), resync)))
    });
    if opts.cert_manager_issuer {
        let (client, signers, reporter) = (client.clone(), signers.clone(), opts.pod_name.clone());
        let guard = PanicGuard::new("certificate_requests", metrics.clone());
        running.push(supervisor.spawn("certificate_requests", move || {
            supervise::join(certificate_requests::spawn(
                client.clone(),
                signers.clone(),
                reporter.clone(),
                guard.clone(),
            ))
        }));
    }
    if opts.kubernetes_csr_signer {
        let (client, reporter) = (client.clone(), opts.pod_name.clone());
        let guard = PanicGuard::new("kube_csrs", metrics.clone());
        running.push(supervisor.spawn("kube_csrs", move || {
            supervise::join(kube_csrs::spawn(client.clone(), signers.clone(), reporter.clone(), guard.clone()))
        }));
    }
    running.into_iter().map(AbortOnDrop).collect()
}

impl Server {
    /// Graceful shutdown: readiness drops, traffic drains, in-flight
    /// requests finish, the Lease is released.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.front.shutdown().await?;
        self.election.stop().await;
        for t in &self.tasks {
            t.abort();
        }
        Ok(())
    }
}

/// This pod's namespace: the flag, or the service account's namespace file.
pub fn own_namespace(flag: Option<String>) -> anyhow::Result<String> {
    if let Some(ns) = flag.filter(|n| !n.is_empty()) {
        return Ok(ns);
    }
    let path = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";
    std::fs::read_to_string(path).map(|s| s.trim().to_string()).ok().filter(|s| !s.is_empty()).with_context(|| {
        format!("meshroot's namespace is unknown: pass --namespace (or POD_NAMESPACE), or run in a pod ({path})")
    })
}
