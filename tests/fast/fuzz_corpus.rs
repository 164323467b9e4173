//! Replays the committed fuzz seeds (`fuzz/seeds/<target>/`) and every input
//! the fuzzer ever crashed on (`fuzz/regressions/<target>/`) through the same
//! target bodies `cargo fuzz` runs, so each CI run re-checks them on stable.

use meshroot::fuzzing::{self, Decision};
use std::path::{Path, PathBuf};
use tonic::Code;

fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut out = Vec::new();
    for dir in [root.join("seeds").join(target), root.join("regressions").join(target)] {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            out.push((path, data));
        }
    }
    out.sort();
    assert!(out.len() >= 5, "{target}: only {} seed inputs", out.len());
    out
}

fn name(path: &Path) -> &str {
    path.file_name().unwrap().to_str().unwrap()
}

/// Whether a replayed input is a committed seed (which must say what it
/// expects) or a regression (which only must not panic).
fn is_regression(path: &Path) -> bool {
    path.components().any(|c| c.as_os_str() == "regressions")
}

/// The CSR seeds: every accepted one by name, and why each refused one is
/// refused (an unknown seed fails, so a new seed needs an expectation here).
#[test]
fn csr_seeds_are_accepted_or_refused_as_named() {
    use meshroot::pki::CertificateSigningRequest;
    for (path, data) in inputs("csr") {
        fuzzing::csr(&data);
        if is_regression(&path) {
            continue;
        }
        let name = name(&path);
        let parsed = if name.ends_with(".der") {
            CertificateSigningRequest::from_der(&data)
        } else {
            CertificateSigningRequest::from_pem(&data)
        };
        let refused_for = match name {
            "p256-app.pem"
            | "p256-app.der"
            | "rsa-cn-dns.pem"
            | "csr-ed25519.pem"
            | "csr-p256.pem"
            | "csr-p256-empty-subject.pem"
            | "csr-p256-noncritical-san.pem"
            | "csr-p256-sha384.pem"
            | "csr-p256-wants-ca.pem"
            | "csr-p384.pem"
            | "csr-rsa2048-sha256.pem"
            | "csr-rsa2048-pss.pem" => None,
            "csr-dsa.pem" => Some("DSA"),
            "csr-p521.pem" => Some("P-521"),
            "csr-rsa1024.pem" => Some("1024 bits"),
            "csr-rsa2048-sha1.pem" => Some("SHA-1"),
            _ => panic!("csr seed {name} has no expectation in this test"),
        };
        match (refused_for, parsed) {
            (None, Ok(csr)) => {
                assert!(!csr.spki_der().is_empty(), "{name}");
            }
            (None, Err(e)) => panic!("{name} must parse: {e}"),
            (Some(why), Ok(_)) => panic!("{name} must be refused ({why})"),
            (Some(why), Err(e)) => assert!(e.to_string().contains(why), "{name}: {e}"),
        }
    }
}

/// The PEM and key seeds: which keys load, which certificates decode, and
/// which certificate + key pairs load as an authority.
#[test]
fn pem_and_key_seeds_load_as_named() {
    use meshroot::pki::{Authority, PrivateKey, pem};
    for (path, data) in inputs("pem_keys") {
        fuzzing::pem_and_keys(&data);
        if is_regression(&path) {
            continue;
        }
        let name = name(&path);
        let key = PrivateKey::from_pem(&data);
        let certificates = pem::decode_certificates(&data, 1 << 20).map(|c| c.len()).unwrap_or(0);
        match name {
            "k-p256.pem"
            | "k-p384.pem"
            | "k-rsa2048.pem"
            | "other-p256-key.pem"
            | "ec-prime256v1-root-key.sec1.pem"
            | "ec-secp384r1-root-key.sec1.pem"
            | "rsa4096-root-key.pkcs1.pem"
            | "rsa4096-root-key.pkcs8.pem" => {
                assert!(key.is_ok(), "{name} must load as a key: {:?}", key.err());
            }
            // Ed25519 CSRs are signed, but a CA key must be ECDSA or RSA.
            "k-dsa.pem" | "k-rsa1024.pem" | "k-p521.pem" | "k-ed25519.pem" => {
                assert!(key.is_err(), "{name} must be refused as a key");
            }
            "ec-prime256v1-root-cert.pem"
            | "ec-secp384r1-root-cert.pem"
            | "rsa4096-root-cert.pem"
            | "not-ca-cert.pem" => {
                assert_eq!(certificates, 1, "{name}");
                assert!(key.is_err(), "{name} holds no key");
            }
            "pair-ec-prime256v1-root-cert.pem" | "pair-rsa4096-root-cert.pem" => {
                let at = data.windows(11).skip(1).position(|w| w == b"\n-----BEGIN").unwrap() + 2;
                let authority = Authority::from_pem(&data[..at], &data[at..]);
                assert!(authority.is_ok(), "{name} must load as an authority: {:?}", authority.err());
            }
            _ => panic!("pem_keys seed {name} has no expectation in this test"),
        }
    }
}

/// The SPIFFE seeds: (input, a valid SPIFFE ID, a valid Istio workload identity).
const SPIFFE_SEEDS: &[(&str, bool, bool)] = &[
    ("spiffe://cluster.local/ns/ns1/sa/app", true, true),
    ("spiffe://cluster.local", true, false),
    ("spiffe://td.example/ns/default/sa/default", true, true),
    ("spiffe://a-b_c.d/ns/x/sa/y", true, true),
    ("spiffe://Cluster.local/ns/a/sa/b", false, false),
    ("spiffe://cluster.local:8080/ns/a/sa/b", false, false),
    ("spiffe://cluster.local/ns/a/sa/b?x=1", false, false),
    ("spiffe://cluster.local/ns/a/sa/b#frag", false, false),
    ("spiffe://cluster.local/ns/../sa/b", false, false),
    ("spiffe://cluster.local/ns/./sa/b", false, false),
    ("spiffe://cluster.local//ns/a", false, false),
    ("spiffe://user@cluster.local/ns/a/sa/b", false, false),
    ("spiffe://cluster.local/ns/a%20b/sa/c", false, false),
    ("SPIFFE://cluster.local/ns/a/sa/b", false, false),
    ("spiffe:///ns/a/sa/b", false, false),
    ("spiffe://cluster.local/ns/a/sa/b/", false, false),
    ("spiffe://cluster.local/ns/caf\u{e9}/sa/b", false, false),
    ("spiffe://cluster.local/ns/a\0/sa/b", false, false),
];

#[test]
fn spiffe_seeds_are_accepted_or_refused_as_the_spec_says() {
    use meshroot::pki::{SpiffeId, WorkloadIdentity};
    let mut seen = 0;
    for (path, data) in inputs("spiffe") {
        fuzzing::spiffe(&data);
        if is_regression(&path) {
            continue;
        }
        let text = std::str::from_utf8(&data).unwrap();
        let &(_, spiffe, workload) = SPIFFE_SEEDS
            .iter()
            .find(|(input, _, _)| *input == text)
            .unwrap_or_else(|| panic!("spiffe seed {} ({text:?}) has no expectation in this test", path.display()));
        assert_eq!(SpiffeId::parse(text).is_ok(), spiffe, "{text:?} as a SPIFFE ID");
        assert_eq!(WorkloadIdentity::parse(text).is_ok(), workload, "{text:?} as a workload identity");
        seen += 1;
    }
    assert_eq!(seen, SPIFFE_SEEDS.len(), "every expectation has its seed");
}

/// The issuer seeds reach the decision their names give (ok-, invalid-,
/// policy-), so the fuzzer starts from both sides of every check.
#[test]
fn issuer_seeds_reach_their_decisions() {
    let seeds = inputs("issuer");
    assert!(seeds.len() >= 20, "the issuer seeds are missing");
    for (path, data) in seeds {
        let decision = fuzzing::issuer(&data);
        let name = name(&path);
        let expected = match name.split('-').next() {
            Some("ok") => fuzzing::IssuerDecision::Issued,
            Some("invalid") => fuzzing::IssuerDecision::Invalid,
            Some("policy") => fuzzing::IssuerDecision::Policy,
            _ if is_regression(&path) => continue,
            _ => panic!("issuer seed {name} does not say what it expects"),
        };
        assert_eq!(decision, Some(expected), "{name}");
    }
}

/// The handler seeds still reach the decisions they were written for, so
/// the fuzzer starts from both sides of every check.
#[test]
fn handler_seeds_reach_their_decisions() {
    for (path, data) in inputs("handler") {
        let decision = fuzzing::handler(&data);
        let expected = match name(&path) {
            "app-ok" | "app-ttl" | "app-ttl-negative" | "app-rsa" | "ztunnel-impersonates" => Decision::Issued,
            "app-impersonates" | "wrong-uri" | "no-token" | "unknown-cluster" => {
                Decision::Refused(Code::Unauthenticated)
            }
            "metadata-number" | "garbage-csr" => Decision::Refused(Code::InvalidArgument),
            // A regression input only must not panic.
            _ if is_regression(&path) => continue,
            other => panic!("handler seed {other} has no expected decision in this test"),
        };
        assert_eq!(decision, expected, "{}", path.display());
    }
}
