//! cert-manager's issuer conformance cases (test/e2e/suite/conformance),
//! run against meshroot's CertificateRequest controller on the fake API.
//! Keys and CSRs come from openssl; chains are checked with `openssl verify`
//! and certificates by parsing them.

use crate::support;

use meshroot::pki::pem;
use rustls_pki_types::CertificateDer;
use serde_json::{Value, json};
use std::net::IpAddr;
use support::issuers::{IssuerWorld, cluster_ref, decode_b64, issuer_ref};
use support::openssl;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// What one conformance case requests and expects.
struct Case {
    name: &'static str,
    key: &'static str,
    subject: &'static str,
    multivalue: bool,
    exts: Vec<String>,
    spec: Value,
    cn: Option<&'static str>,
    dns: &'static [&'static str],
    ips: &'static [&'static str],
    uris: &'static [&'static str],
    emails: &'static [&'static str],
    is_ca: bool,
    seconds: i64,
}

const DAY: i64 = 86_400;

fn case(name: &'static str, key: &'static str) -> Case {
    Case {
        name,
        key,
        subject: "/",
        multivalue: false,
        exts: Vec::new(),
        spec: json!({}),
        cn: None,
        dns: &[],
        ips: &[],
        uris: &[],
        emails: &[],
        is_ca: false,
        seconds: 90 * DAY,
    }
}

fn san(c: &Case) -> Option<String> {
    let mut parts: Vec<String> = Vec::new();
    parts.extend(c.dns.iter().map(|d| format!("DNS:{d}")));
    parts.extend(c.ips.iter().map(|i| format!("IP:{i}")));
    parts.extend(c.uris.iter().map(|u| format!("URI:{u}")));
    parts.extend(c.emails.iter().map(|e| format!("email:{e}")));
    (!parts.is_empty()).then(|| format!("subjectAltName={}", parts.join(",")))
}

fn cases() -> Vec<Case> {
    let long = "a".repeat(63);
    let long_domain: &'static str = Box::leak(format!("{long}.example.com").into_boxed_str());
    let long_dns: &'static [&'static str] = Box::leak(vec![long_domain].into_boxed_slice());
    vec![
        Case { dns: &["basic.example.com"], ..case("rsa2048-dns", "rsa2048") },
        Case { dns: &["big.example.com"], ..case("rsa4096-dns", "rsa4096") },
        Case { dns: &["ecdsa.example.com"], ..case("p256-dns", "p256") },
        Case { dns: &["ed.example.com"], ..case("ed25519-dns", "ed25519") },
        Case { subject: "/CN=common-name-only", cn: Some("common-name-only"), ..case("rsa-cn", "rsa2048") },
        Case { subject: "/CN=ecdsa-cn", cn: Some("ecdsa-cn"), ..case("p384-cn", "p384") },
        Case { subject: "/CN=ed-cn", cn: Some("ed-cn"), ..case("ed25519-cn", "ed25519") },
        Case { ips: &["10.1.2.3"], ..case("ipv4-only", "p256") },
        Case { dns: &["dual.example.com"], ips: &["fd00::1", "192.0.2.7"], ..case("dns-ipv6-ipv4", "rsa2048") },
        Case { subject: "/CN=cn-and-ip", cn: Some("cn-and-ip"), ips: &["10.9.9.9"], ..case("cn-ip", "rsa2048") },
        Case { emails: &["alice@example.com"], ..case("email-only", "rsa2048") },
        Case {
            subject: "/CN=spiffe-cn",
            cn: Some("spiffe-cn"),
            uris: &["spiffe://cluster.local/ns/apps/sa/foo"],
            ..case("cn-uri", "rsa2048")
        },
        Case { uris: &["spiffe://cluster.local/ns/apps/sa/bar"], ..case("uri-only", "p256") },
        Case {
            subject: "/CN=one.example.com",
            cn: Some("one.example.com"),
            dns: &["one.example.com", "two.example.com"],
            ..case("cn-copied-to-dns", "rsa2048")
        },
        Case {
            subject: "/CN=distinct-cn",
            cn: Some("distinct-cn"),
            dns: &["distinct.example.com"],
            ..case("distinct-cn-and-dns", "rsa2048")
        },
        Case {
            dns: &["long.example.com"],
            spec: json!({"duration": "896h0m0s"}),
            seconds: 896 * 3600,
            ..case("duration-896h", "rsa2048")
        },
        Case { dns: &["*.wild.example.com"], ..case("wildcard", "rsa2048") },
        Case { dns: &["*.apex.example.com", "apex.example.com"], ..case("wildcard-and-apex", "rsa2048") },
        Case { dns: long_dns, ..case("63-char-label", "rsa2048") },
        Case {
            subject: "/O=Corp./OU=Dept./OU=Baz/OU=Bar/OU=FooLong/CN=*.literal.foo-long.bar.com",
            cn: Some("*.literal.foo-long.bar.com"),
            dns: &["*.literal.foo-long.bar.com"],
            ..case("literal-subject", "rsa2048")
        },
        Case {
            subject: "/O=First Org+O=Second Org/CN=multi",
            multivalue: true,
            cn: Some("multi"),
            dns: &["multi.example.com"],
            ..case("multi-valued-rdn", "p256")
        },
        Case {
            dns: &["usages.example.com"],
            exts: vec![
                "keyUsage=digitalSignature,dataEncipherment".into(),
                "extendedKeyUsage=serverAuth,clientAuth".into(),
            ],
            spec: json!({"usages": ["signing", "data encipherment", "server auth", "client auth"]}),
            ..case("key-usages", "rsa2048")
        },
        Case {
            dns: &["ca.example.com"],
            exts: vec!["basicConstraints=critical,CA:TRUE".into()],
            spec: json!({"isCA": true}),
            is_ca: true,
            ..case("ca-certificate", "p256")
        },
    ]
}

fn parse<'a>(der: &'a CertificateDer<'a>) -> X509Certificate<'a> {
    X509Certificate::from_der(der.as_ref()).unwrap().1
}

/// `by_mesh`: signed by the namespaced Issuer (the mesh intermediate),
/// else by the ClusterIssuer (the root).
fn check_case(world: &IssuerWorld, c: &Case, csr_pem: &str, cr: &Value, by_mesh: bool) {
    let chain_pem = decode_b64(&cr["status"]["certificate"]);
    let ca_pem = decode_b64(&cr["status"]["ca"]);
    let chain = pem::decode_certificates(chain_pem.as_bytes(), 1 << 20).unwrap();
    let cas = pem::decode_certificates(ca_pem.as_bytes(), 1 << 20).unwrap();
    if by_mesh {
        assert_eq!(chain.len(), 2, "{}: signed by the mesh, the chain is the leaf and the intermediate", c.name);
    } else {
        assert_eq!(chain.len(), 1, "{}: signed by the root, the chain is just the leaf", c.name);
    }
    assert_eq!(cas.len(), 1, "{}: ca is one certificate", c.name);
    assert_eq!(ca_pem, world.root_pem(), "{}: ca.crt is the root", c.name);
    let root = parse(&cas[0]);
    assert_eq!(root.subject().as_raw(), root.issuer().as_raw(), "{}: ca.crt is self-issued", c.name);

    let cert = parse(&chain[0]);
    let csr_der = pem::decode_one(csr_pem.as_bytes(), "CERTIFICATE REQUEST", 1 << 20).unwrap();
    let (_, csr) = x509_parser::certification_request::X509CertificationRequest::from_der(&csr_der).unwrap();
    let info = &csr.certification_request_info;
    assert_eq!(cert.public_key().raw, info.subject_pki.raw, "{}: the CSR's key", c.name);
    assert_eq!(cert.subject().as_raw(), info.subject.as_raw(), "{}: the subject exactly as requested", c.name);
    let cn = cert.subject().iter_common_name().next().map(|a| a.as_str().unwrap().to_string());
    assert_eq!(cn.as_deref(), c.cn, "{}: common name", c.name);

    let mut dns = Vec::new();
    let mut ips = Vec::new();
    let mut uris = Vec::new();
    let mut emails = Vec::new();
    let san = cert.subject_alternative_name().unwrap();
    if let Some(san) = &san {
        assert_eq!(san.critical, c.subject == "/", "{}: SAN critical exactly when the subject is empty", c.name);
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(d) => dns.push(d.to_string()),
                GeneralName::URI(u) => uris.push(u.to_string()),
                GeneralName::RFC822Name(e) => emails.push(e.to_string()),
                GeneralName::IPAddress(b) => ips.push(match b.len() {
                    4 => IpAddr::from(<[u8; 4]>::try_from(&b[..]).unwrap()),
                    _ => IpAddr::from(<[u8; 16]>::try_from(&b[..]).unwrap()),
                }),
                other => panic!("{}: unexpected SAN {other:?}", c.name),
            }
        }
    }
    assert_eq!(dns, c.dns, "{}: DNS names", c.name);
    assert_eq!(uris, c.uris, "{}: URIs", c.name);
    assert_eq!(emails, c.emails, "{}: emails", c.name);
    let want_ips: Vec<IpAddr> = c.ips.iter().map(|i| i.parse().unwrap()).collect();
    assert_eq!(ips, want_ips, "{}: IPs", c.name);

    let bc = cert.basic_constraints().unwrap().map(|b| b.value.ca).unwrap_or(false);
    assert_eq!(bc, c.is_ca, "{}: isCA", c.name);
    let v = cert.validity();
    let lifetime = v.not_after.timestamp() - v.not_before.timestamp();
    assert!((lifetime - c.seconds).abs() <= 30, "{}: lifetime {lifetime}s, wanted {}s ±30", c.name, c.seconds);
    assert_ne!(cert.raw_serial(), root.raw_serial());

    let ku = cert.key_usage().unwrap().expect("a KeyUsage extension").value;
    assert!(ku.digital_signature(), "{}: digital signature", c.name);
    if c.is_ca {
        assert!(ku.key_cert_sign(), "{}: a CA gets cert sign", c.name);
        let path_len = cert.basic_constraints().unwrap().unwrap().value.path_len_constraint;
        assert_eq!(path_len, Some(0), "{}: issued CAs get the policy's path length (0)", c.name);
    }
    if c.name == "key-usages" {
        assert!(ku.data_encipherment() && !ku.key_encipherment());
        let eku = cert.extended_key_usage().unwrap().expect("EKU").value;
        assert!(eku.server_auth && eku.client_auth && !eku.code_signing);
    } else {
        assert!(ku.key_encipherment(), "{}: default usages include key encipherment", c.name);
    }
    // The same chain, checked by openssl.
    let leaf = pem::encode_certificate(&chain[0]);
    let intermediates: String = chain[1..].iter().map(|c| pem::encode_certificate(c)).collect();
    let verified = openssl::verify(world.dir.path(), &ca_pem, &intermediates, &leaf);
    assert!(verified.is_ok(), "{}: {verified:?}", c.name);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_conformance_case_is_issued_correctly_for_issuer_and_cluster_issuer() {
    let world = IssuerWorld::start();
    // The mesh's trust domain makes the apps SPIFFE IDs protected: they
    // are granted literally. The namespaced Issuer signs with the mesh's
    // intermediate, which grants it to `apps`; only the ClusterIssuer may
    // sign with the root and issue CAs.
    world.add_mesh_granting("default", &["apps"]);
    let policy = json!({
        "allowedDNSNames": ["**.example.com", "*.literal.foo-long.bar.com"],
        "allowedCommonNames": ["*"],
        "allowedIPRanges": ["10.0.0.0/8", "fd00::/8", "192.0.2.0/24"],
        "allowedEmails": ["*@example.com"],
        "allowedURIs": ["spiffe://cluster.local/ns/apps/sa/foo", "spiffe://cluster.local/ns/apps/sa/bar"],
        "allowedSubjectAttributes": {"O": ["*"], "OU": ["*"]},
        "allowedUsages": ["digital signature", "key encipherment", "data encipherment", "server auth", "client auth"],
    });
    let mut cluster_policy = policy.clone();
    cluster_policy["allowCA"] = json!(true);
    cluster_policy["allowedURIs"].as_array_mut().unwrap().push(json!("spiffe://cluster.local"));
    world.cluster_issuer(
        "root",
        json!({"signer": {"root": true}, "allowedNamespaces": ["apps"], "policy": cluster_policy}),
    );
    world.issuer("apps", "mesh", json!({"signer": {"mesh": "default"}, "policy": policy}));
    let cases = cases();
    let mut pending = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let key = openssl::key(world.dir.path(), c.key);
        let mut exts: Vec<String> = san(c).into_iter().collect();
        exts.extend(c.exts.iter().cloned());
        let ext_refs: Vec<&str> = exts.iter().map(String::as_str).collect();
        let csr = openssl::csr(world.dir.path(), &key, c.subject, &ext_refs, c.multivalue);
        // Alternate the two issuer kinds over the matrix; CAs come from the ClusterIssuer.
        let by_mesh = i % 2 == 1 && !c.is_ca;
        let issuer = if by_mesh { issuer_ref("mesh") } else { cluster_ref("root") };
        world.request("apps", c.name, &csr, issuer, c.spec.clone());
        world.decide("apps", c.name, true);
        pending.push((c, csr, by_mesh));
    }
    for (c, csr, by_mesh) in pending {
        let cr = world.wait_ready_reason("apps", c.name, "Issued").await;
        check_case(&world, c, &csr, &cr, by_mesh);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mesh_signer_returns_its_intermediate_in_the_chain_and_the_root_as_ca() {
    let world = IssuerWorld::start();
    let chain = world.add_mesh("istio-system");
    world.cluster_issuer(
        "mesh",
        json!({"signer": {"mesh": "istio-system"}, "allowedNamespaces": ["apps"],
               "policy": {"allowedDNSNames": ["gw.example.com"]}}),
    );
    let key = openssl::key(world.dir.path(), "p256");
    let csr = openssl::csr(world.dir.path(), &key, "/", &["subjectAltName=DNS:gw.example.com"], false);
    world.request("apps", "gw", &csr, cluster_ref("mesh"), json!({"duration": "24h"}));
    world.decide("apps", "gw", true);
    let cr = world.wait_ready_reason("apps", "gw", "Issued").await;
    let chain_pem = decode_b64(&cr["status"]["certificate"]);
    let certs = pem::decode_certificates(chain_pem.as_bytes(), 1 << 20).unwrap();
    assert_eq!(certs.len(), 2, "leaf and the mesh intermediate, without the root");
    assert_eq!(&certs[1], chain.authority().certificate());
    assert_eq!(decode_b64(&cr["status"]["ca"]), world.root_pem());
    let leaf = parse(&certs[0]);
    assert_eq!(leaf.issuer().as_raw(), parse(&certs[1]).subject().as_raw());
    let intermediate = pem::encode_certificate(&certs[1]);
    openssl::verify(world.dir.path(), &world.root_pem(), &intermediate, &pem::encode_certificate(&certs[0])).unwrap();
}
