//! `meshroot dev`: the CA on one machine, with no cluster. State lives in a
//! directory; callers authenticate with static tokens.

pub mod state;

use crate::auth::AuthenticatorChain;
use crate::ca::client_cert::ClientCertificateAuthenticator;
use crate::ca::rate_limit::RateLimits;
use crate::ca::server::ServerOptions;
use crate::ca::service::{CertificateService, ServiceConfig};
use crate::ca::tls::{ServerTls, ServingCertificate};
use crate::ca::token_file::TokenFile;
use crate::frontend::FrontEnd;
use crate::mesh::{Mesh, MeshRegistry};
use crate::pki::spiffe::validate_trust_domain;
use crate::supervise::AbortOnDrop;
use crate::telemetry::Metrics;
use anyhow::{Context, bail};
use state::{DEV_MESH, DevState};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use time::Duration;

/// How to run dev mode; the library's defaults are those of `meshroot dev`'s flags.
#[derive(Clone, Debug)]
pub struct DevOptions {
    /// gRPC (Istio CA API) listen address.
    pub listen: SocketAddr,
    /// Metrics and health listen address.
    pub ops_listen: SocketAddr,
    /// Directory holding the root, intermediate, serving certificate and tokens; created if missing.
    pub state_dir: PathBuf,
    /// The dev mesh's trust domain.
    pub trust_domain: String,
    /// Token file (`TOKEN NAMESPACE SERVICEACCOUNT` per line), which must exist; `None` for
    /// `DIR/tokens`, created on the first start.
    pub token_file: Option<PathBuf>,
    /// The cluster id clients must send in `clusterid`.
    pub cluster_id: String,
    /// Lifetime when a request asks for none.
    pub default_ttl: Duration,
    /// Longest lifetime issued; longer requests are clamped.
    pub max_ttl: Duration,
    /// `NAMESPACE/SERVICEACCOUNT`s allowed to impersonate workloads (ztunnel).
    pub trusted_node_accounts: Vec<String>,
    /// Names the serving certificate carries besides localhost, 127.0.0.1 and ::1.
    pub serving_names: Vec<String>,
    /// CreateCertificate rate limits.
    pub rate_limits: RateLimits,
    /// The gRPC server's timeouts and connection limits: production's.
    pub server: ServerOptions,
}

/// The defaults of `meshroot dev`, which its flags show (`cmd::dev`).
pub mod defaults {
    /// gRPC listen address: loopback, istiod's CA port.
    pub const LISTEN: &str = "127.0.0.1:15012";
    /// Metrics and health listen address: loopback, istiod's monitoring port.
    pub const OPS_LISTEN: &str = "127.0.0.1:15014";
    /// State directory, relative to the working directory.
    pub const STATE_DIR: &str = ".meshroot";
    /// Trust domain, Istio's default.
    pub const TRUST_DOMAIN: &str = "cluster.local";
    /// Lifetime when a request asks for none.
    pub const DEFAULT_TTL: &str = "24h";
    /// Longest lifetime issued.
    pub const MAX_TTL: &str = "90d";
    /// The account allowed to impersonate: ztunnel's, as Istio installs it.
    pub const TRUSTED_NODE_ACCOUNT: &str = "istio-system/ztunnel";
}

impl Default for DevOptions {
    fn default() -> Self {
        Self {
            listen: ([127, 0, 0, 1], 15012).into(),
            ops_listen: ([127, 0, 0, 1], 15014).into(),
            state_dir: PathBuf::from(defaults::STATE_DIR),
            trust_domain: defaults::TRUST_DOMAIN.into(),
            token_file: None,
            cluster_id: crate::names::DEFAULT_CLUSTER_ID.into(),
            default_ttl: Duration::hours(24),
            max_ttl: Duration::days(90),
            trusted_node_accounts: vec![defaults::TRUSTED_NODE_ACCOUNT.into()],
            serving_names: Vec::new(),
            rate_limits: RateLimits::default(),
            server: ServerOptions::default(),
        }
    }
}

/// A running dev server.
pub struct DevServer {
    /// The address the gRPC port is bound to (the actual port when port 0 was asked for).
    pub grpc_addr: SocketAddr,
    /// The address the metrics and health port is bound to.
    pub ops_addr: SocketAddr,
    /// The state it serves from, as loaded or created.
    pub state: DevState,
    /// The server's metrics, as `/metrics` shows them.
    pub metrics: Arc<Metrics>,
    /// The one dev mesh; replacing it (for example with a renewed
    /// intermediate) takes effect on the next request.
    pub registry: Arc<MeshRegistry>,
    front: FrontEnd,
    /// Stops watching the token file when the server goes.
    _token_watch: AbortOnDrop,
}

fn validate(opts: &DevOptions) -> anyhow::Result<()> {
    validate_trust_domain(&opts.trust_domain).context("--trust-domain")?;
    if opts.default_ttl <= Duration::ZERO || opts.max_ttl <= Duration::ZERO {
        bail!("--default-ttl and --max-ttl must be positive");
    }
    for account in &opts.trusted_node_accounts {
        if !crate::names::is_service_account_ref(account) {
            bail!("--trusted-node-account {account:?} must be NAMESPACE/SERVICEACCOUNT");
        }
    }
    Ok(())
}

/// Loads or creates the state, binds both ports and starts serving.
pub async fn start(opts: DevOptions) -> anyhow::Result<DevServer> {
    validate(&opts)?;
    let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
    names.extend(opts.serving_names.iter().cloned());
    let state = DevState::load_or_init(&opts.state_dir, &names, opts.token_file.as_deref())
        .with_context(|| format!("preparing state in {}", opts.state_dir.display()))?;

    // Reloaded while running: a line added for a new identity works within a second.
    let tokens = TokenFile::load(&state.tokens_path)?;
    let token_watch = AbortOnDrop(tokio::spawn(tokens.clone().watch()));

    let chain = state.chain.clone();
    let mesh = Mesh {
        default_ttl: opts.default_ttl,
        max_ttl: opts.max_ttl,
        trusted_node_accounts: opts.trusted_node_accounts.iter().cloned().collect::<BTreeSet<_>>(),
        ..Mesh::of_all_namespaces(DEV_MESH, &opts.trust_domain, chain.clone())
    };
    let registry = Arc::new(MeshRegistry::new(vec![Arc::new(mesh)]));
    let metrics = Metrics::new();
    let root_expiry = chain.bundle().earliest_expiry();
    metrics.set_expiries(root_expiry, chain.authority().not_after().unix_timestamp());

    let service = CertificateService::new(
        ServiceConfig {
            cluster_id: opts.cluster_id.clone(),
            cluster_aliases: Vec::new(),
            rate_limits: opts.rate_limits,
        },
        AuthenticatorChain::new(vec![Arc::new(ClientCertificateAuthenticator::new(registry.clone())), tokens]),
        registry.clone(),
        metrics.clone(),
    );
    let serving = ServingCertificate::new(state.serving_chain.clone(), &state.serving_key)?;
    let tls = ServerTls::new(serving, Some(chain.bundle()))?;

    // No drain delay: nothing routes traffic to a dev server by readiness.
    let mut front =
        FrontEnd::bind(opts.listen, Some(opts.ops_listen), metrics.clone(), std::time::Duration::ZERO).await?;
    front.serve(tls, service, opts.server.clone())?;
    front.readiness().set(true);
    let (grpc_addr, ops_addr) = (front.grpc_addr, front.ops_addr.unwrap_or(opts.ops_listen));
    Ok(DevServer { grpc_addr, ops_addr, state, metrics, registry, front, _token_watch: token_watch })
}

impl DevServer {
    /// Graceful shutdown: readiness drops first, then in-flight requests finish.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        Ok(self.front.shutdown().await?)
    }
}
