//! Migrating from istio-csr (docs/migrating-from-istio-csr.md) against a real API server: what
//! istio-csr leaves in a cluster (its `istio-ca-root-cert` ConfigMaps, written under its own
//! field manager, and cert-manager's `istiod-tls` Secret) is not meshroot's, so meshroot leaves
//! it alone and says why, until an administrator hands each over by annotation. The tier has
//! no istio-csr (the Go module proxy refuses its module: tests/peers/README.md): the test
//! writes those objects as istio-csr and cert-manager do, with their field managers and
//! annotations, which is all meshroot looks at. meshroot signs under istio-csr's root with an
//! intermediate imported as a chain, whose root's key it never sees.

use crate::chart::{self, NS, ROOT_SECRET};
use crate::cluster::{Cluster, Options};
use crate::serve::{condition, mesh_api, secret, secret_text};
use crate::support::eventually_async;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, Patch, PatchParams};
use meshroot::pki::{Authority, CaSpec, KeyAlgorithm, PrivateKey, TrustBundle, pem};
use serde_json::json;
use std::time::Duration;

/// istio-csr's ConfigMap controller's field manager (controller-runtime's default: its binary).
const ISTIO_CSR: &str = "cert-manager-istio-csr";

async fn root_cert(cluster: &Cluster, namespace: &str) -> Option<String> {
    let cm =
        Api::<ConfigMap>::namespaced(cluster.admin.clone(), namespace).get_opt("istio-ca-root-cert").await.ok()??;
    cm.data?.get("root-cert.pem").cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_csrs_objects_are_taken_over_only_when_handed_over() {
    let cluster = Cluster::start(Options::default()).await;
    chart::install(&cluster).await;
    let now = time::OffsetDateTime::now_utc();
    // What istio-csr distributed: its issuer's root, in every mesh namespace. Its key stays
    // elsewhere (Vault, say); meshroot gets an intermediate under it, imported as a chain
    // (docs/root-ca.md), so workloads keep the root they trust.
    let theirs = Authority::new_root(&CaSpec::root(time::Duration::days(365)), now).unwrap();
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name.push(rcgen::DnType::CommonName, "Vault intermediate for meshroot");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(1));
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + time::Duration::days(90);
    let imported = theirs.sign(&params, &key.spki_der()).unwrap();
    let root_secret = json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": ROOT_SECRET},
        "stringData": {"tls.crt": pem::encode_certificate(&imported), "tls.key": key.to_pem().to_string(),
            "ca.crt": theirs.certificate_pem()}});
    Api::<Secret>::namespaced(cluster.admin.clone(), NS)
        .patch(ROOT_SECRET, &PatchParams::apply("admin"), &Patch::Apply(root_secret))
        .await
        .unwrap();
    for namespace in ["istio-system", "bookinfo"] {
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "istio-ca-root-cert", "labels": {"istio.io/config": "true"}},
            "data": {"root-cert.pem": theirs.certificate_pem()}});
        Api::<ConfigMap>::namespaced(cluster.admin.clone(), namespace)
            .patch("istio-ca-root-cert", &PatchParams::apply(ISTIO_CSR), &Patch::Apply(cm))
            .await
            .unwrap();
    }
    // istiod's serving certificate from istio-csr's cert-manager Certificate `istiod`.
    let istiod_tls = json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": "istiod-tls", "annotations": {"cert-manager.io/certificate-name": "istiod"}},
        "stringData": {"tls.crt": theirs.certificate_pem(), "tls.key": "istio-csr's key", "ca.crt": theirs.certificate_pem()}});
    let secrets = Api::<Secret>::namespaced(cluster.admin.clone(), "istio-system");
    secrets
        .patch("istiod-tls", &PatchParams::apply("cert-manager-certificates-issuing"), &Patch::Apply(istiod_tls))
        .await
        .unwrap();

    let _server = chart::serve(&cluster, chart::serve_options("meshroot-0")).await;
    let meshes = mesh_api(&cluster.admin);
    let mesh = async || serde_json::to_value(meshes.get("service-mesh").await.ok()?).ok();
    // Left alone, and the Mesh says so and what to do.
    let held = eventually_async("the Mesh reporting istio-csr's ConfigMaps", async || {
        let m = mesh().await?;
        let c = condition(&m, "RootConfigMapsHeldByOthers")?;
        (c["status"] == "True").then(|| c["message"].as_str().unwrap_or_default().to_string())
    })
    .await;
    assert!(held.contains(ISTIO_CSR) && held.contains("meshroot.io/adopt-root-configmaps=true"), "{held}");
    let refused = eventually_async("the Mesh refusing istio-csr's istiod-tls", async || {
        let m = mesh().await?;
        let c = condition(&m, "Ready")?;
        let message = c["message"].as_str().unwrap_or_default();
        (c["status"] == "False" && message.contains("istiod-tls")).then(|| message.to_string())
    })
    .await;
    assert!(refused.contains("meshroot.io/adopt=true"), "{refused}");
    // Several resyncs (1 s here) later, still istio-csr's.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for namespace in ["istio-system", "bookinfo"] {
        assert_eq!(root_cert(&cluster, namespace).await.as_deref(), Some(theirs.certificate_pem()), "{namespace}");
    }
    assert_eq!(
        secret_text(&secret(&cluster, "istio-system", "istiod-tls").await.unwrap(), "tls.key").as_deref(),
        Some("istio-csr's key")
    );

    // The hand-over, as the guide does it (istio-csr's writers stopped first).
    let annotate = json!({"metadata": {"annotations": {"meshroot.io/adopt-root-configmaps": "true"}}});
    meshes.patch("service-mesh", &PatchParams::default(), &Patch::Merge(annotate)).await.unwrap();
    let annotate = json!({"metadata": {"annotations": {"meshroot.io/adopt": "true"}}});
    secrets.patch("istiod-tls", &PatchParams::default(), &Patch::Merge(annotate)).await.unwrap();

    // meshroot's bundle is their root alone, now written by meshroot.
    for namespace in ["istio-system", "bookinfo"] {
        eventually_async(&format!("{namespace}'s ConfigMap written by meshroot"), async || {
            let api = Api::<ConfigMap>::namespaced(cluster.admin.clone(), namespace);
            let cm = api.get("istio-ca-root-cert").await.ok()?;
            meshroot::k8s::is_managed(cm.metadata.labels.as_ref()).then_some(())
        })
        .await;
        assert_eq!(root_cert(&cluster, namespace).await.as_deref(), Some(theirs.certificate_pem()), "{namespace}");
    }
    let adopted = eventually_async("istiod-tls issued by meshroot", async || {
        let s = secret(&cluster, "istio-system", "istiod-tls").await?;
        meshroot::k8s::is_managed(s.metadata.labels.as_ref()).then_some(s)
    })
    .await;
    assert!(!adopted.metadata.annotations.as_ref().is_some_and(|a| a.contains_key("cert-manager.io/certificate-name")));
    let chain = pem::decode_certificates(secret_text(&adopted, "tls.crt").unwrap().as_bytes(), 1 << 20).unwrap();
    assert_eq!(chain.last(), Some(&imported), "through the imported intermediate");
    let root = TrustBundle::from_pem(theirs.certificate_pem().as_bytes()).unwrap();
    root.verify_server(&chain[0], &chain[1..], time::OffsetDateTime::now_utc()).expect("istiod-tls under their root");
    eventually_async("the Mesh Ready, holding every ConfigMap", async || {
        let m = mesh().await?;
        let ready = condition(&m, "Ready")?["status"] == "True";
        (ready && condition(&m, "RootConfigMapsHeldByOthers")?["status"] == "False").then_some(())
    })
    .await;
}
