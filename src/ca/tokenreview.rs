//! Kubernetes TokenReview authentication, cached briefly by token digest.
//!
//! The cache is what keeps a node-restart storm from hammering the API
//! server: a result is kept for at most `ttl` (default 60 s) and never past
//! the token's own `exp`; concurrent requests with the same token share one
//! TokenReview; the cache holds at most `max_entries`. Failures to reach the
//! API server are `Unavailable` (clients retry), never `Unauthenticated`.

use super::auth::{AuthError, Authenticator, Caller, Credentials, PodRef};
use async_trait::async_trait;
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";
pub const POD_UID_EXTRA: &str = "authentication.kubernetes.io/pod-uid";
pub const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";
const SERVICE_ACCOUNTS_GROUP: &str = "system:serviceaccounts";

#[derive(Clone, Debug)]
pub struct TokenReviewConfig {
    /// Audiences asked for; the token must be valid for one of them.
    pub audiences: Vec<String>,
    pub cache_ttl: Duration,
    pub max_entries: usize,
    /// How long one TokenReview may take before the request is `Unavailable`.
    pub timeout: Duration,
}

impl Default for TokenReviewConfig {
    fn default() -> Self {
        Self {
            audiences: vec!["istio-ca".into()],
            cache_ttl: Duration::from_secs(60),
            max_entries: 10_000,
            timeout: Duration::from_secs(5),
        }
    }
}

/// Who a token belongs to, as the API server said.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Reviewed {
    namespace: String,
    service_account: String,
    pod: Option<PodRef>,
    node: Option<String>,
}

type Review = Shared<BoxFuture<'static, Result<Reviewed, AuthError>>>;

enum Slot {
    Ready { reviewed: Reviewed, expires: Instant },
    Pending(Review),
}

#[derive(Default)]
struct Cache {
    slots: HashMap<[u8; 32], Slot>,
    /// Insertion order, for eviction once full.
    order: VecDeque<[u8; 32]>,
}

pub struct TokenReviewAuthenticator {
    client: kube::Client,
    config: TokenReviewConfig,
    cache: Arc<Mutex<Cache>>,
}

impl fmt::Debug for TokenReviewAuthenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenReviewAuthenticator").field("config", &self.config).finish()
    }
}

impl TokenReviewAuthenticator {
    pub fn new(client: kube::Client, config: TokenReviewConfig) -> Self {
        Self { client, config, cache: Arc::default() }
    }

    /// Entries currently cached (ready or in flight).
    pub fn cached(&self) -> usize {
        self.cache.lock().map(|c| c.slots.len()).unwrap_or(0)
    }

    fn lookup_or_start(&self, digest: [u8; 32], token: &str) -> Result<Reviewed, Review> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        match cache.slots.get(&digest) {
            Some(Slot::Ready { reviewed, expires }) if *expires > now => return Ok(reviewed.clone()),
            Some(Slot::Pending(review)) => return Err(review.clone()),
            _ => {}
        }
        let review = review_token(self.client.clone(), token.to_string(), self.config.clone()).boxed().shared();
        cache.insert(digest, Slot::Pending(review.clone()), self.config.max_entries);
        Err(review)
    }

    fn settle(&self, digest: [u8; 32], token: &str, outcome: &Result<Reviewed, AuthError>) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if !matches!(cache.slots.get(&digest), Some(Slot::Pending(_))) {
            return;
        }
        match outcome {
            Ok(reviewed) => {
                let mut ttl = self.config.cache_ttl;
                if let Some(left) = token_lifetime_left(token) {
                    ttl = ttl.min(left);
                }
                let slot = Slot::Ready { reviewed: reviewed.clone(), expires: Instant::now() + ttl };
                cache.slots.insert(digest, slot);
            }
            // Failures are not cached: the next request asks again.
            Err(_) => {
                cache.slots.remove(&digest);
            }
        }
    }
}

impl Cache {
    fn insert(&mut self, digest: [u8; 32], slot: Slot, max: usize) {
        if self.slots.len() >= max {
            let now = Instant::now();
            self.slots.retain(|_, s| !matches!(s, Slot::Ready { expires, .. } if *expires <= now));
            self.order.retain(|k| self.slots.contains_key(k));
            while self.slots.len() >= max.max(1) {
                let Some(oldest) = self.order.pop_front() else { break };
                self.slots.remove(&oldest);
            }
        }
        self.slots.insert(digest, slot);
        self.order.push_back(digest);
    }
}

/// Seconds until a JWT's `exp`, read without verifying the token: it only
/// shortens how long a result the API server already gave is reused.
fn token_lifetime_left(token: &str) -> Option<Duration> {
    use base64::Engine as _;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let exp = claims.get("exp")?.as_u64()?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs();
    Some(Duration::from_secs(exp.saturating_sub(now)))
}

async fn review_token(client: kube::Client, token: String, config: TokenReviewConfig) -> Result<Reviewed, AuthError> {
    let review = TokenReview {
        spec: TokenReviewSpec { token: Some(token), audiences: Some(config.audiences.clone()) },
        ..Default::default()
    };
    let api: Api<TokenReview> = Api::all(client);
    let answer = match tokio::time::timeout(config.timeout, api.create(&PostParams::default(), &review)).await {
        Err(_) => {
            return Err(AuthError::Unavailable("the Kubernetes API did not answer the TokenReview in time".into()));
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "TokenReview failed");
            return Err(AuthError::Unavailable(format!(
                "cannot reach the Kubernetes API for a TokenReview: {}",
                kube_error_summary(&e)
            )));
        }
        Ok(Ok(answer)) => answer,
    };
    let status = answer.status.unwrap_or_default();
    if status.authenticated != Some(true) {
        let why = status.error.filter(|e| !e.is_empty()).unwrap_or_else(|| "the token is not valid".into());
        return Err(AuthError::Rejected(format!("TokenReview: {why}")));
    }
    let user = status.user.unwrap_or_default();
    let username = user.username.unwrap_or_default();
    let groups = user.groups.unwrap_or_default();
    if !groups.iter().any(|g| g == SERVICE_ACCOUNTS_GROUP) {
        return Err(AuthError::Rejected(format!("{username:?} is not a service account")));
    }
    let (namespace, service_account) = username
        .strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split_once(':'))
        .filter(|(ns, sa)| !ns.is_empty() && !sa.is_empty() && !sa.contains(':'))
        .ok_or_else(|| AuthError::Rejected(format!("{username:?} is not a service account username")))?;
    let extra = user.extra.unwrap_or_default();
    let first = |key: &str| extra.get(key).and_then(|v| v.first()).cloned();
    let pod = match (first(POD_NAME_EXTRA), first(POD_UID_EXTRA)) {
        (Some(name), Some(uid)) => Some(PodRef { name, uid }),
        _ => None,
    };
    let node = first(NODE_NAME_EXTRA).filter(|n| !n.is_empty());
    Ok(Reviewed { namespace: namespace.to_string(), service_account: service_account.to_string(), pod, node })
}

/// Status code and reason, never the request (which holds the token).
fn kube_error_summary(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} {}", s.code, s.reason),
        other => other.to_string(),
    }
}

#[async_trait]
impl Authenticator for TokenReviewAuthenticator {
    fn name(&self) -> &'static str {
        "kubernetes-tokenreview"
    }

    async fn authenticate(&self, credentials: &Credentials) -> Result<Option<Caller>, AuthError> {
        let Some(token) = &credentials.bearer_token else {
            return Ok(None);
        };
        let digest = token.digest();
        let reviewed = match self.lookup_or_start(digest, token.expose()) {
            Ok(cached) => cached,
            Err(review) => {
                let outcome = review.await;
                self.settle(digest, token.expose(), &outcome);
                outcome?
            }
        };
        Ok(Some(Caller {
            namespace: reviewed.namespace,
            service_account: reviewed.service_account,
            pod: reviewed.pod,
            node: reviewed.node,
            cluster_id: credentials.cluster_id.clone(),
            trust_domain: None,
            authenticated_by: self.name(),
        }))
    }
}
