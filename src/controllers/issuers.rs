//! Keeps every `Issuer` and `ClusterIssuer` status true: `Ready` (with
//! `observedGeneration`) says whether it can sign now and with what, checked
//! on every change of the issuer, the root or the meshes, and every resync
//! (so expiry shows up without any event).

use super::conditions::condition;
use crate::api::issuer::{ClusterIssuer, Issuer, IssuerResource, IssuerStatus, SignerStatus};
use crate::issuer::sign::{SignError, Signed, SigningRequest, sign};
use crate::issuer::{SignerProblem, prepare};
use crate::k8s::error_summary;
use crate::k8s::root::RootState;
use crate::k8s::watch as kwatch;
use crate::mesh::MeshRegistry;
use crate::pki::rfc3339;
use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{reflector, watcher};
use kube::{Resource, ResourceExt};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The `Ready` reasons, compatible with cert-manager's issuer-lib.
pub const REASON_CHECKED: &str = "Checked";
pub const REASON_PENDING: &str = "Pending";
pub const REASON_FAILED: &str = "Failed";

/// The status an issuer should have now.
pub fn desired_status(
    issuer: &dyn IssuerResource,
    generation: Option<i64>,
    root: &RootState,
    registry: &MeshRegistry,
) -> IssuerStatus {
    let previous: &[Condition] = issuer.issuer_status().map(|s| s.conditions.as_slice()).unwrap_or_default();
    match prepare(issuer, root, registry) {
        Ok(ready) => {
            let authority = ready.ca.authority();
            let message = format!(
                "signs with {} ({}), valid until {}",
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
            };
            IssuerStatus {
                conditions: vec![condition("Ready", false, reason, &problem.to_string(), generation, previous)],
                signer: None,
            }
        }
    }
}

/// Which issuer a request names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IssuerName {
    Namespaced { namespace: String, name: String },
    Cluster(String),
}

impl std::fmt::Display for IssuerName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IssuerName::Namespaced { namespace, name } => write!(f, "Issuer {namespace}/{name}"),
            IssuerName::Cluster(name) => write!(f, "ClusterIssuer {name}"),
        }
    }
}

/// The result of working on one request (CertificateRequest or CSR).
#[derive(Clone, Debug)]
pub enum Outcome {
    Issued(Signed),
    /// Waiting for something that will change (the issuer, the signer).
    Pending(String),
    /// The request can never be signed, for this reason.
    Failed {
        reason: &'static str,
        message: String,
    },
    /// An approver denied the request.
    Denied,
}

/// Signs `request` with the named issuer once it is there and ready; a
/// request that could not be read (`Err((reason, message))`) fails only
/// after that, as cert-manager's own issuers do.
pub fn sign_with_issuer(
    issuer_name: &IssuerName,
    issuer: Option<&dyn IssuerResource>,
    root: &RootState,
    registry: &MeshRegistry,
    request: Result<SigningRequest<'_>, (&'static str, String)>,
    now: time::OffsetDateTime,
) -> Outcome {
    let Some(issuer) = issuer else {
        return Outcome::Pending(format!("{issuer_name} not found; waiting for it to be created"));
    };
    let ready = match prepare(issuer, root, registry) {
        Ok(r) => r,
        Err(SignerProblem::Invalid(why) | SignerProblem::Unavailable(why)) => {
            return Outcome::Pending(format!("waiting for {issuer_name} to become ready: {why}"));
        }
    };
    let request = match request {
        Ok(r) => r,
        Err((reason, message)) => return Outcome::Failed { reason, message },
    };
    match sign(&request, &ready.policy, &ready.ca, now) {
        Ok(signed) => Outcome::Issued(signed),
        Err(SignError::Invalid(message)) => Outcome::Failed { reason: "InvalidRequest", message },
        Err(SignError::Policy(message)) => Outcome::Failed { reason: "PolicyViolation", message },
        Err(SignError::Unavailable(message)) => Outcome::Pending(message),
    }
}

/// The leader's one view of every issuer, shared by the controllers.
#[derive(Clone)]
pub struct IssuerCache {
    issuers: Store<Issuer>,
    cluster_issuers: Store<ClusterIssuer>,
    changes: watch::Receiver<u64>,
    synced: watch::Receiver<bool>,
}

impl IssuerCache {
    /// Starts watching both issuer kinds.
    pub fn spawn(client: kube::Client) -> (Self, tokio::task::JoinHandle<()>) {
        let (issuers, issuers_w) = reflector::store::<Issuer>();
        let (cluster_issuers, cluster_w) = reflector::store::<ClusterIssuer>();
        let mut changes = futures::stream::select_all([
            kwatch::changes(issuers_w, Api::<Issuer>::all(client.clone()), watcher::Config::default()),
            kwatch::changes(cluster_w, Api::<ClusterIssuer>::all(client), watcher::Config::default()),
        ]);
        let (tx, rx) = watch::channel(0u64);
        let (synced_tx, synced) = watch::channel(false);
        let (i, c) = (issuers.clone(), cluster_issuers.clone());
        let task = tokio::spawn(async move {
            while changes.next().await.is_some() {
                if !*synced_tx.borrow() && kwatch::synced(&i) && kwatch::synced(&c) {
                    synced_tx.send_replace(true);
                }
                tx.send_modify(|n| *n += 1);
            }
        });
        (Self { issuers, cluster_issuers, changes: rx, synced }, task)
    }

    /// Waits until both issuer kinds have been listed once. (Not through
    /// `Store::wait_until_ready`: in kube-runtime 5 concurrent waiters on
    /// one store can miss the wake-up.)
    pub async fn wait_synced(&self) {
        let _ = self.synced.clone().wait_for(|s| *s).await;
    }

    pub fn is_synced(&self) -> bool {
        *self.synced.borrow()
    }

    /// Notified after every change of any issuer.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.clone()
    }

    pub fn get(&self, name: &IssuerName) -> Option<Arc<dyn IssuerResource + Send + Sync>> {
        match name {
            IssuerName::Namespaced { namespace, name } => self
                .issuers
                .get(&ObjectRef::new(name).within(namespace))
                .map(|i| i as Arc<dyn IssuerResource + Send + Sync>),
            IssuerName::Cluster(name) => {
                self.cluster_issuers.get(&ObjectRef::new(name)).map(|i| i as Arc<dyn IssuerResource + Send + Sync>)
            }
        }
    }
}

/// Everything that can change whether an issuer can sign: the issuers, the
/// root, the meshes. Yields `()` per change.
pub fn signer_changes(
    cache: &IssuerCache,
    root: &watch::Receiver<RootState>,
    registry: &MeshRegistry,
) -> impl futures::Stream<Item = ()> + Send + 'static {
    use tokio_stream::wrappers::WatchStream;
    futures::stream::select(
        WatchStream::from_changes(cache.subscribe()).map(|_| ()),
        futures::stream::select(
            WatchStream::from_changes(root.clone()).map(|_| ()),
            WatchStream::from_changes(registry.subscribe()).map(|_| ()),
        ),
    )
}

/// Runs the issuer status controller until the task is aborted.
pub fn spawn(
    client: kube::Client,
    cache: IssuerCache,
    root: watch::Receiver<RootState>,
    registry: Arc<MeshRegistry>,
    resync: Duration,
) -> tokio::task::JoinHandle<()> {
    let mut changes = signer_changes(&cache, &root, &registry).boxed();
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
            for issuer in cache.issuers.state() {
                let status = desired_status(issuer.as_ref(), issuer.metadata.generation, &current_root, &registry);
                let api = Api::<Issuer>::namespaced(client.clone(), &issuer.namespace().unwrap_or_default());
                write_status(&api, issuer.as_ref(), status).await;
            }
            for issuer in cache.cluster_issuers.state() {
                let status = desired_status(issuer.as_ref(), issuer.metadata.generation, &current_root, &registry);
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
    let patch = Patch::Merge(serde_json::json!({ "status": status }));
    if let Err(e) = api.patch_status(&name, &PatchParams::default(), &patch).await {
        tracing::warn!(issuer = %name, error = %error_summary(&e), "could not write the issuer status");
    }
}
