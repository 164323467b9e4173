//! Real Istio: istiod (`pilot-discovery`, built from the istio.io/istio
//! module), workloads that get their certificates through Istio's own CA
//! client (`istio-ca-client`, our program around Istio's `citadel` client
//! package, with real pod-bound tokens), and a Go `crypto/tls` mutual-TLS
//! check between two workloads (`mtls-probe`). Both in tests/peers/istio.
//!
//! The problem meshroot exists for, reproduced and then fixed with the steps
//! of docs/openshift.md: the Service Mesh istiod (`istio-system`) and the
//! Gateway API istiod (`openshift-ingress`, revision `openshift-gateway`) each
//! sign with a CA of their own, so a gateway and a mesh workload cannot
//! complete a mutual-TLS handshake.

use crate::chart::{self, NS, ROOT_SECRET};
use crate::cluster::{Cluster, Options, free_loopback_port, istio_crds, peers};
use crate::serve::{condition, mesh_api, secret, secret_text};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::api::{Api, Patch, PatchParams, PostParams};
use meshroot::pki::TrustBundle;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The ConfigMap the gateway istiod writes its root to (`PILOT_CA_CERT_CONFIGMAP`): a name of its
/// own, or the two istiods would overwrite each other's `istio-ca-root-cert`. This is the name the
/// OpenShift ingress operator gives it (`OpenShiftGatewayCARootCertName`), as docs/openshift.md says.
const GATEWAY_ROOT_CONFIGMAP: &str = "openshift-gw-ca-root-cert";

/// Polls `f` until it answers, for at most `timeout` (istiod starts in seconds to a minute on
/// a loaded two-core machine).
pub(crate) async fn within<T>(what: &str, timeout: Duration, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(started.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// One istiod run out of cluster, as the admin.
pub(crate) struct Istiod {
    pub(crate) namespace: &'static str,
    /// The secure gRPC port (15012 in a cluster): xDS and, with its CA server on, the CA.
    pub(crate) secure: u16,
}

/// How an istiod is configured: its CA server, its files (relative to its working directory, as
/// a pod's mounts would place them) and its environment.
pub(crate) struct IstiodSetup {
    pub(crate) ca_server: bool,
    pub(crate) files: Vec<(String, String)>,
    pub(crate) revision: Option<&'static str>,
    pub(crate) root_configmap: Option<&'static str>,
    /// More `pilot-discovery discovery` flags.
    pub(crate) extra_args: Vec<String>,
}

/// Starts (or restarts, with a new setup) istiod `name` in `namespace` and waits until it is ready.
pub(crate) async fn start_istiod(
    cluster: &mut Cluster,
    name: &str,
    namespace: &'static str,
    setup: IstiodSetup,
) -> Istiod {
    declare_istiod(cluster, name, namespace, &setup).await;
    let cwd = cluster.subdir(name);
    for tree in ["var", "etc"] {
        let _ = std::fs::remove_dir_all(cwd.join(tree));
    }
    for (path, contents) in &setup.files {
        let path = cwd.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, contents).unwrap();
    }
    // A free port can be taken by another test between choosing it and istiod binding it: then
    // istiod exits, and starts again on other ports.
    for attempt in 1..=3 {
        let [http, grpc, secure, monitoring, https, ctrlz] = std::array::from_fn(|_| free_loopback_port());
        let args: Vec<String> = vec![
            "discovery".into(),
            format!("--kubeconfig={}", cluster.admin_kubeconfig().display()),
            format!("--namespace={namespace}"),
            "--clusterID=Kubernetes".into(),
            format!("--httpAddr=127.0.0.1:{http}"),
            format!("--grpcAddr=127.0.0.1:{grpc}"),
            format!("--secureGRPCAddr=127.0.0.1:{secure}"),
            format!("--monitoringAddr=127.0.0.1:{monitoring}"),
            format!("--httpsAddr=127.0.0.1:{https}"),
            format!("--ctrlz_port={ctrlz}"),
            "--ctrlz_address=127.0.0.1".into(),
        ];
        let args: Vec<String> = args.into_iter().chain(setup.extra_args.iter().cloned()).collect();
        let mut env = vec![
            ("POD_NAMESPACE", namespace.to_string()),
            ("POD_NAME", format!("{name}-0")),
            ("ENABLE_CA_SERVER", setup.ca_server.to_string()),
            ("PILOT_ENABLE_GATEWAY_API", "false".to_string()),
        ];
        if let Some(revision) = setup.revision {
            env.push(("REVISION", revision.to_string()));
        }
        if let Some(configmap) = setup.root_configmap {
            env.push(("PILOT_CA_CERT_CONFIGMAP", configmap.to_string()));
        }
        cluster.run(name, "pilot-discovery", &args, &cwd, &env);
        let ready = std::net::SocketAddr::from(([127, 0, 0, 1], http));
        let started = Instant::now();
        loop {
            let up = tokio::net::TcpStream::connect(ready).await.is_ok()
                && crate::support::http_get(ready, "/ready").await.starts_with("HTTP/1.1 200");
            if up {
                return Istiod { namespace, secure };
            }
            if cluster.exited(name) {
                eprintln!("{name} exited (attempt {attempt}); starting it again on other ports");
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(120), "{name} not ready after 120 s");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    panic!("{name} exited three times");
}

/// The Deployment a chart would have made for this istiod, as `meshroot doctor` reads it (this
/// tier has no kubelet: the process above is what runs, with the same environment).
async fn declare_istiod(cluster: &Cluster, name: &str, namespace: &str, setup: &IstiodSetup) {
    let mut labels = json!({"app": "istiod"});
    let mut env = vec![json!({"name": "ENABLE_CA_SERVER", "value": setup.ca_server.to_string()})];
    if let Some(revision) = setup.revision {
        labels["istio.io/rev"] = json!(revision);
        env.push(json!({"name": "REVISION", "value": revision}));
    }
    if let Some(configmap) = setup.root_configmap {
        env.push(json!({"name": "PILOT_CA_CERT_CONFIGMAP", "value": configmap}));
    }
    let deployment = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "discovery", "image": "pilot", "env": env}]},
            },
        },
    });
    Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(cluster.admin.clone(), namespace)
        .patch(name, &PatchParams::apply("istio-tier").force(), &Patch::Apply(deployment))
        .await
        .unwrap();
}

/// `meshroot doctor -o json` and `meshroot doctor` against the cluster, as its admin: the exit
/// status, the report and the table.
async fn doctor(cluster: &Cluster) -> (Option<i32>, serde_json::Value, String) {
    let run = |format: &'static str| {
        tokio::process::Command::new(crate::support::binary::BIN)
            .args(["doctor", "-o", format])
            .env("KUBECONFIG", cluster.admin_kubeconfig())
            .env_remove("POD_NAMESPACE")
            .output()
    };
    let (json_run, table_run) = (run("json").await.unwrap(), run("table").await.unwrap());
    let report = serde_json::from_slice(&json_run.stdout).unwrap_or_else(|e| {
        panic!(
            "doctor's JSON: {e}: {}{}",
            String::from_utf8_lossy(&json_run.stdout),
            String::from_utf8_lossy(&json_run.stderr)
        )
    });
    assert_eq!(json_run.status.code(), table_run.status.code(), "one verdict in both formats");
    (json_run.status.code(), report, String::from_utf8_lossy(&table_run.stdout).into_owned())
}

/// Each istiod in a doctor report: its mesh, CA mode and issuing root.
fn istiods(report: &serde_json::Value) -> Vec<(&str, &str, &str)> {
    fn text(v: &serde_json::Value) -> &str {
        v.as_str().unwrap_or("(none)")
    }
    report["istiods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (text(&i["mesh"]), text(&i["caMode"]), text(&i["issuingRoot"])))
        .collect()
}

/// The certificate's SHA-256, as the doctor names roots.
fn fingerprint(pem: &str) -> String {
    meshroot::pki::chain::sha256_hex(&meshroot::pki::pem::decode_certificates(pem.as_bytes(), 1 << 20).unwrap()[0])
}

/// A workload: a pod of service account `namespace/sa` on a node, and its `istio-ca` token.
pub(crate) struct Workload {
    namespace: &'static str,
    sa: &'static str,
    pub(crate) token: String,
}

impl Workload {
    pub(crate) async fn create(cluster: &Cluster, namespace: &'static str, sa: &'static str) -> Workload {
        Self::on_node(cluster, namespace, sa, "node-1").await
    }

    async fn on_node(cluster: &Cluster, namespace: &'static str, sa: &'static str, node: &str) -> Workload {
        cluster.service_account(namespace, sa).await;
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": format!("{sa}-1")},
            "spec": {"nodeName": node, "serviceAccountName": sa, "containers": [{"name": "app", "image": sa}]},
        }))
        .unwrap();
        let pod = Api::<Pod>::namespaced(cluster.admin.clone(), namespace)
            .create(&PostParams::default(), &pod)
            .await
            .unwrap();
        let bound = (format!("{sa}-1"), pod.metadata.uid.unwrap());
        let token = cluster.token(namespace, sa, &["istio-ca"], Some((&bound.0, &bound.1))).await;
        Workload { namespace, sa, token }
    }

    pub(crate) fn identity(&self) -> String {
        format!("spiffe://cluster.local/ns/{}/sa/{}", self.namespace, self.sa)
    }

    /// A certificate from the CA at `127.0.0.1:port` through Istio's CA client, as pilot-agent asks
    /// (RSA-2048, the ClusterID header, its token); the CA's serving certificate must chain to
    /// `ca_roots` under `server_name`. The files land in `<cluster>/<label>`.
    async fn certificate(
        &self,
        cluster: &Cluster,
        label: &str,
        port: u16,
        server_name: &str,
        ca_roots: &str,
    ) -> Result<PathBuf, String> {
        let args = [format!("--spiffe={}", self.identity()), "--key=rsa".to_string()];
        istio_ca_client(cluster, label, port, server_name, ca_roots, &self.token, &args).await
    }

    /// A certificate for `target`, asked for by this workload as a node proxy, the way ztunnel
    /// asks (P-256, empty subject, `ImpersonatedIdentity` in the request's metadata).
    async fn impersonating(
        &self,
        target: &Workload,
        cluster: &Cluster,
        label: &str,
        port: u16,
        ca_roots: &str,
    ) -> Result<PathBuf, String> {
        let args = [format!("--impersonate={}", target.identity())];
        istio_ca_client(cluster, label, port, "localhost", ca_roots, &self.token, &args).await
    }
}

/// Runs Istio's CA client against `127.0.0.1:port` with `token`; its files land in `<cluster>/<label>`.
async fn istio_ca_client(
    cluster: &Cluster,
    label: &str,
    port: u16,
    server_name: &str,
    ca_roots: &str,
    token: &str,
    args: &[String],
) -> Result<PathBuf, String> {
    let out = cluster.subdir(label);
    let (token_file, roots) = (out.join("token"), out.join("ca-roots.pem"));
    std::fs::write(&token_file, token).unwrap();
    std::fs::write(&roots, ca_roots).unwrap();
    let run = tokio::process::Command::new(peers().join("istio-ca-client"))
        .arg(format!("--ca-addr=127.0.0.1:{port}"))
        .arg(format!("--server-name={server_name}"))
        .arg(format!("--root-cert={}", roots.display()))
        .arg(format!("--token-file={}", token_file.display()))
        .arg("--cluster-id=Kubernetes")
        .arg(format!("--out-dir={}", out.display()))
        .args(args)
        .output()
        .await
        .unwrap();
    if run.status.success() {
        Ok(out)
    } else {
        Err(format!("{}{}", String::from_utf8_lossy(&run.stdout), String::from_utf8_lossy(&run.stderr)))
    }
}

/// A mutual-TLS handshake between workload `server` and workload `client` (directories holding
/// `cert-chain.pem` and `key.pem`), each trusting only its own roots: "OK …" or the refusal.
fn handshake(server: &Path, server_trusts: &str, client: &Path, client_trusts: &str) -> Result<String, String> {
    let trusts = |dir: &Path, pem: &str| {
        let path = dir.join("trusts.pem");
        std::fs::write(&path, pem).unwrap();
        path
    };
    let (server_ca, client_ca) = (trusts(server, server_trusts), trusts(client, client_trusts));
    let run = std::process::Command::new(peers().join("mtls-probe"))
        .arg(format!("--a-cert={}", server.join("cert-chain.pem").display()))
        .arg(format!("--a-key={}", server.join("key.pem").display()))
        .arg(format!("--a-ca={}", server_ca.display()))
        .arg(format!("--b-cert={}", client.join("cert-chain.pem").display()))
        .arg(format!("--b-key={}", client.join("key.pem").display()))
        .arg(format!("--b-ca={}", client_ca.display()))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&run.stdout).to_string() + &String::from_utf8_lossy(&run.stderr);
    if run.status.success() { Ok(text) } else { Err(text) }
}

async fn configmap_pem(cluster: &Cluster, namespace: &str, name: &str) -> Option<String> {
    let cm = Api::<ConfigMap>::namespaced(cluster.admin.clone(), namespace).get_opt(name).await.ok()??;
    cm.data?.get("root-cert.pem").cloned()
}

pub(crate) async fn secret_key(cluster: &Cluster, namespace: &str, name: &str, key: &str) -> Option<String> {
    secret_text(&secret(cluster, namespace, name).await?, key)
}

/// The leaf of a workload's `cert-chain.pem` verifies against `roots` (intermediates from the chain).
fn chains_to(workload: &Path, roots: &TrustBundle) -> bool {
    let pem = std::fs::read(workload.join("cert-chain.pem")).unwrap();
    let chain = meshroot::pki::pem::decode_certificates(&pem, 1 << 20).unwrap();
    roots.verify(&chain[0], &chain[1..], time::OffsetDateTime::now_utc()).is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_istiods_fail_mutual_tls_until_meshroot_gives_them_one_root() {
    let mut cluster = Cluster::start(Options::default()).await;
    // The namespaces and meshroot's CRDs and chart objects (inert: meshroot is not running yet).
    chart::install(&cluster).await;
    cluster.apply_dir(&istio_crds()).await;
    cluster.wait_for_crds().await;

    // Before meshroot: each istiod signs with its own self-signed CA.
    let mesh_setup = || IstiodSetup {
        ca_server: true,
        files: Vec::new(),
        revision: None,
        root_configmap: None,
        extra_args: Vec::new(),
    };
    let gateway_setup = |files| IstiodSetup {
        ca_server: true,
        files,
        revision: Some("openshift-gateway"),
        root_configmap: Some(GATEWAY_ROOT_CONFIGMAP),
        extra_args: Vec::new(),
    };
    let mesh_istiod = start_istiod(&mut cluster, "istiod", "istio-system", mesh_setup()).await;
    let gateway_istiod =
        start_istiod(&mut cluster, "istiod-openshift-gateway", "openshift-ingress", gateway_setup(Vec::new())).await;
    let sidecar = Workload::create(&cluster, "bookinfo", "reviews").await;
    let gateway = Workload::create(&cluster, "openshift-ingress", "gateway").await;
    let wait = Duration::from_secs(60);
    let old_mesh_roots = within("the mesh istiod's root in bookinfo", wait, async || {
        configmap_pem(&cluster, "bookinfo", "istio-ca-root-cert").await
    })
    .await;
    let old_gateway_roots = within("the gateway istiod's root in openshift-ingress", wait, async || {
        configmap_pem(&cluster, "openshift-ingress", GATEWAY_ROOT_CONFIGMAP).await
    })
    .await;
    assert_ne!(old_mesh_roots, old_gateway_roots, "two self-signed CAs");
    let server_name = |istiod: &Istiod| format!("istiod.{}.svc", istiod.namespace);
    let old_sidecar = sidecar
        .certificate(&cluster, "sidecar-before", mesh_istiod.secure, &server_name(&mesh_istiod), &old_mesh_roots)
        .await
        .expect("a sidecar certificate from the mesh istiod");
    let old_gateway = gateway
        .certificate(
            &cluster,
            "gateway-before",
            gateway_istiod.secure,
            "istiod-openshift-gateway.openshift-ingress.svc",
            &old_gateway_roots,
        )
        .await
        .expect("a gateway certificate from the gateway istiod");
    let refused = handshake(&old_sidecar, &old_mesh_roots, &old_gateway, &old_gateway_roots)
        .expect_err("two roots: the handshake fails");
    assert!(refused.contains("certificate signed by unknown authority"), "{refused}");

    // meshroot doctor sees the same: the two meshes' trust is split, and says where.
    let (status, report, table) = doctor(&cluster).await;
    eprintln!("meshroot doctor, before meshroot:\n{table}");
    assert_eq!(status, Some(2), "split trust exits 2: {table}");
    assert_eq!(report["verdict"], "split", "{table}");
    assert_eq!(
        istiods(&report),
        [
            ("istio-system/default", "own-ca", fingerprint(&old_mesh_roots).as_str()),
            ("openshift-ingress/openshift-gateway", "own-ca", fingerprint(&old_gateway_roots).as_str()),
        ]
    );
    let split: Vec<_> = report["pairs"].as_array().unwrap().iter().filter(|p| p["status"] == "split").collect();
    assert_eq!(split.len(), 1, "{table}");
    assert_eq!(split[0]["meshes"], json!(["istio-system/default", "openshift-ingress/openshift-gateway"]));
    let reasons = split[0]["reasons"].to_string();
    for namespace in ["bookinfo:", "istio-system:", "openshift-ingress:"] {
        assert!(reasons.contains(namespace), "{namespace} named: {reasons}");
    }
    assert!(table.contains("SPLIT") && table.contains("WHAT TO CHANGE"), "{table}");

    // docs/openshift.md step 1: the roots in use today, from each istiod's istio-ca-secret.
    let old_roots = [
        secret_key(&cluster, "istio-system", "istio-ca-secret", "ca-cert.pem").await.expect("the mesh root"),
        secret_key(&cluster, "openshift-ingress", "istio-ca-secret", "ca-cert.pem").await.expect("the gateway root"),
    ]
    .concat();

    // Step 2: install meshroot, add the old roots to its bundle, wait for both meshes.
    let server = chart::serve(&cluster, chart::serve_options("meshroot-0")).await;
    let root_secret = within("the generated root", wait, async || secret(&cluster, NS, ROOT_SECRET).await).await;
    let root_pem = secret_text(&root_secret, "tls.crt").unwrap();
    let ca_crt = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &old_roots);
    Api::<Secret>::namespaced(cluster.admin.clone(), NS)
        .patch(ROOT_SECRET, &PatchParams::default(), &Patch::Merge(json!({"data": {"ca.crt": ca_crt}})))
        .await
        .unwrap();
    let meshes = mesh_api(&cluster.admin);
    for name in ["service-mesh", "gateway-api"] {
        within(&format!("Mesh {name} Ready with three roots"), wait, async || {
            let mesh = serde_json::to_value(meshes.get(name).await.ok()?).ok()?;
            let ready = condition(&mesh, "Ready")?["status"] == "True";
            (ready && mesh["status"]["rootFingerprints"].as_array()?.len() == 3).then_some(())
        })
        .await;
    }
    let istiod_tls = within("istiod-tls", wait, async || secret(&cluster, "istio-system", "istiod-tls").await).await;
    let cacerts = within("cacerts with the bundle", wait, async || {
        let s = secret(&cluster, "openshift-ingress", "cacerts").await?;
        secret_text(&s, "root-cert.pem").filter(|pem| pem.contains(old_roots.trim())).map(|_| s)
    })
    .await;
    // istiod's CA server is still on, and it writes its own root to istio-ca-root-cert too:
    // meshroot sees the contest in managedFields, reports it, and rewrites those ConfigMaps only
    // once a resync (1 s here, 60 s by default) instead of trading writes with istiod.
    let contest = within("the contest reported on the Mesh", wait, async || {
        let mesh = serde_json::to_value(meshes.get("service-mesh").await.ok()?).ok()?;
        let c = condition(&mesh, "RootConfigMapsContested")?;
        (c["status"] == "True").then(|| c["message"].as_str().unwrap_or_default().to_string())
    })
    .await;
    assert!(contest.contains("ENABLE_CA_SERVER=false"), "{contest}");
    let writes = |cluster: &Cluster| {
        let (mut meshroot, mut others) = (0, 0);
        for e in cluster.audit_events() {
            let verb = e["verb"].as_str().unwrap_or_default();
            let name = e["objectRef"]["name"].as_str().unwrap_or_default();
            if e["objectRef"]["resource"] == "configmaps"
                && name == "istio-ca-root-cert"
                && ["update", "patch"].contains(&verb)
            {
                if e["user"]["username"] == format!("system:serviceaccount:{NS}:{}", chart::SERVICE_ACCOUNT) {
                    meshroot += 1;
                } else {
                    others += 1;
                }
            }
        }
        (meshroot, others)
    };
    let (meshroot_before, others_before) = writes(&cluster);
    let window = Duration::from_secs(10);
    // Throughout, the Mesh keeps reporting the contest (it does not flap with each write).
    let started = Instant::now();
    while started.elapsed() < window {
        let mesh = serde_json::to_value(meshes.get("service-mesh").await.unwrap()).unwrap();
        let status = condition(&mesh, "RootConfigMapsContested").map(|c| c["status"].clone());
        assert_eq!(status, Some(json!("True")), "the contest reported throughout");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (meshroot_after, others_after) = writes(&cluster);
    let (by_meshroot, by_istiod) = (meshroot_after - meshroot_before, others_after - others_before);
    eprintln!(
        "contest over {window:?}: meshroot wrote istio-ca-root-cert {by_meshroot} times, istiod {by_istiod}: {contest}"
    );
    // Both keep writing (a contest, not one side giving up), meshroot to bookinfo and
    // istio-system at most once a second each (and one pass in flight).
    assert!(by_istiod >= 1 && by_meshroot >= 1, "a contest: meshroot {by_meshroot}, istiod {by_istiod}");
    assert!(by_meshroot <= 2 * (window.as_secs() as usize + 1), "{by_meshroot} writes in {window:?}");

    // Step 3: the mesh istiod stops signing and serves meshroot's istiod-tls, mounted where its
    // chart mounts it, with istio-system's root ConfigMap.
    let file = |s: &Secret, key: &str| secret_text(s, key).unwrap();
    let mesh_istiod = start_istiod(
        &mut cluster,
        "istiod",
        "istio-system",
        IstiodSetup {
            ca_server: false,
            files: vec![
                ("var/run/secrets/istiod/tls/tls.crt".into(), file(&istiod_tls, "tls.crt")),
                ("var/run/secrets/istiod/tls/tls.key".into(), file(&istiod_tls, "tls.key")),
                // The bundle, as kubelet projects istio-system's root ConfigMap once meshroot holds it.
                ("var/run/secrets/istiod/ca/root-cert.pem".into(), [root_pem.as_str(), &old_roots].concat()),
            ],
            ..mesh_setup()
        },
    )
    .await;
    // Step 4.1: the gateway istiod restarts on cacerts.
    let cacerts_files = ["ca-cert.pem", "ca-key.pem", "root-cert.pem", "cert-chain.pem"]
        .map(|key| (format!("etc/cacerts/{key}"), file(&cacerts, key)));
    let gateway_istiod = start_istiod(
        &mut cluster,
        "istiod-openshift-gateway",
        "openshift-ingress",
        gateway_setup(cacerts_files.to_vec()),
    )
    .await;
    // With istiod's CA server off, meshroot's next rewrite holds: the contest ends.
    let mesh_bundle = within("bookinfo's root ConfigMap with the bundle", wait, async || {
        configmap_pem(&cluster, "bookinfo", "istio-ca-root-cert").await.filter(|pem| pem.contains(root_pem.trim()))
    })
    .await;
    within("istio-system's root ConfigMap with the bundle", wait, async || {
        configmap_pem(&cluster, "istio-system", "istio-ca-root-cert").await.filter(|pem| pem.contains(root_pem.trim()))
    })
    .await;
    within("the contest over", wait, async || {
        let mesh = serde_json::to_value(meshes.get("service-mesh").await.ok()?).ok()?;
        (condition(&mesh, "RootConfigMapsContested")?["status"] == "False").then_some(())
    })
    .await;
    // And at rest nobody writes them: istiod with its CA off leaves them alone.
    let (meshroot_before, others_before) = writes(&cluster);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(writes(&cluster), (meshroot_before, others_before), "istio-ca-root-cert written at rest");
    let gateway_bundle = within("the gateway istiod's root ConfigMap with the bundle", wait, async || {
        configmap_pem(&cluster, "openshift-ingress", GATEWAY_ROOT_CONFIGMAP)
            .await
            .filter(|pem| pem.contains(root_pem.trim()))
    })
    .await;

    // Step 4's deadline: a pod not restarted yet still asks istiod (the CA address it started
    // with), whose CA server is now off, so it cannot renew; every restart must finish within one
    // workload certificate lifetime.
    let stale = sidecar
        .certificate(&cluster, "sidecar-not-restarted", mesh_istiod.secure, "istiod.istio-system.svc", &mesh_bundle)
        .await
        .expect_err("istiod signed with its CA server off");
    assert!(stale.contains("Unimplemented") || stale.contains("unknown service"), "{stale}");

    // Steps 4.2 and 4.3: restarted workloads ask again: the sidecar meshroot, the gateway its istiod.
    let new_sidecar = sidecar
        .certificate(&cluster, "sidecar-after", server.grpc_addr.port(), "localhost", &mesh_bundle)
        .await
        .expect("a sidecar certificate from meshroot");
    let new_gateway = gateway
        .certificate(
            &cluster,
            "gateway-after",
            gateway_istiod.secure,
            "istiod-openshift-gateway.openshift-ingress.svc",
            &gateway_bundle,
        )
        .await
        .expect("a gateway certificate from the gateway istiod on cacerts");
    let root = TrustBundle::from_pem(root_pem.as_bytes()).unwrap();
    assert!(chains_to(&new_sidecar, &root), "the sidecar's certificate is under meshroot's root");
    assert!(chains_to(&new_gateway, &root), "the gateway's certificate is under meshroot's root");

    // Mutual TLS now works both ways, each side trusting only what its mesh distributes.
    for (server_side, server_trusts, client_side, client_trusts) in [
        (&new_sidecar, &mesh_bundle, &new_gateway, &gateway_bundle),
        (&new_gateway, &gateway_bundle, &new_sidecar, &mesh_bundle),
    ] {
        let ok = handshake(server_side, server_trusts, client_side, client_trusts)
            .expect("one root: the handshake succeeds");
        assert!(ok.starts_with("OK"), "{ok}");
    }

    // And meshroot doctor confirms one root: meshroot's, for both meshes; the old roots, still in
    // the bundles, are named for retirement.
    let (status, report, table) = doctor(&cluster).await;
    eprintln!("meshroot doctor, after:\n{table}");
    assert_eq!(status, Some(0), "{table}");
    assert_eq!(report["verdict"], "one-root", "{table}");
    let meshroot_root = fingerprint(&root_pem);
    assert_eq!(
        istiods(&report),
        [
            ("istio-system/default", "external", meshroot_root.as_str()),
            ("openshift-ingress/openshift-gateway", "cacerts", meshroot_root.as_str()),
        ],
        "{table}"
    );
    let advice = report["advice"].to_string();
    for old in [&old_mesh_roots, &old_gateway_roots] {
        assert!(advice.contains(&fingerprint(old)[..16]), "old root named for retirement: {advice}");
    }

    // A sidecar not yet restarted still trusts only the root its CA answered with (pilot-agent
    // takes the workload trust from that answer): it refuses a restarted peer of its own mesh,
    // although the restarted one would accept it (its bundle holds the old roots).
    let refused = handshake(&old_sidecar, &old_mesh_roots, &new_sidecar, &mesh_bundle)
        .expect_err("an old sidecar refuses a new one");
    assert!(refused.contains("certificate signed by unknown authority"), "{refused}");

    // The mesh istiod serves xDS with meshroot's istiod-tls, verified against the root.
    let leaf = |s: &Secret| {
        meshroot::pki::pem::decode_certificates(file(s, "tls.crt").as_bytes(), 1 << 20).unwrap()[0].to_vec()
    };
    let served = served_certificate(mesh_istiod.secure, "istiod.istio-system.svc", &root_pem).await;
    assert_eq!(served, Some(leaf(&istiod_tls)), "istiod serves meshroot's istiod-tls");

    // A renewed istiod-tls (here the Secret is deleted and meshroot issues it again), projected
    // into istiod's files as kubelet does (written aside, then renamed into place): istiod serves
    // it without a restart.
    Api::<Secret>::namespaced(cluster.admin.clone(), "istio-system")
        .delete("istiod-tls", &Default::default())
        .await
        .unwrap();
    let renewed = within("istiod-tls issued again", wait, async || {
        secret(&cluster, "istio-system", "istiod-tls").await.filter(|s| leaf(s) != leaf(&istiod_tls))
    })
    .await;
    let tls_dir = cluster.subdir("istiod").join("var/run/secrets/istiod/tls");
    for key in ["tls.key", "tls.crt"] {
        let aside = tls_dir.join(format!(".{key}.new"));
        std::fs::write(&aside, file(&renewed, key)).unwrap();
        std::fs::rename(&aside, tls_dir.join(key)).unwrap();
    }
    within("istiod serving the renewed istiod-tls", wait, async || {
        let served = served_certificate(mesh_istiod.secure, "istiod.istio-system.svc", &root_pem).await;
        (served == Some(leaf(&renewed))).then_some(())
    })
    .await;

    // Roll back (docs/openshift.md): istiod's CA server on again. While meshroot's istiod-tls is
    // still mounted, istiod keeps serving it, not a certificate of its own CA (mounted
    // certificates win), which is why the guide deletes istiod-tls too. Without it, istiod
    // serves a certificate of its own CA, under the root it kept in istio-ca-secret.
    // The pod keeps both mounts: istiod-tls, and istio-system's root ConfigMap (meshroot's bundle).
    // (With istiod-tls alone and no CA bundle mounted, istiod serves its own CA's certificate: the
    // first version of this test, without the second mount, saw that.)
    let tls_files = vec![
        ("var/run/secrets/istiod/tls/tls.crt".to_string(), file(&renewed, "tls.crt")),
        ("var/run/secrets/istiod/tls/tls.key".to_string(), file(&renewed, "tls.key")),
        ("var/run/secrets/istiod/ca/root-cert.pem".to_string(), [root_pem.as_str(), &old_roots].concat()),
    ];
    let rolled_back =
        start_istiod(&mut cluster, "istiod", "istio-system", IstiodSetup { files: tls_files, ..mesh_setup() }).await;
    let served = served_certificate(rolled_back.secure, "istiod.istio-system.svc", &root_pem).await;
    assert_eq!(served, Some(leaf(&renewed)), "with its CA on, istiod still serves a mounted istiod-tls");
    let rolled_back = start_istiod(&mut cluster, "istiod", "istio-system", mesh_setup()).await;
    let own_root = secret_key(&cluster, "istio-system", "istio-ca-secret", "ca-cert.pem").await.expect("istiod's root");
    let own = within("istiod serving a certificate of its own CA", wait, async || {
        served_certificate(rolled_back.secure, "istiod.istio-system.svc", &own_root).await
    })
    .await;
    assert_ne!(own, leaf(&renewed));
    assert!(
        served_certificate(rolled_back.secure, "istiod.istio-system.svc", &root_pem).await.is_none(),
        "once istiod-tls is gone, nothing meshroot issued is served"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ztunnel_asks_for_pods_on_its_node_only_through_istios_client() {
    let cluster = Cluster::start(Options::default()).await;
    chart::install(&cluster).await;
    let server = chart::serve(&cluster, chart::serve_options("meshroot-0")).await;
    let wait = Duration::from_secs(60);
    let root_pem =
        within("the generated root", wait, async || secret_text(&secret(&cluster, NS, ROOT_SECRET).await?, "tls.crt"))
            .await;
    // The chart's External mesh trusts istio-system/ztunnel as a node proxy.
    let ztunnel = Workload::on_node(&cluster, "istio-system", "ztunnel", "node-1").await;
    let reviews = Workload::on_node(&cluster, "bookinfo", "reviews", "node-1").await;
    let ratings = Workload::on_node(&cluster, "bookinfo", "ratings", "node-2").await;
    let port = server.grpc_addr.port();
    let issued = within("reviews' certificate through ztunnel", wait, async || {
        ztunnel.impersonating(&reviews, &cluster, "ztunnel-reviews", port, &root_pem).await.ok()
    })
    .await;
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(issued.join("response.json")).unwrap()).unwrap();
    assert_eq!(summary["summary"]["leaf"]["uris"], json!([reviews.identity()]));
    assert_eq!(summary["summary"]["verified"], true);
    let root = TrustBundle::from_pem(root_pem.as_bytes()).unwrap();
    assert!(chains_to(&issued, &root));
    // ratings runs on node-2: not ztunnel's to ask for.
    let refused = ztunnel.impersonating(&ratings, &cluster, "ztunnel-ratings", port, &root_pem).await.unwrap_err();
    assert!(refused.contains("code = Unauthenticated"), "{refused}");
    assert!(
        refused.contains("no running pod of bookinfo/ratings is on node node-1"),
        "the refusal says why: {refused}"
    );
}

/// The leaf certificate served on `127.0.0.1:port` to a client that verifies it against `roots`
/// as `name`; None if that verification or the connection fails.
async fn served_certificate(port: u16, name: &str, roots: &str) -> Option<Vec<u8>> {
    use rustls::pki_types::ServerName;
    let roots = meshroot::pki::pem::decode_certificates(roots.as_bytes(), 1 << 20).unwrap();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    let tls = crate::support::h2_tls_connector(roots)
        .connect(ServerName::try_from(name.to_string()).unwrap(), tcp)
        .await
        .ok()?;
    Some(tls.get_ref().1.peer_certificates()?.first()?.to_vec())
}

/// Writes `files` (name, contents) into `dir` as kubelet updates a mounted Secret: each written
/// aside, then renamed into place.
fn project(dir: &Path, files: &[(&str, String)]) {
    std::fs::create_dir_all(dir).unwrap();
    for (name, contents) in files {
        let aside = dir.join(format!(".{name}.new"));
        std::fs::write(&aside, contents).unwrap();
        std::fs::rename(&aside, dir.join(name)).unwrap();
    }
}

/// The four files of a `cacerts` Secret, as a PluginCA istiod reads them.
fn cacerts_files(cacerts: &Secret) -> Vec<(&'static str, String)> {
    ["ca-cert.pem", "ca-key.pem", "root-cert.pem", "cert-chain.pem"]
        .map(|key| (key, secret_text(cacerts, key).unwrap()))
        .to_vec()
}

/// The roots a workload trusts: the last element of its CA's answer, where pilot-agent takes them.
fn trusted_roots(workload: &Path) -> String {
    std::fs::read_to_string(workload.join("root-cert.pem")).unwrap()
}

/// Every pair of (sidecar, gateway) certificates completes a mutual-TLS handshake in both
/// directions, each side trusting the roots its CA gave it.
fn all_handshake(sidecars: &[&Path], gateways: &[&Path]) -> Result<(), String> {
    for sidecar in sidecars {
        for gateway in gateways {
            let (s, g) = (trusted_roots(sidecar), trusted_roots(gateway));
            handshake(sidecar, &s, gateway, &g)?;
            handshake(gateway, &g, sidecar, &s)?;
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_rotation_keeps_the_two_meshes_talking_when_the_gateway_istiod_restarts_after_add_and_switch() {
    let mut cluster = Cluster::start(Options::default()).await;
    chart::install(&cluster).await;
    cluster.apply_dir(&istio_crds()).await;
    cluster.wait_for_crds().await;
    let server = chart::serve(&cluster, chart::serve_options("meshroot-0")).await;
    let wait = Duration::from_secs(60);
    let cacerts = async |cluster: &Cluster, ready: &dyn Fn(&Secret) -> bool| {
        within("cacerts", wait, async || secret(cluster, "openshift-ingress", "cacerts").await.filter(|s| ready(s)))
            .await
    };
    let gateway_setup = |cacerts: &Secret| IstiodSetup {
        ca_server: true,
        files: cacerts_files(cacerts).into_iter().map(|(k, v)| (format!("etc/cacerts/{k}"), v)).collect(),
        revision: Some("openshift-gateway"),
        root_configmap: Some(GATEWAY_ROOT_CONFIGMAP),
        extra_args: Vec::new(),
    };
    let first = cacerts(&cluster, &|_| true).await;
    let mut gateway_istiod =
        start_istiod(&mut cluster, "istiod-openshift-gateway", "openshift-ingress", gateway_setup(&first)).await;
    let sidecar = Workload::create(&cluster, "bookinfo", "reviews").await;
    let gateway = Workload::create(&cluster, "openshift-ingress", "gateway").await;
    let root_pem = secret_key(&cluster, NS, ROOT_SECRET, "tls.crt").await.unwrap();
    let gateway_name = "istiod-openshift-gateway.openshift-ingress.svc";
    let port = server.grpc_addr.port();

    // Each step: both workloads renew (the gateway through its istiod), and the certificates of
    // this step and of the one before (the procedure waits a renewal between steps, so no older
    // one is left) complete a handshake with each of the other mesh.
    let (mut sidecars, mut gateways) = (Vec::new(), Vec::new());
    let mut renew = async |cluster: &Cluster, step: &str, istiod: &Istiod, ca_roots: &str| {
        let s = within(&format!("{step}: the sidecar's certificate"), wait, async || {
            sidecar.certificate(cluster, &format!("sidecar-{step}"), port, "localhost", ca_roots).await.ok()
        })
        .await;
        let g = within(&format!("{step}: the gateway's certificate"), wait, async || {
            gateway.certificate(cluster, &format!("gateway-{step}"), istiod.secure, gateway_name, ca_roots).await.ok()
        })
        .await;
        sidecars.push(s);
        gateways.push(g);
        let s: Vec<&Path> = sidecars.iter().rev().take(2).map(PathBuf::as_path).collect();
        let g: Vec<&Path> = gateways.iter().rev().take(2).map(PathBuf::as_path).collect();
        all_handshake(&s, &g).unwrap_or_else(|e| panic!("{step}: {e}"));
    };
    renew(&cluster, "start", &gateway_istiod, &root_pem).await;

    let dir = cluster.subdir("next-root");
    meshroot::cmd::root::generate(&dir, meshroot::pki::KeyAlgorithm::EcdsaP256, time::Duration::days(3650)).unwrap();
    let next_pem = std::fs::read_to_string(dir.join("root-cert.pem")).unwrap();
    let both = [root_pem.as_str(), &next_pem].concat();
    let admin = cluster.admin.clone();
    let apply = async |action| meshroot::cmd::root::apply(admin.clone(), NS, ROOT_SECRET, action).await.unwrap();

    // 1. add. The gateway istiod ignores a changed root-cert.pem while it runs ("Multi root is
    // disabled"), so its workloads would never learn the new root: restart it.
    apply(meshroot::cmd::root::RootAction::Add { cert: dir.join("root-cert.pem") }).await;
    let added =
        cacerts(&cluster, &|s| secret_text(s, "root-cert.pem").is_some_and(|r| r.contains(next_pem.trim()))).await;
    let stale = gateway
        .certificate(&cluster, "gateway-add-no-restart", gateway_istiod.secure, gateway_name, &both)
        .await
        .unwrap();
    assert!(!trusted_roots(&stale).contains(next_pem.trim()), "measured: the running istiod kept its old roots");
    gateway_istiod =
        start_istiod(&mut cluster, "istiod-openshift-gateway", "openshift-ingress", gateway_setup(&added)).await;
    renew(&cluster, "add", &gateway_istiod, &both).await;

    // 2. switch: new intermediates under the new root; restart the gateway istiod on its new cacerts.
    apply(meshroot::cmd::root::RootAction::Switch {
        cert: dir.join("root-cert.pem"),
        key: Some(dir.join("root-key.pem")),
    })
    .await;
    let next = TrustBundle::from_pem(next_pem.as_bytes()).unwrap();
    let switched = cacerts(&cluster, &|s| {
        let ca = meshroot::pki::pem::decode_certificates(secret_text(s, "ca-cert.pem").unwrap().as_bytes(), 1 << 20);
        ca.ok()
            .and_then(|c| c.first().cloned())
            .is_some_and(|c| meshroot::pki::authority::issued_by(&next.roots()[0], &c))
    })
    .await;
    // Measured: had it only been restarted here (the earlier guide), the gateway's certificate
    // from before (trusting only the old root) refuses a sidecar under the new root.
    let stale_vs_new_sidecar = {
        let s = within("switch: a sidecar under the new root", wait, async || {
            let s = sidecar.certificate(&cluster, "sidecar-switch-probe", port, "localhost", &both).await.ok()?;
            chains_to(&s, &next).then_some(s)
        })
        .await;
        handshake(&s, &trusted_roots(&s), &stale, &trusted_roots(&stale))
    };
    assert!(stale_vs_new_sidecar.is_err_and(|e| e.contains("unknown authority")), "measured");
    gateway_istiod =
        start_istiod(&mut cluster, "istiod-openshift-gateway", "openshift-ingress", gateway_setup(&switched)).await;
    renew(&cluster, "switch", &gateway_istiod, &both).await;
    assert!(chains_to(gateways.last().unwrap(), &next), "the restarted gateway istiod signs under the new root");

    // 3. finish: the old root leaves the bundle. The gateway istiod needs no restart: it already
    // signs under the new root, and its workloads' extra trust in the old one is harmless.
    let said =
        apply(meshroot::cmd::root::RootAction::Finish { leaf_lifetime: time::Duration::ZERO, force: true }).await;
    assert!(said.contains("steady"), "{said}");
    cacerts(&cluster, &|s| secret_text(s, "root-cert.pem").is_some_and(|r| !r.contains(root_pem.trim()))).await;
    project(&cluster.subdir("istiod-openshift-gateway").join("etc/cacerts"), &cacerts_files(&switched));
    // Certificates from now on: the sidecar trusts only the new root.
    let s = within("finish: the sidecar trusting only the new root", wait, async || {
        let s = sidecar.certificate(&cluster, "sidecar-finish", port, "localhost", &next_pem).await.ok()?;
        (!trusted_roots(&s).contains(root_pem.trim())).then_some(s)
    })
    .await;
    let g = gateway.certificate(&cluster, "gateway-finish", gateway_istiod.secure, gateway_name, &both).await.unwrap();
    all_handshake(&[&s], &[&g, &gateways[gateways.len() - 1]]).unwrap_or_else(|e| panic!("finish: {e}"));
}

/// meshroot closes a connection nothing was read from for its idle timeout, without a GOAWAY.
/// Istio's CA client (grpc-go, as in pilot-agent) keeps its connection between rotations: its next
/// request must reconnect and succeed, not fail on the closed connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istios_client_reconnects_after_meshroot_closes_its_idle_connection() {
    let ca = crate::support::start_ca_with(|opts| {
        opts.server.request_timeout = Duration::from_secs(2);
        opts.server.connections.idle_timeout = Some(Duration::from_secs(2));
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (token, roots) = (dir.path().join("token"), dir.path().join("roots.pem"));
    std::fs::write(&token, crate::support::DEV_TOKEN).unwrap();
    std::fs::write(&roots, ca.root_pem()).unwrap();
    let out = tokio::process::Command::new(peers().join("istio-ca-client"))
        .arg(format!("--ca-addr=127.0.0.1:{}", ca.server.grpc_addr.port()))
        .arg("--server-name=localhost")
        .arg(format!("--root-cert={}", roots.display()))
        .arg(format!("--token-file={}", token.display()))
        .arg(format!("--spiffe={}", crate::support::DEFAULT_ID))
        // Silent for 2 s, the connection is closed 2 to 4 s after the first answer; the second
        // request comes 7 s after the first.
        .args(["--key=ec", "--count=2", "--concurrency=1", "--pause=7s", "--timeout=60s"])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("requests=2 ok=2 errors=0"), "{stdout}");
    assert_eq!(ca.server.metrics.grpc_connections_idle_closed.get(), 1, "the first connection was closed idle");
}
