//! `meshroot bench` (cargo feature `bench`): CreateCertificate under load
//! against the crypto ceiling, the load on one core and the server, a child
//! process (`bench-server`), on the other.

use crate::duration;
use crate::pki::KeyAlgorithm;
use std::path::PathBuf;

/// The flags of `meshroot bench`.
#[derive(clap::Args)]
pub struct Args {
    /// Length of each measured phase.
    #[arg(long, default_value = "10s", value_parser = duration::parse)]
    duration: time::Duration,
    /// Concurrent connections, one request in flight on each.
    #[arg(long, default_value = "64")]
    connections: usize,
    /// Distinct identities requesting at once in the burst (0: no burst).
    #[arg(long, default_value = "10000")]
    burst: usize,
    /// Connections the burst's requests are spread over.
    #[arg(long, default_value = "100")]
    burst_connections: usize,
    /// Intermediate key types to measure. Repeatable.
    #[arg(long = "signer", default_values = ["ecdsa-p256", "rsa-4096"], value_parser = super::key_algorithms())]
    signers: Vec<KeyAlgorithm>,
    /// Pin the server to core 0 and the load to core 1 (`--pin=false`: let the scheduler place them).
    #[arg(long, default_value_t = true, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pin: bool,
    /// Count the server's instructions per certificate under callgrind (valgrind) instead of
    /// timing it: a figure that does not drift with the machine's load. Uses the first --signer.
    #[arg(long, default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    instructions: bool,
    /// With --instructions: requests counted per CSR type (after as many as a warm-up).
    #[arg(long, default_value = "2000", requires = "instructions")]
    requests: usize,
    /// With --instructions: keep callgrind's dumps in this directory, for callgrind_annotate.
    #[arg(long, value_name = "DIR", requires = "instructions")]
    keep_profile: Option<PathBuf>,
    /// Run the server under this command, split at spaces, such as
    /// "valgrind --tool=massif --massif-out-file=massif.out" to see what holds its memory.
    #[arg(long, value_name = "COMMAND", conflicts_with = "instructions")]
    server_wrapper: Option<String>,
    /// Also load the server with nghttp2's h2load at this path (an independent load generator,
    /// `scripts/install-h2load.sh`), against a server with its rate limits off: h2load sends
    /// one token.
    #[arg(long, value_name = "PATH", conflicts_with = "instructions")]
    h2load: Option<PathBuf>,
}

/// The benchmark's server process.
#[derive(clap::Args)]
pub struct ServerArgs {
    /// The fixture directory the benchmark prepared (certificates, keys, tokens).
    #[arg(long)]
    dir: PathBuf,
    /// Pin the process to this core.
    #[arg(long)]
    cpu: Option<usize>,
    /// Production's default rate limits (`--rate-limits=false`: none, for the h2load phase, whose
    /// requests all carry one token).
    #[arg(long, default_value_t = true, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    rate_limits: bool,
}

/// The machine's cores, counted once: the count follows the process's CPU set, which
/// [`pin_load`] narrows to one core before the report asks (it said "1 cores" and left the
/// server unpinned).
fn cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
}

/// Pins the load generator to core 1 (threads inherit the CPU set, so this
/// runs before the runtime starts any).
pub fn pin_load(args: &Args) {
    if args.pin && cores() >= 2 {
        pin(1);
    }
}

/// Pins the server process to the core it was given.
pub fn pin_server(args: &ServerArgs) {
    if let Some(id) = args.cpu {
        pin(id);
    }
}

fn pin(id: usize) {
    if !core_affinity::set_for_current(core_affinity::CoreId { id }) {
        eprintln!("warning: could not pin to core {id}; figures may be noisier");
    }
}

/// `meshroot bench`: runs every scenario and prints the report.
pub async fn run(args: Args) -> anyhow::Result<()> {
    if cfg!(debug_assertions) {
        eprintln!(
            "warning: this is a debug build; run `cargo run --release --features bench -- bench` for real figures"
        );
    }
    if args.instructions {
        let opts = crate::bench::instructions::InstructionOptions {
            requests: args.requests.max(1),
            connections: args.connections.max(1),
            signer: args.signers.first().copied().unwrap_or(KeyAlgorithm::EcdsaP256),
            keep: args.keep_profile,
        };
        print!("{}", crate::bench::instructions::run(&opts).await?);
        return Ok(());
    }
    let opts = crate::bench::BenchOptions {
        duration: std::time::Duration::try_from(args.duration)?,
        connections: args.connections.max(1),
        burst: args.burst,
        burst_connections: args.burst_connections.max(1),
        signers: args.signers,
        server_core: args.pin.then_some(0),
        cores: cores(),
        server_wrapper: args
            .server_wrapper
            .map(|w| w.split_whitespace().map(String::from).collect())
            .unwrap_or_default(),
        h2load: args.h2load,
    };
    print!("{}", crate::bench::run(&opts).await?);
    Ok(())
}

/// `meshroot bench-server`: the server process `bench` starts; runs until its stdin closes.
pub async fn run_server(args: ServerArgs) -> anyhow::Result<()> {
    crate::bench::server::run(args.dir, args.rate_limits).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pinning (this test's thread only) does not change the count the report uses.
    #[test]
    fn the_core_count_is_taken_before_pinning() {
        let before = cores();
        pin(0);
        assert_eq!(cores(), before);
        assert!(before >= 1);
    }
}
