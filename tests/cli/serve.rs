//! `meshroot serve` as a binary, against the fake API over loopback through
//! a kubeconfig: two replicas, TokenReview, impersonation, root ConfigMaps,
//! leader-only writes and a graceful handover.

use crate::support;

use fake_apiserver::FakeApi;
use meshroot::client::verify_response;
use meshroot::pki::{KeyAlgorithm, PrivateKey, TrustBundle};
use serde_json::json;
use std::process::Command;
use std::time::Duration;
use support::{binary, eventually_async};

/// Resyncs every 2 s, so idle periods of a few seconds see several.
const RESYNC: &[&str] = &["--resync", "2s"];

fn root_pem(fake: &FakeApi) -> Vec<u8> {
    use base64::Engine as _;
    let s = fake.get("v1", "secrets", "meshroot", "meshroot-root-ca").unwrap();
    base64::engine::general_purpose::STANDARD.decode(s["data"]["tls.crt"].as_str().unwrap()).unwrap()
}

async fn request(
    fake: &FakeApi,
    port: u16,
    token: &str,
    identity: &str,
    impersonate: Option<&str>,
) -> Result<meshroot::pb::IstioCertificateResponse, tonic::Status> {
    support::replica::ask_trusting(port, &root_pem(fake), token, identity, impersonate).await
}

fn pod(fake: &FakeApi, ns: &str, name: &str, sa: &str, node: &str) -> String {
    let p = fake.create("v1", "pods", ns, json!({"metadata": {"name": name}, "spec": {"serviceAccountName": sa, "nodeName": node, "containers": [{"name": "c", "image": "i"}]}}));
    p["metadata"]["uid"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_serve_one_root_and_only_the_leader_writes() {
    let fake = FakeApi::new();
    support::replica::namespaces(&fake);
    // OpenShift's Gateway API istiod cannot be repointed: it gets cacerts.
    fake.create(
        "meshroot.io/v1alpha1",
        "meshes",
        "",
        json!({"metadata": {"name": "gateway"}, "spec": {"trustDomain": "cluster.local", "mode": "PluginCA",
            "istiod": {"namespace": "openshift-ingress", "revisions": ["openshift-gateway"]}}}),
    );
    fake.create(
        "meshroot.io/v1alpha1",
        "meshes",
        "",
        json!({"metadata": {"name": "default"}, "spec": {
        "trustDomain": "cluster.local", "istiod": {"namespace": "istio-system"},
        "namespaceSelector": {"matchLabels": {"mesh": "default"}}, "trustedNodeAccounts": ["istio-system/ztunnel"]}}),
    );
    let z_uid = pod(&fake, "istio-system", "ztunnel-a", "ztunnel", "node-1");
    let r_uid = pod(&fake, "bookinfo", "reviews-1", "reviews", "node-1");
    pod(&fake, "bookinfo", "ratings-1", "ratings", "node-2");
    fake.add_service_account_token("tok-reviews", "bookinfo", "reviews", Some(("reviews-1", &r_uid)), &["istio-ca"]);
    fake.add_service_account_token(
        "tok-ztunnel",
        "istio-system",
        "ztunnel",
        Some(("ztunnel-a", &z_uid)),
        &["istio-ca"],
    );
    let served = fake.serve().await;

    let r1 = binary::start(&served.kubeconfig, "replica-1", RESYNC).await;
    eventually_async("replica-1 ready", async || binary::ready(r1.ops).await.then_some(())).await;
    let reviews = "spiffe://cluster.local/ns/bookinfo/sa/reviews";
    let resp =
        eventually_async("a certificate", async || request(&fake, r1.grpc, "tok-reviews", reviews, None).await.ok())
            .await;
    let bundle = TrustBundle::from_pem(&root_pem(&fake)).unwrap();
    verify_response(&resp, &bundle, reviews).unwrap();

    // ztunnel on node-1 may act for reviews (node-1), not for ratings (node-2).
    let imp = request(&fake, r1.grpc, "tok-ztunnel", reviews, Some(reviews)).await.unwrap();
    verify_response(&imp, &bundle, reviews).unwrap();
    let ratings = "spiffe://cluster.local/ns/bookinfo/sa/ratings";
    let s = request(&fake, r1.grpc, "tok-ztunnel", ratings, Some(ratings)).await.unwrap_err();
    assert_eq!(s.code(), tonic::Code::Unauthenticated, "{s:?}");
    let s = request(&fake, r1.grpc, "not-a-token", reviews, None).await.unwrap_err();
    assert_eq!(s.code(), tonic::Code::Unauthenticated);

    // The leader distributed the root and istiod's certificate.
    let cm = eventually_async("bookinfo's root ConfigMap", async || {
        fake.get("v1", "configmaps", "bookinfo", "istio-ca-root-cert")
    })
    .await;
    assert_eq!(cm["data"]["root-cert.pem"].as_str().unwrap().as_bytes(), bundle.pem().as_bytes());
    assert!(fake.get("v1", "secrets", "istio-system", "istiod-tls").is_some());

    // The leader is also the cert-manager issuer: a Certificate's request
    // for a ClusterIssuer is signed under the same root.
    support::replica::root_cluster_issuer(&fake);
    support::replica::request_a_certificate(&fake, "shop");
    let ca = eventually_async("the CertificateRequest to be issued", async || {
        let cr = fake.get("cert-manager.io/v1", "certificaterequests", "bookinfo", "shop")?;
        cr["status"]["ca"].as_str().map(String::from)
    })
    .await;
    let ca = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, ca).unwrap();
    assert_eq!(ca, root_pem(&fake), "status.ca is the root");

    // The gateway istiod's plug-in CA is under the same root: a gateway leaf
    // it signs verifies against bookinfo's root ConfigMap, and the bookinfo
    // leaf verifies against the root the gateway istiod publishes.
    let text = |ns: &str, name: &str, key: &str| -> Option<String> {
        use base64::Engine as _;
        let s = fake.get("v1", "secrets", ns, name)?;
        String::from_utf8(base64::engine::general_purpose::STANDARD.decode(s["data"][key].as_str()?).ok()?).ok()
    };
    let (ca_cert, ca_key) = eventually_async("openshift-ingress/cacerts", async || {
        Some((
            text("openshift-ingress", "cacerts", "ca-cert.pem")?,
            text("openshift-ingress", "cacerts", "ca-key.pem")?,
        ))
    })
    .await;
    let gateway_ca = meshroot::pki::Authority::from_pem(ca_cert.as_bytes(), ca_key.as_bytes()).unwrap();
    let gw_key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let now = time::OffsetDateTime::now_utc();
    let gw_leaf = meshroot::pki::profile::issue_workload(
        &gateway_ca,
        &gw_key.spki_der(),
        "spiffe://cluster.local/ns/openshift-ingress/sa/gateway",
        time::Duration::hours(1),
        now,
    )
    .unwrap();
    let bookinfo_bundle = TrustBundle::from_pem(cm["data"]["root-cert.pem"].as_str().unwrap().as_bytes()).unwrap();
    bookinfo_bundle.verify(&gw_leaf.der, &[gateway_ca.certificate().clone()], now).unwrap();
    let gateway_roots =
        TrustBundle::from_pem(text("openshift-ingress", "cacerts", "root-cert.pem").unwrap().as_bytes()).unwrap();
    verify_response(&resp, &gateway_roots, reviews).unwrap();

    // A second replica serves but, not leading, writes nothing. It has a token of its own, so the
    // fake tells its requests from the leader's, which may still be converging under load.
    let kubeconfig_2 = served.kubeconfig.with_file_name("kubeconfig-replica-2");
    let admin_config = std::fs::read_to_string(&served.kubeconfig).unwrap();
    assert!(admin_config.contains("token: fake-admin-token"), "{admin_config}");
    std::fs::write(&kubeconfig_2, admin_config.replace("token: fake-admin-token", "token: replica-2")).unwrap();
    let r2 = binary::start(&kubeconfig_2, "replica-2", RESYNC).await;
    eventually_async("replica-2 ready", async || binary::ready(r2.ops).await.then_some(())).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut requests = fake.requests();
    assert!(requests.iter().any(|r| r.client == "replica-2"), "replica-2's requests are told apart");
    fake.clear_requests();
    let resp = request(&fake, r2.grpc, "tok-reviews", reviews, None).await.unwrap();
    verify_response(&resp, &bundle, reviews).unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let writes: Vec<_> = requests
        .iter()
        .cloned()
        .chain(fake.writes())
        .filter(|w| w.client == "replica-2" && w.method != "GET" && !w.path.contains("/leases/"))
        .filter(|w| !w.path.ends_with("/tokenreviews") && !w.path.ends_with("/subjectaccessreviews"))
        .collect();
    assert!(writes.is_empty(), "replica-2 wrote: {writes:?}");
    let lease = fake.get("coordination.k8s.io/v1", "leases", "meshroot", "meshroot-leader").unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "replica-1");

    // SIGTERM: replica-1 exits cleanly and replica-2 takes over at once.
    let status = Command::new("kill").args(["-TERM", &r1.child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let mut r1 = r1;
    let exit = eventually_async("replica-1 to exit", async || r1.child.try_wait().unwrap()).await;
    assert!(exit.success(), "{exit:?}");
    eventually_async("replica-2 to lead", async || {
        let lease = fake.get("coordination.k8s.io/v1", "leases", "meshroot", "meshroot-leader")?;
        (lease["spec"]["holderIdentity"] == "replica-2").then_some(())
    })
    .await;

    // The chart's RBAC allows every request the replicas made.
    requests.extend(fake.requests());
    let docs = support::helm::template(&["-f", support::helm::openshift_values().to_str().unwrap()]).unwrap();
    let granted = support::rbac::Granted::for_service_account(&docs, "meshroot", "mr-meshroot");
    let mut denied: Vec<String> = requests
        .iter()
        .flat_map(support::rbac::checks)
        .filter(|a| !granted.allows(a))
        .map(|a| format!("{a:?}"))
        .collect();
    denied.dedup();
    assert!(denied.is_empty(), "the chart's RBAC would refuse: {denied:#?}");
    let kinds: std::collections::BTreeSet<String> =
        requests.iter().flat_map(support::rbac::checks).map(|a| format!("{} {}", a.verb, a.resource)).collect();
    for must in [
        "create tokenreviews",
        "watch pods",
        "create secrets",
        "patch configmaps",
        "patch certificaterequests/status",
        "update leases",
    ] {
        assert!(kinds.contains(must), "the run made no {must:?} request, so the check above proves less: {kinds:?}");
    }

    // No token and no private key, of any Secret, in either replica's log.
    drop(r2);
    let logs: String = ["replica-1", "replica-2"]
        .iter()
        .map(|n| std::fs::read_to_string(binary::log_path(&served.kubeconfig, n)).unwrap())
        .collect();
    assert!(logs.contains("certificate issued") && logs.contains("leading"), "the logs are not captured: {logs}");
    // One audit line per decision, for the gRPC API and the issuer alike.
    let audit: Vec<serde_json::Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "meshroot::audit")
        .collect();
    let shop: Vec<_> = audit.iter().filter(|a| a["request"] == "bookinfo/shop").collect();
    assert_eq!(shop.len(), 1, "{shop:?}");
    assert_eq!(shop[0]["source"], "CertificateRequest");
    assert_eq!(shop[0]["outcome"], "issued");
    assert_eq!(shop[0]["issuer"], "ClusterIssuer mesh-root");
    assert_eq!(shop[0]["serial"].as_str().unwrap().len(), 40);
    let grpc_denied = audit.iter().filter(|a| a["outcome"] == "denied" && a["code"] == "Unauthenticated").count();
    assert!(grpc_denied >= 1, "the refused token left no audit line");
    for token in ["tok-reviews", "tok-ztunnel", "not-a-token"] {
        assert!(!logs.contains(token), "token {token} is in the logs");
    }
    assert!(!logs.contains("PRIVATE KEY"));
    let mut keys = 0;
    for secret in fake.list("v1", "secrets") {
        for (name, value) in secret["data"].as_object().into_iter().flatten() {
            if name.ends_with("key") || name.ends_with("key.pem") {
                use base64::Engine as _;
                let pem = base64::engine::general_purpose::STANDARD.decode(value.as_str().unwrap()).unwrap();
                let pem = String::from_utf8(pem).unwrap();
                // Lines long enough not to occur by chance.
                for line in pem.lines().filter(|l| !l.starts_with("-----") && l.len() >= 32) {
                    assert!(!logs.contains(line), "a line of {} {name} is in the logs", secret["metadata"]["name"]);
                }
                keys += 1;
            }
        }
    }
    assert!(keys >= 4, "only {keys} keys were checked");
    // Each Secret meshroot writes holds what its consumer reads, and nothing else.
    for secret in fake.list("v1", "secrets") {
        let name = secret["metadata"]["name"].as_str().unwrap();
        let held: Vec<&str> = secret["data"].as_object().unwrap().keys().map(String::as_str).collect();
        let expected: &[&str] = match name {
            "meshroot-root-ca" => &["tls.crt", "tls.key"],
            "cacerts" => &["ca-cert.pem", "ca-key.pem", "cert-chain.pem", "root-cert.pem"],
            n if n == "istiod-tls" || n.starts_with("meshroot-intermediate-") => &["ca.crt", "tls.crt", "tls.key"],
            other => panic!("meshroot wrote an unexpected Secret {other}"),
        };
        assert_eq!(held, expected, "Secret {name}");
    }
}
