//! Dev mode's state directory: a root, one mesh intermediate (in Istio's
//! `cacerts` layout), a serving certificate and a token file. The first
//! start creates them; later starts reuse them. Partial or corrupt state is
//! an error, never silently replaced.
//!
//! ```text
//! DIR/root-cert.pem                 the trust bundle (root + DIR/root/extra-roots.pem)
//! DIR/root/ca.crt, ca.key           the root (key 0600)
//! DIR/meshes/default/ca-cert.pem    the mesh intermediate, ca-key.pem (0600),
//!                   cert-chain.pem  cert-chain.pem and root-cert.pem
//! DIR/serving/tls.crt, tls.key      the gRPC serving certificate (key 0600)
//! DIR/tokens                        TOKEN NAMESPACE SERVICEACCOUNT lines (0600)
//! ```

use crate::fsutil::{self, Existing};
use crate::pki::authority::parse_certificate;
use crate::pki::{Authority, CaSpec, PkiError, PrivateKey, SigningChain, TrustBundle, pem, profile};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use thiserror::Error;
use time::{Duration, OffsetDateTime};
use x509_parser::extensions::GeneralName;

/// Lifetime of a root created here.
pub const ROOT_LIFETIME: Duration = Duration::days(3650);
/// Lifetime of each mesh intermediate created here; a start after two thirds of it renews it.
pub const INTERMEDIATE_LIFETIME: Duration = Duration::days(365);
/// Lifetime of each serving certificate created here; a start after two thirds of it renews it.
pub const SERVING_LIFETIME: Duration = Duration::days(90);
/// The name of dev mode's one mesh (its directory under `DIR/meshes`).
pub const DEV_MESH: &str = "default";

/// Why the state directory could not be loaded or created.
#[derive(Debug, Error)]
pub enum StateError {
    /// A certificate or key file is unreadable, invalid, or does not match.
    #[error("{path}: {error}")]
    Pki {
        /// The file at fault.
        path: PathBuf,
        /// What is wrong with it.
        error: PkiError,
    },
    /// A file or directory could not be read or written.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// One file of a certificate and key pair exists without the other.
    #[error("incomplete state: {present} exists but {missing} does not; restore it or remove both")]
    Partial {
        /// The file that exists.
        present: PathBuf,
        /// The file that is missing.
        missing: PathBuf,
    },
    /// The root certificate file holds a certificate that is not self-signed.
    #[error("{0} is not a self-signed root")]
    NotRoot(PathBuf),
}

fn pki_err(path: &Path) -> impl FnOnce(PkiError) -> StateError + '_ {
    move |error| StateError::Pki { path: path.to_path_buf(), error }
}

/// Everything dev mode needs, loaded or created.
#[derive(Debug)]
pub struct DevState {
    /// The state directory.
    pub dir: PathBuf,
    /// The trust bundle file (`DIR/root-cert.pem`), rewritten on every start.
    pub bundle_path: PathBuf,
    /// The token file in use: the one given, or `DIR/tokens`.
    pub tokens_path: PathBuf,
    /// The dev mesh's intermediate, which signs workload certificates, with the bundle.
    pub chain: Arc<SigningChain>,
    /// The gRPC serving certificate (leaf first), issued by the root.
    pub serving_chain: Vec<rustls_pki_types::CertificateDer<'static>>,
    /// The serving certificate's private key.
    pub serving_key: PrivateKey,
    /// What was created (or renewed) on this start, for the startup message.
    pub created: Vec<String>,
    /// A file holding just the `default/default` token, when meshroot made the token file.
    pub default_token_path: Option<PathBuf>,
}

impl DevState {
    /// Loads or creates the state in `dir`. `token_file`, when given, must exist.
    pub fn load_or_init(dir: &Path, serving_names: &[String], token_file: Option<&Path>) -> Result<Self, StateError> {
        fsutil::create_private_dir(dir)?;
        let now = OffsetDateTime::now_utc();
        let mut created = Vec::new();

        let root_dir = dir.join("root");
        fsutil::create_private_dir(&root_dir)?;
        let root = load_or_create_root(&root_dir.join("ca.crt"), &root_dir.join("ca.key"), now, &mut created)?;
        let mut roots = vec![root.certificate().clone()];
        let extra = root_dir.join("extra-roots.pem");
        if extra.exists() {
            roots.extend(pem::decode_certificates(&fsutil::read(&extra)?, 1 << 20).map_err(pki_err(&extra))?);
        }
        let bundle = TrustBundle::new(roots).map_err(pki_err(&extra))?;
        let bundle_path = dir.join("root-cert.pem");
        fsutil::write_public(&bundle_path, bundle.pem().as_bytes(), Existing::Replace)?;

        let mesh_dir = dir.join("meshes").join(DEV_MESH);
        fsutil::create_private_dir(&mesh_dir)?;
        let chain = Arc::new(load_or_create_intermediate(&mesh_dir, &root, &bundle, now, &mut created)?);

        let serving_dir = dir.join("serving");
        fsutil::create_private_dir(&serving_dir)?;
        let (serving_chain, serving_key) =
            load_or_create_serving(&serving_dir, &root, &bundle, serving_names, now, &mut created)?;

        let default_token = dir.join("default.token");
        let tokens_path = match token_file {
            Some(path) => {
                fsutil::read(path)?;
                path.to_path_buf()
            }
            None => {
                let path = dir.join("tokens");
                if !path.exists() {
                    let token = random_token()?;
                    let text = format!(
                        "# meshroot dev tokens: TOKEN NAMESPACE SERVICEACCOUNT, one per line.\n{token} default default\n"
                    );
                    fsutil::write_private(&default_token, token.as_bytes(), Existing::Replace)?;
                    fsutil::write_private(&path, text.as_bytes(), Existing::Refuse)?;
                    created.push(format!("token file {}", path.display()));
                }
                path
            }
        };
        let default_token_path = (token_file.is_none() && default_token.exists()).then_some(default_token);
        Ok(Self {
            dir: dir.to_path_buf(),
            bundle_path,
            tokens_path,
            chain,
            serving_chain,
            serving_key,
            created,
            default_token_path,
        })
    }
}

/// Both files, neither, or an error naming the one that is missing.
fn existing_pair(a: &Path, b: &Path) -> Result<bool, StateError> {
    match (a.exists(), b.exists()) {
        (true, true) => Ok(true),
        (false, false) => Ok(false),
        (true, false) => Err(StateError::Partial { present: a.into(), missing: b.into() }),
        (false, true) => Err(StateError::Partial { present: b.into(), missing: a.into() }),
    }
}

fn load_or_create_root(
    cert: &Path,
    key: &Path,
    now: OffsetDateTime,
    created: &mut Vec<String>,
) -> Result<Authority, StateError> {
    if existing_pair(cert, key)? {
        let root = Authority::from_pem(&fsutil::read(cert)?, &fsutil::read(key)?).map_err(pki_err(cert))?;
        if !root.is_self_signed() {
            return Err(StateError::NotRoot(cert.into()));
        }
        root.check_valid_at(now).map_err(pki_err(cert))?;
        return Ok(root);
    }
    let root = Authority::new_root(&CaSpec::root(ROOT_LIFETIME), now).map_err(pki_err(cert))?;
    fsutil::write_private(key, root.key().to_pem().as_bytes(), Existing::Refuse)?;
    fsutil::write_public(cert, root.certificate_pem().as_bytes(), Existing::Refuse)?;
    created.push(format!("root CA {}", cert.display()));
    Ok(root)
}

fn load_or_create_intermediate(
    dir: &Path,
    root: &Authority,
    bundle: &TrustBundle,
    now: OffsetDateTime,
    created: &mut Vec<String>,
) -> Result<SigningChain, StateError> {
    let (cert, key) = (dir.join("ca-cert.pem"), dir.join("ca-key.pem"));
    if existing_pair(&cert, &key)? {
        let int = Authority::from_pem(&fsutil::read(&cert)?, &fsutil::read(&key)?).map_err(pki_err(&cert))?;
        if !profile::renewal_due(int.not_before(), int.not_after(), now) {
            return SigningChain::new(int, vec![], bundle.clone()).map_err(pki_err(&cert));
        }
        created.push(format!("renewed intermediate {} (it was due)", cert.display()));
    } else {
        created.push(format!("intermediate for mesh {DEV_MESH} {}", cert.display()));
    }
    let int =
        root.new_intermediate(&CaSpec::intermediate(DEV_MESH, INTERMEDIATE_LIFETIME), now).map_err(pki_err(&cert))?;
    write_cacerts(dir, &int, root, bundle, Existing::Replace)?;
    SigningChain::new(int, vec![], bundle.clone()).map_err(pki_err(&cert))
}

/// Writes an intermediate in Istio's plug-in CA layout.
pub fn write_cacerts(
    dir: &Path,
    int: &Authority,
    root: &Authority,
    bundle: &TrustBundle,
    existing: Existing,
) -> std::io::Result<()> {
    fsutil::write_private(&dir.join("ca-key.pem"), int.key().to_pem().as_bytes(), existing)?;
    fsutil::write_public(&dir.join("ca-cert.pem"), int.certificate_pem().as_bytes(), existing)?;
    let chain = format!("{}{}", int.certificate_pem(), root.certificate_pem());
    fsutil::write_public(&dir.join("cert-chain.pem"), chain.as_bytes(), existing)?;
    fsutil::write_public(&dir.join("root-cert.pem"), bundle.pem().as_bytes(), existing)
}

type ServingPair = (Vec<rustls_pki_types::CertificateDer<'static>>, PrivateKey);

fn load_or_create_serving(
    dir: &Path,
    root: &Authority,
    bundle: &TrustBundle,
    names: &[String],
    now: OffsetDateTime,
    created: &mut Vec<String>,
) -> Result<ServingPair, StateError> {
    let (cert_path, key_path) = (dir.join("tls.crt"), dir.join("tls.key"));
    let (dns, ips) = split_names(names);
    if existing_pair(&cert_path, &key_path)? {
        let key = PrivateKey::from_pem(&fsutil::read(&key_path)?).map_err(pki_err(&key_path))?;
        let certs = pem::decode_certificates(&fsutil::read(&cert_path)?, 1 << 20).map_err(pki_err(&cert_path))?;
        if serving_is_reusable(&certs, &key, bundle, &dns, &ips, now) {
            return Ok((certs, key));
        }
        created.push(format!("renewed serving certificate {}", cert_path.display()));
    } else {
        created.push(format!("serving certificate {}", cert_path.display()));
    }
    let key = PrivateKey::generate(crate::pki::KeyAlgorithm::EcdsaP256).map_err(pki_err(&key_path))?;
    let issued =
        profile::issue_server(root, &key.spki_der(), &dns, &ips, SERVING_LIFETIME, now).map_err(pki_err(&cert_path))?;
    fsutil::write_private(&key_path, key.to_pem().as_bytes(), Existing::Replace)?;
    fsutil::write_public(&cert_path, issued.pem.as_bytes(), Existing::Replace)?;
    Ok((vec![issued.der], key))
}

fn split_names(names: &[String]) -> (Vec<String>, Vec<IpAddr>) {
    let mut dns = Vec::new();
    let mut ips = Vec::new();
    for n in names {
        match n.parse::<IpAddr>() {
            Ok(ip) => ips.push(ip),
            Err(_) => dns.push(n.clone()),
        }
    }
    (dns, ips)
}

/// Reusable when it matches its key, chains to the bundle, names every
/// wanted name, and has more than a third of its life left.
fn serving_is_reusable(
    certs: &[rustls_pki_types::CertificateDer<'static>],
    key: &PrivateKey,
    bundle: &TrustBundle,
    dns: &[String],
    ips: &[IpAddr],
    now: OffsetDateTime,
) -> bool {
    let Some((leaf, intermediates)) = certs.split_first() else { return false };
    let Ok(cert) = parse_certificate(leaf) else {
        return false;
    };
    if cert.public_key().raw != key.spki_der().as_slice() || bundle.verify_server(leaf, intermediates, now).is_err() {
        return false;
    }
    let v = cert.validity();
    if profile::renewal_due(v.not_before.to_datetime(), v.not_after.to_datetime(), now) {
        return false;
    }
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return false;
    };
    let names = &san.value.general_names;
    dns.iter().all(|d| names.contains(&GeneralName::DNSName(d)))
        && ips.iter().all(|ip| {
            let octets = match ip {
                IpAddr::V4(v4) => v4.octets().to_vec(),
                IpAddr::V6(v6) => v6.octets().to_vec(),
            };
            names.contains(&GeneralName::IPAddress(&octets))
        })
}

/// 32 random bytes, hex: a dev token.
fn random_token() -> Result<String, StateError> {
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::fill(&mut bytes)
        .map_err(|_| std::io::Error::other("the system random number generator failed"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
