//! The parts of cert-manager's `CertificateRequest` (cert-manager.io/v1)
//! that an external issuer reads and writes. cert-manager owns this CRD;
//! meshroot never installs it.

use k8s_openapi::ByteString;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use serde::{Deserialize, Serialize};

/// cert-manager's API group, to which `CertificateRequest` belongs.
pub const GROUP: &str = "cert-manager.io";

/// `spec.issuerRef`: the issuer a `CertificateRequest` asks to sign it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct IssuerReference {
    /// The issuer's name; a namespaced issuer is looked up in the request's namespace.
    pub name: String,
    /// The issuer's kind, such as `Issuer` or `ClusterIssuer`; cert-manager reads an absent kind as `Issuer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The issuer's API group (`meshroot.io` for meshroot's issuers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

/// `spec` of a cert-manager `CertificateRequest`: the CSR and what its requester asks of the issuer.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "cert-manager.io",
    version = "v1",
    kind = "CertificateRequest",
    plural = "certificaterequests",
    namespaced,
    status = "CertificateRequestStatus",
    schema = "disabled"
)]
#[serde(rename_all = "camelCase")]
pub struct CertificateRequestSpec {
    /// The PEM CSR (base64 in JSON).
    pub request: ByteString,
    /// The issuer asked to sign.
    pub issuer_ref: IssuerReference,
    /// The requested lifetime, as a duration such as `2160h`; absent leaves it to the signer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
    /// Whether a CA certificate is requested (`isCA`); absent means no.
    #[serde(default, rename = "isCA", skip_serializing_if = "Option::is_none")]
    pub is_ca: Option<bool>,
    /// The requested key usages and extended key usages, by cert-manager's names (`digital signature`,
    /// `server auth`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usages: Option<Vec<String>>,
    /// Who created the request, as cert-manager's webhook records it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
}

/// A CertificateRequest condition (cert-manager's own type: no
/// observedGeneration, `lastTransitionTime` optional).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestCondition {
    /// The condition type, such as `Ready`, `Approved`, `Denied` or `InvalidRequest`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// A machine-readable CamelCase reason for the status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A human-readable explanation of the status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When `status` last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
}

/// `status` of a `CertificateRequest`: its conditions and, once signed, the certificate.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CertificateRequestStatus {
    /// The request's conditions (`Approved`, `Denied`, `Ready`, `InvalidRequest`, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<RequestCondition>,
    /// The signed certificate as PEM (base64 in JSON); absent or empty until signed. meshroot writes the leaf
    /// followed by the CA certificates below the root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<ByteString>,
    /// A PEM CA certificate for the chain (base64 in JSON); meshroot writes the root the chain ends at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<ByteString>,
    /// When the request was marked as failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_time: Option<Time>,
}

impl CertificateRequest {
    /// The condition of type `type_`, if the status has one.
    pub fn condition(&self, type_: &str) -> Option<&RequestCondition> {
        self.status.as_ref()?.conditions.iter().find(|c| c.type_ == type_)
    }

    /// Whether condition `type_` is present with status `True`.
    pub fn is_true(&self, type_: &str) -> bool {
        self.condition(type_).is_some_and(|c| c.status == "True")
    }
}
