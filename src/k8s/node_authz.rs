//! Node authorization for ztunnel's impersonation, from a pod watch: the
//! caller's pod must exist with the uid and service account its token names,
//! and a pod (not Failed) of the impersonated service account must run on
//! the caller's node. Pods are indexed by node and service account, keeping
//! only the fields this needs.

use crate::auth::node::NodeAuthorizer;
use crate::auth::{AuthError, Caller, NodeRejection, Rejection, Unavailable};
use crate::pki::WorkloadIdentity;
use async_trait::async_trait;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

#[derive(Clone, Debug, PartialEq, Eq)]
struct PodFacts {
    uid: String,
    /// None for a pod that names none: after admission only a mirror (static) pod, which a node
    /// may create in any namespace and which runs no workload identity (Istio skips it too).
    service_account: Option<String>,
    node: Option<String>,
    failed: bool,
}

#[derive(Default)]
struct Index {
    /// (namespace, name) → facts.
    pods: HashMap<(String, String), PodFacts>,
    /// (node, namespace, service account) → pods running there that are not Failed.
    by_node: HashMap<(String, String, String), HashSet<(String, String)>>,
}

impl Index {
    fn insert(&mut self, key: (String, String), facts: PodFacts) {
        self.remove(&key);
        if let (Some(node), Some(account), false) = (&facts.node, &facts.service_account, facts.failed) {
            self.by_node.entry((node.clone(), key.0.clone(), account.clone())).or_default().insert(key.clone());
        }
        self.pods.insert(key, facts);
    }

    fn remove(&mut self, key: &(String, String)) {
        let Some(old) = self.pods.remove(key) else { return };
        if let (Some(node), Some(account)) = (old.node, old.service_account) {
            let slot = (node, key.0.clone(), account);
            if let Some(set) = self.by_node.get_mut(&slot) {
                set.remove(key);
                if set.is_empty() {
                    self.by_node.remove(&slot);
                }
            }
        }
    }
}

fn facts(pod: &Pod) -> Option<((String, String), PodFacts)> {
    let key = (pod.metadata.namespace.clone()?, pod.metadata.name.clone()?);
    let spec = pod.spec.as_ref();
    Some((
        key,
        PodFacts {
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            service_account: spec.and_then(|s| s.service_account_name.clone()).filter(|s| !s.is_empty()),
            node: spec.and_then(|s| s.node_name.clone()).filter(|n| !n.is_empty()),
            failed: pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed"),
        },
    ))
}

#[derive(Default)]
struct Shared {
    index: Index,
    synced: bool,
}

/// The Kubernetes node authorizer. Until its pod watch has synced it
/// answers `Unavailable` (retryable), never a wrong decision.
pub struct PodNodeAuthorizer {
    shared: Arc<RwLock<Shared>>,
}

impl std::fmt::Debug for PodNodeAuthorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PodNodeAuthorizer")
    }
}

impl PodNodeAuthorizer {
    /// An authorizer that answers `Unavailable` until [`Self::watch`] has synced.
    pub fn new() -> Arc<Self> {
        Arc::new(Self { shared: Arc::default() })
    }

    /// Starts the pod watch. The task ends when the returned handle is aborted.
    pub fn spawn(client: kube::Client) -> (Arc<Self>, tokio::task::JoinHandle<()>) {
        let authorizer = Self::new();
        let task = tokio::spawn(authorizer.watch(client));
        (authorizer, task)
    }

    /// Follows pods into this authorizer until dropped; may run again after
    /// a failed run (each run relists).
    pub fn watch(&self, client: kube::Client) -> impl Future<Output = ()> + Send + use<> {
        let writer = self.shared.clone();
        async move {
            // A run that panicked while writing may have left the index half
            // updated: answer `Unavailable` until this run has relisted.
            if writer.is_poisoned() {
                writer.clear_poison();
                if let Ok(mut s) = writer.write() {
                    s.synced = false;
                }
            }
            let mut pending = Index::default();
            let events = watcher(Api::<Pod>::all(client), watcher::Config::default()).default_backoff();
            let mut events = std::pin::pin!(events);
            while let Some(event) = events.next().await {
                let event = match event {
                    Ok(e) => e,
                    Err(e) => {
                        tracing::warn!(error = %e, "pod watch error; retrying");
                        continue;
                    }
                };
                let Ok(mut s) = writer.write() else { return };
                match event {
                    watcher::Event::Init => pending = Index::default(),
                    watcher::Event::InitApply(pod) => {
                        if let Some((k, f)) = facts(&pod) {
                            pending.insert(k, f);
                        }
                    }
                    watcher::Event::InitDone => {
                        s.index = std::mem::take(&mut pending);
                        s.synced = true;
                    }
                    watcher::Event::Apply(pod) => {
                        if let Some((k, f)) = facts(&pod) {
                            s.index.insert(k, f);
                        }
                    }
                    watcher::Event::Delete(pod) => {
                        if let Some((k, _)) = facts(&pod) {
                            s.index.remove(&k);
                        }
                    }
                }
            }
        }
    }
}

#[async_trait]
impl NodeAuthorizer for PodNodeAuthorizer {
    async fn authorize(&self, caller: &Caller, target: &WorkloadIdentity) -> Result<(), AuthError> {
        let shared = self.shared.read().map_err(|_| Unavailable::PodCache)?;
        if !shared.synced {
            return Err(Unavailable::PodCacheNotSynced.into());
        }
        let pod_ref = caller.pod.as_ref().ok_or(Rejection::Node(NodeRejection::NoPod))?;
        let key = (caller.namespace.clone(), pod_ref.name.clone());
        let Some(pod) = shared.index.pods.get(&key) else {
            let (namespace, name) = key;
            return Err(Rejection::Node(NodeRejection::PodMissing { namespace, name }).into());
        };
        if pod.uid != pod_ref.uid {
            let (namespace, name) = key;
            return Err(Rejection::Node(NodeRejection::PodReplaced { namespace, name }).into());
        }
        if pod.service_account.as_deref() != Some(caller.service_account.as_str()) {
            let (namespace, name) = key;
            return Err(Rejection::Node(NodeRejection::PodServiceAccount { namespace, name }).into());
        }
        // A Failed pod's token still passes a TokenReview; what ran in it no longer acts for the node.
        if pod.failed {
            let (namespace, name) = key;
            return Err(Rejection::Node(NodeRejection::PodFailed { namespace, name }).into());
        }
        let node = pod.node.as_ref().ok_or(Rejection::Node(NodeRejection::PodNotOnNode))?;
        let slot = (node.clone(), target.namespace.clone(), target.service_account.clone());
        if shared.index.by_node.get(&slot).is_some_and(|pods| !pods.is_empty()) {
            Ok(())
        } else {
            Err(Rejection::Node(NodeRejection::NotOnNode {
                namespace: target.namespace.clone(),
                service_account: target.service_account.clone(),
                node: node.clone(),
            })
            .into())
        }
    }
}
