//! Each External mesh's intermediate CA, kept in a Secret in meshroot's
//! namespace (`tls.crt`, `tls.key`, `ca.crt` = the trust bundle). The leader
//! issues and renews it; every replica reads it through its watch.
//!
//! Renewal overlaps: a new intermediate is issued while the old one is still
//! valid, and both chain to the same root, so certificates from the old one
//! keep verifying until they expire.

use super::root::{CA_CERT, ROOT_CERT_KEY, TLS_CERT, TLS_KEY};
use super::{FIELD_MANAGER, error_summary, is_managed, managed_labels, secret_data, secret_value};
use crate::api::mesh::IntermediateSpec;
use crate::duration;
use crate::pki::{Authority, CaSpec, KeyAlgorithm, PkiError, SigningChain, TrustBundle, pem};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, PostParams};
use rustls_pki_types::CertificateDer;
use thiserror::Error;
use time::{Duration, OffsetDateTime};

/// The start of an External mesh's intermediate Secret name; the mesh name follows (shortened, with a hash,
/// where the whole would exceed an object name's 253 characters).
pub const SECRET_PREFIX: &str = "meshroot-intermediate-";
/// Label naming the mesh on every intermediate Secret meshroot writes: the mesh name, shortened with a hash
/// where it exceeds a label value's 63 characters ([`super::bounded_name`]).
pub const MESH_LABEL: &str = "meshroot.io/mesh";

/// The name of an External mesh's intermediate Secret in meshroot's namespace.
pub fn secret_name(mesh: &str) -> String {
    super::bounded_name(&format!("{SECRET_PREFIX}{mesh}"), 253)
}

/// Istio's plug-in CA Secret name in istiod's namespace.
pub const CACERTS: &str = "cacerts";
/// `cacerts`' key of the intermediate.
pub const CACERTS_CERT: &str = "ca-cert.pem";
/// `cacerts`' key of the intermediate's private key.
pub const CACERTS_KEY: &str = "ca-key.pem";
/// `cacerts`' key of the intermediate followed by the CAs above it, the root last.
pub const CACERTS_CHAIN: &str = "cert-chain.pem";

/// How an intermediate is laid out in its Secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// `tls.crt`, `tls.key`, `ca.crt` (the bundle): External meshes.
    KubernetesTls,
    /// Istio's `cacerts`: `ca-cert.pem`, `ca-key.pem`, `cert-chain.pem`
    /// (intermediate + root), `root-cert.pem` (the bundle): PluginCA meshes.
    IstioCacerts,
}

impl Layout {
    /// The layout istiod reads a CA Secret in: `kubernetes.io/tls` keys when `tls.crt` is
    /// there, its own otherwise.
    pub fn of(secret: &Secret) -> Self {
        match secret_value(secret, TLS_CERT) {
            Some(_) => Layout::KubernetesTls,
            None => Layout::IstioCacerts,
        }
    }
    /// The key of the CA certificate (followed by the CAs above it in `tls.crt`).
    pub fn cert_key(self) -> &'static str {
        match self {
            Layout::KubernetesTls => TLS_CERT,
            Layout::IstioCacerts => CACERTS_CERT,
        }
    }
    fn key_key(self) -> &'static str {
        match self {
            Layout::KubernetesTls => TLS_KEY,
            Layout::IstioCacerts => CACERTS_KEY,
        }
    }
    /// The key of the roots the CA's workloads trust.
    pub fn bundle_key(self) -> &'static str {
        match self {
            Layout::KubernetesTls => CA_CERT,
            Layout::IstioCacerts => ROOT_CERT_KEY,
        }
    }

    fn encode(
        self,
        chain: &SigningChain,
        root_pem: &str,
    ) -> std::collections::BTreeMap<String, k8s_openapi::ByteString> {
        let a = chain.authority();
        let key = a.key().to_pem();
        let bundle = chain.bundle().pem();
        // The intermediate, then any CA above it below the root (an imported intermediate's).
        let with_chain: String = chain.ca_path().iter().map(|c| pem::encode_certificate(c)).collect();
        match self {
            Layout::KubernetesTls => secret_data(&[
                (TLS_CERT, with_chain.as_bytes()),
                (TLS_KEY, key.as_bytes()),
                (CA_CERT, bundle.as_bytes()),
            ]),
            Layout::IstioCacerts => {
                let cert_chain = format!("{with_chain}{root_pem}");
                secret_data(&[
                    (CACERTS_CERT, a.certificate_pem().as_bytes()),
                    (CACERTS_KEY, key.as_bytes()),
                    (CACERTS_CHAIN, cert_chain.as_bytes()),
                    (ROOT_CERT_KEY, bundle.as_bytes()),
                ])
            }
        }
    }
}

/// Where a mesh's intermediate lives.
#[derive(Clone, Debug)]
pub struct IntermediateSecret {
    /// The mesh's name (the intermediate's name and the [`MESH_LABEL`] value).
    pub mesh: String,
    /// The Secret's name; its namespace is the `Api`'s.
    pub name: String,
    /// The keys it is stored under.
    pub layout: Layout,
}

impl IntermediateSecret {
    /// An External mesh's intermediate, in meshroot's namespace.
    pub fn external(mesh: &str) -> Self {
        Self { mesh: mesh.into(), name: secret_name(mesh), layout: Layout::KubernetesTls }
    }
    /// A PluginCA mesh's `cacerts`, in istiod's namespace.
    pub fn cacerts(mesh: &str) -> Self {
        Self { mesh: mesh.into(), name: CACERTS.into(), layout: Layout::IstioCacerts }
    }
}

/// The intermediate a mesh asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IntermediatePolicy {
    /// The intermediate's key type.
    pub key_algorithm: KeyAlgorithm,
    /// The lifetime of each intermediate issued.
    pub lifetime: Duration,
    /// How long before its expiry an intermediate is replaced; shorter than `lifetime`.
    pub renew_before: Duration,
}

/// Why a mesh's `intermediate` settings cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IntermediatePolicyError {
    /// `intermediate.duration` or `intermediate.renewBefore` is not a valid duration.
    #[error(transparent)]
    Duration(#[from] duration::DurationError),
    /// `renewBefore` is not shorter than `duration`, so every intermediate would be due at once.
    #[error("intermediate.renewBefore ({renew_before}) must be shorter than intermediate.duration ({duration})")]
    RenewAfterExpiry {
        /// `intermediate.renewBefore`, as written.
        renew_before: String,
        /// `intermediate.duration`, as written.
        duration: String,
    },
}

impl IntermediatePolicy {
    /// Parses a mesh's `intermediate` settings.
    pub fn from_spec(spec: &IntermediateSpec) -> Result<Self, IntermediatePolicyError> {
        let lifetime = duration::parse_field("intermediate.duration", &spec.duration)?;
        let renew_before = duration::parse_field("intermediate.renewBefore", &spec.renew_before)?;
        if renew_before >= lifetime {
            return Err(IntermediatePolicyError::RenewAfterExpiry {
                renew_before: spec.renew_before.clone(),
                duration: spec.duration.clone(),
            });
        }
        Ok(Self { key_algorithm: spec.key_algorithm.into(), lifetime, renew_before })
    }

    /// When an intermediate issued under this policy should be replaced.
    pub fn renew_at(&self, not_after: OffsetDateTime) -> OffsetDateTime {
        // Out of range only for a NotAfter near year -9999: renew now.
        not_after.checked_sub(self.renew_before).unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }
}

/// Why a mesh's intermediate could not be ensured. Secrets are named `namespace/name`.
#[derive(Debug, Error)]
pub enum IntermediateError {
    /// The Secret exists without meshroot's labels and holds no usable intermediate.
    #[error(
        "Secret {0} is not managed by meshroot and does not hold a usable intermediate; meshroot will not overwrite it \
         unless it is annotated meshroot.io/adopt=true"
    )]
    NotOwned(String),
    /// meshroot's own Secret holds something that does not parse or chain; it is left for a person to fix.
    #[error("Secret {secret} is corrupt ({error}); fix or delete it, meshroot will not replace it")]
    Corrupt {
        /// The Secret.
        secret: String,
        /// What is wrong with its contents.
        error: PkiError,
    },
    /// An intermediate must be issued, but the root's key is not available.
    #[error("the root is offline, so meshroot cannot issue the intermediate; supply it in Secret {0}")]
    OfflineRoot(String),
    /// Issuing the intermediate failed.
    #[error("issuing the intermediate: {0}")]
    Issue(PkiError),
    /// Reading or writing the Secret failed (the API error, summarised).
    #[error("Kubernetes API: {0}")]
    Api(String),
    /// The Secret's resourceVersion changed between the read and the write.
    #[error("the Secret changed while meshroot wrote it")]
    Conflict,
}

/// Reads an intermediate Secret (`tls.crt`/`tls.key` layout) into a
/// signing chain under `bundle`.
pub fn parse_secret(secret: &Secret, bundle: &TrustBundle, now: OffsetDateTime) -> Result<SigningChain, PkiError> {
    parse_layout(secret, Layout::KubernetesTls, bundle, now)
}

/// [`parse_secret`] for either layout. Errors when an entry is missing or invalid, or the chain
/// does not verify under `bundle` at `now`.
pub fn parse_layout(
    secret: &Secret,
    layout: Layout,
    bundle: &TrustBundle,
    now: OffsetDateTime,
) -> Result<SigningChain, PkiError> {
    let missing = |k: &str| PkiError::Invalid(format!("no {k}"));
    let cert = secret_value(secret, layout.cert_key()).ok_or_else(|| missing(layout.cert_key()))?;
    let key = secret_value(secret, layout.key_key()).ok_or_else(|| missing(layout.key_key()))?;
    // The CAs above the intermediate (under an imported intermediate): after it in tls.crt, or
    // in cacerts' cert-chain.pem. Roots among them are dropped by the chain.
    let chain_pem = match layout {
        Layout::KubernetesTls => cert,
        Layout::IstioCacerts => secret_value(secret, CACERTS_CHAIN).unwrap_or(cert),
    };
    let mut certs = pem::decode_certificates(chain_pem, crate::pki::authority::MAX_CERT_PEM_BYTES)?;
    let own = pem::decode_certificates(cert, crate::pki::authority::MAX_CERT_PEM_BYTES)?;
    let first = own.first().ok_or_else(|| missing(layout.cert_key()))?;
    certs.retain(|c| c != first);
    SigningChain::new_at(
        Authority::from_pem(pem::encode_certificate(first).as_bytes(), key)?,
        certs,
        bundle.clone(),
        now,
    )
}

/// Why an existing intermediate must be replaced, if it must.
fn replacement_reason(
    chain: &SigningChain,
    policy: &IntermediatePolicy,
    upstream: &[CertificateDer<'static>],
    now: OffsetDateTime,
) -> Option<String> {
    let a = chain.authority();
    // Step 2 of a root rotation: the new root signs (it is first in the
    // bundle, online or not), so intermediates move under it. Under an
    // imported intermediate, that intermediate signs.
    if let Some(signing) = upstream.first().or_else(|| chain.bundle().roots().first())
        && !crate::pki::authority::issued_by(signing, a.certificate())
    {
        let signer =
            if upstream.is_empty() { "root than the signing root" } else { "CA than the imported intermediate" };
        return Some(format!("it was issued by another {signer}"));
    }
    // The imported intermediate above it was renewed: chains must carry the current copy.
    if !upstream.is_empty() && chain.intermediates() != upstream {
        return Some("the imported intermediate above it changed".into());
    }
    if now >= policy.renew_at(a.not_after()) {
        return Some(format!("it expires at {} (renewing {} before)", a.not_after(), policy.renew_before));
    }
    if a.key_kind().to_string() != policy.key_algorithm.name() {
        return Some(format!("its key is {}, the mesh asks for {}", a.key_kind(), policy.key_algorithm));
    }
    None
}

/// The outcome of one reconcile of a mesh's intermediate.
#[derive(Debug)]
pub struct Ensured {
    /// The intermediate the mesh signs with now, under the bundle.
    pub chain: SigningChain,
    /// True when this call issued a new intermediate.
    pub issued: bool,
    /// Set when the intermediate should be replaced but meshroot may not
    /// (offline root, or a Secret it does not own); it is still used.
    pub warning: Option<String>,
}

/// Makes sure `mesh`'s intermediate Secret holds a current intermediate
/// under `root`, issuing or renewing it when needed. A Secret meshroot does
/// not own (an intermediate supplied for an offline root) is used as it is
/// and never written. Writes carry the resourceVersion read, so two writers
/// cannot both replace it.
pub async fn ensure(
    api: &Api<Secret>,
    target: &IntermediateSecret,
    policy: &IntermediatePolicy,
    root: Option<&Authority>,
    upstream: &[CertificateDer<'static>],
    bundle: &TrustBundle,
    now: OffsetDateTime,
) -> Result<Ensured, IntermediateError> {
    let mesh = target.mesh.as_str();
    let name = target.name.clone();
    let layout = target.layout;
    let id = || format!("{}/{}", api_namespace(api), target.name);
    let api_err = |e: kube::Error| IntermediateError::Api(error_summary(&e));
    let existing = api.get_opt(&name).await.map_err(api_err)?;
    if let Some(secret) = &existing {
        // Another writer's Secret becomes meshroot's only when an administrator says so.
        let adopt = !is_managed(secret.metadata.labels.as_ref())
            && super::adoption_requested(secret.metadata.annotations.as_ref());
        if adopt {
            tracing::warn!(mesh, secret = %id(), annotation = super::ADOPT_ANNOTATION, "taking over a Secret another writer made, as its annotation asks");
        }
        let owned = is_managed(secret.metadata.labels.as_ref()) || adopt;
        match parse_layout(secret, layout, bundle, now) {
            Ok(chain) => {
                // Handed over: meshroot issues its own, with a key only it holds.
                let why = match adopt {
                    true => Some("it was handed over (meshroot.io/adopt), so meshroot issues its own".to_string()),
                    false => replacement_reason(&chain, policy, upstream, now),
                };
                let Some(why) = why else {
                    let stored_bundle = secret_value(secret, layout.bundle_key());
                    if owned && stored_bundle != Some(bundle.pem().as_bytes()) {
                        // Same intermediate, new bundle (a root added or removed).
                        let rv = secret.metadata.resource_version.clone();
                        write(api, &name, mesh, layout, &chain, root, rv).await?;
                        tracing::info!(mesh, secret = %id(), "updated the trust bundle beside the intermediate");
                    }
                    return Ok(Ensured { chain, issued: false, warning: None });
                };
                if !owned || root.is_none() {
                    let who = if owned { "the root is offline" } else { "meshroot does not own the Secret" };
                    let warning = format!("the intermediate in {} should be replaced ({why}), but {who}", id());
                    return Ok(Ensured { chain, issued: false, warning: Some(warning) });
                }
                tracing::info!(mesh, reason = %why, "renewing the mesh intermediate");
            }
            // Issued under a root that is no longer trusted, or expired.
            Err(e @ (PkiError::SelfCheck(_) | PkiError::Expired { .. })) if owned => {
                tracing::info!(mesh, reason = %e, "re-issuing the mesh intermediate");
            }
            // Handed over: whatever the other writer left is replaced.
            Err(e) if adopt => {
                tracing::info!(mesh, reason = %e, "replacing the handed-over Secret's contents with a new intermediate");
            }
            Err(error) if owned => return Err(IntermediateError::Corrupt { secret: id(), error }),
            Err(_) => return Err(IntermediateError::NotOwned(id())),
        }
    }
    let root = root.ok_or_else(|| IntermediateError::OfflineRoot(id()))?;
    let mut spec = CaSpec::intermediate(mesh, policy.lifetime);
    spec.key_algorithm = policy.key_algorithm;
    let int = root.new_intermediate(&spec, now).map_err(IntermediateError::Issue)?;
    let chain = SigningChain::new_at(int, upstream.to_vec(), bundle.clone(), now).map_err(IntermediateError::Issue)?;
    let written =
        write(api, &name, mesh, layout, &chain, Some(root), existing.and_then(|s| s.metadata.resource_version)).await;
    match written {
        Ok(()) => {
            let a = chain.authority();
            tracing::info!(mesh, secret = %id(), serial = a.serial_hex(), not_after = %a.not_after(), "issued the mesh intermediate");
            Ok(Ensured { chain, issued: true, warning: None })
        }
        // Someone else wrote it first (another leader term, or a restart):
        // use theirs rather than issuing a second one.
        Err(IntermediateError::Conflict) => {
            let secret = api.get(&name).await.map_err(api_err)?;
            let chain = parse_layout(&secret, layout, bundle, now)
                .map_err(|error| IntermediateError::Corrupt { secret: id(), error })?;
            Ok(Ensured { chain, issued: false, warning: None })
        }
        Err(e) => Err(e),
    }
}

/// Creates (no resourceVersion) or replaces (with the one read) the Secret.
async fn write(
    api: &Api<Secret>,
    name: &str,
    mesh: &str,
    layout: Layout,
    chain: &SigningChain,
    root: Option<&Authority>,
    resource_version: Option<String>,
) -> Result<(), IntermediateError> {
    let mut labels = managed_labels();
    labels.insert(MESH_LABEL.into(), super::bounded_name(mesh, 63));
    // cert-chain.pem ends at the root: the signing root, or an imported intermediate's root.
    let root_pem = match root {
        Some(_) => chain.bundle().roots().first().map(|r| pem::encode_certificate(r)).unwrap_or_default(),
        None => String::new(),
    };
    let creating = resource_version.is_none();
    let secret = Secret {
        metadata: ObjectMeta { name: Some(name.into()), labels: Some(labels), resource_version, ..Default::default() },
        type_: Some(match layout {
            Layout::KubernetesTls => "kubernetes.io/tls".into(),
            Layout::IstioCacerts => "Opaque".into(),
        }),
        data: Some(layout.encode(chain, &root_pem)),
        ..Default::default()
    };
    let params = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
    let result = if creating {
        api.create(&params, &secret).await.map(|_| ())
    } else {
        api.replace(name, &params, &secret).await.map(|_| ())
    };
    match result {
        Ok(()) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Err(IntermediateError::Conflict),
        Err(e) => Err(IntermediateError::Api(error_summary(&e))),
    }
}

fn api_namespace(api: &Api<Secret>) -> String {
    api.namespace().unwrap_or_default().to_string()
}
