//! `meshroot serve`: run until SIGTERM or Ctrl-C, then shut down gracefully.

use crate::serve::{ServeOptions, start};
use anyhow::Context;

pub async fn run(opts: ServeOptions) -> anyhow::Result<()> {
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
        ("token audiences", opts.token.audiences.join(",")),
        ("service name", opts.service_name.clone()),
        ("serving names", opts.serving_names.join(",")),
        ("lease name", opts.lease_name.clone()),
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
