//! `meshroot pki init`: the offline replacement for the page of openssl
//! commands. It creates (or imports) a root and, per mesh, an intermediate in
//! Istio's `cacerts` layout with a ready-to-apply Secret manifest.

use crate::dev::state::write_cacerts;
use crate::duration;
use crate::fsutil::{self, Existing};
use crate::k8s::intermediates::{CACERTS_CERT, CACERTS_CHAIN, CACERTS_KEY};
use crate::k8s::root::ROOT_CERT_KEY;
use crate::names::is_dns1123_label;
use crate::pki::spiffe::validate_trust_domain;
use crate::pki::{Authority, CaSpec, KeyAlgorithm, PkiError, TrustBundle};
use anyhow::{Context, bail};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use time::{Duration, OffsetDateTime};

/// One `--mesh NAME[=TRUST_DOMAIN]` value of `pki init`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeshArg {
    /// The mesh's name, a DNS-1123 label; also its output directory.
    pub name: String,
    /// The mesh's SPIFFE trust domain; `cluster.local` when not given.
    pub trust_domain: String,
}

/// Why a `--mesh` value is refused.
#[derive(Debug, thiserror::Error)]
pub enum MeshArgError {
    /// The name is not a DNS-1123 label.
    #[error("mesh name {0:?} must be a DNS-1123 label (lowercase letters, digits, '-')")]
    Name(String),
    /// The trust domain is not a valid SPIFFE trust domain.
    #[error("mesh {name}: {error}")]
    TrustDomain {
        /// The mesh's name.
        name: String,
        /// Why the trust domain is refused.
        error: PkiError,
    },
}

impl std::str::FromStr for MeshArg {
    type Err = MeshArgError;
    fn from_str(s: &str) -> Result<Self, MeshArgError> {
        let (name, td) = s.split_once('=').unwrap_or((s, "cluster.local"));
        if !is_dns1123_label(name) {
            return Err(MeshArgError::Name(name.to_string()));
        }
        validate_trust_domain(td).map_err(|error| MeshArgError::TrustDomain { name: name.to_string(), error })?;
        Ok(Self { name: name.to_string(), trust_domain: td.to_string() })
    }
}

/// `meshroot pki`: offline PKI tasks.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Create or import a root, and an Istio `cacerts` intermediate per mesh.
    Init(InitArgs),
}

/// The flags of `meshroot pki init`, which are its options as they are.
#[derive(Clone, Debug, clap::Args)]
pub struct InitArgs {
    /// Output directory. Existing files are never overwritten; run again on the same directory to
    /// add meshes under the root already there.
    #[arg(long)]
    pub out: PathBuf,
    /// Import this root certificate instead of creating one.
    #[arg(long, requires = "root_key")]
    pub root_cert: Option<PathBuf>,
    /// The imported root's private key (PKCS#8, PKCS#1 or SEC1 PEM).
    #[arg(long, requires = "root_cert")]
    pub root_key: Option<PathBuf>,
    /// NAME[=TRUST_DOMAIN]; repeatable. Trust domain defaults to cluster.local.
    #[arg(long = "mesh", required = true)]
    pub meshes: Vec<MeshArg>,
    /// Key type for created keys.
    #[arg(long, default_value = "ecdsa-p256", value_parser = super::key_algorithms())]
    pub key_type: KeyAlgorithm,
    /// Lifetime of a created root (ignored with --root-cert), e.g. 3650d.
    #[arg(long, default_value = "3650d", value_parser = duration::parse)]
    pub root_lifetime: Duration,
    /// Lifetime of each mesh's intermediate, e.g. 365d.
    #[arg(long, default_value = "365d", value_parser = duration::parse)]
    pub intermediate_lifetime: Duration,
}

/// Runs the `pki` subcommand and prints what it wrote.
pub fn run(args: Args) -> anyhow::Result<()> {
    let Command::Init(init_args) = args.command;
    for line in init(&init_args)?.lines {
        println!("{line}");
    }
    Ok(())
}

/// What was written, for the summary.
pub struct PkiInitOutcome {
    /// One human-readable line for the root and one per mesh, in order.
    pub lines: Vec<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SecretManifest {
    api_version: &'static str,
    kind: &'static str,
    metadata: SecretMetadata,
    #[serde(rename = "type")]
    type_: &'static str,
    string_data: BTreeMap<&'static str, String>,
}

#[derive(Serialize)]
struct SecretMetadata {
    name: &'static str,
    annotations: BTreeMap<&'static str, String>,
}

/// `pki init`: writes the root and one `cacerts` directory per mesh. Run again on the same
/// directory, it adds meshes under the root already there. On a failure, whatever this run
/// created is removed again, so a refused run leaves the directory as it found it.
pub fn init(opts: &InitArgs) -> anyhow::Result<PkiInitOutcome> {
    if opts.meshes.is_empty() {
        bail!("give at least one --mesh NAME[=TRUST_DOMAIN]");
    }
    let mut seen = std::collections::BTreeSet::new();
    for m in &opts.meshes {
        if !seen.insert(&m.name) {
            bail!("mesh {} is given twice", m.name);
        }
    }
    let mut created = Created::default();
    let outcome = init_into(opts, &mut created);
    if outcome.is_err() {
        created.remove();
    }
    outcome
}

/// What one run of `pki init` created, to be removed if the run fails.
#[derive(Default)]
struct Created {
    files: Vec<PathBuf>,
    /// Directories that did not exist before the run: all they hold is the run's.
    dirs: Vec<PathBuf>,
}

impl Created {
    /// Creates `path` (and its parents) 0700. Only a directory this call itself created is
    /// recorded: `create_dir` is atomic, so of two runs racing for one directory, only the run
    /// that made it may remove it.
    fn dir(&mut self, path: &Path) -> std::io::Result<()> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        match std::fs::create_dir(path) {
            Ok(()) => self.dirs.push(path.to_path_buf()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o700))
    }

    fn remove(self) {
        for file in self.files.iter().rev() {
            let _ = std::fs::remove_file(file);
        }
        for dir in self.dirs.iter().rev() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn init_into(opts: &InitArgs, created: &mut Created) -> anyhow::Result<PkiInitOutcome> {
    let now = OffsetDateTime::now_utc();
    for mesh in &opts.meshes {
        let dir = opts.out.join(&mesh.name);
        if dir.exists() {
            bail!(
                "{} already exists: mesh {} was made before; choose another name, or remove the directory to make it again",
                dir.display(),
                mesh.name
            );
        }
    }
    created.dir(&opts.out)?;
    let mut lines = Vec::new();
    let root_cert_path = opts.out.join("root-cert.pem");
    let root_key_path = opts.out.join("root-key.pem");
    let existing_root = root_cert_path.exists().then(|| fsutil::read(&root_cert_path)).transpose()?;

    let root = match (&opts.root_cert, &opts.root_key) {
        (Some(cert), Some(key)) => {
            let root = Authority::from_pem(&fsutil::read(cert)?, &fsutil::read(key)?)
                .with_context(|| format!("importing the root {} with key {}", cert.display(), key.display()))?;
            if !root.is_self_signed() {
                bail!("{} is not a self-signed root; import the root itself", cert.display());
            }
            root.check_valid_at(now).context("the imported root")?;
            if let Some(existing) = &existing_root {
                let existing = TrustBundle::from_pem(existing)
                    .with_context(|| format!("reading the root already in {}", root_cert_path.display()))?;
                if existing.roots() != [root.certificate().clone()] {
                    bail!("{} already holds another root; give a new --out for {}", opts.out.display(), cert.display());
                }
                lines.push(format!("adding meshes under the imported root {} ({})", root.subject(), root.key_kind()));
            } else {
                lines.push(format!("imported root {} ({})", root.subject(), root.key_kind()));
            }
            root
        }
        (None, None) => match &existing_root {
            Some(cert) => {
                if !root_key_path.exists() {
                    bail!(
                        "{} holds a root without its key (an imported root's key is not kept there): give --root-cert and --root-key to add meshes under it",
                        opts.out.display()
                    );
                }
                let root = Authority::from_pem(cert, &fsutil::read(&root_key_path)?)
                    .with_context(|| format!("loading the root in {}", opts.out.display()))?;
                root.check_valid_at(now).context("the root already there")?;
                lines.push(format!(
                    "adding meshes under the root in {}: {} ({})",
                    opts.out.display(),
                    root.subject(),
                    root.key_kind()
                ));
                root
            }
            None => {
                if root_key_path.exists() {
                    bail!("{} holds root-key.pem without root-cert.pem; refusing to replace it", opts.out.display());
                }
                let mut spec = CaSpec::root(opts.root_lifetime);
                spec.key_algorithm = opts.key_type;
                let root = Authority::new_root(&spec, now)?;
                fsutil::write_private(&root_key_path, root.key().to_pem().as_bytes(), Existing::Refuse)?;
                created.files.push(root_key_path.clone());
                lines.push(format!(
                    "created root {} ({}), key in root-key.pem, expires {}",
                    root.subject(),
                    root.key_kind(),
                    rfc3339(root.not_after())
                ));
                root
            }
        },
        _ => bail!("--root-cert and --root-key go together"),
    };
    let bundle = TrustBundle::new(vec![root.certificate().clone()])?;
    if existing_root.is_none() {
        fsutil::write_public(&root_cert_path, root.certificate_pem().as_bytes(), Existing::Refuse)?;
        created.files.push(root_cert_path.clone());
    }

    for mesh in &opts.meshes {
        let dir = opts.out.join(&mesh.name);
        created.dir(&dir)?;
        let mut spec = CaSpec::intermediate(&mesh.name, opts.intermediate_lifetime);
        spec.key_algorithm = opts.key_type;
        let int = root.new_intermediate(&spec, now)?;
        // Prove the chain before writing anything for this mesh.
        let chain = crate::pki::SigningChain::new(int, vec![], bundle.clone())?;
        let int = chain.authority();
        write_cacerts(&dir, int, &root, &bundle, Existing::Refuse)
            .with_context(|| format!("writing {}", dir.display()))?;
        let manifest = secret_manifest(int, &root, &bundle, mesh)?;
        fsutil::write_private(&dir.join("cacerts-secret.yaml"), manifest.as_bytes(), Existing::Refuse)?;
        lines.push(format!(
            "mesh {} (trust domain {}): {}/{{ca-cert,ca-key,cert-chain,root-cert}}.pem, expires {}; apply with: kubectl -n <istiod namespace> apply -f {}",
            mesh.name,
            mesh.trust_domain,
            dir.display(),
            rfc3339(int.not_after()),
            dir.join("cacerts-secret.yaml").display()
        ));
    }
    Ok(PkiInitOutcome { lines })
}

/// A time as RFC 3339, as `openssl x509 -dateopt iso_8601` and Kubernetes print them.
fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_else(|_| t.to_string())
}

fn secret_manifest(int: &Authority, root: &Authority, bundle: &TrustBundle, mesh: &MeshArg) -> anyhow::Result<String> {
    let manifest = SecretManifest {
        api_version: "v1",
        kind: "Secret",
        metadata: SecretMetadata {
            name: "cacerts",
            annotations: [
                ("meshroot.io/mesh", mesh.name.clone()),
                ("meshroot.io/trust-domain", mesh.trust_domain.clone()),
            ]
            .into(),
        },
        type_: "Opaque",
        string_data: [
            (CACERTS_CERT, int.certificate_pem().to_string()),
            (CACERTS_KEY, int.key().to_pem().to_string()),
            (CACERTS_CHAIN, format!("{}{}", int.certificate_pem(), root.certificate_pem())),
            (ROOT_CERT_KEY, bundle.pem().to_string()),
        ]
        .into(),
    };
    Ok(serde_saphyr::to_string(&manifest)?)
}
