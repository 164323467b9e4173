//! The benchmark's PKI and callers: a root, a mesh intermediate of the
//! chosen key type, a serving certificate, tokens for many identities, and
//! CSRs as pilot-agent (RSA-2048) and ztunnel (P-256) send them. Written to
//! a directory so the server process loads exactly what the ceiling uses.

use crate::fsutil::{Existing, write_private, write_public};
use crate::pki::csr::build_workload_csr;
use crate::pki::{Authority, CaSpec, KeyAlgorithm, PrivateKey, SigningChain, TrustBundle, pem, profile};
use anyhow::Context;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use time::{Duration, OffsetDateTime};

/// The benchmark mesh's trust domain.
pub const TRUST_DOMAIN: &str = "cluster.local";
/// The namespace of every benchmark identity.
pub const NAMESPACE: &str = "bench";

/// The SPIFFE ID of caller `i` (service account `sa-{i}` in [`NAMESPACE`]).
pub fn identity(i: usize) -> String {
    format!("spiffe://{TRUST_DOMAIN}/ns/{NAMESPACE}/sa/sa-{i}")
}

/// The static bearer token of caller `i`, as written to the token file.
pub fn token(i: usize) -> String {
    format!("bench-token-{i}")
}

/// Files the server process reads.
pub struct Files {
    /// The directory holding them.
    pub dir: PathBuf,
}

impl Files {
    /// The root certificate (PEM).
    pub fn root(&self) -> PathBuf {
        self.dir.join("root.pem")
    }
    /// The mesh intermediate's certificate (PEM), the signer of workload certificates.
    pub fn signer_cert(&self) -> PathBuf {
        self.dir.join("signer.pem")
    }
    /// The mesh intermediate's private key (PEM, written private).
    pub fn signer_key(&self) -> PathBuf {
        self.dir.join("signer-key.pem")
    }
    /// The server's TLS certificate chain (PEM), for `localhost` and 127.0.0.1.
    pub fn serving_chain(&self) -> PathBuf {
        self.dir.join("serving.pem")
    }
    /// The server's TLS private key (PEM, written private).
    pub fn serving_key(&self) -> PathBuf {
        self.dir.join("serving-key.pem")
    }
    /// The static token file (`TOKEN NAMESPACE SERVICEACCOUNT` per line).
    pub fn tokens(&self) -> PathBuf {
        self.dir.join("tokens")
    }
    /// Written by the server process once it listens; holds its gRPC port.
    pub fn ready(&self) -> PathBuf {
        self.dir.join("ready")
    }
    /// Written by the server process as it exits: the requests it received, the certificates it
    /// issued and the requests it refused, separated by spaces.
    pub fn counts(&self) -> PathBuf {
        self.dir.join("counts")
    }
}

/// Creates the PKI and the token file for `identities` callers in `dir`.
/// Returns the signing chain (for the ceiling) and the root PEM.
pub fn create(
    dir: &Path,
    signer: KeyAlgorithm,
    identities: usize,
) -> anyhow::Result<(Files, Arc<SigningChain>, String)> {
    let now = OffsetDateTime::now_utc();
    let root = Authority::new_root(&CaSpec::root(Duration::days(30)), now)?;
    let mut spec = CaSpec::intermediate("bench", Duration::days(7));
    spec.key_algorithm = signer;
    let intermediate = root.new_intermediate(&spec, now)?;
    let serving_key = PrivateKey::generate(KeyAlgorithm::EcdsaP256)?;
    let serving = profile::issue_server(
        &root,
        &serving_key.spki_der(),
        &["localhost".to_string()],
        &[std::net::IpAddr::from([127, 0, 0, 1])],
        Duration::days(1),
        now,
    )?;
    let files = Files { dir: dir.to_path_buf() };
    let write_err = |p: &Path| format!("writing {}", p.display());
    write_public(&files.root(), root.certificate_pem().as_bytes(), Existing::Replace)
        .with_context(|| write_err(&files.root()))?;
    write_public(&files.signer_cert(), intermediate.certificate_pem().as_bytes(), Existing::Replace)
        .with_context(|| write_err(&files.signer_cert()))?;
    write_private(&files.signer_key(), intermediate.key().to_pem().as_bytes(), Existing::Replace)
        .with_context(|| write_err(&files.signer_key()))?;
    write_public(&files.serving_chain(), serving.pem.as_bytes(), Existing::Replace)
        .with_context(|| write_err(&files.serving_chain()))?;
    write_private(&files.serving_key(), serving_key.to_pem().as_bytes(), Existing::Replace)
        .with_context(|| write_err(&files.serving_key()))?;
    let mut tokens = String::with_capacity(identities * 48);
    for i in 0..identities {
        tokens.push_str(&format!("{} {NAMESPACE} sa-{i}\n", token(i)));
    }
    write_private(&files.tokens(), tokens.as_bytes(), Existing::Replace).with_context(|| write_err(&files.tokens()))?;

    let root_pem = root.certificate_pem().to_string();
    let bundle = TrustBundle::new(vec![root.certificate().clone()])?;
    let chain = Arc::new(SigningChain::new(intermediate, Vec::new(), bundle)?);
    Ok((files, chain, root_pem))
}

/// The server's side of [`create`]: the signing chain and serving identity.
pub fn load_signer(files: &Files) -> anyhow::Result<SigningChain> {
    let read = |p: PathBuf| std::fs::read(&p).with_context(|| format!("reading {}", p.display()));
    let authority = Authority::from_pem(&read(files.signer_cert())?, &read(files.signer_key())?)?;
    let bundle = TrustBundle::from_pem(&read(files.root())?)?;
    Ok(SigningChain::new(authority, Vec::new(), bundle)?)
}

/// The server's TLS certificate chain and key, as [`create`] wrote them.
pub fn load_serving(files: &Files) -> anyhow::Result<(Vec<rustls_pki_types::CertificateDer<'static>>, PrivateKey)> {
    let chain_pem = std::fs::read(files.serving_chain())?;
    let chain = pem::decode_certificates(&chain_pem, crate::pki::authority::MAX_CERT_PEM_BYTES)?;
    let key = PrivateKey::from_pem(&std::fs::read(files.serving_key())?)?;
    Ok((chain, key))
}

/// `count` CSRs for identities `0..count`, made with one key of `kind`
/// (the server's cost does not depend on whether keys repeat).
pub fn csrs(kind: KeyAlgorithm, count: usize) -> anyhow::Result<Vec<String>> {
    let key = PrivateKey::generate(kind)?;
    (0..count).map(|i| Ok(build_workload_csr(&key, &identity(i))?)).collect()
}
