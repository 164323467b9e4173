//! istiod's serving certificate for External meshes: the Secret `istiod-tls`
//! in istiod's namespace (`tls.crt` = leaf + chain, `tls.key`, `ca.crt` =
//! the bundle), which istiod's chart mounts at /var/run/secrets/istiod/tls.
//! Renewed at two thirds of its life, or when names or the chain change.

use crate::api::MeshSpec;
use crate::k8s::root::{CA_CERT, TLS_CERT, TLS_KEY};
use crate::k8s::{
    ADOPT_ANNOTATION, FIELD_MANAGER, adoption_requested, error_summary, is_managed, managed_labels, secret_data,
    secret_value,
};
use crate::pki::authority::parse_certificate;
use crate::pki::{KeyAlgorithm, PrivateKey, SigningChain, pem, profile};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, PostParams};
use std::collections::BTreeSet;
use thiserror::Error;
use time::{Duration, OffsetDateTime};
use x509_parser::extensions::GeneralName;

/// The name of the Secret, in istiod's namespace.
pub const ISTIOD_TLS: &str = "istiod-tls";
/// Lifetime of each istiod serving certificate issued.
pub const LIFETIME: Duration = Duration::days(30);

/// Why `istiod-tls` could not be made current.
#[derive(Debug, Error)]
pub enum IstiodTlsError {
    /// A Secret of that name exists without meshroot's labels (its `namespace/name`).
    #[error(
        "Secret {0} is not managed by meshroot; refusing to overwrite it. To hand it over, stop its other writer \
         (istio-csr: app.tls.istiodCertificateEnable=false), then annotate it {ADOPT_ANNOTATION}=true"
    )]
    NotOwned(String),
    /// Generating the key or issuing the certificate failed.
    #[error("issuing istiod's certificate: {0}")]
    Issue(crate::pki::PkiError),
    /// Reading or writing the Secret failed (the API error, summarised).
    #[error("Kubernetes API: {0}")]
    Api(String),
}

/// The DNS names istiod's clients dial: `istiod.<ns>.svc`, one
/// `istiod-<rev>.<ns>.svc` per revision, and the custom hosts.
pub fn dns_names(spec: &MeshSpec) -> Vec<String> {
    let ns = &spec.istiod.namespace;
    let mut names = vec![format!("istiod.{ns}.svc")];
    names.extend(
        spec.istiod
            .revisions
            .iter()
            .filter(|r| !r.is_empty() && *r != "default")
            .map(|r| format!("istiod-{r}.{ns}.svc")),
    );
    names.extend(spec.istiod.custom_hosts.iter().cloned());
    let mut seen = BTreeSet::new();
    names.retain(|n| seen.insert(n.clone()));
    names
}

/// istiod's SPIFFE ID, the certificate's URI SAN: its service account in the mesh's trust domain.
pub fn identity(spec: &MeshSpec) -> String {
    format!("spiffe://{}/ns/{}/sa/{}", spec.trust_domain, spec.istiod.namespace, spec.istiod.service_account)
}

/// Whether the stored certificate can stay: ours, the wanted names, its key,
/// issued by the current intermediate and chaining to the bundle, the bundle
/// beside it, and under 2/3 of its life.
fn current(secret: &Secret, names: &BTreeSet<String>, id: &str, chain: &SigningChain, now: OffsetDateTime) -> bool {
    let (Some(cert_pem), Some(key_pem)) = (secret_value(secret, TLS_CERT), secret_value(secret, TLS_KEY)) else {
        return false;
    };
    if secret_value(secret, CA_CERT) != Some(chain.bundle().pem().as_bytes()) {
        return false;
    }
    let Ok(certs) = pem::decode_certificates(cert_pem, 1 << 20) else { return false };
    let Ok(key) = PrivateKey::from_pem(key_pem) else { return false };
    let Some((leaf, intermediates)) = certs.split_first() else { return false };
    let Ok(cert) = parse_certificate(leaf) else { return false };
    // Issued by the mesh's current intermediate: after a renewal or a root
    // switch, istiod moves along before the old chain stops being trusted.
    if cert.public_key().raw != key.spki_der().as_slice()
        || !chain.authority().issued(leaf)
        || chain.bundle().verify_server(leaf, intermediates, now).is_err()
    {
        return false;
    }
    let (nb, na) = (cert.validity().not_before.to_datetime(), cert.validity().not_after.to_datetime());
    if profile::renewal_due(nb, na, now) {
        return false;
    }
    let Ok(Some(san)) = cert.subject_alternative_name() else { return false };
    let mut dns = BTreeSet::new();
    let mut uris = Vec::new();
    for n in &san.value.general_names {
        match n {
            GeneralName::DNSName(d) => {
                dns.insert((*d).to_string());
            }
            GeneralName::URI(u) => uris.push(*u),
            _ => return false,
        }
    }
    dns == *names && uris == [id]
}

/// Makes sure `istiod-tls` is current. Returns whether it was (re)written.
pub async fn ensure(
    api: &Api<Secret>,
    spec: &MeshSpec,
    chain: &SigningChain,
    now: OffsetDateTime,
) -> Result<bool, IstiodTlsError> {
    let names = dns_names(spec);
    let wanted: BTreeSet<String> = names.iter().cloned().collect();
    let id = identity(spec);
    let where_ = format!("{}/{ISTIOD_TLS}", spec.istiod.namespace);
    let existing = api.get_opt(ISTIOD_TLS).await.map_err(|e| IstiodTlsError::Api(error_summary(&e)))?;
    if let Some(secret) = &existing {
        if !is_managed(secret.metadata.labels.as_ref()) {
            if !adoption_requested(secret.metadata.annotations.as_ref()) {
                return Err(IstiodTlsError::NotOwned(where_));
            }
            tracing::warn!(secret = %where_, annotation = ADOPT_ANNOTATION, "taking over a Secret another writer made, as its annotation asks");
        } else if current(secret, &wanted, &id, chain, now) {
            return Ok(false);
        }
    }
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).map_err(IstiodTlsError::Issue)?;
    let issued = profile::issue_istiod(chain.authority(), &key.spki_der(), &names, &id, LIFETIME, now)
        .map_err(IstiodTlsError::Issue)?;
    let tls_crt: String =
        std::iter::once(issued.pem.clone()).chain(chain.ca_path().iter().map(|c| pem::encode_certificate(c))).collect();
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(ISTIOD_TLS.into()),
            labels: Some(managed_labels()),
            resource_version: existing.as_ref().and_then(|s| s.metadata.resource_version.clone()),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(secret_data(&[
            (TLS_CERT, tls_crt.as_bytes()),
            (TLS_KEY, key.to_pem().as_bytes()),
            (CA_CERT, chain.bundle().pem().as_bytes()),
        ])),
        ..Default::default()
    };
    let params = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
    let result = match existing {
        None => api.create(&params, &secret).await,
        Some(_) => api.replace(ISTIOD_TLS, &params, &secret).await,
    };
    match result {
        Ok(_) => {
            tracing::info!(secret = %where_, serial = %issued.serial_hex, not_after = %issued.not_after, "issued istiod's serving certificate");
            Ok(true)
        }
        // Written meanwhile by someone else; the next reconcile looks again.
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(IstiodTlsError::Api(error_summary(&e))),
    }
}
