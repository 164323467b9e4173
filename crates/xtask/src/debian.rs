//! The image's base, from Debian's packages: the shared libraries the binary names, the
//! dynamic loader, the CA certificates, and each package's copyright file; nothing else of
//! them. Packages are fetched once with `apt-get download` (no root, no change to the
//! system) and reused, so later builds are offline.

use crate::elf::{Arch, Needs};
use crate::layer::Entry;
use anyhow::{Context, bail};
use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The packages the base is taken from: glibc (libc, libm, the loader), libgcc_s (unwinding),
/// gcc's base package (libgcc_s's copyright lives there) and the CA certificates.
pub const PACKAGES: &[&str] = &["libc6", "libgcc-s1", "gcc-12-base", "ca-certificates"];

/// Where the CA certificates go, the path Debian and most TLS stacks look at.
pub const CA_BUNDLE: &str = "etc/ssl/certs/ca-certificates.crt";

/// A downloaded package.
#[derive(Clone, Debug)]
pub struct Package {
    /// Its name.
    pub name: String,
    /// Its version, from the file name.
    pub version: String,
    /// The `.deb` file.
    pub path: PathBuf,
}

/// The `.deb` of every package in [`PACKAGES`] for `arch`, from `dir/<arch>`, downloading the
/// missing ones when `download` is set.
pub fn fetch(dir: &Path, arch: Arch, download: bool) -> anyhow::Result<Vec<Package>> {
    let dir = dir.join(arch.debian);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut packages = Vec::new();
    for name in PACKAGES {
        let package = match find(&dir, name, arch)? {
            Some(p) => p,
            None if download => {
                let spec =
                    if arch.debian == host_arch()? { name.to_string() } else { format!("{name}:{}", arch.debian) };
                let run = Command::new("apt-get")
                    .args(["download", &spec])
                    .current_dir(&dir)
                    .output()
                    .context("running apt-get (the image's base comes from Debian's packages)")?;
                if !run.status.success() {
                    bail!("apt-get download {spec} failed: {}", String::from_utf8_lossy(&run.stderr).trim());
                }
                find(&dir, name, arch)?
                    .with_context(|| format!("apt-get download {spec} left no .deb in {}", dir.display()))?
            }
            None => bail!("no {name} package in {} (and downloading is off)", dir.display()),
        };
        packages.push(package);
    }
    Ok(packages)
}

fn host_arch() -> anyhow::Result<String> {
    let run = Command::new("dpkg").arg("--print-architecture").output().context("running dpkg")?;
    Ok(String::from_utf8_lossy(&run.stdout).trim().to_string())
}

/// The one `.deb` of `name` for `arch` (or `all`) in `dir`.
fn find(dir: &Path, name: &str, arch: Arch) -> anyhow::Result<Option<Package>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        let Some(file) = path.file_name().and_then(|f| f.to_str()) else { continue };
        let Some(stem) = file.strip_suffix(".deb") else { continue };
        let mut parts = stem.split('_');
        let (Some(n), Some(version), Some(a), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if n == name && (a == arch.debian || a == "all") {
            // apt writes an epoch's colon as %3a in file names.
            found.push(Package { name: name.into(), version: version.replace("%3a", ":"), path: path.clone() });
        }
    }
    if found.len() > 1 {
        let files: Vec<_> = found.iter().map(|p| p.path.display().to_string()).collect();
        bail!("several versions of {name}: {}; remove all but one", files.join(", "));
    }
    Ok(found.pop())
}

/// One package's files, by path without the leading `./`.
fn contents(package: &Package) -> anyhow::Result<BTreeMap<String, Entry>> {
    let run = Command::new("dpkg-deb")
        .arg("--fsys-tarfile")
        .arg(&package.path)
        .output()
        .context("running dpkg-deb (the image is assembled on Debian)")?;
    if !run.status.success() {
        bail!("dpkg-deb --fsys-tarfile {}: {}", package.path.display(), String::from_utf8_lossy(&run.stderr).trim());
    }
    let mut files = BTreeMap::new();
    let mut archive = tar::Archive::new(run.stdout.as_slice());
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.to_string_lossy().trim_start_matches("./").trim_end_matches('/').to_string();
        let mode = entry.header().mode()?;
        let item = match entry.header().entry_type() {
            tar::EntryType::Regular => {
                let mut data = Vec::new();
                entry.read_to_end(&mut data)?;
                Entry::file(&path, data, mode)
            }
            tar::EntryType::Symlink => {
                let target = entry.link_name()?.context("a symlink without a target")?;
                Entry::symlink(&path, &target.to_string_lossy())
            }
            _ => continue,
        };
        files.insert(path, item);
    }
    Ok(files)
}

/// A package's control paragraph (`Package:`, `Version:`, …), as dpkg keeps it per package.
fn control(package: &Package) -> anyhow::Result<Vec<u8>> {
    let run = Command::new("dpkg-deb").arg("--field").arg(&package.path).output().context("running dpkg-deb")?;
    if !run.status.success() {
        bail!("dpkg-deb --field {}: {}", package.path.display(), String::from_utf8_lossy(&run.stderr).trim());
    }
    Ok(run.stdout)
}

/// Where a symlink at `path` pointing at `target` leads, as a path without a leading `/`.
fn resolve(path: &str, target: &str) -> String {
    if let Some(absolute) = target.strip_prefix('/') {
        return absolute.to_string();
    }
    // Relative: from the link's directory, with `..` taken literally (never above the root).
    let mut parts: Vec<&str> = path.split('/').collect();
    parts.pop();
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    parts.join("/")
}

/// The files of `packages` the binary needs: each library it names and the loader (with the
/// files their symlinks lead to), the CA bundle, and each package's copyright.
pub fn runtime_files(packages: &[Package], needs: &Needs) -> anyhow::Result<Vec<Entry>> {
    let mut wanted: Vec<String> =
        needs.libraries.iter().map(|lib| format!("lib/{}/{lib}", needs.arch.triplet)).collect();
    wanted.extend(needs.interpreter.as_deref().map(|i| i.trim_start_matches('/').to_string()));
    let mut chosen: BTreeMap<String, Entry> = BTreeMap::new();
    let mut entries_status = Vec::new();
    let mut certificates = Vec::new();
    for package in packages {
        let files = contents(package).with_context(|| format!("reading package {}", package.name))?;
        let copyright = format!("usr/share/doc/{}/copyright", package.name);
        if let Some(entry) = files.get(&copyright).filter(|e| e.is_file()) {
            chosen.insert(copyright, entry.clone());
        }
        for (path, entry) in &files {
            if path.starts_with("usr/share/ca-certificates/mozilla/") && path.ends_with(".crt") {
                certificates.push(entry.clone());
            }
        }
        // Libraries and the loader, following symlinks within the package to a regular file.
        for path in wanted.iter().filter(|p| files.contains_key(*p)) {
            let mut current = path.clone();
            let mut links = 0;
            while let Some(target) = files.get(&current).and_then(|e| {
                chosen.insert(current.clone(), e.clone());
                e.link_target()
            }) {
                links += 1;
                current = resolve(&current, target);
                if links > 8 || !files.get(&current).is_some_and(|e| e.is_file() || e.link_target().is_some()) {
                    bail!("/{path} in {} leads to /{current}, which the package does not hold", package.name);
                }
            }
        }
        // What syft and other scanners read to list the image's Debian packages (distroless's
        // layout; there is no dpkg database, and no dpkg).
        entries_status.push(Entry::file(&format!("var/lib/dpkg/status.d/{}", package.name), control(package)?, 0o644));
    }
    let names: Vec<&str> = packages.iter().map(|p| p.name.as_str()).collect();
    for path in &wanted {
        if !chosen.contains_key(path) {
            bail!(
                "the binary needs /{path}, which none of {} provides: add its Debian package to PACKAGES",
                names.join(", ")
            );
        }
    }
    if certificates.is_empty() {
        bail!("no CA certificates in {}", names.join(", "));
    }
    // What update-ca-certificates writes at install time: every certificate, in file order.
    let mut bundle = Vec::new();
    for cert in &certificates {
        let data = cert.data().unwrap_or_default();
        bundle.extend_from_slice(data);
        if !data.ends_with(b"\n") {
            bundle.push(b'\n');
        }
    }
    let mut entries: Vec<Entry> = chosen.into_values().collect();
    entries.push(Entry::file(CA_BUNDLE, bundle, 0o644));
    entries.extend(entries_status);
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_resolve_within_the_tree() {
        assert_eq!(
            resolve("lib64/ld-linux-x86-64.so.2", "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"),
            "lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
        );
        assert_eq!(resolve("lib/x/libfoo.so.1", "libfoo.so.1.2"), "lib/x/libfoo.so.1.2");
        assert_eq!(resolve("lib/x/libfoo.so.1", "../y/./libfoo.so.1.2"), "lib/y/libfoo.so.1.2");
        assert_eq!(resolve("lib/libfoo.so", "../../../etc/passwd"), "etc/passwd", "never above the root");
    }

    #[test]
    fn packages_are_found_by_name_and_architecture_and_never_guessed() {
        let dir = tempfile::tempdir().unwrap();
        for file in ["libc6_2.36-9+deb12u14_amd64.deb", "libc6_2.36-9_arm64.deb", "ca-certificates_20250419_all.deb"] {
            std::fs::write(dir.path().join(file), b"").unwrap();
        }
        let libc = find(dir.path(), "libc6", crate::elf::AMD64).unwrap().unwrap();
        assert_eq!(libc.version, "2.36-9+deb12u14");
        assert_eq!(find(dir.path(), "ca-certificates", crate::elf::AMD64).unwrap().unwrap().version, "20250419");
        assert!(find(dir.path(), "libgcc-s1", crate::elf::AMD64).unwrap().is_none());
        std::fs::write(dir.path().join("libc6_2.36-9+deb12u15_amd64.deb"), b"").unwrap();
        let err = find(dir.path(), "libc6", crate::elf::AMD64).unwrap_err().to_string();
        assert!(err.contains("several versions of libc6"), "{err}");
    }
}
