//! Signs approved Kubernetes `CertificateSigningRequest`s
//! (certificates.k8s.io/v1) whose signerName is
//! `clusterissuers.meshroot.io/<name>` or `issuers.meshroot.io/<namespace>.<name>`,
//! with cert-manager's annotations for duration and CA requests. This also
//! serves istiod's RA mode (`EXTERNAL_CA=ISTIOD_RA_KUBERNETES_API`).

use super::ReconcileError;
use super::events::{EventSink, note};
use super::issuer_cache::IssuerName;
use super::panic_guard::PanicGuard;
use super::signing::{FailureReason, Outcome, Signers, Unsignable};
use crate::duration;
use crate::issuer::sign::SigningRequest;
use crate::telemetry::audit;
use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
use k8s_openapi::api::certificates::v1::{CertificateSigningRequest, CertificateSigningRequestCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;

/// The signerName prefix for a `ClusterIssuer`: `clusterissuers.meshroot.io/<name>`.
pub const CLUSTER_ISSUER_SIGNER_PREFIX: &str = "clusterissuers.meshroot.io/";
/// The signerName prefix for a namespaced `Issuer`: `issuers.meshroot.io/<namespace>.<name>`.
pub const ISSUER_SIGNER_PREFIX: &str = "issuers.meshroot.io/";
/// cert-manager's annotations for what the CSR API has no field for.
pub const DURATION_ANNOTATION: &str = "experimental.cert-manager.io/request-duration";
/// Asks for a CA certificate when `"true"`; absent or `"false"` asks for a leaf.
pub const IS_CA_ANNOTATION: &str = "experimental.cert-manager.io/request-is-ca";

/// The issuer a signerName names, if it is one of meshroot's.
pub fn issuer_for_signer(signer_name: &str) -> Option<IssuerName> {
    if let Some(name) = signer_name.strip_prefix(CLUSTER_ISSUER_SIGNER_PREFIX) {
        return (!name.is_empty() && !name.contains('/')).then(|| IssuerName::Cluster(name.to_string()));
    }
    let rest = signer_name.strip_prefix(ISSUER_SIGNER_PREFIX)?;
    // Namespaces cannot contain dots, so the first one separates.
    let (namespace, name) = rest.split_once('.')?;
    (!namespace.is_empty() && !name.is_empty() && !name.contains('/'))
        .then(|| IssuerName::Namespaced { namespace: namespace.to_string(), name: name.to_string() })
}

fn has_condition(csr: &CertificateSigningRequest, type_: &str) -> bool {
    csr.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == type_ && c.status == "True"))
}

/// Whether meshroot should sign this CSR now: ours, approved, not denied,
/// failed or already signed.
pub fn wants_signing(csr: &CertificateSigningRequest) -> Option<IssuerName> {
    let issuer = issuer_for_signer(&csr.spec.signer_name)?;
    let signed = csr.status.as_ref().and_then(|s| s.certificate.as_ref()).is_some_and(|c| !c.0.is_empty());
    if signed || has_condition(csr, "Failed") || has_condition(csr, "Denied") || !has_condition(csr, "Approved") {
        return None;
    }
    Some(issuer)
}

/// Signs (or refuses) one approved CSR. `may_reference` is whether the
/// requester may use a namespaced issuer (ignored for cluster issuers).
fn work(
    csr: &CertificateSigningRequest,
    issuer_name: &IssuerName,
    may_reference: bool,
    signers: &Signers,
    now: OffsetDateTime,
) -> Outcome {
    if matches!(issuer_name, IssuerName::Namespaced { .. }) && !may_reference {
        return Outcome::Failed {
            reason: FailureReason::DeniedReference,
            message: format!(
                "the requester may not reference {issuer_name} (needs verb reference on signers.meshroot.io in its namespace)"
            ),
        };
    }
    let usages = csr.spec.usages.clone().unwrap_or_default();
    let request = requested_terms(csr).map(|(duration, is_ca)| SigningRequest {
        csr_pem: &csr.spec.request.0,
        is_ca,
        usages: &usages,
        duration,
        csr_extensions_must_match: false,
        namespace: requester_namespace(csr),
    });
    signers.sign(issuer_name, request, now)
}

/// The namespace of a CSR's requester when it is a service account
/// (`system:serviceaccount:<namespace>:<name>`).
fn requester_namespace(csr: &CertificateSigningRequest) -> Option<&str> {
    let rest = csr.spec.username.as_deref()?.strip_prefix("system:serviceaccount:")?;
    let (namespace, name) = rest.split_once(':')?;
    // Service accounts' tokens carry their namespace's group as well; a
    // user name that merely looks like one (an OIDC or webhook user) does not.
    let group = format!("system:serviceaccounts:{namespace}");
    let in_group = csr.spec.groups.iter().flatten().any(|g| *g == group);
    (!namespace.is_empty() && !name.is_empty() && !name.contains(':') && in_group).then_some(namespace)
}

/// The duration and CA flag a CSR asks for, from cert-manager's
/// annotations and `expirationSeconds`.
fn requested_terms(csr: &CertificateSigningRequest) -> Result<(Option<time::Duration>, bool), Unsignable> {
    let annotations = csr.annotations();
    let duration = match annotations.get(DURATION_ANNOTATION) {
        Some(d) => Some(
            duration::parse_field(DURATION_ANNOTATION, d)
                .map_err(|why| Unsignable { reason: FailureReason::InvalidDuration, message: why.to_string() })?,
        ),
        None => csr.spec.expiration_seconds.map(|s| time::Duration::seconds(i64::from(s))),
    };
    let is_ca = match annotations.get(IS_CA_ANNOTATION).map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(Unsignable {
                reason: FailureReason::InvalidRequest,
                message: format!("{IS_CA_ANNOTATION} must be \"true\" or \"false\", not {other:?}"),
            });
        }
    };
    Ok((duration, is_ca))
}

struct Context {
    client: kube::Client,
    signers: Signers,
    events: EventSink,
    guard: PanicGuard,
}

/// cert-manager's check: may the requester `reference` the namespaced
/// issuer (by name, or `*`)?
async fn may_reference(
    client: &kube::Client,
    csr: &CertificateSigningRequest,
    namespace: &str,
    name: &str,
) -> Result<bool, ReconcileError> {
    let api: Api<SubjectAccessReview> = Api::all(client.clone());
    for resource_name in [name, "*"] {
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: csr.spec.username.clone(),
                groups: csr.spec.groups.clone(),
                extra: csr.spec.extra.clone(),
                uid: csr.spec.uid.clone(),
                resource_attributes: Some(ResourceAttributes {
                    group: Some(super::certificate_requests::ISSUER_GROUP.into()),
                    resource: Some("signers".into()),
                    verb: Some("reference".into()),
                    namespace: Some(namespace.into()),
                    name: Some(resource_name.into()),
                    version: Some("*".into()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let answer = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(ReconcileError::api("asking the API server (SubjectAccessReview)"))?;
        if answer.status.is_some_and(|s| s.allowed) {
            return Ok(true);
        }
    }
    Ok(false)
}

async fn reconcile(csr: Arc<CertificateSigningRequest>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let Some(issuer_name) = wants_signing(&csr) else { return Ok(Action::await_change()) };
    let allowed = match &issuer_name {
        IssuerName::Namespaced { namespace, name } => may_reference(&ctx.client, &csr, namespace, name).await?,
        IssuerName::Cluster(_) => true,
    };
    let name = csr.name_any();
    let outcome = ctx.guard.sign(&name, || work(&csr, &issuer_name, allowed, &ctx.signers, OffsetDateTime::now_utc()));
    let reference = csr.object_ref(&());
    let api: Api<CertificateSigningRequest> = Api::all(ctx.client.clone());
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let status = match &outcome {
        Outcome::Pending(why) => {
            // The CSR API has no pending state; an Event says why it waits.
            tracing::info!(csr = %name, reason = %why, "CertificateSigningRequest pending");
            ctx.events.publish(&reference, EventType::Normal, "Pending", note(why.clone())).await;
            return Ok(Action::requeue(Duration::from_secs(30)));
        }
        // Denied CSRs are skipped before signing; nothing to write.
        Outcome::Denied => return Ok(Action::await_change()),
        Outcome::Issued(signed) => {
            serde_json::json!({ "certificate": ByteString(signed.chain_pem.clone().into_bytes()) })
        }
        Outcome::Failed { reason, message } => {
            let mut conditions = csr.status.as_ref().and_then(|s| s.conditions.clone()).unwrap_or_default();
            conditions.push(CertificateSigningRequestCondition {
                type_: "Failed".into(),
                status: "True".into(),
                reason: Some(reason.as_str().into()),
                message: Some(message.clone()),
                last_transition_time: Some(now.clone()),
                last_update_time: Some(now),
            });
            serde_json::json!({ "conditions": conditions })
        }
    };
    let patch = Patch::Merge(serde_json::json!({
        "metadata": { "resourceVersion": csr.resource_version() },
        "status": status,
    }));
    api.patch_status(&name, &PatchParams::default(), &patch)
        .await
        .map_err(ReconcileError::api("writing the status"))?;
    let decision = audit::RequestDecision {
        source: "CertificateSigningRequest",
        request: name.clone(),
        issuer: issuer_name.to_string(),
        requester: csr.spec.username.as_deref().unwrap_or_default(),
    };
    match outcome {
        Outcome::Issued(signed) => {
            audit::request_issued(&decision, &signed.serial_hex, signed.not_after.unix_timestamp());
            let text = format!(
                "Certificate issued: serial {}, valid until {}",
                signed.serial_hex,
                crate::pki::rfc3339(signed.not_after)
            );
            ctx.events.publish(&reference, EventType::Normal, "Issued", note(text)).await;
            if let Some(why) = signed.shortened {
                ctx.events.publish(&reference, EventType::Warning, "DurationShortened", note(why)).await;
            }
        }
        Outcome::Failed { reason, message } => {
            audit::request_denied(&decision, reason.as_str(), &message);
            ctx.events.publish(&reference, EventType::Warning, reason.as_str(), note(message)).await;
        }
        Outcome::Pending(_) | Outcome::Denied => {}
    }
    Ok(Action::await_change())
}

fn error_policy(csr: Arc<CertificateSigningRequest>, error: &ReconcileError, _ctx: Arc<Context>) -> Action {
    tracing::warn!(csr = %csr.name_any(), error = %error, "CertificateSigningRequest reconcile failed; retrying");
    Action::requeue(Duration::from_secs(2))
}

/// Runs the Kubernetes CSR signer until the task is aborted; signing each
/// CSR runs under `guard`.
pub fn spawn(
    client: kube::Client,
    signers: Signers,
    reporter: String,
    guard: PanicGuard,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        signers.issuers.wait_synced().await;
        let triggers = signers.changes();
        let events = EventSink::new(client.clone(), reporter);
        let ctx = Arc::new(Context { client: client.clone(), signers, events, guard });
        // signerName is a selectable field of CSRs, but one selector cannot
        // name two prefixes, so the filtering happens here.
        Controller::new(Api::<CertificateSigningRequest>::all(client), watcher::Config::default())
            .reconcile_all_on(triggers)
            .run(reconcile, error_policy, ctx)
            .for_each(|_| async {})
            .await;
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::certificates::v1::{CertificateSigningRequestSpec, CertificateSigningRequestStatus};

    fn csr_with(conditions: &[(&str, &str)], certificate: Option<&[u8]>) -> CertificateSigningRequest {
        CertificateSigningRequest {
            spec: CertificateSigningRequestSpec {
                signer_name: "clusterissuers.meshroot.io/root".into(),
                request: ByteString(b"csr".to_vec()),
                ..Default::default()
            },
            status: Some(CertificateSigningRequestStatus {
                certificate: certificate.map(|c| ByteString(c.to_vec())),
                conditions: Some(
                    conditions
                        .iter()
                        .map(|(type_, status)| CertificateSigningRequestCondition {
                            type_: (*type_).into(),
                            status: (*status).into(),
                            ..Default::default()
                        })
                        .collect(),
                ),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn only_approved_undenied_unfailed_unsigned_csrs_are_signed() {
        let root = Some(IssuerName::Cluster("root".into()));
        assert_eq!(wants_signing(&csr_with(&[("Approved", "True")], None)), root);
        assert_eq!(wants_signing(&csr_with(&[("Approved", "True")], Some(b""))), root, "an empty certificate is none");
        for (why, conditions, certificate) in [
            ("not approved", &[][..], None),
            ("approval not True", &[("Approved", "False")][..], None),
            ("denied", &[("Denied", "True")][..], None),
            ("approved and denied", &[("Approved", "True"), ("Denied", "True")][..], None),
            ("denied and approved", &[("Denied", "True"), ("Approved", "True")][..], None),
            ("approved and failed", &[("Approved", "True"), ("Failed", "True")][..], None),
            ("already signed", &[("Approved", "True")][..], Some(&b"cert"[..])),
        ] {
            assert_eq!(wants_signing(&csr_with(conditions, certificate)), None, "{why}");
        }
        let mut foreign = csr_with(&[("Approved", "True")], None);
        foreign.spec.signer_name = "kubernetes.io/kubelet-serving".into();
        assert_eq!(wants_signing(&foreign), None, "another signer's");
    }

    #[test]
    fn signer_names() {
        assert_eq!(issuer_for_signer("clusterissuers.meshroot.io/root"), Some(IssuerName::Cluster("root".into())));
        assert_eq!(
            issuer_for_signer("issuers.meshroot.io/istio-system.mesh-ca"),
            Some(IssuerName::Namespaced { namespace: "istio-system".into(), name: "mesh-ca".into() })
        );
        assert_eq!(
            issuer_for_signer("issuers.meshroot.io/ns.name.with.dots"),
            Some(IssuerName::Namespaced { namespace: "ns".into(), name: "name.with.dots".into() })
        );
        for other in [
            "kubernetes.io/kube-apiserver-client",
            "clusterissuers.cert-manager.io/ca",
            "clusterissuers.meshroot.io/",
            "issuers.meshroot.io/no-namespace",
            "issuers.meshroot.io/.name",
            "clusterissuers.meshroot.io/a/b",
        ] {
            assert_eq!(issuer_for_signer(other), None, "{other}");
        }
    }

    fn csr(username: &str, groups: &[&str]) -> CertificateSigningRequest {
        let mut csr = CertificateSigningRequest::default();
        csr.spec.username = Some(username.into());
        csr.spec.groups = Some(groups.iter().map(|g| g.to_string()).collect());
        csr
    }

    #[test]
    fn a_requesters_namespace_needs_the_service_account_and_its_group() {
        let sa = ["system:serviceaccounts", "system:serviceaccounts:apps", "system:authenticated"];
        assert_eq!(requester_namespace(&csr("system:serviceaccount:apps:builder", &sa)), Some("apps"));
        // A user whose name merely looks like a service account (OIDC, webhook authentication).
        assert_eq!(requester_namespace(&csr("system:serviceaccount:apps:builder", &["system:authenticated"])), None);
        assert_eq!(requester_namespace(&csr("system:serviceaccount:istio-system:istiod", &sa)), None);
        assert_eq!(requester_namespace(&csr("system:serviceaccount:apps:a:b", &sa)), None);
        assert_eq!(requester_namespace(&csr("alice", &sa)), None);
    }
}
