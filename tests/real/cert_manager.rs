//! cert-manager's own controller, approver and webhook against meshroot's
//! issuers: its approver approves what the chart grants it (the policed
//! ClusterIssuer) and nothing else; Certificates that name a meshroot Issuer
//! or ClusterIssuer become Ready
//! with a Secret whose chain openssl verifies against the root; a denied
//! request stays unsigned; the webhook, which guards the approval
//! conditions, accepts every status write meshroot makes.

use crate::chart::{self, NS, ROOT_SECRET};
use crate::cluster::{Cluster, Options};
use crate::serve::{condition, secret, secret_text};
use crate::support::{eventually_async, openssl};
use kube::api::{Api, DynamicObject, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};

fn api(cluster: &Cluster, kind: &str, ns: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("cert-manager.io", "v1", kind);
    Api::namespaced_with(cluster.admin.clone(), ns, &ApiResource::from_gvk(&gvk))
}

async fn get(api: &Api<DynamicObject>, name: &str) -> Option<Value> {
    serde_json::to_value(api.get_opt(name).await.ok()??).ok()
}

/// Sets Approved (or Denied) on a request, as an approver would: through
/// /status, past the webhook's check that the caller may approve it.
async fn decide(requests: &Api<DynamicObject>, name: &str, approve: bool) {
    let (type_, reason) = if approve { ("Approved", "approved by the test") } else { ("Denied", "denied by the test") };
    let condition = json!({"type": type_, "status": "True", "reason": "Test", "message": reason});
    let mut cr = get(requests, name).await.unwrap();
    let mut conditions = cr["status"]["conditions"].as_array().cloned().unwrap_or_default();
    conditions.push(condition);
    cr["status"]["conditions"] = Value::Array(conditions);
    let cr: DynamicObject = serde_json::from_value(cr).unwrap();
    requests.replace_status(name, &PostParams::default(), &cr).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_for_meshroot_issuers_become_ready_and_denied_requests_stay_unsigned() {
    let mut cluster = Cluster::start(Options::default()).await;
    chart::install(&cluster).await;
    cluster.start_cert_manager().await;
    let options = meshroot::serve::ServeOptions { cert_manager_issuer: true, ..chart::serve_options("meshroot-0") };
    let server = chart::serve(&cluster, options).await;
    let root = eventually_async("the root", async || secret(&cluster, NS, ROOT_SECRET).await).await;
    let root_pem = secret_text(&root, "tls.crt").unwrap();

    let files = tempfile::tempdir().unwrap();
    // Two Certificates: one for the chart's namespaced Issuer, one for its ClusterIssuer.
    let certificates = api(&cluster, "Certificate", "openshift-ingress");
    let requests = api(&cluster, "CertificateRequest", "openshift-ingress");
    for (name, kind, issuer) in [("gw", "Issuer", "gateways"), ("ingress", "ClusterIssuer", "ingress-certs")] {
        let certificate: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "cert-manager.io/v1", "kind": "Certificate", "metadata": {"name": name},
            "spec": {
                "secretName": format!("{name}-tls"),
                "dnsNames": [format!("{name}.apps.example.com")],
                "usages": ["digital signature", "key encipherment", "server auth"],
                "privateKey": {"algorithm": "ECDSA", "size": 256},
                "issuerRef": {"group": "meshroot.io", "kind": kind, "name": issuer},
            },
        }))
        .unwrap();
        certificates.create(&PostParams::default(), &certificate).await.unwrap();
        // cert-manager makes the request. Its approver approves the
        // ClusterIssuer's (the chart grants it `approve` on that signer) and
        // not the Issuer's (no grant), which the test approves.
        let request = eventually_async("cert-manager's CertificateRequest", async || {
            let list = requests.list(&Default::default()).await.ok()?;
            list.items.into_iter().find(|r| {
                r.metadata
                    .annotations
                    .as_ref()
                    .is_some_and(|a| a.get("cert-manager.io/certificate-name") == Some(&name.to_string()))
            })
        })
        .await;
        let request_name = request.metadata.name.clone().unwrap();
        if kind == "Issuer" {
            tokio::time::sleep(std::time::Duration::from_secs(2)).await;
            let waiting = get(&requests, &request_name).await.unwrap();
            assert!(condition(&waiting, "Approved").is_none(), "cert-manager approved without a grant: {waiting:#}");
            decide(&requests, &request_name, true).await;
        }
        let ready = eventually_async("the Certificate Ready", async || {
            let c = get(&certificates, name).await?;
            (condition(&c, "Ready")?["status"] == "True").then_some(c)
        })
        .await;
        assert_eq!(condition(&ready, "Ready").unwrap()["reason"], "Ready");
        let approved = get(&requests, &request_name).await.unwrap();
        let by = &condition(&approved, "Approved").unwrap()["reason"];
        assert_eq!(*by, if kind == "Issuer" { "Test" } else { "cert-manager.io" }, "{name}: approved by");
        let tls =
            secret(&cluster, "openshift-ingress", &format!("{name}-tls")).await.expect("the Certificate's Secret");
        let chain = secret_text(&tls, "tls.crt").unwrap();
        let blocks: Vec<String> = chain.split_inclusive("-----END CERTIFICATE-----\n").map(String::from).collect();
        let (leaf, intermediates) = blocks.split_first().unwrap();
        openssl::verify(files.path(), &root_pem, &intermediates.concat(), leaf)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(secret_text(&tls, "ca.crt").as_deref(), Some(root_pem.as_str()), "{name}: ca.crt is the root");
    }

    // A request denied before meshroot signs it stays unsigned, and says so.
    let csr_pem = crate::serve::dns_csr_pem("denied.apps.example.com");
    let denied: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "cert-manager.io/v1", "kind": "CertificateRequest", "metadata": {"name": "denied"},
        "spec": {
            "request": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &csr_pem),
            "issuerRef": {"group": "meshroot.io", "kind": "Issuer", "name": "gateways"},
            "usages": ["digital signature", "server auth"],
        },
    }))
    .unwrap();
    requests.create(&PostParams::default(), &denied).await.unwrap();
    decide(&requests, "denied", false).await;
    let cr = eventually_async("the denied request marked", async || {
        let cr = get(&requests, "denied").await?;
        (condition(&cr, "Ready")?["reason"] == "Denied").then_some(cr)
    })
    .await;
    assert!(cr["status"]["certificate"].is_null(), "a denied request was signed");
    assert!(cr["status"]["failureTime"].is_string());

    // The webhook is live: it refuses a change to an approver's condition ...
    let mut tampered = cr.clone();
    tampered["status"]["conditions"] = json!([]);
    let tampered: DynamicObject = serde_json::from_value(tampered).unwrap();
    let refused = requests.replace_status("denied", &PostParams::default(), &tampered).await;
    let refused = refused.expect_err("the webhook let the Denied condition be removed");
    assert!(refused.to_string().contains("denied the request"), "refused, but not by the webhook: {refused}");
    // ... and refused none of meshroot's status writes.
    let user = format!("system:serviceaccount:{NS}:{}", chart::SERVICE_ACCOUNT);
    let writes: Vec<Value> = cluster
        .audit_events()
        .into_iter()
        .filter(|e| e["user"]["username"] == user.as_str() && e["stage"] == "ResponseComplete")
        .filter(|e| e["objectRef"]["resource"] == "certificaterequests" && e["objectRef"]["subresource"] == "status")
        .collect();
    assert!(writes.len() >= 3, "meshroot's status writes: {writes:#?}");
    let refused: Vec<&Value> = writes.iter().filter(|e| e["responseStatus"]["code"].as_u64() != Some(200)).collect();
    assert!(refused.is_empty(), "refused status writes: {refused:#?}");
    server.shutdown().await.unwrap();
}
