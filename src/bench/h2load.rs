//! The independent load generator: nghttp2's `h2load` (C), sending the same
//! CreateCertificate call over TLS and HTTP/2 as a gRPC client would, so the
//! server's figures do not rest on a load generator built from the server's own
//! crates. h2load cannot read gRPC's status (it is in the trailers), so the
//! server's own count of certificates issued is what the run is checked against.

use crate::pb::IstioCertificateRequest;
use anyhow::{Context, bail};
use prost::Message as _;
use std::path::Path;
use std::time::Duration;

/// The gRPC method's path.
const METHOD: &str = "/istio.v1.auth.IstioCertificateService/CreateCertificate";

/// One CreateCertificate call as it goes on the wire: gRPC's five-byte prefix (not
/// compressed, then the length) and the protobuf message.
pub fn grpc_body(csr: &str) -> anyhow::Result<Vec<u8>> {
    let message = IstioCertificateRequest { csr: csr.to_string(), validity_duration: 3600, metadata: None };
    let len = u32::try_from(message.encoded_len()).context("the request is over 4 GiB")?;
    let mut body = Vec::with_capacity(message.encoded_len() + 5);
    body.push(0);
    body.extend_from_slice(&len.to_be_bytes());
    message.encode(&mut body).context("encoding the request")?;
    Ok(body)
}

/// What an h2load run printed, as far as the benchmark reads it.
#[derive(Clone, Debug)]
pub struct Report {
    /// Requests per second over the run.
    pub rate: f64,
    /// Requests that completed (any HTTP status).
    pub done: u64,
    /// Requests answered with HTTP 2xx (gRPC errors included: their status is in the trailers).
    pub succeeded: u64,
    /// Requests failed, errored or timed out, as h2load counts them.
    pub failed: u64,
    /// Mean time per request.
    pub mean: Duration,
    /// Slowest request.
    pub max: Duration,
}

/// Reads h2load's summary: the `finished in`, `requests:` and `time for request:` lines.
pub fn parse(stdout: &str) -> anyhow::Result<Report> {
    let line = |prefix: &str| {
        stdout
            .lines()
            .map(str::trim_start)
            .find_map(|l| l.strip_prefix(prefix))
            .with_context(|| format!("h2load printed no `{prefix}` line"))
    };
    // "finished in 10.00s, 5432.10 req/s, 12.34MB/s"
    let rate = line("finished in")?
        .split(", ")
        .find_map(|f| f.strip_suffix(" req/s"))
        .and_then(|r| r.trim().parse().ok())
        .context("h2load's `finished in` line has no req/s")?;
    // "requests: 100 total, 100 started, 100 done, 98 succeeded, 2 failed, 0 errored, 0 timeout"
    let requests = line("requests:")?;
    let count = |what: &str| {
        requests
            .split(',')
            .find_map(|f| f.trim().strip_suffix(what).map(str::trim))
            .and_then(|n| n.parse::<u64>().ok())
            .with_context(|| format!("h2load's `requests:` line has no `{what}` count: {requests}"))
    };
    let (done, succeeded) = (count(" done")?, count(" succeeded")?);
    let failed = count(" failed")? + count(" errored")? + count(" timeout")?;
    // "time for request:   1.23ms   4.56ms   2.34ms   456us   78.90%" (min, max, mean, sd, ±sd)
    let times: Vec<&str> = line("time for request:")?.split_whitespace().collect();
    let at = |i: usize| {
        times.get(i).copied().map(duration).transpose()?.context("h2load's `time for request:` line is short")
    };
    Ok(Report { rate, done, succeeded, failed, mean: at(2)?, max: at(1)? })
}

/// One of h2load's durations: `123us`, `1.23ms` or `1.23s`.
fn duration(text: &str) -> anyhow::Result<Duration> {
    let (number, scale) = if let Some(n) = text.strip_suffix("us") {
        (n, 1e-6)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1.0)
    } else {
        bail!("not an h2load duration: {text:?}");
    };
    let value: f64 = number.parse().with_context(|| format!("not an h2load duration: {text:?}"))?;
    Duration::try_from_secs_f64(value * scale).with_context(|| format!("not an h2load duration: {text:?}"))
}

/// Runs `h2load` against the server at `addr` (`host:port`) for `duration`, with `connections`
/// connections of one request in flight each (as the benchmark's own steady phase), every request
/// the body in `body_file` with bearer `token`. h2load runs on this process's cores: the
/// benchmark pins itself to the load generator's core before it starts.
pub async fn run(
    h2load: &Path,
    addr: &str,
    token: &str,
    body_file: &Path,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<Report> {
    // No warm-up: the server's CPU time is read around the whole run, so every request must count.
    let millis = format!("{}ms", duration.as_millis().max(1000));
    let output = tokio::process::Command::new(h2load)
        .args(["--clients", &connections.to_string(), "--max-concurrent-streams", "1", "--threads", "1"])
        .args(["--duration", &millis])
        .args(["--header", "content-type: application/grpc", "--header", "te: trailers"])
        .args(["--header", &format!("clusterid: {}", crate::names::DEFAULT_CLUSTER_ID)])
        .arg("--header")
        .arg(format!("authorization: Bearer {token}"))
        .arg("--data")
        .arg(body_file)
        .arg(format!("https://{addr}{METHOD}"))
        .kill_on_drop(true)
        .output()
        .await
        .with_context(|| format!("running {}", h2load.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "{} exited with {}: {}{}",
            h2load.display(),
            output.status,
            stdout.trim(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    parse(&stdout).with_context(|| format!("reading h2load's output:\n{stdout}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// h2load 1.52's summary, as it prints it.
    const OUTPUT: &str = "starting benchmark...
spawning thread #0: 64 total client(s). Timing-based test with 1s of warm-up time and 10s of main duration for measurements.
Warm-up started for thread #0.
progress: 10% of clients started
Warm-up phase is over for thread #0.
Main benchmark duration is started for thread #0.
Main benchmark duration is over for thread #0. Stopping all clients.
Stopped all clients for thread #0

finished in 11.00s, 5432.10 req/s, 14.52MB/s
requests: 54321 total, 54385 started, 54321 done, 54300 succeeded, 21 failed, 2 errored, 3 timeout
status codes: 54321 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 145.21MB (152263104) total, 1.61MB (1689201) headers (space savings 92.11%), 143.33MB (150290763) data
                     min         max         mean         sd        +/- sd
time for request:      712us     45.12ms     11.77ms      2.13ms    81.23%
time for connect:     5.43ms     60.92ms     33.02ms     16.12ms    57.81%
time to 1st byte:    13.01ms     73.98ms     44.01ms     16.87ms    56.25%
req/s           :      83.11       86.52       84.87        0.81    67.19%
";

    #[test]
    fn reads_h2loads_summary() {
        let report = parse(OUTPUT).unwrap();
        assert_eq!((report.done, report.succeeded, report.failed), (54321, 54300, 26));
        assert!((report.rate - 5432.10).abs() < 1e-9, "{}", report.rate);
        assert_eq!(report.mean.as_micros(), 11_770);
        assert_eq!(report.max.as_micros(), 45_120);
    }

    #[test]
    fn a_summary_without_its_lines_is_refused() {
        let err = parse("finished in 1.00s, 10.00 req/s, 1MB/s\n").unwrap_err();
        assert!(err.to_string().contains("requests:"), "{err}");
        assert!(parse("").is_err());
        assert!(duration("12 parsecs").is_err());
        assert_eq!(duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(duration("250us").unwrap(), Duration::from_micros(250));
    }

    /// The body decodes as gRPC does: a zero compression flag, the big-endian length, the message.
    #[test]
    fn the_body_is_one_length_prefixed_request() {
        let body = grpc_body("-----BEGIN CERTIFICATE REQUEST-----").unwrap();
        assert_eq!(body[0], 0);
        let len = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
        assert_eq!(len, body.len() - 5);
        let message = IstioCertificateRequest::decode(&body[5..]).unwrap();
        assert_eq!(message.csr, "-----BEGIN CERTIFICATE REQUEST-----");
        assert_eq!(message.validity_duration, 3600);
    }
}
