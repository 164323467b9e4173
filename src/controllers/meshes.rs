//! The leader's per-mesh reconciler: the intermediate (External: in
//! meshroot's namespace, then istiod's serving certificate; PluginCA:
//! istiod's `cacerts`), and the Mesh status. Runs on every Mesh change, root
//! change, and every `resync` (renewals and drift of Secrets in istiod's
//! namespace, which it does not watch, so it needs no cluster-wide Secret access).

use super::conditions::condition;
use super::istiod_tls;
use super::root_configmaps::{ADOPT_ROOT_CONFIGMAPS, Coverage, ISTIOD_FIELD_MANAGER, MeshRoots};
use crate::api::mesh::IntermediateStatus;
use crate::api::selector;
use crate::api::{Mesh, MeshMode, MeshStatus};
use crate::k8s::error_summary;
use crate::k8s::intermediates::{IntermediatePolicy, IntermediateSecret, ensure};
pub use crate::k8s::root::RootState;
use crate::k8s::watch as kwatch;
use crate::pki::TrustBundle;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::Api;
use kube::runtime::{reflector, watcher};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;
use tokio::sync::watch;

/// Why a mesh is not ready: the reason of its `Ready` and
/// `IntermediateReady` conditions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MeshProblem {
    /// The spec cannot be used as written.
    InvalidSpec,
    /// A PluginCA mesh's `cacerts` Secret exists and is not meshroot's.
    CacertsNotOwned,
    /// The intermediate Secret holds something that does not parse or chain.
    IntermediateCorrupt,
    /// The intermediate cannot be issued or read now (no root key, the API).
    IntermediateUnavailable,
    /// istiod's serving certificate (`istiod-tls`) could not be written.
    IstiodCertificateFailed,
}

impl MeshProblem {
    /// The condition reason, as written to the Mesh status.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidSpec => "InvalidSpec",
            Self::CacertsNotOwned => "CacertsNotOwned",
            Self::IntermediateCorrupt => "IntermediateCorrupt",
            Self::IntermediateUnavailable => "IntermediateUnavailable",
            Self::IstiodCertificateFailed => "IstiodCertificateFailed",
        }
    }
}

/// What reconciling one mesh found.
#[derive(Debug, Default, PartialEq)]
pub struct Outcome {
    /// Condition reason and message when the mesh is not ready.
    pub problem: Option<(MeshProblem, String)>,
    /// The mesh's current intermediate (serial, expiry); `None` when it could not be ensured.
    pub intermediate: Option<IntermediateStatus>,
    /// A warning that does not stop the mesh (for example an intermediate
    /// that is due but cannot be renewed).
    pub warning: Option<String>,
}

/// Brings one mesh's Secrets to the desired state.
pub async fn reconcile(
    client: &kube::Client,
    namespace: &str,
    mesh: &Mesh,
    root: &RootState,
    now: OffsetDateTime,
) -> Outcome {
    let name = mesh.metadata.name.clone().unwrap_or_default();
    let spec = &mesh.spec;
    if let Err(why) = spec.validate() {
        return Outcome { problem: Some((MeshProblem::InvalidSpec, why.to_string())), ..Default::default() };
    }
    let policy = match IntermediatePolicy::from_spec(&spec.intermediate) {
        Ok(p) => p,
        Err(why) => {
            return Outcome { problem: Some((MeshProblem::InvalidSpec, why.to_string())), ..Default::default() };
        }
    };
    let (api, target) = match spec.mode {
        MeshMode::External => {
            (Api::<Secret>::namespaced(client.clone(), namespace), IntermediateSecret::external(&name))
        }
        MeshMode::PluginCa => {
            (Api::<Secret>::namespaced(client.clone(), &spec.istiod.namespace), IntermediateSecret::cacerts(&name))
        }
    };
    let ensured = match ensure(&api, &target, &policy, root.authority.as_deref(), &root.chain, &root.bundle, now).await
    {
        Ok(e) => e,
        Err(e) => {
            let reason = match e {
                crate::k8s::intermediates::IntermediateError::NotOwned(_) if spec.mode == MeshMode::PluginCa => {
                    MeshProblem::CacertsNotOwned
                }
                crate::k8s::intermediates::IntermediateError::Corrupt { .. } => MeshProblem::IntermediateCorrupt,
                _ => MeshProblem::IntermediateUnavailable,
            };
            return Outcome { problem: Some((reason, e.to_string())), ..Default::default() };
        }
    };
    let a = ensured.chain.authority();
    let intermediate =
        Some(IntermediateStatus { serial: a.serial_hex().to_string(), not_after: crate::pki::rfc3339(a.not_after()) });
    let mut outcome = Outcome { problem: None, intermediate, warning: ensured.warning };
    if spec.mode == MeshMode::External {
        let istiod_api = Api::<Secret>::namespaced(client.clone(), &spec.istiod.namespace);
        if let Err(e) = istiod_tls::ensure(&istiod_api, spec, &ensured.chain, now).await {
            outcome.problem = Some((MeshProblem::IstiodCertificateFailed, e.to_string()));
        }
    }
    outcome
}

/// Namespaces selected by more than one External mesh, per mesh.
pub fn overlaps(meshes: &[Arc<Mesh>], namespaces: &[Arc<Namespace>]) -> BTreeMap<String, String> {
    let empty = BTreeMap::new();
    let mut by_namespace: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for m in meshes.iter().filter(|m| m.spec.mode == MeshMode::External) {
        let Some(name) = m.metadata.name.clone() else { continue };
        for ns in namespaces {
            let labels = ns.metadata.labels.as_ref().unwrap_or(&empty);
            let selected = m.spec.namespace_selector.as_ref().is_none_or(|s| selector::matches(s, labels));
            if let (true, Some(ns_name)) = (selected, ns.metadata.name.clone()) {
                by_namespace.entry(ns_name).or_default().push(name.clone());
            }
        }
    }
    let mut per_mesh: BTreeMap<String, (BTreeSet<String>, BTreeSet<String>)> = BTreeMap::new();
    for (ns, owners) in by_namespace.into_iter().filter(|(_, o)| o.len() > 1) {
        for o in &owners {
            let entry = per_mesh.entry(o.clone()).or_default();
            entry.0.insert(ns.clone());
            entry.1.extend(owners.iter().filter(|x| *x != o).cloned());
        }
    }
    per_mesh
        .into_iter()
        .map(|(mesh, (nss, others))| {
            let shown: Vec<String> = nss.iter().take(5).cloned().collect();
            let more = if nss.len() > 5 { format!(" and {} more", nss.len().saturating_sub(5)) } else { String::new() };
            let others: Vec<String> = others.into_iter().collect();
            (
                mesh,
                format!(
                    "namespaces {}{more} are also selected by {}; their requests are refused",
                    shown.join(", "),
                    others.join(", ")
                ),
            )
        })
        .collect()
}

/// The `RootConfigMapsContested` reason and message: who else writes the
/// mesh's root ConfigMap, where, and what to do about it.
fn contest_message(mesh: &Mesh, contested: &[super::root_configmaps::Contest]) -> (&'static str, String) {
    let name = &mesh.spec.root_config_map_name;
    if contested.is_empty() {
        return ("NotContested", format!("no other writer changes {name}"));
    }
    let (namespaces, writers) = where_and_who(contested);
    let istiod = contested.iter().any(|c| c.writer == ISTIOD_FIELD_MANAGER);
    let advice = if istiod {
        format!(
            " {ISTIOD_FIELD_MANAGER} is istiod: its CA server is still on; set ENABLE_CA_SERVER=false on istiod in {}",
            mesh.spec.istiod.namespace
        )
    } else {
        " Stop the other writer, or give this mesh another rootConfigMapName".to_string()
    };
    (
        "RewrittenByAnotherWriter",
        format!(
            "{name} in namespaces {namespaces} is rewritten by field manager {writers}; meshroot rewrites it once a \
             resync instead of at once.{advice}"
        ),
    )
}

/// The `RootConfigMapsHeldByOthers` reason and message: which root ConfigMaps another tool wrote,
/// which meshroot leaves alone, and how to hand them over.
fn foreign_message(mesh: &Mesh, foreign: &[super::root_configmaps::Contest]) -> (&'static str, String) {
    let name = &mesh.spec.root_config_map_name;
    if foreign.is_empty() {
        return ("NoneHeld", format!("no {name} of this mesh is another tool's"));
    }
    let (namespaces, writers) = where_and_who(foreign);
    (
        "WrittenByAnotherTool",
        format!(
            "{name} in namespaces {namespaces} was written by field manager {writers}, not meshroot, and is left \
             alone. Stop that writer (istio-csr: app.controller.configmapNamespaceSelector matching no namespace), \
             then annotate this Mesh {ADOPT_ROOT_CONFIGMAPS}=true"
        ),
    )
}

/// The namespaces of some root ConfigMaps and their other writers, for a condition's message:
/// a few of each, the rest counted. Field manager names are the writers' own choice: quoted
/// and cut short.
fn where_and_who(configmaps: &[super::root_configmaps::Contest]) -> (String, String) {
    const SHOWN: usize = 5;
    const WRITERS_SHOWN: usize = 3;
    let namespaces: Vec<&str> = configmaps.iter().take(SHOWN).map(|c| c.key.0.as_str()).collect();
    let more = configmaps.len().saturating_sub(SHOWN);
    let more = if more > 0 { format!(" and {more} more") } else { String::new() };
    let writers: BTreeSet<&str> = configmaps.iter().map(|c| c.writer.as_str()).collect();
    let mut named: Vec<String> =
        writers.iter().take(WRITERS_SHOWN).map(|w| format!("{:?}", w.chars().take(64).collect::<String>())).collect();
    if writers.len() > WRITERS_SHOWN {
        named.push(format!("{} more", writers.len().saturating_sub(WRITERS_SHOWN)));
    }
    (format!("{}{more}", namespaces.join(", ")), named.join(", "))
}

/// The mesh's trusted node accounts whose namespace does not exist. Accounts are trusted by
/// name, so whoever may create that namespace could create the account in it and then act as the
/// node agent of every workload of the mesh.
pub fn node_accounts_without_namespace(mesh: &Mesh, namespaces: &[Arc<Namespace>]) -> Vec<String> {
    let present: BTreeSet<&str> = namespaces.iter().filter_map(|n| n.metadata.name.as_deref()).collect();
    mesh.spec
        .trusted_node_accounts
        .iter()
        .filter(|account| account.split_once('/').is_none_or(|(ns, _)| !present.contains(ns)))
        .cloned()
        .collect()
}

/// The `NodeAccountNamespacesMissing` condition's reason and message.
fn node_accounts_message(missing: &[String]) -> (&'static str, String) {
    if missing.is_empty() {
        return (
            "Present",
            "every trusted node account's namespace exists; accounts are trusted by name, so whoever may create service accounts there can act as a node agent".to_string(),
        );
    }
    (
        "Missing",
        format!(
            "trusted node accounts in namespaces that do not exist: {}; whoever can create such a namespace can act as a node agent for this mesh's workloads: create the namespaces or remove the accounts from spec.trustedNodeAccounts",
            missing.join(", ")
        ),
    )
}

/// The status for a mesh from its outcome; `missing_accounts` from
/// [`node_accounts_without_namespace`].
pub fn status(
    mesh: &Mesh,
    outcome: &Outcome,
    overlap: Option<&String>,
    bundle: &TrustBundle,
    roots: Option<&MeshRoots>,
    missing_accounts: &[String],
) -> MeshStatus {
    let generation = mesh.metadata.generation;
    let previous = mesh.status.as_ref().map(|s| s.conditions.clone()).unwrap_or_default();
    let (ready, reason, message) = match (&outcome.problem, overlap) {
        (Some((reason, why)), _) => (false, reason.as_str(), why.clone()),
        (None, Some(why)) => (false, "NamespacesOverlap", why.clone()),
        (None, None) => {
            (true, "Ready", outcome.warning.clone().unwrap_or_else(|| "the mesh's certificates are current".into()))
        }
    };
    let mut conditions = vec![condition("Ready", ready, reason, &message, generation, &previous)];
    let int_ok = outcome.intermediate.is_some();
    let (int_reason, int_msg) = match (&outcome.intermediate, &outcome.problem) {
        (Some(i), _) => ("Issued", format!("serial {} valid until {}", i.serial, i.not_after)),
        (None, Some((r, why))) => (r.as_str(), why.clone()),
        (None, None) => ("Pending", String::new()),
    };
    conditions.push(condition("IntermediateReady", int_ok, int_reason, &int_msg, generation, &previous));
    if mesh.spec.mode == MeshMode::External {
        let (reason, msg) = match overlap {
            Some(why) => ("Overlap", why.clone()),
            None => ("NoOverlap", "no namespace is selected by another mesh".to_string()),
        };
        conditions.push(condition("NamespacesOverlap", overlap.is_some(), reason, &msg, generation, &previous));
        let (reason, msg) = node_accounts_message(missing_accounts);
        let missing = !missing_accounts.is_empty();
        conditions.push(condition("NodeAccountNamespacesMissing", missing, reason, &msg, generation, &previous));
        let contested = roots.map(|r| r.contested.as_slice()).unwrap_or_default();
        let (reason, msg) = contest_message(mesh, contested);
        conditions.push(condition(
            "RootConfigMapsContested",
            !contested.is_empty(),
            reason,
            &msg,
            generation,
            &previous,
        ));
        let foreign = roots.map(|r| r.foreign.as_slice()).unwrap_or_default();
        let (reason, msg) = foreign_message(mesh, foreign);
        conditions.push(condition(
            "RootConfigMapsHeldByOthers",
            !foreign.is_empty(),
            reason,
            &msg,
            generation,
            &previous,
        ));
    }
    MeshStatus {
        observed_generation: generation,
        conditions,
        intermediate: outcome.intermediate.clone(),
        root_fingerprints: bundle.fingerprints(),
        namespaces: roots.map(|r| r.namespaces),
    }
}

/// Runs the mesh controller until the task is aborted.
pub fn spawn(
    client: kube::Client,
    namespace: String,
    mut root: watch::Receiver<RootState>,
    coverage: Coverage,
    resync: Duration,
) -> tokio::task::JoinHandle<()> {
    let (meshes, meshes_w) = reflector::store::<Mesh>();
    let (namespaces, namespaces_w) = reflector::store::<Namespace>();
    let mut changes = futures::stream::select_all([
        kwatch::changes(meshes_w, Api::<Mesh>::all(client.clone()), watcher::Config::default()),
        kwatch::changes(namespaces_w, Api::<Namespace>::all(client.clone()), watcher::Config::default()),
    ]);
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(resync);
        loop {
            tokio::select! {
                c = changes.next() => if c.is_none() { return },
                r = root.changed() => if r.is_err() { return },
                _ = ticker.tick() => {}
            }
            kwatch::settle(&mut changes, Duration::from_millis(100)).await;
            if !(kwatch::synced(&meshes) && kwatch::synced(&namespaces)) {
                continue;
            }
            let current_root = root.borrow().clone();
            let all = meshes.state();
            let present = namespaces.state();
            let overlap = overlaps(&all, &present);
            for mesh in &all {
                let Some(name) = mesh.metadata.name.clone() else { continue };
                let outcome = reconcile(&client, &namespace, mesh, &current_root, OffsetDateTime::now_utc()).await;
                if let Some((reason, why)) = &outcome.problem {
                    tracing::warn!(mesh = %name, reason = reason.as_str(), problem = %why, "mesh is not ready");
                }
                let roots = coverage.lock().ok().and_then(|c| c.get(&name).cloned());
                let missing = node_accounts_without_namespace(mesh, &present);
                let new = status(mesh, &outcome, overlap.get(&name), &current_root.bundle, roots.as_ref(), &missing);
                if mesh.status.as_ref() == Some(&new) {
                    continue;
                }
                let api: Api<Mesh> = Api::all(client.clone());
                if let Err(e) = crate::k8s::replace_status(&api, &name, &new).await {
                    tracing::warn!(mesh = %name, error = %error_summary(&e), "could not write the Mesh status");
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::root_configmaps::Contest;

    fn mesh() -> Mesh {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "meshroot.io/v1alpha1", "kind": "Mesh", "metadata": {"name": "m"},
            "spec": {"trustDomain": "cluster.local", "istiod": {"namespace": "istio-system"}},
        }))
        .unwrap()
    }

    fn contest(ns: &str, writer: &str) -> Contest {
        Contest { key: (ns.into(), "istio-ca-root-cert".into()), writer: writer.into() }
    }

    fn namespace(name: &str) -> Arc<Namespace> {
        Arc::new(Namespace {
            metadata: kube::api::ObjectMeta { name: Some(name.into()), ..Default::default() },
            ..Default::default()
        })
    }

    #[test]
    fn node_accounts_whose_namespace_is_missing_are_named() {
        let mut m = mesh();
        m.spec.trusted_node_accounts =
            vec!["istio-system/ztunnel".into(), "ghost/ztunnel".into(), "kube-system/x".into()];
        let present = [namespace("istio-system"), namespace("kube-system")];
        assert_eq!(node_accounts_without_namespace(&m, &present), ["ghost/ztunnel"]);
        assert!(
            node_accounts_without_namespace(
                &m,
                &[namespace("istio-system"), namespace("kube-system"), namespace("ghost")]
            )
            .is_empty()
        );
        assert_eq!(node_accounts_without_namespace(&m, &[]).len(), 3);
        let (reason, message) = node_accounts_message(&["ghost/ztunnel".into()]);
        assert_eq!(reason, "Missing");
        assert!(message.contains("ghost/ztunnel") && message.contains("spec.trustedNodeAccounts"), "{message}");
        assert_eq!(node_accounts_message(&[]).0, "Present");
    }

    #[test]
    fn a_contest_names_quoted_writers_and_advises_on_istiod_only_when_istiod_writes() {
        assert_eq!(contest_message(&mesh(), &[]).0, "NotContested");
        let (reason, message) = contest_message(&mesh(), &[contest("a", "pilot-discovery"), contest("b", "kubectl")]);
        assert_eq!(reason, "RewrittenByAnotherWriter");
        assert!(message.contains(r#"field manager "kubectl", "pilot-discovery""#), "{message}");
        assert!(message.contains("set ENABLE_CA_SERVER=false on istiod in istio-system"), "{message}");
        let (_, message) = contest_message(&mesh(), &[contest("a", "kubectl")]);
        assert!(!message.contains("ENABLE_CA_SERVER"), "no istiod advice for another writer: {message}");
        // A tenant chooses its field manager's name: quoted, cut at 64 characters, at most three shown.
        let long = "x\"y".repeat(100);
        let many: Vec<Contest> = ["w1", "w2", "w3", "w4", &long].iter().map(|w| contest("a", w)).collect();
        let (_, message) = contest_message(&mesh(), &many);
        assert!(message.contains("2 more"), "{message}");
        assert!(!message.contains(&long[..70]), "{message}");
        let (_, message) = contest_message(&mesh(), &[contest("a", &long)]);
        assert!(message.contains(r#"\""#) && message.len() < 400, "{message}");
    }
}
