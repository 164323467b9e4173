//! The leader's one view of every `Issuer` and `ClusterIssuer`, shared by
//! the issuer status, CertificateRequest and Kubernetes CSR controllers,
//! and the changes that can make an issuer able (or unable) to sign.

use crate::api::issuer::{ClusterIssuer, Issuer, IssuerResource};
use crate::api::mesh::Mesh;
use crate::issuer::{OwnService, Tenancy};
use crate::k8s::root::RootState;
use crate::k8s::watch as kwatch;
use crate::mesh::MeshRegistry;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::Api;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{reflector, watcher};
use std::sync::Arc;
use tokio::sync::watch;

/// Which issuer a request names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IssuerName {
    /// An `Issuer`, which lives in a namespace.
    Namespaced {
        /// The Issuer's namespace.
        namespace: String,
        /// The Issuer's name.
        name: String,
    },
    /// A `ClusterIssuer`, by name.
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

/// The leader's one view of every issuer, shared by the controllers, and of
/// every Mesh, whose grants and protected names bound what issuers sign.
#[derive(Clone)]
pub struct IssuerCache {
    issuers: Store<Issuer>,
    cluster_issuers: Store<ClusterIssuer>,
    meshes: Store<Mesh>,
    /// Which namespaces exist: the cluster's DNS reads a name's last label as one.
    namespaces: Store<Namespace>,
    changes: watch::Receiver<u64>,
    synced: watch::Receiver<bool>,
}

impl IssuerCache {
    /// Starts watching both issuer kinds and the meshes.
    pub fn spawn(client: kube::Client) -> (Self, tokio::task::JoinHandle<()>) {
        let (cache, feed) = Self::new(client);
        (cache, tokio::spawn(feed.run()))
    }

    /// The cache, and the feed that fills it (to be run, and run again
    /// after a failure, by a supervisor).
    pub fn new(client: kube::Client) -> (Self, IssuerFeed) {
        let (issuers, issuers_w) = reflector::store::<Issuer>();
        let (cluster_issuers, cluster_w) = reflector::store::<ClusterIssuer>();
        let (meshes, meshes_w) = reflector::store::<Mesh>();
        let (namespaces, namespaces_w) = reflector::store::<Namespace>();
        // A namespace's coming or going changes no issuer's readiness: it is read at each signing,
        // and signals no change (which would run every request again).
        let changes = futures::stream::select_all([
            kwatch::changes(issuers_w, Api::<Issuer>::all(client.clone()), watcher::Config::default())
                .map(|()| true)
                .boxed(),
            kwatch::changes(cluster_w, Api::<ClusterIssuer>::all(client.clone()), watcher::Config::default())
                .map(|()| true)
                .boxed(),
            kwatch::changes(meshes_w, Api::<Mesh>::all(client.clone()), watcher::Config::default())
                .map(|()| true)
                .boxed(),
            kwatch::changes(namespaces_w, Api::<Namespace>::all(client), watcher::Config::default())
                .map(|()| false)
                .boxed(),
        ])
        .boxed();
        let (tx, rx) = watch::channel(0u64);
        let (synced_tx, synced) = watch::channel(false);
        let feed = IssuerFeed {
            changes: Arc::new(tokio::sync::Mutex::new(changes)),
            tx,
            synced_tx,
            issuers: issuers.clone(),
            cluster_issuers: cluster_issuers.clone(),
            meshes: meshes.clone(),
            namespaces: namespaces.clone(),
        };
        (Self { issuers, cluster_issuers, meshes, namespaces, changes: rx, synced }, feed)
    }

    /// The tenant boundary as every Mesh, meshroot's own Service and the namespaces draw it.
    pub fn tenancy(&self, own: &OwnService) -> Tenancy {
        let meshes = self.meshes.state();
        Tenancy::new(meshes.iter().map(|m| (m.metadata.name.as_deref().unwrap_or_default(), &m.spec)), own)
            .with_namespaces(self.namespaces.state().iter().filter_map(|n| n.metadata.name.clone()))
    }

    /// Waits until both issuer kinds, the meshes and the namespaces have been listed once. (Not through
    /// `Store::wait_until_ready`: in kube-runtime 5 concurrent waiters on
    /// one store can miss the wake-up.)
    pub async fn wait_synced(&self) {
        let _ = self.synced.clone().wait_for(|s| *s).await;
    }

    /// Whether both issuer kinds, the meshes and the namespaces have been listed once (see
    /// [`Self::wait_synced`]).
    pub fn is_synced(&self) -> bool {
        *self.synced.borrow()
    }

    /// Every namespaced Issuer, as cached.
    pub fn issuers(&self) -> Vec<Arc<Issuer>> {
        self.issuers.state()
    }

    /// Every ClusterIssuer, as cached.
    pub fn cluster_issuers(&self) -> Vec<Arc<ClusterIssuer>> {
        self.cluster_issuers.state()
    }

    /// Notified after every change of any issuer.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.clone()
    }

    /// The named Issuer or ClusterIssuer, as cached; `None` if it is not (or not yet) in the cache.
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

/// Drives an [`IssuerCache`]'s watches.
#[derive(Clone)]
pub struct IssuerFeed {
    // The stores' writers live in this stream, so it is kept across runs:
    // a tokio Mutex is not poisoned by a run that panicked holding it.
    /// Each item: whether the change is one of an issuer or a mesh (a namespace's is not).
    changes: Arc<tokio::sync::Mutex<futures::stream::BoxStream<'static, bool>>>,
    tx: watch::Sender<u64>,
    synced_tx: watch::Sender<bool>,
    issuers: Store<Issuer>,
    cluster_issuers: Store<ClusterIssuer>,
    meshes: Store<Mesh>,
    namespaces: Store<Namespace>,
}

impl IssuerFeed {
    /// Follows both issuer kinds, the meshes and the namespaces until dropped.
    pub fn run(&self) -> impl Future<Output = ()> + Send + use<> {
        let feed = self.clone();
        async move {
            let mut changes = feed.changes.lock().await;
            while let Some(issuer_change) = changes.next().await {
                let now_synced = !*feed.synced_tx.borrow()
                    && kwatch::synced(&feed.issuers)
                    && kwatch::synced(&feed.cluster_issuers)
                    && kwatch::synced(&feed.meshes)
                    && kwatch::synced(&feed.namespaces);
                if now_synced {
                    feed.synced_tx.send_replace(true);
                }
                // Passes skipped while unsynced run again once synced, even when the namespaces,
                // which signal no change of their own, are listed last.
                if issuer_change || now_synced {
                    feed.tx.send_modify(|n| *n = n.wrapping_add(1));
                }
            }
        }
    }
}
