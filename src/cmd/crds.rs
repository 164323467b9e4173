//! `meshroot crds`: meshroot's CustomResourceDefinitions as YAML.

use std::path::PathBuf;

/// The flags of `meshroot crds`.
#[derive(clap::Args)]
pub struct Args {
    /// Write one file per CRD here instead of printing.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// `meshroot crds`: prints every CRD as YAML, or writes one file each into `--out`.
pub fn run(args: Args) -> anyhow::Result<()> {
    for (file, crd) in crate::api::crds() {
        let yaml = crate::api::crd_yaml(&crd)?;
        match &args.out {
            Some(dir) => {
                std::fs::create_dir_all(dir)?;
                std::fs::write(dir.join(&file), yaml)?;
                println!("wrote {}", dir.join(&file).display());
            }
            None => print!("{yaml}"),
        }
    }
    Ok(())
}
