//! The compiled `meshroot serve` as a child process, a replica as a user
//! runs it: its ports read from its banner, its log (JSON, meshroot at
//! debug) in `<kubeconfig's directory>/<name>.log`, killed when dropped.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_meshroot");

pub struct Replica {
    pub child: Child,
    pub grpc: u16,
    pub ops: u16,
    pub log: PathBuf,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Replica {
    /// Kills it (SIGKILL): no shutdown, no release of the Lease.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn log_path(kubeconfig: &Path, name: &str) -> PathBuf {
    kubeconfig.parent().unwrap().join(format!("{name}.log"))
}

/// Starts `meshroot serve` as `name` (its pod name) with `KUBECONFIG`, the
/// usual loopback flags, and `extra`; returns once its banner names its ports.
pub async fn start(kubeconfig: &Path, name: &str, extra: &[&str]) -> Replica {
    start_binary(Path::new(BIN), kubeconfig, name, extra).await
}

/// As [`start`], with another build of meshroot (a release build, for measurements).
pub async fn start_binary(bin: &Path, kubeconfig: &Path, name: &str, extra: &[&str]) -> Replica {
    let (bin, kubeconfig, name) = (bin.to_path_buf(), kubeconfig.to_path_buf(), name.to_string());
    let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || start_blocking(&bin, &kubeconfig, &name, &extra)).await.unwrap()
}

fn start_blocking(bin: &Path, kubeconfig: &Path, name: &str, extra: &[String]) -> Replica {
    let log = log_path(kubeconfig, name);
    let mut child = Command::new(bin)
        .args(["serve", "--namespace", "meshroot", "--pod-name", name, "--generate-root", "--listen", "127.0.0.1:0"])
        .args(["--log-format", "json"])
        .args(["--metrics-listen", "127.0.0.1:0", "--serving-name", "localhost", "--drain-delay", "200ms"])
        .args(extra)
        .env("KUBECONFIG", kubeconfig)
        .env("RUST_LOG", "info,meshroot=debug")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let Some(Ok(line)) = lines.next() else { break };
        if let Some(rest) = line.strip_prefix("meshroot serve: Istio CA API on 127.0.0.1:") {
            let grpc = rest.split(',').next().unwrap().parse().unwrap();
            let ops = rest.split("health on 127.0.0.1:").nth(1).unwrap().split(',').next().unwrap().parse().unwrap();
            return Replica { child, grpc, ops, log };
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("meshroot serve did not start: {}", std::fs::read_to_string(&log).unwrap_or_default());
}

/// Whether the replica's /readyz answers ready (false while it cannot be reached).
pub async fn ready(ops: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", ops)).await else { return false };
    let _ = s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    let mut out = String::new();
    let _ = s.read_to_string(&mut out).await;
    out.starts_with("HTTP/1.1 200")
}
