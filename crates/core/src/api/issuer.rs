//! `Issuer` (namespaced) and `ClusterIssuer`: cert-manager external issuers
//! that sign `CertificateRequest`s (and Kubernetes CSRs) under meshroot's root.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Which CA signs. Set exactly one of `root` and `mesh`. Only a
/// `ClusterIssuer` may sign with the root; a namespaced `Issuer` may sign
/// with a mesh's intermediate only when that `Mesh` lists the Issuer's
/// namespace in `spec.issuerNamespaces`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SignerRef {
    /// Sign with the root itself. Needs the root's key online.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub root: bool,
    /// Sign with this External `Mesh`'s intermediate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh: Option<String>,
}

/// What an issuer will sign. Deny by default: a list that is absent or
/// empty allows nothing of its kind, and every SAN kind and subject
/// attribute of a request must be allowed by a list. Protected names (every
/// mesh's SPIFFE IDs, istiod's and meshroot's DNS names) are granted only by
/// a literal entry, never by a pattern.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssuancePolicy {
    /// Whether requests with `isCA: true` are signed, for example an
    /// intermediate for Istio `cacerts`. ClusterIssuers only. Issued CAs
    /// carry a pathLen and name constraints derived from this policy's
    /// DNS, URI, IP and email lists.
    #[serde(default, rename = "allowCA")]
    pub allow_ca: bool,
    /// pathLenConstraint of issued CA certificates (default 0: they may
    /// sign only leaf certificates, which is what istiod does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_path_length: Option<u8>,
    /// Longest lifetime issued, such as `2160h`; longer requests are
    /// shortened, and the request's status says so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_duration: Option<String>,
    /// DNS name patterns: `*` matches within one label (`*.example.com`),
    /// a leading `**` label matches one or more labels (`**.example.com`).
    #[serde(default, rename = "allowedDNSNames", skip_serializing_if = "Option::is_none")]
    pub allowed_dns_names: Option<Vec<String>>,
    /// URI patterns: `*` matches within one path segment
    /// (`spiffe://example.org/svc/*`), `**` matches anything. SPIFFE IDs of a
    /// mesh's trust domain, and any URI with `/ns/` or `/sa/` in it (Istio reads it as an
    /// identity or a namespace), must be exactly
    /// `spiffe://<td>/ns/<ns>/sa/<sa>` and need a literal entry, or, for a
    /// ClusterIssuer and a mesh's trust domain, `spiffe://<trust domain>`
    /// literally, which grants the whole trust domain.
    #[serde(default, rename = "allowedURIs", skip_serializing_if = "Option::is_none")]
    pub allowed_uris: Option<Vec<String>>,
    /// CIDR ranges, such as `10.0.0.0/8` or `fd00::/8`.
    #[serde(default, rename = "allowedIPRanges", skip_serializing_if = "Option::is_none")]
    pub allowed_ip_ranges: Option<Vec<String>>,
    /// Email patterns: `*` matches within the local part or one domain label.
    /// Only plain `local@domain` addresses are issued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_emails: Option<Vec<String>>,
    /// Common name patterns (`*` matches anything). A common name is also
    /// allowed when it matches `allowedDNSNames`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_common_names: Option<Vec<String>>,
    /// Usages that may be requested, by cert-manager's names
    /// (`digital signature`, `server auth`, ...). When absent: `digital
    /// signature`, `key encipherment`, `server auth` and `client auth`.
    /// `any` and `ocsp signing` are never allowed unless listed here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_usages: Option<Vec<String>>,
    /// Subject attributes other than the common name and emailAddress, by
    /// short name (`C`, `ST`, `L`, `O`, `OU`, `street`, `postalCode`,
    /// `serialNumber`) or dotted OID, each with value patterns (`*` matches
    /// anything). Absent: a request may carry none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_subject_attributes: Option<BTreeMap<String, Vec<String>>>,
}

/// A namespaced issuer: signs requests in its own namespace only.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "meshroot.io",
    version = "v1alpha1",
    kind = "Issuer",
    plural = "issuers",
    namespaced,
    status = "IssuerStatus",
    category = "meshroot",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Mesh","type":"string","jsonPath":".spec.signer.mesh"}"#,
    printcolumn = r#"{"name":"Signer Expiry","type":"date","jsonPath":".status.signer.notAfter"}"#,
    printcolumn = r#"{"name":"Status","type":"string","priority":1,"jsonPath":".status.conditions[?(@.type==\"Ready\")].message"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct IssuerSpec {
    /// Which CA signs: a mesh's intermediate (`mesh`), usable only when that Mesh lists this Issuer's
    /// namespace in `spec.issuerNamespaces`. A namespaced Issuer may not sign with the root.
    pub signer: SignerRef,
    /// What this Issuer will sign. Deny by default: every SAN and subject attribute of a request must be
    /// allowed by a list (an absent or empty list allows none). Held to the Issuer's namespace: istiod's and
    /// meshroot's DNS names and meshroot's IP addresses are never granted, nor SPIFFE IDs of another
    /// namespace or another trust domain than the signing mesh's, nor names the cluster's DNS reads as
    /// another namespace's Service or pod (`....<namespace>.svc...`, `....<namespace>.pod...`, and two to
    /// four labels ending in another existing namespace), nor single-label DNS names; a mesh's SPIFFE IDs
    /// need a literal entry; and
    /// `allowCA` is refused.
    #[serde(default)]
    pub policy: IssuancePolicy,
}

/// A cluster-scoped issuer: signs requests from the namespaces it lists.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "meshroot.io",
    version = "v1alpha1",
    kind = "ClusterIssuer",
    plural = "clusterissuers",
    status = "IssuerStatus",
    category = "meshroot",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Mesh","type":"string","jsonPath":".spec.signer.mesh"}"#,
    printcolumn = r#"{"name":"Signer Expiry","type":"date","jsonPath":".status.signer.notAfter"}"#,
    printcolumn = r#"{"name":"Status","type":"string","priority":1,"jsonPath":".status.conditions[?(@.type==\"Ready\")].message"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ClusterIssuerSpec {
    /// Which CA signs: the root (`root: true`, which needs the root's key online) or an External Mesh's
    /// intermediate (`mesh`). Set exactly one.
    pub signer: SignerRef,
    /// What this ClusterIssuer will sign. Deny by default: every SAN and subject attribute of a request must
    /// be allowed by a list (an absent or empty list allows none). Protected names (every mesh's SPIFFE IDs,
    /// istiod's and meshroot's DNS names) are granted only by a literal entry, never by a pattern.
    #[serde(default)]
    pub policy: IssuancePolicy,
    /// Namespaces whose CertificateRequests this issuer signs, by literal
    /// name; `*` means every namespace. Empty: none. Kubernetes CSRs are
    /// signed for service accounts of these namespaces, and for other
    /// requesters only with `*`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_namespaces: Vec<String>,
}

/// The CA an issuer signs with, as last checked.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SignerStatus {
    /// The signing CA's subject, in RFC 4514 form.
    pub subject: String,
    /// RFC 3339; issued certificates never outlive it.
    pub not_after: String,
    /// SHA-256 fingerprint of the root the signer chains to (`ca.crt`).
    pub root_fingerprint: String,
}

/// What meshroot last found about an issuer: whether it can sign, and with which CA.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssuerStatus {
    /// `Ready` says whether the issuer can sign and, when it cannot, why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The CA the issuer signs with, as last checked; absent when the issuer cannot sign.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signer: Option<SignerStatus>,
}

/// Where an issuer lives, which decides what it may sign with and for whom.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IssuerScope<'a> {
    /// A namespaced `Issuer`: signs for its own namespace only.
    Namespaced {
        /// The Issuer's namespace.
        namespace: &'a str,
    },
    /// A `ClusterIssuer`, with the namespaces it serves.
    Cluster {
        /// `spec.allowedNamespaces`: namespace names, or `*` for every namespace.
        allowed_namespaces: &'a [String],
    },
}

/// What both issuer kinds have in common, for the controllers.
pub trait IssuerResource {
    /// Where the issuer lives: its namespace, or the namespaces a ClusterIssuer serves.
    fn scope(&self) -> IssuerScope<'_>;
    /// `spec.signer`: the CA the issuer asks to sign with, not yet resolved or checked.
    fn signer(&self) -> &SignerRef;
    /// `spec.policy`, as written (not yet validated).
    fn policy(&self) -> &IssuancePolicy;
    /// The issuer's `status`, if it has one.
    fn issuer_status(&self) -> Option<&IssuerStatus>;
}

impl IssuerResource for Issuer {
    fn scope(&self) -> IssuerScope<'_> {
        IssuerScope::Namespaced { namespace: self.metadata.namespace.as_deref().unwrap_or_default() }
    }
    fn signer(&self) -> &SignerRef {
        &self.spec.signer
    }
    fn policy(&self) -> &IssuancePolicy {
        &self.spec.policy
    }
    fn issuer_status(&self) -> Option<&IssuerStatus> {
        self.status.as_ref()
    }
}

impl IssuerResource for ClusterIssuer {
    fn scope(&self) -> IssuerScope<'_> {
        IssuerScope::Cluster { allowed_namespaces: &self.spec.allowed_namespaces }
    }
    fn signer(&self) -> &SignerRef {
        &self.spec.signer
    }
    fn policy(&self) -> &IssuancePolicy {
        &self.spec.policy
    }
    fn issuer_status(&self) -> Option<&IssuerStatus> {
        self.status.as_ref()
    }
}
