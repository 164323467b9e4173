//! `meshroot dev`: run until interrupted, after saying how to use it.

use crate::dev::{DevOptions, DevServer, start};
use std::fmt::Write as _;

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
    let _ = writeln!(out, "\nRequest a workload certificate:");
    let _ = writeln!(
        out,
        "  meshroot request --ca-addr {host}:{} --root-cert {} {token_arg} --identity spiffe://{}/ns/default/sa/default --out ./workload",
        server.grpc_addr.port(),
        s.bundle_path.display(),
        opts.trust_domain
    );
    out
}

/// Runs dev mode until Ctrl-C or SIGTERM, then shuts down gracefully.
pub async fn run(opts: DevOptions) -> anyhow::Result<()> {
    let server = start(opts.clone()).await?;
    print!("{}", banner(&server, &opts));
    wait_for_signal().await;
    tracing::info!("shutting down");
    server.shutdown().await
}

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
