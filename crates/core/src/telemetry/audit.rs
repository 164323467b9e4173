//! One structured audit line per CreateCertificate, under the tracing target
//! `meshroot::audit`. The fields are a stable schema; tokens, CSRs and keys
//! are never among them.

use std::time::Duration;

/// The tracing target of audit lines, so they can be filtered and routed apart from other logs.
pub const TARGET: &str = "meshroot::audit";

/// What the audit line says about one request.
#[derive(Debug, Default)]
pub struct AuditRecord<'a> {
    /// The mesh that signed; set only when a certificate was issued.
    pub mesh: Option<&'a str>,
    /// The authenticated caller as `namespace/serviceaccount`.
    pub caller: Option<String>,
    /// The identity put in (or asked for in) the certificate.
    pub identity: Option<String>,
    /// Whether a trusted node account asked on a workload's behalf (`ImpersonatedIdentity`).
    pub impersonated: bool,
    /// The issued certificate's serial number, as lowercase hex.
    pub serial: Option<String>,
    /// The issued certificate's NotAfter, in Unix seconds.
    pub not_after: Option<i64>,
    /// The CSR's public key type, such as `ecdsa-p256` or `rsa-2048`.
    pub key_type: Option<String>,
    /// The lifetime granted, in seconds.
    pub ttl_seconds: Option<i64>,
    /// The TCP peer's address (`ip:port`).
    pub peer: Option<String>,
}

/// Writes the audit line of an issued certificate, at level INFO.
pub fn issued(r: &AuditRecord<'_>, latency: Duration) {
    tracing::info!(
        target: TARGET,
        outcome = "issued",
        code = "OK",
        mesh = r.mesh.unwrap_or(""),
        caller = r.caller.as_deref().unwrap_or(""),
        identity = r.identity.as_deref().unwrap_or(""),
        impersonated = r.impersonated,
        serial = r.serial.as_deref().unwrap_or(""),
        not_after = r.not_after.unwrap_or(0),
        key_type = r.key_type.as_deref().unwrap_or(""),
        ttl_seconds = r.ttl_seconds.unwrap_or(0),
        peer = r.peer.as_deref().unwrap_or(""),
        latency_us = latency.as_micros() as u64,
        "certificate issued"
    );
}

/// Writes the audit line of a refused request, at level WARN: `code` is the gRPC status name and `reason`
/// the detail.
pub fn denied(r: &AuditRecord<'_>, code: &'static str, reason: &str, latency: Duration) {
    tracing::warn!(
        target: TARGET,
        outcome = "denied",
        code,
        reason,
        mesh = r.mesh.unwrap_or(""),
        caller = r.caller.as_deref().unwrap_or(""),
        identity = r.identity.as_deref().unwrap_or(""),
        impersonated = r.impersonated,
        key_type = r.key_type.as_deref().unwrap_or(""),
        peer = r.peer.as_deref().unwrap_or(""),
        latency_us = latency.as_micros() as u64,
        "certificate request denied"
    );
}

/// What meshroot decided for a cert-manager CertificateRequest or a
/// Kubernetes CertificateSigningRequest, once written to its status.
#[derive(Debug)]
pub struct RequestDecision<'a> {
    /// `CertificateRequest` or `CertificateSigningRequest`.
    pub source: &'static str,
    /// `namespace/name`, or the name of a cluster-scoped CSR.
    pub request: String,
    /// The issuer named, such as `ClusterIssuer mesh-ca`.
    pub issuer: String,
    /// Who created the request (`spec.username`).
    pub requester: &'a str,
}

/// Writes the audit line of a signed CertificateRequest or Kubernetes CSR, at level INFO, with the
/// certificate's serial number (hex) and NotAfter (Unix seconds).
pub fn request_issued(d: &RequestDecision<'_>, serial: &str, not_after: i64) {
    tracing::info!(
        target: TARGET,
        outcome = "issued",
        code = "OK",
        source = d.source,
        request = d.request.as_str(),
        issuer = d.issuer.as_str(),
        requester = d.requester,
        serial,
        not_after,
        "certificate issued"
    );
}

/// `code` is the condition reason (`Denied`, `PolicyViolation`, ...).
pub fn request_denied(d: &RequestDecision<'_>, code: &str, reason: &str) {
    tracing::warn!(
        target: TARGET,
        outcome = "denied",
        code,
        reason,
        source = d.source,
        request = d.request.as_str(),
        issuer = d.issuer.as_str(),
        requester = d.requester,
        "certificate request denied"
    );
}
