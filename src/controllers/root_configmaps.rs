//! Root distribution: the `istio-ca-root-cert` ConfigMap (per-mesh name,
//! key `root-cert.pem`, label `istio.io/config=true`) in every namespace an
//! External mesh selects, plus istiod's and the trusted node accounts'
//! (ztunnel's) namespaces. Its content is the trust bundle.
//!
//! Planning is pure: desired state against what the watch shows, so a
//! re-sync with nothing changed writes nothing. Edited or deleted ConfigMaps
//! are restored; a namespace that leaves the mesh loses the ConfigMap only
//! if meshroot owns it.
//!
//! A ConfigMap another writer keeps rewriting (an istiod whose CA server is
//! still on writes its own root to the same name) is contested: its
//! managedFields show meshroot's entry and another manager owning
//! `root-cert.pem`. meshroot then rewrites it once a resync instead of at
//! once, so the two do not trade writes, and the Mesh reports the contest.

use crate::api::selector;
use crate::api::{Mesh, MeshMode};
use crate::k8s::{FIELD_MANAGER, MANAGED_BY_LABEL, MANAGED_BY_VALUE, error_summary, is_managed};
use crate::pki::{TrustBundle, pem};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use rustls_pki_types::CertificateDer;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

pub use crate::k8s::root::ROOT_CERT_KEY;
/// The label istiod puts on its root ConfigMaps; meshroot sets it to `true` as well.
pub const ISTIO_CONFIG_LABEL: &str = "istio.io/config";

/// Namespaces istiod itself never gives a root ConfigMap.
const SKIPPED_NAMESPACES: [&str; 3] = ["kube-public", "kube-node-lease", "local-path-storage"];

/// One write [`plan`] calls for.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Action {
    /// Create or overwrite the ConfigMap with the bundle.
    Apply {
        /// The ConfigMap's namespace.
        namespace: String,
        /// The ConfigMap's name (the mesh's root ConfigMap name).
        name: String,
    },
    /// Remove a ConfigMap meshroot owns that no mesh wants any more.
    Delete {
        /// The ConfigMap's namespace.
        namespace: String,
        /// The ConfigMap's name.
        name: String,
    },
}

/// A root ConfigMap: (namespace, name).
pub type ConfigMapKey = (String, String);

/// The root ConfigMaps each External mesh wants.
pub fn desired_by_mesh(
    meshes: &[Arc<Mesh>],
    namespaces: &[Arc<Namespace>],
) -> BTreeMap<String, BTreeSet<ConfigMapKey>> {
    let live: Vec<&Namespace> = namespaces
        .iter()
        .map(|n| n.as_ref())
        .filter(|n| n.metadata.deletion_timestamp.is_none())
        .filter(|n| n.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Terminating"))
        .collect();
    let existing: BTreeSet<&str> = live.iter().filter_map(|n| n.metadata.name.as_deref()).collect();
    let empty = BTreeMap::new();
    let mut by_mesh = BTreeMap::new();
    for mesh in meshes.iter().filter(|m| m.spec.mode == MeshMode::External) {
        let Some(mesh_name) = mesh.metadata.name.clone() else {
            continue;
        };
        let spec = &mesh.spec;
        let mut targets: BTreeSet<String> = match &spec.namespace_selector {
            Some(sel) if selector::validate(sel).is_err() => BTreeSet::new(),
            Some(sel) => live
                .iter()
                .filter(|n| selector::matches(sel, n.metadata.labels.as_ref().unwrap_or(&empty)))
                .filter_map(|n| n.metadata.name.clone())
                .collect(),
            None => live
                .iter()
                .filter_map(|n| n.metadata.name.clone())
                .filter(|n| !SKIPPED_NAMESPACES.contains(&n.as_str()))
                .collect(),
        };
        // istiod's and ztunnel's namespaces need the bundle too.
        targets.insert(spec.istiod.namespace.clone());
        targets
            .extend(spec.trusted_node_accounts.iter().filter_map(|a| a.split_once('/').map(|(ns, _)| ns.to_string())));
        targets.retain(|ns| existing.contains(ns.as_str()));
        let keys = targets.into_iter().map(|ns| (ns, spec.root_config_map_name.clone())).collect();
        by_mesh.insert(mesh_name, keys);
    }
    by_mesh
}

/// The field manager istiod writes with (client-go's default: the binary's name).
pub const ISTIOD_FIELD_MANAGER: &str = "pilot-discovery";

/// The annotation on a `Mesh` (value `"true"`) that hands it the root ConfigMaps another tool
/// wrote (istio-csr's, for example). Without it meshroot leaves them alone and says so.
pub const ADOPT_ROOT_CONFIGMAPS: &str = "meshroot.io/adopt-root-configmaps";

/// The writer of a root ConfigMap meshroot never wrote, when that writer is not istiod:
/// another tool's ConfigMap, which meshroot takes over only when its Mesh says so, or at once
/// when it trusts a root meshroot's bundle does not hold. (istiod's
/// are taken over: meshroot replaces istiod's CA, docs/openshift.md.) None for meshroot's own,
/// for istiod's, and for a ConfigMap without managedFields.
pub fn foreign_writer(cm: &ConfigMap) -> Option<String> {
    if is_managed(cm.metadata.labels.as_ref()) {
        return None;
    }
    let entries = cm.metadata.managed_fields.as_ref()?;
    if entries.iter().any(|e| e.manager.as_deref() == Some(FIELD_MANAGER)) {
        return None;
    }
    let owner = entries.iter().find(|e| owns_root_cert(e))?;
    let writer = owner.manager.clone().unwrap_or_default();
    (writer != ISTIOD_FIELD_MANAGER).then_some(writer)
}

/// Whether a managedFields entry owns the bundle's key.
fn owns_root_cert(entry: &ManagedFieldsEntry) -> bool {
    let key = format!("f:{ROOT_CERT_KEY}");
    entry.fields_v1.as_ref().is_some_and(|f| f.0.get("f:data").and_then(|d| d.get(&key)).is_some())
}

/// The writer that changed `root-cert.pem` after meshroot wrote it: the
/// ConfigMap still has meshroot's managedFields entry, but another
/// manager's entry owns the key (an update moves a field it changes to its
/// writer). None for a ConfigMap meshroot never wrote (istiod's leftover,
/// taken over) or one whose key meshroot still owns.
pub fn rewritten_by(cm: &ConfigMap) -> Option<String> {
    let entries = cm.metadata.managed_fields.as_ref()?;
    let is_ours = |e: &&ManagedFieldsEntry| e.manager.as_deref() == Some(FIELD_MANAGER);
    if !entries.iter().any(|e| is_ours(&e)) {
        return None;
    }
    entries
        .iter()
        .filter(|e| !is_ours(e))
        .find(|e| owns_root_cert(e))
        .map(|e| e.manager.clone().unwrap_or_else(|| "a writer without a field manager".into()))
}

/// A root ConfigMap that another writer keeps rewriting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Contest {
    /// The ConfigMap.
    pub key: ConfigMapKey,
    /// Its other writer's field manager (istiod's is `pilot-discovery`).
    pub writer: String,
}

/// Largest bundle or ConfigMap PEM read when comparing roots.
const MAX_BUNDLE_BYTES: usize = 1 << 20;

/// Whether every root `cm` holds is in `bundle` (and it holds some).
fn trusts_only(cm: &ConfigMap, bundle: &[CertificateDer<'static>]) -> bool {
    let Some(text) = cm.data.as_ref().and_then(|d| d.get(ROOT_CERT_KEY)) else { return false };
    match pem::decode_certificates(text.as_bytes(), MAX_BUNDLE_BYTES) {
        Ok(roots) => !roots.is_empty() && roots.iter().all(|r| bundle.contains(r)),
        Err(_) => false,
    }
}

/// What [`plan`] decided.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// The writes to make.
    pub actions: Vec<Action>,
    /// The contested ConfigMaps, whether rewritten this time or not.
    pub contested: Vec<Contest>,
    /// ConfigMaps another tool wrote, left alone because their Mesh did not ask for them.
    pub foreign: Vec<Contest>,
}

fn holds_bundle(cm: &ConfigMap, bundle_pem: &str) -> bool {
    let labels = cm.metadata.labels.as_ref();
    cm.data.as_ref().and_then(|d| d.get(ROOT_CERT_KEY)).is_some_and(|v| v == bundle_pem)
        && labels.and_then(|l| l.get(ISTIO_CONFIG_LABEL)).is_some_and(|v| v == "true")
        && is_managed(labels)
}

/// The writes that bring `observed` to `want`: nothing when they agree. A
/// contested ConfigMap is rewritten only when `rewrite_contested` says its
/// turn has come; another tool's ConfigMap only when it is in `adoptable`.
pub fn plan(
    want: &BTreeSet<ConfigMapKey>,
    observed: &[Arc<ConfigMap>],
    names: &BTreeSet<String>,
    bundle_pem: &str,
    adoptable: &BTreeSet<ConfigMapKey>,
    rewrite_contested: impl Fn(&ConfigMapKey) -> bool,
) -> Plan {
    let observed: BTreeMap<ConfigMapKey, &ConfigMap> = observed
        .iter()
        .filter_map(|cm| Some(((cm.metadata.namespace.clone()?, cm.metadata.name.clone()?), cm.as_ref())))
        .collect();
    // Decoded only when another writer's ConfigMap is in view, not on every pass.
    let decoded = std::cell::OnceCell::new();
    let bundle_roots = || {
        decoded.get_or_init(|| pem::decode_certificates(bundle_pem.as_bytes(), MAX_BUNDLE_BYTES).unwrap_or_default())
    };
    let mut plan = Plan::default();
    for key in want {
        let current = observed.get(key);
        if current.is_some_and(|cm| holds_bundle(cm, bundle_pem)) {
            continue;
        }
        // Left to its writer only while it trusts nothing meshroot does not: one that trusts
        // another root (planted, or stale) is corrected at once.
        if let Some(writer) = current.and_then(|cm| foreign_writer(cm))
            && !adoptable.contains(key)
            && current.is_some_and(|cm| trusts_only(cm, bundle_roots()))
        {
            plan.foreign.push(Contest { key: key.clone(), writer });
            continue;
        }
        if let Some(writer) = current.and_then(|cm| rewritten_by(cm)) {
            plan.contested.push(Contest { key: key.clone(), writer });
            if !rewrite_contested(key) {
                continue;
            }
        }
        plan.actions.push(Action::Apply { namespace: key.0.clone(), name: key.1.clone() });
    }
    let actions = &mut plan.actions;
    // Only names meshroot writes are ever deleted (those Meshes use now, and `names`: those its RBAC
    // allows, once a Mesh stops using one): anyone may put meshroot's labels on a ConfigMap of any
    // name in their namespace, and a delete the RBAC refuses would fail every pass, slowing every
    // root ConfigMap write behind its backoff.
    let in_use: BTreeSet<&str> = want.iter().map(|(_, name)| name.as_str()).collect();
    for ((namespace, name), cm) in &observed {
        let ours = in_use.contains(name.as_str()) || names.contains(name);
        let unwanted = ours && !want.contains(&(namespace.clone(), name.clone()));
        if unwanted && is_managed(cm.metadata.labels.as_ref()) && cm.metadata.deletion_timestamp.is_none() {
            actions.push(Action::Delete { namespace: namespace.clone(), name: name.clone() });
        }
    }
    plan
}

/// What a batch of writes left behind: each applied ConfigMap's
/// resourceVersion (so the caller can wait for its cache to see them), and
/// the failures.
#[derive(Debug, Default)]
pub struct Executed {
    /// `((namespace, name), resourceVersion)` of each ConfigMap applied.
    pub applied: Vec<((String, String), String)>,
    /// One line per action that failed: the action and the API error.
    pub failures: Vec<String>,
}

/// Performs the actions. Applies are server-side applies that also take
/// over a ConfigMap of the same name that istiod left behind.
pub async fn execute(client: &kube::Client, actions: &[Action], bundle: &TrustBundle) -> Executed {
    let mut done = Executed::default();
    for action in actions {
        let result = match action {
            Action::Apply { namespace, name } => {
                let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
                let body = json!({
                    "apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": name, "labels": {ISTIO_CONFIG_LABEL: "true", MANAGED_BY_LABEL: MANAGED_BY_VALUE}},
                    "data": {ROOT_CERT_KEY: bundle.pem()},
                });
                api.patch(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(body)).await.map(|cm| {
                    if let Some(rv) = cm.metadata.resource_version {
                        done.applied.push(((namespace.clone(), name.clone()), rv));
                    }
                })
            }
            Action::Delete { namespace, name } => {
                let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
                match api.delete(name, &DeleteParams::default()).await {
                    Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
                    other => other.map(|_| ()),
                }
            }
        };
        if let Err(e) = result {
            done.failures.push(format!("{action:?}: {}", error_summary(&e)));
        }
    }
    done
}

/// How long the cache may take to show meshroot's own writes before the
/// next decision is made anyway.
const CACHE_CATCH_UP: std::time::Duration = std::time::Duration::from_secs(10);

/// Whether the cache shows every applied ConfigMap as written, so the next
/// plan does not redo writes from a stale view (after thousands of writes
/// the watch lags behind them). resourceVersions are opaque (equality is
/// all the API promises), so a ConfigMap changed again since is caught up
/// when it holds the bundle: the next plan leaves it alone either way.
fn caught_up(
    store: &kube::runtime::reflector::Store<ConfigMap>,
    applied: &[((String, String), String)],
    bundle_pem: &str,
) -> bool {
    use kube::runtime::reflector::ObjectRef;
    applied.iter().all(|((namespace, name), rv)| {
        store.get(&ObjectRef::new(name).within(namespace)).is_some_and(|cm| {
            cm.metadata.resource_version.as_deref() == Some(rv.as_str()) || holds_bundle(&cm, bundle_pem)
        })
    })
}

/// One mesh's root ConfigMaps, for its status.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MeshRoots {
    /// How many namespaces the mesh covers.
    pub namespaces: u32,
    /// Its ConfigMaps another writer keeps rewriting.
    pub contested: Vec<Contest>,
    /// Its ConfigMaps another tool wrote, left alone until the Mesh asks for them.
    pub foreign: Vec<Contest>,
}

/// Each mesh's root ConfigMaps, by mesh name, for the Mesh status.
pub type Coverage = Arc<std::sync::Mutex<BTreeMap<String, MeshRoots>>>;

/// Keeps the root ConfigMaps converged until the task is dropped: on every
/// change to Meshes, namespaces, root ConfigMaps or the bundle, and every
/// `resync` besides. A contested ConfigMap is rewritten at most once a `resync`.
/// Keeps every Mesh's root ConfigMaps holding `bundle`. `names` are the ConfigMap names meshroot
/// may write (its RBAC's), whose leftovers it deletes once no Mesh uses a name any more.
pub fn spawn(
    client: kube::Client,
    mut bundle: tokio::sync::watch::Receiver<Arc<TrustBundle>>,
    resync: std::time::Duration,
    coverage: Coverage,
    names: BTreeSet<String>,
) -> tokio::task::JoinHandle<()> {
    use crate::k8s::watch as kwatch;
    use futures::StreamExt;
    use kube::runtime::{reflector, watcher};
    let (meshes, meshes_w) = reflector::store::<Mesh>();
    let (namespaces, namespaces_w) = reflector::store::<Namespace>();
    let (configmaps, configmaps_w) = reflector::store::<ConfigMap>();
    let config = watcher::Config::default();
    // Istio's root ConfigMaps carry istio.io/config=true, istiod's leftovers
    // included; the periodic re-sync covers the rest.
    let root_configmaps = config.clone().labels(&format!("{ISTIO_CONFIG_LABEL}=true"));
    let mut changes = futures::stream::select_all([
        kwatch::changes(meshes_w, Api::<Mesh>::all(client.clone()), config.clone()),
        kwatch::changes(namespaces_w, Api::<Namespace>::all(client.clone()), config),
        kwatch::changes(configmaps_w, Api::<ConfigMap>::all(client.clone()), root_configmaps),
    ]);
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(resync);
        let mut backoff = std::time::Duration::from_millis(500);
        // When each contested ConfigMap was last rewritten, and by whom it was contested.
        let mut contest_writes: BTreeMap<ConfigMapKey, (tokio::time::Instant, String)> = BTreeMap::new();
        loop {
            tokio::select! {
                c = changes.next() => if c.is_none() { return },
                changed = bundle.changed() => if changed.is_err() { return },
                _ = ticker.tick() => {}
            }
            kwatch::settle(&mut changes, std::time::Duration::from_millis(100)).await;
            if !(kwatch::synced(&meshes) && kwatch::synced(&namespaces) && kwatch::synced(&configmaps)) {
                continue;
            }
            let current = bundle.borrow().clone();
            let by_mesh = desired_by_mesh(&meshes.state(), &namespaces.state());
            let want: BTreeSet<ConfigMapKey> = by_mesh.values().flatten().cloned().collect();
            let now = tokio::time::Instant::now();
            // Due a little early, so that the tick a resync later (the write happened after
            // the settle) finds it due rather than one more resync on.
            let due = resync.saturating_sub(resync.checked_div(10).unwrap_or_default());
            let meshes_now = meshes.state();
            let adoptable: BTreeSet<ConfigMapKey> = meshes_now
                .iter()
                .filter(|m| crate::k8s::annotation_is_true(m.metadata.annotations.as_ref(), ADOPT_ROOT_CONFIGMAPS))
                .filter_map(|m| m.metadata.name.as_ref().and_then(|name| by_mesh.get(name)))
                .flatten()
                .cloned()
                .collect();
            let plan = plan(&want, &configmaps.state(), &names, current.pem(), &adoptable, |key| {
                contest_writes.get(key).is_none_or(|(at, _)| now.duration_since(*at) >= due)
            });
            // Kept for a resync even while meshroot's write holds, so that the
            // other writer's next rewrite waits its turn too, and the Mesh keeps
            // reporting the contest rather than flapping with each write.
            contest_writes.retain(|_, (at, _)| now.duration_since(*at) < resync);
            let mut contests: BTreeMap<&ConfigMapKey, &str> =
                contest_writes.iter().map(|(key, (_, writer))| (key, writer.as_str())).collect();
            contests.extend(plan.contested.iter().map(|c| (&c.key, c.writer.as_str())));
            let report = by_mesh
                .iter()
                .map(|(mesh, keys)| {
                    let contested = contests
                        .iter()
                        .filter(|(key, _)| keys.contains(*key))
                        .map(|(key, writer)| Contest { key: (*key).clone(), writer: writer.to_string() })
                        .collect();
                    let foreign = plan.foreign.iter().filter(|c| keys.contains(&c.key)).cloned().collect();
                    (mesh.clone(), MeshRoots { namespaces: keys.len() as u32, contested, foreign })
                })
                .collect();
            if let Ok(mut c) = coverage.lock() {
                *c = report;
            }
            if plan.actions.is_empty() {
                continue;
            }
            let contested: BTreeSet<&ConfigMapKey> = plan.contested.iter().map(|c| &c.key).collect();
            if !contested.is_empty() {
                let writers: BTreeSet<&str> = plan.contested.iter().map(|c| c.writer.as_str()).collect();
                tracing::warn!(
                    contested = contested.len(),
                    writers = ?writers,
                    every = ?resync,
                    "root ConfigMaps are rewritten by another writer; rewriting them once a resync"
                );
            }
            tracing::info!(writes = plan.actions.len(), "converging root ConfigMaps");
            let done = execute(&client, &plan.actions, &current).await;
            // Only writes that happened wait their turn; a failed one is retried with the backoff.
            for (key, _) in &done.applied {
                if let Some(contest) = plan.contested.iter().find(|c| &c.key == key) {
                    contest_writes.insert(key.clone(), (now, contest.writer.clone()));
                }
            }
            // Read our own writes before deciding again (not the contested
            // ones: their other writer may have changed them already).
            let awaited: Vec<_> = done.applied.into_iter().filter(|(key, _)| !contested.contains(key)).collect();
            let started = tokio::time::Instant::now();
            let deadline = started.checked_add(CACHE_CATCH_UP).unwrap_or(started);
            while !caught_up(&configmaps, &awaited, current.pem()) && tokio::time::Instant::now() < deadline {
                if let Ok(None) = tokio::time::timeout_at(deadline, changes.next()).await {
                    return;
                }
            }
            if done.failures.is_empty() {
                backoff = std::time::Duration::from_millis(500);
            } else {
                tracing::warn!(error = %done.failures.join("; "), retry_in = ?backoff, "root ConfigMap writes failed");
                tokio::time::sleep(backoff).await;
                backoff = backoff.saturating_mul(2).min(std::time::Duration::from_secs(30));
                // Make the next loop retry even if nothing else changes.
                ticker.reset_immediately();
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// resourceVersions are compared for equality only: a cached ConfigMap
    /// at another version (whatever its digits) is caught up only if it
    /// holds the bundle written, since the next plan would rewrite it
    /// otherwise.
    #[test]
    fn the_cache_is_caught_up_only_at_the_version_written_or_with_the_bundle() {
        use kube::runtime::{reflector, watcher};
        let (store, mut writer) = reflector::store::<ConfigMap>();
        let cached = |rv: &str, pem: &str| -> ConfigMap {
            serde_json::from_value(json!({
                "metadata": {"name": "istio-ca-root-cert", "namespace": "apps", "resourceVersion": rv,
                    "labels": {ISTIO_CONFIG_LABEL: "true", MANAGED_BY_LABEL: MANAGED_BY_VALUE}},
                "data": {ROOT_CERT_KEY: pem},
            }))
            .unwrap()
        };
        let written = vec![(("apps".to_string(), "istio-ca-root-cert".to_string()), "9".to_string())];
        // A larger number is not a later version: an old copy without the bundle is not caught up.
        writer.apply_watcher_event(&watcher::Event::Apply(cached("10", "old bundle")));
        assert!(!caught_up(&store, &written, "new bundle"));
        writer.apply_watcher_event(&watcher::Event::Apply(cached("9", "old bundle")));
        assert!(caught_up(&store, &written, "new bundle"), "the version written");
        writer.apply_watcher_event(&watcher::Event::Apply(cached("3", "new bundle")));
        assert!(caught_up(&store, &written, "new bundle"), "changed since, but holding the bundle");
    }

    fn ns(name: &str, labels: serde_json::Value) -> Arc<Namespace> {
        Arc::new(serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap())
    }

    fn mesh(name: &str, spec: serde_json::Value) -> Arc<Mesh> {
        Arc::new(
            serde_json::from_value(
                json!({"apiVersion": "meshroot.io/v1alpha1", "kind": "Mesh", "metadata": {"name": name}, "spec": spec}),
            )
            .unwrap(),
        )
    }

    fn cm(ns: &str, name: &str, data: &str, managed: bool) -> Arc<ConfigMap> {
        let mut labels = json!({"istio.io/config": "true"});
        if managed {
            labels[MANAGED_BY_LABEL] = json!(MANAGED_BY_VALUE);
        }
        Arc::new(
            serde_json::from_value(
                json!({"metadata": {"name": name, "namespace": ns, "labels": labels}, "data": {ROOT_CERT_KEY: data}}),
            )
            .unwrap(),
        )
    }

    #[test]
    fn selected_namespaces_plus_istiod_and_ztunnel() {
        let namespaces = vec![
            ns("istio-system", json!({})),
            ns("ztunnel", json!({})),
            ns("bookinfo", json!({"mesh": "default"})),
            ns("other", json!({})),
            ns("kube-public", json!({})),
        ];
        let meshes = vec![
            mesh(
                "default",
                json!({"trustDomain": "cluster.local", "istiod": {"namespace": "istio-system"},
                "namespaceSelector": {"matchLabels": {"mesh": "default"}}, "trustedNodeAccounts": ["ztunnel/ztunnel"]}),
            ),
            mesh("gw", json!({"trustDomain": "cluster.local", "mode": "PluginCA", "istiod": {"namespace": "other"}})),
        ];
        let by_mesh = desired_by_mesh(&meshes, &namespaces);
        let want: BTreeSet<ConfigMapKey> = by_mesh.values().flatten().cloned().collect();
        let counts: BTreeMap<String, usize> = by_mesh.iter().map(|(m, keys)| (m.clone(), keys.len())).collect();
        let names: Vec<&str> = want.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, vec!["bookinfo", "istio-system", "ztunnel"]);
        assert!(want.iter().all(|(_, cm)| cm == "istio-ca-root-cert"));
        assert_eq!(counts["default"], 3);
        assert!(!counts.contains_key("gw"), "PluginCA meshes are istiod's to distribute");
        // No selector: every namespace but the ones istiod skips.
        let all = vec![mesh(
            "all",
            json!({"trustDomain": "td", "istiod": {"namespace": "istio-system"}, "rootConfigMapName": "custom-root"}),
        )];
        let want: BTreeSet<ConfigMapKey> = desired_by_mesh(&all, &namespaces).into_values().flatten().collect();
        assert_eq!(want.len(), 4);
        assert!(!want.iter().any(|(n, _)| n == "kube-public"));
        assert!(want.iter().all(|(_, cm)| cm == "custom-root"));
    }

    #[test]
    fn plans_only_the_differences() {
        let want: BTreeSet<(String, String)> =
            [("a", "x"), ("b", "x"), ("c", "x")].iter().map(|(n, c)| (n.to_string(), c.to_string())).collect();
        let observed = vec![
            cm("a", "x", "BUNDLE", true),  // current
            cm("b", "x", "OLD", true),     // drifted
            cm("c", "x", "BUNDLE", false), // istiod's leftover: take it over
            cm("d", "x", "BUNDLE", true),  // namespace left the mesh: ours, delete
            cm("e", "x", "BUNDLE", false), // not ours: never deleted
            cm("f", "y", "BUNDLE", true),  // labelled as ours, but a name meshroot never writes: left
        ];
        let actions = plan(&want, &observed, &BTreeSet::new(), "BUNDLE", &BTreeSet::new(), |_| true).actions;
        assert_eq!(
            actions,
            vec![
                Action::Apply { namespace: "b".into(), name: "x".into() },
                Action::Apply { namespace: "c".into(), name: "x".into() },
                Action::Delete { namespace: "d".into(), name: "x".into() },
            ]
        );
        let converged = vec![cm("a", "x", "BUNDLE", true), cm("b", "x", "BUNDLE", true), cm("c", "x", "BUNDLE", true)];
        assert_eq!(plan(&want, &converged, &BTreeSet::new(), "BUNDLE", &BTreeSet::new(), |_| true), Plan::default());
    }

    /// `cm` with managedFields entries: (manager, whether it owns `data.root-cert.pem`).
    fn with_managers(cm: Arc<ConfigMap>, entries: &[(&str, bool)]) -> Arc<ConfigMap> {
        let mut cm = (*cm).clone();
        let entries = entries
            .iter()
            .map(|(manager, owns)| {
                let mut fields = json!({"f:metadata": {"f:labels": {"f:istio.io/config": {}}}});
                if *owns {
                    fields["f:data"] = json!({format!("f:{ROOT_CERT_KEY}"): {}});
                } else {
                    fields["f:data"] = json!({"f:other": {}});
                }
                serde_json::from_value(
                    json!({"manager": manager, "operation": "Update", "fieldsType": "FieldsV1", "fieldsV1": fields}),
                )
                .unwrap()
            })
            .collect();
        cm.metadata.managed_fields = Some(entries);
        Arc::new(cm)
    }

    #[test]
    fn a_configmap_is_contested_when_another_writer_took_the_bundle_key_from_meshroot() {
        let base = || cm("a", "x", "ISTIOD ROOT", true);
        let contested = with_managers(base(), &[(FIELD_MANAGER, false), ("pilot-discovery", true)]);
        assert_eq!(rewritten_by(&contested).as_deref(), Some("pilot-discovery"));
        // meshroot never wrote it: istiod's leftover, taken over at once.
        assert_eq!(rewritten_by(&with_managers(base(), &[("pilot-discovery", true)])), None);
        // meshroot still owns the key; the other writer changed something else.
        assert_eq!(rewritten_by(&with_managers(base(), &[(FIELD_MANAGER, true), ("kubectl", false)])), None);
        assert_eq!(rewritten_by(&base()), None, "no managedFields");
        let unnamed = with_managers(base(), &[(FIELD_MANAGER, false), ("", true)]);
        assert_eq!(rewritten_by(&unnamed).as_deref(), Some(""), "an empty manager name is shown as it is");
    }

    /// istiod's root ConfigMaps are taken over (its CA is what meshroot replaces); another
    /// tool's (istio-csr's) only when the Mesh is annotated for it, and reported until then.
    #[test]
    fn another_tools_configmap_is_left_alone_until_its_mesh_asks_for_it() {
        let now = time::OffsetDateTime::now_utc();
        let root = || crate::pki::Authority::new_root(&crate::pki::CaSpec::root(time::Duration::days(1)), now).unwrap();
        let (ours, planted) = (root(), root());
        let bundle = ours.certificate_pem();
        let key = ("apps".to_string(), "x".to_string());
        let want: BTreeSet<ConfigMapKey> = [key.clone()].into();
        let istio_csr = with_managers(cm("apps", "x", bundle, false), &[("cert-manager-istio-csr", true)]);
        assert_eq!(foreign_writer(&istio_csr).as_deref(), Some("cert-manager-istio-csr"));
        let istiods = with_managers(cm("apps", "x", "THEIRS", false), &[(ISTIOD_FIELD_MANAGER, true)]);
        assert_eq!(foreign_writer(&istiods), None, "istiod's leftover");
        let mine = with_managers(cm("apps", "x", "OLD", true), &[(FIELD_MANAGER, true)]);
        assert_eq!(foreign_writer(&mine), None);
        // Written by meshroot before, rewritten since by the other tool: a contest, not foreign.
        let contested = with_managers(cm("apps", "x", "THEIRS", false), &[(FIELD_MANAGER, false), ("kubectl", true)]);
        assert_eq!(foreign_writer(&contested), None);

        // istio-csr's, holding a root meshroot trusts too (the migration's step 1): left alone.
        let held = plan(&want, std::slice::from_ref(&istio_csr), &BTreeSet::new(), bundle, &BTreeSet::new(), |_| true);
        assert!(held.actions.is_empty(), "left alone: {held:?}");
        assert_eq!(held.foreign, vec![Contest { key: key.clone(), writer: "cert-manager-istio-csr".into() }]);
        let handed_over = plan(&want, std::slice::from_ref(&istio_csr), &BTreeSet::new(), bundle, &want, |_| true);
        assert_eq!(handed_over.actions, vec![Action::Apply { namespace: "apps".into(), name: "x".into() }]);
        assert!(handed_over.foreign.is_empty());
        let taken = plan(&want, std::slice::from_ref(&istiods), &BTreeSet::new(), bundle, &BTreeSet::new(), |_| true);
        assert_eq!(taken.actions.len(), 1, "istiod's is taken over without asking");
        // One that trusts a root meshroot does not (planted by a namespace's owner) is corrected
        // at once, whoever wrote it.
        let both = [ours.certificate_pem(), planted.certificate_pem()].concat();
        for data in [planted.certificate_pem(), both.as_str(), "not PEM"] {
            let planted_cm = with_managers(cm("apps", "x", data, false), &[("kubectl-create", true)]);
            let corrected =
                plan(&want, std::slice::from_ref(&planted_cm), &BTreeSet::new(), bundle, &BTreeSet::new(), |_| true);
            assert_eq!(corrected.actions.len(), 1, "{data}");
            assert!(corrected.foreign.is_empty());
        }
    }

    #[test]
    fn a_contested_configmap_is_rewritten_only_when_its_turn_comes() {
        let want: BTreeSet<ConfigMapKey> =
            [("a", "x"), ("b", "x")].iter().map(|(n, c)| (n.to_string(), c.to_string())).collect();
        let observed = vec![
            with_managers(cm("a", "x", "ISTIOD ROOT", true), &[(FIELD_MANAGER, false), ("pilot-discovery", true)]),
            cm("b", "x", "OLD", true),
        ];
        let held = plan(&want, &observed, &BTreeSet::new(), "BUNDLE", &BTreeSet::new(), |_| false);
        let contest = Contest { key: ("a".into(), "x".into()), writer: "pilot-discovery".into() };
        assert_eq!(held.contested, vec![contest.clone()]);
        assert_eq!(
            held.actions,
            vec![Action::Apply { namespace: "b".into(), name: "x".into() }],
            "only the uncontested drift"
        );
        let due = plan(&want, &observed, &BTreeSet::new(), "BUNDLE", &BTreeSet::new(), |key| key.0 == "a");
        assert_eq!(due.contested, vec![contest]);
        assert_eq!(
            due.actions,
            vec![
                Action::Apply { namespace: "a".into(), name: "x".into() },
                Action::Apply { namespace: "b".into(), name: "x".into() },
            ]
        );
        // Once it holds the bundle again, it is no longer contested, whoever wrote it.
        let restored =
            with_managers(cm("a", "x", "BUNDLE", true), &[(FIELD_MANAGER, false), ("pilot-discovery", true)]);
        assert_eq!(
            plan(
                &want,
                &[restored, cm("b", "x", "BUNDLE", true)],
                &BTreeSet::new(),
                "BUNDLE",
                &BTreeSet::new(),
                |_| false
            ),
            Plan::default()
        );
    }
}
