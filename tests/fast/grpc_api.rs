//! CreateCertificate over TLS against an in-process dev server: every
//! success path and every rejection path, checked by parsing certificates.

use crate::support;

use meshroot::client::verify_response;
use meshroot::pki::{KeyAlgorithm, PrivateKey};
use prost_types::value::Kind;
use support::*;
use time::OffsetDateTime;
use tonic::Code;
use x509_parser::prelude::{FromDer, X509Certificate};

fn leaf_validity(resp: &meshroot::pb::IstioCertificateResponse) -> (i64, i64) {
    let der = meshroot::pki::pem::decode_certificates(resp.cert_chain[0].as_bytes(), 1 << 16).unwrap();
    let (_, cert) = X509Certificate::from_der(&der[0]).unwrap();
    (cert.validity().not_before.timestamp(), cert.validity().not_after.timestamp())
}

fn ok_headers() -> Vec<(&'static str, String)> {
    vec![("authorization", bearer(DEV_TOKEN)), ("clusterid", "Kubernetes".into())]
}

fn hdrs<'a>(v: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    v.iter().map(|(k, s)| (*k, s.as_str())).collect()
}

#[tokio::test]
async fn every_csr_kind_real_clients_send_is_signed() {
    let ca = start_ca().await;
    let h = ok_headers();
    let cases = [
        ("pilot-agent RSA-2048, O= subject", fixture("csr-rsa2048-sha256.pem")),
        ("RSA-PSS", fixture("csr-rsa2048-pss.pem")),
        ("ztunnel P-256, empty subject", fixture("csr-p256-empty-subject.pem")),
        ("older ztunnel, non-critical SAN", fixture("csr-p256-noncritical-san.pem")),
        ("P-384", fixture("csr-p384.pem")),
        ("Ed25519", fixture("csr-ed25519.pem")),
    ];
    for (name, csr) in cases {
        let meta = metadata(&[("CertSigner", Kind::StringValue(String::new()))]);
        let resp = call(&ca, request(&csr, 0, meta, &hdrs(&h))).await.unwrap_or_else(|s| panic!("{name}: {s:?}"));
        let v = verify_response(&resp, &ca.bundle(), DEFAULT_ID).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(resp.cert_chain.len(), 3, "{name}: [leaf, intermediate, bundle]");
        assert_eq!(v.intermediates.len(), 1);
        assert_eq!(resp.cert_chain[2], String::from_utf8(ca.root_pem()).unwrap(), "{name}");
        assert!(resp.cert_chain.iter().all(|e| e.ends_with('\n')));
    }
}

#[tokio::test]
async fn ttl_defaults_clamps_and_follows_requests() {
    let ca = start_ca_with(|o| o.max_ttl = time::Duration::days(2)).await;
    let h = ok_headers();
    let (_, csr) = csr_for(DEFAULT_ID, KeyAlgorithm::EcdsaP256);
    for (requested, expected) in [
        (0i64, 86_400i64),
        (-5, 86_400),
        (i64::MIN, 86_400),
        (3_600, 3_600),
        (2 * 86_400 + 1, 2 * 86_400),
        (i64::MAX, 2 * 86_400),
    ] {
        let before = OffsetDateTime::now_utc().unix_timestamp();
        let resp = call(&ca, request(&csr, requested, None, &hdrs(&h))).await.unwrap();
        let after = OffsetDateTime::now_utc().unix_timestamp();
        let (nb, na) = leaf_validity(&resp);
        assert!(na - expected >= before && na - expected <= after, "ttl {requested}: lifetime {}", na - nb - 120);
        assert!(nb + 120 >= before && nb + 120 <= after, "NotBefore is back-dated two minutes");
    }
}

#[tokio::test]
async fn cluster_id_may_be_absent_empty_or_the_local_one() {
    let ca = start_ca().await;
    let (_, csr) = csr_for(DEFAULT_ID, KeyAlgorithm::EcdsaP256);
    let t = bearer(DEV_TOKEN);
    for headers in [vec![("authorization", t.as_str())], vec![("authorization", t.as_str()), ("clusterid", "")]] {
        call(&ca, request(&csr, 0, None, &headers)).await.unwrap();
    }
    for bad in [
        vec![("authorization", t.as_str()), ("clusterid", "remote-1")],
        vec![("authorization", t.as_str()), ("clusterid", "Kubernetes"), ("clusterid", "Kubernetes")],
    ] {
        let s = call(&ca, request(&csr, 0, None, &bad)).await.unwrap_err();
        assert_eq!(s.code(), Code::Unauthenticated, "{bad:?}: {s:?}");
    }
}

#[tokio::test]
async fn authentication_failures_are_unauthenticated_and_never_echo_the_token() {
    let ca = start_ca().await;
    let (_, csr) = csr_for(DEFAULT_ID, KeyAlgorithm::EcdsaP256);
    let wrong = bearer("wrong-token-value-123");
    let two = [("authorization", bearer(DEV_TOKEN)), ("authorization", bearer(DEV_TOKEN))];
    let cases: Vec<(&str, Vec<(&'static str, &str)>)> = vec![
        ("no token", vec![]),
        ("unknown token", vec![("authorization", wrong.as_str())]),
        ("Basic scheme", vec![("authorization", "Basic dXNlcjpwYXNz")]),
        ("empty bearer", vec![("authorization", "Bearer ")]),
        ("two authorization headers", two.iter().map(|(k, v)| (*k, v.as_str())).collect()),
    ];
    for (name, headers) in cases {
        let s = call(&ca, request(&csr, 0, None, &headers)).await.unwrap_err();
        assert_eq!(s.code(), Code::Unauthenticated, "{name}: {s:?}");
        assert!(!s.message().contains("wrong-token-value-123") && !s.message().contains(DEV_TOKEN), "{name}");
    }
    // Authentication comes first: an unauthenticated caller learns nothing about its CSR.
    let s = call(&ca, request("garbage", 0, None, &[])).await.unwrap_err();
    assert_eq!(s.code(), Code::Unauthenticated);
}

fn csr_with_names(uris: &[&str], dns: &[&str]) -> String {
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let mut params = rcgen::CertificateParams::default();
    for u in uris {
        params.subject_alt_names.push(rcgen::SanType::URI((*u).try_into().unwrap()));
    }
    for d in dns {
        params.subject_alt_names.push(rcgen::SanType::DnsName((*d).try_into().unwrap()));
    }
    let pair = rcgen::KeyPair::from_pem(&key.to_pem()).unwrap();
    params.serialize_request(&pair).unwrap().pem().unwrap()
}

#[tokio::test]
async fn the_csr_must_ask_for_exactly_the_callers_identity() {
    let ca = start_ca().await;
    let h = ok_headers();
    let other = "spiffe://cluster.local/ns/other/sa/sa1";
    let cases = [
        ("another identity", csr_with_names(&[other], &[])),
        ("another trust domain", csr_with_names(&["spiffe://evil.example/ns/default/sa/default"], &[])),
        ("identity plus a DNS name", csr_with_names(&[DEFAULT_ID], &["evil.example"])),
        ("two URIs", csr_with_names(&[DEFAULT_ID, other], &[])),
        ("no SAN", csr_with_names(&[], &[])),
        ("a CA request with extra SANs", fixture("csr-p256-wants-ca.pem")),
    ];
    for (name, csr) in cases {
        let s = call(&ca, request(&csr, 0, None, &hdrs(&h))).await.unwrap_err();
        assert_eq!(s.code(), Code::Unauthenticated, "{name}: {s:?}");
        assert!(s.message().starts_with("not authorized"), "{name}: {}", s.message());
    }
    // The other caller gets its own identity.
    let (_, csr) = csr_for(other, KeyAlgorithm::EcdsaP256);
    let resp = call(&ca, request(&csr, 0, None, &[("authorization", &bearer(OTHER_TOKEN))])).await.unwrap();
    verify_response(&resp, &ca.bundle(), other).unwrap();
}

#[tokio::test]
async fn malformed_csrs_are_invalid_argument_with_a_clear_message() {
    let ca = start_ca().await;
    let h = ok_headers();
    let (_, good) = csr_for(DEFAULT_ID, KeyAlgorithm::EcdsaP256);
    // Two tampers that keep the DER well formed, so only the signature can
    // tell: the last byte of the signature (the identity asked for is the
    // caller's own), and one letter of the SPIFFE ID the signature covers.
    let der = meshroot::pki::pem::decode_one(good.as_bytes(), "CERTIFICATE REQUEST", 1 << 16).unwrap().to_vec();
    let mut bad_signature = der.clone();
    *bad_signature.last_mut().unwrap() ^= 0x01;
    let mut bad_san = der.clone();
    let at = bad_san.windows(DEFAULT_ID.len()).position(|w| w == DEFAULT_ID.as_bytes()).unwrap();
    bad_san[at + DEFAULT_ID.len() - 1] = b'x'; // .../sa/default -> .../sa/defaulx
    for tampered in [&bad_signature, &bad_san] {
        let (_, parsed) = x509_parser::certification_request::X509CertificationRequest::from_der(tampered).unwrap();
        assert!(parsed.verify_signature().is_err(), "the tamper must break only the signature");
    }
    let pem = |der: &[u8]| meshroot::pki::pem::encode("CERTIFICATE REQUEST", der);
    let cases = [
        ("garbage", "not a csr".to_string(), "PEM"),
        ("truncated", good[..good.len() / 2].to_string(), "PEM"),
        ("private key", fixture("k-p256.pem"), "expected PEM label"),
        ("two CSRs", format!("{good}{good}"), "exactly one PEM block"),
        ("SHA-1", fixture("csr-rsa2048-sha1.pem"), "SHA-1"),
        ("RSA-1024", fixture("csr-rsa1024.pem"), "1024 bits"),
        ("DSA", fixture("csr-dsa.pem"), "DSA"),
        ("P-521", fixture("csr-p521.pem"), "P-521"),
        ("tampered signature", pem(&bad_signature), "CSR signature does not verify"),
        ("tampered SAN", pem(&bad_san), "CSR signature does not verify"),
        ("oversized", format!("{good}{}", " ".repeat(70_000)), "over the limit"),
    ];
    for (name, csr, mention) in cases {
        let s = call(&ca, request(&csr, 0, None, &hdrs(&h))).await.unwrap_err();
        assert_eq!(s.code(), Code::InvalidArgument, "{name}: {s:?}");
        assert!(s.message().starts_with("invalid CSR: ") && s.message().contains(mention), "{name}: {}", s.message());
    }
    // A message over the transport limit is refused without reaching the handler.
    let huge = "A".repeat(200 * 1024);
    let s = call(&ca, request(&huge, 0, None, &hdrs(&h))).await.unwrap_err();
    assert_ne!(s.code(), Code::Ok);
    // And the server is still healthy.
    call(&ca, request(&good, 0, None, &hdrs(&h))).await.unwrap();
}

#[tokio::test]
async fn trusted_node_accounts_may_impersonate_within_the_trust_domain() {
    let ca = start_ca().await;
    let zt = [("authorization", bearer(ZTUNNEL_TOKEN)), ("clusterid", "Kubernetes".into())];
    let (_, csr) = csr_for(DEFAULT_ID, KeyAlgorithm::EcdsaP256);
    let imp = |id: &str| metadata(&[("ImpersonatedIdentity", Kind::StringValue(id.into()))]);
    let resp = call(&ca, request(&csr, 0, imp(DEFAULT_ID), &hdrs(&zt))).await.unwrap();
    verify_response(&resp, &ca.bundle(), DEFAULT_ID).unwrap();

    // An empty ImpersonatedIdentity means none: ztunnel's own identity.
    let own = "spiffe://cluster.local/ns/istio-system/sa/ztunnel";
    let (_, own_csr) = csr_for(own, KeyAlgorithm::EcdsaP256);
    let resp = call(&ca, request(&own_csr, 0, imp(""), &hdrs(&zt))).await.unwrap();
    verify_response(&resp, &ca.bundle(), own).unwrap();

    let refusals = [
        (
            "CSR for a different identity",
            csr.clone(),
            imp("spiffe://cluster.local/ns/other/sa/sa1"),
            Code::Unauthenticated,
        ),
        (
            "other trust domain",
            csr_for("spiffe://other.td/ns/default/sa/default", KeyAlgorithm::EcdsaP256).1,
            imp("spiffe://other.td/ns/default/sa/default"),
            Code::Unauthenticated,
        ),
        ("not an Istio identity", csr.clone(), imp("spiffe://cluster.local/foo"), Code::Unauthenticated),
        ("not a SPIFFE ID", csr.clone(), imp("https://cluster.local/ns/a/sa/b"), Code::Unauthenticated),
        (
            "non-string metadata",
            csr.clone(),
            metadata(&[("ImpersonatedIdentity", Kind::NumberValue(3.0))]),
            Code::InvalidArgument,
        ),
    ];
    for (name, csr, meta, code) in refusals {
        let s = call(&ca, request(&csr, 0, meta, &hdrs(&zt))).await.unwrap_err();
        assert_eq!(s.code(), code, "{name}: {s:?}");
    }
    // A caller that is not a trusted node account may not impersonate at all.
    let s = call(&ca, request(&csr, 0, imp(DEFAULT_ID), &hdrs(&ok_headers()))).await.unwrap_err();
    assert_eq!(s.code(), Code::Unauthenticated);
    assert!(s.message().contains("may not impersonate"), "{}", s.message());
}

#[tokio::test]
async fn metrics_count_requests_the_way_istiod_does() {
    let ca = start_ca().await;
    let (_, csr) = csr_for(DEFAULT_ID, KeyAlgorithm::EcdsaP256);
    call(&ca, request(&csr, 0, None, &hdrs(&ok_headers()))).await.unwrap();
    call(&ca, request(&csr, 0, None, &[])).await.unwrap_err();
    call(&ca, request("junk", 0, None, &hdrs(&ok_headers()))).await.unwrap_err();
    let m = &ca.server.metrics;
    assert_eq!(m.csr_count.get(), 3);
    assert_eq!(m.success_cert_issuance_count.get(), 1);
    assert_eq!(m.authentication_failure_count.get(), 1);
    assert_eq!(m.csr_parsing_err_count.get(), 1);
    let text = http_get(ca.server.ops_addr, "/metrics").await;
    assert!(text.contains("citadel_server_csr_count 3"), "{text}");
    assert!(text.contains("citadel_server_csr_sign_err_count{error=\"CSR_ERROR\"} 1"), "{text}");
    assert!(http_get(ca.server.ops_addr, "/readyz").await.contains("ready"));
    assert!(http_get(ca.server.ops_addr, "/healthz").await.contains("ok"));
}

#[tokio::test]
async fn a_workload_renews_with_its_current_certificate_and_no_token() {
    let ca = start_ca().await;
    let (key, csr) = csr_for(DEFAULT_ID, KeyAlgorithm::EcdsaP256);
    let first = call(&ca, request(&csr, 3600, None, &hdrs(&ok_headers()))).await.unwrap();
    let chain_pem = first.cert_chain[..first.cert_chain.len() - 1].concat();
    let mut renewing = client_with_identity(&ca, &chain_pem, &key.to_pem()).await.unwrap();
    let (_, new_csr) = csr_for(DEFAULT_ID, KeyAlgorithm::EcdsaP256);
    let renewed = renewing
        .create_certificate(request(&new_csr, 3600, None, &[("clusterid", "Kubernetes")]))
        .await
        .unwrap()
        .into_inner();
    verify_response(&renewed, &ca.bundle(), DEFAULT_ID).unwrap();
    // The certificate authenticates only its own identity.
    let (_, other_csr) = csr_for("spiffe://cluster.local/ns/other/sa/sa1", KeyAlgorithm::EcdsaP256);
    let s = renewing.create_certificate(request(&other_csr, 0, None, &[])).await.unwrap_err();
    assert_eq!(s.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn client_certificates_from_elsewhere_are_refused() {
    let ca = start_ca().await;
    let (_, csr) = csr_for(DEFAULT_ID, KeyAlgorithm::EcdsaP256);
    // On this same server, a genuine workload certificate does authenticate
    // (no token): the refusals below are not a mutual TLS broken for everyone.
    let (key, own_csr) = csr_for(DEFAULT_ID, KeyAlgorithm::EcdsaP256);
    let first = call(&ca, request(&own_csr, 3600, None, &hdrs(&ok_headers()))).await.unwrap();
    let chain_pem = first.cert_chain[..first.cert_chain.len() - 1].concat();
    let mut genuine = client_with_identity(&ca, &chain_pem, &key.to_pem()).await.unwrap();
    let renewed = genuine.create_certificate(request(&csr, 0, None, &[])).await.unwrap().into_inner();
    verify_response(&renewed, &ca.bundle(), DEFAULT_ID).unwrap();

    // A certificate for the same identity from an unrelated root (with the
    // same name as ours): the server refuses it in the handshake, with a TLS
    // alert (its signature does not verify under our root).
    let other = meshroot::pki::Authority::new_root(
        &meshroot::pki::CaSpec::root(time::Duration::days(1)),
        OffsetDateTime::now_utc(),
    )
    .unwrap();
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let leaf = meshroot::pki::profile::issue_workload(
        &other,
        &key.spki_der(),
        DEFAULT_ID,
        time::Duration::hours(1),
        OffsetDateTime::now_utc(),
    )
    .unwrap();
    let refusal = match client_with_identity(&ca, &leaf.pem, &key.to_pem()).await {
        Err(e) => format!("{e:?}"),
        Ok(mut c) => format!("{:?}", c.create_certificate(request(&csr, 0, None, &[])).await.unwrap_err()),
    };
    assert!(
        ["DecryptError", "UnknownCA", "BadCertificate"]
            .iter()
            .any(|alert| refusal.contains(&format!("received fatal alert: {alert}"))),
        "{refusal}"
    );
    // The server's own serving certificate chains to the root but is no
    // client certificate: refused in the handshake, as its extended key
    // usage lacks clientAuth.
    let serving = std::fs::read_to_string(ca.path("state/serving/tls.crt")).unwrap();
    let serving_key = std::fs::read_to_string(ca.path("state/serving/tls.key")).unwrap();
    let refusal = match client_with_identity(&ca, &serving, &serving_key).await {
        Err(e) => format!("{e:?}"),
        Ok(mut c) => format!("{:?}", c.create_certificate(request(&csr, 0, None, &[])).await.unwrap_err()),
    };
    assert!(refusal.contains("received fatal alert: UnsupportedCertificate"), "{refusal}");
}

#[tokio::test]
async fn an_identity_over_its_rate_limit_is_resource_exhausted_with_a_retry_hint() {
    use meshroot::ca::rate_limit::{Limit, RateLimits};
    let ca = start_ca_with(|o| {
        o.rate_limits = RateLimits { identity: Limit { per_second: 1, burst: 3 }, ..RateLimits::OFF };
    })
    .await;
    let h = ok_headers();
    for _ in 0..3 {
        let (_, csr) = csr_for(DEFAULT_ID, KeyAlgorithm::EcdsaP256);
        call(&ca, request(&csr, 0, None, &hdrs(&h))).await.unwrap();
    }
    let (_, csr) = csr_for(DEFAULT_ID, KeyAlgorithm::EcdsaP256);
    let s = call(&ca, request(&csr, 0, None, &hdrs(&h))).await.unwrap_err();
    assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
    assert!(
        s.message()
            .starts_with(&format!("rate limited: identity {DEFAULT_ID} is over its rate limit of 1/s (burst 3)")),
        "{}",
        s.message()
    );
    let hint: u64 = s.metadata().get("grpc-retry-pushback-ms").unwrap().to_str().unwrap().parse().unwrap();
    assert!((1..=1000).contains(&hint), "{hint}");
    // Another identity is not held back by this one.
    let (_, csr) = csr_for("spiffe://cluster.local/ns/other/sa/sa1", KeyAlgorithm::EcdsaP256);
    call(&ca, request(&csr, 0, None, &[("authorization", &bearer(OTHER_TOKEN))])).await.unwrap();
    // And after the hint, the identity is served again.
    tokio::time::sleep(std::time::Duration::from_millis(hint + 50)).await;
    let (_, csr) = csr_for(DEFAULT_ID, KeyAlgorithm::EcdsaP256);
    call(&ca, request(&csr, 0, None, &hdrs(&h))).await.unwrap();
}
