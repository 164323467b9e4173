//! Every replica's view of the meshes: built from watches of `Mesh`
//! objects, the intermediate Secrets and namespaces, and swapped into the
//! [`MeshRegistry`] whenever any of them (or the trust bundle) changes. A
//! renewed intermediate or a newly labelled namespace takes effect without a
//! restart.

use super::intermediates::{parse_secret, secret_name};
use super::watch as kwatch;
use crate::api::mesh::{MeshSpecError, ValidSpec};
use crate::api::selector;
use crate::api::{Mesh as MeshResource, MeshMode};
use crate::auth::node::NodeAuthorizer;
use crate::mesh::{Mesh, MeshRegistry, NamespaceScope, NoSigner};
use crate::pki::chain::sha256_hex;
use crate::pki::{SigningChain, TrustBundle};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::Api;
use kube::runtime::{reflector, watcher};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use time::OffsetDateTime;
use tokio::sync::watch;

/// Parsed signing chains, by Secret resourceVersion and bundle, so a rebuild
/// does not re-parse (and re-prove) unchanged intermediates.
#[derive(Default)]
pub struct ChainCache {
    chains: Mutex<HashMap<(String, String, String), Arc<SigningChain>>>,
}

/// What one rebuild produced.
#[derive(Debug, Default)]
pub struct Built {
    /// The usable External meshes, including those whose signer is not ready yet.
    pub meshes: Vec<Arc<Mesh>>,
    /// Per mesh name: why it is left out or cannot sign yet.
    pub problems: BTreeMap<String, String>,
}

/// Builds the routable meshes from the watched objects. Pure: no I/O.
pub fn build(
    resources: &[Arc<MeshResource>],
    secrets: &[Arc<Secret>],
    namespaces: &[Arc<Namespace>],
    bundle: &TrustBundle,
    node_authorizer: &Arc<dyn NodeAuthorizer>,
    cache: &ChainCache,
    now: OffsetDateTime,
) -> Built {
    let mut built = Built::default();
    let secrets: HashMap<&str, &Secret> =
        secrets.iter().filter_map(|s| s.metadata.name.as_deref().map(|n| (n, s.as_ref()))).collect();
    let bundle_id = bundle.fingerprints().join(",");
    let mut fresh = HashMap::new();
    for r in resources {
        let Some(name) = r.metadata.name.clone() else { continue };
        if r.spec.mode != MeshMode::External {
            continue;
        }
        match mesh_from(r, &name, &secrets, namespaces, bundle, &bundle_id, node_authorizer, cache, &mut fresh, now) {
            Ok(mesh) => {
                if let Err(why) = &mesh.signer {
                    built.problems.insert(name.clone(), why.to_string());
                }
                built.meshes.push(Arc::new(mesh));
            }
            Err(why) => {
                built.problems.insert(name, why.to_string());
            }
        }
    }
    // Keep only what this build used, so the cache cannot grow without bound.
    if let Ok(mut chains) = cache.chains.lock() {
        *chains = fresh;
    }
    built
}

#[allow(clippy::too_many_arguments)]
fn mesh_from(
    r: &MeshResource,
    name: &str,
    secrets: &HashMap<&str, &Secret>,
    namespaces: &[Arc<Namespace>],
    bundle: &TrustBundle,
    bundle_id: &str,
    node_authorizer: &Arc<dyn NodeAuthorizer>,
    cache: &ChainCache,
    fresh: &mut HashMap<(String, String, String), Arc<SigningChain>>,
    now: OffsetDateTime,
) -> Result<Mesh, MeshSpecError> {
    let spec = &r.spec;
    let ValidSpec { default_ttl, max_ttl } = spec.validate()?;
    let scope = match &spec.namespace_selector {
        None => NamespaceScope::All,
        Some(sel) => {
            let empty = BTreeMap::new();
            NamespaceScope::Only(
                namespaces
                    .iter()
                    .filter(|n| selector::matches(sel, n.metadata.labels.as_ref().unwrap_or(&empty)))
                    .filter_map(|n| n.metadata.name.clone())
                    .collect::<BTreeSet<_>>(),
            )
        }
    };
    let secret_name = secret_name(name);
    let signer = match secrets.get(secret_name.as_str()) {
        None => Err(NoSigner::Waiting(secret_name.clone())),
        Some(secret) => {
            let key = (
                secret_name.clone(),
                secret.metadata.resource_version.clone().unwrap_or_default(),
                bundle_id.to_string(),
            );
            let cached = cache.chains.lock().ok().and_then(|c| c.get(&key).cloned());
            match cached {
                Some(chain) => Ok(chain),
                None => parse_secret(secret, bundle, now)
                    .map(Arc::new)
                    .map_err(|e| NoSigner::Invalid { secret: secret_name.clone(), why: e.to_string() }),
            }
            .inspect(|chain| {
                fresh.insert(key, chain.clone());
            })
        }
    };
    Ok(Mesh {
        name: name.to_string(),
        trust_domain: spec.trust_domain.clone(),
        scope,
        signer,
        default_ttl,
        max_ttl,
        trusted_node_accounts: spec.trusted_node_accounts.iter().cloned().collect(),
        node_authorizer: node_authorizer.clone(),
    })
}

/// Watches `Mesh` objects, Secrets in meshroot's namespace and namespaces,
/// and rebuilds `registry` after every change (debounced), until the
/// returned task is dropped or aborted. `synced` turns true after the
/// first build from fully listed watches.
pub fn spawn(
    client: kube::Client,
    namespace: &str,
    registry: Arc<MeshRegistry>,
    mut bundle: watch::Receiver<Arc<TrustBundle>>,
    node_authorizer: Arc<dyn NodeAuthorizer>,
    synced: watch::Sender<bool>,
) -> tokio::task::JoinHandle<()> {
    let (meshes, meshes_w) = reflector::store::<MeshResource>();
    let (secrets, secrets_w) = reflector::store::<Secret>();
    let (namespaces, namespaces_w) = reflector::store::<Namespace>();
    let config = watcher::Config::default();
    let mut changes = futures::stream::select_all([
        kwatch::changes(meshes_w, Api::<MeshResource>::all(client.clone()), config.clone()),
        kwatch::changes(secrets_w, Api::<Secret>::namespaced(client.clone(), namespace), config.clone()),
        kwatch::changes(namespaces_w, Api::<Namespace>::all(client), config),
    ]);
    let cache = ChainCache::default();
    tokio::spawn(async move {
        let mut last_problems = BTreeMap::new();
        loop {
            tokio::select! {
                change = changes.next() => if change.is_none() { return },
                changed = bundle.changed() => if changed.is_err() { return },
            }
            // Let a burst of events settle, then rebuild once.
            kwatch::settle(&mut changes, Duration::from_millis(50)).await;
            if !(kwatch::synced(&meshes) && kwatch::synced(&secrets) && kwatch::synced(&namespaces)) {
                continue;
            }
            let current_bundle = bundle.borrow().clone();
            let built = build(
                &meshes.state(),
                &secrets.state(),
                &namespaces.state(),
                &current_bundle,
                &node_authorizer,
                &cache,
                OffsetDateTime::now_utc(),
            );
            if built.problems != last_problems {
                for (mesh, why) in &built.problems {
                    tracing::warn!(mesh, problem = %why, "mesh cannot serve");
                }
                last_problems = built.problems.clone();
            }
            registry.set_problems(built.problems);
            tracing::debug!(meshes = built.meshes.len(), bundle = %sha256_hex(current_bundle.pem().as_bytes()), "mesh registry rebuilt");
            registry.replace(built.meshes);
            synced.send_replace(true);
        }
    })
}
