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

#[test]
fn csr_seeds() {
    for (_, data) in inputs("csr") {
        fuzzing::csr(&data);
    }
}

#[test]
fn pem_and_key_seeds() {
    for (_, data) in inputs("pem_keys") {
        fuzzing::pem_and_keys(&data);
    }
}

#[test]
fn spiffe_seeds() {
    for (_, data) in inputs("spiffe") {
        fuzzing::spiffe(&data);
    }
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
            _ if path.to_string_lossy().contains("regressions") => continue,
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
            _ => continue,
        };
        assert_eq!(decision, expected, "{}", path.display());
    }
}
