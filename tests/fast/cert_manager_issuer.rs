//! The cert-manager external-issuer contract, state by state: which
//! requests are ours, approval gating, Denied, permanent and transient
//! errors, success in one write, idempotency, and the issuers' status.

use crate::support;

use serde_json::{Value, json};
use std::time::Duration;
use support::issuers::{CR_API, ISSUER_API, IssuerWorld, cluster_ref, condition, decode_b64, issuer_ref};
use support::openssl;
use x509_parser::prelude::{FromDer, X509Certificate};

fn dns_csr(world: &IssuerWorld, dns: &str) -> String {
    let key = openssl::key(world.dir.path(), "p256");
    openssl::csr(world.dir.path(), &key, "/", &[&format!("subjectAltName=DNS:{dns}")], false)
}

/// Status writes the server applied. A write the server refused with 409
/// (sent from a watch cache that had not yet seen the previous write; the
/// resourceVersion makes it a compare-and-swap) changes nothing, and how
/// often that happens depends on the machine's load.
fn status_writes(world: &IssuerWorld, name: &str) -> usize {
    let path = format!("/certificaterequests/{name}/status");
    world.fake.writes().iter().filter(|w| w.path.ends_with(&path) && w.status != 409).count()
}

fn reason(cr: &Value, type_: &str) -> Option<String> {
    condition(cr, type_).and_then(|c| c["reason"].as_str().map(String::from))
}

fn message(cr: &Value) -> String {
    condition(cr, "Ready").and_then(|c| c["message"].as_str().map(String::from)).unwrap_or_default()
}

/// A ClusterIssuer that signs with the root for every namespace, names under example.com.
fn open_root() -> Value {
    json!({"signer": {"root": true}, "allowedNamespaces": ["*"], "policy": {"allowedDNSNames": ["**.example.com"]}})
}

async fn settle() {
    tokio::time::sleep(Duration::from_millis(700)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_written_before_approval_and_success_is_one_write() {
    let world = IssuerWorld::start();
    world.cluster_issuer("root", open_root());
    let csr = dns_csr(&world, "a.example.com");
    world.request("apps", "waiting", &csr, cluster_ref("root"), json!({}));
    settle().await;
    assert_eq!(status_writes(&world, "waiting"), 0, "an unapproved request is not touched");
    assert!(world.cr("apps", "waiting")["status"].is_null());

    world.decide("apps", "waiting", true);
    let cr = world.wait_ready_reason("apps", "waiting", "Issued").await;
    assert_eq!(status_writes(&world, "waiting"), 1, "certificate, ca and Ready=Issued in one write");
    assert_eq!(condition(&cr, "Ready").unwrap()["status"], "True");
    assert_eq!(reason(&cr, "Approved").as_deref(), Some("cert-manager.io"), "the approver's condition is kept");
    assert!(cr["status"]["certificate"].is_string() && cr["status"]["ca"].is_string());
    assert!(cr["status"]["failureTime"].is_null());
    assert!(condition(&cr, "InvalidRequest").is_none());
}

/// meshroot writes only its own conditions (a server-side apply of
/// `/status`; `conditions` is a map list keyed by type): the approver's
/// condition stays exactly as the approver wrote it, fields meshroot's types
/// do not know included. cert-manager's webhook refuses any change to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_approvers_condition_is_never_rewritten() {
    let world = IssuerWorld::start();
    world.cluster_issuer("root", open_root());
    let csr = dns_csr(&world, "a.example.com");
    world.request("apps", "approved", &csr, cluster_ref("root"), json!({}));
    let approved = json!({
        "type": "Approved", "status": "True", "reason": "policy.example.com",
        "message": "approved by a policy", "lastTransitionTime": "2026-01-01T00:00:00.123456Z",
        "observedGeneration": 1,
    });
    world.fake.set_status(CR_API, "certificaterequests", "apps", "approved", json!({"conditions": [approved.clone()]}));
    let cr = world.wait_ready_reason("apps", "approved", "Issued").await;
    assert_eq!(condition(&cr, "Approved"), Some(&approved));
    let writes: Vec<_> =
        world.fake.writes().into_iter().filter(|w| w.path.ends_with("/certificaterequests/approved/status")).collect();
    assert!(!writes.is_empty());
    for w in writes {
        assert_eq!(w.content_type, "application/apply-patch+yaml", "{w:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_request_is_never_written_again() {
    let world = IssuerWorld::start();
    world.cluster_issuer("root", open_root());
    world.request("apps", "done", &dns_csr(&world, "a.example.com"), cluster_ref("root"), json!({}));
    world.decide("apps", "done", true);
    let issued = world.wait_ready_reason("apps", "done", "Issued").await;
    world.request("apps", "bad", "not a CSR", cluster_ref("root"), json!({}));
    world.decide("apps", "bad", true);
    world.wait_ready_reason("apps", "bad", "Failed").await;
    world.request("apps", "no", &dns_csr(&world, "b.example.com"), cluster_ref("root"), json!({}));
    world.decide("apps", "no", false);
    world.wait_ready_reason("apps", "no", "Denied").await;
    settle().await;
    world.fake.clear_requests();
    // Every signer change re-reconciles every request: a new issuer, a new mesh, a new root state.
    world.cluster_issuer("other", open_root());
    world.add_mesh("istio-system");
    world.root_tx.send_modify(|_| {});
    settle().await;
    for name in ["done", "bad", "no"] {
        assert_eq!(world.writes_to("certificaterequests", name), 0, "{name} was written again");
    }
    assert_eq!(world.cr("apps", "done")["status"], issued["status"], "the certificate is never re-signed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_requests_get_ready_denied_and_failure_time_in_one_write() {
    let world = IssuerWorld::start();
    world.cluster_issuer("root", open_root());
    world.request("apps", "denied", &dns_csr(&world, "a.example.com"), cluster_ref("root"), json!({}));
    world.decide("apps", "denied", false);
    let cr = world.wait_ready_reason("apps", "denied", "Denied").await;
    assert_eq!(status_writes(&world, "denied"), 1);
    assert_eq!(condition(&cr, "Ready").unwrap()["status"], "False");
    assert!(cr["status"]["failureTime"].is_string());
    assert!(cr["status"]["certificate"].is_null(), "a denied request is never signed");
    assert!(message(&cr).contains("denied by an approval controller"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_wins_even_for_a_missing_issuer() {
    let world = IssuerWorld::start();
    world.request("apps", "denied", &dns_csr(&world, "a.example.com"), cluster_ref("nowhere"), json!({}));
    world.decide("apps", "denied", false);
    let cr = world.wait_ready_reason("apps", "denied", "Denied").await;
    assert!(cr["status"]["failureTime"].is_string());
}

/// Permanent errors: InvalidRequest=True, Ready=False/Failed and failureTime together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_requests_fail_permanently_with_a_clear_message() {
    let world = IssuerWorld::start();
    world.cluster_issuer(
        "strict",
        json!({"signer": {"root": true}, "allowedNamespaces": ["apps"], "policy": {
            "allowedDNSNames": ["*.apps.example.com"], "maxDuration": "720h",
            "allowedUsages": ["digital signature", "key encipherment", "server auth"]}}),
    );
    let dir = world.dir.path();
    let key = openssl::key(dir, "p256");
    let ku_csr =
        openssl::csr(dir, &key, "/", &["subjectAltName=DNS:x.apps.example.com", "keyUsage=digitalSignature"], false);
    let ca_csr =
        openssl::csr(dir, &key, "/", &["subjectAltName=DNS:x.apps.example.com", "basicConstraints=CA:TRUE"], false);
    let empty_csr = openssl::csr(dir, &key, "/", &[], false);
    let bad_dns = openssl::csr(dir, &key, "/", &["subjectAltName=DNS:bad..name"], false);
    let cases: Vec<(&str, String, Value, &str, &str)> = vec![
        (
            "garbage",
            "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n".into(),
            json!({}),
            "InvalidRequest",
            "the CSR is invalid",
        ),
        ("not-pem", "hello".into(), json!({}), "InvalidRequest", "the CSR is invalid"),
        (
            "outside-policy",
            dns_csr(&world, "evil.example.org"),
            json!({}),
            "PolicyViolation",
            "DNS name \"evil.example.org\" is not allowed by policy.allowedDNSNames",
        ),
        (
            "usage-not-allowed",
            dns_csr(&world, "y.apps.example.com"),
            json!({"usages": ["client auth"]}),
            "PolicyViolation",
            "usages client auth are not in policy.allowedUsages",
        ),
        (
            "ca-not-allowed",
            dns_csr(&world, "z.apps.example.com"),
            json!({"isCA": true}),
            "PolicyViolation",
            "isCA is not allowed",
        ),
        (
            "usages-contradict-csr",
            ku_csr,
            json!({}),
            "InvalidRequest",
            "the CSR's key usages (digital signature) do not match the requested ones (digital signature, key encipherment)",
        ),
        (
            "isca-contradicts-csr",
            ca_csr,
            json!({}),
            "InvalidRequest",
            "the CSR's basicConstraints say CA:TRUE but spec.isCA is false",
        ),
        ("no-names", empty_csr, json!({}), "InvalidRequest", "neither a subject nor subject alternative names"),
        ("bad-dns", bad_dns, json!({}), "InvalidRequest", "DNS name \"bad..name\" is not a valid host name"),
        (
            "bad-duration",
            dns_csr(&world, "d.apps.example.com"),
            json!({"duration": "forever"}),
            "InvalidDuration",
            "spec.duration",
        ),
        (
            "too-short",
            dns_csr(&world, "e.apps.example.com"),
            json!({"duration": "5m"}),
            "InvalidRequest",
            "shorter than the minimum",
        ),
        (
            "bad-usage-name",
            dns_csr(&world, "f.apps.example.com"),
            json!({"usages": ["flying"]}),
            "InvalidRequest",
            "unknown usage \"flying\"",
        ),
    ];
    for (name, csr, extra, _, _) in &cases {
        world.request("apps", name, csr, cluster_ref("strict"), extra.clone());
        world.decide("apps", name, true);
    }
    for (name, _, _, invalid_reason, text) in &cases {
        let cr = world.wait_ready_reason("apps", name, "Failed").await;
        assert_eq!(condition(&cr, "InvalidRequest").unwrap()["status"], "True", "{name}");
        assert_eq!(reason(&cr, "InvalidRequest").as_deref(), Some(*invalid_reason), "{name}");
        assert!(cr["status"]["failureTime"].is_string(), "{name}: failureTime with Failed");
        assert!(message(&cr).contains(text), "{name}: {:?} lacks {text:?}", message(&cr));
        assert_eq!(status_writes(&world, name), 1, "{name}: one write");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_longer_duration_than_the_policy_allows_is_shortened_and_says_so() {
    let world = IssuerWorld::start();
    world.cluster_issuer(
        "short",
        json!({"signer": {"root": true}, "allowedNamespaces": ["apps"],
               "policy": {"maxDuration": "720h", "allowedDNSNames": ["a.example.com"]}}),
    );
    world.request(
        "apps",
        "long",
        &dns_csr(&world, "a.example.com"),
        cluster_ref("short"),
        json!({"duration": "2160h"}),
    );
    world.decide("apps", "long", true);
    let cr = world.wait_ready_reason("apps", "long", "Issued").await;
    assert!(message(&cr).contains("because the issuer's maxDuration is 30days"), "{}", message(&cr));
    // The certificate itself is shortened, not just the message.
    let chain =
        meshroot::pki::pem::decode_certificates(decode_b64(&cr["status"]["certificate"]).as_bytes(), 1 << 20).unwrap();
    let (_, leaf) = X509Certificate::from_der(chain[0].as_ref()).unwrap();
    let v = leaf.validity();
    assert_eq!(v.not_after.timestamp() - v.not_before.timestamp(), 720 * 3600, "NotAfter - NotBefore = maxDuration");
    // Events follow the status write.
    support::until("a Warning event saying the duration was shortened, and an Issued event", || {
        let events = world.fake.list("events.k8s.io/v1", "events");
        events.iter().any(|e| e["reason"] == "DurationShortened" && e["type"] == "Warning")
            && events.iter().any(|e| e["reason"] == "Issued" && e["regarding"]["name"] == "long")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_problems_stay_pending_and_recover_without_failing() {
    let world = IssuerWorld::start();
    // No issuer yet.
    world.request("apps", "early", &dns_csr(&world, "a.example.com"), cluster_ref("later"), json!({}));
    world.decide("apps", "early", true);
    let cr = world.wait_ready_reason("apps", "early", "Pending").await;
    assert!(message(&cr).contains("ClusterIssuer later not found"), "{}", message(&cr));
    assert!(cr["status"]["failureTime"].is_null());

    // The issuer arrives, signing with a mesh that does not exist yet.
    world.cluster_issuer(
        "later",
        json!({"signer": {"mesh": "istio-system"}, "allowedNamespaces": ["apps"],
               "policy": {"allowedDNSNames": ["a.example.com"]}}),
    );
    let cr = world
        .wait_until("apps", "early", |cr| message(cr).contains("waiting for ClusterIssuer later to become ready"))
        .await;
    assert_eq!(reason(&cr, "Ready").as_deref(), Some("Pending"));

    // The mesh gets its intermediate: the request is signed.
    world.add_mesh("istio-system");
    let cr = world.wait_ready_reason("apps", "early", "Issued").await;
    assert!(condition(&cr, "InvalidRequest").is_none());
    assert!(cr["status"]["failureTime"].is_null(), "never failed on the way");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_root_keeps_root_signed_requests_pending() {
    let world = IssuerWorld::start();
    world.root_tx.send_modify(|r| r.authority = None);
    world.cluster_issuer("root", open_root());
    world.request("apps", "r", &dns_csr(&world, "a.example.com"), cluster_ref("root"), json!({}));
    world.decide("apps", "r", true);
    let cr = world.wait_ready_reason("apps", "r", "Pending").await;
    assert!(message(&cr).contains("the root's key is offline"), "{}", message(&cr));
    let issuer = world.wait_issuer_ready("", "root", "False").await;
    assert_eq!(condition(&issuer, "Ready").unwrap()["reason"], "Pending");
}

/// cert-manager before 1.20: the CRD declares no selectableFields, so the
/// API server refuses the field selector and meshroot must filter itself.
fn fake_without_selectable_fields(dir: &std::path::Path) -> fake_apiserver::FakeApi {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let crd =
        std::fs::read_to_string(root.join("tests/fixtures/crds/cert-manager.io_certificaterequests.yaml")).unwrap();
    let start = crd.find("    selectableFields:").expect("the fixture declares selectableFields");
    let end = start + crd[start..].find("    served:").unwrap();
    std::fs::write(dir.join("crs.yaml"), format!("{}{}", &crd[..start], &crd[end..])).unwrap();
    fake_apiserver::FakeApi::with_crd_dirs(&[root.join("crds"), dir.to_path_buf()])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_for_other_issuers_are_never_touched() {
    let dir = tempfile::tempdir().unwrap();
    // With the API server selecting by group, and with meshroot filtering.
    for world in [IssuerWorld::start(), IssuerWorld::start_with(fake_without_selectable_fields(dir.path()))] {
        other_issuers_are_left_alone(world).await;
    }
}

async fn other_issuers_are_left_alone(world: IssuerWorld) {
    world.cluster_issuer("root", open_root());
    world.add_mesh_granting("default", &["apps"]);
    world.issuer(
        "apps",
        "root",
        json!({"signer": {"mesh": "default"}, "policy": {"allowedDNSNames": ["**.example.com"]}}),
    );
    let csr = dns_csr(&world, "a.example.com");
    let refs = [
        ("empty-group", json!({"name": "root", "kind": "ClusterIssuer"})),
        ("cert-manager-group", json!({"name": "root", "kind": "ClusterIssuer", "group": "cert-manager.io"})),
        ("other-group", json!({"name": "root", "kind": "ClusterIssuer", "group": "example.io"})),
        ("empty-string-group", json!({"name": "root", "kind": "Issuer", "group": ""})),
    ];
    for (name, r) in &refs {
        world.request("apps", name, &csr, r.clone(), json!({}));
        world.decide("apps", name, true);
    }
    world.request("apps", "denied-other", &csr, refs[0].1.clone(), json!({}));
    world.decide("apps", "denied-other", false);
    // A request of ours, to know the controller has caught up.
    world.request("apps", "ours", &csr, issuer_ref("root"), json!({}));
    world.decide("apps", "ours", true);
    world.wait_ready_reason("apps", "ours", "Issued").await;
    settle().await;
    for name in refs.iter().map(|(n, _)| *n).chain(["denied-other"]) {
        assert_eq!(status_writes(&world, name), 0, "{name} belongs to another issuer");
        assert!(condition(&world.cr("apps", name), "Ready").is_none(), "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kinds_and_namespaces_resolve_as_cert_manager_defines_them() {
    let world = IssuerWorld::start();
    world.add_mesh_granting("default", &["apps", "istio-system"]);
    world.issuer(
        "apps",
        "local",
        json!({"signer": {"mesh": "default"}, "policy": {"allowedDNSNames": ["**.example.com"]}}),
    );
    let csr = dns_csr(&world, "a.example.com");
    // An empty kind means Issuer.
    world.request("apps", "default-kind", &csr, json!({"name": "local", "group": "meshroot.io"}), json!({}));
    world.decide("apps", "default-kind", true);
    world.wait_ready_reason("apps", "default-kind", "Issued").await;
    // An Issuer is only visible from its own namespace.
    world.request("istio-system", "elsewhere", &csr, issuer_ref("local"), json!({}));
    world.decide("istio-system", "elsewhere", true);
    let cr = world.wait_ready_reason("istio-system", "elsewhere", "Pending").await;
    assert!(message(&cr).contains("Issuer istio-system/local not found"), "{}", message(&cr));
    // A kind meshroot does not have fails with the kinds it does.
    world.request(
        "apps",
        "odd-kind",
        &csr,
        json!({"name": "local", "kind": "Signer", "group": "meshroot.io"}),
        json!({}),
    );
    world.decide("apps", "odd-kind", true);
    let cr = world.wait_ready_reason("apps", "odd-kind", "Failed").await;
    assert_eq!(reason(&cr, "InvalidRequest").as_deref(), Some("UnknownIssuerKind"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuer_status_reports_readiness_with_observed_generation_and_signer() {
    let world = IssuerWorld::start();
    world.cluster_issuer("root", open_root());
    world.cluster_issuer("both", json!({"signer": {"root": true, "mesh": "x"}, "allowedNamespaces": ["*"]}));
    world.cluster_issuer(
        "bad-policy",
        json!({"signer": {"root": true}, "allowedNamespaces": ["*"], "policy": {"allowedIPRanges": ["nonsense"]}}),
    );
    world.issuer("apps", "mesh", json!({"signer": {"mesh": "istio-system"}}));

    let ready = world.wait_issuer_ready("", "root", "True").await;
    let c = condition(&ready, "Ready").unwrap();
    assert_eq!(c["reason"], "Checked");
    assert_eq!(c["observedGeneration"], ready["metadata"]["generation"]);
    assert_eq!(
        ready["status"]["signer"]["rootFingerprint"],
        meshroot::pki::chain::sha256_hex(world.root.certificate())
    );
    assert!(ready["status"]["signer"]["notAfter"].as_str().unwrap().ends_with('Z'));

    let both = world.wait_issuer_ready("", "both", "False").await;
    assert_eq!(condition(&both, "Ready").unwrap()["reason"], "Failed");
    assert!(condition(&both, "Ready").unwrap()["message"].as_str().unwrap().contains("not both"));
    let bad = world.wait_issuer_ready("", "bad-policy", "False").await;
    assert!(condition(&bad, "Ready").unwrap()["message"].as_str().unwrap().contains("policy.allowedIPRanges"));

    // No Mesh grants its intermediate to apps yet.
    let pending = world.wait_issuer_ready("apps", "mesh", "False").await;
    assert_eq!(condition(&pending, "Ready").unwrap()["reason"], "SignerNotGranted");
    world.add_mesh_granting("istio-system", &["apps"]);
    let now_ready = world.wait_issuer_ready("apps", "mesh", "True").await;
    assert!(
        condition(&now_ready, "Ready").unwrap()["message"]
            .as_str()
            .unwrap()
            .contains("mesh istio-system's intermediate")
    );

    // A spec change is re-checked: observedGeneration follows the generation.
    let mut obj = world.fake.get(ISSUER_API, "clusterissuers", "", "root").unwrap();
    obj["spec"]["policy"] = json!({"maxDuration": "24h"});
    let api: kube::Api<meshroot::api::ClusterIssuer> = kube::Api::all(world.fake.client());
    let updated: meshroot::api::ClusterIssuer = serde_json::from_value(obj).unwrap();
    api.replace("root", &Default::default(), &updated).await.unwrap();
    let after = world
        .wait_issuer_until("", "root", |i| {
            condition(i, "Ready").is_some_and(|c| c["observedGeneration"] == i["metadata"]["generation"])
                && i["metadata"]["generation"] == 2
        })
        .await;
    assert_eq!(condition(&after, "Ready").unwrap()["status"], "True");

    // Made unusable, it loses its signer from the status (replaced whole, not merged).
    let mut obj = world.fake.get(ISSUER_API, "clusterissuers", "", "root").unwrap();
    obj["spec"]["policy"] = json!({"allowedIPRanges": ["nonsense"]});
    let broken: meshroot::api::ClusterIssuer = serde_json::from_value(obj).unwrap();
    api.replace("root", &Default::default(), &broken).await.unwrap();
    let failed = world.wait_issuer_ready("", "root", "False").await;
    assert!(failed["status"].get("signer").is_none(), "a stale signer: {}", failed["status"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_selectable_fields_requests_are_filtered_in_meshroot() {
    let dir = tempfile::tempdir().unwrap();
    let world = IssuerWorld::start_with(fake_without_selectable_fields(dir.path()));
    world.cluster_issuer("root", open_root());
    let csr = dns_csr(&world, "a.example.com");
    world.request("apps", "theirs", &csr, json!({"name": "ca", "kind": "ClusterIssuer"}), json!({}));
    world.decide("apps", "theirs", true);
    world.request("apps", "ours", &csr, cluster_ref("root"), json!({}));
    world.decide("apps", "ours", true);
    world.wait_ready_reason("apps", "ours", "Issued").await;
    settle().await;
    assert_eq!(status_writes(&world, "theirs"), 0);
    let selected = world.fake.requests().iter().any(|r| r.query.contains("fieldSelector=spec.issuerRef.group"));
    assert!(selected, "meshroot tried the field selector first");
    let watched_all = world.fake.requests().iter().any(|r| {
        r.path.ends_with("/certificaterequests") && r.query.contains("watch=true") && !r.query.contains("fieldSelector")
    });
    assert!(watched_all, "then watched every request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workload_identities_are_only_minted_for_listed_patterns() {
    let world = IssuerWorld::start();
    world.cluster_issuer("open", open_root());
    let key = openssl::key(world.dir.path(), "p256");
    let istiod = "spiffe://cluster.local/ns/istio-system/sa/istiod";
    let csr = openssl::csr(world.dir.path(), &key, "/", &[&format!("subjectAltName=URI:{istiod}")], false);
    world.request("apps", "impersonation", &csr, cluster_ref("open"), json!({}));
    world.decide("apps", "impersonation", true);
    let cr = world.wait_ready_reason("apps", "impersonation", "Failed").await;
    assert_eq!(reason(&cr, "InvalidRequest").as_deref(), Some("PolicyViolation"));
    // No Mesh here has the trust domain; istiod reads the URI as an identity all the same.
    assert!(
        message(&cr).contains(&format!(
            "URI \"{istiod}\" is protected (istiod reads it as a workload identity, whatever its trust domain); \
             only a literal entry in policy.allowedURIs"
        )),
        "{}",
        message(&cr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_signing_panics_fails_alone_and_the_others_are_issued() {
    fn poison(name: &str) {
        if name == "apps/poison" {
            panic!("signing apps/poison panicked (test hook)");
        }
    }
    let world = IssuerWorld::start_poisoned(poison);
    world.cluster_issuer("root", open_root());
    for name in ["poison", "beside"] {
        world.request("apps", name, &dns_csr(&world, &format!("{name}.example.com")), cluster_ref("root"), json!({}));
        world.decide("apps", name, true);
    }
    let cr = world.wait_ready_reason("apps", "poison", "Failed").await;
    assert_eq!(reason(&cr, "InvalidRequest").as_deref(), Some("InternalError"));
    assert!(message(&cr).contains(meshroot::controllers::panic_guard::INTERNAL_ERROR_MESSAGE), "{}", message(&cr));
    assert!(!cr["status"].to_string().contains("test hook"), "no panic text in the status: {}", cr["status"]);
    assert!(cr["status"]["failureTime"].is_string());
    // The controller lives on: requests after the poison are issued.
    for name in ["after-1", "after-2"] {
        world.request("apps", name, &dns_csr(&world, &format!("{name}.example.com")), cluster_ref("root"), json!({}));
        world.decide("apps", name, true);
    }
    for name in ["beside", "after-1", "after-2"] {
        world.wait_ready_reason("apps", name, "Issued").await;
    }
    let panics = world
        .metrics
        .reconcile_panics
        .get_or_create(&meshroot::telemetry::metrics::ControllerLabels { controller: "certificate_requests" })
        .get();
    assert!(panics >= 1, "the panic is counted");
}

/// The namespaces may be the last list to arrive, and their events signal no change of their own:
/// the issuers' status is still written once everything is listed, not a resync (an hour here)
/// later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuer_status_is_written_when_the_namespaces_are_listed_last() {
    let fake = fake_apiserver::FakeApi::new();
    // The first list of namespaces fails: the watcher lists them again after its backoff.
    fake.inject("GET", "/api/v1/namespaces", fake_apiserver::Fault::Refused);
    fake.create(ISSUER_API, "clusterissuers", "", json!({"metadata": {"name": "root"}, "spec": open_root()}));
    let world = IssuerWorld::start_with(fake);
    let ready = world.wait_issuer_ready("", "root", "True").await;
    assert_eq!(condition(&ready, "Ready").unwrap()["reason"], "Checked", "{ready}");
}
