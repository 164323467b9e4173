//! The root Secret: imported, generated once even when replicas race,
//! offline, with extra roots, and never replaced when corrupt.

use crate::support;

use fake_apiserver::FakeApi;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use meshroot::k8s::root::{RootError, load_or_generate};
use meshroot::pki::PublicKeyKind;
use serde_json::json;
use support::fixture;

const NS: &str = "meshroot";

fn tls_secret(fake: &FakeApi, name: &str, data: serde_json::Value) {
    fake.create(
        "v1",
        "secrets",
        NS,
        json!({"metadata": {"name": name}, "type": "kubernetes.io/tls", "stringData": data}),
    );
}

fn setup() -> FakeApi {
    let fake = FakeApi::new();
    fake.namespace(NS, json!({}));
    fake
}

#[tokio::test]
async fn imports_an_openssl_rsa4096_root_in_either_key_encoding() {
    for key in ["rsa4096-root-key.pkcs1.pem", "rsa4096-root-key.pkcs8.pem"] {
        let fake = setup();
        tls_secret(
            &fake,
            "root-ca-key-pair",
            json!({"tls.crt": fixture("rsa4096-root-cert.pem"), "tls.key": fixture(key)}),
        );
        let root = load_or_generate(fake.client(), NS, "root-ca-key-pair", false).await.unwrap();
        assert_eq!(root.authority.unwrap().key_kind(), PublicKeyKind::Rsa { bits: 4096 });
        assert_eq!(root.bundle.roots().len(), 1);
    }
}

#[tokio::test]
async fn generates_once_and_racing_replicas_agree_on_one_root() {
    let fake = setup();
    let loads: Vec<_> = (0..4).map(|_| tokio::spawn(load_or_generate(fake.client(), NS, "root-ca", true))).collect();
    let mut pems = Vec::new();
    for l in loads {
        let root = l.await.unwrap().unwrap();
        pems.push(root.authority.unwrap().certificate_pem().to_string());
    }
    assert!(pems.windows(2).all(|w| w[0] == w[1]), "every replica uses the same root");
    let secret: Secret = Api::namespaced(fake.client(), NS).get("root-ca").await.unwrap();
    assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
    assert_eq!(secret.metadata.labels.unwrap()["app.kubernetes.io/managed-by"], "meshroot");
    // A later start reuses it.
    let again = load_or_generate(fake.client(), NS, "root-ca", true).await.unwrap();
    assert_eq!(again.authority.unwrap().certificate_pem(), pems[0]);
}

#[tokio::test]
async fn a_missing_root_is_an_error_that_says_how_to_create_it() {
    let fake = setup();
    let e = load_or_generate(fake.client(), NS, "root-ca", false).await.unwrap_err();
    assert!(matches!(e, RootError::Missing { .. }));
    assert!(e.to_string().contains("kubectl -n meshroot create secret tls root-ca"), "{e}");
}

#[tokio::test]
async fn offline_roots_and_extra_roots() {
    let fake = setup();
    let extra = fixture("ec-prime256v1-root-cert.pem");
    fake.create(
        "v1",
        "secrets",
        NS,
        json!({"metadata": {"name": "offline"}, "stringData": {"tls.crt": fixture("rsa4096-root-cert.pem"), "ca.crt": extra}}),
    );
    let root = load_or_generate(fake.client(), NS, "offline", true).await.unwrap();
    assert!(root.is_offline());
    assert_eq!(root.bundle.roots().len(), 2, "the root plus ca.crt");
}

#[tokio::test]
async fn corrupt_or_mismatched_roots_are_reported_and_never_replaced() {
    let fake = setup();
    tls_secret(
        &fake,
        "corrupt",
        json!({"tls.crt": fixture("rsa4096-root-cert.pem"), "tls.key": "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"}),
    );
    tls_secret(
        &fake,
        "mismatch",
        json!({"tls.crt": fixture("rsa4096-root-cert.pem"), "tls.key": fixture("other-p256-key.pem")}),
    );
    tls_secret(
        &fake,
        "not-ca",
        json!({"tls.crt": fixture("not-ca-cert.pem"), "tls.key": fixture("ec-prime256v1-root-key.sec1.pem")}),
    );
    for (name, want) in
        [("corrupt", "could not load the private key"), ("mismatch", "does not match"), ("not-ca", "not a CA")]
    {
        let before = fake.get("v1", "secrets", NS, name).unwrap();
        let e = load_or_generate(fake.client(), NS, name, true).await.unwrap_err();
        assert!(e.to_string().contains(want), "{name}: {e}");
        assert_eq!(fake.get("v1", "secrets", NS, name).unwrap(), before, "{name} must not be touched");
    }
    assert!(fake.writes().is_empty(), "{:?}", fake.writes());
    // A Secret without tls.crt.
    let s: Secret = serde_json::from_value(json!({"metadata": {"name": "empty"}, "data": {}})).unwrap();
    Api::<Secret>::namespaced(fake.client(), NS).create(&PostParams::default(), &s).await.unwrap();
    assert!(matches!(load_or_generate(fake.client(), NS, "empty", true).await, Err(RootError::NoCertificate(_))));
}
