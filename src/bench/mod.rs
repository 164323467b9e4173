//! `meshroot bench`: CreateCertificate under load, over TLS, against the
//! production server stack in its own process (pinned to one core), with
//! the crypto ceiling measured in the same run.

pub mod ceiling;
pub mod fixture;
pub mod h2load;
pub mod instructions;
pub mod load;
pub mod server;
pub mod stats;

use crate::pki::{KeyAlgorithm, TrustBundle};
use anyhow::{Context, bail};
use stats::{Percentiles, ProcessUsage, human, process_usage};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What `meshroot bench` measures and how hard: phase length, connections,
/// burst size, the intermediate key types, and core pinning.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Length of each measured phase.
    pub duration: Duration,
    /// Concurrent connections, one request in flight each.
    pub connections: usize,
    /// Distinct identities in the burst.
    pub burst: usize,
    /// Connections the burst's requests are spread over.
    pub burst_connections: usize,
    /// Intermediate key types to measure, one full run each; the burst runs with the first.
    pub signers: Vec<KeyAlgorithm>,
    /// Core for the server process and the ceiling; the load runs on the others.
    pub server_core: Option<usize>,
    /// The machine's cores (counted before anything was pinned).
    pub cores: usize,
    /// A command line the server's own is appended to (a profiler's); empty for none.
    pub server_wrapper: Vec<String>,
    /// nghttp2's h2load, to load a server with its rate limits off as well.
    pub h2load: Option<PathBuf>,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            duration: Duration::from_secs(10),
            connections: 64,
            burst: 10_000,
            burst_connections: 100,
            signers: vec![KeyAlgorithm::EcdsaP256, KeyAlgorithm::Rsa4096],
            server_core: Some(0),
            cores: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            server_wrapper: Vec::new(),
            h2load: None,
        }
    }
}

/// Distinct identities in the steady phases (each has its own CSR).
const POOL: usize = 256;

/// Slices of the steady phase, each preceded by a slice of the ceiling.
const ROUNDS: usize = 5;

/// The server process; it exits when its stdin closes.
struct ServerProcess {
    child: Child,
    addr: String,
}

impl ServerProcess {
    /// Starts `meshroot bench-server` over `dir`, pinned to `core`, under `wrapper` (a command
    /// line the server's own is appended to, such as valgrind's) when it is not empty, with
    /// production's rate limits or none.
    fn start(dir: &Path, core: Option<usize>, wrapper: &[String], rate_limits: bool) -> anyhow::Result<Self> {
        let files = fixture::Files { dir: dir.to_path_buf() };
        for stale in [files.ready(), files.counts()] {
            match std::fs::remove_file(&stale) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(e).with_context(|| format!("removing {}", stale.display()));
                }
                _ => {}
            }
        }
        let exe = std::env::current_exe().context("locating the meshroot binary")?;
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg(exe);
                cmd
            }
            None => Command::new(exe),
        };
        cmd.args(["--log-level", "info", "bench-server", "--dir"]).arg(dir);
        if let Some(core) = core {
            cmd.args(["--cpu", &core.to_string()]);
        }
        if !rate_limits {
            cmd.arg("--rate-limits=false");
        }
        let mut child =
            cmd.stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().with_context(|| {
                format!(
                    "starting the bench server{}",
                    wrapper.first().map(|w| format!(" under {w}")).unwrap_or_default()
                )
            })?;
        let ready = files.ready();
        // Under valgrind the server starts some fifty times slower.
        let deadline =
            Instant::now() + if wrapper.is_empty() { Duration::from_secs(30) } else { Duration::from_secs(180) };
        loop {
            if let Ok(port) = std::fs::read_to_string(&ready)
                && !port.is_empty()
            {
                return Ok(Self { child, addr: format!("localhost:{}", port.trim()) });
            }
            if let Some(status) = child.try_wait()? {
                bail!("the bench server exited: {status}");
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("the bench server did not start in time");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn usage(&self) -> ProcessUsage {
        process_usage(self.child.id()).unwrap_or_default()
    }

    /// Stops the server; returns the requests it received, the certificates it issued and the
    /// requests it refused.
    fn stop(mut self, dir: &Path) -> anyhow::Result<Counts> {
        drop(self.child.stdin.take());
        let status = self.child.wait()?;
        if !status.success() {
            bail!("the bench server exited with {status}");
        }
        let path = fixture::Files { dir: dir.to_path_buf() }.counts();
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let mut counts = text.split_whitespace().map(str::parse::<u64>);
        match (counts.next(), counts.next(), counts.next(), counts.next()) {
            (Some(Ok(requests)), Some(Ok(issued)), Some(Ok(refused)), None) => Ok(Counts { requests, issued, refused }),
            _ => bail!("{} does not hold three counts: {text:?}", path.display()),
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// What the server counted over its life.
#[derive(Clone, Copy, Debug)]
struct Counts {
    /// Requests received.
    requests: u64,
    /// Certificates issued.
    issued: u64,
    /// Requests refused, for any reason.
    refused: u64,
}

/// One phase's figures, as printed.
struct Phase {
    outcome: load::Outcome,
    percentiles: Percentiles,
    server_cpu: Duration,
    /// The part of `server_cpu` spent in the kernel.
    server_system: Duration,
    /// The load generator's CPU time (this process).
    client_cpu: Duration,
}

impl Phase {
    /// Consecutive slices as one phase.
    fn merge(slices: Vec<Phase>) -> Phase {
        let mut outcome = load::Outcome::default();
        let (mut server_cpu, mut server_system, mut client_cpu) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
        for s in slices {
            outcome.latencies.extend(s.outcome.latencies);
            outcome.lags.extend(s.outcome.lags);
            outcome.first_error = outcome.first_error.or(s.outcome.first_error);
            outcome.errors += s.outcome.errors;
            outcome.elapsed += s.outcome.elapsed;
            server_cpu += s.server_cpu;
            server_system += s.server_system;
            client_cpu += s.client_cpu;
        }
        let percentiles = Percentiles::of(&mut outcome.latencies);
        Phase { outcome, percentiles, server_cpu, server_system, client_cpu }
    }

    fn line(&self, label: &str) -> String {
        let p = &self.percentiles;
        let certs = self.outcome.completed().max(1) as f64;
        let per_cert = self.server_cpu.as_secs_f64() * 1e6 / certs;
        let system_per_cert = self.server_system.as_secs_f64() * 1e6 / certs;
        let secs = self.outcome.elapsed.as_secs_f64().max(1e-9);
        format!(
            "  {label}: {:.0} certs/s, {} errors; latency p50 {} p90 {} p99 {} p99.9 {}; server CPU {per_cert:.0} µs/cert ({system_per_cert:.0} µs in the kernel), busy {:.0}%; load generator busy {:.0}%",
            self.outcome.throughput(),
            self.outcome.errors,
            human(p.p50),
            human(p.p90),
            human(p.p99),
            human(p.p999),
            100.0 * self.server_cpu.as_secs_f64() / secs,
            100.0 * self.client_cpu.as_secs_f64() / secs,
        ) + &first_error(&self.outcome)
    }
}

/// The first error of a phase, as a line of its own after the phase's, when there was one.
fn first_error(outcome: &load::Outcome) -> String {
    outcome.first_error.as_ref().map(|e| format!("\n    first error: {e}")).unwrap_or_default()
}

async fn measured(server: &ServerProcess, run: impl Future<Output = load::Outcome>) -> Phase {
    let own = || process_usage(std::process::id()).unwrap_or_default();
    let (before, client_before) = (server.usage(), own());
    let mut outcome = run.await;
    let (after, client_after) = (server.usage(), own());
    let percentiles = Percentiles::of(&mut outcome.latencies);
    Phase {
        outcome,
        percentiles,
        server_cpu: after.cpu.saturating_sub(before.cpu),
        server_system: after.system.saturating_sub(before.system),
        client_cpu: client_after.cpu.saturating_sub(client_before.cpu),
    }
}

/// Runs every scenario and returns the report.
pub async fn run(opts: &BenchOptions) -> anyhow::Result<String> {
    let cores = opts.cores;
    let server_core = opts.server_core.filter(|_| cores >= 2);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "meshroot bench: {cores} cores; server {}; {} connections; {} s phases{}",
        match (server_core, opts.server_core) {
            (Some(c), _) => format!("pinned to core {c}, load generator on the others"),
            (None, None) => "unpinned (--pin=false)".to_string(),
            (None, Some(_)) => "unpinned (fewer than 2 cores)".to_string(),
        },
        opts.connections,
        opts.duration.as_secs_f64(),
        match opts.server_wrapper.is_empty() {
            true => String::new(),
            false => format!(
                "; server run under `{}`, so its timings and memory are not meshroot's",
                opts.server_wrapper.join(" ")
            ),
        }
    );
    let identities: Arc<Vec<String>> = Arc::new((0..opts.burst.max(POOL)).map(fixture::identity).collect());
    let rsa_csrs = Arc::new(fixture::csrs(KeyAlgorithm::Rsa2048, POOL)?);
    let p256_csrs = Arc::new(fixture::csrs(KeyAlgorithm::EcdsaP256, POOL)?);
    for (n, signer) in opts.signers.iter().enumerate() {
        let dir = tempfile::Builder::new().prefix("meshroot-bench-").tempdir()?;
        let (files, chain, root_pem) = fixture::create(dir.path(), *signer, opts.burst.max(POOL))?;
        let _ = writeln!(out, "\nsigner: {signer} intermediate");
        let server = ServerProcess::start(&files.dir, server_core, &opts.server_wrapper, true)?;
        let mut clients = load::connect_all(&server.addr, root_pem.as_bytes(), opts.connections).await?;
        load::check_one(&mut clients[0], &rsa_csrs, &TrustBundle::from_pem(root_pem.as_bytes())?).await?;
        load::closed_loop(&clients, rsa_csrs.clone(), Duration::from_secs(1).min(opts.duration)).await;

        // The machine's speed drifts (shared hosts), so the ceiling is
        // measured in slices between slices of the steady load, on the
        // server's core while the server idles, and both are summed.
        let crypto = |csrs: &Arc<Vec<String>>, duration: Duration| {
            let (chain, csrs, identities) = (chain.clone(), csrs.clone(), identities.clone());
            ceiling::on_core(server_core, move || ceiling::measure(&chain, &csrs, &identities, duration))
        };
        let mut ceilings = Vec::with_capacity(ROUNDS);
        let mut slices = Vec::with_capacity(ROUNDS);
        for _ in 0..ROUNDS {
            let slice = (opts.duration / ROUNDS as u32).max(Duration::from_millis(200));
            ceilings.push(crypto(&rsa_csrs, slice / 3)?);
            slices.push(measured(&server, load::closed_loop(&clients, rsa_csrs.clone(), slice)).await);
        }
        let ceiling = ceilings.iter().sum::<f64>() / ceilings.len() as f64;
        let _ = writeln!(
            out,
            "  crypto ceiling, 1 core (parse + verify an RSA-2048 CSR, sign and encode the leaf): {ceiling:.0} certs/s ({} each; slices {})",
            human(Duration::from_secs_f64(1.0 / ceiling.max(1e-9))),
            ceilings.iter().map(|c| format!("{c:.0}")).collect::<Vec<_>>().join(", ")
        );
        let short_slice = (opts.duration / 10).max(Duration::from_millis(200));
        let primitives = |csrs: &Arc<Vec<String>>| {
            let (signer, chain, csrs, identity) = (*signer, chain.clone(), csrs.clone(), identities[0].clone());
            ceiling::on_core(server_core, move || {
                ceiling::measure_primitives(signer, &chain, &csrs, &identity, short_slice)
            })
        };
        let rsa_primitives = primitives(&rsa_csrs)?;
        let _ = writeln!(
            out,
            "  primitive ceiling, 1 core (verify an RSA-2048 CSR's signature, sign a leaf-sized TBS; nothing else): {rsa_primitives:.0} certs/s ({} each)",
            human(Duration::from_secs_f64(1.0 / rsa_primitives.max(1e-9)))
        );
        let peak = Phase::merge(slices);
        let _ = writeln!(out, "{}", peak.line("steady, RSA-2048 CSRs (pilot-agent)"));
        let served = peak.outcome.throughput();
        let _ = writeln!(
            out,
            "  ratio: served {served:.0} certs/s on 1 server core = {:.0}% of the 1-core crypto ceiling ({ceiling:.0} certs/s), {:.0}% of the primitive ceiling ({rsa_primitives:.0} certs/s)",
            100.0 * served / ceiling.max(1e-9),
            100.0 * served / rsa_primitives.max(1e-9)
        );
        let half_rate = served / 2.0;
        let half = measured(&server, load::open_loop(&clients, rsa_csrs.clone(), half_rate, opts.duration)).await;
        let _ = writeln!(out, "{}", half.line(&format!("half of peak, paced at {half_rate:.0}/s")));
        let lag = Percentiles::of(&mut half.outcome.lags.clone());
        let _ = writeln!(
            out,
            "    of which the load generator's: requests left it p50 {} p99 {} after they were due (including any wait behind the connection's previous request)",
            human(lag.p50),
            human(lag.p99)
        );
        // Whether a certificate's work itself costs more once the core has idled, as it does
        // between requests at half of peak, apart from anything the server does per wake-up;
        // spinning through the same gap tells the idle state's share from the gap's.
        let gap = Duration::from_secs_f64(1.0 / half_rate.max(1.0))
            .clamp(Duration::from_micros(50), Duration::from_millis(10));
        // A thousand per gap at the default 10 s phases; fewer for short runs.
        let samples = (opts.duration.as_millis() / 10).clamp(20, 1000) as usize;
        let after = |gap: ceiling::Gap| {
            let (chain, csrs, identities) = (chain.clone(), rsa_csrs.clone(), identities.clone());
            ceiling::on_core(server_core, move || ceiling::measure_after_gap(&chain, &csrs, &identities, gap, samples))
        };
        let back_to_back = after(ceiling::Gap::None)?;
        let spun = after(ceiling::Gap::Spin(gap))?;
        let slept = after(ceiling::Gap::Sleep(gap))?;
        let times = |d: Duration| d.as_secs_f64() / back_to_back.as_secs_f64().max(1e-9);
        let _ = writeln!(
            out,
            "    the crypto ceiling's work alone, one certificate at a time (p50): {} back to back; {} ({:.2}x) after spinning {}; {} ({:.2}x) after sleeping as long, the core idle",
            human(back_to_back),
            human(spun),
            times(spun),
            human(gap),
            human(slept),
            times(slept)
        );
        let p256_ceiling = crypto(&p256_csrs, short_slice)?;
        let p256_primitives = primitives(&p256_csrs)?;
        let p256 = measured(&server, load::closed_loop(&clients, p256_csrs.clone(), opts.duration / 2)).await;
        let _ = writeln!(out, "{}", p256.line("steady, P-256 CSRs (ztunnel)"));
        let _ = writeln!(
            out,
            "  ratio for P-256 CSRs: {:.0}% of their 1-core crypto ceiling ({p256_ceiling:.0} certs/s), {:.0}% of their primitive ceiling ({p256_primitives:.0} certs/s)",
            100.0 * p256.outcome.throughput() / p256_ceiling.max(1e-9),
            100.0 * p256.outcome.throughput() / p256_primitives.max(1e-9)
        );

        // The burst runs once, with the default signer.
        if n == 0 && opts.burst > 0 {
            let burst_csrs = Arc::new(fixture::csrs(KeyAlgorithm::EcdsaP256, opts.burst)?);
            let burst_clients = load::connect_all(&server.addr, root_pem.as_bytes(), opts.burst_connections).await?;
            let b = measured(&server, load::burst(&burst_clients, burst_csrs)).await;
            let burst = format!(
                "  burst: {} identities at once over {} connections: drained in {}, {} errors; latency p50 {} p99 {} max {}",
                opts.burst,
                opts.burst_connections,
                human(b.outcome.elapsed),
                b.outcome.errors,
                human(b.percentiles.p50),
                human(b.percentiles.p99),
                human(b.percentiles.max),
            ) + &first_error(&b.outcome);
            let _ = writeln!(out, "{burst}");
        }
        let usage = server.usage();
        let _ = writeln!(
            out,
            "  server RSS: {:.1} MiB now, {:.1} MiB at its peak",
            usage.rss_kib as f64 / 1024.0,
            usage.peak_rss_kib as f64 / 1024.0
        );
        drop(clients);
        server.stop(&files.dir)?;

        if let Some(h2load) = &opts.h2load {
            // Measured again just before: the machine may have drifted since.
            let ceilings = [(&rsa_csrs, primitives(&rsa_csrs)?), (&p256_csrs, primitives(&p256_csrs)?)];
            independent(&mut out, opts, h2load, &files, server_core, ceilings).await?;
        }
    }
    Ok(out)
}

/// Whether the server issued a certificate for every request of an h2load run: it refused none,
/// and issued at least the `done` requests h2load saw answered. (It may have received more: those
/// cut off in flight when h2load stopped and closed its connections.)
fn all_issued(done: u64, counts: Counts) -> anyhow::Result<()> {
    let Counts { requests, issued, refused } = counts;
    if refused > 0 || issued < done {
        bail!(
            "h2load's requests were not all issued: h2load saw {done} answered, the server received {requests}, issued {issued} and refused {refused}"
        );
    }
    Ok(())
}

/// The steady phases again, with h2load as the load generator, against a server with its rate
/// limits off (h2load sends one token, so one identity). h2load cannot see gRPC's status, so
/// the server's own counts must show no request refused ([`all_issued`]).
async fn independent(
    out: &mut String,
    opts: &BenchOptions,
    h2load: &Path,
    files: &fixture::Files,
    server_core: Option<usize>,
    ceilings: [(&Arc<Vec<String>>, f64); 2],
) -> anyhow::Result<()> {
    let server = ServerProcess::start(&files.dir, server_core, &opts.server_wrapper, false)?;
    let mut done = 0;
    for ((csrs, primitive_ceiling), (label, duration)) in
        ceilings.into_iter().zip([("RSA-2048", opts.duration), ("P-256", opts.duration / 2)])
    {
        let csr = csrs.first().context("no CSRs")?;
        let body_file = files.dir.join("h2load-body");
        std::fs::write(&body_file, h2load::grpc_body(csr)?).context("writing h2load's request body")?;
        let own = || process_usage(std::process::id()).unwrap_or_default();
        let (before, client_before) = (server.usage(), own());
        let report =
            h2load::run(h2load, &server.addr, &fixture::token(0), &body_file, opts.connections, duration).await?;
        let (after, client_after) = (server.usage(), own());
        done += report.done;
        let certs = report.done.max(1) as f64;
        let server_cpu = after.cpu.saturating_sub(before.cpu);
        let client_cpu = client_after.waited_children_cpu.saturating_sub(client_before.waited_children_cpu);
        let _ = writeln!(
            out,
            "  h2load, {label} CSRs, {} connections: {:.0} certs/s = {:.0}% of the primitive ceiling measured before the h2load runs ({primitive_ceiling:.0} certs/s); latency mean {} max {}; server CPU {:.0} µs/cert ({:.0} µs in the kernel); h2load CPU {:.0} µs/cert",
            opts.connections,
            report.rate,
            100.0 * report.rate / primitive_ceiling.max(1e-9),
            human(report.mean),
            human(report.max),
            server_cpu.as_secs_f64() * 1e6 / certs,
            after.system.saturating_sub(before.system).as_secs_f64() * 1e6 / certs,
            client_cpu.as_secs_f64() * 1e6 / certs,
        );
        if report.failed > 0 || report.succeeded != report.done {
            bail!(
                "h2load saw failures: {} of {} requests done succeeded, {} failed",
                report.succeeded,
                report.done,
                report.failed
            );
        }
    }
    let counts = server.stop(&files.dir)?;
    let _ = writeln!(
        out,
        "  h2load: the server received {} requests, issued {} certificates and refused {}",
        counts.requests, counts.issued, counts.refused
    );
    all_issued(done, counts)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{Counts, all_issued};

    /// gRPC refusals are HTTP 200 to h2load: only the server's counts tell them.
    #[test]
    fn an_h2load_run_passes_only_if_the_server_issued_its_requests() {
        let counts = |requests, issued, refused| Counts { requests, issued, refused };
        all_issued(1000, counts(1000, 1000, 0)).unwrap();
        // Cut off in flight when h2load stopped: received, never answered, never refused.
        all_issued(1000, counts(1064, 1000, 0)).unwrap();
        let refused = all_issued(1000, counts(1001, 1000, 1)).unwrap_err().to_string();
        assert!(refused.contains("received 1001, issued 1000 and refused 1"), "{refused}");
        // Answered but not issued.
        assert!(all_issued(1000, counts(1000, 999, 0)).is_err());
    }
}
