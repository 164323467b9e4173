//! `meshroot root`: show and drive a zero-downtime root rotation on the root
//! Secret (`docs/rotation.md`).

use crate::fsutil::{self, Existing};
use crate::k8s::root::TLS_CERT;
use crate::k8s::rotation::{self, RotationError};
use crate::pki::{Authority, CaSpec, KeyAlgorithm, TrustBundle};
use anyhow::Context;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use std::path::{Path, PathBuf};
use time::OffsetDateTime;

/// The flags of `meshroot root`.
#[derive(clap::Args)]
pub struct Args {
    /// meshroot's namespace, where the root Secret is (before or after the step).
    #[arg(long, short = 'n', global = true, env = "POD_NAMESPACE", default_value = "meshroot")]
    namespace: String,
    /// The root Secret (before or after the step).
    #[arg(long, global = true, env = "MESHROOT_ROOT_SECRET", default_value = crate::k8s::root::DEFAULT_SECRET)]
    secret: String,
    #[command(subcommand)]
    step: Step,
}

#[cfg(test)]
impl Args {
    pub(super) fn namespace(&self) -> &str {
        &self.namespace
    }

    /// `finish`'s `--force`; `None` for another step.
    pub(super) fn force(&self) -> Option<bool> {
        match &self.step {
            Step::Finish { force, .. } => Some(*force),
            _ => None,
        }
    }

    pub(super) fn secret(&self) -> &str {
        &self.secret
    }
}

#[derive(clap::Subcommand)]
enum Step {
    /// Show the roots and the rotation stage.
    Status,
    /// Create a new root in files (root-cert.pem, root-key.pem 0600), for `add` and `switch`.
    Generate {
        /// Directory for root-cert.pem and root-key.pem (existing files are never overwritten).
        #[arg(long)]
        out: PathBuf,
        /// Key type of the new root.
        #[arg(long, default_value = "ecdsa-p256", value_parser = super::key_algorithms())]
        key_type: KeyAlgorithm,
        /// Lifetime of the new root, e.g. 3650d (`pki init` calls it --root-lifetime, also accepted).
        #[arg(long, visible_alias = "root-lifetime", default_value = "3650d", value_parser = crate::duration::parse)]
        lifetime: time::Duration,
    },
    /// Step 1: trust the new root beside the current one, everywhere.
    Add {
        /// The new root's certificate (PEM), from `meshroot root generate` or your own CA.
        #[arg(long, visible_alias = "root-cert")]
        cert: PathBuf,
    },
    /// Step 2: sign with the new root; intermediates are re-issued under it.
    Switch {
        /// The new root's certificate (PEM), as given to `add`.
        #[arg(long, visible_alias = "root-cert")]
        cert: PathBuf,
        /// The new root's key; leave out for an offline root.
        #[arg(long, visible_alias = "root-key")]
        key: Option<PathBuf>,
    },
    /// Step 3: stop trusting the old root, once no leaf of its chain is valid.
    Finish {
        /// The longest leaf lifetime issued under the old root.
        #[arg(long, default_value = "24h", value_parser = crate::duration::parse)]
        leaf_lifetime: time::Duration,
        /// Skip the waiting and intermediate checks (`--force` or `--force=true`).
        #[arg(long, default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
        force: bool,
    },
}

/// `meshroot root <step>`: `generate` works offline; the others read and
/// write the root Secret through the Kubernetes API (KUBECONFIG).
pub async fn run(args: Args) -> anyhow::Result<()> {
    let action = match args.step {
        Step::Generate { out, key_type, lifetime } => {
            print!("{}", generate(&out, key_type, lifetime)?);
            return Ok(());
        }
        Step::Status => RootAction::Status,
        Step::Add { cert } => RootAction::Add { cert },
        Step::Switch { cert, key } => RootAction::Switch { cert, key },
        Step::Finish { leaf_lifetime, force } => RootAction::Finish { leaf_lifetime, force },
    };
    let client = kube::Client::try_default().await.context("connecting to the Kubernetes API (KUBECONFIG)")?;
    print!("{}", apply(client, &args.namespace, &args.secret, action).await?);
    Ok(())
}

/// A step of `meshroot root` that reads or writes the root Secret, as [`apply`] runs it.
#[derive(Clone, Debug)]
pub enum RootAction {
    /// Show the roots and the rotation stage; writes nothing.
    Status,
    /// Step 1: trust the new root beside the current one.
    Add {
        /// The new root's certificate file (PEM).
        cert: PathBuf,
    },
    /// Step 2: the new root signs; the old one stays trusted.
    Switch {
        /// The new root's certificate file (PEM), already added.
        cert: PathBuf,
        /// The new root's key file (PEM); `None` for an offline root.
        key: Option<PathBuf>,
    },
    /// Step 3: stop trusting every root but the signing one.
    Finish {
        /// The longest leaf lifetime issued under the old root: how long after the switch to wait.
        leaf_lifetime: time::Duration,
        /// Skip the wait and the check that every intermediate is under the signing root.
        force: bool,
    },
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    Ok(fsutil::read(path)?)
}

/// Creates a new root in `out` (root-cert.pem, and root-key.pem with mode
/// 0600) for `add` and `switch`. Needs no cluster and never overwrites a file.
pub fn generate(out: &Path, key_algorithm: KeyAlgorithm, lifetime: time::Duration) -> anyhow::Result<String> {
    let mut spec = CaSpec::root(lifetime);
    spec.key_algorithm = key_algorithm;
    let root = Authority::new_root(&spec, OffsetDateTime::now_utc())?;
    fsutil::create_private_dir(out)?;
    let cert_path = out.join("root-cert.pem");
    let key_path = out.join("root-key.pem");
    fsutil::write_public(&cert_path, root.certificate_pem().as_bytes(), Existing::Refuse)?;
    fsutil::write_private(&key_path, root.key().to_pem().as_bytes(), Existing::Refuse)?;
    let fp = TrustBundle::new(vec![root.certificate().clone()])?.fingerprints().remove(0);
    Ok(format!(
        "new root {fp}\n  certificate: {}\n  key (0600): {}\nnext: meshroot root add --cert {}\n",
        cert_path.display(),
        key_path.display(),
        cert_path.display()
    ))
}

/// Runs one step against the root Secret `namespace/name`; returns what to print.
pub async fn apply(client: kube::Client, namespace: &str, name: &str, action: RootAction) -> anyhow::Result<String> {
    let now = OffsetDateTime::now_utc();
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let secret = api
        .get(name)
        .await
        .map_err(|e| anyhow::anyhow!("reading Secret {namespace}/{name}: {}", crate::k8s::error_summary(&e)))?;
    let updated = match action {
        RootAction::Status => {
            let s = rotation::status(&secret)?;
            let mut out = format!(
                "root Secret {namespace}/{name}\nstage: {}\nsigning root: {} ({})\n",
                s.stage(),
                s.signing,
                if s.online { "online" } else { "offline" }
            );
            for fp in &s.extra {
                out.push_str(&format!("also trusted: {fp}\n"));
            }
            if let Some(at) = &s.switched_at {
                out.push_str(&format!("switched at: {at}\n"));
            }
            return Ok(out);
        }
        RootAction::Add { cert } => rotation::add(&secret, &read(&cert)?, now)?,
        RootAction::Switch { cert, key } => {
            let key = key.as_deref().map(read).transpose()?;
            rotation::switch(&secret, &read(&cert)?, key.as_deref(), now)?
        }
        RootAction::Finish { leaf_lifetime, force } => {
            if !force {
                let signing = crate::k8s::secret_value(&secret, TLS_CERT)
                    .and_then(|c| crate::pki::pem::decode_certificates(c, 1 << 20).ok())
                    .and_then(|c| c.into_iter().next())
                    .ok_or_else(|| RotationError::Current("no tls.crt".into()))?;
                let stale = rotation::stale_intermediates(&client, namespace, &signing).await?;
                if !stale.is_empty() {
                    anyhow::bail!(
                        "these intermediates are not yet under the signing root, so their workloads still need the old one: {}; wait for meshroot to re-issue them (or pass --force)",
                        stale.join(", ")
                    );
                }
            }
            rotation::finish(&secret, leaf_lifetime, force, now)?
        }
    };
    let written = rotation::write(&api, &updated).await?;
    let s = rotation::status(&written)?;
    let key = if s.online { "online" } else { "offline" };
    Ok(format!("root Secret {namespace}/{name} updated\nstage: {}\nsigning root: {} ({key})\n", s.stage(), s.signing))
}
