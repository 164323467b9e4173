//! The mesh registry: which mesh covers a caller, and the signing chain and
//! policy it signs with. Readers take a snapshot without locking; updates
//! swap the whole snapshot atomically.

use crate::ca::node::NodeAuthorizer;
use crate::pki::SigningChain;
use arc_swap::ArcSwap;
use std::collections::BTreeSet;
use std::sync::Arc;
use thiserror::Error;
use time::Duration;

/// Which namespaces a mesh covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NamespaceScope {
    All,
    Only(BTreeSet<String>),
}

impl NamespaceScope {
    pub fn covers(&self, namespace: &str) -> bool {
        match self {
            NamespaceScope::All => true,
            NamespaceScope::Only(set) => set.contains(namespace),
        }
    }
}

/// One mesh that meshroot signs workload certificates for.
#[derive(Debug)]
pub struct Mesh {
    pub name: String,
    pub trust_domain: String,
    pub scope: NamespaceScope,
    /// The mesh's signing chain, or why it has none yet (its namespaces
    /// then get `Unavailable`, which clients retry).
    pub signer: Result<Arc<SigningChain>, String>,
    pub default_ttl: Duration,
    pub max_ttl: Duration,
    /// `namespace/serviceaccount` entries allowed to impersonate (ztunnel).
    pub trusted_node_accounts: BTreeSet<String>,
    pub node_authorizer: Arc<dyn NodeAuthorizer>,
}

impl Mesh {
    /// The lifetime to issue for a requested `validity_duration` (seconds):
    /// the default for 0 or less, the maximum for anything longer.
    pub fn ttl_for(&self, requested_seconds: i64) -> Duration {
        if requested_seconds <= 0 {
            self.default_ttl.min(self.max_ttl)
        } else {
            Duration::seconds(requested_seconds).min(self.max_ttl)
        }
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum RouteError {
    #[error("no mesh is ready to sign yet")]
    NotReady,
    #[error("namespace {0:?} is not part of any mesh")]
    NoMesh(String),
    #[error("namespace {namespace:?} is selected by more than one mesh ({meshes}); refusing to choose")]
    Ambiguous { namespace: String, meshes: String },
}

#[derive(Debug)]
pub struct MeshRegistry {
    meshes: ArcSwap<Vec<Arc<Mesh>>>,
    /// Counts replacements, so other parts can follow changes.
    generation: tokio::sync::watch::Sender<u64>,
}

impl Default for MeshRegistry {
    fn default() -> Self {
        Self::new(Vec::new())
    }
}

impl MeshRegistry {
    pub fn new(meshes: Vec<Arc<Mesh>>) -> Self {
        Self { meshes: ArcSwap::from_pointee(meshes), generation: tokio::sync::watch::Sender::new(0) }
    }

    pub fn replace(&self, meshes: Vec<Arc<Mesh>>) {
        self.meshes.store(Arc::new(meshes));
        self.generation.send_modify(|g| *g += 1);
    }

    /// Notified after every replacement.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.generation.subscribe()
    }

    pub fn meshes(&self) -> Arc<Vec<Arc<Mesh>>> {
        self.meshes.load_full()
    }

    /// The one mesh that covers `namespace`.
    pub fn route(&self, namespace: &str) -> Result<Arc<Mesh>, RouteError> {
        let meshes = self.meshes.load();
        if meshes.is_empty() {
            return Err(RouteError::NotReady);
        }
        let mut matching = meshes.iter().filter(|m| m.scope.covers(namespace));
        let Some(first) = matching.next() else {
            return Err(RouteError::NoMesh(namespace.to_string()));
        };
        let rest: Vec<&Arc<Mesh>> = matching.collect();
        if !rest.is_empty() {
            let mut names: Vec<&str> = std::iter::once(first).chain(rest).map(|m| m.name.as_str()).collect();
            names.sort_unstable();
            return Err(RouteError::Ambiguous { namespace: namespace.to_string(), meshes: names.join(", ") });
        }
        Ok(first.clone())
    }
}
