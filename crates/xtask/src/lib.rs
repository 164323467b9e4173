//! `cargo xtask image`: meshroot's release image as an OCI image layout, assembled without a
//! container engine (none runs on the build machines) and reproducibly: the same binary, the
//! same Debian packages and the same `SOURCE_DATE_EPOCH` give the same digest.
//!
//! The image is one layer: the binary, the shared libraries its ELF header names (taken from
//! Debian's packages, nothing else of them), the CA certificates, a non-root user and `/tmp`.
//! No shell, no package manager. The OCI documents are `oci-spec` types; the layer is written
//! with `tar` and `flate2`.

pub mod debian;
pub mod elf;
pub mod layer;
pub mod layout;

pub use oci_spec;

use anyhow::Context;
use std::path::{Path, PathBuf};

/// Where the binary goes in the image.
pub const BINARY_PATH: &str = "usr/local/bin/meshroot";
/// The user the image runs as (distroless's `nonroot`).
pub const USER_ID: u64 = 65532;
/// The non-root user's home, the image's working directory.
pub const HOME: &str = "home/nonroot";

/// What to build.
#[derive(Clone, Debug)]
pub struct ImageOptions {
    /// The meshroot binary (a release build for a release).
    pub binary: PathBuf,
    /// The OCI layout directory to write (replaced if it exists).
    pub out: PathBuf,
    /// The reference name recorded in the layout's index, for example `meshroot:0.1.0`.
    pub tag: String,
    /// Where the Debian packages are, or are downloaded to.
    pub debs: PathBuf,
    /// Download missing packages with `apt-get download`; without it, only `debs` is used.
    pub download: bool,
    /// Timestamps in the image (`SOURCE_DATE_EPOCH`), seconds since 1970.
    pub source_date_epoch: i64,
}

/// What was built.
#[derive(Debug)]
pub struct Built {
    /// The manifest's digest (`sha256:…`): the image's identity.
    pub manifest_digest: String,
    /// The Debian packages in it, as `name=version`.
    pub packages: Vec<String>,
}

/// Builds the image described by `options`.
pub fn build(options: &ImageOptions) -> anyhow::Result<Built> {
    layout::check_target(&options.out)?;
    let binary = std::fs::read(&options.binary).with_context(|| format!("reading {}", options.binary.display()))?;
    let needs =
        elf::needs(&binary).with_context(|| format!("reading the ELF header of {}", options.binary.display()))?;
    let packages = debian::fetch(&options.debs, needs.arch, options.download)?;
    let mut files = debian::runtime_files(&packages, &needs)?;
    files.extend(layer::base_files());
    files.push(layer::Entry::file(BINARY_PATH, binary, 0o755));
    let layer = layer::write(files, options.source_date_epoch)?;
    let versions: Vec<String> = packages.iter().map(|p| format!("{}={}", p.name, p.version)).collect();
    let manifest_digest = layout::write(
        &options.out,
        &layout::Image {
            tag: &options.tag,
            arch: needs.arch,
            layer: &layer,
            packages: &versions,
            created: options.source_date_epoch,
        },
    )?;
    Ok(Built { manifest_digest, packages: versions })
}

/// The image's root filesystem, unpacked from the layout at `layout` into `rootfs`; returns the
/// image's configuration. Each blob's digest is checked before it is used.
pub fn unpack(layout: &Path, rootfs: &Path) -> anyhow::Result<oci_spec::image::ImageConfiguration> {
    layout::unpack(layout, rootfs)
}

/// SHA-256 as `sha256:<hex>`, the digest of a blob.
pub fn sha256_digest(data: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}
