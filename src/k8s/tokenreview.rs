//! Kubernetes TokenReview authentication, cached briefly by token digest.
//!
//! The cache is what keeps a node-restart storm from hammering the API
//! server: a result is kept for at most `ttl` (default 60 s) and never past
//! the token's own `exp`; concurrent requests with the same token share one
//! TokenReview; the cache holds at most `max_entries`. Failures to reach the
//! API server are `Unavailable` (clients retry), never `Unauthenticated`,
//! and are not cached.
//!
//! Rejected tokens (`authenticated: false`, a user that is not a usable
//! service account, a wrong audience) are remembered for a short while
//! (`negative_cache_ttl`, default 10 s) in a separate cache with its own
//! bound, so one bad token sent in a loop costs one TokenReview per TTL, and
//! any number of distinct bad tokens can never push good results out of the
//! cache of accepted tokens. Reviews in flight are tracked apart from both;
//! each runs as its own task, so a caller that gives up does not leave it
//! half done.

use crate::auth::{AuthError, Authenticator, BearerToken, Caller, Credentials, PodRef, Rejection, Unavailable};
use async_trait::async_trait;
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The TokenReview `user.extra` key of a bound token's pod name.
pub const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";
/// The TokenReview `user.extra` key of a bound token's pod UID.
pub const POD_UID_EXTRA: &str = "authentication.kubernetes.io/pod-uid";
/// The TokenReview `user.extra` key of the node a bound token's pod runs on.
pub const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";
const SERVICE_ACCOUNTS_GROUP: &str = "system:serviceaccounts";

/// How tokens are reviewed and how long, and how many, results are cached.
#[derive(Clone, Debug)]
pub struct TokenReviewConfig {
    /// Audiences asked for; the token must be valid for one of them, and the
    /// answer must say so (`status.audiences`).
    pub audiences: Vec<String>,
    /// How long an accepted token's review is reused; never past the token's `exp`.
    pub cache_ttl: Duration,
    /// The most accepted tokens cached at once; when full, expired and then the oldest go first.
    pub max_entries: usize,
    /// How long a rejected token is refused from cache, without asking again.
    pub negative_cache_ttl: Duration,
    /// The most rejected tokens remembered (apart from `max_entries`).
    pub negative_max_entries: usize,
    /// How long one TokenReview may take before the request is `Unavailable`.
    pub timeout: Duration,
}

impl Default for TokenReviewConfig {
    fn default() -> Self {
        Self {
            audiences: vec!["istio-ca".into()],
            cache_ttl: Duration::from_secs(60),
            max_entries: 10_000,
            negative_cache_ttl: Duration::from_secs(10),
            negative_max_entries: 10_000,
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

/// Values by token digest, each until its deadline, at most `max` of them
/// (the oldest insertion goes first once full, after the expired ones).
struct Bounded<V> {
    entries: HashMap<[u8; 32], (V, Instant)>,
    order: VecDeque<[u8; 32]>,
}

impl<V> Default for Bounded<V> {
    fn default() -> Self {
        Self { entries: HashMap::new(), order: VecDeque::new() }
    }
}

impl<V: Clone> Bounded<V> {
    fn get(&self, digest: &[u8; 32], now: Instant) -> Option<V> {
        self.entries.get(digest).filter(|(_, until)| *until > now).map(|(v, _)| v.clone())
    }

    fn insert(&mut self, digest: [u8; 32], value: V, until: Instant, max: usize) {
        if max == 0 {
            return;
        }
        if !self.entries.contains_key(&digest) && self.entries.len() >= max {
            let now = Instant::now();
            self.entries.retain(|_, (_, until)| *until > now);
            self.order.retain(|k| self.entries.contains_key(k));
            while self.entries.len() >= max {
                let Some(oldest) = self.order.pop_front() else { break };
                self.entries.remove(&oldest);
            }
        }
        if self.entries.insert(digest, (value, until)).is_none() {
            self.order.push_back(digest);
        }
    }

    #[cfg(any(test, feature = "testing"))]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

#[derive(Default)]
struct Cache {
    accepted: Bounded<Reviewed>,
    /// Why each recently rejected token was rejected.
    rejected: Bounded<Rejection>,
    /// One review per token, however many requests wait for it.
    in_flight: HashMap<[u8; 32], Review>,
}

/// Authenticates a bearer token as a service account (and its pod and node) with a
/// Kubernetes TokenReview, caching the results.
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
    /// An authenticator that reviews tokens through `client`, with empty caches.
    pub fn new(client: kube::Client, config: TokenReviewConfig) -> Self {
        Self { client, config, cache: Arc::default() }
    }

    /// Accepted tokens currently cached (ready or in flight). Tests only (feature `testing`).
    #[cfg(feature = "testing")]
    pub fn cached(&self) -> usize {
        self.cache.lock().map(|c| c.accepted.len().saturating_add(c.in_flight.len())).unwrap_or(0)
    }

    /// Rejected tokens currently remembered. Tests only (feature `testing`).
    #[cfg(feature = "testing")]
    pub fn cached_rejections(&self) -> usize {
        self.cache.lock().map(|c| c.rejected.len()).unwrap_or(0)
    }

    /// The cached outcome for `digest`, or the review deciding it (started
    /// here if none is in flight).
    fn lookup_or_start(&self, digest: [u8; 32], token: &BearerToken) -> Result<Result<Reviewed, AuthError>, Review> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if let Some(reviewed) = cache.accepted.get(&digest, now) {
            return Ok(Ok(reviewed));
        }
        if let Some(why) = cache.rejected.get(&digest, now) {
            return Ok(Err(AuthError::Rejected(why)));
        }
        if let Some(review) = cache.in_flight.get(&digest) {
            return Err(review.clone());
        }
        // The task settles the cache itself, under this lock, so it cannot
        // finish before it is registered as in flight.
        let task = tokio::spawn(review_and_settle(
            self.client.clone(),
            token.clone(),
            digest,
            self.config.clone(),
            self.cache.clone(),
        ));
        let review = async move { task.await.unwrap_or_else(|_| Err(Unavailable::TokenReviewInterrupted.into())) }
            .boxed()
            .shared();
        cache.in_flight.insert(digest, review.clone());
        Err(review)
    }
}

/// Reviews `token` and records the outcome: accepted for the cache TTL (never
/// past the token's `exp`), rejected for the negative TTL, and an
/// unreachable API server not at all.
async fn review_and_settle(
    client: kube::Client,
    token: BearerToken,
    digest: [u8; 32],
    config: TokenReviewConfig,
    cache: Arc<Mutex<Cache>>,
) -> Result<Reviewed, AuthError> {
    let outcome = review_token(client, token.expose().to_string(), &config).await;
    let mut cache = cache.lock().unwrap_or_else(|p| p.into_inner());
    cache.in_flight.remove(&digest);
    let now = Instant::now();
    match &outcome {
        Ok(reviewed) => {
            let mut ttl = config.cache_ttl;
            if let Some(left) = token_lifetime_left(token.expose()) {
                ttl = ttl.min(left);
            }
            if let Some(until) = now.checked_add(ttl)
                && !ttl.is_zero()
            {
                cache.accepted.insert(digest, reviewed.clone(), until, config.max_entries);
            }
        }
        Err(AuthError::Rejected(why)) => {
            if let Some(until) = now.checked_add(config.negative_cache_ttl)
                && !config.negative_cache_ttl.is_zero()
            {
                cache.rejected.insert(digest, why.clone(), until, config.negative_max_entries);
            }
        }
        Err(AuthError::Unavailable(_)) => {}
    }
    outcome
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

async fn review_token(client: kube::Client, token: String, config: &TokenReviewConfig) -> Result<Reviewed, AuthError> {
    let review = TokenReview {
        spec: TokenReviewSpec { token: Some(token), audiences: Some(config.audiences.clone()) },
        ..Default::default()
    };
    let api: Api<TokenReview> = Api::all(client);
    let answer = match tokio::time::timeout(config.timeout, api.create(&PostParams::default(), &review)).await {
        Err(_) => {
            return Err(Unavailable::TokenReviewTimeout.into());
        }
        Ok(Err(e)) => {
            let summary = kube_error_summary(&e);
            tracing::warn!(error = %summary, "TokenReview failed");
            return Err(Unavailable::TokenReviewFailed { summary }.into());
        }
        Ok(Ok(answer)) => answer,
    };
    let status = answer.status.unwrap_or_default();
    if status.authenticated != Some(true) {
        let why = status.error.filter(|e| !e.is_empty()).unwrap_or_else(|| "the token is not valid".into());
        return Err(Rejection::TokenReview(why).into());
    }
    // The API server lists the requested audiences the token is valid for;
    // an answer that names none of them is not an answer for this CA.
    if !config.audiences.is_empty() {
        let answered = status.audiences.unwrap_or_default();
        if !answered.iter().any(|a| config.audiences.contains(a)) {
            return Err(Rejection::Audience(config.audiences.clone()).into());
        }
    }
    let user = status.user.unwrap_or_default();
    let username = user.username.unwrap_or_default();
    let groups = user.groups.unwrap_or_default();
    if !groups.iter().any(|g| g == SERVICE_ACCOUNTS_GROUP) {
        return Err(Rejection::NotServiceAccount(username).into());
    }
    let (namespace, service_account) = username
        .strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split_once(':'))
        .filter(|(ns, sa)| !ns.is_empty() && !sa.is_empty() && !sa.contains(':'))
        .ok_or_else(|| Rejection::NotServiceAccountUsername(username.clone()))?;
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
        let reviewed = match self.lookup_or_start(token.digest(), token) {
            Ok(cached) => cached?,
            Err(review) => review.await?,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A cached answer is good until its deadline and not at it: a review
    /// never outlives the token's expiry or the cache TTL, not even by the
    /// instant.
    #[test]
    fn a_cached_answer_ends_at_its_deadline() {
        let mut cache = Bounded::default();
        let now = Instant::now();
        let until = now + Duration::from_secs(60);
        cache.insert([7; 32], "accepted", until, 10);
        assert_eq!(cache.get(&[7; 32], now), Some("accepted"));
        assert_eq!(cache.get(&[7; 32], until - Duration::from_nanos(1)), Some("accepted"));
        assert_eq!(cache.get(&[7; 32], until), None);
        assert_eq!(cache.get(&[8; 32], now), None, "another token");
    }

    /// A full cache makes room by dropping expired answers first, then the
    /// oldest; rewriting a cached token's answer drops nothing.
    #[test]
    fn a_full_cache_drops_expired_answers_first_then_the_oldest() {
        let mut cache = Bounded::default();
        let now = Instant::now();
        let future = now + Duration::from_secs(60);
        let Some(past) = now.checked_sub(Duration::from_secs(1)) else { return };
        cache.insert([1; 32], 1, past, 2);
        cache.insert([2; 32], 2, future, 2);
        cache.insert([3; 32], 3, future, 2);
        assert_eq!((cache.get(&[2; 32], now), cache.get(&[3; 32], now)), (Some(2), Some(3)), "the expired one went");
        assert_eq!(cache.len(), 2);
        cache.insert([4; 32], 4, future, 2);
        assert_eq!(cache.get(&[2; 32], now), None, "then the oldest");
        assert_eq!((cache.get(&[3; 32], now), cache.get(&[4; 32], now)), (Some(3), Some(4)));
        cache.insert([3; 32], 33, future, 2);
        assert_eq!((cache.get(&[3; 32], now), cache.get(&[4; 32], now)), (Some(33), Some(4)));
    }
}
