//! `meshroot dev`: run until interrupted, after saying how to use it.

use super::rate_limits;
use crate::dev::{DevOptions, DevServer, defaults, start};
use crate::duration;
use crate::names::DEFAULT_CLUSTER_ID;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;

/// The flags of `meshroot dev`; their defaults are `DevOptions::default()`
/// (a test holds them equal).
#[derive(clap::Args)]
pub struct Args {
    /// gRPC (Istio CA API) listen address.
    #[arg(long, default_value = defaults::LISTEN)]
    listen: SocketAddr,
    /// Metrics and health listen address.
    #[arg(long, default_value = defaults::OPS_LISTEN)]
    metrics_listen: SocketAddr,
    /// Directory holding the root, intermediate, serving certificate and tokens.
    #[arg(long, default_value = defaults::STATE_DIR)]
    state_dir: PathBuf,
    /// SPIFFE trust domain of the identities the dev mesh signs.
    #[arg(long, default_value = defaults::TRUST_DOMAIN)]
    trust_domain: String,
    /// Token file (TOKEN NAMESPACE SERVICEACCOUNT per line); default DIR/tokens.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// The cluster id clients send in `clusterid`.
    #[arg(long, default_value = DEFAULT_CLUSTER_ID)]
    cluster_id: String,
    /// Lifetime when a request asks for none.
    #[arg(long, default_value = defaults::DEFAULT_TTL, value_parser = duration::parse)]
    default_ttl: time::Duration,
    /// Longest lifetime issued; longer requests are clamped.
    #[arg(long, default_value = defaults::MAX_TTL, value_parser = duration::parse)]
    max_ttl: time::Duration,
    /// NAMESPACE/SERVICEACCOUNT allowed to impersonate (ztunnel). Repeatable.
    #[arg(long = "trusted-node-account", default_value = defaults::TRUSTED_NODE_ACCOUNT)]
    trusted_node_accounts: Vec<String>,
    /// Extra DNS name or IP for the serving certificate. Repeatable.
    #[arg(long = "serving-name")]
    serving_names: Vec<String>,
    #[command(flatten)]
    pub(super) rate_limits: rate_limits::Args,
}

impl Args {
    /// The options `dev::start` takes.
    pub fn options(self) -> DevOptions {
        DevOptions {
            listen: self.listen,
            ops_listen: self.metrics_listen,
            state_dir: self.state_dir,
            trust_domain: self.trust_domain,
            token_file: self.token_file,
            cluster_id: self.cluster_id,
            default_ttl: self.default_ttl,
            max_ttl: self.max_ttl,
            trusted_node_accounts: self.trusted_node_accounts,
            serving_names: self.serving_names,
            rate_limits: self.rate_limits.limits(),
            ..DevOptions::default()
        }
    }
}

/// The startup message: where things are and a ready-to-paste request.
pub fn banner(server: &DevServer, opts: &DevOptions) -> String {
    let s = &server.state;
    let mut out = String::new();
    for c in &s.created {
        let _ = writeln!(out, "created {c}");
    }
    let _ = writeln!(
        out,
        "meshroot dev: Istio CA API on {} (mesh \"default\", trust domain {}, cluster id {})",
        server.grpc_addr, opts.trust_domain, opts.cluster_id
    );
    let _ = writeln!(out, "  trust bundle    {}", s.bundle_path.display());
    let _ = writeln!(out, "  token file      {}", s.tokens_path.display());
    let _ = writeln!(out, "  mesh cacerts    {}", s.dir.join("meshes/default").display());
    let _ = writeln!(out, "  metrics, health http://{}/metrics  /healthz  /readyz", server.ops_addr);
    let token_arg = match &s.default_token_path {
        Some(p) => format!("--token-file {}", p.display()),
        None => "--token <a token from the token file>".to_string(),
    };
    let host =
        if server.grpc_addr.ip().is_loopback() { "localhost".to_string() } else { server.grpc_addr.ip().to_string() };
    // The binary as it runs (`cargo run` leaves no `meshroot` on PATH), and the workload's key
    // under the state directory, which is git-ignored, not in the working tree.
    let program = std::env::current_exe().map_or_else(|_| "meshroot".to_string(), |p| p.display().to_string());
    let _ = writeln!(out, "\nRequest a workload certificate:");
    let _ = writeln!(
        out,
        "  {program} request --ca-addr {host}:{} --root-cert {} {token_arg} --identity spiffe://{}/ns/default/sa/default --out {}",
        server.grpc_addr.port(),
        s.bundle_path.display(),
        opts.trust_domain,
        s.dir.join("workload").display()
    );
    out
}

/// Runs dev mode until Ctrl-C or SIGTERM, then shuts down gracefully.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let opts = args.options();
    let server = start(opts.clone()).await?;
    print!("{}", banner(&server, &opts));
    wait_for_signal().await;
    tracing::info!("shutting down");
    server.shutdown().await
}

/// Returns on Ctrl-C or SIGTERM (only Ctrl-C if SIGTERM cannot be listened for).
pub async fn wait_for_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops meshroot");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
