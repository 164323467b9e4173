//! Rate limits on CreateCertificate: token buckets keyed by the peer's IP
//! address (checked before any authentication), by the identity being
//! certified and by the caller's node and namespace (in that order, so one
//! identity over its limit spends none of its node's tokens). A looping
//! workload cannot flood the CA or the audit log. The node's budget is kept
//! per namespace: any namespace can bind tokens to pods on any node, so a
//! budget shared by the whole node would let one namespace spend that of
//! the node's ztunnel and every other tenant there; and an
//! unauthenticated peer cannot make the CA send TokenReviews without bound;
//! a refused request gets `ResourceExhausted`, which pilot-agent and ztunnel
//! retry with backoff, plus a retry hint.
//!
//! The defaults are sized so that a node restart storm never trips them: a
//! node runs at most a few hundred pods, each asking once or twice at start,
//! and all of a node's ztunnel traffic comes from one address.

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use std::fmt;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use thiserror::Error;

/// A sustained rate and the burst allowed on top of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    /// The sustained rate, in requests per second; 0 turns the limit off.
    pub per_second: u32,
    /// How many requests may arrive at once before the rate applies; less than `per_second` counts as
    /// `per_second`.
    pub burst: u32,
}

impl Limit {
    /// 0 turns the limit off.
    pub const OFF: Limit = Limit { per_second: 0, burst: 0 };

    fn quota(self) -> Option<Quota> {
        let rate = NonZeroU32::new(self.per_second)?;
        let burst = NonZeroU32::new(self.burst.max(self.per_second)).unwrap_or(rate);
        Some(Quota::per_second(rate).allow_burst(burst))
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.per_second == 0 {
            f.write_str("off")
        } else {
            write!(f, "{}/s (burst {})", self.per_second, self.burst.max(self.per_second))
        }
    }
}

/// The CreateCertificate rate limits; each may be [`Limit::OFF`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimits {
    /// Per SPIFFE identity certified (a service account, across all its pods).
    pub identity: Limit,
    /// Per node the caller runs on, when its token names the node.
    pub node: Limit,
    /// Per peer IP address, before authentication.
    pub peer: Limit,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            identity: Limit { per_second: 50, burst: 1000 },
            node: Limit { per_second: 100, burst: 1000 },
            peer: Limit { per_second: 200, burst: 2000 },
        }
    }
}

impl RateLimits {
    /// Every limit off.
    pub const OFF: RateLimits = RateLimits { identity: Limit::OFF, node: Limit::OFF, peer: Limit::OFF };
}

/// Which limit refused a request, and when to try again.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[error("{scope} {key} is over its rate limit of {limit}; retry in {} ms", retry_after.as_millis().max(1))]
pub struct Exceeded {
    /// The limit's kind: `peer`, `node` or `identity`.
    pub scope: &'static str,
    /// The IP address, node name or SPIFFE ID that is over its limit.
    pub key: String,
    /// The limit it is over.
    pub limit: Limit,
    /// How long until the key may make a request again.
    pub retry_after: Duration,
}

/// Forget idle keys after this many checks, so memory follows the active set.
const SWEEP_EVERY: u64 = 4096;

struct Bucket {
    limit: Limit,
    limiter: DefaultKeyedRateLimiter<String>,
}

/// The rate limits in force: one token bucket per key for each limit that is on. Idle keys are forgotten
/// every few thousand checks.
pub struct RateLimiter {
    identity: Option<Bucket>,
    node: Option<Bucket>,
    peer: Option<Bucket>,
    checks: AtomicU64,
}

impl fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let limit = |b: &Option<Bucket>| b.as_ref().map_or(Limit::OFF, |b| b.limit);
        f.debug_struct("RateLimiter")
            .field("identity", &limit(&self.identity))
            .field("node", &limit(&self.node))
            .field("peer", &limit(&self.peer))
            .finish()
    }
}

impl RateLimiter {
    /// A limiter enforcing `limits`; a limit that is off never refuses.
    pub fn new(limits: RateLimits) -> Self {
        let bucket = |limit: Limit| limit.quota().map(|q| Bucket { limit, limiter: governor::RateLimiter::keyed(q) });
        Self {
            identity: bucket(limits.identity),
            node: bucket(limits.node),
            peer: bucket(limits.peer),
            checks: AtomicU64::new(0),
        }
    }

    /// Takes one token for the peer's IP address (if known).
    pub fn check_peer(&self, peer: Option<IpAddr>) -> Result<(), Exceeded> {
        match (peer, &self.peer) {
            (Some(ip), Some(bucket)) => self.take(bucket, "peer", ip.to_string()),
            _ => Ok(()),
        }
    }

    /// Takes one token for the caller's namespace on its node (if the node is known).
    pub fn check_node(&self, node: Option<&str>, namespace: &str) -> Result<(), Exceeded> {
        match (node, &self.node) {
            (Some(node), Some(bucket)) => self.take(bucket, "node", format!("{node} (namespace {namespace})")),
            _ => Ok(()),
        }
    }

    /// Takes one token for the identity being certified.
    pub fn check_identity(&self, identity: &str) -> Result<(), Exceeded> {
        match &self.identity {
            Some(bucket) => self.take(bucket, "identity", identity.to_string()),
            None => Ok(()),
        }
    }

    /// Takes one token from `key`'s bucket. The key is built once by the caller and moved here: the
    /// limiter keys its buckets by owned strings, and a refusal carries it.
    fn take(&self, bucket: &Bucket, scope: &'static str, key: String) -> Result<(), Exceeded> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            for b in [&self.identity, &self.node, &self.peer].into_iter().flatten() {
                b.limiter.retain_recent();
                b.limiter.shrink_to_fit();
            }
        }
        bucket.limiter.check_key(&key).map_err(|not_until| Exceeded {
            scope,
            key,
            limit: bucket.limit,
            retry_after: not_until.wait_time_from(DefaultClock::default().now()),
        })
    }
}

/// Why a rate limit cannot be read; `Display` quotes the text as written.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{text:?}: {problem}")]
pub struct LimitError {
    /// The text as written, trimmed.
    pub text: String,
    /// What is wrong with it.
    pub problem: String,
}

/// Parses `RATE[/s][,burst=N]`, for example `50/s,burst=1000`, or `0`/`off`.
pub fn parse_limit(text: &str) -> Result<Limit, LimitError> {
    let refuse = |problem: String| LimitError { text: text.trim().to_string(), problem };
    let text = text.trim();
    if text == "0" || text.eq_ignore_ascii_case("off") {
        return Ok(Limit::OFF);
    }
    let (rate, burst) = match text.split_once(',') {
        Some((rate, burst)) => {
            let burst = burst
                .trim()
                .strip_prefix("burst=")
                .ok_or_else(|| refuse("expected RATE/s,burst=N (for example 50/s,burst=1000)".into()))?;
            (rate, Some(burst))
        }
        None => (text, None),
    };
    let rate = rate.trim().trim_end_matches("/s");
    let per_second: u32 =
        rate.parse().map_err(|_| refuse(format!("the rate {rate:?} is not a whole number per second")))?;
    let burst = match burst {
        Some(b) => b.parse().map_err(|_| refuse(format!("the burst {b:?} is not a whole number")))?,
        None => per_second,
    };
    if per_second == 0 {
        return Ok(Limit::OFF);
    }
    if burst < per_second {
        return Err(refuse(format!("the burst ({burst}) must be at least the rate ({per_second})")));
    }
    Ok(Limit { per_second, burst })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse_and_refuse_nonsense() {
        assert_eq!(parse_limit("50/s,burst=1000"), Ok(Limit { per_second: 50, burst: 1000 }));
        assert_eq!(parse_limit("20"), Ok(Limit { per_second: 20, burst: 20 }));
        assert_eq!(parse_limit("off"), Ok(Limit::OFF));
        assert_eq!(parse_limit("0"), Ok(Limit::OFF));
        for bad in ["fast", "-1/s", "10/s,burst=5", "10/s,b=20", "10/s,burst=x", ""] {
            assert!(parse_limit(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_burst_then_refusal_with_a_retry_hint_and_keys_are_independent() {
        let limiter = RateLimiter::new(RateLimits { identity: Limit { per_second: 1, burst: 3 }, ..RateLimits::OFF });
        for _ in 0..3 {
            limiter.check_identity("a").unwrap();
        }
        let refused = limiter.check_identity("a").unwrap_err();
        assert_eq!((refused.scope, refused.key.as_str()), ("identity", "a"));
        assert!(refused.retry_after > Duration::ZERO && refused.retry_after <= Duration::from_secs(1));
        assert!(refused.to_string().contains("1/s (burst 3)"), "{refused}");
        limiter.check_identity("b").unwrap();
        // No node limit configured, and no node known: never refused.
        for _ in 0..10 {
            limiter.check_node(Some("n1"), "ns1").unwrap();
        }
    }

    #[test]
    fn the_node_limit_applies_only_when_the_node_is_known() {
        let limiter = RateLimiter::new(RateLimits { node: Limit { per_second: 1, burst: 1 }, ..RateLimits::OFF });
        limiter.check_node(Some("n1"), "ns1").unwrap();
        let refused = limiter.check_node(Some("n1"), "ns1").unwrap_err();
        assert_eq!((refused.scope, refused.key.as_str()), ("node", "n1 (namespace ns1)"));
        for _ in 0..10 {
            limiter.check_node(None, "ns1").unwrap();
        }
    }

    /// Any namespace can bind tokens to a pod on any node: a namespace that spends its budget on a
    /// node spends none of the node's ztunnel's, nor another namespace's there.
    #[test]
    fn one_namespace_on_a_node_cannot_spend_the_others_budget_there() {
        let limiter = RateLimiter::new(RateLimits { node: Limit { per_second: 1, burst: 5 }, ..RateLimits::OFF });
        for _ in 0..5 {
            limiter.check_node(Some("n1"), "attacker").unwrap();
        }
        assert!(limiter.check_node(Some("n1"), "attacker").is_err());
        for namespace in ["istio-system", "tenant-b"] {
            for _ in 0..5 {
                limiter.check_node(Some("n1"), namespace).unwrap();
            }
        }
    }

    #[test]
    fn the_peer_limit_is_per_address_and_applies_only_when_the_address_is_known() {
        let limiter = RateLimiter::new(RateLimits { peer: Limit { per_second: 1, burst: 2 }, ..RateLimits::OFF });
        let a: IpAddr = [10, 0, 0, 1].into();
        limiter.check_peer(Some(a)).unwrap();
        limiter.check_peer(Some(a)).unwrap();
        let refused = limiter.check_peer(Some(a)).unwrap_err();
        assert_eq!((refused.scope, refused.key.as_str()), ("peer", "10.0.0.1"));
        assert!(refused.to_string().starts_with("peer 10.0.0.1 is over its rate limit of 1/s (burst 2)"), "{refused}");
        limiter.check_peer(Some([10, 0, 0, 2].into())).unwrap();
        for _ in 0..10 {
            limiter.check_peer(None).unwrap();
        }
    }

    #[test]
    fn default_limits_absorb_a_node_restart_storm() {
        // 250 pods on one node (above the default max-pods of 110), each
        // asking twice, 100 of them under one service account.
        let limiter = RateLimiter::new(RateLimits::default());
        for pod in 0..250 {
            for _ in 0..2 {
                limiter.check_peer(Some([10, 0, 0, 7].into())).unwrap();
                limiter.check_node(Some("worker-1"), "a").unwrap();
                let sa = if pod < 100 {
                    "spiffe://td/ns/a/sa/big".to_string()
                } else {
                    format!("spiffe://td/ns/a/sa/s{pod}")
                };
                limiter.check_identity(&sa).unwrap();
            }
        }
    }
}
