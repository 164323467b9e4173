//! Static bearer tokens for dev mode: a file of `TOKEN NAMESPACE SERVICEACCOUNT`
//! lines. Tokens are kept only as SHA-256 digests.

use crate::auth::{AuthError, Authenticator, Caller, Credentials, Rejection};
use crate::names::{is_dns1123_label, is_dns1123_subdomain};
use async_trait::async_trait;
use std::collections::HashMap;
use std::fmt;
use thiserror::Error;

/// Why a token file cannot be used. It never quotes a token.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("token file line {line}: {message}")]
pub struct TokenFileError {
    /// The line, counted from 1; 0 when the problem is the whole file (it holds no tokens).
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

#[derive(Clone, PartialEq, Eq)]
struct Account {
    namespace: String,
    service_account: String,
}

/// Authenticates `authorization: Bearer <token>` against a fixed table.
pub struct StaticTokenAuthenticator {
    accounts: HashMap<[u8; 32], Account>,
}

impl fmt::Debug for StaticTokenAuthenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticTokenAuthenticator").field("tokens", &self.accounts.len()).finish()
    }
}

impl StaticTokenAuthenticator {
    /// Parses a token file. Errors name the line, never the token.
    pub fn parse(text: &str) -> Result<Self, TokenFileError> {
        let mut accounts = HashMap::new();
        let mut first_line: HashMap<[u8; 32], usize> = HashMap::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i.saturating_add(1);
            let content = raw.split('#').next().unwrap_or("").trim();
            if content.is_empty() {
                continue;
            }
            let fields: Vec<&str> = content.split_whitespace().collect();
            let [token, namespace, service_account] = fields.as_slice() else {
                return Err(TokenFileError {
                    line,
                    message: format!("expected TOKEN NAMESPACE SERVICEACCOUNT, found {} fields", fields.len()),
                });
            };
            if !is_dns1123_label(namespace) {
                return Err(TokenFileError { line, message: format!("{namespace:?} is not a valid namespace name") });
            }
            if !is_dns1123_subdomain(service_account) {
                return Err(TokenFileError {
                    line,
                    message: format!("{service_account:?} is not a valid service account name"),
                });
            }
            let digest = crate::auth::BearerToken::new((*token).to_string()).digest();
            if let Some(first) = first_line.insert(digest, line) {
                return Err(TokenFileError { line, message: format!("duplicate token (first on line {first})") });
            }
            accounts.insert(
                digest,
                Account { namespace: (*namespace).to_string(), service_account: (*service_account).to_string() },
            );
        }
        if accounts.is_empty() {
            return Err(TokenFileError { line: 0, message: "the file holds no tokens".into() });
        }
        Ok(Self { accounts })
    }

    /// No tokens at all: every bearer token is refused.
    pub fn empty() -> Self {
        Self { accounts: HashMap::new() }
    }
}

#[async_trait]
impl Authenticator for StaticTokenAuthenticator {
    fn name(&self) -> &'static str {
        "static-token"
    }

    async fn authenticate(&self, credentials: &Credentials) -> Result<Option<Caller>, AuthError> {
        let Some(token) = &credentials.bearer_token else {
            return Ok(None);
        };
        match self.accounts.get(&token.digest()) {
            Some(a) => Ok(Some(Caller {
                namespace: a.namespace.clone(),
                service_account: a.service_account.clone(),
                pod: None,
                cluster_id: credentials.cluster_id.clone(),
                trust_domain: None,
                node: None,
                authenticated_by: self.name(),
            })),
            None => Err(Rejection::UnknownToken.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::BearerToken;

    fn creds(token: &str) -> Credentials {
        Credentials {
            bearer_token: Some(BearerToken::new(token.into())),
            cluster_id: "Kubernetes".into(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn recognises_listed_tokens_only() {
        let a = StaticTokenAuthenticator::parse(
            "# dev tokens\n\nsecret-one default default\n  s2 istio-system ztunnel # node proxy\n",
        )
        .unwrap();
        assert_eq!(format!("{a:?}"), "StaticTokenAuthenticator { tokens: 2 }", "two tokens, and not one of them shown");
        let c = a.authenticate(&creds("secret-one")).await.unwrap().unwrap();
        assert_eq!((c.namespace.as_str(), c.service_account.as_str()), ("default", "default"));
        assert_eq!(c.cluster_id, "Kubernetes");
        let z = a.authenticate(&creds("s2")).await.unwrap().unwrap();
        assert_eq!(z.account(), "istio-system/ztunnel");
        assert_eq!(a.authenticate(&creds("nope")).await, Err(AuthError::Rejected(Rejection::UnknownToken)));
        assert_eq!(a.authenticate(&Credentials::default()).await, Ok(None));
    }

    #[test]
    fn errors_name_the_line_but_never_the_token() {
        let e = StaticTokenAuthenticator::parse("tok-123456 default\n").unwrap_err();
        assert_eq!(e.line, 1);
        assert!(!e.to_string().contains("tok-123456"));
        let e = StaticTokenAuthenticator::parse("a default default\nb Bad_NS sa\n").unwrap_err();
        assert_eq!(e.line, 2);
        let e = StaticTokenAuthenticator::parse("tok-9 default a\ntok-9 default b\n").unwrap_err();
        assert!(e.message.contains("duplicate token (first on line 1)"));
        assert!(!e.to_string().contains("tok-9"));
        assert!(StaticTokenAuthenticator::parse("# nothing\n").is_err());
        assert!(StaticTokenAuthenticator::parse("t ns Sa!\n").is_err());
    }

    #[test]
    fn debug_output_does_not_list_tokens() {
        let a = StaticTokenAuthenticator::parse("very-secret default default\n").unwrap();
        assert!(!format!("{a:?}").contains("very-secret"));
        assert!(!format!("{:?}", BearerToken::new("very-secret".into())).contains("very-secret"));
    }
}
