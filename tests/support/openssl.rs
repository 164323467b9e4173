//! Keys, CSRs and chain checks made by the openssl CLI: an independent
//! X.509 stack on the other side of meshroot.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn run(dir: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new("openssl").args(args).current_dir(dir).output().map_err(|e| format!("openssl: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "openssl {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// A new private key: rsa2048, rsa4096, p256, p384 or ed25519.
pub fn key(dir: &Path, kind: &str) -> PathBuf {
    let path = dir.join(format!("{kind}-{}.key", rand_suffix()));
    let p = path.to_str().unwrap();
    let args: Vec<&str> = match kind {
        "rsa2048" => vec!["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", p],
        "rsa4096" => vec!["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:4096", "-out", p],
        "p256" => vec!["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", p],
        "p384" => vec!["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384", "-out", p],
        "ed25519" => vec!["genpkey", "-algorithm", "ED25519", "-out", p],
        other => panic!("unknown key kind {other}"),
    };
    run(dir, &args).unwrap();
    path
}

/// A PEM CSR for `key` with subject `subj` (openssl `-subj` syntax, `/`
/// for empty) and `-addext` extensions; `multivalue` allows `+` RDNs.
pub fn csr(dir: &Path, key: &Path, subj: &str, exts: &[&str], multivalue: bool) -> String {
    let mut args = vec!["req", "-new", "-key", key.to_str().unwrap(), "-subj", subj];
    if multivalue {
        args.push("-multivalue-rdn");
    }
    for e in exts {
        args.push("-addext");
        args.push(e);
    }
    run(dir, &args).unwrap()
}

/// `openssl verify` of `leaf` against `root`, with `untrusted` intermediates.
pub fn verify(dir: &Path, root: &str, untrusted: &str, leaf: &str) -> Result<(), String> {
    let tag = rand_suffix();
    let (r, u, l) = (
        dir.join(format!("root-{tag}.pem")),
        dir.join(format!("chain-{tag}.pem")),
        dir.join(format!("leaf-{tag}.pem")),
    );
    std::fs::write(&r, root).unwrap();
    std::fs::write(&u, untrusted).unwrap();
    std::fs::write(&l, leaf).unwrap();
    let mut args = vec!["verify", "-CAfile", r.to_str().unwrap()];
    if !untrusted.trim().is_empty() {
        args.extend(["-untrusted", u.to_str().unwrap()]);
    }
    args.push(l.to_str().unwrap());
    run(dir, &args).map(|_| ())
}

/// Signs a leaf for `key` with a CA certificate and key, as istiod does
/// with `cacerts` (openssl x509 -req).
pub fn sign_leaf(dir: &Path, ca_cert: &str, ca_key: &str, key: &Path, san: &str) -> String {
    let tag = rand_suffix();
    let (c, k, csr_path, ext) = (
        dir.join(format!("ca-{tag}.pem")),
        dir.join(format!("ca-{tag}.key")),
        dir.join(format!("req-{tag}.csr")),
        dir.join(format!("ext-{tag}.cnf")),
    );
    std::fs::write(&c, ca_cert).unwrap();
    std::fs::write(&k, ca_key).unwrap();
    std::fs::write(&csr_path, csr(dir, key, "/", &[], false)).unwrap();
    std::fs::write(&ext, format!("subjectAltName=critical,{san}\n")).unwrap();
    run(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            csr_path.to_str().unwrap(),
            "-CA",
            c.to_str().unwrap(),
            "-CAkey",
            k.to_str().unwrap(),
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            ext.to_str().unwrap(),
        ],
    )
    .unwrap()
}

fn rand_suffix() -> String {
    let mut b = [0u8; 6];
    aws_lc_rs::rand::fill(&mut b).unwrap();
    b.iter().map(|x| format!("{x:02x}")).collect()
}
