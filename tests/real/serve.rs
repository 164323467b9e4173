//! `meshroot serve` against a real API server, as the chart installs it: its
//! ServiceAccount, the chart's rendered RBAC enforced by the real authorizer,
//! its own token (never an admin credential), the chart's Meshes and Issuers.

use crate::cluster::{Cluster, Options};
use crate::support::{eventually_async, helm};
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use meshroot::pki::TrustBundle;
use serde_json::{Value, json};
use std::time::Duration;

use crate::chart::{self, NS, ROOT_SECRET};

pub fn secret_text(secret: &Secret, key: &str) -> Option<String> {
    let value = secret.data.as_ref()?.get(key)?;
    String::from_utf8(value.0.clone()).ok().filter(|s| !s.is_empty())
}

pub async fn secret(cluster: &Cluster, ns: &str, name: &str) -> Option<Secret> {
    Api::<Secret>::namespaced(cluster.admin.clone(), ns).get_opt(name).await.ok().flatten()
}

pub fn mesh_api(client: &kube::Client) -> Api<DynamicObject> {
    Api::all_with(client.clone(), &ApiResource::from_gvk(&GroupVersionKind::gvk("meshroot.io", "v1alpha1", "Mesh")))
}

pub fn condition<'a>(obj: &'a Value, type_: &str) -> Option<&'a Value> {
    obj["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == type_)
}

fn options_for_chart() -> meshroot::serve::ServeOptions {
    meshroot::serve::ServeOptions {
        cert_manager_issuer: true,
        kubernetes_csr_signer: true,
        ..chart::serve_options("meshroot-0")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meshroot_reconciles_both_meshes_and_signs_with_only_the_charts_rbac() {
    let cluster = Cluster::start(Options::default()).await;
    chart::install(&cluster).await;
    let server = chart::serve(&cluster, options_for_chart()).await;

    // Both meshes become Ready: the External one's intermediate, istiod's
    // serving certificate and the root ConfigMaps; the PluginCA one's cacerts.
    let meshes = mesh_api(&cluster.admin);
    for name in ["service-mesh", "gateway-api"] {
        eventually_async(&format!("Mesh {name} Ready"), async || {
            let mesh = serde_json::to_value(meshes.get(name).await.ok()?).ok()?;
            (condition(&mesh, "Ready")?["status"] == "True").then_some(())
        })
        .await;
    }
    let root = secret(&cluster, NS, ROOT_SECRET).await.expect("the generated root");
    let bundle = TrustBundle::from_pem(secret_text(&root, "tls.crt").unwrap().as_bytes()).unwrap();
    let now = time::OffsetDateTime::now_utc();
    let chain = |s: &Secret, key: &str| {
        meshroot::pki::pem::decode_certificates(secret_text(s, key).unwrap().as_bytes(), 1 << 20).unwrap()
    };
    let intermediate = secret(&cluster, NS, "meshroot-intermediate-service-mesh").await.expect("the intermediate");
    let cacerts = secret(&cluster, "openshift-ingress", "cacerts").await.expect("cacerts");
    for (what, certs) in
        [("intermediate", chain(&intermediate, "tls.crt")), ("cacerts", chain(&cacerts, "ca-cert.pem"))]
    {
        assert!(meshroot::pki::authority::issued_by(&bundle.roots()[0], &certs[0]), "{what} under the root");
    }
    let istiod_tls =
        eventually_async("istiod-tls", async || secret(&cluster, "istio-system", "istiod-tls").await).await;
    let istiod_chain = chain(&istiod_tls, "tls.crt");
    bundle.verify(&istiod_chain[0], &istiod_chain[1..], now).unwrap();
    let root_cm = eventually_async("bookinfo's istio-ca-root-cert", async || {
        Api::<ConfigMap>::namespaced(cluster.admin.clone(), "bookinfo")
            .get_opt("istio-ca-root-cert")
            .await
            .ok()
            .flatten()
    })
    .await;
    assert_eq!(root_cm.data.unwrap()["root-cert.pem"], bundle.pem());

    // A workload's own identity, with a real pod-bound projected token.
    cluster.service_account("bookinfo", "reviews").await;
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "reviews-1"},
        "spec": {"nodeName": "node-1", "serviceAccountName": "reviews", "containers": [{"name": "app", "image": "reviews"}]},
    }))
    .unwrap();
    let pod =
        Api::<Pod>::namespaced(cluster.admin.clone(), "bookinfo").create(&PostParams::default(), &pod).await.unwrap();
    let uid = pod.metadata.uid.unwrap();
    let workload_token = cluster.token("bookinfo", "reviews", &["istio-ca"], Some(("reviews-1", &uid))).await;
    let identity = "spiffe://cluster.local/ns/bookinfo/sa/reviews";
    let issued = ask(&server, bundle.pem(), &workload_token, identity).await.expect("its own identity");
    let leaf = meshroot::pki::pem::decode_certificates(issued.cert_chain.concat().as_bytes(), 1 << 20).unwrap();
    bundle.verify(&leaf[0], &leaf[1..], now).unwrap();
    let refused = ask(&server, bundle.pem(), &workload_token, "spiffe://cluster.local/ns/bookinfo/sa/ratings").await;
    let refused = refused.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    assert!(refused.message().starts_with("not authorized"), "{}", refused.message());

    // A Kubernetes CSR for the chart's ClusterIssuer, from a service account
    // of openshift-ingress (the namespaces it serves), approved by a user who
    // holds `approve` on that signer (one without it is refused): meshroot
    // signs it, which the API server allows only with the chart's `sign`
    // grant on that signer.
    let router = csr_requester(&cluster).await;
    let approver = csr_approver(&cluster).await;
    let csrs: Api<CertificateSigningRequest> = Api::all(cluster.admin.clone());
    let csr = ingress_csr("shop.apps.example.com");
    Api::<CertificateSigningRequest>::all(router).create(&PostParams::default(), &csr).await.unwrap();
    let approval = Patch::Merge(json!({"status": {"conditions": [{
        "type": "Approved", "status": "True", "reason": "Test", "message": "approved by the test"}]}}));
    let unentitled = cluster.client_with_token(&cluster.token("openshift-ingress", "router", &[], None).await).await;
    let refused = Api::<CertificateSigningRequest>::all(unentitled)
        .patch_approval("shop", &PatchParams::default(), &approval)
        .await;
    assert!(
        matches!(refused, Err(kube::Error::Api(ref s)) if s.code == 403),
        "approved without the grant: {refused:?}"
    );
    Api::<CertificateSigningRequest>::all(approver)
        .patch_approval("shop", &PatchParams::default(), &approval)
        .await
        .unwrap();
    let signed = eventually_async("the Kubernetes CSR signed", async || {
        let csr = csrs.get("shop").await.ok()?;
        csr.status?.certificate.filter(|c| !c.0.is_empty())
    })
    .await;
    let chain = meshroot::pki::pem::decode_certificates(&signed.0, 1 << 20).unwrap();
    let mut path = chain.iter().chain(bundle.roots().iter().take(1)).peekable();
    while let (Some(cert), Some(issuer)) = (path.next(), path.peek()) {
        assert!(meshroot::pki::authority::issued_by(issuer, cert), "the chain breaks");
    }
    use x509_parser::prelude::FromDer as _;
    let (_, leaf) = x509_parser::certificate::X509Certificate::from_der(&chain[0]).unwrap();
    let sans = leaf.subject_alternative_name().unwrap().unwrap();
    use x509_parser::extensions::GeneralName;
    assert!(matches!(sans.value.general_names.as_slice(), [GeneralName::DNSName("shop.apps.example.com")]), "{sans:?}");

    // A cert-manager CertificateRequest for the chart's namespaced Issuer,
    // approved (as cert-manager's approver would, through /status): meshroot
    // signs it with a server-side apply of its own conditions, which the
    // chart's `patch` on certificaterequests/status allows, and leaves the
    // approver's condition as it was.
    let csr_pem = dns_csr_pem("gw.apps.example.com");
    let gvk = GroupVersionKind::gvk("cert-manager.io", "v1", "CertificateRequest");
    let requests: Api<DynamicObject> =
        Api::namespaced_with(cluster.admin.clone(), "openshift-ingress", &ApiResource::from_gvk(&gvk));
    let request: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "cert-manager.io/v1", "kind": "CertificateRequest", "metadata": {"name": "gw"},
        "spec": {
            "request": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &csr_pem),
            "issuerRef": {"group": "meshroot.io", "kind": "Issuer", "name": "gateways"},
            "usages": ["digital signature", "key encipherment", "server auth"],
        },
    }))
    .unwrap();
    requests.create(&PostParams::default(), &request).await.unwrap();
    let approved = json!({"type": "Approved", "status": "True", "reason": "cert-manager.io",
        "message": "approved by the test", "lastTransitionTime": "2026-01-01T00:00:00Z"});
    let approval = Patch::Merge(json!({"status": {"conditions": [approved.clone()]}}));
    requests.patch_status("gw", &PatchParams::default(), &approval).await.unwrap();
    let issued = eventually_async("the CertificateRequest issued", async || {
        let cr = serde_json::to_value(requests.get("gw").await.ok()?).ok()?;
        cr["status"]["certificate"].as_str().filter(|c| !c.is_empty())?;
        Some(cr)
    })
    .await;
    assert_eq!(condition(&issued, "Ready").unwrap()["reason"], "Issued");
    assert_eq!(condition(&issued, "Approved"), Some(&approved), "the approver's condition, untouched");

    // Converged: over several resyncs (every second), nothing meshroot
    // writes changes (its status writes would change the Mesh's resourceVersion).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let versions = async || {
        let mut out = Vec::new();
        for name in ["service-mesh", "gateway-api"] {
            out.push(meshes.get(name).await.unwrap().metadata.resource_version);
        }
        for (ns, name) in [
            (NS, "meshroot-intermediate-service-mesh"),
            ("openshift-ingress", "cacerts"),
            ("istio-system", "istiod-tls"),
        ] {
            out.push(secret(&cluster, ns, name).await.unwrap().metadata.resource_version);
        }
        out
    };
    let before = versions().await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(versions().await, before, "meshroot kept writing after converging");
    server.shutdown().await.unwrap();
}

pub async fn ask(
    server: &meshroot::serve::Server,
    roots_pem: &str,
    token: &str,
    identity: &str,
) -> Result<meshroot::pb::IstioCertificateResponse, tonic::Status> {
    let port = server.grpc_addr.port();
    crate::support::replica::ask_trusting(port, roots_pem.as_bytes(), token, identity, None).await
}

/// A PEM CSR for `dns` with an empty subject, on a new P-256 key.
pub fn dns_csr_pem(dns: &str) -> String {
    let key = meshroot::pki::PrivateKey::generate(meshroot::pki::KeyAlgorithm::EcdsaP256).unwrap();
    let mut params = rcgen::CertificateParams::new(vec![dns.to_string()]).unwrap();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.serialize_request(&key).unwrap().pem().unwrap()
}

/// A Kubernetes CSR `shop` for `dns`, to the chart's ClusterIssuer `ingress-certs`.
fn ingress_csr(dns: &str) -> CertificateSigningRequest {
    serde_json::from_value(json!({
        "metadata": {"name": "shop"},
        "spec": {
            "request": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, dns_csr_pem(dns)),
            "signerName": "clusterissuers.meshroot.io/ingress-certs",
            "usages": ["digital signature", "server auth"],
        },
    }))
    .unwrap()
}

/// A client for openshift-ingress/router, allowed to create Kubernetes CSRs.
async fn csr_requester(cluster: &Cluster) -> kube::Client {
    cluster.service_account("openshift-ingress", "router").await;
    for object in [
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "csr-creator"},
            "rules": [{"apiGroups": ["certificates.k8s.io"], "resources": ["certificatesigningrequests"], "verbs": ["create", "get"]}]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": "router-csr-creator"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "csr-creator"},
            "subjects": [{"kind": "ServiceAccount", "name": "router", "namespace": "openshift-ingress"}]}),
    ] {
        cluster.apply(&object).await;
    }
    cluster.client_with_token(&cluster.token("openshift-ingress", "router", &[], None).await).await
}

/// A client for kube-system/csr-approver, which may approve Kubernetes CSRs
/// for the chart's ClusterIssuer `ingress-certs` and no other signer.
async fn csr_approver(cluster: &Cluster) -> kube::Client {
    cluster.service_account("kube-system", "csr-approver").await;
    for object in [
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "ingress-certs-approver"},
        "rules": [
            {"apiGroups": ["certificates.k8s.io"], "resources": ["certificatesigningrequests"], "verbs": ["get"]},
            {"apiGroups": ["certificates.k8s.io"], "resources": ["certificatesigningrequests/approval"], "verbs": ["update", "patch"]},
            {"apiGroups": ["certificates.k8s.io"], "resources": ["signers"], "verbs": ["approve"],
             "resourceNames": ["clusterissuers.meshroot.io/ingress-certs"]},
        ]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": "ingress-certs-approver"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "ingress-certs-approver"},
            "subjects": [{"kind": "ServiceAccount", "name": "csr-approver", "namespace": "kube-system"}]}),
    ] {
        cluster.apply(&object).await;
    }
    cluster.client_with_token(&cluster.token("kube-system", "csr-approver", &[], None).await).await
}

/// The chart grants `sign` on its signers; without that rule the API server
/// refuses meshroot's certificate for an approved Kubernetes CSR, and the CSR
/// stays unsigned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_charts_sign_grant_meshroot_cannot_sign_a_kubernetes_csr() {
    let cluster = Cluster::start(Options::default()).await;
    chart::install(&cluster).await;
    // The chart's ClusterRole, less its rule on signers.
    let docs = helm::template(&["-f", helm::openshift_values().to_str().unwrap()]).unwrap();
    let mut role =
        docs.into_iter().find(|d| d["kind"] == "ClusterRole" && d["metadata"]["name"] == "mr-meshroot").unwrap();
    let rules =
        role["rules"].as_array().unwrap().iter().filter(|r| r["resources"] != json!(["signers"])).cloned().collect();
    role["rules"] = Value::Array(rules);
    cluster.apply(&role).await;

    let server = chart::serve(&cluster, options_for_chart()).await;
    let router = csr_requester(&cluster).await;
    let csr = ingress_csr("shop.apps.example.com");
    Api::<CertificateSigningRequest>::all(router).create(&PostParams::default(), &csr).await.unwrap();
    let csrs: Api<CertificateSigningRequest> = Api::all(cluster.admin.clone());
    let approval = json!({"status": {"conditions": [{
        "type": "Approved", "status": "True", "reason": "Test", "message": "approved by the test"}]}});
    csrs.patch_approval("shop", &PatchParams::default(), &Patch::Merge(approval)).await.unwrap();

    // meshroot tries, and the API server says no.
    let user = format!("system:serviceaccount:{NS}:{}", chart::SERVICE_ACCOUNT);
    let refusal = eventually_async("meshroot's refused status write", async || {
        cluster.audit_events().into_iter().find(|e| {
            e["user"]["username"] == user.as_str()
                && e["stage"] == "ResponseComplete"
                && e["objectRef"]["resource"] == "certificatesigningrequests"
                && e["objectRef"]["subresource"] == "status"
        })
    })
    .await;
    assert_eq!(refusal["responseStatus"]["code"], 403, "{refusal:#}");
    let csr = csrs.get("shop").await.unwrap();
    assert!(csr.status.and_then(|s| s.certificate).is_none_or(|c| c.0.is_empty()), "signed without the grant");
    server.shutdown().await.unwrap();
}
