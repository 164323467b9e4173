//! Writing certificate and key files: atomically (temp file + rename), keys
//! with mode 0600 from the moment they exist, and never over a file the
//! caller did not mean to replace.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// File mode of private keys and tokens: owner read and write only.
pub const PRIVATE_MODE: u32 = 0o600;
/// File mode of certificates and bundles: readable by everyone.
pub const PUBLIC_MODE: u32 = 0o644;

/// What to do when the destination already exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Existing {
    /// Replace it atomically.
    Replace,
    /// Leave it and fail with `AlreadyExists` (also when it appears during the write).
    Refuse,
}

/// Writes `contents` to `path` with `mode`, atomically.
pub fn write_file(path: &Path, contents: &[u8], mode: u32, existing: Existing) -> io::Result<()> {
    if existing == Existing::Refuse && fs::symlink_metadata(path).is_ok() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} already exists; refusing to overwrite it", path.display()),
        ));
    }
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().ok_or_else(|| io::Error::other(format!("{} has no file name", path.display())))?;
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let tmp: PathBuf = dir.join(format!(".{}.tmp-{}-{n}", name.to_string_lossy(), std::process::id()));
    let _ = fs::remove_file(&tmp);
    let result = (|| {
        let mut f = OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp)?;
        // The umask may have narrowed the mode; a key must be exactly 0600.
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(contents)?;
        f.sync_all()?;
        if existing == Existing::Refuse {
            // hard_link fails if the destination appeared meanwhile.
            fs::hard_link(&tmp, path)?;
            fs::remove_file(&tmp)
        } else {
            fs::rename(&tmp, path)
        }
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// [`write_file`] with mode 0600, for keys and tokens.
pub fn write_private(path: &Path, contents: &[u8], existing: Existing) -> io::Result<()> {
    write_file(path, contents, PRIVATE_MODE, existing)
}

/// [`write_file`] with mode 0644, for certificates and bundles.
pub fn write_public(path: &Path, contents: &[u8], existing: Existing) -> io::Result<()> {
    write_file(path, contents, PUBLIC_MODE, existing)
}

/// Creates a directory (and parents) that only the owner can enter.
pub fn create_private_dir(path: &Path) -> io::Result<()> {
    fs::create_dir_all(path)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o700))
}

/// Reads a file, naming it in the error.
pub fn read(path: &Path) -> io::Result<Vec<u8>> {
    fs::read(path).map_err(|e| io::Error::new(e.kind(), format!("reading {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_0600_and_refuse_mode_does_not_clobber() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key.pem");
        write_private(&key, b"one", Existing::Refuse).unwrap();
        assert_eq!(fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
        let err = write_private(&key, b"two", Existing::Refuse).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(&key).unwrap(), b"one");
        write_private(&key, b"three", Existing::Replace).unwrap();
        assert_eq!(fs::read(&key).unwrap(), b"three");
        assert_eq!(fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
        let cert = dir.path().join("cert.pem");
        write_public(&cert, b"c", Existing::Replace).unwrap();
        assert_eq!(fs::metadata(&cert).unwrap().permissions().mode() & 0o777, 0o644);
        // No temp files left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2);
    }
}
