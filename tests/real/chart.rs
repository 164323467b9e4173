//! meshroot installed as the chart installs it, minus the Deployment (the
//! replicas run in process or as the compiled binary): its namespaces, its
//! CRDs and cert-manager's, and the chart's ServiceAccount, RBAC, Meshes and
//! Issuers (the OpenShift values: an External mesh over `istio-injection:
//! enabled` namespaces, a PluginCA mesh in openshift-ingress).

use crate::cluster::{Cluster, cert_manager_crds};
use crate::support::helm;
use serde_json::{Value, json};
use std::path::Path;

/// meshroot's namespace (the chart's release namespace).
pub const NS: &str = "meshroot";
/// The chart's ServiceAccount for meshroot.
pub const SERVICE_ACCOUNT: &str = "mr-meshroot";
/// The root Secret (the chart's default).
pub const ROOT_SECRET: &str = "meshroot-root-ca";

/// The chart's objects meshroot needs from the cluster: its ServiceAccount,
/// RBAC, Meshes and Issuers (not its Deployment: the replicas run in process).
fn chart_objects() -> Vec<Value> {
    let docs = helm::template(&["-f", helm::openshift_values().to_str().unwrap()]).unwrap();
    let kinds = [
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Mesh",
        "Issuer",
        "ClusterIssuer",
    ];
    docs.into_iter().filter(|d| d["kind"].as_str().is_some_and(|k| kinds.contains(&k))).collect()
}

/// Creates the namespaces and applies the CRDs and the chart's objects.
pub async fn install(cluster: &Cluster) {
    for (ns, labels) in [
        (NS, json!({})),
        ("istio-system", json!({})),
        ("openshift-ingress", json!({})),
        ("bookinfo", json!({"istio-injection": "enabled"})),
    ] {
        cluster.namespace(ns, labels).await;
    }
    cluster.apply_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("crds")).await;
    cluster.apply_dir(&cert_manager_crds()).await;
    cluster.wait_for_crds().await;
    for object in chart_objects() {
        cluster.apply(&object).await;
    }
}

/// `serve`'s options for an in-process replica `pod` of this install (the
/// chart's root Secret, resyncing every second; the issuers off unless a test turns them on).
pub fn serve_options(pod: &str) -> meshroot::serve::ServeOptions {
    meshroot::serve::ServeOptions { root_secret: ROOT_SECRET.into(), ..crate::support::replica::options(pod) }
}

/// meshroot started in process as the chart's ServiceAccount, on a token from
/// the TokenRequest API (never an admin credential).
pub async fn serve(cluster: &Cluster, options: meshroot::serve::ServeOptions) -> meshroot::serve::Server {
    let token = cluster.token(NS, SERVICE_ACCOUNT, &[], None).await;
    let client = cluster.client_with_token(&token).await;
    meshroot::serve::start(client, options).await.unwrap()
}
