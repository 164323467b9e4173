//! The meshroot command line.
// The same policy as the library (src/lib.rs): no panicking constructs
// outside tests.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects
    )
)]

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use meshroot::ca::rate_limit;
use meshroot::cmd;
use meshroot::dev::DevOptions;
use meshroot::duration;
use meshroot::pki::KeyAlgorithm;
use meshroot::telemetry::logging::{self, LogFormat};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use zeroize::Zeroizing;

#[derive(Parser)]
#[command(name = "meshroot", version, about = "One certificate authority for every Istio mesh and cert-manager")]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value = "text", env = "MESHROOT_LOG_FORMAT")]
    log_format: LogFormat,
    /// Log level or filter (RUST_LOG overrides it).
    #[arg(long, global = true, default_value = "info", env = "MESHROOT_LOG_LEVEL")]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the CA locally with no cluster: state in a directory, static tokens.
    Dev(DevArgs),
    /// Run in Kubernetes: TokenReview, several meshes, root distribution.
    Serve(ServeArgs),
    /// Request a workload certificate as pilot-agent does, and verify it.
    Request(RequestArgs),
    /// Print meshroot's CRDs as YAML, or write them into a directory.
    Crds {
        /// Write one file per CRD here instead of printing.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Show or drive a zero-downtime root rotation (docs/rotation.md).
    Root(RootArgs),
    /// Offline PKI tasks.
    Pki {
        #[command(subcommand)]
        command: PkiCommand,
    },
    /// Measure CreateCertificate under load against the crypto ceiling (use a release build).
    Bench(BenchArgs),
    /// The benchmark's server process (started by `bench`).
    #[command(hide = true)]
    BenchServer {
        #[arg(long)]
        dir: PathBuf,
        /// Pin the process to this core.
        #[arg(long)]
        cpu: Option<usize>,
    },
}

#[derive(Args)]
struct BenchArgs {
    /// Length of each measured phase.
    #[arg(long, default_value = "10s", value_parser = duration::parse)]
    duration: time::Duration,
    /// Concurrent connections, one request in flight on each.
    #[arg(long, default_value = "64")]
    connections: usize,
    /// Distinct identities requesting at once in the burst (0: no burst).
    #[arg(long, default_value = "10000")]
    burst: usize,
    #[arg(long, default_value = "100")]
    burst_connections: usize,
    /// Intermediate key types to measure. Repeatable.
    #[arg(long = "signer", default_values = ["ecdsa-p256", "rsa-4096"])]
    signers: Vec<KeyAlgorithm>,
    /// Do not pin the server to core 0 and the load to core 1.
    #[arg(long)]
    no_pin: bool,
}

#[derive(Args)]
struct DevArgs {
    /// gRPC (Istio CA API) listen address.
    #[arg(long, default_value = "127.0.0.1:15012")]
    listen: SocketAddr,
    /// Metrics and health listen address.
    #[arg(long, default_value = "127.0.0.1:15014")]
    metrics_listen: SocketAddr,
    /// Directory holding the root, intermediate, serving certificate and tokens.
    #[arg(long, default_value = "./.meshroot")]
    state_dir: PathBuf,
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// Token file (TOKEN NAMESPACE SERVICEACCOUNT per line); default DIR/tokens.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// The cluster id clients send in `clusterid`.
    #[arg(long, default_value = "Kubernetes")]
    cluster_id: String,
    /// Lifetime when a request asks for none.
    #[arg(long, default_value = "24h", value_parser = duration::parse)]
    default_ttl: time::Duration,
    /// Longest lifetime issued; longer requests are clamped.
    #[arg(long, default_value = "90d", value_parser = duration::parse)]
    max_ttl: time::Duration,
    /// NAMESPACE/SERVICEACCOUNT allowed to impersonate (ztunnel). Repeatable.
    #[arg(long = "trusted-node-account", default_value = "istio-system/ztunnel")]
    trusted_node_accounts: Vec<String>,
    /// Extra DNS name or IP for the serving certificate. Repeatable.
    #[arg(long = "serving-name")]
    serving_names: Vec<String>,
    #[command(flatten)]
    rate_limits: RateLimitArgs,
}

/// CreateCertificate rate limits: `RATE/s,burst=N`, or `off`.
#[derive(Args)]
struct RateLimitArgs {
    /// Per identity certified (all pods of one service account).
    #[arg(long, env = "MESHROOT_IDENTITY_RATE_LIMIT", default_value = "50/s,burst=1000", value_parser = rate_limit::parse_limit)]
    identity_rate_limit: rate_limit::Limit,
    /// Per node the caller runs on (when its token names the node).
    #[arg(long, env = "MESHROOT_NODE_RATE_LIMIT", default_value = "100/s,burst=1000", value_parser = rate_limit::parse_limit)]
    node_rate_limit: rate_limit::Limit,
    /// Per peer IP address, checked before authentication (a node's ztunnel is one address).
    #[arg(long, env = "MESHROOT_PEER_RATE_LIMIT", default_value = "200/s,burst=2000", value_parser = rate_limit::parse_limit)]
    peer_rate_limit: rate_limit::Limit,
}

impl RateLimitArgs {
    fn limits(&self) -> rate_limit::RateLimits {
        rate_limit::RateLimits {
            identity: self.identity_rate_limit,
            node: self.node_rate_limit,
            peer: self.peer_rate_limit,
        }
    }
}

#[derive(Args)]
struct ServeArgs {
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
    #[arg(long, env = "MESHROOT_ROOT_SECRET", default_value = "meshroot-root-ca")]
    root_secret: String,
    /// Generate the root into that Secret if it does not exist (ECDSA P-256).
    #[arg(long, env = "MESHROOT_GENERATE_ROOT")]
    generate_root: bool,
    /// The local cluster id (`clusterid` header).
    #[arg(long, env = "MESHROOT_CLUSTER_ID", default_value = "Kubernetes")]
    cluster_id: String,
    /// Other names for the local cluster. Repeatable.
    #[arg(long = "cluster-alias", env = "MESHROOT_CLUSTER_ALIASES", value_delimiter = ',')]
    cluster_aliases: Vec<String>,
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
    /// Periodic re-sync of controllers (renewals, drift in istiod namespaces).
    #[arg(long, env = "MESHROOT_RESYNC", default_value = "60s", value_parser = duration::parse)]
    resync: time::Duration,
    /// How long readiness is down before shutting the listeners.
    #[arg(long, env = "MESHROOT_DRAIN_DELAY", default_value = "5s", value_parser = duration::parse)]
    drain_delay: time::Duration,
    /// Sign cert-manager CertificateRequests for meshroot's Issuers and ClusterIssuers.
    #[arg(long, env = "MESHROOT_CERT_MANAGER_ISSUER", default_value_t = true, action = clap::ArgAction::Set)]
    cert_manager_issuer: bool,
    /// Sign Kubernetes CertificateSigningRequests for meshroot's signer names.
    #[arg(long, env = "MESHROOT_KUBERNETES_CSR_SIGNER", default_value_t = true, action = clap::ArgAction::Set)]
    kubernetes_csr_signer: bool,
    #[command(flatten)]
    rate_limits: RateLimitArgs,
    /// Check the flags and environment, print the effective settings, and exit
    /// without contacting the cluster.
    #[arg(long)]
    check_config: bool,
}

#[derive(Args)]
struct RequestArgs {
    /// CA address, HOST:PORT; HOST is the TLS server name.
    #[arg(long)]
    ca_addr: String,
    /// Root certificate(s) to trust for the CA and the issued chain.
    #[arg(long)]
    root_cert: PathBuf,
    /// Bearer token.
    #[arg(long, env = "MESHROOT_TOKEN", hide_env_values = true, conflicts_with = "token_file")]
    token: Option<String>,
    /// File holding the bearer token.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// The SPIFFE ID to request.
    #[arg(long)]
    identity: String,
    #[arg(long, default_value = "ecdsa-p256")]
    key_type: KeyAlgorithm,
    #[arg(long, default_value = "24h", value_parser = duration::parse)]
    ttl: time::Duration,
    #[arg(long, default_value = "Kubernetes")]
    cluster_id: String,
    /// Output directory for key.pem, cert-chain.pem and root-cert.pem.
    #[arg(long, default_value = ".")]
    out: PathBuf,
}

#[derive(Args)]
struct RootArgs {
    /// meshroot's namespace, where the root Secret is.
    #[arg(long, short = 'n', env = "POD_NAMESPACE", default_value = "meshroot")]
    namespace: String,
    /// The root Secret.
    #[arg(long, env = "MESHROOT_ROOT_SECRET", default_value = "meshroot-root-ca")]
    secret: String,
    #[command(subcommand)]
    step: RootStep,
}

#[derive(Subcommand)]
enum RootStep {
    /// Show the roots and the rotation stage.
    Status,
    /// Create a new root in files (root-cert.pem, root-key.pem 0600), for `add` and `switch`.
    Generate {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = "ecdsa-p256")]
        key_type: KeyAlgorithm,
        #[arg(long, default_value = "3650d", value_parser = duration::parse)]
        lifetime: time::Duration,
    },
    /// Step 1: trust the new root beside the current one, everywhere.
    Add {
        #[arg(long)]
        cert: PathBuf,
    },
    /// Step 2: sign with the new root; intermediates are re-issued under it.
    Switch {
        #[arg(long)]
        cert: PathBuf,
        /// The new root's key; leave out for an offline root.
        #[arg(long)]
        key: Option<PathBuf>,
    },
    /// Step 3: stop trusting the old root, once no leaf of its chain is valid.
    Finish {
        /// The longest leaf lifetime issued under the old root.
        #[arg(long, default_value = "24h", value_parser = duration::parse)]
        leaf_lifetime: time::Duration,
        /// Skip the waiting and intermediate checks.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum PkiCommand {
    /// Create or import a root, and an Istio `cacerts` intermediate per mesh.
    Init(PkiInitArgs),
}

#[derive(Args)]
struct PkiInitArgs {
    /// Output directory (existing files are never overwritten).
    #[arg(long)]
    out: PathBuf,
    /// Import this root certificate instead of creating one.
    #[arg(long, requires = "root_key")]
    root_cert: Option<PathBuf>,
    /// The imported root's private key (PKCS#8, PKCS#1 or SEC1 PEM).
    #[arg(long, requires = "root_cert")]
    root_key: Option<PathBuf>,
    /// NAME[=TRUST_DOMAIN]; repeatable. Trust domain defaults to cluster.local.
    #[arg(long = "mesh", required = true)]
    meshes: Vec<cmd::pki_init::MeshArg>,
    /// Key type for created keys.
    #[arg(long, default_value = "ecdsa-p256")]
    key_type: KeyAlgorithm,
    #[arg(long, default_value = "3650d", value_parser = duration::parse)]
    root_lifetime: time::Duration,
    #[arg(long, default_value = "365d", value_parser = duration::parse)]
    intermediate_lifetime: time::Duration,
}

impl ServeArgs {
    fn into_options(self) -> anyhow::Result<meshroot::serve::ServeOptions> {
        let std_duration = |d: time::Duration| std::time::Duration::try_from(d).unwrap_or_default();
        Ok(meshroot::serve::ServeOptions {
            namespace: meshroot::serve::own_namespace(self.namespace)?,
            pod_name: self.pod_name.unwrap_or_else(cmd::serve::host_name),
            listen: self.listen,
            ops_listen: self.metrics_listen,
            root_secret: self.root_secret,
            generate_root: self.generate_root,
            cluster_id: self.cluster_id,
            cluster_aliases: self.cluster_aliases,
            token: meshroot::k8s::tokenreview::TokenReviewConfig {
                audiences: self.token_audiences,
                cache_ttl: std_duration(self.token_cache_ttl),
                max_entries: self.token_cache_size,
                ..Default::default()
            },
            service_name: self.service_name,
            serving_names: self.serving_names,
            lease_name: self.lease_name,
            resync: std_duration(self.resync),
            drain_delay: std_duration(self.drain_delay),
            cert_manager_issuer: self.cert_manager_issuer,
            kubernetes_csr_signer: self.kubernetes_csr_signer,
            rate_limits: self.rate_limits.limits(),
        })
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Threads inherit the CPU set, so pin before the runtime starts any.
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    match &cli.command {
        Command::BenchServer { cpu: Some(id), .. } => pin(*id),
        Command::Bench(a) if !a.no_pin && cores >= 2 => pin(1),
        _ => {}
    }
    if matches!(cli.command, Command::Bench(_)) {
        // Only the server process's audit lines matter; keep the report clean.
        logging::init(cli.log_format, "warn");
    } else {
        logging::init(cli.log_format, &cli.log_level);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command, cores)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn pin(id: usize) {
    if !core_affinity::set_for_current(core_affinity::CoreId { id }) {
        eprintln!("warning: could not pin to core {id}; figures may be noisier");
    }
}

async fn run(command: Command, cores: usize) -> anyhow::Result<()> {
    match command {
        Command::Bench(a) => {
            if cfg!(debug_assertions) {
                eprintln!("warning: this is a debug build; run `cargo run --release -- bench` for real figures");
            }
            let opts = meshroot::bench::BenchOptions {
                duration: std::time::Duration::try_from(a.duration)?,
                connections: a.connections.max(1),
                burst: a.burst,
                burst_connections: a.burst_connections.max(1),
                signers: a.signers,
                server_core: (!a.no_pin).then_some(0),
                cores,
            };
            print!("{}", meshroot::bench::run(&opts).await?);
            Ok(())
        }
        Command::BenchServer { dir, .. } => meshroot::bench::server::run(dir).await,
        Command::Dev(a) => {
            cmd::dev::run(DevOptions {
                listen: a.listen,
                ops_listen: a.metrics_listen,
                state_dir: a.state_dir,
                trust_domain: a.trust_domain,
                token_file: a.token_file,
                cluster_id: a.cluster_id,
                default_ttl: a.default_ttl,
                max_ttl: a.max_ttl,
                trusted_node_accounts: a.trusted_node_accounts,
                serving_names: a.serving_names,
                rate_limits: a.rate_limits.limits(),
            })
            .await
        }
        Command::Serve(a) if a.check_config => {
            print!("{}", cmd::serve::describe(&a.into_options()?));
            Ok(())
        }
        Command::Serve(a) => cmd::serve::run(a.into_options()?).await,
        Command::Request(a) => {
            let outcome = cmd::request::run(&cmd::request::RequestOptions {
                ca_addr: a.ca_addr,
                root_cert: a.root_cert,
                token: a.token.map(Zeroizing::new),
                token_file: a.token_file,
                identity: a.identity,
                key_type: a.key_type,
                ttl: a.ttl,
                cluster_id: a.cluster_id,
                out: a.out,
            })
            .await?;
            print!("{}", cmd::request::summary(&outcome));
            Ok(())
        }
        Command::Crds { out } => {
            for (file, crd) in meshroot::api::crds() {
                let yaml = meshroot::api::crd_yaml(&crd)?;
                match &out {
                    Some(dir) => {
                        std::fs::create_dir_all(dir)?;
                        std::fs::write(dir.join(&file), yaml)?;
                        println!("wrote {}", dir.join(&file).display());
                    }
                    None => print!("{yaml}"),
                }
            }
            Ok(())
        }
        Command::Root(a) => {
            use cmd::root::RootAction;
            let action = match a.step {
                RootStep::Generate { out, key_type, lifetime } => {
                    print!("{}", cmd::root::generate(&out, key_type, lifetime)?);
                    return Ok(());
                }
                RootStep::Status => RootAction::Status,
                RootStep::Add { cert } => RootAction::Add { cert },
                RootStep::Switch { cert, key } => RootAction::Switch { cert, key },
                RootStep::Finish { leaf_lifetime, force } => RootAction::Finish { leaf_lifetime, force },
            };
            let client = kube::Client::try_default().await.context("connecting to the Kubernetes API (KUBECONFIG)")?;
            print!("{}", cmd::root::run(client, &a.namespace, &a.secret, action).await?);
            Ok(())
        }
        Command::Pki { command: PkiCommand::Init(a) } => {
            let outcome = cmd::pki_init::run(&cmd::pki_init::PkiInitOptions {
                out: a.out,
                root_cert: a.root_cert,
                root_key: a.root_key,
                meshes: a.meshes,
                key_type: a.key_type,
                root_lifetime: a.root_lifetime,
                intermediate_lifetime: a.intermediate_lifetime,
            })?;
            for line in outcome.lines {
                println!("{line}");
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshroot::ca::rate_limit::{Limit, RateLimits};

    /// The limits a bare `meshroot <command>` runs with: the clap defaults,
    /// with no MESHROOT_*_RATE_LIMIT variable in the environment.
    fn default_limits(command: &str) -> RateLimits {
        for var in ["MESHROOT_IDENTITY_RATE_LIMIT", "MESHROOT_NODE_RATE_LIMIT", "MESHROOT_PEER_RATE_LIMIT"] {
            assert!(std::env::var_os(var).is_none(), "{var} is set: the defaults cannot be tested");
        }
        match Cli::try_parse_from(["meshroot", command]).unwrap().command {
            Command::Serve(a) => a.rate_limits.limits(),
            Command::Dev(a) => a.rate_limits.limits(),
            _ => unreachable!(),
        }
    }

    #[test]
    fn serve_and_dev_rate_limit_by_default() {
        let expected = RateLimits {
            identity: Limit { per_second: 50, burst: 1000 },
            node: Limit { per_second: 100, burst: 1000 },
            peer: Limit { per_second: 200, burst: 2000 },
        };
        for command in ["serve", "dev"] {
            assert_eq!(default_limits(command), expected, "meshroot {command}");
        }
        // The library's default (embedders, the in-process tests) is the same.
        assert_eq!(RateLimits::default(), expected);
    }
}
