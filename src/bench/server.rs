//! The server side of `meshroot bench`: the production service, TLS and
//! gRPC stack over the benchmark's PKI, in its own process so its CPU time
//! and memory can be read from /proc. It exits when its stdin closes.

use super::fixture::{self, Files, TRUST_DOMAIN};
use crate::auth::AuthenticatorChain;
use crate::ca::client_cert::ClientCertificateAuthenticator;
use crate::ca::connection::ConnectionLimits;
use crate::ca::rate_limit::{Limit, RateLimits};
use crate::ca::server::ServerOptions;
use crate::ca::service::{CertificateService, ServiceConfig};
use crate::ca::static_tokens::StaticTokenAuthenticator;
use crate::ca::tls::{ServerTls, ServingCertificate};
use crate::frontend::FrontEnd;
use crate::mesh::{Mesh, MeshRegistry};
use crate::telemetry::Metrics;
use anyhow::Context;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::io::AsyncReadExt;

/// Serves CreateCertificate over the PKI and tokens in `dir` (from [`fixture::create`]), writes
/// the port to the ready file, and shuts down once stdin closes, writing the counts file
/// (requests received, certificates issued, requests refused).
/// `rate_limits: false` turns every rate limit off, for a load generator that sends one token.
pub async fn run(dir: PathBuf, rate_limits: bool) -> anyhow::Result<()> {
    let files = Files { dir };
    let chain = Arc::new(fixture::load_signer(&files)?);
    let tokens_text = std::fs::read_to_string(files.tokens()).context("reading the token file")?;
    let tokens = StaticTokenAuthenticator::parse(&tokens_text)?;
    let mesh =
        Mesh { max_ttl: time::Duration::days(1), ..Mesh::of_all_namespaces("bench", TRUST_DOMAIN, chain.clone()) };
    let registry = Arc::new(MeshRegistry::new(vec![Arc::new(mesh)]));
    let metrics = Metrics::new();
    let service = CertificateService::new(
        // Production's default limits, so their cost is measured. Load spreads
        // over 10,000 identities (well under 50/s each), and static tokens name
        // no node, so they never refuse here. The per-peer limit is off: all
        // load comes from one loopback address, where a cluster spreads it
        // over one address per node.
        ServiceConfig {
            cluster_id: crate::names::DEFAULT_CLUSTER_ID.into(),
            cluster_aliases: Vec::new(),
            rate_limits: match rate_limits {
                true => RateLimits { peer: Limit::OFF, ..RateLimits::default() },
                false => RateLimits { peer: Limit::OFF, identity: Limit::OFF, node: Limit::OFF },
            },
        },
        AuthenticatorChain::new(vec![
            Arc::new(ClientCertificateAuthenticator::new(registry.clone())),
            Arc::new(tokens),
        ]),
        registry,
        metrics.clone(),
    );
    let (serving_chain, serving_key) = fixture::load_serving(&files)?;
    let tls = ServerTls::new(ServingCertificate::new(serving_chain, &serving_key)?, Some(chain.bundle()))?;
    // The production front end, without an operations port: the parent
    // reads this process's CPU time and memory from /proc instead.
    let loopback = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let mut front = FrontEnd::bind(loopback, None, Metrics::new(), std::time::Duration::ZERO).await?;
    // Production's connection limits, but not per peer, as for the rate limit above.
    let defaults = ServerOptions::default();
    let connections =
        ConnectionLimits { max_connections_per_peer: defaults.connections.max_connections, ..defaults.connections };
    front.serve(tls, service, ServerOptions { connections, ..defaults })?;
    std::fs::write(files.ready(), front.grpc_addr.port().to_string()).context("writing the ready file")?;
    // The parent keeps our stdin open for as long as it wants us.
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 64];
    while stdin.read(&mut buf).await.is_ok_and(|n| n > 0) {}
    front.shutdown().await?;
    let counts =
        format!("{} {} {}\n", metrics.csr_count.get(), metrics.success_cert_issuance_count.get(), refused(&metrics));
    std::fs::write(files.counts(), counts).context("writing the counts file")?;
    Ok(())
}

/// Requests refused, as the metrics count them: unauthenticated, forbidden, and every error by
/// name (rate limited, bad CSR, unavailable...). A request cut off in flight is none of these.
fn refused(metrics: &Metrics) -> u64 {
    let by_name: u64 = metrics
        .render(0)
        .lines()
        .filter(|l| l.starts_with("citadel_server_csr_sign_err_count{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    by_name + metrics.authentication_failure_count.get() + metrics.id_extraction_err_count.get()
}
