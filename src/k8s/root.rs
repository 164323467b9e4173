//! The root: read from a Secret holding `tls.crt`, `tls.key` and optional
//! `ca.crt` (extra trusted roots, for rotation), exactly what
//! `kubectl create secret tls NAME --cert root-cert.pem --key root-key.pem`
//! makes. It can be generated into that Secret on first start, or be
//! offline (no `tls.key`: nothing is signed by the root online).

use super::{FIELD_MANAGER, error_summary, managed_labels, secret_data, secret_value};
use crate::pki::{Authority, CaSpec, PkiError, TrustBundle, names_itself, path_to_root, pem};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, PostParams};
use rustls_pki_types::CertificateDer;
use thiserror::Error;
use time::{Duration, OffsetDateTime};

/// The root Secret unless `--root-secret` names another.
pub const DEFAULT_SECRET: &str = "meshroot-root-ca";
/// The Secret key of the signing root's certificate (PEM).
pub const TLS_CERT: &str = "tls.crt";
/// The Secret key of the signing root's private key (PEM); absent for an offline root.
pub const TLS_KEY: &str = "tls.key";
/// The Secret key of the other trusted roots (PEM); optional.
pub const CA_CERT: &str = "ca.crt";
/// Istio's key for the roots: in a root ConfigMap (`istio-ca-root-cert`) and in `cacerts`.
pub const ROOT_CERT_KEY: &str = "root-cert.pem";
/// Lifetime of a root meshroot generates into a missing Secret.
pub const GENERATED_ROOT_LIFETIME: Duration = Duration::days(3650);

/// Why the root could not be loaded. Secrets are named `namespace/name`.
#[derive(Debug, Error)]
pub enum RootError {
    /// The Secret does not exist and generating it was not asked for.
    #[error(
        "root Secret {namespace}/{name} does not exist; create it (kubectl -n {namespace} create secret tls {name} --cert root-cert.pem --key root-key.pem) or let meshroot generate one"
    )]
    Missing {
        /// The namespace it was looked for in.
        namespace: String,
        /// The Secret's name.
        name: String,
    },
    /// The Secret has no (or an empty) `tls.crt`.
    #[error("root Secret {0} has no {TLS_CERT}")]
    NoCertificate(String),
    /// A certificate or the key does not parse or does not match, or generating a root failed.
    #[error("root Secret {secret}: {error}")]
    Invalid {
        /// The Secret.
        secret: String,
        /// What is wrong.
        error: PkiError,
    },
    /// `tls.crt` is neither a self-signed root nor an intermediate whose chain to a root (in
    /// `tls.crt` or `ca.crt`) is complete; the text says which link is missing.
    #[error("root Secret {secret}: {why}")]
    NotRoot {
        /// The Secret.
        secret: String,
        /// What is wrong with the chain.
        why: String,
    },
    /// Reading or creating the Secret failed (the API error, summarised).
    #[error("Kubernetes API: {0}")]
    Api(String),
}

/// The root as loaded: the signing authority when its key is online, and
/// the trust bundle (the root plus any extra roots).
#[derive(Debug)]
pub struct Root {
    /// The root with its key; `None` when the root is offline (no `tls.key`).
    pub authority: Option<Authority>,
    /// Every trusted root: the signing root first, then those in `ca.crt`.
    pub bundle: TrustBundle,
    /// The Secret's resourceVersion, to notice changes.
    pub resource_version: Option<String>,
    /// The imported intermediate and the CAs above it, up to (excluding) the bundle's first
    /// root; empty when `tls.crt` is the root itself.
    pub chain: Vec<CertificateDer<'static>>,
}

impl Root {
    /// Whether the root's key is absent, so that nothing is signed by the root online.
    pub fn is_offline(&self) -> bool {
        self.authority.is_none()
    }
}

/// Parses a root Secret. A corrupt Secret is an error, never replaced.
pub fn parse_root_secret(secret: &Secret) -> Result<Root, RootError> {
    let id = secret_id(secret);
    let (mut certs, extra) = certificates(secret, &id)?;
    let signing = certs.remove(0);
    let authority = match secret_value(secret, TLS_KEY) {
        Some(key_pem) => Some(
            Authority::from_pem(pem::encode_certificate(&signing).as_bytes(), key_pem)
                .map_err(|error| RootError::Invalid { secret: id.clone(), error })?,
        ),
        None => None,
    };
    let (anchor, chain) = anchor(&id, &signing, &certs, &extra)?;
    let imported = !chain.is_empty();
    if let Some(a) = authority.as_ref().filter(|_| imported) {
        signs_cas(a).map_err(|why| RootError::NotRoot { secret: id.clone(), why })?;
        proves(a, &chain, &anchor).map_err(|why| RootError::NotRoot { secret: id.clone(), why })?;
    }
    // An imported chain's root is usually in ca.crt too: listed once, first.
    let others: Vec<_> = extra.into_iter().filter(|r| !(imported && *r == anchor)).collect();
    let mut roots = vec![anchor];
    roots.extend(others);
    let bundle = TrustBundle::new(roots).map_err(|error| RootError::Invalid { secret: id, error })?;
    Ok(Root { authority, bundle, resource_version: secret.metadata.resource_version.clone(), chain })
}

/// The root certificates signed under this Secret chain to (the signing root, or an imported
/// intermediate's root), without reading the key: for `meshroot doctor`.
pub fn trust_anchor(secret: &Secret) -> Result<CertificateDer<'static>, RootError> {
    let id = secret_id(secret);
    let (mut certs, extra) = certificates(secret, &id)?;
    let signing = certs.remove(0);
    anchor(&id, &signing, &certs, &extra).map(|(anchor, _)| anchor)
}

/// The Secret as errors name it: `namespace/name`.
fn secret_id(secret: &Secret) -> String {
    format!(
        "{}/{}",
        secret.metadata.namespace.as_deref().unwrap_or_default(),
        secret.metadata.name.as_deref().unwrap_or_default()
    )
}

/// The certificates of `tls.crt` (at least one: the PEM decoder refuses none) and of `ca.crt`.
fn certificates(
    secret: &Secret,
    id: &str,
) -> Result<(Vec<CertificateDer<'static>>, Vec<CertificateDer<'static>>), RootError> {
    let decode = |bytes| {
        pem::decode_certificates(bytes, crate::pki::authority::MAX_CERT_PEM_BYTES)
            .map_err(|error| RootError::Invalid { secret: id.to_string(), error })
    };
    let cert_pem = secret_value(secret, TLS_CERT).ok_or_else(|| RootError::NoCertificate(id.to_string()))?;
    let certs = decode(cert_pem)?;
    if certs.is_empty() {
        return Err(RootError::NoCertificate(id.to_string()));
    }
    let extra = secret_value(secret, CA_CERT).map(decode).transpose()?.unwrap_or_default();
    Ok((certs, extra))
}

/// The root certificates signed by `signing` chain to, and the path there: `signing` itself
/// when it is a root; otherwise an imported intermediate's, linked by signature through the
/// rest of `tls.crt` (`above`) to a root in `ca.crt` (`extra`) or at the end of `tls.crt`.
fn anchor(
    id: &str,
    signing: &CertificateDer<'static>,
    above: &[CertificateDer<'static>],
    extra: &[CertificateDer<'static>],
) -> Result<(CertificateDer<'static>, Vec<CertificateDer<'static>>), RootError> {
    let refused = |why: String| RootError::NotRoot { secret: id.to_string(), why };
    // Each link costs signature checks against every candidate: a real chain has a few.
    const MAX_CERTIFICATES: usize = 16;
    if !names_itself(signing) && above.len().saturating_add(extra.len()) > MAX_CERTIFICATES {
        return Err(refused(format!("{TLS_CERT} and {CA_CERT} hold more than {MAX_CERTIFICATES} certificates")));
    }
    path_to_root(signing, above, extra).ok_or_else(|| {
        refused(format!(
            "{TLS_CERT} starts with an intermediate whose chain does not reach a self-signed root: put the CAs above it after it in {TLS_CERT}, and its root in {CA_CERT} (or at the end of {TLS_CERT})"
        ))
    })
}

/// A certificate the imported intermediate signs verifies to `anchor` through `chain` now (every
/// link valid, a CA, within its path length), as webpki, which ztunnel uses, checks it.
fn proves(
    authority: &Authority,
    chain: &[CertificateDer<'static>],
    anchor: &CertificateDer<'static>,
) -> Result<(), String> {
    let now = OffsetDateTime::now_utc();
    let probe = crate::pki::profile::issue_probe(authority, now).map_err(|e| e.to_string())?;
    let bundle = TrustBundle::new(vec![anchor.clone()]).map_err(|e| e.to_string())?;
    bundle
        .verify(&probe.der, chain, now)
        .map_err(|e| format!("a certificate signed by the intermediate in {TLS_CERT} does not verify to its root: {e}"))
}

/// An imported intermediate signs meshroot's mesh intermediates, so it must be allowed to sign CAs.
fn signs_cas(authority: &Authority) -> Result<(), String> {
    let cert = crate::pki::authority::parse_certificate(authority.certificate()).map_err(|e| e.to_string())?;
    match cert.basic_constraints() {
        Ok(Some(bc)) if bc.value.ca && bc.value.path_len_constraint != Some(0) => Ok(()),
        Ok(Some(bc)) if bc.value.ca => Err(format!(
            "the intermediate in {TLS_CERT} has pathLenConstraint 0, so it cannot sign meshroot's mesh intermediates; issue it with a path length of at least 1"
        )),
        _ => Err(format!("the certificate in {TLS_CERT} is not a CA")),
    }
}

/// Loads the root Secret, generating it first when `generate` is set and it
/// does not exist. Generation is create-only: when several replicas race,
/// one creates the Secret and the others read that one.
pub async fn load_or_generate(
    client: kube::Client,
    namespace: &str,
    name: &str,
    generate: bool,
) -> Result<Root, RootError> {
    let api: Api<Secret> = Api::namespaced(client, namespace);
    let api_err = |e: kube::Error| RootError::Api(error_summary(&e));
    if let Some(secret) = api.get_opt(name).await.map_err(api_err)? {
        return parse_root_secret(&secret);
    }
    if !generate {
        return Err(RootError::Missing { namespace: namespace.into(), name: name.into() });
    }
    let root = Authority::new_root(&CaSpec::root(GENERATED_ROOT_LIFETIME), OffsetDateTime::now_utc())
        .map_err(|error| RootError::Invalid { secret: format!("{namespace}/{name}"), error })?;
    let secret = Secret {
        metadata: ObjectMeta { name: Some(name.into()), labels: Some(managed_labels()), ..Default::default() },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(secret_data(&[
            (TLS_CERT, root.certificate_pem().as_bytes()),
            (TLS_KEY, root.key().to_pem().as_bytes()),
        ])),
        ..Default::default()
    };
    let params = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
    match api.create(&params, &secret).await {
        Ok(created) => {
            tracing::info!(secret = %format!("{namespace}/{name}"), "generated a new root CA");
            parse_root_secret(&created)
        }
        Err(kube::Error::Api(s)) if s.code == 409 => {
            let secret = api.get(name).await.map_err(api_err)?;
            parse_root_secret(&secret)
        }
        Err(e) => Err(api_err(e)),
    }
}

/// The current root, as the root watch publishes it.
pub use crate::pki::RootState;

impl From<Root> for RootState {
    fn from(r: Root) -> Self {
        Self {
            authority: r.authority.map(std::sync::Arc::new),
            bundle: std::sync::Arc::new(r.bundle),
            chain: std::sync::Arc::new(r.chain),
        }
    }
}

/// Follows the root Secret: a valid change is published; an invalid one, or
/// a deletion, is reported and the last good root kept (fail safe: nothing
/// that was trusted stops being trusted by accident).
pub fn spawn_watch(
    client: kube::Client,
    namespace: &str,
    name: &str,
    root: tokio::sync::watch::Sender<RootState>,
) -> tokio::task::JoinHandle<()> {
    use futures::StreamExt;
    use kube::runtime::{WatchStreamExt, watcher};
    let api: Api<Secret> = Api::namespaced(client, namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let id = format!("{namespace}/{name}");
    tokio::spawn(async move {
        let mut last_rv = None;
        let events = watcher(api, config).default_backoff().applied_objects();
        let mut events = std::pin::pin!(events);
        while let Some(event) = events.next().await {
            let secret = match event {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "root Secret watch error; retrying");
                    continue;
                }
            };
            if secret.metadata.resource_version == last_rv {
                continue;
            }
            last_rv = secret.metadata.resource_version.clone();
            match parse_root_secret(&secret) {
                Ok(new) => {
                    let new = RootState::from(new);
                    if new.bundle.pem() != root.borrow().bundle.pem()
                        || new.authority.as_ref().map(|a| a.serial_hex().to_string())
                            != root.borrow().authority.as_ref().map(|a| a.serial_hex().to_string())
                        || new.chain != root.borrow().chain
                    {
                        tracing::info!(secret = %id, roots = new.bundle.roots().len(), offline = new.authority.is_none(), "root changed");
                        root.send_replace(new);
                    }
                }
                Err(e) => {
                    tracing::error!(secret = %id, error = %e, "the root Secret changed and is invalid; keeping the last good root")
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::RootState;
    use crate::auth::BearerToken;
    use crate::pki::{Authority, CaSpec, TrustBundle};
    use std::sync::Arc;

    /// The root state and a bearer token redact what they hold in Debug
    /// output (the PKI types' own redaction is tested in meshroot-pki).
    #[test]
    fn the_root_state_and_tokens_redact_keys_and_secrets_in_debug_output() {
        let now = time::OffsetDateTime::now_utc();
        let root = Authority::new_root(&CaSpec::root(time::Duration::days(1)), now).unwrap();
        let key_lines: Vec<String> = root.key().to_pem().lines().filter(|l| l.len() == 64).map(String::from).collect();
        assert!(!key_lines.is_empty());
        let bundle = TrustBundle::new(vec![root.certificate().clone()]).unwrap();
        let state = RootState { authority: Some(Arc::new(root)), bundle: Arc::new(bundle), chain: Default::default() };
        let token = BearerToken::new("eyJhbGciOiJSUzI1NiJ9.secret-token-value".into());
        for debug in [format!("{state:?}"), format!("{state:#?}"), format!("{token:?}")] {
            assert!(debug.contains("redacted"), "{debug}");
            for line in &key_lines {
                assert!(!debug.contains(line.as_str()), "a key line in {debug}");
            }
            assert!(!debug.contains("secret-token-value"), "{debug}");
        }
    }
}
