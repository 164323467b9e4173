//! Each External mesh's intermediate CA, kept in a Secret in meshroot's
//! namespace (`tls.crt`, `tls.key`, `ca.crt` = the trust bundle). The leader
//! issues and renews it; every replica reads it through its watch.
//!
//! Renewal overlaps: a new intermediate is issued while the old one is still
//! valid, and both chain to the same root, so certificates from the old one
//! keep verifying until they expire.

use super::root::{CA_CERT, TLS_CERT, TLS_KEY};
use super::{FIELD_MANAGER, error_summary, is_managed, managed_labels, secret_data, secret_value};
use crate::api::mesh::IntermediateSpec;
use crate::pki::{Authority, CaSpec, KeyAlgorithm, PkiError, SigningChain, TrustBundle};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, PostParams};
use thiserror::Error;
use time::{Duration, OffsetDateTime};

pub const SECRET_PREFIX: &str = "meshroot-intermediate-";
pub const MESH_LABEL: &str = "meshroot.io/mesh";

pub fn secret_name(mesh: &str) -> String {
    format!("{SECRET_PREFIX}{mesh}")
}

/// Parses a Go-style or humantime duration such as `8760h` or `30d`.
pub fn parse_duration(field: &str, value: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(value).map_err(|e| format!("{field}: {value:?}: {e}"))?;
    let d = Duration::try_from(d).map_err(|e| format!("{field}: {value:?}: {e}"))?;
    if d <= Duration::ZERO {
        return Err(format!("{field}: {value:?} must be positive"));
    }
    Ok(d)
}

/// The intermediate a mesh asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IntermediatePolicy {
    pub key_algorithm: KeyAlgorithm,
    pub lifetime: Duration,
    pub renew_before: Duration,
}

impl IntermediatePolicy {
    pub fn from_spec(spec: &IntermediateSpec) -> Result<Self, String> {
        let lifetime = parse_duration("intermediate.duration", &spec.duration)?;
        let renew_before = parse_duration("intermediate.renewBefore", &spec.renew_before)?;
        if renew_before >= lifetime {
            return Err(format!(
                "intermediate.renewBefore ({}) must be shorter than intermediate.duration ({})",
                spec.renew_before, spec.duration
            ));
        }
        Ok(Self {
            key_algorithm: spec.key_algorithm.into(),
            lifetime,
            renew_before,
        })
    }

    /// When an intermediate issued under this policy should be replaced.
    pub fn renew_at(&self, not_after: OffsetDateTime) -> OffsetDateTime {
        not_after - self.renew_before
    }
}

#[derive(Debug, Error)]
pub enum IntermediateError {
    #[error(
        "Secret {0} is not managed by meshroot and does not hold a usable intermediate; meshroot will not overwrite it"
    )]
    NotOwned(String),
    #[error("Secret {secret} is corrupt ({error}); fix or delete it, meshroot will not replace it")]
    Corrupt { secret: String, error: PkiError },
    #[error("the root is offline, so meshroot cannot issue the intermediate; supply it in Secret {0}")]
    OfflineRoot(String),
    #[error("issuing the intermediate: {0}")]
    Issue(PkiError),
    #[error("Kubernetes API: {0}")]
    Api(String),
}

/// Reads an intermediate Secret into a signing chain under `bundle`.
pub fn parse_secret(secret: &Secret, bundle: &TrustBundle, now: OffsetDateTime) -> Result<SigningChain, PkiError> {
    let cert = secret_value(secret, TLS_CERT).ok_or_else(|| PkiError::Invalid(format!("no {TLS_CERT}")))?;
    let key = secret_value(secret, TLS_KEY).ok_or_else(|| PkiError::Invalid(format!("no {TLS_KEY}")))?;
    SigningChain::new_at(Authority::from_pem(cert, key)?, Vec::new(), bundle.clone(), now)
}

/// Why an existing intermediate must be replaced, if it must.
fn replacement_reason(chain: &SigningChain, policy: &IntermediatePolicy, now: OffsetDateTime) -> Option<String> {
    let a = chain.authority();
    if now >= policy.renew_at(a.not_after()) {
        return Some(format!(
            "it expires at {} (renewing {} before)",
            a.not_after(),
            policy.renew_before
        ));
    }
    if a.key_kind().to_string() != policy.key_algorithm.name() {
        return Some(format!(
            "its key is {}, the mesh asks for {}",
            a.key_kind(),
            policy.key_algorithm
        ));
    }
    None
}

/// The outcome of one reconcile of a mesh's intermediate.
#[derive(Debug)]
pub struct Ensured {
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
    mesh: &str,
    policy: &IntermediatePolicy,
    root: Option<&Authority>,
    bundle: &TrustBundle,
    now: OffsetDateTime,
) -> Result<Ensured, IntermediateError> {
    let name = secret_name(mesh);
    let id = || format!("{}/{name}", api_namespace(api));
    let api_err = |e: kube::Error| IntermediateError::Api(error_summary(&e));
    let existing = api.get_opt(&name).await.map_err(api_err)?;
    if let Some(secret) = &existing {
        let owned = is_managed(secret.metadata.labels.as_ref());
        match parse_secret(secret, bundle, now) {
            Ok(chain) => {
                let Some(why) = replacement_reason(&chain, policy, now) else {
                    return Ok(Ensured {
                        chain,
                        issued: false,
                        warning: None,
                    });
                };
                if !owned || root.is_none() {
                    let who = if owned {
                        "the root is offline"
                    } else {
                        "meshroot does not own the Secret"
                    };
                    let warning = format!("the intermediate in {} should be replaced ({why}), but {who}", id());
                    return Ok(Ensured {
                        chain,
                        issued: false,
                        warning: Some(warning),
                    });
                }
                tracing::info!(mesh, reason = %why, "renewing the mesh intermediate");
            }
            // Issued under a root that is no longer trusted, or expired.
            Err(e @ (PkiError::SelfCheck(_) | PkiError::Expired { .. })) if owned => {
                tracing::info!(mesh, reason = %e, "re-issuing the mesh intermediate");
            }
            Err(error) if owned => return Err(IntermediateError::Corrupt { secret: id(), error }),
            Err(_) => return Err(IntermediateError::NotOwned(id())),
        }
    }
    let root = root.ok_or_else(|| IntermediateError::OfflineRoot(id()))?;
    let mut spec = CaSpec::intermediate(mesh, policy.lifetime);
    spec.key_algorithm = policy.key_algorithm;
    let int = root.new_intermediate(&spec, now).map_err(IntermediateError::Issue)?;
    let chain = SigningChain::new_at(int, Vec::new(), bundle.clone(), now).map_err(IntermediateError::Issue)?;
    let a = chain.authority();
    let mut labels = managed_labels();
    labels.insert(MESH_LABEL.into(), mesh.into());
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            labels: Some(labels),
            resource_version: existing.as_ref().and_then(|s| s.metadata.resource_version.clone()),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(secret_data(&[
            (TLS_CERT, a.certificate_pem().as_bytes()),
            (TLS_KEY, a.key().to_pem().as_bytes()),
            (CA_CERT, bundle.pem().as_bytes()),
        ])),
        ..Default::default()
    };
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    let written = match existing {
        None => api.create(&params, &secret).await,
        Some(_) => api.replace(&name, &params, &secret).await,
    };
    match written {
        Ok(_) => {
            tracing::info!(mesh, serial = a.serial_hex(), not_after = %a.not_after(), "issued the mesh intermediate");
            Ok(Ensured {
                chain,
                issued: true,
                warning: None,
            })
        }
        // Someone else wrote it first (another leader term, or a restart):
        // use theirs rather than issuing a second one.
        Err(kube::Error::Api(s)) if s.code == 409 => {
            let secret = api.get(&name).await.map_err(api_err)?;
            let chain = parse_secret(&secret, bundle, now)
                .map_err(|error| IntermediateError::Corrupt { secret: id(), error })?;
            Ok(Ensured {
                chain,
                issued: false,
                warning: None,
            })
        }
        Err(e) => Err(api_err(e)),
    }
}

fn api_namespace(api: &Api<Secret>) -> String {
    api.namespace().unwrap_or_default().to_string()
}
