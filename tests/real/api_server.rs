//! The refusals the fake API server models (crates/fake-apiserver,
//! `validation`), checked against a real kube-apiserver, and meshroot's own
//! writes that a real server refused before they were fixed.

use crate::cluster::{Cluster, Options};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use meshroot::cmd::root::{RootAction, apply, generate};
use meshroot::pki::{Authority, CaSpec, KeyAlgorithm};
use serde_json::json;
use std::path::Path;

fn code(e: kube::Error) -> u16 {
    match e {
        kube::Error::Api(s) => s.code,
        other => panic!("expected an API error, got {other}"),
    }
}

#[tokio::test]
async fn the_fakes_refusals_are_the_real_servers() {
    let cluster = Cluster::start(Options::default()).await;
    cluster.namespace("ns1", json!({})).await;
    cluster.apply_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("crds")).await;
    cluster.wait_for_crds().await;
    let pp = PostParams::default();
    let cms: Api<ConfigMap> = Api::namespaced(cluster.admin.clone(), "ns1");
    let cm = |name: &str, labels: serde_json::Value| -> ConfigMap {
        serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap()
    };

    for labels in [json!({"k": "v".repeat(64)}), json!({"k": "-v"}), json!({"bad key": "v"})] {
        assert_eq!(code(cms.create(&pp, &cm("labelled", labels.clone())).await.unwrap_err()), 422, "{labels}");
    }
    cms.create(&pp, &cm("labelled", json!({"example.com/k": "v".repeat(63), "empty": ""}))).await.unwrap();

    let secrets: Api<Secret> = Api::namespaced(cluster.admin.clone(), "ns1");
    let tls = |data: serde_json::Value| -> Secret {
        serde_json::from_value(json!({"metadata": {"name": "tls"}, "type": "kubernetes.io/tls", "data": data})).unwrap()
    };
    assert_eq!(code(secrets.create(&pp, &tls(json!({"tls.crt": "Yw=="}))).await.unwrap_err()), 422);
    let created = secrets.create(&pp, &tls(json!({"tls.crt": "Yw==", "tls.key": ""}))).await.unwrap();
    let mut retyped = created.clone();
    retyped.type_ = Some("Opaque".into());
    assert_eq!(code(secrets.replace("tls", &pp, &retyped).await.unwrap_err()), 422);

    let status_write = cms.get("labelled").await.unwrap();
    assert_eq!(code(cms.replace_status("labelled", &pp, &status_write).await.unwrap_err()), 404);

    let gvk = GroupVersionKind::gvk("meshroot.io", "v1alpha1", "Mesh");
    let meshes: Api<DynamicObject> = Api::all_with(cluster.admin.clone(), &ApiResource::from_gvk(&gvk));
    let mesh: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "meshroot.io/v1alpha1", "kind": "Mesh", "metadata": {"name": "m"},
        "spec": {"trustDomain": "cluster.local", "istiod": {"namespace": "istio-system"}},
    }))
    .unwrap();
    let mut mesh = meshes.create(&pp, &mesh).await.unwrap();
    mesh.metadata.resource_version = None;
    assert_eq!(code(meshes.replace("m", &pp, &mesh).await.unwrap_err()), 422);
    let strategic = Patch::Strategic(json!({"metadata": {"labels": {"a": "b"}}}));
    assert_eq!(code(meshes.patch("m", &PatchParams::default(), &strategic).await.unwrap_err()), 415);

    let leases: Api<k8s_openapi::api::coordination::v1::Lease> = Api::namespaced(cluster.admin.clone(), "ns1");
    let lease = leases.create(&pp, &serde_json::from_value(json!({"metadata": {"name": "l"}})).unwrap()).await.unwrap();
    let mut unconditional = lease.clone();
    unconditional.metadata.resource_version = None;
    assert_eq!(code(leases.replace("l", &pp, &unconditional).await.unwrap_err()), 422);
    // A ConfigMap may be replaced unconditionally.
    let mut cm_unconditional = cms.get("labelled").await.unwrap();
    cm_unconditional.metadata.resource_version = None;
    cm_unconditional.data = Some([("k".to_string(), "v2".to_string())].into());
    cms.replace("labelled", &pp, &cm_unconditional).await.unwrap();
}

/// `meshroot root switch` without `--key` on the `kubernetes.io/tls` Secret
/// that `kubectl create secret tls` makes: accepted, the key left empty.
#[tokio::test]
async fn switching_to_an_offline_root_is_accepted() {
    let cluster = Cluster::start(Options::default()).await;
    cluster.namespace("meshroot", json!({})).await;
    let now = time::OffsetDateTime::now_utc();
    let old = Authority::new_root(&CaSpec::root(time::Duration::days(30)), now).unwrap();
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "meshroot-root-ca"},
        "type": "kubernetes.io/tls",
        "stringData": {"tls.crt": old.certificate_pem(), "tls.key": old.key().to_pem().to_string()},
    }))
    .unwrap();
    let secrets: Api<Secret> = Api::namespaced(cluster.admin.clone(), "meshroot");
    secrets.create(&PostParams::default(), &secret).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("next");
    generate(&out, KeyAlgorithm::EcdsaP256, time::Duration::days(3650)).unwrap();
    let cert = out.join("root-cert.pem");
    let client = || cluster.admin.clone();
    apply(client(), "meshroot", "meshroot-root-ca", RootAction::Add { cert: cert.clone() }).await.unwrap();
    let said = apply(client(), "meshroot", "meshroot-root-ca", RootAction::Switch { cert, key: None }).await.unwrap();
    assert!(said.contains("(offline)"), "{said}");
    let stored = secrets.get("meshroot-root-ca").await.unwrap();
    assert_eq!(stored.type_.as_deref(), Some("kubernetes.io/tls"));
    assert_eq!(stored.data.unwrap().get("tls.key").map(|v| v.0.len()), Some(0));
}
