//! istiod's serving certificate against the fake API server.

use fake_apiserver::FakeApi;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use meshroot::api::MeshSpec;
use meshroot::controllers::istiod_tls::{self, IstiodTlsError, ensure};
use meshroot::pki::authority::parse_certificate;
use meshroot::pki::{Authority, CaSpec, SigningChain, TrustBundle, pem};
use serde_json::json;
use time::{Duration, OffsetDateTime};
use x509_parser::extensions::GeneralName;

fn spec(revisions: &[&str]) -> MeshSpec {
    serde_json::from_value(json!({"trustDomain": "cluster.local",
        "istiod": {"namespace": "istio-system", "revisions": revisions, "customHosts": ["istiod.example.com"]}}))
    .unwrap()
}

fn chain() -> SigningChain {
    let root = Authority::new_root(&CaSpec::root(Duration::days(365)), OffsetDateTime::now_utc()).unwrap();
    let int =
        root.new_intermediate(&CaSpec::intermediate("default", Duration::days(90)), OffsetDateTime::now_utc()).unwrap();
    SigningChain::new(int, vec![], TrustBundle::new(vec![root.certificate().clone()]).unwrap()).unwrap()
}

fn setup() -> (FakeApi, Api<Secret>) {
    let fake = FakeApi::new();
    fake.namespace("istio-system", json!({}));
    let api = Api::namespaced(fake.client(), "istio-system");
    (fake, api)
}

#[tokio::test]
async fn istiod_gets_the_names_its_clients_dial_under_the_mesh_intermediate() {
    let (fake, api) = setup();
    let c = chain();
    assert!(ensure(&api, &spec(&["canary"]), &c, OffsetDateTime::now_utc()).await.unwrap());
    let secret = api.get("istiod-tls").await.unwrap();
    let data = secret.data.unwrap();
    assert_eq!(data["ca.crt"].0, c.bundle().pem().as_bytes());
    let certs = pem::decode_certificates(&data["tls.crt"].0, 1 << 20).unwrap();
    assert_eq!(certs.len(), 2, "leaf + intermediate");
    c.bundle().verify_server(&certs[0], &certs[1..], OffsetDateTime::now_utc()).unwrap();
    let leaf = parse_certificate(&certs[0]).unwrap();
    let names = leaf.subject_alternative_name().unwrap().unwrap().value.general_names.clone();
    for want in [
        GeneralName::DNSName("istiod.istio-system.svc"),
        GeneralName::DNSName("istiod-canary.istio-system.svc"),
        GeneralName::DNSName("istiod.example.com"),
        GeneralName::URI("spiffe://cluster.local/ns/istio-system/sa/istiod"),
    ] {
        assert!(names.contains(&want), "{want:?} in {names:?}");
    }
    assert_eq!(names.len(), 4);
    let eku = leaf.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);

    // Nothing to do the second time.
    fake.clear_requests();
    assert!(!ensure(&api, &spec(&["canary"]), &c, OffsetDateTime::now_utc()).await.unwrap());
    assert!(fake.writes().is_empty());
    // A new revision means a new certificate.
    assert!(ensure(&api, &spec(&["canary", "stable"]), &c, OffsetDateTime::now_utc()).await.unwrap());
    assert_eq!(istiod_tls::dns_names(&spec(&["canary", "stable", "default"])).len(), 4);
}

#[tokio::test]
async fn renewed_at_two_thirds_of_its_life_and_after_tampering() {
    let (_fake, api) = setup();
    let c = chain();
    let now = OffsetDateTime::now_utc();
    ensure(&api, &spec(&[]), &c, now).await.unwrap();
    assert!(!ensure(&api, &spec(&[]), &c, now + Duration::days(19)).await.unwrap());
    assert!(ensure(&api, &spec(&[]), &c, now + Duration::days(21)).await.unwrap(), "past 2/3 of 30 days");
    // A tampered key is replaced.
    let mut s = api.get("istiod-tls").await.unwrap();
    s.data.as_mut().unwrap().insert("tls.key".into(), k8s_openapi::ByteString(b"junk".to_vec()));
    api.replace("istiod-tls", &Default::default(), &s).await.unwrap();
    assert!(ensure(&api, &spec(&[]), &c, now + Duration::days(21)).await.unwrap());
}

#[tokio::test]
async fn an_istiod_tls_meshroot_does_not_own_is_left_alone() {
    let (fake, api) = setup();
    fake.create(
        "v1",
        "secrets",
        "istio-system",
        json!({"metadata": {"name": "istiod-tls"}, "stringData": {"tls.crt": "theirs"}}),
    );
    fake.clear_requests();
    let e = ensure(&api, &spec(&[]), &chain(), OffsetDateTime::now_utc()).await.unwrap_err();
    assert!(matches!(e, IstiodTlsError::NotOwned(_)), "{e}");
    assert!(fake.writes().is_empty());
}

/// istio-csr's `istiod-tls` (cert-manager's Secret) is handed over only by its annotation: then
/// meshroot replaces it whole, with its own labels and a certificate under the mesh's chain, and
/// the other tool's annotations (and the hand-over one) are gone.
#[tokio::test]
async fn an_istiod_tls_is_taken_over_only_when_annotated_for_it() {
    let (fake, api) = setup();
    fake.create(
        "v1",
        "secrets",
        "istio-system",
        json!({"metadata": {"name": "istiod-tls", "annotations": {"cert-manager.io/certificate-name": "istiod"}},
               "type": "kubernetes.io/tls", "stringData": {"tls.crt": "istio-csr's", "tls.key": "istio-csr's"}}),
    );
    let c = chain();
    let e = ensure(&api, &spec(&[]), &c, OffsetDateTime::now_utc()).await.unwrap_err();
    assert!(e.to_string().contains("annotate it meshroot.io/adopt=true"), "the refusal says how: {e}");
    // Another value than "true" is not a hand-over.
    let annotate = async |value: &str| {
        let patch = json!({"metadata": {"annotations": {"meshroot.io/adopt": value}}});
        api.patch("istiod-tls", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(patch)).await.unwrap();
    };
    annotate("yes").await;
    assert!(matches!(ensure(&api, &spec(&[]), &c, OffsetDateTime::now_utc()).await, Err(IstiodTlsError::NotOwned(_))));
    annotate("true").await;
    assert!(ensure(&api, &spec(&[]), &c, OffsetDateTime::now_utc()).await.unwrap(), "taken over");
    let secret = api.get("istiod-tls").await.unwrap();
    assert!(meshroot::k8s::is_managed(secret.metadata.labels.as_ref()));
    assert!(secret.metadata.annotations.unwrap_or_default().is_empty(), "the other tool's annotations are gone");
    let certs = pem::decode_certificates(&secret.data.unwrap()["tls.crt"].0, 1 << 20).unwrap();
    assert!(c.authority().issued(&certs[0]), "issued under the mesh's intermediate");
    // From now on it is meshroot's: current, so left as it is.
    assert!(!ensure(&api, &spec(&[]), &c, OffsetDateTime::now_utc()).await.unwrap());
}
