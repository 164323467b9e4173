//! The Helm chart, rendered and linted by a real helm binary (installed by
//! scripts/install-helm.sh into the cache), with the output parsed and
//! checked: RBAC scopes, arguments the binary accepts, probes and ports,
//! objects that deserialize into meshroot's types, and values the schema
//! refuses.

use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::process::Command;

use crate::support;

use support::helm::{chart, notes, openshift_ambient_values, openshift_values, template};

const BIN: &str = env!("CARGO_BIN_EXE_meshroot");
const NAMESPACE: &str = support::helm::NAMESPACE;
const RELEASE: &str = support::helm::RELEASE;

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} rendered"))
}

fn all<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().into_iter().flatten().map(|s| s.as_str().unwrap().to_string()).collect()
}

/// A plain install pulls the published image (a reference with a registry); an image named
/// without a registry cannot be pulled, and the install notes say so and how to fix it, instead
/// of only "installed".
#[test]
fn a_plain_install_names_a_pullable_image_and_the_notes_warn_when_it_does_not() {
    let docs = template(&[]).unwrap();
    let deployment = all(&docs, "Deployment")[0];
    let image = deployment["spec"]["template"]["spec"]["containers"][0]["image"].as_str().unwrap();
    let registry = image.split('/').next().unwrap();
    assert!(image.contains('/') && (registry.contains('.') || registry.contains(':')), "no registry in {image}");
    assert_eq!(image, concat!("ghcr.io/meshroot/meshroot:", env!("CARGO_PKG_VERSION")));
    let default = notes(&[]);
    assert!(!default.contains("WARNING"), "{default}");
    assert!(default.contains("Istio CA address:"), "{default}");
    let local = notes(&["--set", "image.repository=meshroot"]);
    assert!(local.contains("WARNING: the image is \"meshroot:") && local.contains("\", with no registry"), "{local}");
    assert!(local.contains("--set image.repository=<registry>/meshroot"), "{local}");
}

#[test]
fn helm_lint_passes_with_the_default_and_the_openshift_values() {
    for extra in [vec![], vec!["-f", openshift_values().to_str().unwrap().to_string().leak() as &str]] {
        let out = Command::new(support::helm::helm()).arg("lint").arg(chart()).args(&extra).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "helm lint {extra:?}: {text}{}", String::from_utf8_lossy(&out.stderr));
        assert!(text.contains("0 chart(s) failed"), "{text}");
    }
}

#[test]
fn the_deployment_runs_hardened_with_arguments_the_binary_accepts() {
    for values in [vec![], vec!["-f", openshift_values().to_str().unwrap().to_string().leak() as &str]] {
        let docs = template(&values).unwrap();
        let deploy = find(&docs, "Deployment", "mr-meshroot");
        assert_eq!(deploy["spec"]["replicas"], 2);
        let pod = &deploy["spec"]["template"]["spec"];
        assert_eq!(pod["serviceAccountName"], "mr-meshroot");
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        // A fixed UID by default; none on OpenShift, where the SCC assigns it.
        assert_eq!(pod["securityContext"]["runAsUser"].as_u64(), if values.is_empty() { Some(65532) } else { None });
        assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
        let anti = &pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0];
        assert_eq!(anti["podAffinityTerm"]["topologyKey"], "kubernetes.io/hostname");
        let c = &pod["containers"][0];
        assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
        assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
        assert_eq!(c["securityContext"]["capabilities"]["drop"], json!(["ALL"]));
        assert!(c["resources"]["requests"]["cpu"].is_string() && c["resources"]["limits"]["memory"].is_string());

        // Every argument is one `meshroot serve` accepts, with the pod's environment.
        let args = strings(&c["args"]);
        assert_eq!(args[0], "serve");
        let out = Command::new(BIN)
            .args(&args)
            .arg("--check-config")
            .env("POD_NAMESPACE", NAMESPACE)
            .env("POD_NAME", "mr-meshroot-0")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{args:?}: {stdout}{}", String::from_utf8_lossy(&out.stderr));
        let setting = |name: &str| {
            stdout.lines().find_map(|l| l.strip_prefix(&format!("{name}: "))).unwrap_or_default().to_string()
        };
        assert_eq!(setting("namespace"), NAMESPACE);
        assert_eq!(setting("service name"), "mr-meshroot", "the serving certificate names the Service");
        assert_eq!(setting("generate root"), "true");
        assert_eq!(setting("identity rate limit"), "50/s (burst 1000)");
        assert_eq!(setting("node rate limit"), "100/s (burst 1000)");
        assert_eq!(setting("peer rate limit"), "200/s (burst 2000)");

        // Ports and probes agree with the flags.
        let port = |name: &str| {
            c["ports"].as_array().unwrap().iter().find(|p| p["name"] == name).unwrap()["containerPort"]
                .as_u64()
                .unwrap()
        };
        assert!(setting("listen").ends_with(&format!(":{}", port("grpc"))));
        assert!(setting("metrics listen").ends_with(&format!(":{}", port("metrics"))));
        assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
        assert_eq!(c["livenessProbe"]["httpGet"]["port"], "metrics");
        assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
        assert_eq!(c["readinessProbe"]["httpGet"]["port"], "metrics");
        let env: Vec<&str> = c["env"].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap()).collect();
        assert_eq!(env, ["POD_NAMESPACE", "POD_NAME"]);

        let svc = find(&docs, "Service", "mr-meshroot");
        let grpc = svc["spec"]["ports"].as_array().unwrap().iter().find(|p| p["name"] == "grpc").unwrap();
        assert_eq!(grpc["port"], 443, "Istio's caAddress is <service>.<namespace>.svc:443");
        assert_eq!(grpc["targetPort"], "grpc");
        assert_eq!(svc["spec"]["selector"], deploy["spec"]["selector"]["matchLabels"]);
        let pdb = find(&docs, "PodDisruptionBudget", "mr-meshroot");
        assert_eq!(pdb["spec"]["minAvailable"], 1);
        for d in &docs {
            assert_eq!(d["metadata"]["labels"]["app.kubernetes.io/managed-by"], "Helm", "{}", d["kind"]);
            assert_eq!(d["metadata"]["labels"]["app.kubernetes.io/instance"], RELEASE, "{}", d["kind"]);
        }
    }
}

/// `meshroot serve --check-config` with `args`, in a pod's environment
/// and no MESHROOT_* variables: the (name, value) lines about rate limits.
fn rate_limit_settings(args: &[String]) -> Vec<(String, String)> {
    settings(args, |name| name.ends_with("rate limit"))
}

/// The (name, value) lines of `meshroot serve --check-config` with `args` whose name `wanted` picks.
fn settings(args: &[String], wanted: impl Fn(&str) -> bool) -> Vec<(String, String)> {
    let mut cmd = Command::new(BIN);
    cmd.args(args).arg("--check-config").env("POD_NAMESPACE", NAMESPACE).env("POD_NAME", "mr-meshroot-0");
    for (var, _) in std::env::vars_os() {
        if var.to_string_lossy().starts_with("MESHROOT_") {
            cmd.env_remove(var);
        }
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{args:?}: {stdout}{}", String::from_utf8_lossy(&out.stderr));
    stdout
        .lines()
        .filter_map(|l| l.split_once(": "))
        .filter(|(name, _)| wanted(name))
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

#[test]
fn the_chart_keeps_the_binarys_connection_limits_and_passes_its_own() {
    let connection_settings =
        |args: &[String]| settings(args, |name| name.contains("connections") || name == "idle timeout");
    let bare = connection_settings(&["serve".to_string()]);
    let expected = [("max connections", "4096"), ("max connections per peer", "256"), ("idle timeout", "5m")]
        .map(|(n, v)| (n.to_string(), v.to_string()));
    assert_eq!(bare, expected);
    let container_args = |docs: &[Value]| {
        strings(&find(docs, "Deployment", "mr-meshroot")["spec"]["template"]["spec"]["containers"][0]["args"])
    };
    assert_eq!(connection_settings(&container_args(&template(&[]).unwrap())), expected);
    // The root ConfigMap names its RBAC lets it write are the ones it may clean up.
    let with_names = template(&["--set", "extraRootConfigMapNames[0]=custom-root"]).unwrap();
    let names = settings(&container_args(&with_names), |name| name == "root configmap names");
    assert_eq!(names, [("root configmap names".to_string(), "custom-root,istio-ca-root-cert".to_string())]);
    let set = template(&[
        "--set",
        "connections.max=100000",
        "--set",
        "connections.maxPerPeer=2000",
        "--set-string",
        "connections.idleTimeout=0",
    ])
    .unwrap();
    let expected = [("max connections", "100000"), ("max connections per peer", "2000"), ("idle timeout", "never")]
        .map(|(n, v)| (n.to_string(), v.to_string()));
    assert_eq!(connection_settings(&container_args(&set)), expected);
}

#[test]
fn serve_rate_limits_by_default_and_the_chart_keeps_those_defaults() {
    // The binary alone: a bare `meshroot serve` is rate limited.
    let bare = rate_limit_settings(&["serve".to_string()]);
    let expected = [
        ("identity rate limit", "50/s (burst 1000)"),
        ("node rate limit", "100/s (burst 1000)"),
        ("peer rate limit", "200/s (burst 2000)"),
    ]
    .map(|(n, v)| (n.to_string(), v.to_string()));
    assert_eq!(bare, expected);
    // The chart's default values render the same limits.
    let docs = template(&[]).unwrap();
    let args = strings(&find(&docs, "Deployment", "mr-meshroot")["spec"]["template"]["spec"]["containers"][0]["args"]);
    assert_eq!(rate_limit_settings(&args), expected, "{args:?}");
}

#[test]
fn an_imported_root_is_not_generated_and_extra_args_are_passed() {
    let docs =
        template(&["--set", "root.mode=import", "--set", "extraArgs[0]=--resync=30s", "--set", "rateLimits.node=off"])
            .unwrap();
    let args = strings(&find(&docs, "Deployment", "mr-meshroot")["spec"]["template"]["spec"]["containers"][0]["args"]);
    assert!(!args.contains(&"--generate-root".to_string()));
    assert_eq!(args.last().unwrap(), "--resync=30s");
    let out = Command::new(BIN).args(&args).arg("--check-config").env("POD_NAMESPACE", "x").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("resync: 30s"));
    assert!(String::from_utf8_lossy(&out.stdout).contains("node rate limit: off"));
}

/// A rule flattened for comparison: (group, resource, verb, resourceNames).
type Grant = (String, String, String, Vec<String>);

fn grants(role: &Value) -> BTreeSet<Grant> {
    let mut out = BTreeSet::new();
    for rule in role["rules"].as_array().unwrap() {
        let names = strings(&rule["resourceNames"]);
        for group in strings(&rule["apiGroups"]) {
            for resource in strings(&rule["resources"]) {
                for verb in strings(&rule["verbs"]) {
                    assert!(group != "*" && resource != "*" && verb != "*", "no wildcards: {rule}");
                    out.insert((group.clone(), resource.clone(), verb, names.clone()));
                }
            }
        }
    }
    out
}

fn expect(list: &[(&str, &str, &[&str], &[&str])]) -> BTreeSet<Grant> {
    let mut out = BTreeSet::new();
    for (group, resource, verbs, names) in list {
        for verb in *verbs {
            out.insert((
                group.to_string(),
                resource.to_string(),
                verb.to_string(),
                names.iter().map(|s| s.to_string()).collect(),
            ));
        }
    }
    out
}

#[test]
fn rbac_grants_exactly_what_meshroot_uses_and_nothing_broader() {
    let docs = template(&["-f", openshift_values().to_str().unwrap()]).unwrap();
    let cluster = grants(find(&docs, "ClusterRole", "mr-meshroot"));
    let signers: &[&str] = &["issuers.meshroot.io/*", "clusterissuers.meshroot.io/*"];
    let want = expect(&[
        ("authentication.k8s.io", "tokenreviews", &["create"], &[]),
        ("", "namespaces", &["get", "list", "watch"], &[]),
        ("", "pods", &["get", "list", "watch"], &[]),
        ("", "configmaps", &["list", "watch"], &[]),
        ("", "configmaps", &["get", "create", "patch", "delete"], &["istio-ca-root-cert"]),
        ("meshroot.io", "meshes", &["get", "list", "watch"], &[]),
        ("meshroot.io", "issuers", &["get", "list", "watch"], &[]),
        ("meshroot.io", "clusterissuers", &["get", "list", "watch"], &[]),
        ("meshroot.io", "meshes/status", &["patch"], &[]),
        ("meshroot.io", "issuers/status", &["patch"], &[]),
        ("meshroot.io", "clusterissuers/status", &["patch"], &[]),
        ("cert-manager.io", "certificaterequests", &["get", "list", "watch"], &[]),
        ("cert-manager.io", "certificaterequests/status", &["patch"], &[]),
        ("certificates.k8s.io", "certificatesigningrequests", &["get", "list", "watch"], &[]),
        ("certificates.k8s.io", "certificatesigningrequests/status", &["patch"], &[]),
        ("certificates.k8s.io", "signers", &["sign"], signers),
        ("authorization.k8s.io", "subjectaccessreviews", &["create"], &[]),
        ("events.k8s.io", "events", &["create", "patch"], &[]),
    ]);
    assert_eq!(cluster, want, "the ClusterRole differs from what meshroot needs");
    assert!(!cluster.iter().any(|(_, r, _, _)| r == "secrets"), "no cluster-wide Secret access");

    // Secrets and Leases: meshroot's own namespace.
    let own = find(&docs, "Role", "mr-meshroot");
    assert_eq!(own["metadata"]["namespace"], NAMESPACE);
    assert_eq!(
        grants(own),
        expect(&[
            ("", "secrets", &["get", "list", "watch", "create", "update"], &[]),
            ("coordination.k8s.io", "leases", &["get", "create", "update"], &[]),
        ])
    );
    // istiod namespaces of the configured meshes: only istiod-tls and cacerts.
    let istiod_roles =
        all(&docs, "Role").into_iter().filter(|r| r["metadata"]["name"] == "mr-meshroot-istiod").collect::<Vec<_>>();
    let namespaces: BTreeSet<&str> =
        istiod_roles.iter().map(|r| r["metadata"]["namespace"].as_str().unwrap()).collect();
    assert_eq!(namespaces, BTreeSet::from(["istio-system", "openshift-ingress"]));
    for role in istiod_roles {
        assert_eq!(
            grants(role),
            expect(&[
                ("", "secrets", &["create"], &[]),
                ("", "secrets", &["get", "update"], &["istiod-tls", "cacerts"])
            ])
        );
    }
    for binding in all(&docs, "RoleBinding").into_iter().chain(all(&docs, "ClusterRoleBinding")) {
        let subjects = &binding["subjects"];
        if binding["metadata"]["name"] == "mr-meshroot-cert-manager-approve" {
            continue;
        }
        assert_eq!(subjects, &json!([{"kind": "ServiceAccount", "name": "mr-meshroot", "namespace": NAMESPACE}]));
    }

    // cert-manager's approver may approve the chart's ClusterIssuers that have a
    // policy, and only those: never the namespaced gateways Issuer.
    let approve = find(&docs, "ClusterRole", "mr-meshroot-cert-manager-approve");
    let approved: &[&str] = &["clusterissuers.meshroot.io/ingress-certs"];
    assert_eq!(grants(approve), expect(&[("cert-manager.io", "signers", &["approve"], approved)]));
    let binding = find(&docs, "ClusterRoleBinding", "mr-meshroot-cert-manager-approve");
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": "cert-manager", "namespace": "cert-manager"}])
    );
}

#[test]
fn approval_subjects_are_configurable_and_features_can_be_turned_off() {
    // Without issuers that have a policy, nothing is auto-approved.
    let docs = template(&[]).unwrap();
    assert!(docs.iter().all(|d| d["metadata"]["name"] != "mr-meshroot-cert-manager-approve"));
    let docs = template(&[
        "--set",
        "certManager.approval.signerNames[0]=clusterissuers.meshroot.io/reviewed",
        "--set",
        "certManager.approval.subjects[0].kind=ServiceAccount",
        "--set",
        "certManager.approval.subjects[0].name=cert-manager-approver-policy",
        "--set",
        "certManager.approval.subjects[0].namespace=cert-manager",
    ])
    .unwrap();
    let binding = find(&docs, "ClusterRoleBinding", "mr-meshroot-cert-manager-approve");
    assert_eq!(binding["subjects"][0]["name"], "cert-manager-approver-policy");
    let approve = find(&docs, "ClusterRole", "mr-meshroot-cert-manager-approve");
    assert_eq!(strings(&approve["rules"][0]["resourceNames"]), ["clusterissuers.meshroot.io/reviewed"]);

    let docs = template(&["--set", "certManager.enabled=false", "--set", "kubernetesCSRSigner.enabled=false"]).unwrap();
    let cluster = grants(find(&docs, "ClusterRole", "mr-meshroot"));
    assert!(
        !cluster
            .iter()
            .any(|(g, _, _, _)| g == "cert-manager.io" || g == "certificates.k8s.io" || g == "events.k8s.io")
    );
    assert!(docs.iter().all(|d| d["metadata"]["name"] != "mr-meshroot-cert-manager-approve"));
    let args = strings(&find(&docs, "Deployment", "mr-meshroot")["spec"]["template"]["spec"]["containers"][0]["args"]);
    assert!(args.contains(&"--cert-manager-issuer=false".to_string()));
    assert!(args.contains(&"--kubernetes-csr-signer=false".to_string()));
}

#[test]
fn meshes_and_issuers_deserialize_into_meshroots_types() {
    let docs = template(&["-f", openshift_values().to_str().unwrap()]).unwrap();
    let meshes = all(&docs, "Mesh");
    assert_eq!(meshes.len(), 2);
    for m in meshes {
        let mesh: meshroot::api::Mesh = serde_json::from_value(m.clone()).unwrap();
        mesh.spec.validate().unwrap();
    }
    let cluster: meshroot::api::ClusterIssuer =
        serde_json::from_value(find(&docs, "ClusterIssuer", "ingress-certs").clone()).unwrap();
    assert_eq!(cluster.spec.signer.mesh.as_deref(), Some("service-mesh"));
    assert_eq!(cluster.spec.allowed_namespaces, ["openshift-ingress"]);
    let policy = meshroot::issuer::Policy::from_spec(&cluster.spec.policy).unwrap();
    assert!(!policy.allow_ca, "no example issues CAs");
    let issuer: meshroot::api::Issuer = serde_json::from_value(find(&docs, "Issuer", "gateways").clone()).unwrap();
    assert_eq!(issuer.metadata.namespace.as_deref(), Some("openshift-ingress"));
    assert_eq!(issuer.spec.signer.mesh.as_deref(), Some("service-mesh"));
    meshroot::issuer::Policy::from_spec(&issuer.spec.policy).unwrap();
    // The optional objects are there when enabled.
    find(&docs, "ServiceMonitor", "mr-meshroot");
    let np = find(&docs, "NetworkPolicy", "mr-meshroot");
    assert_eq!(np["spec"]["policyTypes"], json!(["Ingress"]));
}

/// The ambient overlay (OSSM 3.1+): ztunnel is trusted as ztunnel/ztunnel, and the service mesh
/// covers ambient namespaces, injected ones and ztunnel's own, but not the gateway istiod's or
/// meshroot's; the rest of the OpenShift values (issuers) stays.
#[test]
fn the_ambient_values_trust_ztunnel_in_its_namespace_and_cover_ambient_namespaces() {
    let (base, ambient) = (openshift_values(), openshift_ambient_values());
    let files = ["-f", base.to_str().unwrap(), "-f", ambient.to_str().unwrap()];
    let out = Command::new(support::helm::helm()).arg("lint").arg(chart()).args(files).output().unwrap();
    assert!(out.status.success(), "helm lint: {}", String::from_utf8_lossy(&out.stdout));
    let docs = template(&files).unwrap();
    let meshes: Vec<meshroot::api::Mesh> =
        all(&docs, "Mesh").into_iter().map(|m| serde_json::from_value(m.clone()).unwrap()).collect();
    assert_eq!(meshes.len(), 2);
    for m in &meshes {
        m.spec.validate().unwrap();
    }
    let mesh = |name: &str| meshes.iter().find(|m| m.metadata.name.as_deref() == Some(name)).unwrap();
    let service_mesh = mesh("service-mesh");
    assert_eq!(service_mesh.spec.trusted_node_accounts, ["ztunnel/ztunnel"]);
    let selector = service_mesh.spec.namespace_selector.as_ref().expect("a namespace selector");
    let labels = |name: &str, extra: &[(&str, &str)]| {
        let mut labels: std::collections::BTreeMap<String, String> =
            extra.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        labels.insert("kubernetes.io/metadata.name".into(), name.into());
        labels
    };
    for (namespace, extra, covered) in [
        ("bookinfo", &[("istio.io/dataplane-mode", "ambient")][..], true),
        ("legacy", &[("istio-injection", "enabled")][..], true),
        ("ztunnel", &[][..], true),
        ("openshift-ingress", &[][..], false),
        ("meshroot", &[][..], false),
    ] {
        assert_eq!(meshroot::api::selector::matches(selector, &labels(namespace, extra)), covered, "{namespace}");
    }
    find(&docs, "Issuer", "gateways");
    find(&docs, "ClusterIssuer", "ingress-certs");
}

#[test]
fn invalid_values_are_refused_at_install_time_with_the_field_named() {
    let cases: &[(&[&str], &str)] = &[
        (&["--set", "root.mode=bogus"], "/root/mode"),
        (&["--set", "replicaCount=0"], "/replicaCount"),
        (&["--set", "logFormat=xml"], "/logFormat"),
        (&["--set", "rateLimits.identity=fast"], "/rateLimits/identity"),
        (&["--set", "rateLimits.node=-5/s"], "/rateLimits/node"),
        (&["--set", "rateLimits.peer=lots"], "/rateLimits/peer"),
        (&["--set", "connections.max=0"], "/connections/max"),
        (&["--set", "connections.idleTimeout=soon"], "/connections/idleTimeout"),
        (&["--set", "meshes[0].name=m", "--set", "meshes[0].istiod.namespace=istio-system"], "trustDomain"),
        (
            &[
                "--set",
                "meshes[0].name=m",
                "--set",
                "meshes[0].trustDomain=td",
                "--set",
                "meshes[0].istiod.namespace=Bad_NS",
            ],
            "/meshes/0/istiod/namespace",
        ),
        (
            &[
                "--set",
                "meshes[0].name=m",
                "--set",
                "meshes[0].trustDomain=td",
                "--set",
                "meshes[0].istiod.namespace=a",
                "--set",
                "meshes[0].mode=Sidecar",
            ],
            "/meshes/0/mode",
        ),
        (
            &[
                "--set",
                "issuers[0].kind=Issuer",
                "--set",
                "issuers[0].name=x",
                "--set",
                "issuers[0].spec.signer.root=true",
            ],
            "namespace",
        ),
        (
            &[
                "--set",
                "issuers[0].kind=ClusterIssuer",
                "--set",
                "issuers[0].name=x",
                "--set",
                "issuers[0].spec.signer.root=true",
                "--set",
                "issuers[0].spec.signer.mesh=m",
            ],
            "/issuers/0/spec/signer",
        ),
        // A namespaced Issuer never signs with the root, issues CAs, or serves other namespaces.
        (
            &[
                "--set",
                "issuers[0].kind=Issuer",
                "--set",
                "issuers[0].name=x",
                "--set",
                "issuers[0].namespace=apps",
                "--set",
                "issuers[0].spec.signer.root=true",
            ],
            "/issuers/0/spec",
        ),
        (
            &[
                "--set",
                "issuers[0].kind=Issuer",
                "--set",
                "issuers[0].name=x",
                "--set",
                "issuers[0].namespace=apps",
                "--set",
                "issuers[0].spec.signer.mesh=m",
                "--set",
                "issuers[0].spec.policy.allowCA=true",
            ],
            "/issuers/0/spec",
        ),
        (
            &["--set", "certManager.approval.signerNames[0]=issuers.meshroot.io/*"],
            "/certManager/approval/signerNames/0",
        ),
        (&["--set", "service.metricsPort=15012"], "/service/metricsPort"),
        (&["--set", "extraArgs[0]=serve"], "/extraArgs/0"),
        (&["--set", "unknownSetting=1"], "unknownSetting"),
        (&["--set", "podSecurityContext.runAsNonRoot=false"], "/podSecurityContext/runAsNonRoot"),
        (&["--set", "podSecurityContext.runAsUser=0"], "/podSecurityContext/runAsUser"),
    ];
    for (args, field) in cases {
        let err = template(args).expect_err(&format!("{args:?} was accepted"));
        assert!(err.contains(field), "{args:?}: the error does not name {field}: {err}");
    }
}
