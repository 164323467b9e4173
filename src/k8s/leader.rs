//! Leader election on a `coordination.k8s.io/v1` Lease, with optimistic
//! concurrency: every write carries the resourceVersion read, so two
//! replicas can never both believe they hold the Lease after a write.
//! Controllers run on the leader only; every replica serves gRPC.

use super::error_summary;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};
use std::time::Duration;
use tokio::sync::watch;

/// Which Lease to campaign on, as whom, and its timing.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// The Lease's namespace (meshroot's own).
    pub namespace: String,
    /// The Lease's name.
    pub name: String,
    /// This replica's identity (the pod name).
    pub identity: String,
    /// How long a Lease stays held without renewal.
    pub lease_duration: Duration,
    /// How often the holder renews, and others retry.
    pub retry_period: Duration,
}

/// How long a Lease stays held without renewal, and how often it is renewed (or, by the others, retried).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseTimings {
    /// How long the Lease stays held without renewal: how long the controllers may be leaderless after a
    /// replica dies without releasing it. Whole seconds (the Lease stores seconds).
    pub duration: Duration,
    /// How often the holder renews, and the others retry.
    pub retry_period: Duration,
}

impl Default for LeaseTimings {
    /// Held 15 s, renewed every 2 s, as Kubernetes' own controllers do.
    fn default() -> Self {
        Self { duration: Duration::from_secs(15), retry_period: Duration::from_secs(2) }
    }
}

impl LeaseConfig {
    /// The Lease `namespace/name` for `identity`, with `timings`.
    pub fn new(namespace: &str, name: &str, identity: &str, timings: LeaseTimings) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            lease_duration: timings.duration,
            retry_period: timings.retry_period,
        }
    }

    /// How long after the start of its last successful renewal a leader that cannot renew steps down:
    /// early enough that it has stopped before another replica may take the Lease, which is only
    /// `lease_duration` after that replica saw the renewal (necessarily after that start; each replica
    /// counts on its own monotonic clock, so skew between nodes does not matter). The leader notices at its
    /// next attempt, up to two retry periods later (the wait, then an attempt cut off at one period), so it
    /// has stepped down at least 1 s before the Lease can be taken.
    pub fn renew_deadline(&self) -> Duration {
        self.lease_duration.saturating_sub(self.retry_period.saturating_mul(2)).saturating_sub(Duration::from_secs(1))
    }
}

/// A running election. `is_leader` follows leadership; `stop` releases the
/// Lease so another replica takes over at once.
pub struct Election {
    /// Whether this replica holds the Lease now; false again once it steps down or stops.
    pub is_leader: watch::Receiver<bool>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Election {
    fn drop(&mut self) {
        // Dropped without stop(): behave like a crash (no release).
        self.task.abort();
    }
}

impl Election {
    /// Ends the campaign: steps down, releases the Lease if held, and waits for that.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        let _ = (&mut self.task).await;
    }
}

fn now() -> Timestamp {
    Timestamp::now()
}

/// Another holder's Lease as this replica last saw it change, on this replica's own monotonic clock.
/// Expiry is judged from that, never from the holder's `renewTime`: clocks differ between nodes, and
/// a holder whose clock runs behind would otherwise lose a Lease it renews on time (client-go's rule).
struct Observed {
    spec: LeaseSpec,
    at: tokio::time::Instant,
}

/// Whether `spec`, held by another replica, has gone unrenewed for its duration as this replica saw it.
/// Any change to it (a renewal, another holder) restarts the count.
fn expired(observed: &mut Option<Observed>, spec: &LeaseSpec) -> bool {
    let now = tokio::time::Instant::now();
    match observed {
        Some(o) if o.spec == *spec => {
            let secs = spec.lease_duration_seconds.unwrap_or(15);
            now.saturating_duration_since(o.at) > Duration::from_secs(u64::try_from(secs).unwrap_or(0))
        }
        _ => {
            *observed = Some(Observed { spec: spec.clone(), at: now });
            false
        }
    }
}

/// One attempt to acquire or renew. Returns whether we hold the Lease.
async fn try_acquire(
    api: &Api<Lease>,
    cfg: &LeaseConfig,
    observed: &mut Option<Observed>,
) -> Result<bool, kube::Error> {
    let at = now();
    let ours = |transitions: i32, acquired: Option<MicroTime>| LeaseSpec {
        holder_identity: Some(cfg.identity.clone()),
        lease_duration_seconds: Some(i32::try_from(cfg.lease_duration.as_secs()).unwrap_or(i32::MAX)),
        acquire_time: acquired.or(Some(MicroTime(at))),
        renew_time: Some(MicroTime(at)),
        lease_transitions: Some(transitions),
        ..Default::default()
    };
    let Some(mut lease) = api.get_opt(&cfg.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(cfg.name.clone()),
                labels: Some(super::managed_labels()),
                ..Default::default()
            },
            spec: Some(ours(0, None)),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        };
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.clone().unwrap_or_default();
    let transitions = spec.lease_transitions.unwrap_or(0);
    let new_spec = if holder == cfg.identity {
        ours(transitions, spec.acquire_time.clone())
    } else if holder.is_empty() || expired(observed, &spec) {
        ours(transitions.saturating_add(1), None)
    } else {
        return Ok(false);
    };
    lease.spec = Some(new_spec);
    match api.replace(&cfg.name, &PostParams::default(), &lease).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Gives the Lease up if we hold it.
async fn release(api: &Api<Lease>, cfg: &LeaseConfig) {
    let Ok(Some(mut lease)) = api.get_opt(&cfg.name).await else {
        return;
    };
    let Some(spec) = lease.spec.as_mut() else { return };
    if spec.holder_identity.as_deref() != Some(cfg.identity.as_str()) {
        return;
    }
    spec.holder_identity = None;
    spec.renew_time = None;
    if let Err(e) = api.replace(&cfg.name, &PostParams::default(), &lease).await {
        tracing::warn!(error = %error_summary(&e), "could not release the leader Lease");
    }
}

/// Starts campaigning. Leadership is lost when renewals fail for longer
/// than the lease duration (the Lease may then be taken by another replica).
pub fn spawn(client: kube::Client, cfg: LeaseConfig) -> Election {
    let api: Api<Lease> = Api::namespaced(client, &cfg.namespace);
    let (leader_tx, is_leader) = watch::channel(false);
    let (stop, mut stop_rx) = watch::channel(false);
    let task = tokio::spawn(async move {
        let mut last_success = tokio::time::Instant::now();
        let mut observed = None;
        loop {
            // A hung request must not keep a leader that can no longer renew.
            let started = tokio::time::Instant::now();
            let attempt = match tokio::time::timeout(cfg.retry_period, try_acquire(&api, &cfg, &mut observed)).await {
                Ok(result) => result.map_err(|e| error_summary(&e)),
                Err(_) => Err(format!("no answer within the retry period ({:?})", cfg.retry_period)),
            };
            match attempt {
                Ok(held) => {
                    if held {
                        // The renewal time written is taken after `started`: counting from here, the
                        // leader never thinks its Lease younger than the others see it.
                        last_success = started;
                    }
                    if *leader_tx.borrow() != held {
                        tracing::info!(identity = %cfg.identity, leader = held, "leadership changed");
                    }
                    leader_tx.send_replace(held);
                }
                Err(why) => {
                    tracing::warn!(error = %why, "leader election: cannot reach the Lease");
                    // Step down before another replica may take over.
                    if *leader_tx.borrow() && last_success.elapsed() >= cfg.renew_deadline() {
                        tracing::warn!("stepping down: the Lease could not be renewed in time");
                        leader_tx.send_replace(false);
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(cfg.retry_period) => {}
                _ = stop_rx.changed() => {
                    leader_tx.send_replace(false);
                    release(&api, &cfg).await;
                    return;
                }
            }
        }
    });
    Election { is_leader, stop, task }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leader_that_cannot_renew_steps_down_before_the_lease_can_be_taken() {
        let cfg = LeaseConfig::new("ns", "lease", "me", LeaseTimings::default());
        // client-go's defaults: a 15 s Lease, renewed every 2 s, given up after 10 s without renewal.
        assert_eq!(cfg.renew_deadline(), Duration::from_secs(10));
        // The latest it notices (deadline + two retry periods) is at least 1 s before the earliest another
        // replica may take the Lease (its duration after the renewal), for every accepted setting.
        for (duration, retry) in [(15, 2_000), (5, 1_000), (7, 1_000), (3600, 899_000), (2, 250)] {
            let timings =
                LeaseTimings { duration: Duration::from_secs(duration), retry_period: Duration::from_millis(retry) };
            let cfg = LeaseConfig::new("ns", "lease", "me", timings);
            let noticed = cfg.renew_deadline() + cfg.retry_period * 2;
            assert!(noticed < cfg.lease_duration - Duration::from_secs(1) + Duration::from_millis(1), "{timings:?}");
            assert!(cfg.renew_deadline() >= cfg.retry_period * 2, "at least two attempts: {timings:?}");
        }
    }
}
