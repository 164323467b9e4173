//! Root distribution: the `istio-ca-root-cert` ConfigMap (per-mesh name,
//! key `root-cert.pem`, label `istio.io/config=true`) in every namespace an
//! External mesh selects, plus istiod's and the trusted node accounts'
//! (ztunnel's) namespaces. Its content is the trust bundle.
//!
//! Planning is pure: desired state against what the watch shows, so a
//! re-sync with nothing changed writes nothing. Edited or deleted ConfigMaps
//! are restored; a namespace that leaves the mesh loses the ConfigMap only
//! if meshroot owns it.

use crate::api::selector;
use crate::api::{Mesh, MeshMode};
use crate::k8s::{FIELD_MANAGER, MANAGED_BY_LABEL, MANAGED_BY_VALUE, error_summary, is_managed};
use crate::pki::TrustBundle;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// The ConfigMap key holding the bundle (PEM).
pub const ROOT_CERT_KEY: &str = "root-cert.pem";
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

/// Which (namespace, ConfigMap name) pairs should hold the bundle, and how
/// many namespaces each mesh covers.
pub fn desired(
    meshes: &[Arc<Mesh>],
    namespaces: &[Arc<Namespace>],
) -> (BTreeSet<(String, String)>, BTreeMap<String, u32>) {
    let live: Vec<&Namespace> = namespaces
        .iter()
        .map(|n| n.as_ref())
        .filter(|n| n.metadata.deletion_timestamp.is_none())
        .filter(|n| n.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Terminating"))
        .collect();
    let existing: BTreeSet<&str> = live.iter().filter_map(|n| n.metadata.name.as_deref()).collect();
    let empty = BTreeMap::new();
    let mut want = BTreeSet::new();
    let mut counts = BTreeMap::new();
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
        counts.insert(mesh_name, targets.len() as u32);
        want.extend(targets.into_iter().map(|ns| (ns, spec.root_config_map_name.clone())));
    }
    (want, counts)
}

fn holds_bundle(cm: &ConfigMap, bundle_pem: &str) -> bool {
    let labels = cm.metadata.labels.as_ref();
    cm.data.as_ref().and_then(|d| d.get(ROOT_CERT_KEY)).is_some_and(|v| v == bundle_pem)
        && labels.and_then(|l| l.get(ISTIO_CONFIG_LABEL)).is_some_and(|v| v == "true")
        && is_managed(labels)
}

/// The writes that bring `observed` to `want`: nothing when they agree.
pub fn plan(want: &BTreeSet<(String, String)>, observed: &[Arc<ConfigMap>], bundle_pem: &str) -> Vec<Action> {
    let observed: BTreeMap<(String, String), &ConfigMap> = observed
        .iter()
        .filter_map(|cm| Some(((cm.metadata.namespace.clone()?, cm.metadata.name.clone()?), cm.as_ref())))
        .collect();
    let mut actions = Vec::new();
    for (namespace, name) in want {
        let current = observed.get(&(namespace.clone(), name.clone()));
        if !current.is_some_and(|cm| holds_bundle(cm, bundle_pem)) {
            actions.push(Action::Apply { namespace: namespace.clone(), name: name.clone() });
        }
    }
    for ((namespace, name), cm) in &observed {
        let unwanted = !want.contains(&(namespace.clone(), name.clone()));
        if unwanted && is_managed(cm.metadata.labels.as_ref()) && cm.metadata.deletion_timestamp.is_none() {
            actions.push(Action::Delete { namespace: namespace.clone(), name: name.clone() });
        }
    }
    actions
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

/// How many namespaces each mesh covers, for the Mesh status.
pub type Coverage = Arc<std::sync::Mutex<BTreeMap<String, u32>>>;

/// Keeps the root ConfigMaps converged until the task is dropped: on every
/// change to Meshes, namespaces, root ConfigMaps or the bundle, and every
/// `resync` besides.
pub fn spawn(
    client: kube::Client,
    mut bundle: tokio::sync::watch::Receiver<Arc<TrustBundle>>,
    resync: std::time::Duration,
    coverage: Coverage,
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
            let (want, counts) = desired(&meshes.state(), &namespaces.state());
            if let Ok(mut c) = coverage.lock() {
                *c = counts;
            }
            let actions = plan(&want, &configmaps.state(), current.pem());
            if actions.is_empty() {
                continue;
            }
            tracing::info!(writes = actions.len(), "converging root ConfigMaps");
            let done = execute(&client, &actions, &current).await;
            // Read our own writes before deciding again.
            let started = tokio::time::Instant::now();
            let deadline = started.checked_add(CACHE_CATCH_UP).unwrap_or(started);
            while !caught_up(&configmaps, &done.applied, current.pem()) && tokio::time::Instant::now() < deadline {
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
        let (want, counts) = desired(&meshes, &namespaces);
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
        let (want, _) = desired(&all, &namespaces);
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
        ];
        let actions = plan(&want, &observed, "BUNDLE");
        assert_eq!(
            actions,
            vec![
                Action::Apply { namespace: "b".into(), name: "x".into() },
                Action::Apply { namespace: "c".into(), name: "x".into() },
                Action::Delete { namespace: "d".into(), name: "x".into() },
            ]
        );
        let converged = vec![cm("a", "x", "BUNDLE", true), cm("b", "x", "BUNDLE", true), cm("c", "x", "BUNDLE", true)];
        assert!(plan(&want, &converged, "BUNDLE").is_empty());
    }
}
