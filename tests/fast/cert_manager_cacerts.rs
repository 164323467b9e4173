//! The cert-manager approach to Istio `cacerts`, end to end: one
//! ClusterIssuer signing with the root issues an intermediate for
//! istio-system and one for openshift-ingress. Each resulting Secret
//! (`tls.crt`, `tls.key`, `ca.crt`) works as Istio `cacerts`, and leaves
//! from either mesh verify against the other's `ca.crt`.

use crate::support;

use meshroot::pki::{Authority, KeyAlgorithm, PrivateKey, SigningChain, TrustBundle, pem};
use serde_json::json;
use support::issuers::{IssuerWorld, cluster_ref, decode_b64};
use support::openssl;
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

/// What cert-manager writes into the `cacerts` Secret from a request.
struct CaCerts {
    tls_crt: String,
    tls_key: String,
    ca_crt: String,
}

async fn issue_intermediate(world: &IssuerWorld, namespace: &str) -> CaCerts {
    let dir = world.dir.path();
    let key = openssl::key(dir, "p256");
    let csr = openssl::csr(dir, &key, &format!("/O=Istio/CN=Intermediate CA {namespace}"), &[], false);
    let spec =
        json!({"isCA": true, "duration": "8760h", "usages": ["digital signature", "key encipherment", "cert sign"]});
    world.request(namespace, "cacerts", &csr, cluster_ref("mesh-root"), spec);
    world.decide(namespace, "cacerts", true);
    let cr = world.wait_ready_reason(namespace, "cacerts", "Issued").await;
    CaCerts {
        tls_crt: decode_b64(&cr["status"]["certificate"]),
        tls_key: std::fs::read_to_string(key).unwrap(),
        ca_crt: decode_b64(&cr["status"]["ca"]),
    }
}

/// Loads a `cacerts` Secret as istiod does: the CA from `tls.crt` and
/// `tls.key`, the root from `ca.crt`, and proves the chain.
fn as_istio_ca(c: &CaCerts) -> SigningChain {
    let mut chain = pem::decode_certificates(c.tls_crt.as_bytes(), 1 << 20).unwrap();
    let ca_cert = chain.remove(0);
    let authority = Authority::from_pem(pem::encode_certificate(&ca_cert).as_bytes(), c.tls_key.as_bytes()).unwrap();
    SigningChain::new(authority, chain, TrustBundle::from_pem(c.ca_crt.as_bytes()).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intermediates_from_one_cluster_issuer_work_as_istio_cacerts_for_two_meshes() {
    let world = IssuerWorld::start();
    world.cluster_issuer(
        "mesh-root",
        json!({"signer": {"root": true}, "allowedNamespaces": ["istio-system", "openshift-ingress"], "policy": {
            "allowCA": true,
            "allowedURIs": ["spiffe://cluster.local"],
            "allowedCommonNames": ["Intermediate CA *"],
            "allowedSubjectAttributes": {"O": ["Istio"]},
        }}),
    );
    let system = issue_intermediate(&world, "istio-system").await;
    let ingress = issue_intermediate(&world, "openshift-ingress").await;

    for c in [&system, &ingress] {
        assert_eq!(c.ca_crt, world.root_pem(), "ca.crt is the root, as Istio's root-cert.pem must be");
        let certs = pem::decode_certificates(c.tls_crt.as_bytes(), 1 << 20).unwrap();
        assert_eq!(certs.len(), 1, "tls.crt is the intermediate; the root is not repeated");
        let (_, cert) = X509Certificate::from_der(certs[0].as_ref()).unwrap();
        let bc = cert.basic_constraints().unwrap().unwrap().value;
        assert!(bc.ca);
        assert_eq!(bc.path_len_constraint, Some(0), "the intermediate signs only workloads");
        assert!(cert.key_usage().unwrap().unwrap().value.key_cert_sign());
        assert!(cert.validity().not_after.to_datetime() <= world.root.not_after());
    }

    // istiod in each namespace signs a workload with its cacerts.
    let system_ca = as_istio_ca(&system);
    let ingress_ca = as_istio_ca(&ingress);
    let now = OffsetDateTime::now_utc();
    let workload_key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let from_system = system_ca
        .issue_workload(
            &workload_key.spki_der(),
            "spiffe://cluster.local/ns/bookinfo/sa/reviews",
            time::Duration::hours(1),
            now,
        )
        .unwrap();
    let gateway_key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let from_ingress = ingress_ca
        .issue_workload(
            &gateway_key.spki_der(),
            "spiffe://cluster.local/ns/openshift-ingress/sa/gateway",
            time::Duration::hours(1),
            now,
        )
        .unwrap();

    // Each verifies against the other mesh's ca.crt (one root for both).
    let dir = world.dir.path();
    openssl::verify(dir, &ingress.ca_crt, &system.tls_crt, &from_system.pem).unwrap();
    openssl::verify(dir, &system.ca_crt, &ingress.tls_crt, &from_ingress.pem).unwrap();
    let ingress_bundle = TrustBundle::from_pem(ingress.ca_crt.as_bytes()).unwrap();
    ingress_bundle.verify(&from_system.der, system_ca.ca_path().as_slice(), now).unwrap();

    // And a leaf made by openssl with the Secret's files verifies the same way.
    let key = openssl::key(dir, "p256");
    let leaf = openssl::sign_leaf(dir, &system.tls_crt, &system.tls_key, &key, "URI:spiffe://cluster.local/ns/a/sa/b");
    openssl::verify(dir, &ingress.ca_crt, &system.tls_crt, &leaf).unwrap();
    // A leaf does not verify against a different root.
    let stranger = Authority::new_root(&meshroot::pki::CaSpec::root(time::Duration::days(1)), now).unwrap();
    assert!(openssl::verify(dir, stranger.certificate_pem(), &system.tls_crt, &leaf).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mesh_intermediate_cannot_issue_further_intermediates() {
    let world = IssuerWorld::start();
    world.add_mesh("istio-system");
    world.cluster_issuer(
        "mesh-root",
        json!({"signer": {"mesh": "istio-system"}, "allowedNamespaces": ["apps"],
               "policy": {"allowCA": true, "allowedCommonNames": ["sub-ca"]}}),
    );
    let dir = world.dir.path();
    let key = openssl::key(dir, "p256");
    let csr = openssl::csr(dir, &key, "/CN=sub-ca", &[], false);
    world.request("apps", "sub", &csr, cluster_ref("mesh-root"), json!({"isCA": true}));
    world.decide("apps", "sub", true);
    let cr = world.wait_ready_reason("apps", "sub", "Failed").await;
    let message = support::issuers::condition(&cr, "Ready").unwrap()["message"].as_str().unwrap().to_string();
    assert!(message.contains("cannot issue CA certificates (path length constraint)"), "{message}");
}
