//! Dev mode's token file, reloaded while the server runs: a line added for a
//! new identity works within a second, without a restart, and a file emptied
//! revokes every token. A file that no longer parses keeps the tokens last
//! loaded, and the warning names the line (never a token). A version is its
//! modification time and length, so the file should be written whole (an
//! editor's save, a rename), not rewritten in place byte by byte.

use super::static_tokens::StaticTokenAuthenticator;
use crate::auth::{AuthError, Authenticator, Caller, Credentials};
use arc_swap::ArcSwap;
use async_trait::async_trait;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// How often the file is looked at.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// What identifies a version of the file without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Version {
    modified: Option<SystemTime>,
    len: u64,
}

/// Why the token file cannot be loaded at start.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileLoadError {
    /// The file cannot be read.
    #[error("reading token file {path}: {error}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// The file does not parse.
    #[error("token file {path}: {error}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Which line, and why.
        error: super::static_tokens::TokenFileError,
    },
}

/// Bearer tokens from a file that is watched for changes.
#[derive(Debug)]
pub struct TokenFile {
    path: PathBuf,
    current: ArcSwap<StaticTokenAuthenticator>,
    version: std::sync::Mutex<Option<Version>>,
}

impl TokenFile {
    /// Loads `path`; an unreadable or invalid file is an error here, at start.
    pub fn load(path: &Path) -> Result<Arc<Self>, TokenFileLoadError> {
        let version = version_of(path);
        let text = std::fs::read_to_string(path)
            .map_err(|error| TokenFileLoadError::Read { path: path.to_path_buf(), error })?;
        let tokens = StaticTokenAuthenticator::parse(&text)
            .map_err(|error| TokenFileLoadError::Parse { path: path.to_path_buf(), error })?;
        Ok(Arc::new(Self {
            path: path.to_path_buf(),
            current: ArcSwap::from_pointee(tokens),
            version: std::sync::Mutex::new(version),
        }))
    }

    /// Loads the file again if it changed since it was last loaded; returns whether the tokens
    /// were replaced. A file that cannot be read or parsed keeps the current tokens.
    pub fn reload_if_changed(&self) -> bool {
        let version = version_of(&self.path);
        {
            let Ok(last) = self.version.lock() else { return false };
            if *last == version {
                return false;
            }
        }
        let outcome = std::fs::read_to_string(&self.path).map_err(|e| e.to_string()).and_then(|text| {
            match StaticTokenAuthenticator::parse(&text) {
                Ok(tokens) => Ok(tokens),
                // Emptied on purpose: every token is revoked, not kept.
                Err(e) if e.line == 0 => Ok(StaticTokenAuthenticator::empty()),
                Err(e) => Err(e.to_string()),
            }
        });
        // Recorded either way, so a broken file is reported once, not every second.
        if let Ok(mut last) = self.version.lock() {
            *last = version;
        }
        match outcome {
            Ok(tokens) => {
                tracing::info!(path = %self.path.display(), ?tokens, "token file reloaded");
                self.current.store(Arc::new(tokens));
                true
            }
            Err(error) => {
                tracing::warn!(path = %self.path.display(), %error, "token file not reloaded; the tokens loaded before stay");
                false
            }
        }
    }

    /// Looks at the file every [`RELOAD_INTERVAL`] until the task is dropped.
    pub async fn watch(self: Arc<Self>) {
        let mut tick = tokio::time::interval(RELOAD_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let file = self.clone();
            // Blocking file I/O, off the runtime's threads.
            let _ = tokio::task::spawn_blocking(move || file.reload_if_changed()).await;
        }
    }
}

fn version_of(path: &Path) -> Option<Version> {
    let meta = std::fs::metadata(path).ok()?;
    Some(Version { modified: meta.modified().ok(), len: meta.len() })
}

#[async_trait]
impl Authenticator for TokenFile {
    fn name(&self) -> &'static str {
        "static-token"
    }

    async fn authenticate(&self, credentials: &Credentials) -> Result<Option<Caller>, AuthError> {
        let tokens = self.current.load_full();
        tokens.authenticate(credentials).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::BearerToken;

    fn creds(token: &str) -> Credentials {
        Credentials { bearer_token: Some(BearerToken::new(token.into())), cluster_id: "K".into(), ..Default::default() }
    }

    /// Rewrites the file so that its version changes even within one timestamp tick.
    fn rewrite(path: &Path, text: &str) {
        std::fs::write(path, text).unwrap();
    }

    #[tokio::test]
    async fn a_line_added_works_after_a_reload_and_a_broken_file_keeps_the_old_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        rewrite(&path, "first default default\n");
        let file = TokenFile::load(&path).unwrap();
        assert!(file.authenticate(&creds("first")).await.unwrap().is_some());
        assert!(file.authenticate(&creds("second")).await.is_err());
        assert!(!file.reload_if_changed(), "nothing changed");

        rewrite(&path, "first default default\nsecond shop checkout\n");
        assert!(file.reload_if_changed());
        let caller = file.authenticate(&creds("second")).await.unwrap().unwrap();
        assert_eq!(caller.account(), "shop/checkout");

        // A broken file is refused as a whole: the tokens loaded before keep working.
        rewrite(&path, "first default default\nsecond shop checkout\nthird only-two-fields\n");
        assert!(!file.reload_if_changed());
        assert!(file.authenticate(&creds("second")).await.unwrap().is_some());
        assert!(file.authenticate(&creds("third")).await.is_err());
        // A token removed stops working.
        rewrite(&path, "second shop checkout\n");
        assert!(file.reload_if_changed());
        assert!(file.authenticate(&creds("first")).await.is_err());
        // A file emptied revokes every token.
        rewrite(&path, "# none left\n");
        assert!(file.reload_if_changed());
        assert!(file.authenticate(&creds("second")).await.is_err());
        assert!(!format!("{file:?}").contains("second"), "no token in Debug output");
    }

    #[test]
    fn an_invalid_file_is_refused_at_start_naming_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        rewrite(&path, "ok default default\nsecret-token default\n");
        let err = TokenFile::load(&path).unwrap_err().to_string();
        assert!(err.contains("line 2") && !err.contains("secret-token"), "{err}");
        let missing = TokenFile::load(&dir.path().join("nope")).unwrap_err().to_string();
        assert!(missing.starts_with("reading token file"), "{missing}");
    }
}
