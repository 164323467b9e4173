//! The tenant boundary of the issuer path, as an attacker with `create`
//! rights in one namespace meets it: CertificateRequests, Issuers and
//! Kubernetes CSRs against the fake API. Each test is one way a namespace
//! could otherwise obtain what the mesh, istiod or meshroot would accept as
//! someone else (issue 12, items 1 and 3 to 7).

use crate::support;

use base64::Engine as _;
use meshroot::pki::pem;
use serde_json::{Value, json};
use support::issuers::{CSR_API, IssuerWorld, cluster_ref, condition, decode_b64, issuer_ref};
use support::openssl;
use x509_parser::prelude::{FromDer, X509Certificate};

const ISTIOD_ID: &str = "spiffe://cluster.local/ns/istio-system/sa/istiod";

/// A world with one mesh (trust domain cluster.local, istiod in
/// istio-system) that grants its intermediate to the Issuers of `granted`.
fn world(granted: &[&str]) -> IssuerWorld {
    let world = IssuerWorld::start();
    world.add_mesh_granting("default", granted);
    world
}

fn csr(world: &IssuerWorld, subject: &str, exts: &[&str]) -> String {
    let key = openssl::key(world.dir.path(), "p256");
    openssl::csr(world.dir.path(), &key, subject, exts, false)
}

fn message(cr: &Value) -> String {
    condition(cr, "Ready").and_then(|c| c["message"].as_str().map(String::from)).unwrap_or_default()
}

fn invalid_reason(cr: &Value) -> String {
    condition(cr, "InvalidRequest").and_then(|c| c["reason"].as_str().map(String::from)).unwrap_or_default()
}

/// Requests, approves and waits until the request is Failed; returns it.
async fn refused(world: &IssuerWorld, ns: &str, name: &str, csr: &str, issuer: Value, spec: Value) -> Value {
    world.request(ns, name, csr, issuer, spec);
    world.decide(ns, name, true);
    let cr = world.wait_ready_reason(ns, name, "Failed").await;
    assert!(cr["status"]["certificate"].is_null(), "{name}: a refused request carries no certificate");
    cr
}

fn leaf_of(cr: &Value) -> X509Certificate<'static> {
    let chain = decode_b64(&cr["status"]["certificate"]);
    let der = pem::decode_certificates(chain.as_bytes(), 1 << 20).unwrap().remove(0);
    let der: &'static [u8] = Box::leak(der.as_ref().to_vec().into_boxed_slice());
    X509Certificate::from_der(der).unwrap().1
}

/// Item 1: the documented `mesh-root` example (root, allowCA) gave any
/// namespace an unconstrained CA under the root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_gets_no_ca_from_a_cluster_issuer_that_does_not_serve_it() {
    let world = world(&[]);
    let ca_spec = json!({"isCA": true, "usages": ["digital signature", "key encipherment", "cert sign"]});
    // The old example, verbatim: it serves no namespace at all now.
    world.cluster_issuer("mesh-root", json!({"signer": {"root": true}, "policy": {"allowCA": true}}));
    let issuer = world.wait_issuer_ready("", "mesh-root", "False").await;
    assert_eq!(condition(&issuer, "Ready").unwrap()["reason"], "SignerNotGranted");
    let ca_csr = csr(&world, "/CN=tenant-ca", &["basicConstraints=critical,CA:TRUE"]);
    world.request("apps", "ca", &ca_csr, cluster_ref("mesh-root"), ca_spec.clone());
    world.decide("apps", "ca", true);
    let cr = world.wait_ready_reason("apps", "ca", "Pending").await;
    assert!(message(&cr).contains("serves no namespace"), "{}", message(&cr));
    assert!(cr["status"]["certificate"].is_null());

    // Serving istio-system only: apps is refused by name.
    world.cluster_issuer(
        "cacerts",
        json!({"signer": {"root": true}, "allowedNamespaces": ["istio-system"],
               "policy": {"allowCA": true, "allowedCommonNames": ["tenant-ca"]}}),
    );
    let cr = refused(&world, "apps", "ca2", &ca_csr, cluster_ref("cacerts"), ca_spec).await;
    assert_eq!(invalid_reason(&cr), "NamespaceNotAllowed");
    assert!(message(&cr).contains("does not serve namespace \"apps\""), "{}", message(&cr));
}

/// Item 1, the CA a ClusterIssuer may issue: a pathLen and name constraints
/// from its policy, so the CA cannot sign istiod's or anyone else's names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issued_cas_are_name_constrained_to_the_issuers_policy() {
    let world = world(&[]);
    world.cluster_issuer(
        "team-ca",
        json!({"signer": {"root": true}, "allowedNamespaces": ["apps"], "policy": {
            "allowCA": true, "allowedDNSNames": ["*.apps.example.com"], "allowedCommonNames": ["apps CA"]}}),
    );
    let dir = world.dir.path();
    let ca_key = openssl::key(dir, "p256");
    let ca_csr = openssl::csr(dir, &ca_key, "/CN=apps CA", &["basicConstraints=critical,CA:TRUE"], false);
    world.request("apps", "ca", &ca_csr, cluster_ref("team-ca"), json!({"isCA": true}));
    world.decide("apps", "ca", true);
    let cr = world.wait_ready_reason("apps", "ca", "Issued").await;
    let ca = leaf_of(&cr);
    assert_eq!(ca.basic_constraints().unwrap().unwrap().value.path_len_constraint, Some(0));
    let nc = ca.name_constraints().unwrap().expect("an issued CA carries name constraints");
    assert!(nc.critical);

    // openssl honours them: a leaf for the allowed domain verifies, one for istiod does not.
    let ca_pem = decode_b64(&cr["status"]["certificate"]);
    let ca_key_pem = std::fs::read_to_string(&ca_key).unwrap();
    let leaf_key = openssl::key(dir, "p256");
    let ok = openssl::sign_leaf(dir, &ca_pem, &ca_key_pem, &leaf_key, "DNS:web.apps.example.com");
    openssl::verify(dir, &world.root_pem(), &ca_pem, &ok).unwrap();
    let any_ip = "IP:10.96.0.10";
    for san in ["DNS:istiod.istio-system.svc", "DNS:meshroot.meshroot.svc", &format!("URI:{ISTIOD_ID}"), any_ip] {
        let evil = openssl::sign_leaf(dir, &ca_pem, &ca_key_pem, &leaf_key, san);
        let e = openssl::verify(dir, &world.root_pem(), &ca_pem, &evil).unwrap_err();
        assert!(e.contains("subtree") || e.contains("name constraint"), "{san}: {e}");
    }

    // A CA whose constraint would cover istiod's names is not issued at all.
    world.cluster_issuer(
        "svc-ca",
        json!({"signer": {"root": true}, "allowedNamespaces": ["apps"], "policy": {
            "allowCA": true, "allowedDNSNames": ["**.svc"], "allowedCommonNames": ["apps CA"]}}),
    );
    let cr = refused(&world, "apps", "svc-ca", &ca_csr, cluster_ref("svc-ca"), json!({"isCA": true})).await;
    assert_eq!(invalid_reason(&cr), "PolicyViolation");
    assert!(message(&cr).contains("in-cluster Service names"), "{}", message(&cr));
}

/// Item 3: a namespaced Issuer could sign with the root or any mesh's intermediate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespaced_issuer_signs_only_with_what_its_namespace_is_granted() {
    let world = world(&["team-a"]);
    world.fake.namespace("team-a", json!({}));
    // The cluster's DNS completes `reviews.bookinfo` to bookinfo's Service because that namespace exists.
    world.fake.namespace("bookinfo", json!({}));
    let uri_csr = csr(&world, "/", &[&format!("subjectAltName=URI:{ISTIOD_ID}")]);
    for (name, spec, why) in [
        (
            "with-root",
            json!({"signer": {"root": true}, "policy": {"allowCA": true, "allowedURIs": [ISTIOD_ID]}}),
            "may not sign with the root",
        ),
        (
            "with-mesh",
            json!({"signer": {"mesh": "default"}, "policy": {"allowedURIs": [ISTIOD_ID]}}),
            "does not grant its intermediate to namespace \"apps\"",
        ),
    ] {
        world.issuer("apps", name, spec);
        let issuer = world.wait_issuer_ready("apps", name, "False").await;
        let ready = condition(&issuer, "Ready").unwrap();
        assert_eq!(ready["reason"], "SignerNotGranted", "{name}");
        assert!(ready["message"].as_str().unwrap().contains(why), "{name}: {ready}");
        world.request("apps", name, &uri_csr, issuer_ref(name), json!({}));
        world.decide("apps", name, true);
        let cr = world.wait_ready_reason("apps", name, "Pending").await;
        assert!(cr["status"]["certificate"].is_null(), "{name} signed nothing");
    }
    // A granted namespace may not issue CAs with a namespaced Issuer either.
    world.issuer("team-a", "ca", json!({"signer": {"mesh": "default"}, "policy": {"allowCA": true}}));
    let issuer = world.wait_issuer_ready("team-a", "ca", "False").await;
    assert!(condition(&issuer, "Ready").unwrap()["message"].as_str().unwrap().contains("only a ClusterIssuer may"));
    // And its ordinary Issuer works, but only for its own namespace, whatever
    // its policy lists "literally": its author is the tenant.
    world.issuer(
        "team-a",
        "web",
        json!({"signer": {"mesh": "default"}, "policy": {
            "allowedDNSNames": ["*.team-a.svc", "istiod.istio-system.svc", "meshroot.meshroot.svc", "reviews.bookinfo.svc",
                "reviews.bookinfo", "reviews"],
            "allowedURIs": ["spiffe://cluster.local", ISTIOD_ID, "spiffe://cluster.local/ns/team-a/sa/web",
                "spiffe://other.example/ns/team-a/sa/web"]}}),
    );
    world.wait_issuer_ready("team-a", "web", "True").await;
    for (name, san, why) in [
        ("istiod-id", format!("URI:{ISTIOD_ID}"), "never grants identities of another namespace"),
        ("istiod-dns", "DNS:istiod.istio-system.svc".into(), "a namespaced Issuer never grants it"),
        ("meshroot-dns", "DNS:meshroot.meshroot.svc".into(), "a namespaced Issuer never grants it"),
        ("other-service", "DNS:reviews.bookinfo.svc".into(), "Service or pod name of namespace \"bookinfo\""),
        ("short-service", "DNS:reviews.bookinfo".into(), "Service or pod name of namespace \"bookinfo\""),
        ("bare-service", "DNS:reviews".into(), "has one label"),
        (
            "other-trust-domain",
            "URI:spiffe://other.example/ns/team-a/sa/web".into(),
            "only in the trust domain of the mesh it signs with, \"cluster.local\"",
        ),
    ] {
        let c = csr(&world, "/", &[&format!("subjectAltName={san}")]);
        let cr = refused(&world, "team-a", name, &c, issuer_ref("web"), json!({})).await;
        assert!(message(&cr).contains(why), "{name}: {}", message(&cr));
    }
    let own = csr(&world, "/", &["subjectAltName=DNS:web.team-a.svc,URI:spiffe://cluster.local/ns/team-a/sa/web"]);
    world.request("team-a", "own", &own, issuer_ref("web"), json!({}));
    world.decide("team-a", "own", true);
    world.wait_ready_reason("team-a", "own", "Issued").await;
}

/// Items 3 and 4: protected identities need a literal grant; a glob never
/// reaches istiod's SPIFFE ID, istiod's DNS names or meshroot's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protected_identities_need_a_literal_grant() {
    let world = world(&[]);
    world.cluster_issuer(
        "open",
        json!({"signer": {"mesh": "default"}, "allowedNamespaces": ["apps"], "policy": {
            "allowedDNSNames": ["**.svc", "**.svc.cluster.local"], "allowedURIs": ["spiffe://cluster.local/**"]}}),
    );
    for (name, san, protected) in [
        ("istiod-id", format!("URI:{ISTIOD_ID}"), ISTIOD_ID),
        ("istiod-dns", "DNS:istiod.istio-system.svc".into(), "istiod.istio-system.svc"),
        ("istiod-fqdn", "DNS:istiod.istio-system.svc.cluster.local".into(), "istiod.istio-system.svc.cluster.local"),
        ("meshroot-dns", "DNS:meshroot.meshroot.svc".into(), "meshroot.meshroot.svc"),
        ("wildcard", "DNS:*.istio-system.svc".into(), "*.istio-system.svc"),
        ("workload", "URI:spiffe://cluster.local/ns/bookinfo/sa/reviews".into(), "bookinfo/sa/reviews"),
    ] {
        let c = csr(&world, "/", &[&format!("subjectAltName={san}")]);
        let cr = refused(&world, "apps", name, &c, cluster_ref("open"), json!({})).await;
        assert_eq!(invalid_reason(&cr), "PolicyViolation", "{name}");
        let m = message(&cr);
        assert!(m.contains(protected) && m.contains("is protected") && m.contains("literal"), "{name}: {m}");
    }
    // The common name is checked like a DNS name.
    let c = csr(&world, "/CN=istiod.istio-system.svc", &["subjectAltName=DNS:web.apps.svc"]);
    let cr = refused(&world, "apps", "cn", &c, cluster_ref("open"), json!({})).await;
    assert!(message(&cr).contains("common name \"istiod.istio-system.svc\" is protected"), "{}", message(&cr));

    // Granted literally, by a ClusterIssuer a cluster admin wrote: issued.
    world.cluster_issuer(
        "istiod",
        json!({"signer": {"mesh": "default"}, "allowedNamespaces": ["istio-system"], "policy": {
            "allowedDNSNames": ["istiod.istio-system.svc"], "allowedURIs": [ISTIOD_ID]}}),
    );
    let c = csr(&world, "/", &[&format!("subjectAltName=DNS:istiod.istio-system.svc,URI:{ISTIOD_ID}")]);
    world.request("istio-system", "literal", &c, cluster_ref("istiod"), json!({}));
    world.decide("istio-system", "literal", true);
    world.wait_ready_reason("istio-system", "literal", "Issued").await;
}

/// Item 5: policies deny by default, subject attributes included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_san_kind_and_subject_attribute_must_be_allowed() {
    let world = world(&[]);
    world.cluster_issuer(
        "web",
        json!({"signer": {"root": true}, "allowedNamespaces": ["apps"], "policy": {
            "allowedDNSNames": ["*.apps.example.com"], "allowedEmails": ["*@example.com"],
            "allowedUsages": ["digital signature", "key encipherment", "server auth"]}}),
    );
    let c = csr(
        &world,
        "/",
        &["subjectAltName=DNS:a.apps.example.com,IP:10.0.0.1,email:x@example.com,URI:https://evil.example/"],
    );
    let cr = refused(&world, "apps", "kinds", &c, cluster_ref("web"), json!({})).await;
    let m = message(&cr);
    for part in ["IP address 10.0.0.1 is not in policy.allowedIPRanges", "URI \"https://evil.example/\""] {
        assert!(m.contains(part), "missing {part:?} in {m}");
    }
    let c = csr(&world, "/O=Evil Corp/emailAddress=ceo@evil.org", &["subjectAltName=DNS:a.apps.example.com"]);
    let cr = refused(&world, "apps", "subject", &c, cluster_ref("web"), json!({})).await;
    let m = message(&cr);
    assert!(m.contains("subject attribute O=\"Evil Corp\" is not allowed"), "{m}");
    assert!(m.contains("subject emailAddress \"ceo@evil.org\" is not allowed by policy.allowedEmails"), "{m}");
}

/// Item 6: the RFC 5280 profile, whatever the policy says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issued_certificates_keep_the_rfc_5280_profile() {
    let world = world(&[]);
    let root_cn = world.root.subject().to_string();
    world.cluster_issuer(
        "lax",
        json!({"signer": {"root": true}, "allowedNamespaces": ["apps"], "policy": {
            "allowedDNSNames": ["**.example.com"], "allowedCommonNames": ["*"],
            "allowedSubjectAttributes": {"O": ["*"]},
            "allowedUsages": ["digital signature", "key encipherment", "cert sign", "server auth"]}}),
    );
    let dns = ["subjectAltName=DNS:a.example.com"];
    let c = csr(&world, "/", &dns);
    let cr = refused(
        &world,
        "apps",
        "cert-sign-leaf",
        &c,
        cluster_ref("lax"),
        json!({"usages": ["digital signature", "cert sign"]}),
    )
    .await;
    assert!(message(&cr).contains("keyCertSign only with CA:TRUE"), "{}", message(&cr));
    for (name, usage) in [("any", "any"), ("ocsp", "ocsp signing")] {
        let cr = refused(&world, "apps", name, &c, cluster_ref("lax"), json!({"usages": ["digital signature", usage]}))
            .await;
        assert!(message(&cr).contains("usages"), "{name}: {}", message(&cr));
    }
    // A leaf named like the root.
    let subject = format!("/{}", root_cn.replace(", ", "/"));
    let c = csr(&world, &subject, &dns);
    let cr = refused(&world, "apps", "root-name", &c, cluster_ref("lax"), json!({})).await;
    assert!(message(&cr).contains("is the name of a CA in the signing chain"), "{}", message(&cr));
    // What is issued has distinct serials, no keyCertSign, no anyEKU or OCSPSigning.
    let mut serials = Vec::new();
    let good = csr(&world, "/", &dns);
    for i in 0..3 {
        let name = format!("good-{i}");
        world.request("apps", &name, &good, cluster_ref("lax"), json!({}));
        world.decide("apps", &name, true);
        let cr = world.wait_ready_reason("apps", &name, "Issued").await;
        let leaf = leaf_of(&cr);
        assert!(!leaf.key_usage().unwrap().unwrap().value.key_cert_sign());
        assert!(leaf.extended_key_usage().unwrap().is_none_or(|e| !e.value.any && !e.value.ocsp_signing));
        serials.push(leaf.raw_serial().to_vec());
    }
    serials.sort();
    serials.dedup();
    assert_eq!(serials.len(), 3, "serials are unique");
}

/// Item 7: an absurd duration fails the one CSR, and signing goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absurd_csr_duration_fails_that_csr_alone() {
    let world = world(&[]);
    world.cluster_issuer(
        "root",
        json!({"signer": {"root": true}, "allowedNamespaces": ["*"], "policy": {"allowedDNSNames": ["**.example.com"]}}),
    );
    let c = csr(&world, "/", &["subjectAltName=DNS:a.example.com"]);
    let create = |name: &str, annotations: Value| {
        world.fake.create(
            CSR_API,
            "certificatesigningrequests",
            "",
            json!({"metadata": {"name": name, "annotations": annotations}, "spec": {
                "request": base64::engine::general_purpose::STANDARD.encode(&c),
                "signerName": "clusterissuers.meshroot.io/root",
                "usages": ["digital signature", "key encipherment"],
                "username": "system:serviceaccount:apps:builder"}}),
        );
        world.fake.set_status(
            CSR_API,
            "certificatesigningrequests",
            "",
            name,
            json!({"conditions": [{"type": "Approved", "status": "True", "reason": "Test", "message": "ok",
                                   "lastUpdateTime": "2026-01-01T00:00:00Z"}]}),
        );
    };
    create("poison", json!({"experimental.cert-manager.io/request-duration": "8000y"}));
    create("after", json!({}));
    let failed = support::eventually("the poison CSR fails", || {
        let obj = world.fake.get(CSR_API, "certificatesigningrequests", "", "poison")?;
        obj["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == "Failed").cloned()
    })
    .await;
    assert_eq!(failed["reason"], "InvalidDuration");
    assert!(failed["message"].as_str().unwrap().contains("100 years"), "{failed}");
    support::eventually("the next CSR is signed", || {
        let obj = world.fake.get(CSR_API, "certificatesigningrequests", "", "after")?;
        obj["status"]["certificate"].is_string().then_some(())
    })
    .await;
}

/// The issuer path's hostile-input matrix: each request fails alone with a
/// short, printable reason, and the issuer keeps signing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_certificate_requests_fail_cleanly() {
    let world = world(&[]);
    world.cluster_issuer(
        "web",
        json!({"signer": {"root": true}, "allowedNamespaces": ["apps"], "policy": {
            "allowedDNSNames": ["*.example.com"], "allowedCommonNames": ["*"]}}),
    );
    let dns = ["subjectAltName=DNS:a.example.com"];
    let good = csr(&world, "/", &dns);
    let many: String = (0..2000).map(|i| format!("DNS:h{i}.evil.org")).collect::<Vec<_>>().join(",");
    // openssl refuses attributes over 64 characters; rcgen writes what it is given.
    let long_ou = {
        let key = meshroot::pki::PrivateKey::generate(meshroot::pki::KeyAlgorithm::EcdsaP256).unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["a.example.com".to_string()]).unwrap();
        params.distinguished_name.push(rcgen::DnType::OrganizationalUnitName, "x\n".repeat(4000));
        params.serialize_request(&key).unwrap().pem().unwrap()
    };
    let cases: Vec<(&str, String, Value, &str)> = vec![
        ("years-8000", good.clone(), json!({"duration": "8000y"}), "InvalidDuration"),
        ("negative", good.clone(), json!({"duration": "-1h"}), "InvalidDuration"),
        ("overflow", good.clone(), json!({"duration": "99999999999999999999h"}), "InvalidDuration"),
        ("exponent", good.clone(), json!({"duration": "1e3h"}), "InvalidDuration"),
        ("2000-names", csr(&world, "/", &[&format!("subjectAltName={many}")]), json!({}), "PolicyViolation"),
        ("long-ou", long_ou, json!({}), "PolicyViolation"),
        ("unknown-usage", good.clone(), json!({"usages": ["flying\u{0}"]}), "InvalidRequest"),
        ("pem-garbage", "-----BEGIN CERTIFICATE REQUEST-----\n\u{1b}[31m\n".into(), json!({}), "InvalidRequest"),
    ];
    for (name, c, spec, _) in &cases {
        world.request("apps", name, c, cluster_ref("web"), spec.clone());
        world.decide("apps", name, true);
    }
    for (name, _, _, reason) in &cases {
        let cr = world.wait_ready_reason("apps", name, "Failed").await;
        assert_eq!(invalid_reason(&cr), *reason, "{name}: {}", message(&cr));
        let m = message(&cr);
        assert!(m.len() <= 4096, "{name}: a {} byte message", m.len());
        assert!(!m.chars().any(char::is_control), "{name}: {m:?}");
    }
    world.request("apps", "after", &good, cluster_ref("web"), json!({}));
    world.decide("apps", "after", true);
    world.wait_ready_reason("apps", "after", "Issued").await;
}
