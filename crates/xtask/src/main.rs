//! `cargo xtask <task>` (the alias is in .cargo/config.toml).

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::Command;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "meshroot's build tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Build the release image as an OCI image layout, without a container engine.
    Image {
        /// The meshroot binary to put in it; by default a release build, made now.
        #[arg(long)]
        binary: Option<PathBuf>,
        /// The OCI layout directory to write (replaced).
        #[arg(long, default_value = "target/oci/meshroot")]
        out: PathBuf,
        /// The image's name in the layout's index (push it with: skopeo copy oci:DIR:TAG docker://REGISTRY/meshroot:TAG).
        #[arg(long, default_value = concat!("meshroot:", env!("CARGO_PKG_VERSION")))]
        tag: String,
        /// Directory of the Debian packages the base is taken from (downloaded there once).
        #[arg(long, env = "MESHROOT_IMAGE_DEBS")]
        debs: Option<PathBuf>,
        /// Use only the packages already in --debs; never download.
        #[arg(long)]
        offline: bool,
        /// Timestamps in the image, seconds since 1970 (reproducible builds' SOURCE_DATE_EPOCH).
        #[arg(long, env = "SOURCE_DATE_EPOCH", default_value_t = 0)]
        source_date_epoch: i64,
    },
    /// Unpack an image layout's root filesystem into a directory (to inspect or test it).
    Unpack {
        /// The OCI layout directory.
        #[arg(long, default_value = "target/oci/meshroot")]
        layout: PathBuf,
        /// Where to unpack it.
        #[arg(long)]
        rootfs: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Image { binary, out, tag, debs, offline, source_date_epoch } => {
            let binary = match binary {
                Some(path) => path,
                None => {
                    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
                        .args(["build", "--release", "--locked", "--bin", "meshroot"])
                        .status()
                        .context("running cargo build")?;
                    anyhow::ensure!(status.success(), "cargo build --release failed");
                    PathBuf::from("target/release/meshroot")
                }
            };
            let debs = match debs {
                Some(dir) => dir,
                None => std::env::var_os("HOME")
                    .map(|home| PathBuf::from(home).join(".cache/meshroot/debs"))
                    .context("HOME is not set: pass --debs")?,
            };
            let options = xtask::ImageOptions {
                binary,
                out: out.clone(),
                tag: tag.clone(),
                debs,
                download: !offline,
                source_date_epoch,
            };
            let built = xtask::build(&options)?;
            println!("{} {}", out.display(), built.manifest_digest);
            println!("  {tag}, from {}", built.packages.join(", "));
            println!("  push: skopeo copy oci:{}:{tag} docker://<registry>/{tag}", out.display());
        }
        Task::Unpack { layout, rootfs } => {
            let config = xtask::unpack(&layout, &rootfs)?;
            let user = config.config().as_ref().and_then(|c| c.user().clone()).unwrap_or_default();
            println!("unpacked into {} (runs as {user})", rootfs.display());
        }
    }
    Ok(())
}
