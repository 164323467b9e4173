//! `meshroot doctor`: reads a cluster and says whether its Istio meshes can complete mutual TLS
//! with each other, and if not, why and what to change.
//!
//! Three steps, each its own module: [`collect`] reads what decides trust (every istiod's
//! Deployment and CA Secrets, the root ConfigMaps its workloads mount, meshroot's root and
//! Meshes) into a [`Snapshot`]; [`diagnose`] judges it without I/O (so every verdict is tested
//! in-process); [`render`] prints the report as a table. The report is also JSON.
//!
//! What the doctor cannot see: a pod keeps the trust it started with until it restarts, so a
//! cluster can look healthy here while older pods still refuse their peers.

pub mod collect;
pub mod diagnose;
pub mod render;

use crate::api::mesh::MeshMode;
use crate::pki::pem;
use rustls_pki_types::CertificateDer;
use std::collections::BTreeMap;

pub use collect::{CollectError, collect};
pub use diagnose::{Report, Verdict, diagnose};

/// The label every istiod Deployment carries (Istio's chart, OpenShift Service Mesh, the
/// OpenShift ingress operator's Gateway API istiod).
pub const ISTIOD_SELECTOR: &str = "app=istiod";
/// The root ConfigMap istiod writes unless `PILOT_CA_CERT_CONFIGMAP` names another.
pub const DEFAULT_ROOT_CONFIGMAP: &str = "istio-ca-root-cert";
pub use crate::k8s::root::ROOT_CERT_KEY;
/// Largest PEM the doctor parses from one ConfigMap or Secret value.
const PEM_LIMIT: usize = 1 << 20;

/// What the doctor read from the cluster.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Every istiod found.
    pub istiods: Vec<Istiod>,
    /// Every namespace's labels, by name.
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
    /// Root ConfigMaps by (namespace, name), for every name an istiod uses.
    pub configmaps: BTreeMap<(String, String), Bundle>,
    /// Istio's revision tags (`istio.io/tag` webhooks): tag → the revision it points at.
    pub revision_tags: BTreeMap<String, String>,
    /// meshroot, if installed.
    pub meshroot: Meshroot,
    /// What the doctor could not read about the cluster as a whole.
    pub notes: Vec<String>,
}

/// One istiod Deployment and how its CA is configured.
#[derive(Debug)]
pub struct Istiod {
    /// Its namespace.
    pub namespace: String,
    /// The Deployment's name.
    pub deployment: String,
    /// Its revision (`istio.io/rev`, or `REVISION`); `default` when it has none.
    pub revision: String,
    /// Where the certificates its workloads get come from.
    pub ca: CaMode,
    /// The ConfigMap its workloads read their roots from (`PILOT_CA_CERT_CONFIGMAP`).
    pub root_configmap: String,
    /// `trustDomain` of its mesh config (`cluster.local` if unset).
    pub trust_domain: String,
    /// `trustDomainAliases` of its mesh config: other trust domains its proxies accept as its own.
    pub trust_domain_aliases: Vec<String>,
    /// `defaultConfig.caAddress` of its mesh config, if set.
    pub ca_address: Option<String>,
    /// What the doctor could not read or understand about it.
    pub notes: Vec<String>,
}

impl Istiod {
    /// How the report names this istiod's mesh: `namespace/revision`.
    pub fn mesh_id(&self) -> String {
        format!("{}/{}", self.namespace, self.revision)
    }
}

/// Where an istiod's workloads get their certificates.
#[derive(Debug)]
pub enum CaMode {
    /// istiod signs with the self-signed CA in its `istio-ca-secret`.
    Own(CaMaterial),
    /// istiod signs with the plugged-in CA in its `cacerts` Secret.
    Cacerts {
        /// The CA's certificates.
        material: CaMaterial,
        /// Whether meshroot wrote that Secret (a PluginCA mesh).
        managed_by_meshroot: bool,
    },
    /// `ENABLE_CA_SERVER=false`: another CA signs, at the mesh config's `caAddress`.
    External,
}

/// A CA Secret's certificates (never its key), or why they could not be read.
#[derive(Debug)]
pub enum CaMaterial {
    /// The signing CA's certificate, the chain above it and the roots the Secret names.
    Found {
        /// `ca-cert.pem`.
        signer: CertificateDer<'static>,
        /// `cert-chain.pem` (may be empty).
        chain: Vec<CertificateDer<'static>>,
        /// `root-cert.pem` (may be empty for istiod's self-signed CA).
        roots: Vec<CertificateDer<'static>>,
    },
    /// The Secret is missing, unreadable or invalid; the text says which.
    Unavailable(String),
}

/// A root ConfigMap's roots, or why they could not be read.
#[derive(Debug)]
pub enum Bundle {
    /// The certificates of `root-cert.pem`.
    Roots(Vec<CertificateDer<'static>>),
    /// No `root-cert.pem`, or one that does not parse.
    Invalid(String),
}

impl Bundle {
    /// Parses a root ConfigMap's `root-cert.pem`.
    pub fn parse(pem_text: Option<&str>) -> Self {
        let Some(text) = pem_text.filter(|t| !t.trim().is_empty()) else {
            return Bundle::Invalid(format!("no {ROOT_CERT_KEY}"));
        };
        match pem::decode_certificates(text.as_bytes(), PEM_LIMIT) {
            Ok(roots) if !roots.is_empty() => Bundle::Roots(roots),
            Ok(_) => Bundle::Invalid(format!("{ROOT_CERT_KEY} holds no certificate")),
            Err(e) => Bundle::Invalid(format!("{ROOT_CERT_KEY} does not parse: {e}")),
        }
    }
}

/// meshroot as the doctor found it.
#[derive(Debug, Default)]
pub struct Meshroot {
    /// The root Secret `namespace/name` looked at.
    pub root_secret: String,
    /// The root meshroot signs under.
    pub signing_root: SigningRoot,
    /// Every `Mesh`.
    pub meshes: Vec<MeshrootMesh>,
}

impl Meshroot {
    /// Whether meshroot looks installed: it has a root, or Meshes.
    pub fn installed(&self) -> bool {
        !matches!(self.signing_root, SigningRoot::Absent) || !self.meshes.is_empty()
    }

    /// The Mesh that serves `istiod`, if any.
    pub fn mesh_for(&self, istiod: &Istiod) -> Option<&MeshrootMesh> {
        self.meshes.iter().find(|m| {
            m.istiod_namespace == istiod.namespace && (m.revisions.is_empty() || m.revisions.contains(&istiod.revision))
        })
    }
}

/// meshroot's signing root.
#[derive(Debug, Default)]
pub enum SigningRoot {
    /// No root Secret: meshroot is not installed (or not in that namespace).
    #[default]
    Absent,
    /// The Secret's `tls.crt`.
    Known(CertificateDer<'static>),
    /// The Secret exists but could not be read or parsed; the text says why.
    Unknown(String),
}

/// One `Mesh`, as far as trust is concerned.
#[derive(Debug)]
pub struct MeshrootMesh {
    /// Its name.
    pub name: String,
    /// Its istiod's namespace.
    pub istiod_namespace: String,
    /// Its istiod's revisions (empty: the default one, and the doctor matches any).
    pub revisions: Vec<String>,
    /// External or PluginCA.
    pub mode: MeshMode,
    /// The root ConfigMap meshroot writes for it.
    pub root_configmap: String,
}

#[cfg(test)]
mod tests;
