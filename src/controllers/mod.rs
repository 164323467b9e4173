//! Kubernetes reconcilers. They run on the elected leader only.

pub mod certificate_requests;
pub mod conditions;
pub mod events;
pub mod issuer_cache;
pub mod issuers;
pub mod istiod_tls;
pub mod kube_csrs;
pub mod meshes;
pub mod panic_guard;
pub mod root_configmaps;
pub mod signing;

/// Why a reconcile of one object must be retried. One type for every
/// controller that runs on kube's controller runtime.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// An API call failed while `doing` something.
    #[error("{doing}: {source}")]
    Api {
        /// What the reconciler was doing, for the message.
        doing: &'static str,
        /// The API error.
        #[source]
        source: crate::k8s::ApiError,
    },
}

impl ReconcileError {
    /// Maps a kube error from `doing` something.
    pub fn api(doing: &'static str) -> impl FnOnce(kube::Error) -> Self {
        move |e| Self::Api { doing, source: e.into() }
    }
}
