//! The OCI image layout: `oci-layout`, `index.json` and content-addressed blobs (the layer,
//! the image configuration, the manifest). Documents are `oci-spec` types, serialised through
//! `serde_json::Value` so that their maps come out with sorted keys (oci-spec keeps labels and
//! annotations in hash maps, whose order changes from run to run).

use crate::elf::Arch;
use crate::layer::Layer;
use crate::{BINARY_PATH, HOME, USER_ID};
use anyhow::{Context, bail};
use oci_spec::image::{
    ConfigBuilder, Descriptor, DescriptorBuilder, HistoryBuilder, ImageConfiguration, ImageConfigurationBuilder,
    ImageIndex, ImageIndexBuilder, ImageManifest, ImageManifestBuilder, MediaType, OciLayoutBuilder, Os,
    PlatformBuilder, RootFsBuilder, Sha256Digest,
};
use std::collections::HashMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::str::FromStr as _;

/// The annotation naming an image in a layout's index.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// The label listing the Debian packages the base came from, `name=version` each.
pub const PACKAGES_LABEL: &str = "io.meshroot.image.debian-packages";

/// The image to write.
pub struct Image<'a> {
    /// The reference name recorded in the index.
    pub tag: &'a str,
    /// The binary's architecture.
    pub arch: Arch,
    /// The one layer.
    pub layer: &'a Layer,
    /// The Debian packages in it.
    pub packages: &'a [String],
    /// Seconds since 1970 for `created`.
    pub created: i64,
}

/// A document as bytes with its keys sorted.
fn canonical(document: &impl serde::Serialize) -> anyhow::Result<Vec<u8>> {
    Ok(serde_json::to_vec(&serde_json::to_value(document)?)?)
}

fn descriptor(media_type: MediaType, data: &[u8]) -> anyhow::Result<Descriptor> {
    let digest = crate::sha256_digest(data);
    let hex = digest.trim_start_matches("sha256:");
    Ok(Descriptor::new(media_type, u64::try_from(data.len())?, Sha256Digest::from_str(hex)?))
}

fn blob_path(root: &Path, digest: &str) -> anyhow::Result<PathBuf> {
    let hex = digest.strip_prefix("sha256:").with_context(|| format!("digest {digest} is not sha256"))?;
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("digest {digest} is not a sha256 digest");
    }
    Ok(root.join("blobs/sha256").join(hex))
}

/// Checks that `out` may be written: a new or empty directory, or an earlier layout (only a
/// layout is ever replaced); returns its name.
pub fn check_target(out: &Path) -> anyhow::Result<&std::ffi::OsStr> {
    let name = out.file_name().with_context(|| format!("{} does not name a directory to write", out.display()))?;
    if out.exists() && !out.join("oci-layout").exists() && std::fs::read_dir(out)?.next().is_some() {
        bail!("{} exists and is not an OCI layout; refusing to replace it", out.display());
    }
    Ok(name)
}

/// Writes `image` as an OCI layout at `out` (built beside it, then moved into place, so a
/// failed build leaves the previous layout); returns the manifest's digest.
pub fn write(out: &Path, image: &Image<'_>) -> anyhow::Result<String> {
    let version = env!("CARGO_PKG_VERSION");
    let created = time::OffsetDateTime::from_unix_timestamp(image.created)?
        .format(&time::format_description::well_known::Rfc3339)?;
    let labels = HashMap::from([
        ("org.opencontainers.image.title".to_string(), "meshroot".to_string()),
        ("org.opencontainers.image.version".to_string(), version.to_string()),
        ("org.opencontainers.image.licenses".to_string(), "Apache-2.0".to_string()),
        (PACKAGES_LABEL.to_string(), image.packages.join(" ")),
    ]);
    let config = ConfigBuilder::default()
        .user(format!("{USER_ID}:{USER_ID}"))
        .entrypoint(vec![format!("/{BINARY_PATH}")])
        .cmd(vec!["serve".to_string()])
        .working_dir(format!("/{HOME}"))
        .env(vec![
            "PATH=/usr/local/bin:/usr/bin:/bin".to_string(),
            format!("SSL_CERT_FILE=/{}", crate::debian::CA_BUNDLE),
        ])
        .exposed_ports(vec!["15012/tcp".to_string(), "15014/tcp".to_string()])
        .labels(labels.clone())
        .build()?;
    let configuration = ImageConfigurationBuilder::default()
        .created(created.clone())
        .architecture(image.arch.oci)
        .os(Os::Linux)
        .config(config)
        .rootfs(RootFsBuilder::default().typ("layers").diff_ids(vec![image.layer.diff_id.clone()]).build()?)
        .history(vec![
            HistoryBuilder::default()
                .created(created)
                .created_by(format!("cargo xtask image (meshroot {version}; {})", image.packages.join(" ")))
                .build()?,
        ])
        .build()?;
    let config_json = canonical(&configuration)?;
    let config_descriptor = descriptor(MediaType::ImageConfig, &config_json)?;
    let layer_descriptor = descriptor(MediaType::ImageLayerGzip, &image.layer.gzip)?;
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(config_descriptor.clone())
        .layers(vec![layer_descriptor.clone()])
        .annotations(labels)
        .build()?;
    let manifest_json = canonical(&manifest)?;
    let manifest_descriptor = descriptor(MediaType::ImageManifest, &manifest_json)?;
    let index = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(vec![
            DescriptorBuilder::default()
                .media_type(MediaType::ImageManifest)
                .digest(manifest_descriptor.digest().clone())
                .size(manifest_descriptor.size())
                .platform(PlatformBuilder::default().architecture(image.arch.oci).os(Os::Linux).build()?)
                .annotations(HashMap::from([(REF_NAME.to_string(), image.tag.to_string())]))
                .build()?,
        ])
        .build()?;

    let name = check_target(out)?;
    let building = out.with_file_name(format!(".{}.building", name.to_string_lossy()));
    if building.exists() {
        std::fs::remove_dir_all(&building).with_context(|| format!("removing {}", building.display()))?;
    }
    std::fs::create_dir_all(building.join("blobs/sha256"))?;
    // Each blob under the digest its descriptor already holds (the layer is megabytes: hashed once).
    for (described, data) in [
        (&layer_descriptor, &image.layer.gzip),
        (&config_descriptor, &config_json),
        (&manifest_descriptor, &manifest_json),
    ] {
        std::fs::write(blob_path(&building, described.digest().as_ref())?, data)?;
    }
    std::fs::write(building.join("index.json"), canonical(&index)?)?;
    let layout = OciLayoutBuilder::default().image_layout_version("1.0.0").build()?;
    std::fs::write(building.join("oci-layout"), canonical(&layout)?)?;
    if out.exists() {
        std::fs::remove_dir_all(out).with_context(|| format!("removing the previous {}", out.display()))?;
    }
    std::fs::rename(&building, out).with_context(|| format!("moving the layout to {}", out.display()))?;
    Ok(manifest_descriptor.digest().to_string())
}

/// A blob of the layout, refused unless its content has its digest.
fn read_blob(root: &Path, digest: &str) -> anyhow::Result<Vec<u8>> {
    let path = blob_path(root, digest)?;
    let data = std::fs::read(&path).with_context(|| format!("reading blob {}", path.display()))?;
    if crate::sha256_digest(&data) != digest {
        bail!("blob {} does not match its digest", path.display());
    }
    Ok(data)
}

/// Unpacks the first image of the layout at `root` into `rootfs` (owners kept when run as
/// root); returns its configuration.
pub fn unpack(root: &Path, rootfs: &Path) -> anyhow::Result<ImageConfiguration> {
    let index: ImageIndex = serde_json::from_slice(&std::fs::read(root.join("index.json"))?)?;
    let entry = index.manifests().first().context("the layout's index lists no image")?;
    let manifest: ImageManifest = serde_json::from_slice(&read_blob(root, entry.digest().as_ref())?)?;
    let config: ImageConfiguration = serde_json::from_slice(&read_blob(root, manifest.config().digest().as_ref())?)?;
    std::fs::create_dir_all(rootfs)?;
    for layer in manifest.layers() {
        if *layer.media_type() != MediaType::ImageLayerGzip {
            bail!("layer media type {} is not gzip", layer.media_type());
        }
        let gzip = read_blob(root, layer.digest().as_ref())?;
        let mut tar = Vec::new();
        flate2::read::GzDecoder::new(gzip.as_slice()).read_to_end(&mut tar)?;
        let mut archive = tar::Archive::new(tar.as_slice());
        archive.set_preserve_permissions(true);
        archive.set_preserve_ownerships(true);
        archive.unpack(rootfs).with_context(|| format!("unpacking into {}", rootfs.display()))?;
    }
    Ok(config)
}
