//! Mesh intermediates in Secrets: issued once, renewed with overlap,
//! re-issued under a new root, used read-only when supplied, never
//! overwritten when corrupt or foreign.

use fake_apiserver::FakeApi;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use meshroot::api::mesh::IntermediateSpec;
use meshroot::k8s::intermediates::{
    IntermediateError, IntermediatePolicy, IntermediatePolicyError, IntermediateSecret, ensure, secret_name,
};
use meshroot::pki::{Authority, CaSpec, KeyAlgorithm, PrivateKey, TrustBundle};
use serde_json::json;
use time::{Duration, OffsetDateTime};

const NS: &str = "meshroot";
const ID: &str = "spiffe://cluster.local/ns/default/sa/default";

struct Setup {
    fake: FakeApi,
    api: Api<Secret>,
    root: Authority,
    bundle: TrustBundle,
    policy: IntermediatePolicy,
}

fn setup() -> Setup {
    let fake = FakeApi::new();
    fake.namespace(NS, json!({}));
    let api = Api::namespaced(fake.client(), NS);
    let root = Authority::new_root(&CaSpec::root(Duration::days(3650)), OffsetDateTime::now_utc()).unwrap();
    let bundle = TrustBundle::new(vec![root.certificate().clone()]).unwrap();
    let policy = IntermediatePolicy {
        key_algorithm: KeyAlgorithm::EcdsaP256,
        lifetime: Duration::hours(1),
        renew_before: Duration::minutes(20),
    };
    Setup { fake, api, root, bundle, policy }
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

#[tokio::test]
async fn issues_once_then_reuses_without_writing() {
    let s = setup();
    let first =
        ensure(&s.api, &IntermediateSecret::external("default"), &s.policy, Some(&s.root), &[], &s.bundle, now())
            .await
            .unwrap();
    assert!(first.issued);
    let secret = s.api.get(&secret_name("default")).await.unwrap();
    let labels = secret.metadata.labels.unwrap();
    assert_eq!(labels["meshroot.io/mesh"], "default");
    assert_eq!(secret.data.as_ref().unwrap()["ca.crt"].0, s.bundle.pem().as_bytes());
    s.fake.clear_requests();
    let again =
        ensure(&s.api, &IntermediateSecret::external("default"), &s.policy, Some(&s.root), &[], &s.bundle, now())
            .await
            .unwrap();
    assert!(!again.issued);
    assert_eq!(again.chain.authority().serial_hex(), first.chain.authority().serial_hex());
    assert!(s.fake.writes().is_empty(), "{:?}", s.fake.writes());
}

/// A Mesh name may be 253 characters; a label value only 63 and the
/// Secret's name 253 in all. Both are shortened with a hash, so the API
/// server accepts the Secret, and it is reused, not issued again.
#[tokio::test]
async fn a_mesh_with_the_longest_name_gets_a_secret_the_api_server_accepts() {
    let s = setup();
    let mesh = format!("{}.{}.{}.{}", "a".repeat(63), "b".repeat(63), "c".repeat(63), "d".repeat(61));
    assert_eq!(mesh.len(), 253);
    let target = IntermediateSecret::external(&mesh);
    let first = ensure(&s.api, &target, &s.policy, Some(&s.root), &[], &s.bundle, now()).await.unwrap();
    assert!(first.issued);
    let name = secret_name(&mesh);
    assert!(name.len() <= 253 && name.starts_with("meshroot-intermediate-aaa"), "{name}");
    let secret = s.api.get(&name).await.unwrap();
    let label = &secret.metadata.labels.unwrap()["meshroot.io/mesh"];
    assert!(label.len() <= 63 && label.starts_with("aaa"), "{label}");
    let again = ensure(&s.api, &target, &s.policy, Some(&s.root), &[], &s.bundle, now()).await.unwrap();
    assert!(!again.issued, "found again under the same shortened name");
}

#[tokio::test]
async fn renews_before_expiry_and_old_leaves_keep_verifying() {
    let s = setup();
    let first =
        ensure(&s.api, &IntermediateSecret::external("default"), &s.policy, Some(&s.root), &[], &s.bundle, now())
            .await
            .unwrap();
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let old_leaf = first.chain.issue_workload(&key.spki_der(), ID, Duration::minutes(50), now()).unwrap();
    // Forty-one minutes on, less than twenty are left: renew.
    let later = now() + Duration::minutes(41);
    let renewed =
        ensure(&s.api, &IntermediateSecret::external("default"), &s.policy, Some(&s.root), &[], &s.bundle, later)
            .await
            .unwrap();
    assert!(renewed.issued);
    assert_ne!(renewed.chain.authority().serial_hex(), first.chain.authority().serial_hex());
    // Overlap: the old leaf still verifies through the old intermediate
    // under the same bundle, and a new leaf through the new one.
    s.bundle.verify(&old_leaf.der, &[first.chain.authority().certificate().clone()], later).unwrap();
    let new_leaf = renewed.chain.issue_workload(&key.spki_der(), ID, Duration::minutes(5), later).unwrap();
    s.bundle.verify(&new_leaf.der, &renewed.chain.ca_path(), later).unwrap();
}

#[tokio::test]
async fn a_new_root_gets_a_new_intermediate_and_a_new_key_algorithm_too() {
    let s = setup();
    ensure(&s.api, &IntermediateSecret::external("default"), &s.policy, Some(&s.root), &[], &s.bundle, now())
        .await
        .unwrap();
    let new_root = Authority::new_root(&CaSpec::root(Duration::days(3650)), now()).unwrap();
    let new_bundle = TrustBundle::new(vec![new_root.certificate().clone()]).unwrap();
    let e =
        ensure(&s.api, &IntermediateSecret::external("default"), &s.policy, Some(&new_root), &[], &new_bundle, now())
            .await
            .unwrap();
    assert!(e.issued);
    let mut p384 = s.policy;
    p384.key_algorithm = KeyAlgorithm::EcdsaP384;
    let e = ensure(&s.api, &IntermediateSecret::external("default"), &p384, Some(&new_root), &[], &new_bundle, now())
        .await
        .unwrap();
    assert!(e.issued);
    assert_eq!(e.chain.authority().key_kind().to_string(), "ecdsa-p384");
}

#[tokio::test]
async fn racing_leaders_end_with_one_intermediate() {
    let s = setup();
    let target = IntermediateSecret::external("default");
    let (a, b) = tokio::join!(
        ensure(&s.api, &target, &s.policy, Some(&s.root), &[], &s.bundle, now()),
        ensure(&s.api, &target, &s.policy, Some(&s.root), &[], &s.bundle, now())
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    let stored = s.api.get(&secret_name("default")).await.unwrap();
    let stored_cert = String::from_utf8(stored.data.unwrap()["tls.crt"].0.clone()).unwrap();
    assert_eq!(a.chain.authority().certificate_pem(), stored_cert);
    assert_eq!(b.chain.authority().certificate_pem(), stored_cert);
}

#[tokio::test]
async fn corrupt_and_foreign_secrets_are_never_overwritten() {
    let s = setup();
    s.fake.create(
        "v1",
        "secrets",
        NS,
        json!({"metadata": {"name": secret_name("corrupt"), "labels": {"app.kubernetes.io/managed-by": "meshroot"}},
               "stringData": {"tls.crt": "junk", "tls.key": "junk"}}),
    );
    s.fake.create(
        "v1",
        "secrets",
        NS,
        json!({"metadata": {"name": secret_name("foreign")}, "stringData": {"tls.crt": "x"}}),
    );
    s.fake.clear_requests();
    let e = ensure(&s.api, &IntermediateSecret::external("corrupt"), &s.policy, Some(&s.root), &[], &s.bundle, now())
        .await
        .unwrap_err();
    assert!(matches!(e, IntermediateError::Corrupt { .. }), "{e}");
    let e = ensure(&s.api, &IntermediateSecret::external("foreign"), &s.policy, Some(&s.root), &[], &s.bundle, now())
        .await
        .unwrap_err();
    assert!(matches!(e, IntermediateError::NotOwned(_)), "{e}");
    assert!(s.fake.writes().is_empty());
}

#[tokio::test]
async fn an_offline_root_uses_a_supplied_intermediate_and_never_writes() {
    let s = setup();
    let missing = ensure(&s.api, &IntermediateSecret::external("default"), &s.policy, None, &[], &s.bundle, now())
        .await
        .unwrap_err();
    assert!(matches!(missing, IntermediateError::OfflineRoot(_)), "{missing}");
    // The operator supplies one made offline (meshroot pki init), unlabelled.
    let int = s.root.new_intermediate(&CaSpec::intermediate("default", Duration::hours(1)), now()).unwrap();
    s.fake.create(
        "v1",
        "secrets",
        NS,
        json!({"metadata": {"name": secret_name("default")},
               "stringData": {"tls.crt": int.certificate_pem(), "tls.key": int.key().to_pem().to_string()}}),
    );
    s.fake.clear_requests();
    let used =
        ensure(&s.api, &IntermediateSecret::external("default"), &s.policy, None, &[], &s.bundle, now()).await.unwrap();
    assert!(!used.issued && used.warning.is_none());
    assert_eq!(used.chain.authority().serial_hex(), int.serial_hex());
    // Due for renewal: still used, with a warning, and still not written.
    let due = ensure(
        &s.api,
        &IntermediateSecret::external("default"),
        &s.policy,
        None,
        &[],
        &s.bundle,
        now() + Duration::minutes(45),
    )
    .await
    .unwrap();
    let warning = due.warning.expect("a warning that it cannot be renewed");
    assert!(warning.contains("should be replaced") && warning.contains("does not own"), "{warning}");
    // A root rotation switched to a new offline root: the supplied intermediate
    // still works (the old root is still trusted) but is flagged for replacement.
    let new_root = Authority::new_root(&CaSpec::root(Duration::days(3650)), now()).unwrap();
    let rotating = TrustBundle::new(vec![new_root.certificate().clone(), s.root.certificate().clone()]).unwrap();
    let flagged =
        ensure(&s.api, &IntermediateSecret::external("default"), &s.policy, None, &[], &rotating, now()).await.unwrap();
    assert_eq!(flagged.chain.authority().serial_hex(), int.serial_hex());
    let warning = flagged.warning.expect("a warning that it is under the old root");
    assert!(warning.contains("another root than the signing root"), "{warning}");
    assert!(s.fake.writes().is_empty());
}

#[test]
fn policies_parse_durations_and_refuse_nonsense() {
    let p = IntermediatePolicy::from_spec(&IntermediateSpec::default()).unwrap();
    assert_eq!(p.lifetime, Duration::hours(8760));
    assert_eq!(p.renew_before, Duration::hours(720));
    let bad = |d: &str, r: &str| IntermediateSpec { duration: d.into(), renew_before: r.into(), ..Default::default() };
    let late = IntermediatePolicy::from_spec(&bad("1h", "2h")).unwrap_err();
    assert!(matches!(late, IntermediatePolicyError::RenewAfterExpiry { .. }), "{late:?}");
    assert!(late.to_string().contains("shorter"), "{late}");
    let unreadable = IntermediatePolicy::from_spec(&bad("soon", "1h")).unwrap_err();
    assert!(unreadable.to_string().starts_with(r#"intermediate.duration: "soon""#), "{unreadable}");
    let zero = IntermediatePolicy::from_spec(&bad("0s", "1h")).unwrap_err();
    assert_eq!(zero.to_string(), r#"intermediate.duration: "0s": must be positive"#);
}

#[tokio::test]
async fn plugin_ca_meshes_get_istio_cacerts_and_bundle_changes_are_written_through() {
    let s = setup();
    s.fake.namespace("openshift-ingress", json!({}));
    let api: Api<Secret> = Api::namespaced(s.fake.client(), "openshift-ingress");
    let target = IntermediateSecret::cacerts("gateway");
    let first = ensure(&api, &target, &s.policy, Some(&s.root), &[], &s.bundle, now()).await.unwrap();
    assert!(first.issued);
    let secret = api.get("cacerts").await.unwrap();
    let data = secret.data.unwrap();
    let text = |k: &str| String::from_utf8(data[k].0.clone()).unwrap();
    assert_eq!(text("ca-cert.pem"), first.chain.authority().certificate_pem());
    assert_eq!(
        text("cert-chain.pem"),
        format!("{}{}", first.chain.authority().certificate_pem(), s.root.certificate_pem())
    );
    assert_eq!(text("root-cert.pem"), s.bundle.pem());
    // istiod loads it as its plug-in CA: key matches, CA certificate.
    let int = Authority::from_pem(text("ca-cert.pem").as_bytes(), text("ca-key.pem").as_bytes()).unwrap();
    assert_eq!(int.serial_hex(), first.chain.authority().serial_hex());

    // A second root joins the bundle (rotation): the same intermediate, new root-cert.pem.
    let next_root = Authority::new_root(&CaSpec::root(Duration::days(3650)), now()).unwrap();
    let rotated = TrustBundle::new(vec![s.root.certificate().clone(), next_root.certificate().clone()]).unwrap();
    let second = ensure(&api, &target, &s.policy, Some(&s.root), &[], &rotated, now()).await.unwrap();
    assert!(!second.issued);
    assert_eq!(second.chain.authority().serial_hex(), first.chain.authority().serial_hex());
    let data = api.get("cacerts").await.unwrap().data.unwrap();
    assert_eq!(data["root-cert.pem"].0, rotated.pem().as_bytes());
}

#[tokio::test]
async fn a_cacerts_meshroot_does_not_own_is_reported_not_overwritten() {
    let s = setup();
    s.fake.namespace("istio-system", json!({}));
    // Someone's own plug-in CA from another root.
    let theirs = Authority::new_root(&CaSpec::root(Duration::days(30)), now()).unwrap();
    let int = theirs.new_intermediate(&CaSpec::intermediate("x", Duration::days(10)), now()).unwrap();
    s.fake.create(
        "v1",
        "secrets",
        "istio-system",
        json!({"metadata": {"name": "cacerts"}, "stringData": {"ca-cert.pem": int.certificate_pem(), "ca-key.pem": int.key().to_pem().to_string(),
            "root-cert.pem": theirs.certificate_pem(), "cert-chain.pem": int.certificate_pem()}}),
    );
    s.fake.clear_requests();
    let api: Api<Secret> = Api::namespaced(s.fake.client(), "istio-system");
    let e = ensure(&api, &IntermediateSecret::cacerts("m"), &s.policy, Some(&s.root), &[], &s.bundle, now())
        .await
        .unwrap_err();
    assert!(matches!(e, IntermediateError::NotOwned(_)), "{e}");
    assert!(s.fake.writes().is_empty());
}

/// A `cacerts` another tool wrote becomes meshroot's only by its hand-over annotation.
#[tokio::test]
async fn a_foreign_cacerts_is_replaced_once_annotated_for_it() {
    let s = setup();
    s.fake.namespace("istio-system", json!({}));
    s.fake.create(
        "v1",
        "secrets",
        "istio-system",
        json!({"metadata": {"name": "cacerts", "annotations": {"meshroot.io/adopt": "true"}},
               "stringData": {"ca-cert.pem": "left by hand", "ca-key.pem": "x"}}),
    );
    let api: Api<Secret> = Api::namespaced(s.fake.client(), "istio-system");
    let done =
        ensure(&api, &IntermediateSecret::cacerts("m"), &s.policy, Some(&s.root), &[], &s.bundle, now()).await.unwrap();
    assert!(done.issued);
    let secret = api.get("cacerts").await.unwrap();
    assert!(meshroot::k8s::is_managed(secret.metadata.labels.as_ref()));
    assert!(!meshroot::k8s::adoption_requested(secret.metadata.annotations.as_ref()), "the hand-over is done");
    assert!(s.root.issued(done.chain.authority().certificate()));
    // A handed-over Secret holding a usable intermediate (someone else's key) is not kept: meshroot
    // issues its own.
    let theirs = s.root.new_intermediate(&CaSpec::intermediate("m", Duration::minutes(50)), now()).unwrap();
    s.fake.create(
        "v1",
        "secrets",
        "istio-system",
        json!({"metadata": {"name": "other", "annotations": {"meshroot.io/adopt": "true"}},
               "stringData": {"ca-cert.pem": theirs.certificate_pem(), "ca-key.pem": theirs.key().to_pem().to_string(),
                   "cert-chain.pem": theirs.certificate_pem(), "root-cert.pem": s.root.certificate_pem()}}),
    );
    let target = IntermediateSecret { name: "other".into(), ..IntermediateSecret::cacerts("m") };
    let mine = ensure(&api, &target, &s.policy, Some(&s.root), &[], &s.bundle, now()).await.unwrap();
    assert!(mine.issued);
    assert_ne!(mine.chain.authority().serial_hex(), theirs.serial_hex());
}
