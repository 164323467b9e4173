//! The chart rendered by a real helm binary (installed by
//! scripts/install-helm.sh into the cache, or `MESHROOT_HELM`).
#![allow(dead_code)]

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

pub const RELEASE: &str = "mr";
pub const NAMESPACE: &str = "meshroot";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub fn helm() -> &'static Path {
    static HELM: OnceLock<PathBuf> = OnceLock::new();
    HELM.get_or_init(|| {
        if let Ok(path) = std::env::var("MESHROOT_HELM") {
            return PathBuf::from(path);
        }
        let out = Command::new(repo().join("scripts/install-helm.sh")).output().expect("running install-helm.sh");
        assert!(out.status.success(), "install-helm.sh: {}", String::from_utf8_lossy(&out.stderr));
        PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
    })
}

pub fn chart() -> PathBuf {
    repo().join("charts/meshroot")
}

pub fn openshift_values() -> PathBuf {
    chart().join("ci/openshift-values.yaml")
}

/// The ambient overlay, given after [`openshift_values`].
pub fn openshift_ambient_values() -> PathBuf {
    chart().join("ci/openshift-ambient-values.yaml")
}

/// `helm template` of release `mr` in namespace `meshroot`, parsed; Err
/// with helm's message when it refuses the values.
pub fn template(args: &[&str]) -> Result<Vec<Value>, String> {
    let out = Command::new(helm())
        .args(["template", RELEASE, chart().to_str().unwrap(), "--namespace", NAMESPACE])
        .args(args)
        .output()
        .unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let text = String::from_utf8(out.stdout).unwrap();
    let mut docs = Vec::new();
    for doc in text.split("\n---") {
        let body: String = doc.lines().filter(|l| !l.trim_start().starts_with('#')).collect::<Vec<_>>().join("\n");
        if body.trim().is_empty() {
            continue;
        }
        let v: Value =
            serde_saphyr::from_str(&body).unwrap_or_else(|e| panic!("rendered YAML does not parse: {e}\n{body}"));
        docs.push(v);
    }
    Ok(docs)
}

/// The NOTES a `helm install` of release `mr` in namespace `meshroot` would print (a client-side
/// dry run: no cluster).
pub fn notes(args: &[&str]) -> String {
    let out = Command::new(helm())
        .args(["install", RELEASE, chart().to_str().unwrap(), "--namespace", NAMESPACE, "--dry-run=client"])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "helm install --dry-run: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    text.split_once("NOTES:").map(|(_, notes)| notes.to_string()).unwrap_or_else(|| panic!("no NOTES in: {text}"))
}
