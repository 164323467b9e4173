//! Kubernetes CertificateSigningRequests for meshroot's signer names,
//! as cert-manager's CSR conformance suite drives them.

use crate::support;

use base64::Engine as _;
use meshroot::pki::pem;
use serde_json::{Value, json};
use std::time::Duration;
use support::issuers::{CSR_API, IssuerWorld, decode_b64};
use support::openssl;
use x509_parser::prelude::{FromDer, X509Certificate};

fn create_csr(world: &IssuerWorld, name: &str, signer: &str, csr_pem: &str, spec: Value, annotations: Value) {
    let mut body = json!({
        "metadata": {"name": name, "annotations": annotations},
        "spec": {
            "request": base64::engine::general_purpose::STANDARD.encode(csr_pem),
            "signerName": signer,
            "usages": ["digital signature", "key encipherment"],
            "username": "alice",
            "groups": ["developers", "system:authenticated"],
        },
    });
    if let Value::Object(extra) = spec {
        for (k, v) in extra {
            body["spec"][k] = v;
        }
    }
    world.fake.create(CSR_API, "certificatesigningrequests", "", body);
}

fn approve(world: &IssuerWorld, name: &str, type_: &str) {
    let status = json!({"conditions": [{
        "type": type_, "status": "True", "reason": "Test", "message": "by the test",
        "lastUpdateTime": "2026-01-01T00:00:00Z",
    }]});
    world.fake.set_status(CSR_API, "certificatesigningrequests", "", name, status);
}

fn csr_object(world: &IssuerWorld, name: &str) -> Value {
    world.fake.get(CSR_API, "certificatesigningrequests", "", name).unwrap()
}

/// Polls the CSR until `pick` finds what is awaited in it.
async fn wait_for<T>(world: &IssuerWorld, name: &str, what: &str, pick: impl Fn(&Value) -> Option<T>) -> T {
    for _ in 0..300 {
        if let Some(found) = pick(&csr_object(world, name)) {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{name} was never {what}: {}", csr_object(world, name)["status"]);
}

async fn wait_signed(world: &IssuerWorld, name: &str) -> String {
    wait_for(world, name, "signed", |obj| {
        obj["status"]["certificate"].is_string().then(|| decode_b64(&obj["status"]["certificate"]))
    })
    .await
}

async fn wait_failed(world: &IssuerWorld, name: &str) -> Value {
    wait_for(world, name, "failed", |obj| {
        obj["status"]["conditions"].as_array().into_iter().flatten().find(|c| c["type"] == "Failed").cloned()
    })
    .await
}

/// A ClusterIssuer with the root for every requester, names under example.com.
fn open_root() -> Value {
    json!({"signer": {"root": true}, "allowedNamespaces": ["*"], "policy": {"allowedDNSNames": ["**.example.com"]}})
}

/// A namespaced Issuer with the `default` mesh's intermediate.
fn mesh_issuer() -> Value {
    json!({"signer": {"mesh": "default"}, "policy": {"allowedDNSNames": ["**.example.com"]}})
}

fn lifetime_and_ca(chain_pem: &str) -> (i64, bool) {
    let certs = pem::decode_certificates(chain_pem.as_bytes(), 1 << 20).unwrap();
    let (_, cert) = X509Certificate::from_der(certs[0].as_ref()).unwrap();
    let v = cert.validity();
    let ku = cert.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature(), "KeyUsage digitalSignature is always present");
    let is_ca = cert.basic_constraints().unwrap().is_some_and(|b| b.value.ca);
    (v.not_after.timestamp() - v.not_before.timestamp(), is_ca)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approved_csrs_for_a_cluster_issuer_are_signed_with_the_requested_duration() {
    let world = IssuerWorld::start();
    world.cluster_issuer(
        "root",
        json!({"signer": {"root": true}, "allowedNamespaces": ["*"], "policy": {
            "allowCA": true, "allowedDNSNames": ["**.example.com"], "allowedCommonNames": ["csr-test"]}}),
    );
    let dir = world.dir.path();
    let signer = "clusterissuers.meshroot.io/root";
    let cases: Vec<(&str, &str, Value, Value, i64, bool)> = vec![
        ("rsa-dns", "rsa2048", json!({}), json!({}), 90 * 86_400, false),
        ("ecdsa-dns", "p256", json!({}), json!({}), 90 * 86_400, false),
        ("ed25519-dns", "ed25519", json!({}), json!({}), 90 * 86_400, false),
        ("expiration-seconds", "rsa2048", json!({"expirationSeconds": 3333}), json!({}), 3333, false),
        (
            "duration-annotation",
            "rsa2048",
            json!({"expirationSeconds": 3333}),
            json!({"experimental.cert-manager.io/request-duration": "896h"}),
            896 * 3600,
            false,
        ),
        (
            "ca",
            "rsa2048",
            json!({"usages": ["digital signature", "key encipherment", "cert sign"]}),
            json!({"experimental.cert-manager.io/request-is-ca": "true", "experimental.cert-manager.io/request-duration": "10000h"}),
            10_000 * 3600,
            true,
        ),
    ];
    for (name, key, spec, annotations, _, _) in &cases {
        let key = openssl::key(dir, key);
        let csr = openssl::csr(dir, &key, "/CN=csr-test", &[&format!("subjectAltName=DNS:{name}.example.com")], false);
        create_csr(&world, name, signer, &csr, spec.clone(), annotations.clone());
        approve(&world, name, "Approved");
    }
    for (name, _, _, _, seconds, is_ca) in &cases {
        let chain = wait_signed(&world, name).await;
        let (lifetime, ca) = lifetime_and_ca(&chain);
        assert!((lifetime - seconds).abs() <= 30, "{name}: {lifetime}s, wanted {seconds}s");
        assert_eq!(ca, *is_ca, "{name}");
        let leaf = pem::encode_certificate(&pem::decode_certificates(chain.as_bytes(), 1 << 20).unwrap()[0]);
        openssl::verify(dir, &world.root_pem(), "", &leaf).unwrap();
    }
    support::until("an Issued event for rsa-dns", || {
        world
            .fake
            .list("events.k8s.io/v1", "events")
            .iter()
            .any(|e| e["reason"] == "Issued" && e["regarding"]["name"] == "rsa-dns")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unapproved_denied_and_foreign_csrs_are_left_alone() {
    let world = IssuerWorld::start();
    world.cluster_issuer("root", open_root());
    let dir = world.dir.path();
    let key = openssl::key(dir, "p256");
    let csr = openssl::csr(dir, &key, "/", &["subjectAltName=DNS:a.example.com"], false);
    create_csr(&world, "unapproved", "clusterissuers.meshroot.io/root", &csr, json!({}), json!({}));
    create_csr(&world, "denied", "clusterissuers.meshroot.io/root", &csr, json!({}), json!({}));
    approve(&world, "denied", "Denied");
    // Both Approved and Denied (an approver and a denier raced): Denied wins.
    create_csr(&world, "approved-and-denied", "clusterissuers.meshroot.io/root", &csr, json!({}), json!({}));
    let both: Vec<Value> = ["Approved", "Denied"]
        .iter()
        .map(|type_| {
            json!({"type": type_, "status": "True", "reason": "Test", "message": "by the test",
                   "lastUpdateTime": "2026-01-01T00:00:00Z"})
        })
        .collect();
    let both = json!({ "conditions": both });
    world.fake.set_status(CSR_API, "certificatesigningrequests", "", "approved-and-denied", both);
    create_csr(&world, "kubelet", "kubernetes.io/kubelet-serving", &csr, json!({}), json!({}));
    approve(&world, "kubelet", "Approved");
    create_csr(&world, "cert-manager", "clusterissuers.cert-manager.io/root", &csr, json!({}), json!({}));
    approve(&world, "cert-manager", "Approved");
    create_csr(&world, "ours", "clusterissuers.meshroot.io/root", &csr, json!({}), json!({}));
    approve(&world, "ours", "Approved");
    wait_signed(&world, "ours").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for name in ["unapproved", "denied", "approved-and-denied", "kubelet", "cert-manager"] {
        assert_eq!(world.writes_to("certificatesigningrequests", name), 0, "{name} is not meshroot's to sign");
        assert!(csr_object(&world, name)["status"]["certificate"].is_null(), "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespaced_issuer_needs_the_reference_permission() {
    let world = IssuerWorld::start();
    world.add_mesh_granting("default", &["istio-system", "apps"]);
    world.issuer("istio-system", "mesh-ca", mesh_issuer());
    let dir = world.dir.path();
    let key = openssl::key(dir, "p256");
    let csr = openssl::csr(dir, &key, "/", &["subjectAltName=DNS:a.example.com"], false);
    let signer = "issuers.meshroot.io/istio-system.mesh-ca";
    create_csr(&world, "no-permission", signer, &csr, json!({}), json!({}));
    approve(&world, "no-permission", "Approved");
    let failed = wait_failed(&world, "no-permission").await;
    assert_eq!(failed["reason"], "DeniedReference");
    assert!(failed["message"].as_str().unwrap().contains("may not reference Issuer istio-system/mesh-ca"));

    // Granted to a group the requester is in, for this issuer by name.
    world.fake.grant("developers", "reference", "meshroot.io", "signers", "istio-system", Some("mesh-ca"));
    create_csr(&world, "by-name", signer, &csr, json!({}), json!({}));
    approve(&world, "by-name", "Approved");
    wait_signed(&world, "by-name").await;

    // A grant in another namespace does not count.
    world.issuer("apps", "local", mesh_issuer());
    create_csr(&world, "wrong-namespace", "issuers.meshroot.io/apps.local", &csr, json!({}), json!({}));
    approve(&world, "wrong-namespace", "Approved");
    assert_eq!(wait_failed(&world, "wrong-namespace").await["reason"], "DeniedReference");

    // A grant for every name ("*") covers any issuer in the namespace.
    world.fake.grant("alice", "reference", "meshroot.io", "signers", "apps", None);
    create_csr(&world, "wildcard", "issuers.meshroot.io/apps.local", &csr, json!({}), json!({}));
    approve(&world, "wildcard", "Approved");
    wait_signed(&world, "wildcard").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_fail_with_a_reason_and_missing_issuers_wait() {
    let world = IssuerWorld::start();
    world.cluster_issuer("root", open_root());
    let dir = world.dir.path();
    let key = openssl::key(dir, "p256");
    let csr = openssl::csr(dir, &key, "/", &["subjectAltName=DNS:a.example.com"], false);
    let signer = "clusterissuers.meshroot.io/root";
    create_csr(&world, "bad-ca", signer, &csr, json!({}), json!({"experimental.cert-manager.io/request-is-ca": "yes"}));
    approve(&world, "bad-ca", "Approved");
    create_csr(
        &world,
        "ca-not-allowed",
        signer,
        &csr,
        json!({}),
        json!({"experimental.cert-manager.io/request-is-ca": "true"}),
    );
    approve(&world, "ca-not-allowed", "Approved");
    create_csr(&world, "short", signer, &csr, json!({"expirationSeconds": 300}), json!({}));
    approve(&world, "short", "Approved");
    assert_eq!(wait_failed(&world, "bad-ca").await["reason"], "InvalidRequest");
    assert_eq!(wait_failed(&world, "ca-not-allowed").await["reason"], "PolicyViolation");
    assert!(wait_failed(&world, "short").await["message"].as_str().unwrap().contains("shorter than the minimum"));

    create_csr(&world, "later", "clusterissuers.meshroot.io/later", &csr, json!({}), json!({}));
    approve(&world, "later", "Approved");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(csr_object(&world, "later")["status"]["certificate"].is_null());
    support::until("a Pending event for later", || {
        world
            .fake
            .list("events.k8s.io/v1", "events")
            .iter()
            .any(|e| e["reason"] == "Pending" && e["regarding"]["name"] == "later")
    })
    .await;
    world.cluster_issuer("later", open_root());
    wait_signed(&world, "later").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_csr_whose_signing_panics_fails_alone_and_the_others_are_signed() {
    fn poison(name: &str) {
        if name == "poison" {
            panic!("signing poison panicked (test hook)");
        }
    }
    let world = IssuerWorld::start_poisoned(poison);
    world.cluster_issuer("root", open_root());
    let dir = world.dir.path();
    let key = openssl::key(dir, "p256");
    let csr = openssl::csr(dir, &key, "/", &["subjectAltName=DNS:a.example.com"], false);
    let signer = "clusterissuers.meshroot.io/root";
    for name in ["poison", "beside"] {
        create_csr(&world, name, signer, &csr, json!({}), json!({}));
        approve(&world, name, "Approved");
    }
    let failed = wait_failed(&world, "poison").await;
    assert_eq!(failed["reason"], "InternalError");
    assert_eq!(failed["message"], meshroot::controllers::panic_guard::INTERNAL_ERROR_MESSAGE);
    assert!(!failed.to_string().contains("test hook"), "no panic text in the status: {failed}");
    // The controller lives on: CSRs after (and beside) the poison are signed.
    for name in ["after-1", "after-2"] {
        create_csr(&world, name, signer, &csr, json!({}), json!({}));
        approve(&world, name, "Approved");
    }
    for name in ["beside", "after-1", "after-2"] {
        wait_signed(&world, name).await;
    }
    let panics = world
        .metrics
        .reconcile_panics
        .get_or_create(&meshroot::telemetry::metrics::ControllerLabels { controller: "kube_csrs" })
        .get();
    assert!(panics >= 1, "the panic is counted");
}
