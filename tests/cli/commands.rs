//! The compiled binary as a user runs it: `meshroot dev`, then the printed
//! `meshroot request` command; restarts; and `meshroot pki init`.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_meshroot");

struct Dev {
    child: Child,
    banner: Vec<String>,
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `meshroot dev` in `cwd` on ephemeral ports and reads its banner.
fn start_dev(cwd: &Path) -> Dev {
    start_dev_logging(cwd, None)
}

/// As `start_dev`, with JSON logs written to `log`.
fn start_dev_logging(cwd: &Path, log: Option<&Path>) -> Dev {
    let stderr = match log {
        Some(path) => Stdio::from(std::fs::File::create(path).unwrap()),
        None => Stdio::null(),
    };
    let mut child = Command::new(BIN)
        .args(["--log-format", "json", "dev", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
        .current_dir(cwd)
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut banner = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let Some(Ok(line)) = lines.next() else { break };
        let done = line.contains(" request --ca-addr ");
        banner.push(line);
        if done {
            return Dev { child, banner };
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("meshroot dev did not print its request command: {banner:?}");
}

fn request_args(dev: &Dev) -> Vec<String> {
    let cmd = dev.banner.last().unwrap().trim();
    cmd.split_whitespace().skip(1).map(String::from).collect()
}

/// The banner's request command, run exactly as printed (its first word is the program).
fn banner_command(dev: &Dev) -> Command {
    let cmd = dev.banner.last().unwrap().trim();
    let mut words = cmd.split_whitespace();
    let mut command = Command::new(words.next().unwrap());
    command.args(words);
    command
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn openssl_verify(root: &Path, untrusted: &Path, cert: &Path) {
    let out = Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(root)
        .arg("-untrusted")
        .arg(untrusted)
        .arg(cert)
        .output()
        .expect("openssl is installed");
    assert!(out.status.success(), "openssl verify: {}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn request_against_dev_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let dev = start_dev(dir.path());
    assert!(dev.banner.iter().any(|l| l.starts_with("created root CA")), "{:?}", dev.banner);
    // The banner's command works pasted as it is: `cargo run` puts no meshroot on PATH.
    let out = banner_command(&dev).current_dir(dir.path()).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("SAN:     spiffe://cluster.local/ns/default/sa/default"), "{stdout}");
    assert!(stdout.contains("(in 23h 59m)"), "{stdout}");
    // The workload's key lands in the git-ignored state directory, not the working tree.
    let w = dir.path().join(".meshroot/workload");
    assert!(!dir.path().join("workload").exists());
    assert_eq!(mode(&w.join("key.pem")), 0o600);
    assert_eq!(mode(&dir.path().join(".meshroot/root/ca.key")), 0o600);
    assert_eq!(mode(&dir.path().join(".meshroot/meshes/default/ca-key.pem")), 0o600);
    assert_eq!(mode(&dir.path().join(".meshroot/serving/tls.key")), 0o600);
    assert_eq!(mode(&dir.path().join(".meshroot/tokens")), 0o600);
    // An independent verifier agrees with the chain.
    openssl_verify(&dir.path().join(".meshroot/root-cert.pem"), &w.join("cert-chain.pem"), &w.join("cert-chain.pem"));

    // The key written matches the certificate.
    let key = meshroot::pki::PrivateKey::from_pem(&std::fs::read(w.join("key.pem")).unwrap()).unwrap();
    let chain =
        meshroot::pki::pem::decode_certificates(&std::fs::read(w.join("cert-chain.pem")).unwrap(), 1 << 20).unwrap();
    let (_, leaf) =
        <x509_parser::prelude::X509Certificate<'_> as x509_parser::prelude::FromDer<_>>::from_der(&chain[0]).unwrap();
    assert_eq!(leaf.public_key().raw, key.spki_der().as_slice());

    // Without --out, the key goes to the same git-ignored place, never the working directory.
    let mut args = request_args(&dev);
    let i = args.iter().position(|a| a == "--out").unwrap();
    args.drain(i..i + 2);
    std::fs::remove_dir_all(&w).unwrap();
    let out = Command::new(BIN).args(&args).current_dir(dir.path()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(mode(&w.join("key.pem")), 0o600);
    assert!(!dir.path().join("key.pem").exists());

    // Asking for someone else's identity fails with a clear message and a non-zero exit.
    let mut args = request_args(&dev);
    let i = args.iter().position(|a| a == "--identity").unwrap();
    args[i + 1] = "spiffe://cluster.local/ns/kube-system/sa/admin".into();
    let out = Command::new(BIN).args(&args).current_dir(dir.path()).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Unauthenticated") && stderr.contains("not authorized"), "{stderr}");
    drop(dev);

    // A restart reuses the same root and creates nothing.
    let root_before = std::fs::read(dir.path().join(".meshroot/root/ca.crt")).unwrap();
    let dev = start_dev(dir.path());
    assert!(!dev.banner.iter().any(|l| l.starts_with("created")), "{:?}", dev.banner);
    assert_eq!(std::fs::read(dir.path().join(".meshroot/root/ca.crt")).unwrap(), root_before);
    let out = Command::new(BIN).args(request_args(&dev)).current_dir(dir.path()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn one_audit_line_per_request_and_no_secret_in_any_log() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("dev.log");
    let dev = start_dev_logging(dir.path(), Some(&log));
    let ok = Command::new(BIN).args(request_args(&dev)).current_dir(dir.path()).output().unwrap();
    assert!(ok.status.success());
    let mut args = request_args(&dev);
    let i = args.iter().position(|a| a == "--token-file").unwrap();
    args.splice(i..i + 2, ["--token".to_string(), "not-a-valid-token-4242".to_string()]);
    let denied = Command::new(BIN).args(&args).current_dir(dir.path()).output().unwrap();
    assert!(!denied.status.success());
    drop(dev);

    let text = std::fs::read_to_string(&log).unwrap();
    let audit: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .filter(|v| v["target"] == "meshroot::audit")
        .collect();
    assert_eq!(audit.len(), 2, "{text}");
    let issued = &audit[0];
    assert_eq!(issued["outcome"], "issued");
    assert_eq!(issued["identity"], "spiffe://cluster.local/ns/default/sa/default");
    assert_eq!(issued["caller"], "default/default");
    // `request` makes pilot-agent's default key.
    assert_eq!(issued["key_type"], "rsa-2048");
    assert_eq!(issued["serial"].as_str().unwrap().len(), 40);
    assert!(issued["not_after"].as_i64().unwrap() > 0 && issued["latency_us"].as_u64().is_some());
    assert_eq!(audit[1]["outcome"], "denied");
    assert_eq!(audit[1]["code"], "Unauthenticated");

    // No token, and no key material, anywhere in the logs.
    let token = std::fs::read_to_string(dir.path().join(".meshroot/default.token")).unwrap();
    assert!(!text.contains(token.trim()) && !text.contains("not-a-valid-token-4242"));
    assert!(!text.contains("PRIVATE KEY"));
    for key in [".meshroot/root/ca.key", ".meshroot/meshes/default/ca-key.pem", ".meshroot/workload/key.pem"] {
        let pem = std::fs::read_to_string(dir.path().join(key)).unwrap();
        let body = pem.lines().nth(1).unwrap();
        assert!(!text.contains(body), "{key} leaked into the logs");
    }
}

/// A token line added while `dev` runs works without a restart.
#[test]
fn dev_picks_up_a_token_added_while_it_runs() {
    let dir = tempfile::tempdir().unwrap();
    let dev = start_dev(dir.path());
    let tokens = dir.path().join(".meshroot/tokens");
    let mut text = std::fs::read_to_string(&tokens).unwrap();
    text.push_str("added-while-running shop checkout\n");
    std::fs::write(&tokens, text).unwrap();
    let mut args = request_args(&dev);
    let i = args.iter().position(|a| a == "--token-file").unwrap();
    args.splice(i..i + 2, ["--token".to_string(), "added-while-running".to_string()]);
    let i = args.iter().position(|a| a == "--identity").unwrap();
    args[i + 1] = "spiffe://cluster.local/ns/shop/sa/checkout".into();
    // Within a few reload intervals (one second each).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = Command::new(BIN).args(&args).current_dir(dir.path()).output().unwrap();
        if out.status.success() {
            assert!(
                String::from_utf8_lossy(&out.stdout).contains("SAN:     spiffe://cluster.local/ns/shop/sa/checkout")
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new token was never accepted: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    drop(dev);
}

#[test]
fn dev_refuses_partial_state_instead_of_replacing_it() {
    let dir = tempfile::tempdir().unwrap();
    drop(start_dev(dir.path()));
    let key = dir.path().join(".meshroot/root/ca.key");
    std::fs::remove_file(&key).unwrap();
    let out = Command::new(BIN)
        .args(["dev", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("incomplete state") && stderr.contains("ca.key"), "{stderr}");
    assert!(!key.exists(), "a new root key must not have been generated");
}

fn pki_init(out: &Path, extra: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(["pki", "init", "--out"])
        .arg(out)
        .args(["--mesh", "default", "--mesh", "gateway=gw.example"])
        .args(extra)
        .output()
        .unwrap()
}

fn check_cacerts(dir: &Path) {
    for f in ["ca-cert.pem", "ca-key.pem", "cert-chain.pem", "root-cert.pem", "cacerts-secret.yaml"] {
        assert!(dir.join(f).exists(), "{f}");
    }
    assert_eq!(mode(&dir.join("ca-key.pem")), 0o600);
    assert_eq!(mode(&dir.join("cacerts-secret.yaml")), 0o600);
    openssl_verify(&dir.join("root-cert.pem"), &dir.join("ca-cert.pem"), &dir.join("ca-cert.pem"));
    // istiod's plug-in CA: the key loads, matches, and chains; ca-cert is a CA.
    let int = meshroot::pki::Authority::from_pem(
        &std::fs::read(dir.join("ca-cert.pem")).unwrap(),
        &std::fs::read(dir.join("ca-key.pem")).unwrap(),
    )
    .unwrap();
    let chain = std::fs::read_to_string(dir.join("cert-chain.pem")).unwrap();
    assert!(chain.starts_with(int.certificate_pem()));
    // The manifest is a Secret named cacerts carrying the same files.
    let yaml = std::fs::read_to_string(dir.join("cacerts-secret.yaml")).unwrap();
    let v: serde_json::Value = serde_saphyr::from_str(&yaml).unwrap();
    assert_eq!(v["kind"], "Secret");
    assert_eq!(v["metadata"]["name"], "cacerts");
    assert_eq!(v["stringData"]["ca-cert.pem"], int.certificate_pem());
    assert_eq!(v["stringData"]["cert-chain.pem"], chain);
}

#[test]
fn pki_init_creates_a_root_and_istio_cacerts_per_mesh() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("pki");
    let out = pki_init(&out_dir, &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(mode(&out_dir.join("root-key.pem")), 0o600);
    check_cacerts(&out_dir.join("default"));
    check_cacerts(&out_dir.join("gateway"));
    // Both meshes chain to the one root.
    let root = std::fs::read(out_dir.join("root-cert.pem")).unwrap();
    assert_eq!(std::fs::read(out_dir.join("gateway/root-cert.pem")).unwrap(), root);

    // Every date printed is RFC 3339.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let dates: Vec<&str> =
        stdout.split("expires ").skip(1).map(|rest| rest.split([';', ' ', '\n']).next().unwrap()).collect();
    assert_eq!(dates.len(), 3, "{stdout}");
    for date in dates {
        time::OffsetDateTime::parse(date, &time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|e| panic!("{date:?} is not RFC 3339 ({e}): {stdout}"));
    }

    // Running again never overwrites keys.
    let key_before = std::fs::read(out_dir.join("root-key.pem")).unwrap();
    let gateway_key = std::fs::read(out_dir.join("gateway/ca-key.pem")).unwrap();
    let again = pki_init(&out_dir, &[]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists: mesh default was made before"));
    assert_eq!(std::fs::read(out_dir.join("root-key.pem")).unwrap(), key_before);
    assert_eq!(std::fs::read(out_dir.join("gateway/ca-key.pem")).unwrap(), gateway_key);

    // A mesh added later chains to the same root, and nothing else changes.
    let added =
        Command::new(BIN).args(["pki", "init", "--out"]).arg(&out_dir).args(["--mesh", "ingress"]).output().unwrap();
    assert!(added.status.success(), "{}", String::from_utf8_lossy(&added.stderr));
    assert!(String::from_utf8_lossy(&added.stdout).contains("adding meshes under the root in"));
    check_cacerts(&out_dir.join("ingress"));
    assert_eq!(std::fs::read(out_dir.join("ingress/root-cert.pem")).unwrap(), root);
    assert_eq!(std::fs::read(out_dir.join("root-key.pem")).unwrap(), key_before);
}

/// A refused `pki init` leaves no directory or file of its own behind.
#[test]
fn pki_init_that_fails_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("pki");
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate").unwrap();
    let out = pki_init(&out_dir, &["--root-cert", junk.to_str().unwrap(), "--root-key", junk.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("importing the root"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out_dir.exists(), "the output directory this run created is gone");

    // In a directory that already holds a root, a run that fails removes only what it made.
    assert!(pki_init(&out_dir, &[]).status.success());
    let before: Vec<_> = std::fs::read_dir(&out_dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    let other = meshroot::pki::Authority::new_root(
        &meshroot::pki::CaSpec::root(time::Duration::days(1)),
        time::OffsetDateTime::now_utc(),
    )
    .unwrap();
    let (cert, key) = (dir.path().join("other.pem"), dir.path().join("other-key.pem"));
    std::fs::write(&cert, other.certificate_pem()).unwrap();
    std::fs::write(&key, other.key().to_pem().as_bytes()).unwrap();
    let refused = Command::new(BIN)
        .args(["pki", "init", "--out"])
        .arg(&out_dir)
        .args(["--mesh", "third", "--root-cert", cert.to_str().unwrap(), "--root-key", key.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("already holds another root"));
    let after: Vec<_> = std::fs::read_dir(&out_dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(after, before);
    assert!(out_dir.exists());
}

#[test]
fn pki_init_imports_an_openssl_rsa4096_root_in_either_encoding() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/openssl");
    for key in ["rsa4096-root-key.pkcs1.pem", "rsa4096-root-key.pkcs8.pem"] {
        let dir = tempfile::tempdir().unwrap();
        let out_dir = dir.path().join("pki");
        let cert = fixtures.join("rsa4096-root-cert.pem");
        let out = pki_init(
            &out_dir,
            &["--root-cert", cert.to_str().unwrap(), "--root-key", fixtures.join(key).to_str().unwrap()],
        );
        assert!(out.status.success(), "{key}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stdout).contains("imported root"), "{key}");
        assert!(!out_dir.join("root-key.pem").exists(), "an imported root key is not copied");
        assert_eq!(std::fs::read(out_dir.join("root-cert.pem")).unwrap(), std::fs::read(&cert).unwrap());
        check_cacerts(&out_dir.join("default"));
    }
    // A key that does not match the certificate is refused.
    let dir = tempfile::tempdir().unwrap();
    let out = pki_init(
        &dir.path().join("pki"),
        &[
            "--root-cert",
            fixtures.join("rsa4096-root-cert.pem").to_str().unwrap(),
            "--root-key",
            fixtures.join("other-p256-key.pem").to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not match"));
}

/// The benchmark runs end to end (a debug build gives no meaningful
/// figures; this only proves it works and reports what it should).
#[cfg(feature = "bench")]
#[test]
fn bench_runs_every_scenario_and_prints_the_ratio() {
    let out = Command::new(BIN)
        .args(["bench", "--duration", "1s", "--connections", "2", "--burst", "40", "--burst-connections", "2"])
        .args(["--signer", "ecdsa-p256"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    for line in [
        "crypto ceiling, 1 core",
        "primitive ceiling, 1 core (verify an RSA-2048 CSR's signature, sign a leaf-sized TBS",
        "steady, RSA-2048 CSRs (pilot-agent):",
        "ratio: served",
        "% of the primitive ceiling (",
        "% of their primitive ceiling (",
        "half of peak, paced at",
        "steady, P-256 CSRs (ztunnel):",
        "of which the load generator's: requests left it p50",
        "the crypto ceiling's work alone, one certificate at a time (p50): ",
        " back to back; ",
        "x) after spinning ",
        "x) after sleeping as long, the core idle",
        "µs in the kernel)",
        "burst: 40 identities at once over 2 connections",
        "server RSS: ",
        " MiB at its peak",
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
    assert_eq!(text.matches(", 0 errors").count(), 4, "every phase without errors:\n{text}");
}

/// `bench --server-wrapper` runs the server under the command given (a profiler, in use), says
/// so in the report, and still measures every phase.
#[cfg(feature = "bench")]
#[test]
fn bench_runs_the_server_under_a_wrapper() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("wrapped");
    let wrapper = dir.path().join("wrap.sh");
    std::fs::write(&wrapper, format!("#!/bin/sh\necho \"$@\" > {}\nshift\nexec \"$@\"\n", marker.display())).unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new(BIN)
        .args(["bench", "--duration", "1s", "--connections", "2", "--burst", "0", "--signer", "ecdsa-p256"])
        .args(["--server-wrapper", &format!("{} --ignored-by-the-wrapper", wrapper.display())])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        text.contains(&format!(
            "server run under `{} --ignored-by-the-wrapper`, so its timings and memory are not meshroot's",
            wrapper.display()
        )),
        "{text}"
    );
    let argv = std::fs::read_to_string(&marker).expect("the wrapper ran");
    assert!(argv.starts_with("--ignored-by-the-wrapper ") && argv.contains(" bench-server --dir "), "{argv}");
    assert_eq!(text.matches(", 0 errors").count(), 3, "every phase without errors:\n{text}");
}

/// The h2load at `MESHROOT_H2LOAD` (scripts/test.sh sets it), else the one
/// `scripts/install-h2load.sh` installs into the cache.
#[cfg(feature = "bench")]
fn h2load() -> String {
    if let Ok(path) = std::env::var("MESHROOT_H2LOAD") {
        return path;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/install-h2load.sh");
    let out = Command::new(script).output().unwrap();
    assert!(out.status.success(), "{script}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// `bench --h2load` loads a server with its rate limits off with nghttp2's h2load, an
/// independent load generator, and holds the run to the server's own count of certificates.
#[cfg(feature = "bench")]
#[test]
fn bench_loads_the_server_with_h2load_too() {
    let out = Command::new(BIN)
        .args(["bench", "--duration", "1s", "--connections", "2", "--burst", "0", "--signer", "ecdsa-p256"])
        .args(["--h2load", &h2load()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    for line in ["h2load, RSA-2048 CSRs, 2 connections: ", "h2load, P-256 CSRs, 2 connections: ", "h2load CPU "] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
    let counts = text
        .lines()
        .find_map(|l| l.strip_prefix("  h2load: the server received "))
        .unwrap_or_else(|| panic!("no counts in:\n{text}"));
    let numbers: Vec<u64> = counts.split([' ', ',']).filter_map(|w| w.parse().ok()).collect();
    assert_eq!(numbers.len(), 3, "{counts}");
    assert!(numbers[1] > 0 && numbers[2] == 0, "certificates issued, none refused: {counts}");
}

/// A load generator that reports failures fails the benchmark: h2load counts gRPC refusals as
/// HTTP successes, but it does count what broke below gRPC.
#[cfg(feature = "bench")]
#[test]
fn bench_fails_when_h2load_reports_failures() {
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("h2load");
    std::fs::write(
        &fake,
        "#!/bin/sh\ncat <<EOF\nfinished in 1.00s, 10.00 req/s, 1MB/s\n\
         requests: 10 total, 10 started, 10 done, 7 succeeded, 3 failed, 0 errored, 0 timeout\n\
         time for request: 1ms 2ms 1.5ms 1ms 50%\nEOF\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new(BIN)
        .args(["bench", "--duration", "1s", "--connections", "2", "--burst", "0", "--signer", "ecdsa-p256"])
        .args(["--h2load", fake.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("h2load saw failures: 7 of 10 requests done succeeded, 3 failed"), "{stderr}");
}

/// `bench --instructions` counts the server's instructions per certificate under callgrind, split
/// by where they ran; without valgrind it says what is missing.
#[cfg(feature = "bench")]
#[test]
fn bench_counts_instructions_per_certificate_under_callgrind() {
    let dumps = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["bench", "--instructions", "--requests", "20", "--connections", "2", "--signer", "ecdsa-p256"])
        .arg("--keep-profile")
        .arg(dumps.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    let has_valgrind = Command::new("valgrind").arg("--version").output().is_ok_and(|o| o.status.success());
    if !has_valgrind {
        assert!(!out.status.success());
        assert!(err.contains("under valgrind"), "{err}");
        return;
    }
    assert!(out.status.success(), "{text}{err}");
    for label in ["RSA-2048 CSRs (pilot-agent): ", "P-256 CSRs (ztunnel): "] {
        let line = text.lines().find(|l| l.contains(label)).unwrap_or_else(|| panic!("no {label:?} in:\n{text}"));
        let count: f64 = line.split(label).nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
        // Two signatures' worth of work at the least; a count of nothing would be a broken parse.
        assert!(count > 100_000.0, "{line}");
        assert!(line.ends_with(", 0 errors"), "{line}");
    }
    assert!(text.contains("cryptography (aws-lc: signatures, hashes, AES-GCM)"), "{text}");
    let kept = std::fs::read_dir(dumps.path()).unwrap().count();
    assert!(kept >= 2, "callgrind's dumps are kept: {kept}");
    // A directory holding an earlier run's dumps is refused: they would be read as this run's.
    let again = Command::new(BIN)
        .args(["bench", "--instructions", "--requests", "20", "--connections", "2", "--keep-profile"])
        .arg(dumps.path())
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds callgrind dumps"));
}

/// `serve --check-config` refuses what `serve` would refuse, every problem
/// at once, before touching a cluster; and a valid set passes.
#[test]
fn serve_check_config_refuses_every_invalid_setting_at_once() {
    let check = |extra: &[&str]| {
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--check-config", "--namespace", "meshroot", "--pod-name", "meshroot-0"]).args(extra);
        for (var, _) in std::env::vars_os() {
            if var.to_string_lossy().starts_with("MESHROOT_") {
                cmd.env_remove(var);
            }
        }
        cmd.output().unwrap()
    };
    let ok = check(&[]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let described = String::from_utf8_lossy(&ok.stdout);
    assert!(described.starts_with("meshroot serve: configuration is valid"));
    // Unset flags show the library's defaults.
    for default in
        ["lease duration: 15s\n", "lease retry period: 2s\n", "request timeout: 30s\n", "max header bytes: 65536\n"]
    {
        assert!(described.contains(default), "missing {default:?} in {described}");
    }
    let set = check(&[
        "--lease-duration",
        "30s",
        "--lease-retry-period",
        "5s",
        "--token-review-timeout",
        "2s",
        "--idle-timeout",
        "0",
        "--max-connections",
        "100",
        "--token-negative-cache-ttl",
        "0",
    ]);
    let described = String::from_utf8_lossy(&set.stdout);
    for value in [
        "lease duration: 30s\n",
        "lease retry period: 5s\n",
        "token review timeout: 2s\n",
        "idle timeout: never\n",
        "token negative cache ttl: 0s\n",
        "max connections: 100\n",
        "max connections per peer: 256\n",
    ] {
        assert!(described.contains(value), "missing {value:?} in {described}");
    }

    let bad = check(&[
        "--serving-name",
        "not a name",
        "--service-name",
        "Meshroot",
        "--lease-name",
        "lease_1",
        "--root-configmap-name",
        "Root_CM",
        "--listen",
        "0.0.0.0:9000",
        "--metrics-listen",
        "0.0.0.0:9000",
        "--cluster-id",
        " ",
        "--lease-duration",
        "10s",
        "--lease-retry-period",
        "6s",
        "--request-timeout",
        "5s",
        "--max-header-bytes",
        "1024",
        "--max-concurrent-streams",
        "0",
        "--max-connections-per-peer",
        "0",
        "--idle-timeout",
        "5s",
        "--token-negative-cache-ttl",
        "1d",
    ]);
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    for expected in [
        r#"--serving-name "not a name" is neither an IP address nor a DNS name"#,
        r#"--service-name "Meshroot" is not a valid Service name"#,
        r#"--lease-name "lease_1" is not a valid object name"#,
        r#"--root-configmap-name "Root_CM" is not a valid object name"#,
        "--listen and --metrics-listen are the same address (0.0.0.0:9000)",
        "--cluster-id and each --cluster-alias must be non-empty",
        "--lease-retry-period 6s must be above zero, and --lease-duration (10s) at least 4 times it plus 1s",
        "--token-negative-cache-ttl 1day must be at most 5m",
        "--request-timeout (5s) must be longer than --token-review-timeout (5s)",
        "--max-header-bytes 1024 is below 8192",
        "--max-concurrent-streams must be at least 1",
        "--max-connections and --max-connections-per-peer must be at least 1",
        "--idle-timeout (5s) must be 0 (never), or longer than --request-timeout (5s) and at most 1day",
    ] {
        assert!(stderr.contains(expected), "missing {expected:?} in {stderr}");
    }
    assert!(bad.stdout.is_empty(), "nothing is described when the configuration is refused");
}

/// `meshroot doctor` documents its exit statuses, and a cluster it cannot reach is a failure
/// (status 1) with the reason, never a verdict.
#[test]
fn doctor_says_what_its_exit_statuses_mean_and_fails_without_a_cluster() {
    let help = Command::new(BIN).args(["doctor", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for status in ["0 when every pair of meshes can complete mutual TLS", "2 when trust is split", "3 when it cannot"] {
        assert!(help.contains(status), "{status}: {help}");
    }
    let dir = tempfile::tempdir().unwrap();
    let run = Command::new(BIN)
        .args(["doctor", "-o", "json"])
        .env("KUBECONFIG", dir.path().join("missing-kubeconfig"))
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(1));
    assert!(run.stdout.is_empty(), "no report without a cluster");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.starts_with("error: connecting to the Kubernetes API (KUBECONFIG)"), "{stderr}");
}
