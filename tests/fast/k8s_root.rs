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

/// An intermediate whose root's key is held elsewhere (Vault, a corporate PKI), imported as a
/// chain: `tls.crt` the intermediate (and any CA above it), `tls.key` its key, `ca.crt` the
/// root. meshroot signs its mesh intermediates with it, and everything chains to that root.
#[tokio::test]
async fn an_imported_intermediate_signs_under_a_root_whose_key_is_elsewhere() {
    use meshroot::k8s::intermediates::{IntermediatePolicy, IntermediateSecret, ensure, parse_secret, secret_name};
    use meshroot::pki::{Authority, CaSpec, KeyAlgorithm, PrivateKey, RootState, pem};
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyUsagePurpose};
    use time::{Duration, OffsetDateTime};
    let now = OffsetDateTime::now_utc();
    let their_root = Authority::new_root(&CaSpec::root(Duration::days(3650)), now).unwrap();
    let intermediate = |path_len: u8| {
        let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, "Vault intermediate");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = now - Duration::minutes(5);
        params.not_after = now + Duration::days(365);
        let cert = their_root.sign(&params, &key.spki_der()).unwrap();
        (pem::encode_certificate(&cert), key.to_pem().to_string(), cert)
    };
    let fake = setup();
    let (cert_pem, key_pem, imported) = intermediate(2);
    let key_pem_of_imported = key_pem.clone();
    tls_secret(
        &fake,
        "imported",
        json!({"tls.crt": cert_pem, "tls.key": key_pem, "ca.crt": their_root.certificate_pem()}),
    );
    let root: RootState = load_or_generate(fake.client(), NS, "imported", false).await.unwrap().into();
    assert_eq!(root.bundle.roots(), [their_root.certificate().clone()], "their root, once, anchors the bundle");
    assert_eq!(root.chain.as_slice(), std::slice::from_ref(&imported));
    assert_eq!(root.authority.as_ref().unwrap().certificate(), &imported);
    // What `meshroot doctor` takes as meshroot's root, without reading the key.
    let stored = Api::<Secret>::namespaced(fake.client(), NS).get("imported").await.unwrap();
    assert_eq!(&meshroot::k8s::root::trust_anchor(&stored).unwrap(), their_root.certificate());

    // A mesh intermediate under it; the Secret carries the chain, so every replica can use it.
    let api: Api<Secret> = Api::namespaced(fake.client(), NS);
    let policy = IntermediatePolicy {
        key_algorithm: KeyAlgorithm::EcdsaP256,
        lifetime: Duration::hours(1),
        renew_before: Duration::minutes(20),
    };
    let authority = root.authority.as_deref();
    let made = ensure(&api, &IntermediateSecret::external("m"), &policy, authority, &root.chain, &root.bundle, now)
        .await
        .unwrap();
    assert!(made.issued);
    assert_eq!(&made.chain.ca_path()[1..], std::slice::from_ref(&imported));
    let read = parse_secret(&api.get(&secret_name("m")).await.unwrap(), &root.bundle, now).unwrap();
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    for chain in [&made.chain, &read] {
        let leaf =
            chain.issue_workload(&key.spki_der(), "spiffe://cluster.local/ns/a/sa/b", Duration::hours(1), now).unwrap();
        root.bundle.verify(&leaf.der, &chain.ca_path(), now).expect("a workload chains to their root");
    }
    // Not renewed on the next pass: it is under the signing CA.
    let again = ensure(&api, &IntermediateSecret::external("m"), &policy, authority, &root.chain, &root.bundle, now)
        .await
        .unwrap();
    assert!(!again.issued);
    // The imported intermediate renewed with the same key: the mesh intermediate is issued
    // again, so chains carry the current copy rather than one that will expire.
    let mut renewed_params = CertificateParams::default();
    renewed_params.distinguished_name.push(DnType::CommonName, "Vault intermediate");
    renewed_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(2));
    renewed_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    renewed_params.not_before = now - Duration::minutes(1);
    renewed_params.not_after = now + Duration::days(400);
    let imported_key = PrivateKey::from_pem(key_pem_of_imported.as_bytes()).unwrap();
    let renewed = their_root.sign(&renewed_params, &imported_key.spki_der()).unwrap();
    let renewed_chain = vec![renewed.clone()];
    let moved = ensure(&api, &IntermediateSecret::external("m"), &policy, authority, &renewed_chain, &root.bundle, now)
        .await
        .unwrap();
    assert!(moved.issued, "re-issued under the renewed copy");
    assert_eq!(&moved.chain.ca_path()[1..], std::slice::from_ref(&renewed));
    // Istio's cacerts: cert-chain.pem goes through the imported intermediate to the root.
    fake.namespace("istio-system", json!({}));
    let istio: Api<Secret> = Api::namespaced(fake.client(), "istio-system");
    ensure(&istio, &IntermediateSecret::cacerts("g"), &policy, authority, &root.chain, &root.bundle, now)
        .await
        .unwrap();
    let cacerts = istio.get("cacerts").await.unwrap().data.unwrap();
    let chain = pem::decode_certificates(&cacerts["cert-chain.pem"].0, 1 << 20).unwrap();
    assert_eq!(chain.len(), 3, "intermediate, imported intermediate, root");
    assert_eq!(chain[1..], [imported, their_root.certificate().clone()]);

    // Rotation steps take self-signed roots: under an imported intermediate they are refused,
    // rather than dropping its root from ca.crt (the Secret would no longer load).
    let e = meshroot::k8s::rotation::add(&stored, their_root.certificate_pem().as_bytes(), now).unwrap_err();
    assert!(e.to_string().contains("holds an imported intermediate"), "{e}");
    let e = meshroot::k8s::rotation::finish(&stored, Duration::hours(1), true, now).unwrap_err();
    assert!(e.to_string().contains("holds an imported intermediate"), "{e}");
    // Refused, with the reason: an intermediate that may not sign CAs, and a chain without its root.
    let (cert_pem, key_pem, _) = intermediate(0);
    tls_secret(
        &fake,
        "no-cas",
        json!({"tls.crt": cert_pem, "tls.key": key_pem, "ca.crt": their_root.certificate_pem()}),
    );
    let e = load_or_generate(fake.client(), NS, "no-cas", false).await.unwrap_err().to_string();
    assert!(e.contains("pathLenConstraint 0"), "{e}");
    let (cert_pem, key_pem, _) = intermediate(1);
    tls_secret(&fake, "rootless", json!({"tls.crt": cert_pem, "tls.key": key_pem}));
    let e = load_or_generate(fake.client(), NS, "rootless", false).await.unwrap_err().to_string();
    assert!(e.contains("does not reach a self-signed root"), "{e}");
}
