//! The `Mesh` resource: one Istio mesh meshroot serves.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How meshroot serves a mesh.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum MeshMode {
    /// meshroot signs workload certificates over gRPC; istiod runs with
    /// `ENABLE_CA_SERVER=false` and `caAddress` pointing at meshroot.
    #[default]
    External,
    /// meshroot writes istiod's `cacerts` Secret (an intermediate under the
    /// root) and istiod keeps signing. For an istiod that cannot be repointed.
    #[serde(rename = "PluginCA")]
    PluginCa,
}

/// Key algorithms for intermediates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum IntermediateKeyAlgorithm {
    /// ECDSA on NIST P-256 (the default).
    #[default]
    #[serde(rename = "ECDSA-P256")]
    EcdsaP256,
    /// ECDSA on NIST P-384.
    #[serde(rename = "ECDSA-P384")]
    EcdsaP384,
    /// RSA with a 2048-bit modulus.
    #[serde(rename = "RSA-2048")]
    Rsa2048,
    /// RSA with a 3072-bit modulus.
    #[serde(rename = "RSA-3072")]
    Rsa3072,
    /// RSA with a 4096-bit modulus.
    #[serde(rename = "RSA-4096")]
    Rsa4096,
}

impl From<IntermediateKeyAlgorithm> for crate::pki::KeyAlgorithm {
    fn from(a: IntermediateKeyAlgorithm) -> Self {
        use crate::pki::KeyAlgorithm as K;
        match a {
            IntermediateKeyAlgorithm::EcdsaP256 => K::EcdsaP256,
            IntermediateKeyAlgorithm::EcdsaP384 => K::EcdsaP384,
            IntermediateKeyAlgorithm::Rsa2048 => K::Rsa2048,
            IntermediateKeyAlgorithm::Rsa3072 => K::Rsa3072,
            IntermediateKeyAlgorithm::Rsa4096 => K::Rsa4096,
        }
    }
}

/// The istiod a mesh belongs to.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IstiodSpec {
    /// istiod's namespace, for example `istio-system`.
    pub namespace: String,
    /// Revisions in use (`istiod-<rev>.<ns>.svc` names); empty for the default revision only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revisions: Vec<String>,
    /// istiod's service account, named in its serving certificate's URI SAN.
    #[serde(default = "default_istiod_service_account")]
    pub service_account: String,
    /// Extra DNS names for istiod's serving certificate (`ISTIOD_CUSTOM_HOST`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub custom_hosts: Vec<String>,
}

fn default_istiod_service_account() -> String {
    "istiod".into()
}

/// The mesh's intermediate CA under the root.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IntermediateSpec {
    /// The intermediate's key algorithm (default `ECDSA-P256`).
    #[serde(default)]
    pub key_algorithm: IntermediateKeyAlgorithm,
    /// Lifetime, as a duration such as `8760h`.
    #[serde(default = "default_intermediate_duration")]
    pub duration: String,
    /// Renew when this little time is left, such as `720h`.
    #[serde(default = "default_intermediate_renew_before")]
    pub renew_before: String,
}

impl Default for IntermediateSpec {
    fn default() -> Self {
        Self {
            key_algorithm: IntermediateKeyAlgorithm::default(),
            duration: default_intermediate_duration(),
            renew_before: default_intermediate_renew_before(),
        }
    }
}

fn default_intermediate_duration() -> String {
    "8760h".into()
}

fn default_intermediate_renew_before() -> String {
    "720h".into()
}

/// Workload certificate lifetimes (External meshes).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadCertificatesSpec {
    /// Lifetime when a request asks for none.
    #[serde(default = "default_workload_ttl", rename = "defaultTTL")]
    pub default_ttl: String,
    /// Longest lifetime issued; longer requests are clamped.
    #[serde(default = "default_workload_max_ttl", rename = "maxTTL")]
    pub max_ttl: String,
}

impl Default for WorkloadCertificatesSpec {
    fn default() -> Self {
        Self { default_ttl: default_workload_ttl(), max_ttl: default_workload_max_ttl() }
    }
}

fn default_workload_ttl() -> String {
    "24h".into()
}

fn default_workload_max_ttl() -> String {
    "2160h".into()
}

fn default_root_config_map_name() -> String {
    "istio-ca-root-cert".into()
}

/// One Istio mesh whose certificates chain to meshroot's root.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "meshroot.io",
    version = "v1alpha1",
    kind = "Mesh",
    plural = "meshes",
    status = "MeshStatus",
    shortname = "mesh",
    category = "meshroot",
    printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".spec.mode"}"#,
    printcolumn = r#"{"name":"Trust Domain","type":"string","jsonPath":".spec.trustDomain"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Intermediate Expiry","type":"date","jsonPath":".status.intermediate.notAfter"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct MeshSpec {
    /// The SPIFFE trust domain of workload identities, for example `cluster.local`.
    pub trust_domain: String,
    /// How meshroot serves the mesh: `External` (meshroot signs workload certificates; the default) or
    /// `PluginCA` (meshroot writes istiod's `cacerts` and istiod signs).
    #[serde(default)]
    pub mode: MeshMode,
    /// The istiod this mesh belongs to.
    pub istiod: IstiodSpec,
    /// Namespaces whose workloads belong to this mesh (External meshes).
    /// Empty matches every namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// The mesh's intermediate CA under the root: key algorithm, lifetime and renewal.
    #[serde(default)]
    pub intermediate: IntermediateSpec,
    /// Lifetimes of the workload certificates meshroot issues (External meshes).
    #[serde(default)]
    pub workload_certificates: WorkloadCertificatesSpec,
    /// `namespace/serviceaccount` entries allowed to request certificates
    /// for workloads on their node (ztunnel), for example `istio-system/ztunnel`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_node_accounts: Vec<String>,
    /// The ConfigMap that carries the trust bundle (`global.trustBundleName`).
    #[serde(default = "default_root_config_map_name")]
    pub root_config_map_name: String,
    /// Namespaces whose namespaced `Issuer`s may sign with this mesh's
    /// intermediate (External meshes), by literal name. Empty: none; only
    /// ClusterIssuers may.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub issuer_namespaces: Vec<String>,
}

/// The mesh's current intermediate CA certificate.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IntermediateStatus {
    /// Its serial number, as lowercase hex.
    pub serial: String,
    /// RFC 3339.
    pub not_after: String,
}

/// What meshroot last found about a mesh.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MeshStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `IntermediateReady` and, for External meshes, `NamespacesOverlap` and
    /// `RootConfigMapsContested`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The mesh's current intermediate; absent when meshroot has no usable one for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intermediate: Option<IntermediateStatus>,
    /// SHA-256 fingerprints of every trusted root.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub root_fingerprints: Vec<String>,
    /// How many namespaces receive this mesh's root ConfigMap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<u32>,
}

/// What validating a Mesh spec derives from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ValidSpec {
    /// `workloadCertificates.defaultTTL`, parsed.
    pub default_ttl: time::Duration,
    /// `workloadCertificates.maxTTL`, parsed.
    pub max_ttl: time::Duration,
}

/// Why a Mesh spec cannot be used; `Display` names the field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MeshSpecError {
    /// `trustDomain` is not a valid SPIFFE trust domain; the text says why.
    #[error("spec.trustDomain: {0}")]
    TrustDomain(String),
    /// A `workloadCertificates` lifetime does not parse; the error names the field.
    #[error(transparent)]
    Duration(#[from] crate::duration::DurationError),
    /// A `trustedNodeAccounts` entry is not `namespace/serviceaccount` with valid names.
    #[error("trustedNodeAccounts: {0:?} is not NAMESPACE/SERVICEACCOUNT")]
    NodeAccount(String),
    /// `namespaceSelector` has an unusable expression.
    #[error("namespaceSelector: {0}")]
    Selector(#[from] super::selector::SelectorError),
    /// `istiod.namespace` is not a namespace name (a DNS-1123 label).
    #[error("istiod.namespace: {0:?} is not a namespace name")]
    IstiodNamespace(String),
}

impl MeshSpec {
    /// Checks the spec: trust domain, workload TTLs, node accounts,
    /// selector, istiod namespace. Every replica's registry and the leader's
    /// mesh controller judge a spec by this one function.
    pub fn validate(&self) -> Result<ValidSpec, MeshSpecError> {
        use crate::duration;
        use crate::names::{is_dns1123_label, is_service_account_ref};
        crate::pki::spiffe::validate_trust_domain(&self.trust_domain)
            .map_err(|e| MeshSpecError::TrustDomain(e.to_string()))?;
        let default_ttl =
            duration::parse_field("workloadCertificates.defaultTTL", &self.workload_certificates.default_ttl)?;
        let max_ttl = duration::parse_field("workloadCertificates.maxTTL", &self.workload_certificates.max_ttl)?;
        for account in &self.trusted_node_accounts {
            if !is_service_account_ref(account) {
                return Err(MeshSpecError::NodeAccount(account.clone()));
            }
        }
        if let Some(selector) = &self.namespace_selector {
            super::selector::validate(selector)?;
        }
        if !is_dns1123_label(&self.istiod.namespace) {
            return Err(MeshSpecError::IstiodNamespace(self.istiod.namespace.clone()));
        }
        Ok(ValidSpec { default_ttl, max_ttl })
    }
}
