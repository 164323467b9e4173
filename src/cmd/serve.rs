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

/// The host name, as a replica identity outside a pod.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| format!("meshroot-{}", std::process::id()))
}
