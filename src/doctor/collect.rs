//! Reads what decides trust between meshes into a [`Snapshot`]. Read-only: the doctor never
//! writes. Of CA Secrets only certificates are kept; keys are dropped as soon as the Secret is
//! parsed and never printed.

use super::{
    Bundle, CaMaterial, CaMode, DEFAULT_ROOT_CONFIGMAP, ISTIOD_SELECTOR, Istiod, Meshroot, MeshrootMesh, PEM_LIMIT,
    ROOT_CERT_KEY, SigningRoot, Snapshot,
};
use crate::api::mesh::Mesh;
use crate::k8s::intermediates::CACERTS;
use crate::k8s::{error_summary, is_managed, secret_value};
use crate::names::is_dns1123_subdomain;
use crate::pki::pem;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Namespace, Secret};
use kube::api::{Api, ListParams};
use rustls_pki_types::CertificateDer;
use serde::Deserialize;
use thiserror::Error;

/// Why the cluster could not be read at all (a single unreadable Secret is reported, not fatal).
#[derive(Debug, Error)]
pub enum CollectError {
    /// A list the diagnosis cannot do without failed.
    #[error("listing {what}: {summary}")]
    Api {
        /// What was being listed.
        what: &'static str,
        /// The API error, summarised.
        summary: String,
    },
}

/// Where the doctor looks for meshroot.
#[derive(Clone, Debug)]
pub struct Target {
    /// meshroot's namespace.
    pub namespace: String,
    /// meshroot's root Secret in it.
    pub root_secret: String,
}

/// Reads the cluster: istiods, namespaces, root ConfigMaps, CA Secrets and meshroot.
pub async fn collect(client: &kube::Client, target: &Target) -> Result<Snapshot, CollectError> {
    let api_error = |what| move |e: kube::Error| CollectError::Api { what, summary: error_summary(&e) };
    let deployments = Api::<Deployment>::all(client.clone())
        .list(&ListParams::default().labels(ISTIOD_SELECTOR))
        .await
        .map_err(api_error("istiod Deployments (label app=istiod)"))?;
    let namespaces = Api::<Namespace>::all(client.clone())
        .list_metadata(&ListParams::default())
        .await
        .map_err(api_error("namespaces"))?;
    let mut snapshot = Snapshot::default();
    for ns in namespaces.items {
        if let Some(name) = ns.metadata.name {
            snapshot.namespaces.insert(name, ns.metadata.labels.unwrap_or_default());
        }
    }
    for deployment in &deployments.items {
        snapshot.istiods.push(istiod(client, deployment).await);
    }
    snapshot.istiods.sort_by_key(Istiod::mesh_id);
    let mut names: Vec<&str> = snapshot.istiods.iter().map(|i| i.root_configmap.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    for name in names {
        let list = Api::<ConfigMap>::all(client.clone())
            .list(&ListParams::default().fields(&format!("metadata.name={name}")))
            .await
            .map_err(api_error("root ConfigMaps"))?;
        for cm in list.items {
            let pem_text = cm.data.as_ref().and_then(|d| d.get(ROOT_CERT_KEY)).map(String::as_str);
            let key = (cm.metadata.namespace.unwrap_or_default(), name.to_string());
            snapshot.configmaps.insert(key, Bundle::parse(pem_text));
        }
    }
    revision_tags(client, &mut snapshot).await;
    snapshot.meshroot = meshroot(client, target).await?;
    Ok(snapshot)
}

/// The container that runs istiod: `discovery` in every chart; the first one otherwise.
fn discovery(deployment: &Deployment) -> Option<&Container> {
    let containers = &deployment.spec.as_ref()?.template.spec.as_ref()?.containers;
    containers.iter().find(|c| c.name == "discovery").or_else(|| containers.first())
}

/// A literal environment value of istiod's container (values from ConfigMaps or fields are not
/// resolved: the doctor says so where it matters).
fn env<'a>(container: Option<&'a Container>, name: &str) -> Option<&'a str> {
    container?.env.as_ref()?.iter().find(|e| e.name == name)?.value.as_deref()
}

/// Whether istiod's container sets `name` from somewhere other than a literal value.
fn env_from_elsewhere(container: Option<&Container>, name: &str) -> bool {
    container
        .and_then(|c| c.env.as_ref())
        .is_some_and(|env| env.iter().any(|e| e.name == name && e.value.is_none() && e.value_from.is_some()))
}

/// Go's `strconv.ParseBool`, as istiod reads its boolean variables; `None` if not a boolean.
fn go_bool(value: &str) -> Option<bool> {
    match value {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// The part of Istio's mesh config that decides trust.
#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MeshConfig {
    #[serde(default)]
    trust_domain: Option<String>,
    #[serde(default)]
    trust_domain_aliases: Vec<String>,
    #[serde(default)]
    default_config: ProxyDefaults,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProxyDefaults {
    #[serde(default)]
    ca_address: Option<String>,
}

async fn istiod(client: &kube::Client, deployment: &Deployment) -> Istiod {
    let namespace = deployment.metadata.namespace.clone().unwrap_or_default();
    let container = discovery(deployment);
    let revision = deployment
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("istio.io/rev"))
        .map(String::as_str)
        .or_else(|| env(container, "REVISION"))
        .filter(|r| !r.is_empty())
        .unwrap_or("default")
        .to_string();
    let mut istiod = Istiod {
        deployment: deployment.metadata.name.clone().unwrap_or_default(),
        revision,
        ca: CaMode::External,
        root_configmap: DEFAULT_ROOT_CONFIGMAP.to_string(),
        trust_domain: "cluster.local".to_string(),
        trust_domain_aliases: Vec::new(),
        ca_address: None,
        notes: Vec::new(),
        namespace,
    };
    match env(container, "PILOT_CA_CERT_CONFIGMAP").filter(|n| !n.is_empty()) {
        Some(name) if is_dns1123_subdomain(name) => istiod.root_configmap = name.to_string(),
        Some(name) => istiod.notes.push(format!(
            "PILOT_CA_CERT_CONFIGMAP={name:?} is not a ConfigMap name; assuming {DEFAULT_ROOT_CONFIGMAP}"
        )),
        None => {}
    }
    mesh_config(client, &mut istiod).await;
    if env_from_elsewhere(container, "ENABLE_CA_SERVER") {
        istiod.notes.push(
            "ENABLE_CA_SERVER is set from a ConfigMap, Secret or field, which the doctor does not resolve; assuming true".into(),
        );
    }
    let ca_server = match env(container, "ENABLE_CA_SERVER") {
        None => true,
        Some(v) => go_bool(v).unwrap_or_else(|| {
            istiod.notes.push(format!("ENABLE_CA_SERVER={v:?} is not a boolean; istiod reads it as true"));
            true
        }),
    };
    istiod.ca = if !ca_server {
        CaMode::External
    } else {
        let secrets = Api::<Secret>::namespaced(client.clone(), &istiod.namespace);
        // istiod prefers a plugged-in CA (`cacerts`) to its own.
        match secrets.get_opt(CACERTS).await {
            Ok(Some(s)) => CaMode::Cacerts {
                managed_by_meshroot: is_managed(s.metadata.labels.as_ref()),
                material: material(&istiod.namespace, CACERTS, &s),
            },
            Ok(None) => CaMode::Own(match secrets.get_opt("istio-ca-secret").await {
                Ok(Some(s)) => material(&istiod.namespace, "istio-ca-secret", &s),
                Ok(None) => CaMaterial::Unavailable(format!(
                    "Secret {}/istio-ca-secret does not exist yet (istiod creates it when it starts)",
                    istiod.namespace
                )),
                Err(e) => unreadable(&istiod.namespace, "istio-ca-secret", &e),
            }),
            // Whether istiod uses a plugged-in CA is unknown: say so rather than guess its own.
            Err(e) => {
                CaMode::Cacerts { material: unreadable(&istiod.namespace, CACERTS, &e), managed_by_meshroot: false }
            }
        }
    };
    istiod
}

/// Reads `trustDomain` and `caAddress` from the revision's mesh config ConfigMap.
async fn mesh_config(client: &kube::Client, istiod: &mut Istiod) {
    let name = if istiod.revision == "default" { "istio".to_string() } else { format!("istio-{}", istiod.revision) };
    let found = Api::<ConfigMap>::namespaced(client.clone(), &istiod.namespace).get_opt(&name).await;
    let text = match found {
        Ok(Some(cm)) => cm.data.and_then(|mut d| d.remove("mesh")),
        Ok(None) => None,
        Err(e) => {
            istiod.notes.push(format!(
                "cannot read its mesh config {}/{name}: {}; assuming trust domain cluster.local",
                istiod.namespace,
                error_summary(&e)
            ));
            None
        }
    };
    let Some(text) = text else { return };
    match serde_saphyr::from_str::<MeshConfig>(&text) {
        Ok(config) => {
            if let Some(domain) = config.trust_domain.filter(|d| !d.is_empty()) {
                istiod.trust_domain = domain;
            }
            istiod.ca_address = config.default_config.ca_address.filter(|a| !a.is_empty());
            istiod.trust_domain_aliases = config.trust_domain_aliases;
        }
        Err(e) => istiod.notes.push(format!("its mesh config {}/{name} does not parse: {e}", istiod.namespace)),
    }
}

fn unreadable(namespace: &str, name: &str, e: &kube::Error) -> CaMaterial {
    CaMaterial::Unavailable(format!("cannot read Secret {namespace}/{name}: {}", error_summary(e)))
}

/// The certificates under `key` of a Secret (none when absent).
fn secret_certs(
    namespace: &str,
    name: &str,
    secret: &Secret,
    key: &str,
) -> Result<Vec<CertificateDer<'static>>, String> {
    match secret_value(secret, key) {
        None => Ok(Vec::new()),
        Some(bytes) => pem::decode_certificates(bytes, PEM_LIMIT)
            .map_err(|e| format!("Secret {namespace}/{name}: {key} does not parse: {e}")),
    }
}

/// The certificates of a CA Secret: istiod's own layout (`ca-cert.pem`, `cert-chain.pem`,
/// `root-cert.pem`), or the `kubernetes.io/tls` one istiod reads first when `tls.crt` is there
/// (`tls.crt` = the CA and its chain, `ca.crt` = the roots), as cert-manager writes it.
fn material(namespace: &str, name: &str, secret: &Secret) -> CaMaterial {
    use crate::k8s::intermediates::{CACERTS_CHAIN, Layout};
    let certs = |key: &str| secret_certs(namespace, name, secret, key);
    let layout = Layout::of(secret);
    let parsed = (|| {
        let mut with_chain = certs(layout.cert_key())?;
        if with_chain.is_empty() {
            return Err(format!("Secret {namespace}/{name} has no certificate in {}", layout.cert_key()));
        }
        let signer = with_chain.remove(0);
        // The TLS layout keeps the chain after the CA; istiod's, in cert-chain.pem.
        let chain = match layout {
            Layout::KubernetesTls => with_chain,
            Layout::IstioCacerts => certs(CACERTS_CHAIN)?,
        };
        Ok(CaMaterial::Found { signer, chain, roots: certs(layout.bundle_key())? })
    })();
    parsed.unwrap_or_else(CaMaterial::Unavailable)
}

/// Istio's revision tags: each `istio.io/tag` injection webhook names its tag and revision.
async fn revision_tags(client: &kube::Client, snapshot: &mut Snapshot) {
    use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
    let api = Api::<MutatingWebhookConfiguration>::all(client.clone());
    match api.list_metadata(&ListParams::default().labels("istio.io/tag")).await {
        Ok(list) => {
            for webhook in list.items {
                let labels = webhook.metadata.labels.unwrap_or_default();
                if let (Some(tag), Some(revision)) = (labels.get("istio.io/tag"), labels.get("istio.io/rev")) {
                    snapshot.revision_tags.insert(tag.clone(), revision.clone());
                }
            }
        }
        Err(e) => snapshot.notes.push(format!(
            "cannot list Istio's revision tags (MutatingWebhookConfigurations labelled istio.io/tag): {}; namespaces labelled with a tag are matched by name",
            error_summary(&e)
        )),
    }
}

async fn meshroot(client: &kube::Client, target: &Target) -> Result<Meshroot, CollectError> {
    let mut found =
        Meshroot { root_secret: format!("{}/{}", target.namespace, target.root_secret), ..Meshroot::default() };
    let secrets = Api::<Secret>::namespaced(client.clone(), &target.namespace);
    found.signing_root = match secrets.get_opt(&target.root_secret).await {
        Ok(None) => SigningRoot::Absent,
        // The root meshroot's certificates chain to: its own, or an imported intermediate's.
        Ok(Some(secret)) => match crate::k8s::root::trust_anchor(&secret) {
            Ok(anchor) => SigningRoot::Known(anchor),
            Err(e) => SigningRoot::Unknown(e.to_string()),
        },
        Err(e) => SigningRoot::Unknown(format!("cannot read root Secret {}: {}", found.root_secret, error_summary(&e))),
    };
    match Api::<Mesh>::all(client.clone()).list(&ListParams::default()).await {
        Ok(list) => {
            for mesh in list.items {
                found.meshes.push(MeshrootMesh {
                    name: mesh.metadata.name.unwrap_or_default(),
                    istiod_namespace: mesh.spec.istiod.namespace,
                    revisions: mesh.spec.istiod.revisions,
                    mode: mesh.spec.mode,
                    root_configmap: mesh.spec.root_config_map_name,
                });
            }
        }
        // meshroot's CRDs are not installed: no Meshes.
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => return Err(CollectError::Api { what: "meshroot Meshes", summary: error_summary(&e) }),
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn booleans_are_read_as_istiod_reads_them() {
        for v in ["false", "0", "F", "FALSE", "False", "f"] {
            assert_eq!(go_bool(v), Some(false), "{v}");
        }
        for v in ["true", "1", "T", "TRUE", "True", "t"] {
            assert_eq!(go_bool(v), Some(true), "{v}");
        }
        assert_eq!(go_bool("no"), None);
        assert_eq!(go_bool(""), None);
    }

    /// A `cacerts` in the kubernetes.io/tls layout (cert-manager's) is read as istiod reads it:
    /// `tls.crt` first, the CA then its chain, with the roots in `ca.crt`.
    #[test]
    fn cacerts_in_the_tls_layout_is_read_as_istiod_reads_it() {
        use crate::pki::{Authority, CaSpec};
        let now = time::OffsetDateTime::now_utc();
        let root = Authority::new_root(&CaSpec::root(time::Duration::days(10)), now).unwrap();
        let ca = root.new_intermediate(&CaSpec::intermediate("m", time::Duration::days(1)), now).unwrap();
        let data = crate::k8s::secret_data(&[
            ("tls.crt", [ca.certificate_pem(), root.certificate_pem()].concat().as_bytes()),
            ("tls.key", b"-----BEGIN PRIVATE KEY-----\nnot read\n-----END PRIVATE KEY-----\n"),
            ("ca.crt", root.certificate_pem().as_bytes()),
            ("ca-cert.pem", root.certificate_pem().as_bytes()),
        ]);
        let secret = Secret { data: Some(data), ..Default::default() };
        let CaMaterial::Found { signer, chain, roots } = material("istio-system", "cacerts", &secret) else {
            panic!("not read")
        };
        assert_eq!(
            (&signer, chain.as_slice(), roots.as_slice()),
            (ca.certificate(), &[root.certificate().clone()][..], &[root.certificate().clone()][..])
        );
        let empty = Secret { data: Some(crate::k8s::secret_data(&[("tls.crt", b"junk")])), ..Default::default() };
        assert!(matches!(material("n", "cacerts", &empty), CaMaterial::Unavailable(why) if why.contains("tls.crt")));
    }

    #[test]
    fn the_mesh_config_gives_trust_domain_and_ca_address() {
        let text = "trustDomain: example.org\ntrustDomainAliases: [old.example.org]\ndefaultConfig:\n  caAddress: meshroot.meshroot.svc:15012\n  discoveryAddress: istiod.istio-system.svc:15012\nenablePrometheusMerge: true\n";
        let config: MeshConfig = serde_saphyr::from_str(text).unwrap();
        assert_eq!(config.trust_domain.as_deref(), Some("example.org"));
        assert_eq!(config.trust_domain_aliases, ["old.example.org"]);
        assert_eq!(config.default_config.ca_address.as_deref(), Some("meshroot.meshroot.svc:15012"));
        let bare: MeshConfig = serde_saphyr::from_str("accessLogFile: /dev/stdout\n").unwrap();
        assert!(bare.trust_domain.is_none() && bare.default_config.ca_address.is_none());
    }
}
