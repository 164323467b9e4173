//! Signs cert-manager `CertificateRequest`s whose `issuerRef` names a
//! meshroot `Issuer` or `ClusterIssuer` (group `meshroot.io`), following
//! cert-manager's external-issuer contract: nothing is written before the
//! request is approved or denied; finished requests are never touched;
//! every terminal state is one status write with its `failureTime`.

use super::ReconcileError;
use super::events::{EventSink, note};
use super::issuer_cache::IssuerName;
use super::panic_guard::PanicGuard;
use super::signing::{FailureReason, Outcome, Signers, Unsignable};
use crate::api::cert_manager::{CertificateRequest, CertificateRequestStatus, RequestCondition};
use crate::duration;
use crate::issuer::sign::SigningRequest;
use crate::k8s::{FIELD_MANAGER, error_summary};
use crate::telemetry::audit;
use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use time::OffsetDateTime;

/// The API group of meshroot's issuers, as `issuerRef.group` names it.
pub const ISSUER_GROUP: &str = "meshroot.io";

/// The condition cert-manager reads to tell whether a request is done, and how it ended.
pub const READY: &str = "Ready";
/// The condition that marks a request as never signable; its reason is a [`FailureReason`].
pub const INVALID_REQUEST: &str = "InvalidRequest";
/// The condition an approver sets to allow a request to be signed.
pub const APPROVED: &str = "Approved";
/// The condition an approver sets to refuse a request.
pub const DENIED: &str = "Denied";
/// The `Ready` reason while the request waits for its issuer or signer.
pub const REASON_PENDING: &str = "Pending";
/// The `Ready` reason once the request has failed permanently (terminal).
pub const REASON_FAILED: &str = "Failed";
/// The `Ready` reason once the certificate is issued (terminal).
pub const REASON_ISSUED: &str = "Issued";
/// The `Ready` reason once a denied request is marked so (terminal).
pub const REASON_DENIED: &str = "Denied";

/// What a request's current state calls for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Not ours, not yet approved or denied, or already finished.
    Ignore,
    /// Ours and denied by an approver, not yet marked denied.
    Deny,
    /// Ours, but of a kind meshroot does not have.
    UnknownKind(String),
    /// Ours, approved and unfinished: sign with this issuer.
    Sign(IssuerName),
}

/// Decides from the request alone (no I/O).
pub fn decide(cr: &CertificateRequest) -> Decision {
    let issuer_ref = &cr.spec.issuer_ref;
    // An empty group is cert-manager's own (cert-manager.io): never ours.
    if issuer_ref.group.as_deref() != Some(ISSUER_GROUP) {
        return Decision::Ignore;
    }
    if is_finished(cr) {
        return Decision::Ignore;
    }
    if cr.is_true(DENIED) {
        return Decision::Deny;
    }
    if !cr.is_true(APPROVED) {
        return Decision::Ignore;
    }
    match issuer_ref.kind.as_deref().unwrap_or("Issuer") {
        "" | "Issuer" => Decision::Sign(IssuerName::Namespaced {
            namespace: cr.namespace().unwrap_or_default(),
            name: issuer_ref.name.clone(),
        }),
        "ClusterIssuer" => Decision::Sign(IssuerName::Cluster(issuer_ref.name.clone())),
        other => Decision::UnknownKind(other.to_string()),
    }
}

/// Issued, failed or denied: terminal states are final.
pub fn is_finished(cr: &CertificateRequest) -> bool {
    let Some(status) = &cr.status else { return false };
    if status.certificate.as_ref().is_some_and(|c| !c.0.is_empty()) || cr.is_true(INVALID_REQUEST) {
        return true;
    }
    cr.condition(READY)
        .and_then(|c| c.reason.as_deref())
        .is_some_and(|r| r == REASON_ISSUED || r == REASON_FAILED || r == REASON_DENIED)
}

/// The request's new status for `outcome`: the existing conditions (the
/// approver's among them) kept, ours set; `failureTime` set once.
pub fn next_status(cr: &CertificateRequest, outcome: &Outcome, now: OffsetDateTime) -> CertificateRequestStatus {
    let mut status = cr.status.clone().unwrap_or_default();
    let time = Time(k8s_openapi::jiff::Timestamp::from_second(now.unix_timestamp()).unwrap_or_default());
    match outcome {
        Outcome::Issued(signed) => {
            let message = match &signed.shortened {
                Some(why) => format!("Certificate issued; {why}"),
                None => "Certificate issued".to_string(),
            };
            set_condition(&mut status.conditions, READY, "True", REASON_ISSUED, &message, &time);
            status.certificate = Some(ByteString(signed.chain_pem.clone().into_bytes()));
            status.ca = Some(ByteString(signed.ca_pem.clone().into_bytes()));
        }
        Outcome::Pending(message) => {
            set_condition(&mut status.conditions, READY, "False", REASON_PENDING, message, &time);
        }
        Outcome::Failed { reason, message } => {
            set_condition(&mut status.conditions, INVALID_REQUEST, "True", reason.as_str(), message, &time);
            let message = format!("Failed permanently to sign the CertificateRequest: {message}");
            set_condition(&mut status.conditions, READY, "False", REASON_FAILED, &message, &time);
            status.failure_time.get_or_insert(time);
        }
        Outcome::Denied => {
            let message = "The CertificateRequest was denied by an approval controller";
            set_condition(&mut status.conditions, READY, "False", REASON_DENIED, message, &time);
            status.failure_time.get_or_insert(time);
        }
    }
    status
}

/// The condition types meshroot sets on a CertificateRequest; the others
/// (`Approved`, `Denied`) belong to approvers.
const OWN_CONDITIONS: [&str; 2] = [READY, INVALID_REQUEST];

/// `status` as meshroot's server-side apply of `/status`: only what it owns
/// (its conditions, the certificate and CA, `failureTime`). `conditions` is
/// a map list keyed by `type`, so the approver's conditions stay the
/// approver's, untouched (cert-manager's webhook refuses any change to
/// them). The resourceVersion read makes it a compare-and-swap: nothing is
/// written from a stale view (a request denied since, say).
fn applied_status(cr: &CertificateRequest, status: &CertificateRequestStatus) -> serde_json::Value {
    let ours = CertificateRequestStatus {
        conditions: status.conditions.iter().filter(|c| OWN_CONDITIONS.contains(&c.type_.as_str())).cloned().collect(),
        ..status.clone()
    };
    serde_json::json!({
        "apiVersion": "cert-manager.io/v1",
        "kind": "CertificateRequest",
        "metadata": {
            "name": cr.name_any(),
            "namespace": cr.namespace(),
            "resourceVersion": cr.resource_version(),
        },
        "status": ours,
    })
}

fn set_condition(
    conditions: &mut Vec<RequestCondition>,
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    now: &Time,
) {
    let new = |last: Option<Time>| RequestCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_transition_time: last,
    };
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(existing) => {
            let last = if existing.status == status { existing.last_transition_time.clone() } else { None };
            *existing = new(last.or_else(|| Some(now.clone())));
        }
        None => conditions.push(new(Some(now.clone()))),
    }
}

/// What an approved request asks to have signed: its CSR and spec, or why
/// they cannot be read.
fn signing_request<'a>(cr: &'a CertificateRequest, usages: &'a [String]) -> Result<SigningRequest<'a>, Unsignable> {
    cr.spec
        .duration
        .as_deref()
        .map(|d| duration::parse_field("spec.duration", d).map_err(|e| e.to_string()))
        .transpose()
        .map(|duration| SigningRequest {
            csr_pem: &cr.spec.request.0,
            is_ca: cr.spec.is_ca.unwrap_or(false),
            usages,
            duration,
            csr_extensions_must_match: true,
            namespace: cr.metadata.namespace.as_deref(),
        })
        .map_err(|message| Unsignable { reason: FailureReason::InvalidDuration, message })
}

/// Signs (or refuses) one approved request.
fn work(cr: &CertificateRequest, issuer_name: &IssuerName, signers: &Signers, now: OffsetDateTime) -> Outcome {
    let usages = cr.spec.usages.clone().unwrap_or_default();
    signers.sign(issuer_name, signing_request(cr, &usages), now)
}

struct Context {
    client: kube::Client,
    signers: Signers,
    events: EventSink,
    guard: PanicGuard,
    /// Consecutive pending reconciles per request, for backoff.
    attempts: Mutex<HashMap<ObjectRef<CertificateRequest>, u32>>,
}

const MAX_BACKOFF: Duration = Duration::from_secs(300);
const MAX_TRACKED_ATTEMPTS: usize = 10_000;

async fn reconcile(cr: Arc<CertificateRequest>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let key = ObjectRef::from_obj(cr.as_ref());
    tracing::debug!(request = %key, decision = ?decide(&cr), "reconciling a CertificateRequest");
    let outcome = match decide(&cr) {
        Decision::Ignore => {
            ctx.attempts.lock().map(|mut a| a.remove(&key)).ok();
            return Ok(Action::await_change());
        }
        Decision::Deny => Outcome::Denied,
        Decision::UnknownKind(kind) => Outcome::Failed {
            reason: FailureReason::UnknownIssuerKind,
            message: format!("issuerRef.kind {kind:?} is not a meshroot.io kind; use Issuer or ClusterIssuer"),
        },
        Decision::Sign(name) => {
            let object = format!("{}/{}", cr.namespace().unwrap_or_default(), cr.name_any());
            ctx.guard.sign(&object, || work(&cr, &name, &ctx.signers, OffsetDateTime::now_utc()))
        }
    };
    let new = next_status(&cr, &outcome, OffsetDateTime::now_utc());
    if cr.status.as_ref() != Some(&new) {
        let api: Api<CertificateRequest> = Api::namespaced(ctx.client.clone(), &cr.namespace().unwrap_or_default());
        let params = PatchParams::apply(FIELD_MANAGER).force();
        api.patch_status(&cr.name_any(), &params, &Patch::Apply(applied_status(&cr, &new)))
            .await
            .map_err(ReconcileError::api("writing the status"))?;
        announce(&ctx.events, cr.as_ref(), &outcome).await;
        audit_decision(&cr, &outcome);
    }
    match outcome {
        Outcome::Pending(why) => {
            let n = ctx.attempts.lock().map(|mut a| count_attempt(&mut a, key, MAX_TRACKED_ATTEMPTS));
            let delay = backoff(n.unwrap_or(1));
            tracing::info!(request = %format!("{}/{}", cr.namespace().unwrap_or_default(), cr.name_any()), reason = %why, retry_in = ?delay, "CertificateRequest pending");
            Ok(Action::requeue(delay))
        }
        _ => {
            ctx.attempts.lock().map(|mut a| a.remove(&key)).ok();
            Ok(Action::await_change())
        }
    }
}

/// One audit line when a request is finished (issued, failed or denied).
fn audit_decision(cr: &CertificateRequest, outcome: &Outcome) {
    let decision = audit::RequestDecision {
        source: "CertificateRequest",
        request: format!("{}/{}", cr.namespace().unwrap_or_default(), cr.name_any()),
        issuer: format!(
            "{} {}",
            cr.spec.issuer_ref.kind.as_deref().filter(|k| !k.is_empty()).unwrap_or("Issuer"),
            cr.spec.issuer_ref.name
        ),
        requester: cr.spec.username.as_deref().unwrap_or_default(),
    };
    match outcome {
        Outcome::Issued(signed) => {
            audit::request_issued(&decision, &signed.serial_hex, signed.not_after.unix_timestamp())
        }
        Outcome::Failed { reason, message } => audit::request_denied(&decision, reason.as_str(), message),
        Outcome::Denied => audit::request_denied(&decision, "Denied", "denied by an approval controller"),
        Outcome::Pending(_) => {}
    }
}

/// Counts one more pending attempt for `key` and returns the count. Requests
/// deleted while pending leave entries behind: a map already holding `limit`
/// others is emptied first, so it stays bounded.
fn count_attempt<K: std::hash::Hash + Eq>(attempts: &mut HashMap<K, u32>, key: K, limit: usize) -> u32 {
    if attempts.len() >= limit && !attempts.contains_key(&key) {
        attempts.clear();
    }
    let n = attempts.entry(key).or_insert(0);
    *n = n.saturating_add(1);
    *n
}

/// 1 s, 2 s, 4 s, ... up to five minutes.
fn backoff(attempt: u32) -> Duration {
    Duration::from_secs(1u64 << attempt.saturating_sub(1).min(9)).min(MAX_BACKOFF)
}

async fn announce(events: &EventSink, cr: &CertificateRequest, outcome: &Outcome) {
    let reference = cr.object_ref(&());
    match outcome {
        Outcome::Issued(signed) => {
            events
                .publish(
                    &reference,
                    EventType::Normal,
                    "Issued",
                    note(format!(
                        "Certificate issued: serial {}, valid until {}",
                        signed.serial_hex,
                        crate::pki::rfc3339(signed.not_after)
                    )),
                )
                .await;
            if let Some(why) = &signed.shortened {
                events.publish(&reference, EventType::Warning, "DurationShortened", note(why.clone())).await;
            }
        }
        Outcome::Pending(why) => events.publish(&reference, EventType::Normal, "Pending", note(why.clone())).await,
        Outcome::Failed { reason, message } => {
            events.publish(&reference, EventType::Warning, reason.as_str(), note(message.clone())).await
        }
        Outcome::Denied => {
            events
                .publish(&reference, EventType::Normal, "Denied", note("denied by an approval controller".into()))
                .await
        }
    }
}

fn error_policy(cr: Arc<CertificateRequest>, error: &ReconcileError, _ctx: Arc<Context>) -> Action {
    tracing::warn!(request = %cr.name_any(), error = %error, "CertificateRequest reconcile failed; retrying");
    Action::requeue(Duration::from_secs(1))
}

/// Waits until CertificateRequests are served (cert-manager may be
/// installed after meshroot), then says whether they can be selected by
/// issuer group (cert-manager 1.20 and later declare `selectableFields`).
async fn wait_for_certificate_requests(api: &Api<CertificateRequest>) -> bool {
    let params = ListParams::default().fields(&format!("spec.issuerRef.group={ISSUER_GROUP}")).limit(1);
    let mut told = false;
    loop {
        match api.list_metadata(&params).await {
            Ok(_) => return true,
            Err(kube::Error::Api(s)) if s.code == 400 => return false,
            Err(kube::Error::Api(s)) if s.code == 404 => {
                if !told {
                    tracing::info!("cert-manager's CertificateRequest resource is not installed; waiting for it");
                    told = true;
                }
            }
            Err(e) => tracing::warn!(error = %error_summary(&e), "cannot list CertificateRequests; retrying"),
        }
        tokio::time::sleep(Duration::from_secs(30)).await;
    }
}

/// Runs the CertificateRequest controller until the task is aborted;
/// signing each request runs under `guard`.
pub fn spawn(
    client: kube::Client,
    signers: Signers,
    reporter: String,
    guard: PanicGuard,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let api: Api<CertificateRequest> = Api::all(client.clone());
        let mut config = watcher::Config::default();
        let selectable = wait_for_certificate_requests(&api).await;
        tracing::debug!(selectable, "CertificateRequests are served");
        if selectable {
            config = config.fields(&format!("spec.issuerRef.group={ISSUER_GROUP}"));
        } else {
            tracing::info!("CertificateRequests cannot be selected by issuer group here; filtering them in meshroot");
        }
        // Before the issuers are known, every request would look orphaned.
        signers.issuers.wait_synced().await;
        tracing::debug!("issuers synced; starting the CertificateRequest controller");
        let triggers = signers.changes();
        let ctx = Arc::new(Context {
            client: client.clone(),
            signers,
            events: EventSink::new(client.clone(), reporter),
            guard,
            attempts: Mutex::new(HashMap::new()),
        });
        Controller::new(api, config)
            .reconcile_all_on(triggers)
            .run(reconcile, error_policy, ctx)
            .for_each(|_| async {})
            .await;
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(status: serde_json::Value) -> CertificateRequest {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "cert-manager.io/v1", "kind": "CertificateRequest",
            "metadata": {"name": "r", "namespace": "apps"},
            "spec": {"request": "", "issuerRef": {"name": "i", "group": ISSUER_GROUP}},
            "status": status,
        }))
        .unwrap()
    }

    fn ready(reason: &str) -> serde_json::Value {
        serde_json::json!({"conditions": [{"type": READY, "status": "False", "reason": reason}]})
    }

    /// Retries of a pending request back off from 1 s, doubling, to five minutes.
    #[test]
    fn pending_retries_double_from_one_second_to_five_minutes() {
        let secs: Vec<u64> = (0..=12).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(secs, [1, 1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }

    /// Attempts count up per request; a full map is emptied only for a new
    /// request, never for one already counted.
    #[test]
    fn attempts_count_up_and_the_map_stays_bounded() {
        let mut attempts = HashMap::new();
        assert_eq!(count_attempt(&mut attempts, "a", 2), 1);
        assert_eq!(count_attempt(&mut attempts, "a", 2), 2);
        assert_eq!(count_attempt(&mut attempts, "b", 2), 1);
        // Full: "a" keeps its count ...
        assert_eq!(count_attempt(&mut attempts, "a", 2), 3);
        assert_eq!(attempts.len(), 2);
        // ... and a third request empties it first.
        assert_eq!(count_attempt(&mut attempts, "c", 2), 1);
        assert_eq!(attempts.len(), 1);
        assert_eq!(count_attempt(&mut attempts, "a", 2), 1, "forgotten with the rest");
    }

    /// A condition keeps its lastTransitionTime while its status stays, and
    /// gets the new time when the status changes.
    #[test]
    fn a_condition_moves_its_transition_time_only_when_its_status_changes() {
        let at = |s: i64| Time(k8s_openapi::jiff::Timestamp::from_second(s).unwrap());
        let mut conditions = Vec::new();
        set_condition(&mut conditions, READY, "False", REASON_PENDING, "waiting", &at(100));
        set_condition(&mut conditions, READY, "False", REASON_PENDING, "still waiting", &at(200));
        assert_eq!(conditions.len(), 1);
        assert_eq!(conditions[0].last_transition_time, Some(at(100)), "same status: the time stays");
        assert_eq!(conditions[0].message.as_deref(), Some("still waiting"));
        set_condition(&mut conditions, READY, "True", REASON_ISSUED, "issued", &at(300));
        assert_eq!(conditions[0].last_transition_time, Some(at(300)), "a new status: the new time");
        assert_eq!(conditions[0].reason.as_deref(), Some(REASON_ISSUED));
    }

    /// Each terminal mark finishes a request on its own (a certificate, a
    /// true InvalidRequest, or Ready with reason Issued, Failed or Denied);
    /// nothing else does.
    #[test]
    fn each_terminal_mark_alone_finishes_a_request() {
        let finished = [
            serde_json::json!({"certificate": "Y2VydA=="}),
            serde_json::json!({"conditions": [{"type": INVALID_REQUEST, "status": "True"}]}),
            ready(REASON_ISSUED),
            ready(REASON_FAILED),
            ready(REASON_DENIED),
        ];
        for status in finished {
            assert!(is_finished(&request(status.clone())), "{status}");
        }
        let unfinished = [
            serde_json::Value::Null,
            serde_json::json!({}),
            serde_json::json!({"certificate": ""}),
            serde_json::json!({"conditions": [{"type": INVALID_REQUEST, "status": "False"}]}),
            ready(REASON_PENDING),
            serde_json::json!({"conditions": [{"type": READY, "status": "True"}]}),
        ];
        for status in unfinished {
            assert!(!is_finished(&request(status.clone())), "{status}");
        }
    }
}
