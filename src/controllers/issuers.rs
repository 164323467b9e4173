//! Keeps every `Issuer` and `ClusterIssuer` status true: `Ready` (with
//! `observedGeneration`) says whether it can sign now and with what, checked
//! on every change of the issuer, the root or the meshes, and every resync
//! (so expiry shows up without any event).

use super::conditions::condition;
use super::signing::Signers;
use crate::api::issuer::{ClusterIssuer, Issuer, IssuerResource, IssuerStatus, SignerStatus};
use crate::issuer::{SignerProblem, Tenancy, prepare};
use crate::k8s::error_summary;
use crate::k8s::root::RootState;
use crate::k8s::watch as kwatch;
use crate::mesh::MeshRegistry;
use crate::pki::rfc3339;
use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::Api;
use kube::{Resource, ResourceExt};
use std::time::Duration;

/// The `Ready` reasons, compatible with cert-manager's issuer-lib.
pub const REASON_CHECKED: &str = "Checked";
/// The signer is not available yet (or any more); checked again on the next change or resync.
pub const REASON_PENDING: &str = "Pending";
/// The issuer's spec is wrong; only an edit fixes it.
pub const REASON_FAILED: &str = "Failed";
/// The issuer names a signer (or asks for CAs) its scope is not granted.
pub const REASON_NOT_GRANTED: &str = "SignerNotGranted";

/// The status an issuer should have now.
pub fn desired_status(
    issuer: &dyn IssuerResource,
    generation: Option<i64>,
    root: &RootState,
    registry: &MeshRegistry,
    tenancy: &Tenancy,
) -> IssuerStatus {
    let previous: &[Condition] = issuer.issuer_status().map(|s| s.conditions.as_slice()).unwrap_or_default();
    match prepare(issuer, root, registry, tenancy) {
        Ok(ready) => {
            let authority = ready.ca.authority();
            let serves = match &ready.namespaces {
                Some(list) if list.iter().any(|n| n == "*") => "; serves every namespace".to_string(),
                Some(list) => format!("; serves namespaces {}", list.join(", ")),
                None => String::new(),
            };
            let message = format!(
                "signs with {} ({}), valid until {}{serves}",
                ready.ca.description(),
                authority.subject(),
                rfc3339(authority.not_after())
            );
            IssuerStatus {
                conditions: vec![condition("Ready", true, REASON_CHECKED, &message, generation, previous)],
                signer: Some(SignerStatus {
                    subject: authority.subject().to_string(),
                    not_after: rfc3339(authority.not_after()),
                    root_fingerprint: ready.ca.root_fingerprint(),
                }),
            }
        }
        Err(problem) => {
            let reason = match problem {
                SignerProblem::Invalid(_) => REASON_FAILED,
                SignerProblem::Unavailable(_) => REASON_PENDING,
                SignerProblem::NotGranted(_) => REASON_NOT_GRANTED,
            };
            IssuerStatus {
                conditions: vec![condition("Ready", false, reason, &problem.to_string(), generation, previous)],
                signer: None,
            }
        }
    }
}

/// Runs the issuer status controller until the task is aborted.
pub fn spawn(client: kube::Client, signers: Signers, resync: Duration) -> tokio::task::JoinHandle<()> {
    let mut changes = signers.changes().boxed();
    let tenancy_source = signers.clone();
    let Signers { issuers: cache, root, registry, .. } = signers;
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(resync);
        loop {
            tokio::select! {
                c = changes.next() => if c.is_none() { return },
                _ = ticker.tick() => {}
            }
            kwatch::settle(&mut changes, Duration::from_millis(100)).await;
            if !cache.is_synced() {
                continue;
            }
            let current_root = root.borrow().clone();
            let tenancy = tenancy_source.tenancy();
            for issuer in cache.issuers() {
                let status =
                    desired_status(issuer.as_ref(), issuer.metadata.generation, &current_root, &registry, &tenancy);
                let api = Api::<Issuer>::namespaced(client.clone(), &issuer.namespace().unwrap_or_default());
                write_status(&api, issuer.as_ref(), status).await;
            }
            for issuer in cache.cluster_issuers() {
                let status =
                    desired_status(issuer.as_ref(), issuer.metadata.generation, &current_root, &registry, &tenancy);
                write_status(&Api::<ClusterIssuer>::all(client.clone()), issuer.as_ref(), status).await;
            }
        }
    })
}

async fn write_status<K>(api: &Api<K>, issuer: &K, status: IssuerStatus)
where
    K: IssuerResource + Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    if issuer.issuer_status() == Some(&status) {
        return;
    }
    let name = issuer.name_any();
    if let Some(ready) = status.conditions.first() {
        tracing::info!(issuer = %name, kind = %K::kind(&()), ready = %ready.status, reason = %ready.reason, message = %ready.message, "issuer status");
    }
    if let Err(e) = crate::k8s::replace_status(api, &name, &status).await {
        tracing::warn!(issuer = %name, error = %error_summary(&e), "could not write the issuer status");
    }
}
