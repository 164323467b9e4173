//! `meshroot bench --instructions`: the server's instructions per certificate, counted by
//! callgrind rather than timed, so a figure taken on a noisy shared machine is the same on a
//! quiet one. The same server process as the timed bench runs under
//! `valgrind --tool=callgrind`; after a warm-up its counters are zeroed, a fixed number of
//! requests is sent, and the counts are dumped and split by where the instructions ran.
//!
//! Callgrind counts user-space instructions only: system calls and the kernel's network stack
//! are not in these figures (the timed bench has them).

use super::{ServerProcess, fixture, load};
use crate::pki::KeyAlgorithm;
use anyhow::{Context, bail};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

/// What `--instructions` counts.
#[derive(Clone, Debug)]
pub struct InstructionOptions {
    /// Requests counted per CSR type, after as many again as a warm-up.
    pub requests: usize,
    /// Concurrent connections, one request in flight each.
    pub connections: usize,
    /// The intermediate's key type.
    pub signer: KeyAlgorithm,
    /// Where callgrind's dumps are kept for `callgrind_annotate`; a temporary directory when `None`.
    pub keep: Option<PathBuf>,
}

/// Where instructions ran, by the function they were counted in (after inlining), in the order
/// the report prints them. The first area whose prefix a function's name starts with takes it.
const AREAS: &[(&str, &[&str])] = &[
    // aws-lc's assembly keeps its own names: P-256 field arithmetic, AES-GCM, bignums, SHA-2.
    (
        "cryptography (aws-lc: signatures, hashes, AES-GCM)",
        &[
            "aws_lc_",
            "aws_lc_rs::",
            "__ecp_",
            "ecp_",
            "_aesni",
            "aesni_",
            "aead_",
            "bn_",
            "__bn_",
            "Lbignum",
            "bignum_",
            "beeu_",
            "sha256_block",
            "sha512_block",
            "gcm_",
            "_x86_64",
            "rsaz_",
            "__rsaz",
            "CRYPTO_",
            "ChaCha20",
            "chacha20",
            "poly1305",
        ],
    ),
    ("TLS records (rustls)", &["rustls::", "tokio_rustls::"]),
    ("HTTP/2 (h2, hpack)", &["h2::"]),
    (
        "gRPC and HTTP (tonic, hyper, tower, http)",
        &["tonic::", "hyper::", "hyper_util::", "tower::", "http::", "http_body"],
    ),
    ("protobuf (prost)", &["prost::", "prost_types::"]),
    ("certificate encoding (rcgen, yasna)", &["rcgen::", "yasna::"]),
    (
        "CSR and PEM parsing (x509-parser, der, base64)",
        &["x509_parser::", "der_parser::", "asn1_rs::", "nom::", "rustls_pki_types::", "base64::"],
    ),
    (
        "allocation (malloc, free)",
        &[
            "malloc",
            "free",
            "realloc",
            "calloc",
            "_int_",
            "cfree",
            "tcache",
            "unlink_chunk",
            "alloc::alloc",
            "__rust_alloc",
            "__rust_dealloc",
            "__rust_realloc",
            "__rdl_",
        ],
    ),
    ("copying (memcpy, memmove, memset)", &["__mem", "mem", "__nss_database_lookup"]),
    ("async runtime (tokio, mio)", &["tokio::", "mio::"]),
    (
        "logging, audit and metrics (tracing, prometheus)",
        &["tracing", "prometheus::", "meshroot_core::telemetry", "sharded_slab::", "nu_ansi_term::", "serde_json::"],
    ),
    ("formatting (core::fmt)", &["core::fmt", "alloc::fmt", "<&T as core::fmt"]),
    ("meshroot (policy, rate limits, authentication)", &["meshroot"]),
];

/// The area a function belongs to: the label of [`AREAS`] or "other".
pub fn area_of(function: &str) -> &'static str {
    let name = function.trim_start_matches('<');
    let name = name.strip_prefix("core::ptr::drop_in_place<").unwrap_or(name).trim_start_matches('<');
    AREAS
        .iter()
        .find(|(_, prefixes)| prefixes.iter().any(|p| name.starts_with(p)))
        .map_or("other (std, core, glue)", |(label, _)| label)
}

/// Instructions per function, read from one callgrind output file.
#[derive(Debug, Default, PartialEq)]
pub struct Counts {
    /// The file's total (its `summary:` or `totals:` line).
    pub total: u64,
    /// Instructions counted in each function itself (self cost).
    pub by_function: BTreeMap<String, u64>,
}

/// Parses callgrind's output format (events `Ir` only, the tool's default): `fn=` lines name the
/// function the following cost lines belong to; the cost line after a `calls=` line is the
/// callee's inclusive cost and is not the caller's own.
pub fn parse(text: &str) -> anyhow::Result<Counts> {
    let mut counts = Counts::default();
    let mut names: BTreeMap<String, String> = BTreeMap::new();
    let mut current: Option<String> = None;
    let mut skip_next_cost = false;
    let mut total = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("fn=") {
            current = Some(resolve(rest, &mut names));
            continue;
        }
        if let Some(rest) = line.strip_prefix("summary:").or_else(|| line.strip_prefix("totals:")) {
            total = rest.split_whitespace().next().and_then(|v| v.parse::<u64>().ok());
            continue;
        }
        if line.starts_with("calls=") {
            skip_next_cost = true;
            continue;
        }
        let first = line.chars().next();
        let is_cost = matches!(first, Some('0'..='9' | '+' | '-' | '*'));
        if !is_cost {
            // Names of callees, files and objects may be defined in compressed form here too.
            for prefix in ["cfn=", "cfi=", "cfl=", "fi=", "fe=", "fl=", "ob=", "cob="] {
                if let Some(rest) = line.strip_prefix(prefix)
                    && prefix == "cfn="
                {
                    resolve(rest, &mut names);
                }
            }
            continue;
        }
        if skip_next_cost {
            skip_next_cost = false;
            continue;
        }
        let cost = line.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        if let Some(function) = &current {
            *counts.by_function.entry(function.clone()).or_default() += cost;
        }
    }
    counts.total = total.context("no summary or totals line: not a callgrind output file")?;
    Ok(counts)
}

/// A compressed name, `(id) name` the first time and `(id)` after it.
fn resolve(spec: &str, names: &mut BTreeMap<String, String>) -> String {
    let spec = spec.trim();
    match spec.strip_prefix('(').and_then(|r| r.split_once(')')) {
        Some((id, rest)) if !rest.trim().is_empty() => {
            names.insert(id.to_string(), rest.trim().to_string());
            rest.trim().to_string()
        }
        Some((id, _)) => names.get(id).cloned().unwrap_or_else(|| format!("({id})")),
        None => spec.to_string(),
    }
}

/// Instructions by area, largest first, and their total.
pub fn by_area(counts: &Counts) -> Vec<(&'static str, u64)> {
    let mut areas: BTreeMap<&'static str, u64> = BTreeMap::new();
    for (function, cost) in &counts.by_function {
        *areas.entry(area_of(function)).or_default() += cost;
    }
    let mut areas: Vec<_> = areas.into_iter().collect();
    areas.sort_by_key(|(_, cost)| std::cmp::Reverse(*cost));
    areas
}

/// One counted phase: per-certificate figures and where they went.
struct Counted {
    per_certificate: f64,
    areas: Vec<(&'static str, f64)>,
    errors: u64,
}

fn callgrind_control(args: &[&str], pid: u32) -> anyhow::Result<()> {
    let out = Command::new("callgrind_control")
        .args(args)
        .arg(pid.to_string())
        .output()
        .context("running callgrind_control (Debian package valgrind)")?;
    if !out.status.success() {
        bail!("callgrind_control {args:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Waits for callgrind's dump number `n` of `base` (`base.1`, `base.2`, …; the directory held
/// none before this run) to be complete, and reads it.
async fn read_dump(base: &Path, n: usize) -> anyhow::Result<String> {
    let mut path = base.as_os_str().to_owned();
    path.push(format!(".{n}"));
    for _ in 0..600 {
        // Callgrind writes its totals last.
        if let Ok(text) = std::fs::read_to_string(&path)
            && (text.contains("\ntotals:") || text.contains("\nsummary:"))
        {
            return Ok(text);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    bail!("callgrind wrote no {} within a minute", PathBuf::from(path).display())
}

async fn count_phase(
    server: &ServerProcess,
    clients: &[load::Client],
    csrs: &Arc<Vec<String>>,
    requests: usize,
    dump_base: &Path,
    dump: usize,
) -> anyhow::Result<Counted> {
    let pid = server.child.id();
    load::counted(clients, csrs.clone(), requests).await;
    callgrind_control(&["--zero"], pid)?;
    let outcome = load::counted(clients, csrs.clone(), requests).await;
    callgrind_control(&["--dump"], pid)?;
    let counts = parse(&read_dump(dump_base, dump).await?)?;
    let n = outcome.completed().max(1) as f64;
    Ok(Counted {
        per_certificate: counts.total as f64 / n,
        areas: by_area(&counts).into_iter().map(|(a, c)| (a, c as f64 / n)).collect(),
        errors: outcome.errors,
    })
}

/// Runs the server under callgrind and returns the report.
pub async fn run(opts: &InstructionOptions) -> anyhow::Result<String> {
    let work = tempfile::Builder::new().prefix("meshroot-instructions-").tempdir()?;
    let dumps = opts.keep.clone().unwrap_or_else(|| work.path().to_path_buf());
    std::fs::create_dir_all(&dumps).with_context(|| format!("creating {}", dumps.display()))?;
    let dump_base = dumps.join("callgrind.out");
    // Dumps are told apart by number: an earlier run's would be read as this one's.
    let stale = std::fs::read_dir(&dumps)?
        .filter_map(|e| e.ok())
        .any(|e| e.file_name().to_string_lossy().starts_with("callgrind.out"));
    if stale {
        bail!("{} already holds callgrind dumps; give an empty or new directory", dumps.display());
    }
    let identities = opts.requests.max(256);
    let (files, _chain, root_pem) = fixture::create(work.path(), opts.signer, identities)?;
    let wrapper = vec![
        "valgrind".to_string(),
        "--tool=callgrind".to_string(),
        format!("--callgrind-out-file={}", dump_base.display()),
        "--dump-line=no".to_string(),
    ];
    let server = ServerProcess::start(&files.dir, None, &wrapper, true)?;
    let clients = load::connect_all(&server.addr, root_pem.as_bytes(), opts.connections).await?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "meshroot bench --instructions: server under callgrind, {} requests per CSR type after as many as a warm-up, {} connections, {} intermediate",
        opts.requests, opts.connections, opts.signer
    );
    let phases =
        [("RSA-2048 CSRs (pilot-agent)", KeyAlgorithm::Rsa2048), ("P-256 CSRs (ztunnel)", KeyAlgorithm::EcdsaP256)];
    for (dump, (label, kind)) in (1..).zip(phases) {
        let csrs = Arc::new(fixture::csrs(kind, identities)?);
        let counted = count_phase(&server, &clients, &csrs, opts.requests, &dump_base, dump).await?;
        let _ = writeln!(
            out,
            "  {label}: {:.0} instructions per certificate, {} errors",
            counted.per_certificate, counted.errors
        );
        for (area, per) in &counted.areas {
            let _ = writeln!(out, "    {:>5.1}%  {per:>9.0}  {area}", 100.0 * per / counted.per_certificate.max(1.0));
        }
    }
    drop(clients);
    server.stop(&files.dir)?;
    if let Some(keep) = &opts.keep {
        let _ = writeln!(out, "  callgrind's dumps are in {} (callgrind_annotate FILE)", keep.display());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
version: 1
creator: callgrind-3.19.0
events: Ir
summary: 1000
ob=(1) /meshroot
fn=(1) aws_lc_0_28_ECDSA_do_sign
0 400
fn=(2) h2::proto::streams::recv
0 100
cfn=(1)
calls=2 0
0 300
fn=(1)
0 50
fn=(3) <hyper::proto::h2::server::H2Stream<F,B> as core::future::future::Future>::poll
0 150
totals: 1000
";

    #[test]
    fn self_costs_leave_out_the_callees() {
        let counts = parse(SAMPLE).unwrap();
        assert_eq!(counts.total, 1000);
        assert_eq!(counts.by_function["aws_lc_0_28_ECDSA_do_sign"], 450);
        // The 300 after `calls=` are the callee's, already counted under it.
        assert_eq!(counts.by_function["h2::proto::streams::recv"], 100);
        let areas = by_area(&counts);
        assert_eq!(areas[0], ("cryptography (aws-lc: signatures, hashes, AES-GCM)", 450));
        assert!(areas.contains(&("HTTP/2 (h2, hpack)", 100)));
        assert!(areas.contains(&("gRPC and HTTP (tonic, hyper, tower, http)", 150)));
    }

    #[test]
    fn a_file_without_totals_is_refused() {
        let err = parse("events: Ir\nfn=(1) x\n0 5\n").unwrap_err();
        assert!(err.to_string().contains("not a callgrind output file"), "{err}");
    }

    #[test]
    fn areas_follow_the_crate_a_function_is_in() {
        assert_eq!(area_of("core::ptr::drop_in_place<h2::frame::Frame>"), "HTTP/2 (h2, hpack)");
        assert_eq!(area_of("_int_malloc"), "allocation (malloc, free)");
        assert_eq!(area_of("__memcpy_avx_unaligned_erms"), "copying (memcpy, memmove, memset)");
        assert_eq!(
            area_of("meshroot_core::ca::service::CertificateService::handle"),
            "meshroot (policy, rate limits, authentication)"
        );
        assert_eq!(
            area_of("meshroot_core::telemetry::audit::issued"),
            "logging, audit and metrics (tracing, prometheus)"
        );
        assert_eq!(area_of("std::sys::pal::unix::time::Timespec::now"), "other (std, core, glue)");
        for asm in
            ["__ecp_nistz256_mul_montq", "_aesni_ctr32_ghash_6x", "bn_mul_mont_nohw", "sha256_block_data_order_avx"]
        {
            assert_eq!(area_of(asm), "cryptography (aws-lc: signatures, hashes, AES-GCM)", "{asm}");
        }
    }
}
