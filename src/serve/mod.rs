//! `meshroot serve`: Kubernetes mode. Every replica serves gRPC from watch
//! caches; the elected leader runs the controllers.

pub mod serving;

use crate::ca::auth::AuthenticatorChain;
use crate::ca::client_cert::ClientCertificateAuthenticator;
use crate::ca::node::NodeAuthorizer;
use crate::ca::server::{self, ServerOptions};
use crate::ca::service::{CertificateService, ServiceConfig};
use crate::ca::tls::{ServerTls, ServingCertificate};
use crate::ca::tokenreview::{TokenReviewAuthenticator, TokenReviewConfig};
use crate::controllers::{certificate_requests, issuer_cache, issuers, kube_csrs, meshes, root_configmaps, signing};
use crate::k8s::node_authz::PodNodeAuthorizer;
use crate::k8s::root::{self, RootState};
use crate::k8s::{leader, registry};
use crate::mesh::MeshRegistry;
use crate::telemetry::Metrics;
use crate::telemetry::http::{self as ops, Readiness};
use anyhow::Context;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// meshroot's own namespace (root and intermediate Secrets, Lease).
    pub namespace: String,
    /// This replica's name (the Lease holder identity).
    pub pod_name: String,
    pub listen: SocketAddr,
    pub ops_listen: SocketAddr,
    pub root_secret: String,
    pub generate_root: bool,
    pub cluster_id: String,
    pub cluster_aliases: Vec<String>,
    pub token: TokenReviewConfig,
    /// The Service clients dial (`<service>.<namespace>.svc`).
    pub service_name: String,
    /// Extra DNS names or IPs for the serving certificate.
    pub serving_names: Vec<String>,
    pub lease_name: String,
    pub resync: Duration,
    /// How long readiness is down before the listeners close, so endpoints
    /// stop sending traffic first.
    pub drain_delay: Duration,
    /// Run the cert-manager external issuer (CertificateRequests).
    pub cert_manager_issuer: bool,
    /// Run the Kubernetes CSR signer.
    pub kubernetes_csr_signer: bool,
    pub rate_limits: crate::ca::rate_limit::RateLimits,
}

/// A running replica.
pub struct Server {
    pub grpc_addr: SocketAddr,
    pub ops_addr: SocketAddr,
    readiness: Arc<Readiness>,
    shutdown: watch::Sender<bool>,
    grpc: JoinHandle<Result<(), tonic::transport::Error>>,
    ops: JoinHandle<std::io::Result<()>>,
    election: leader::Election,
    tasks: Vec<JoinHandle<()>>,
    drain_delay: Duration,
}

async fn wait_for(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
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
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// Starts a replica against `client`.
pub async fn start(client: kube::Client, opts: ServeOptions) -> anyhow::Result<Server> {
    let metrics = Metrics::new();
    let readiness = Readiness::new();
    let (shutdown, shutdown_rx) = watch::channel(false);
    let ops_listener = TcpListener::bind(opts.ops_listen)
        .await
        .with_context(|| format!("binding the metrics/health port {}", opts.ops_listen))?;
    let ops_addr = ops_listener.local_addr()?;
    let ops = tokio::spawn(ops::serve(ops_listener, metrics.clone(), readiness.clone(), wait_for(shutdown_rx.clone())));
    let grpc_listener =
        TcpListener::bind(opts.listen).await.with_context(|| format!("binding the gRPC port {}", opts.listen))?;
    let grpc_addr = grpc_listener.local_addr()?;

    let initial_root = load_root(&client, &opts).await;
    let (root_tx, root_rx) = watch::channel(initial_root.clone());
    let (bundle_tx, bundle_rx) = watch::channel(initial_root.bundle.clone());
    let mut tasks = vec![root::spawn_watch(client.clone(), &opts.namespace, &opts.root_secret, root_tx)];

    let (pods, pod_task) = PodNodeAuthorizer::spawn(client.clone());
    tasks.push(pod_task);
    let node_authorizer: Arc<dyn NodeAuthorizer> = pods;
    let registry = Arc::new(MeshRegistry::default());
    let (synced_tx, mut synced_rx) = watch::channel(false);
    tasks.push(registry::spawn(
        client.clone(),
        &opts.namespace,
        registry.clone(),
        bundle_rx,
        node_authorizer,
        registry::Problems::default(),
        synced_tx,
    ));

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
    tasks.push(spawn_rotation(
        root_rx.clone(),
        bundle_tx,
        registry.clone(),
        tls.clone(),
        names,
        first,
        metrics.clone(),
    ));

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
    let grpc =
        tokio::spawn(server::serve(grpc_listener, tls, service, ServerOptions::default(), wait_for(shutdown_rx)));

    let election =
        leader::spawn(client.clone(), leader::LeaseConfig::new(&opts.namespace, &opts.lease_name, &opts.pod_name));
    tasks.push(spawn_controllers(client.clone(), opts.clone(), election.is_leader.clone(), root_rx, registry.clone()));

    let ready = readiness.clone();
    tasks.push(tokio::spawn(async move {
        if synced_rx.wait_for(|s| *s).await.is_ok() {
            ready.set(true);
            tracing::info!("ready");
        }
    }));
    Ok(Server { grpc_addr, ops_addr, readiness, shutdown, grpc, ops, election, tasks, drain_delay: opts.drain_delay })
}

/// Re-issues the serving certificate when due or when the root changes, and
/// keeps client-certificate roots and metrics in step with the bundle.
fn spawn_rotation(
    mut root: watch::Receiver<RootState>,
    bundle: watch::Sender<Arc<crate::pki::TrustBundle>>,
    registry: Arc<MeshRegistry>,
    tls: Arc<ServerTls>,
    names: Vec<String>,
    mut current: serving::Serving,
    metrics: Arc<Metrics>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
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
                        current = next;
                    }
                    Err(e) => tracing::error!(error = %e, "cannot use the new serving certificate"),
                },
                Err(why) => tracing::warn!(reason = %why, "cannot rotate the serving certificate yet"),
            }
        }
    })
}

/// Runs the controllers while this replica leads, and stops them when it does not.
fn spawn_controllers(
    client: kube::Client,
    opts: ServeOptions,
    mut is_leader: watch::Receiver<bool>,
    root: watch::Receiver<RootState>,
    registry: Arc<MeshRegistry>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut running: Vec<JoinHandle<()>> = Vec::new();
        loop {
            let leading = *is_leader.borrow_and_update();
            if leading && running.is_empty() {
                tracing::info!("leading: starting controllers");
                let coverage = root_configmaps::Coverage::default();
                let (bundle_tx, bundle_rx) = watch::channel(root.borrow().bundle.clone());
                let mut root_for_bundle = root.clone();
                running.push(tokio::spawn(async move {
                    while root_for_bundle.changed().await.is_ok() {
                        let b = root_for_bundle.borrow().bundle.clone();
                        bundle_tx.send_replace(b);
                    }
                }));
                running.push(root_configmaps::spawn(client.clone(), bundle_rx, opts.resync, coverage.clone()));
                running.push(meshes::spawn(
                    client.clone(),
                    opts.namespace.clone(),
                    root.clone(),
                    coverage,
                    opts.resync,
                ));
                let (issuer_cache, issuer_task) = issuer_cache::IssuerCache::spawn(client.clone());
                running.push(issuer_task);
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
                running.push(issuers::spawn(client.clone(), signers.clone(), opts.resync));
                if opts.cert_manager_issuer {
                    running.push(certificate_requests::spawn(client.clone(), signers.clone(), opts.pod_name.clone()));
                }
                if opts.kubernetes_csr_signer {
                    running.push(kube_csrs::spawn(client.clone(), signers, opts.pod_name.clone()));
                }
            } else if !leading && !running.is_empty() {
                tracing::info!("not leading: stopping controllers");
                for t in running.drain(..) {
                    t.abort();
                }
            }
            if is_leader.changed().await.is_err() {
                for t in running.drain(..) {
                    t.abort();
                }
                return;
            }
        }
    })
}

impl Server {
    /// Graceful shutdown: readiness drops, traffic drains, in-flight
    /// requests finish, the Lease is released.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.readiness.set(false);
        tokio::time::sleep(self.drain_delay).await;
        let _ = self.shutdown.send(true);
        self.grpc.await.context("gRPC server task")?.context("gRPC server")?;
        self.election.stop().await;
        for t in &self.tasks {
            t.abort();
        }
        self.ops.await.context("ops server task")?.context("ops server")?;
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
