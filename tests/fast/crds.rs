//! `crds/` is generated from the Rust types and must not drift; the CRDs
//! are served by the fake API and their defaults are what users get.

use fake_apiserver::FakeApi;
use kube::api::{Api, Patch, PatchParams, PostParams};
use meshroot::api::{Mesh, MeshMode};
use serde_json::json;
use std::path::Path;

#[test]
fn crds_directory_matches_the_rust_types() {
    check_generated_crds("crds");
}

#[test]
fn the_charts_crds_are_the_same_generated_files() {
    check_generated_crds("charts/meshroot/crds");
}

fn check_generated_crds(relative: &str) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    let mut expected = Vec::new();
    for (file, crd) in meshroot::api::crds() {
        let want = meshroot::api::crd_yaml(&crd).unwrap();
        let have = std::fs::read_to_string(dir.join(&file)).unwrap_or_default();
        assert!(have == want, "{relative}/{file} is stale: run `cargo run --bin meshroot -- crds --out {relative}`");
        expected.push(file);
    }
    let mut present: Vec<String> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    present.sort();
    expected.sort();
    assert_eq!(present, expected, "{relative}/ holds files no type generates");
}

#[test]
fn a_minimal_mesh_gets_the_documented_defaults() {
    let yaml = "apiVersion: meshroot.io/v1alpha1\nkind: Mesh\nmetadata:\n  name: default\nspec:\n  trustDomain: cluster.local\n  istiod:\n    namespace: istio-system\n";
    let mesh: Mesh = serde_saphyr::from_str(yaml).unwrap();
    assert_eq!(mesh.spec.mode, MeshMode::External);
    assert_eq!(mesh.spec.istiod.service_account, "istiod");
    assert_eq!(mesh.spec.intermediate.duration, "8760h");
    assert_eq!(mesh.spec.workload_certificates.default_ttl, "24h");
    assert_eq!(mesh.spec.workload_certificates.max_ttl, "2160h");
    assert_eq!(mesh.spec.root_config_map_name, "istio-ca-root-cert");
    let plugin: Mesh = serde_json::from_value(json!({
        "apiVersion": "meshroot.io/v1alpha1", "kind": "Mesh", "metadata": {"name": "gateway"},
        "spec": {"trustDomain": "cluster.local", "mode": "PluginCA", "istiod": {"namespace": "openshift-ingress"}}
    }))
    .unwrap();
    assert_eq!(plugin.spec.mode, MeshMode::PluginCa);
    assert!(
        serde_json::from_value::<Mesh>(json!({
            "apiVersion": "meshroot.io/v1alpha1", "kind": "Mesh", "metadata": {"name": "x"},
            "spec": {"trustDomain": "cluster.local", "mode": "Sidecar", "istiod": {"namespace": "a"}}
        }))
        .is_err()
    );
}

#[tokio::test]
async fn meshes_are_cluster_scoped_with_a_status_subresource() {
    let fake = FakeApi::new();
    let meshes: Api<Mesh> = Api::all(fake.client());
    let mesh: Mesh = serde_json::from_value(json!({
        "apiVersion": "meshroot.io/v1alpha1", "kind": "Mesh", "metadata": {"name": "default"},
        "spec": {"trustDomain": "cluster.local", "istiod": {"namespace": "istio-system"}}
    }))
    .unwrap();
    let created = meshes.create(&PostParams::default(), &mesh).await.unwrap();
    assert!(created.metadata.namespace.is_none());
    let patched = meshes
        .patch_status(
            "default",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"observedGeneration": 1, "namespaces": 3}})),
        )
        .await
        .unwrap();
    assert_eq!(patched.status.unwrap().namespaces, Some(3));
}

#[test]
fn the_approval_rbac_names_both_issuer_kinds_by_their_signer_names() {
    use kube::Resource;
    use meshroot::api::{ClusterIssuer, Issuer};
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/cert-manager-approval.yaml"))
        .unwrap();
    let role: serde_json::Value = serde_saphyr::from_str(text.split("\n---\n").next().unwrap()).unwrap();
    assert_eq!(role["kind"], "ClusterRole");
    let rule = &role["rules"][0];
    assert_eq!(rule["apiGroups"], json!(["cert-manager.io"]));
    assert_eq!(rule["resources"], json!(["signers"]));
    assert_eq!(rule["verbs"], json!(["approve"]));
    // cert-manager's webhook checks `<plural>.<group>/<name>` for a ClusterIssuer,
    // so the names follow the CRD; never `/*`, which would auto-approve issuers
    // created later.
    let issuer = format!("{}.{}/", Issuer::plural(&()), Issuer::group(&()));
    let cluster = format!("{}.{}/", ClusterIssuer::plural(&()), ClusterIssuer::group(&()));
    let names: Vec<&str> = rule["resourceNames"].as_array().unwrap().iter().map(|n| n.as_str().unwrap()).collect();
    assert!(!names.is_empty());
    for name in names {
        // Namespaced Issuers' policies are their tenants' own: never auto-approved.
        assert!(name.starts_with(&cluster) && !name.starts_with(&issuer), "{name}");
        assert!(!name.ends_with("/*"), "{name}: auto-approval must be scoped to named issuers");
    }
}
