//! The race: istiod's built-in CA against meshroot, on one loopback cluster, driven in turn by
//! the same load client (Istio's own CA client, `istio-ca-client --count`), with RSA-2048 CSRs as
//! pilot-agent sends and P-256 as ztunnel sends. Every CA reviews the callers' pod-bound tokens
//! with the real API server. Each CA process is pinned to core 0 and the load client to core 1
//! (etcd and kube-apiserver float). Per run: certificates/s, p50/p99, the CA's CPU per certificate
//! (from /proc), its API requests per 1,000 certificates (from the audit log) and its resident
//! memory.
//!
//! The measurement (`scripts/race.sh`, with a release meshroot) is ignored in normal runs; CI
//! runs a smoke of it (a few requests each, every CA answers with no error, no timing asserted).
//!
//! meshroot runs as its compiled binary (`MESHROOT_RACE_BIN`, else the test build) with its rate
//! limits off: one client from one pod and one address would otherwise meet the per-identity
//! limit (50/s after a burst of 1,000), which istiod does not have. istio-csr, the third racer,
//! is not served by the Go module proxy here (tests/peers/README.md).

use crate::chart::{self, NS, ROOT_SECRET};
use crate::cluster::{Cluster, Options, istio_crds, peers};
use crate::istio::{IstiodSetup, Workload, secret_key, start_istiod, within};
use crate::serve::{condition, mesh_api};
use crate::support::binary;
use std::time::Duration;

/// One CA in the race.
struct Racer {
    name: &'static str,
    port: u16,
    server_name: &'static str,
    roots: String,
    pid: u32,
    /// Its user in the API server's audit log.
    api_user: String,
}

/// What one run measured.
struct Run {
    summary: String,
    cpu_seconds: f64,
    api_requests: usize,
    rss_mib: f64,
}

/// User plus system CPU time of `pid`, all threads, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0 // CLK_TCK is 100 on Linux
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    kib / 1024.0
}

/// Pins every thread of `pid` to `cpu`.
fn pin(pid: u32, cpu: u32) {
    let status = std::process::Command::new("taskset")
        .args(["-a", "-p", "-c", &cpu.to_string(), &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "taskset failed for {pid}");
}

fn api_requests(cluster: &Cluster, user: &str) -> usize {
    cluster.audit_events().iter().filter(|e| e["user"]["username"] == user).count()
}

/// One run of the load client against `racer`: `requests` over `connections`, CSRs of `key`.
async fn run(
    cluster: &Cluster,
    racer: &Racer,
    workload: &Workload,
    key: &str,
    requests: usize,
    connections: usize,
) -> Run {
    let dir = cluster.subdir("race");
    let (token, roots_file) = (dir.join("token"), dir.join(format!("roots-{}.pem", racer.port)));
    std::fs::write(&token, &workload.token).unwrap();
    std::fs::write(&roots_file, &racer.roots).unwrap();
    let (cpu_before, api_before) = (cpu_seconds(racer.pid), api_requests(cluster, &racer.api_user));
    let out = tokio::process::Command::new("taskset")
        .args(["-c", "1"])
        .arg(peers().join("istio-ca-client"))
        .arg(format!("--ca-addr=127.0.0.1:{}", racer.port))
        .arg(format!("--server-name={}", racer.server_name))
        .arg(format!("--root-cert={}", roots_file.display()))
        .arg(format!("--token-file={}", token.display()))
        .arg(format!("--spiffe={}", workload.identity()))
        .args([format!("--key={key}"), "--cluster-id=Kubernetes".into(), "--timeout=5m".into()])
        .arg(format!("--count={requests}"))
        .arg(format!("--concurrency={connections}"))
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{}: {stdout}{}", racer.name, String::from_utf8_lossy(&out.stderr));
    let summary = stdout.lines().find(|l| l.starts_with("requests=")).unwrap_or_default().to_string();
    assert_eq!(field(&summary, "errors"), "0", "{}: {summary}", racer.name);
    // The audit log is written as requests finish: give it a moment.
    tokio::time::sleep(Duration::from_millis(500)).await;
    Run {
        cpu_seconds: cpu_seconds(racer.pid) - cpu_before,
        api_requests: api_requests(cluster, &racer.api_user) - api_before,
        rss_mib: rss_mib(racer.pid),
        summary,
    }
}

/// `key=value` from a summary line.
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace().find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')).unwrap_or("?")
}

/// Sets up the three CAs and runs `rounds` rounds of `requests` each, printing a table.
async fn race(requests: usize, connections: usize, rounds: usize) {
    let mut cluster = Cluster::start(Options::default()).await;
    chart::install(&cluster).await;
    cluster.apply_dir(&istio_crds()).await;
    cluster.wait_for_crds().await;
    // Each istiod writes its root to a ConfigMap name of its own, so nobody contends for
    // istio-ca-root-cert. istiod reviews every caller's token (no cache) through a Kubernetes
    // client limited to 80 requests a second by default: the second istiod lifts that limit, to
    // show what its CA does without it.
    let setup = |root_configmap: &'static str, extra_args: &[&str]| IstiodSetup {
        ca_server: true,
        files: Vec::new(),
        revision: None,
        root_configmap: Some(root_configmap),
        extra_args: extra_args.iter().map(|a| a.to_string()).collect(),
    };
    let istiod = start_istiod(&mut cluster, "istiod", "istio-system", setup("istiod-ca-root-cert", &[])).await;
    cluster.namespace("istio-race", serde_json::json!({})).await;
    let unthrottled = start_istiod(
        &mut cluster,
        "istiod-unthrottled",
        "istio-race",
        setup("istiod-race-ca-root-cert", &["--kubernetesApiQPS=100000", "--kubernetesApiBurst=100000"]),
    )
    .await;
    let wait = Duration::from_secs(60);
    let root_of = async |cluster: &Cluster, ns: &str| {
        within("an istiod's root", wait, async || secret_key(cluster, ns, "istio-ca-secret", "ca-cert.pem").await).await
    };

    let token = cluster.token(NS, chart::SERVICE_ACCOUNT, &[], None).await;
    let kubeconfig = cluster.kubeconfig_with_token(&token);
    let unlimited = ["--identity-rate-limit", "off", "--node-rate-limit", "off", "--peer-rate-limit", "off"];
    let bin = std::env::var("MESHROOT_RACE_BIN").unwrap_or_else(|_| binary::BIN.to_string());
    let meshroot = binary::start_binary(std::path::Path::new(&bin), &kubeconfig, "meshroot-0", &unlimited).await;
    within("meshroot ready", wait, async || binary::ready(meshroot.ops).await.then_some(())).await;
    let meshes = mesh_api(&cluster.admin);
    within("the External mesh Ready", wait, async || {
        let mesh = serde_json::to_value(meshes.get("service-mesh").await.ok()?).ok()?;
        (condition(&mesh, "Ready")?["status"] == "True").then_some(())
    })
    .await;
    let racers = [
        Racer {
            name: "istiod CA",
            port: istiod.secure,
            server_name: "istiod.istio-system.svc",
            roots: root_of(&cluster, "istio-system").await,
            pid: cluster.pid("istiod"),
            api_user: "admin".into(),
        },
        Racer {
            name: "istiod CA, API QPS unlimited",
            port: unthrottled.secure,
            server_name: "istiod.istio-race.svc",
            roots: root_of(&cluster, "istio-race").await,
            pid: cluster.pid("istiod-unthrottled"),
            api_user: "admin".into(),
        },
        Racer {
            name: "meshroot",
            port: meshroot.grpc,
            server_name: "localhost",
            roots: within("meshroot's root", wait, async || secret_key(&cluster, NS, ROOT_SECRET, "tls.crt").await)
                .await,
            pid: meshroot.child.id(),
            api_user: format!("system:serviceaccount:{NS}:{}", chart::SERVICE_ACCOUNT),
        },
    ];
    for racer in &racers {
        pin(racer.pid, 0);
    }

    let workload = Workload::create(&cluster, "bookinfo", "reviews").await;
    eprintln!(
        "race: {requests} requests over {connections} connections per run; each CA on core 0, the load client on core 1; meshroot {bin}"
    );
    let mut table = Vec::new();
    for round in 1..=rounds {
        for (key, csr) in [("rsa", "RSA-2048"), ("ec", "P-256")] {
            for racer in &racers {
                let run = run(&cluster, racer, &workload, key, requests, connections).await;
                eprintln!("round {round} {} {csr}: {}", racer.name, run.summary);
                let ok: f64 = field(&run.summary, "ok").parse().unwrap_or(f64::NAN);
                table.push(format!(
                    "| {round} | {} | {csr} | {} | {} | {} | {:.2} | {:.0} | {:.0} |",
                    racer.name,
                    field(&run.summary, "rps"),
                    field(&run.summary, "p50"),
                    field(&run.summary, "p99"),
                    run.cpu_seconds * 1000.0 / ok,
                    run.api_requests as f64 * 1000.0 / ok,
                    run.rss_mib,
                ));
            }
        }
    }
    eprintln!(
        "| round | CA | CSR | certificates/s | p50 | p99 | CPU ms per certificate | API requests per 1,000 | RSS MiB |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n{}",
        table.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: minutes of load on both cores (scripts/race.sh)"]
async fn istiods_ca_against_meshroot_with_istios_client() {
    race(2000, 8, 3).await;
}

/// The race in miniature, for CI: every CA answers every request of both key types.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_racer_answers_a_few_requests_without_error() {
    race(20, 2, 1).await;
}
