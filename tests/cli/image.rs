//! The release image, as someone without a container engine meets it: built by `cargo xtask
//! image`'s code (from the binary under test; a release puts the release build in the same
//! place), unpacked, and run from its own root filesystem as its non-root user: `--version`,
//! then `meshroot dev` and the request command its banner prints, both inside the image.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_meshroot");

/// The Debian packages the base comes from: downloaded once, like the test tiers' other peers.
fn debs() -> PathBuf {
    std::env::var_os("MESHROOT_IMAGE_DEBS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/meshroot/debs"))
}

fn is_root() -> bool {
    let out = Command::new("id").arg("-u").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim() == "0"
}

/// `args` run inside the unpacked image: its root filesystem, its working directory, its user
/// (when this test runs as root; otherwise as root of a user namespace) and its PATH only.
fn in_image(rootfs: &Path, config: &oci_config::Config, args: &[&str]) -> Command {
    let mut command = Command::new("unshare");
    if is_root() {
        let (uid, gid) = config.user.split_once(':').unwrap();
        command.args(["--setuid", uid, "--setgid", gid]);
    } else {
        command.arg("--map-root-user");
    }
    command.arg(format!("--root={}", rootfs.display())).arg(format!("--wd={}", config.working_dir));
    command.args(args).env_clear();
    for pair in &config.env {
        let (k, v) = pair.split_once('=').unwrap();
        command.env(k, v);
    }
    command
}

/// The parts of the image configuration this test reads.
mod oci_config {
    use xtask::oci_spec::image::ImageConfiguration;

    pub struct Config {
        pub user: String,
        pub working_dir: String,
        pub env: Vec<String>,
        pub entrypoint: Vec<String>,
        pub cmd: Vec<String>,
        pub labels: std::collections::HashMap<String, String>,
    }

    pub fn read(config: &ImageConfiguration) -> Config {
        let c = config.config().clone().expect("a config section");
        Config {
            user: c.user().clone().unwrap_or_default(),
            working_dir: c.working_dir().clone().unwrap_or_default(),
            env: c.env().clone().unwrap_or_default(),
            entrypoint: c.entrypoint().clone().unwrap_or_default(),
            cmd: c.cmd().clone().unwrap_or_default(),
            labels: c.labels().clone().unwrap_or_default(),
        }
    }
}

#[test]
fn the_image_runs_meshroot_as_its_non_root_user_from_its_own_root_filesystem() {
    let dir = tempfile::tempdir().unwrap();
    let options = |out: &str| xtask::ImageOptions {
        binary: PathBuf::from(BIN),
        out: dir.path().join(out),
        tag: "meshroot:test".into(),
        debs: debs(),
        download: true,
        source_date_epoch: 1_700_000_000,
    };
    let built = xtask::build(&options("oci")).unwrap();
    // Reproducible: the same inputs give the same image, digest for digest.
    let again = xtask::build(&options("oci-again")).unwrap();
    assert_eq!(built.manifest_digest, again.manifest_digest, "two builds of one input differ");
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("oci/index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"][0]["digest"], built.manifest_digest.as_str());
    assert_eq!(index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"], "meshroot:test");

    // A directory that is not a layout is never replaced.
    let precious = dir.path().join("precious");
    std::fs::create_dir(&precious).unwrap();
    std::fs::write(precious.join("notes.txt"), "keep").unwrap();
    let err = xtask::build(&options("precious")).unwrap_err().to_string();
    assert!(err.contains("is not an OCI layout; refusing to replace it"), "{err}");
    assert!(precious.join("notes.txt").exists());

    let rootfs = dir.path().join("rootfs");
    let config = oci_config::read(&xtask::unpack(&dir.path().join("oci"), &rootfs).unwrap());
    assert_eq!(config.user, "65532:65532", "non-root");
    assert_eq!(
        (config.entrypoint.as_slice(), config.cmd.as_slice()),
        (&["/usr/local/bin/meshroot".to_string()][..], &["serve".to_string()][..])
    );
    assert_eq!(config.working_dir, "/home/nonroot");
    let packages = &config.labels["io.meshroot.image.debian-packages"];
    assert!(packages.contains("libc6=") && packages.contains("ca-certificates="), "{packages}");

    // Only what meshroot needs: no shell, no package manager, no other programs.
    for absent in ["bin/sh", "usr/bin", "sbin", "var/lib/dpkg/status", "usr/bin/dpkg"] {
        assert!(!rootfs.join(absent).exists(), "{absent} is in the image");
    }
    // The packages are listed where scanners (syft) look, for the SBOM.
    let libc = std::fs::read_to_string(rootfs.join("var/lib/dpkg/status.d/libc6")).unwrap();
    assert!(libc.contains("Package: libc6") && libc.contains("Version: "), "{libc}");
    let bundle = std::fs::read_to_string(rootfs.join("etc/ssl/certs/ca-certificates.crt")).unwrap();
    assert!(bundle.matches("BEGIN CERTIFICATE").count() > 100, "the CA bundle");
    assert_eq!(std::fs::metadata(rootfs.join("usr/local/bin/meshroot")).unwrap().permissions().mode() & 0o7777, 0o755);

    let version = in_image(&rootfs, &config, &["/usr/local/bin/meshroot", "--version"]).output().unwrap();
    assert!(version.status.success(), "{}", String::from_utf8_lossy(&version.stderr));
    assert_eq!(String::from_utf8_lossy(&version.stdout).trim(), concat!("meshroot ", env!("CARGO_PKG_VERSION")));

    // A container runtime mounts /etc/hosts into the container; so does this test.
    std::fs::write(rootfs.join("etc/hosts"), "127.0.0.1 localhost\n::1 localhost\n").unwrap();
    // meshroot dev in the image, and the request command its banner prints, run as printed.
    let mut dev = in_image(
        &rootfs,
        &config,
        &["/usr/local/bin/meshroot", "dev", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let mut lines = BufReader::new(dev.stdout.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut request = None;
    while request.is_none() && Instant::now() < deadline {
        let Some(Ok(line)) = lines.next() else { break };
        if line.contains(" request --ca-addr ") {
            request = Some(line.trim().to_string());
        }
    }
    let request = request.unwrap_or_else(|| {
        let _ = dev.kill();
        panic!("meshroot dev in the image printed no request command")
    });
    let words: Vec<&str> = request.split_whitespace().collect();
    let issued = in_image(&rootfs, &config, &words).output().unwrap();
    let _ = dev.kill();
    let _ = dev.wait();
    assert!(
        issued.status.success(),
        "{request}: {}{}",
        String::from_utf8_lossy(&issued.stdout),
        String::from_utf8_lossy(&issued.stderr)
    );
    let home = rootfs.join("home/nonroot/.meshroot");
    assert!(home.join("workload/cert-chain.pem").exists(), "the workload certificate, under the image's home");
    for key in std::fs::read_dir(&home)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with("key.pem"))
    {
        let meta = std::fs::metadata(&key).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{}", key.display());
        if is_root() {
            assert_eq!(meta.uid(), 65532, "{} belongs to the image's user", key.display());
        }
    }
}
