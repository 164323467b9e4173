//! `meshroot request`: get a workload certificate the way pilot-agent does.

use crate::client::{self, VerifiedResponse};
use crate::duration;
use crate::fsutil::{self, Existing};
use crate::names::DEFAULT_CLUSTER_ID;
use crate::pb::IstioCertificateRequest;
use crate::pki::csr::build_workload_csr;
use crate::pki::{KeyAlgorithm, PrivateKey, SpiffeId, TrustBundle, pem};
use anyhow::{Context, bail};
use prost_types::{Struct, Value, value::Kind};
use std::path::PathBuf;
use time::OffsetDateTime;
use zeroize::Zeroizing;

/// The flags of `meshroot request`, which are its options as they are. No
/// `Debug`: it holds the token.
#[derive(Clone, clap::Args)]
pub struct Args {
    /// CA address, HOST:PORT; HOST is the TLS server name.
    #[arg(long)]
    pub ca_addr: String,
    /// Root certificate(s) to trust for the CA and the issued chain.
    #[arg(long)]
    pub root_cert: PathBuf,
    /// Bearer token.
    #[arg(long, env = "MESHROOT_TOKEN", hide_env_values = true, conflicts_with = "token_file", value_parser = secret_value)]
    pub token: Option<Zeroizing<String>>,
    /// File holding the bearer token.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// The SPIFFE ID to request.
    #[arg(long)]
    pub identity: String,
    /// Key type of the workload key generated for the CSR: RSA-2048 as pilot-agent's default
    /// (ztunnel sends ECDSA P-256).
    #[arg(long, default_value = "rsa-2048", value_parser = super::key_algorithms())]
    pub key_type: KeyAlgorithm,
    /// Lifetime to request; the CA may clamp it. A workload certificate's lifetime is its TTL, as
    /// in Istio and in `dev`'s and `serve`'s `--default-ttl` and `--max-ttl`.
    #[arg(long, default_value = "24h", value_parser = duration::parse)]
    pub ttl: time::Duration,
    /// The cluster id to send in `clusterid`.
    #[arg(long, default_value = DEFAULT_CLUSTER_ID)]
    pub cluster_id: String,
    /// Output directory for key.pem, cert-chain.pem and root-cert.pem; created if missing. The default
    /// is git-ignored and kept out of the image's build context, so a key never lands in a commit.
    #[arg(long, default_value = ".meshroot/workload")]
    pub out: PathBuf,
}

/// A token flag, held so that it is wiped from memory when dropped.
fn secret_value(s: &str) -> Result<Zeroizing<String>, std::convert::Infallible> {
    Ok(Zeroizing::new(s.to_string()))
}

/// What [`request`] got and wrote.
pub struct RequestOutcome {
    /// The CA's response, verified against the root file.
    pub response: VerifiedResponse,
    /// The files written: key, certificate chain and root bundle.
    pub files: Vec<PathBuf>,
}

/// Generates a key and CSR, calls the CA, verifies the chain against the
/// root file, and writes `key.pem`, `cert-chain.pem` and `root-cert.pem`.
pub async fn request(opts: &Args) -> anyhow::Result<RequestOutcome> {
    SpiffeId::parse(&opts.identity).context("--identity")?;
    let root_pem = fsutil::read(&opts.root_cert)?;
    let trusted =
        TrustBundle::from_pem(&root_pem).with_context(|| format!("--root-cert {}", opts.root_cert.display()))?;
    let token = match (&opts.token, &opts.token_file) {
        (Some(t), None) => t.clone(),
        (None, Some(path)) => {
            // Like pilot-agent's token file: the whole file, whitespace trimmed.
            let raw = Zeroizing::new(fsutil::read(path)?);
            let text = std::str::from_utf8(&raw).with_context(|| format!("{} is not text", path.display()))?;
            Zeroizing::new(text.trim().to_string())
        }
        _ => bail!("give exactly one of --token and --token-file"),
    };
    if token.is_empty() {
        bail!("the token is empty");
    }

    let key = PrivateKey::generate(opts.key_type)?;
    let csr = build_workload_csr(&key, &opts.identity)?;
    let metadata =
        Struct { fields: [("CertSigner".to_string(), Value { kind: Some(Kind::StringValue(String::new())) })].into() };
    let body = IstioCertificateRequest { csr, validity_duration: opts.ttl.whole_seconds(), metadata: Some(metadata) };

    let mut ca = client::connect(&opts.ca_addr, &root_pem).await?;
    let response = ca
        .create_certificate(client::request(body, Some(&token), &opts.cluster_id)?)
        .await
        .map_err(|s| client::ClientError::Refused { code: s.code(), message: s.message().to_string() })?
        .into_inner();
    let verified = client::verify_response(&response, &trusted, &opts.identity)?;

    fsutil::create_private_dir(&opts.out)?;
    let key_path = opts.out.join("key.pem");
    let chain_path = opts.out.join("cert-chain.pem");
    let root_path = opts.out.join("root-cert.pem");
    let chain: String = std::iter::once(&verified.leaf)
        .chain(verified.intermediates.iter())
        .map(|c| pem::encode_certificate(c))
        .collect();
    fsutil::write_private(&key_path, key.to_pem().as_bytes(), Existing::Replace)?;
    fsutil::write_public(&chain_path, chain.as_bytes(), Existing::Replace)?;
    fsutil::write_public(&root_path, verified.bundle.pem().as_bytes(), Existing::Replace)?;
    Ok(RequestOutcome { response: verified, files: vec![key_path, chain_path, root_path] })
}

/// The report `meshroot request` prints: SAN, expiry, chain shape and the files written.
pub fn summary(outcome: &RequestOutcome) -> String {
    let r = &outcome.response;
    let left = r.not_after - OffsetDateTime::now_utc();
    let files: Vec<String> = outcome.files.iter().map(|p| p.display().to_string()).collect();
    format!(
        "SAN:     {}\nexpires: {} (in {})\nchain:   leaf + {} intermediate(s), {} trusted root(s); verified against the root file\nwrote:   {}\n",
        r.uri_san,
        crate::pki::rfc3339(r.not_after),
        duration::rounded(left),
        r.intermediates.len(),
        r.bundle.roots().len(),
        files.join(", ")
    )
}

/// `meshroot request`: requests, verifies, writes, and says what it did.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let outcome = request(&args).await?;
    print!("{}", summary(&outcome));
    Ok(())
}
