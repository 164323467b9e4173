//! The image's one layer: a tar archive written deterministically (sorted paths, one
//! timestamp, numeric owners, no host metadata), gzip-compressed with no name or time in
//! its header, so that the same files give the same digest.

use crate::{HOME, USER_ID};
use anyhow::{Context, bail};
use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;

/// What an entry is.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Kind {
    File(Vec<u8>),
    Dir,
    Symlink(String),
}

/// One file, directory or symlink of the layer, by path without a leading `/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    path: String,
    kind: Kind,
    mode: u32,
    owner: u64,
}

impl Entry {
    /// A regular file owned by root.
    pub fn file(path: &str, data: Vec<u8>, mode: u32) -> Self {
        Entry { path: path.into(), kind: Kind::File(data), mode, owner: 0 }
    }

    /// A directory owned by root.
    pub fn dir(path: &str, mode: u32) -> Self {
        Entry { path: path.into(), kind: Kind::Dir, mode, owner: 0 }
    }

    /// A symlink to `target`.
    pub fn symlink(path: &str, target: &str) -> Self {
        Entry { path: path.into(), kind: Kind::Symlink(target.into()), mode: 0o777, owner: 0 }
    }

    /// Owned by `uid` (and the group of the same number).
    pub fn owned_by(mut self, uid: u64) -> Self {
        self.owner = uid;
        self
    }

    /// Whether it is a regular file.
    pub fn is_file(&self) -> bool {
        matches!(self.kind, Kind::File(_))
    }

    /// A regular file's contents.
    pub fn data(&self) -> Option<&[u8]> {
        match &self.kind {
            Kind::File(data) => Some(data),
            _ => None,
        }
    }

    /// A symlink's target.
    pub fn link_target(&self) -> Option<&str> {
        match &self.kind {
            Kind::Symlink(target) => Some(target),
            _ => None,
        }
    }
}

/// What every image has besides the binary and the libraries: the non-root user and its home
/// (the working directory, where `meshroot dev` keeps its state), the name-service order and a
/// world-writable `/tmp`. `/etc/hosts` and `/etc/resolv.conf` are the container runtime's.
pub fn base_files() -> Vec<Entry> {
    let passwd =
        format!("root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:{USER_ID}:{USER_ID}:nonroot:/{HOME}:/sbin/nologin\n");
    let group = format!("root:x:0:\nnonroot:x:{USER_ID}:\n");
    vec![
        Entry::file("etc/passwd", passwd.into_bytes(), 0o644),
        Entry::file("etc/group", group.into_bytes(), 0o644),
        // Names from the runtime's /etc/hosts first, then DNS (what glibc is told by Debian's
        // default; without the file its built-in order differs).
        Entry::file("etc/nsswitch.conf", b"hosts: files dns\n".to_vec(), 0o644),
        Entry::dir(HOME, 0o700).owned_by(USER_ID),
        Entry::dir("tmp", 0o1777),
    ]
}

/// A written layer.
#[derive(Debug)]
pub struct Layer {
    /// The compressed layer (the blob).
    pub gzip: Vec<u8>,
    /// The digest of the uncompressed tar (the config's `diff_id`).
    pub diff_id: String,
}

/// Writes `entries` (parent directories are added) as a layer with every timestamp at `epoch`.
pub fn write(entries: Vec<Entry>, epoch: i64) -> anyhow::Result<Layer> {
    let mut by_path: BTreeMap<String, Entry> = BTreeMap::new();
    for entry in entries {
        if entry.path.is_empty() || entry.path.starts_with('/') || entry.path.split('/').any(|p| p == "..") {
            bail!("layer path {:?} is not relative", entry.path);
        }
        let mut parent = Path::new(&entry.path).parent().map(Path::to_path_buf);
        while let Some(dir) = parent.take().filter(|d| !d.as_os_str().is_empty()) {
            let name = dir.to_string_lossy().into_owned();
            by_path.entry(name.clone()).or_insert_with(|| Entry::dir(&name, 0o755));
            parent = dir.parent().map(Path::to_path_buf);
        }
        match by_path.get(&entry.path) {
            Some(existing) if existing.kind == Kind::Dir && entry.kind == Kind::Dir => {
                by_path.insert(entry.path.clone(), entry);
            }
            Some(existing) if *existing != entry => bail!("two different entries for {}", entry.path),
            _ => {
                by_path.insert(entry.path.clone(), entry);
            }
        }
    }
    let mtime = u64::try_from(epoch).context("SOURCE_DATE_EPOCH before 1970")?;
    let mut tar = tar::Builder::new(Vec::new());
    for entry in by_path.values() {
        let mut header = tar::Header::new_gnu();
        header.set_mode(entry.mode);
        header.set_uid(entry.owner);
        header.set_gid(entry.owner);
        header.set_mtime(mtime);
        match &entry.kind {
            Kind::File(data) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(u64::try_from(data.len())?);
                tar.append_data(&mut header, &entry.path, data.as_slice())?;
            }
            Kind::Dir => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_size(0);
                tar.append_data(&mut header, format!("{}/", entry.path), std::io::empty())?;
            }
            Kind::Symlink(target) => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_size(0);
                tar.append_link(&mut header, &entry.path, target)?;
            }
        }
    }
    let tar = tar.into_inner()?;
    let diff_id = crate::sha256_digest(&tar);
    let mut gzip = flate2::GzBuilder::new().mtime(0).write(Vec::new(), flate2::Compression::default());
    gzip.write_all(&tar)?;
    Ok(Layer { gzip: gzip.finish()?, diff_id })
}
