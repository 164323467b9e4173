//! Zero-downtime root rotation, as three edits of the root Secret
//! (`docs/rotation.md`):
//!
//! 1. **add**: the new root joins `ca.crt`, so every bundle meshroot
//!    publishes trusts both roots while the old one still signs.
//! 2. **switch**: the new root becomes `tls.crt`/`tls.key` and the old one
//!    moves to `ca.crt`. meshroot re-issues every intermediate under the new
//!    root; both roots stay trusted.
//! 3. **finish**: once the longest-lived leaf of the old chain has expired,
//!    the old root leaves `ca.crt` and the bundles.
//!
//! Each step refuses to run out of order, and every write is a
//! compare-and-swap on the resourceVersion read.

use super::intermediates::{CACERTS, Layout, MESH_LABEL};
use super::root::{CA_CERT, Root, TLS_CERT, TLS_KEY, parse_root_secret};
use super::{error_summary, is_managed, secret_value};
use crate::api::mesh::Mesh;
use crate::pki::{Authority, PkiError, TrustBundle, pem};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams, PostParams};
use rustls_pki_types::CertificateDer;
use std::collections::BTreeSet;
use thiserror::Error;
use time::OffsetDateTime;

/// The Secret type `kubectl create secret tls` makes; it requires `tls.key`.
const SECRET_TYPE_TLS: &str = "kubernetes.io/tls";

/// When `switch` ran, so `finish` can tell whether old leaves have expired.
pub const SWITCHED_AT_ANNOTATION: &str = "meshroot.io/root-switched-at";

/// Why a rotation step did not run.
#[derive(Debug, Error)]
pub enum RotationError {
    /// The step does not apply now (out of order, the wrong root, or too early); the message says why.
    #[error("{0}")]
    Refused(String),
    /// The new root's certificate or key is unreadable, invalid, or they do not match.
    #[error("the new root: {0}")]
    NewRoot(PkiError),
    /// The root Secret as it is cannot be read as a root (or its annotation as a time).
    #[error("the root Secret: {0}")]
    Current(String),
    /// A Kubernetes API call failed (the error, summarised).
    #[error("Kubernetes API: {0}")]
    Api(String),
    /// The root Secret's resourceVersion changed between the read and the write.
    #[error("the root Secret changed while this ran; run it again")]
    Conflict,
}

/// What the root Secret says about a rotation in progress.
#[derive(Debug)]
pub struct RotationStatus {
    /// SHA-256 fingerprint of the signing root (`tls.crt`).
    pub signing: String,
    /// Whether the Secret holds the signing root's key (`tls.key`).
    pub online: bool,
    /// Fingerprints of the other trusted roots (`ca.crt`).
    pub extra: Vec<String>,
    /// When `switch` ran (RFC 3339), from [`SWITCHED_AT_ANNOTATION`]; `None` before a switch.
    pub switched_at: Option<String>,
}

impl RotationStatus {
    /// The rotation stage in words, with the next step: steady, added or switched.
    pub fn stage(&self) -> &'static str {
        match (self.extra.is_empty(), self.switched_at.is_some()) {
            (true, _) => "steady: one root",
            (false, false) => "added: a new root is trusted, the old one signs (next: switch)",
            (false, true) => "switched: the new root signs, the old one is still trusted (next: finish)",
        }
    }
}

fn fingerprint(cert: &CertificateDer<'_>) -> String {
    crate::pki::chain::sha256_hex(cert.as_ref())
}

fn current_roots(secret: &Secret) -> Result<(CertificateDer<'static>, Vec<CertificateDer<'static>>), RotationError> {
    roots_of(&parse_root_secret(secret).map_err(|e| RotationError::Current(e.to_string()))?)
}

/// [`current_roots`] for a rotation step, which moves between self-signed roots: under an
/// imported intermediate the Secret's `tls.crt` and `tls.key` are replaced instead
/// (docs/root-ca.md).
fn step_roots(secret: &Secret) -> Result<(CertificateDer<'static>, Vec<CertificateDer<'static>>), RotationError> {
    let root = parse_root_secret(secret).map_err(|e| RotationError::Current(e.to_string()))?;
    if !root.chain.is_empty() {
        return Err(RotationError::Refused(
            "the root Secret holds an imported intermediate, not a root: to move to another one, replace its tls.crt \
             (the intermediate and its chain) and tls.key (docs/root-ca.md); rotation steps take a self-signed root"
                .into(),
        ));
    }
    roots_of(&root)
}

/// The signing root, then the other roots trusted.
fn roots_of(root: &Root) -> Result<(CertificateDer<'static>, Vec<CertificateDer<'static>>), RotationError> {
    let Some((signing, others)) = root.bundle.roots().split_first() else {
        return Err(RotationError::Current("the root Secret trusts no root".into()));
    };
    Ok((signing.clone(), others.to_vec()))
}

/// Reads the rotation status from the root Secret; an error if it holds no valid root.
pub fn status(secret: &Secret) -> Result<RotationStatus, RotationError> {
    let (signing, extra) = current_roots(secret)?;
    Ok(RotationStatus {
        signing: fingerprint(&signing),
        online: secret_value(secret, TLS_KEY).is_some(),
        extra: extra.iter().map(fingerprint).collect(),
        switched_at: annotation(secret),
    })
}

fn annotation(secret: &Secret) -> Option<String> {
    secret.metadata.annotations.as_ref()?.get(SWITCHED_AT_ANNOTATION).cloned()
}

/// A self-signed CA certificate, valid now.
fn new_root_certificate(pem_bytes: &[u8], now: OffsetDateTime) -> Result<CertificateDer<'static>, RotationError> {
    let mut certs = pem::decode_certificates(pem_bytes, crate::pki::authority::MAX_CERT_PEM_BYTES)
        .map_err(RotationError::NewRoot)?;
    if certs.len() != 1 {
        return Err(RotationError::NewRoot(PkiError::PemCount(certs.len())));
    }
    let cert = certs.remove(0);
    TrustBundle::new(vec![cert.clone()]).map_err(RotationError::NewRoot)?;
    if !crate::pki::authority::issued_by(&cert, &cert) {
        return Err(RotationError::Refused("the new root is not self-signed (is it an intermediate?)".into()));
    }
    let parsed = crate::pki::authority::parse_certificate(&cert).map_err(RotationError::NewRoot)?;
    let (nb, na) = (parsed.validity().not_before.to_datetime(), parsed.validity().not_after.to_datetime());
    if now < nb || now >= na {
        return Err(RotationError::Refused(format!("the new root is not valid now (valid {nb} to {na})")));
    }
    Ok(cert)
}

fn encode_roots(roots: &[CertificateDer<'_>]) -> Vec<u8> {
    roots.iter().map(|c| pem::encode_certificate(c)).collect::<String>().into_bytes()
}

fn set(secret: &mut Secret, key: &str, value: Option<Vec<u8>>) {
    let data = secret.data.get_or_insert_with(Default::default);
    match value {
        Some(v) => {
            data.insert(key.into(), ByteString(v));
        }
        None => {
            data.remove(key);
        }
    }
}

/// Step 1: trust `new_root_pem` beside the current root.
pub fn add(secret: &Secret, new_root_pem: &[u8], now: OffsetDateTime) -> Result<Secret, RotationError> {
    let (signing, mut extra) = step_roots(secret)?;
    let new = new_root_certificate(new_root_pem, now)?;
    if new == signing {
        return Err(RotationError::Refused("that root already signs".into()));
    }
    if extra.contains(&new) {
        return Err(RotationError::Refused("that root is already trusted (in ca.crt); next: switch".into()));
    }
    extra.push(new);
    let mut out = secret.clone();
    set(&mut out, CA_CERT, Some(encode_roots(&extra)));
    Ok(out)
}

/// Step 2: the new root (already trusted by step 1) signs; the old one
/// stays trusted. Without a key the new root is offline.
pub fn switch(
    secret: &Secret,
    new_root_pem: &[u8],
    new_key_pem: Option<&[u8]>,
    now: OffsetDateTime,
) -> Result<Secret, RotationError> {
    let (signing, extra) = step_roots(secret)?;
    let new = new_root_certificate(new_root_pem, now)?;
    if new == signing {
        return Err(RotationError::Refused("that root already signs; next: finish".into()));
    }
    if !extra.contains(&new) {
        return Err(RotationError::Refused(
            "the new root is not trusted yet: run `add` first and wait until every workload has the new bundle".into(),
        ));
    }
    if let Some(key) = new_key_pem {
        let authority = Authority::from_pem(new_root_pem, key).map_err(RotationError::NewRoot)?;
        if !authority.is_self_signed() {
            return Err(RotationError::Refused("the new root is not self-signed".into()));
        }
    }
    let mut others: Vec<_> = extra.into_iter().filter(|c| *c != new).collect();
    others.insert(0, signing);
    let mut out = secret.clone();
    set(&mut out, TLS_CERT, Some(pem::encode_certificate(&new).into_bytes()));
    // A `kubernetes.io/tls` Secret must keep a `tls.key` (the API server
    // requires it, and `type` is immutable): an offline root leaves it empty.
    let offline_key = (secret.type_.as_deref() == Some(SECRET_TYPE_TLS)).then(Vec::new);
    set(&mut out, TLS_KEY, new_key_pem.map(<[u8]>::to_vec).or(offline_key));
    set(&mut out, CA_CERT, Some(encode_roots(&others)));
    out.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(SWITCHED_AT_ANNOTATION.into(), crate::pki::rfc3339(now));
    Ok(out)
}

/// Step 3: drop every root but the signing one, once `leaf_lifetime` has
/// passed since the switch (so no leaf of the old chain is still valid).
pub fn finish(
    secret: &Secret,
    leaf_lifetime: time::Duration,
    force: bool,
    now: OffsetDateTime,
) -> Result<Secret, RotationError> {
    let (_, extra) = step_roots(secret)?;
    if extra.is_empty() {
        return Err(RotationError::Refused("only one root is trusted; nothing to finish".into()));
    }
    if !force {
        let Some(switched) = annotation(secret) else {
            return Err(RotationError::Refused(
                "the signing root was not switched by `switch`; run it first (or pass --force to drop roots trusted for another reason)".into(),
            ));
        };
        let at = OffsetDateTime::parse(&switched, &time::format_description::well_known::Rfc3339)
            .map_err(|e| RotationError::Current(format!("annotation {SWITCHED_AT_ANNOTATION}: {e}")))?;
        let Some(old_leaves_valid_until) = at.checked_add(leaf_lifetime) else {
            return Err(RotationError::Current(format!(
                "annotation {SWITCHED_AT_ANNOTATION}: {switched} plus --leaf-lifetime is out of range"
            )));
        };
        if now < old_leaves_valid_until {
            return Err(RotationError::Refused(format!(
                "the switch was at {switched}; leaves of the old chain may be valid until {} (--leaf-lifetime {}); wait, or pass --force",
                crate::pki::rfc3339(old_leaves_valid_until),
                crate::duration::rounded(leaf_lifetime)
            )));
        }
    }
    let mut out = secret.clone();
    set(&mut out, CA_CERT, None);
    if let Some(a) = out.metadata.annotations.as_mut() {
        a.remove(SWITCHED_AT_ANNOTATION);
    }
    Ok(out)
}

/// Intermediates meshroot manages that are not yet under the signing root:
/// `finish` must not run while any remain. Only where meshroot keeps them
/// (its own namespace, and `cacerts` in each Mesh's istiod namespace): anyone
/// may put meshroot's labels on a Secret of their own, which would otherwise
/// hold `finish` back for good.
pub async fn stale_intermediates(
    client: &kube::Client,
    own_namespace: &str,
    signing: &CertificateDer<'_>,
) -> Result<Vec<String>, RotationError> {
    let api_error = |e: kube::Error| RotationError::Api(error_summary(&e));
    let meshes = Api::<Mesh>::all(client.clone()).list(&ListParams::default()).await.map_err(api_error)?;
    let istiod_namespaces: BTreeSet<&str> = meshes.items.iter().map(|m| m.spec.istiod.namespace.as_str()).collect();
    let kept_by_meshroot = |s: &Secret| {
        let namespace = s.metadata.namespace.as_deref().unwrap_or_default();
        namespace == own_namespace
            || (s.metadata.name.as_deref() == Some(CACERTS) && istiod_namespaces.contains(namespace))
    };
    let api: Api<Secret> = Api::all(client.clone());
    let list = api.list(&ListParams::default().labels(MESH_LABEL)).await.map_err(api_error)?;
    let mut stale = Vec::new();
    for s in list.items.iter().filter(|s| is_managed(s.metadata.labels.as_ref()) && kept_by_meshroot(s)) {
        let cert = secret_value(s, Layout::of(s).cert_key());
        let issued = cert
            .and_then(|c| pem::decode_certificates(c, 1 << 20).ok())
            .and_then(|c| c.into_iter().next())
            .is_some_and(|c| crate::pki::authority::issued_by(signing, &c));
        if !issued {
            stale.push(format!(
                "{}/{}",
                s.metadata.namespace.as_deref().unwrap_or_default(),
                s.metadata.name.as_deref().unwrap_or_default()
            ));
        }
    }
    Ok(stale)
}

/// Writes `updated` over the Secret it was made from (compare-and-swap).
pub async fn write(api: &Api<Secret>, updated: &Secret) -> Result<Secret, RotationError> {
    let name = updated.metadata.name.clone().unwrap_or_default();
    let params = PostParams { field_manager: Some(super::FIELD_MANAGER.into()), ..Default::default() };
    api.replace(&name, &params, updated).await.map_err(|e| match e {
        kube::Error::Api(s) if s.code == 409 => RotationError::Conflict,
        other => RotationError::Api(error_summary(&other)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::CaSpec;
    use k8s_openapi::api::core::v1::Secret;

    fn root() -> Authority {
        Authority::new_root(&CaSpec::root(time::Duration::days(30)), OffsetDateTime::now_utc()).unwrap()
    }

    fn secret(signing: &Authority) -> Secret {
        let mut s = Secret::default();
        s.metadata.name = Some("meshroot-root-ca".into());
        set(&mut s, TLS_CERT, Some(signing.certificate_pem().as_bytes().to_vec()));
        set(&mut s, TLS_KEY, Some(signing.key().to_pem().as_bytes().to_vec()));
        s
    }

    fn refusal(r: Result<Secret, RotationError>) -> String {
        r.expect_err("refused").to_string()
    }

    #[test]
    fn each_step_refuses_to_run_out_of_order_or_with_the_wrong_root() {
        let now = OffsetDateTime::now_utc();
        let (old, new) = (root(), root());
        let new_pem = new.certificate_pem().as_bytes();
        let start = secret(&old);
        assert_eq!(status(&start).unwrap().stage(), "steady: one root");
        // Not a root, already signing, not trusted yet, nothing to finish.
        let int = old.new_intermediate(&CaSpec::intermediate("m", time::Duration::days(1)), now).unwrap();
        assert!(refusal(add(&start, int.certificate_pem().as_bytes(), now)).contains("not self-signed"));
        assert!(refusal(add(&start, old.certificate_pem().as_bytes(), now)).contains("already signs"));
        assert!(refusal(switch(&start, new_pem, None, now)).contains("run `add` first"));
        assert!(refusal(finish(&start, time::Duration::ZERO, false, now)).contains("nothing to finish"));

        let added = add(&start, new_pem, now).unwrap();
        assert!(status(&added).unwrap().stage().starts_with("added"));
        assert!(refusal(add(&added, new_pem, now)).contains("already trusted"));
        assert!(refusal(finish(&added, time::Duration::ZERO, false, now)).contains("not switched"));
        // The new root's certificate with another key.
        let stranger = root();
        let wrong_key = switch(&added, new_pem, Some(stranger.key().to_pem().as_bytes()), now);
        assert!(matches!(wrong_key, Err(RotationError::NewRoot(PkiError::KeyMismatch))), "{wrong_key:?}");

        let switched = switch(&added, new_pem, Some(new.key().to_pem().as_bytes()), now).unwrap();
        let s = status(&switched).unwrap();
        assert!(s.stage().starts_with("switched") && s.online, "{s:?}");
        assert_eq!(s.extra, vec![crate::pki::chain::sha256_hex(old.certificate())]);
        assert!(refusal(finish(&switched, time::Duration::hours(24), false, now)).contains("wait, or pass --force"));
        let done = finish(&switched, time::Duration::hours(24), false, now + time::Duration::hours(25)).unwrap();
        assert_eq!(status(&done).unwrap().stage(), "steady: one root");
        assert!(secret_value(&done, CA_CERT).is_none() && annotation(&done).is_none());
        // Rolling back after the switch is another switch, to the old root.
        // Roots trusted for another reason (no switch) go only when forced.
        let forced = finish(&added, time::Duration::ZERO, true, now).unwrap();
        assert_eq!(status(&forced).unwrap().stage(), "steady: one root");
        let back =
            switch(&switched, old.certificate_pem().as_bytes(), Some(old.key().to_pem().as_bytes()), now).unwrap();
        assert_eq!(status(&back).unwrap().signing, crate::pki::chain::sha256_hex(old.certificate()));
    }

    /// Switching to a root without its key keeps a `kubernetes.io/tls`
    /// Secret valid (an empty `tls.key`, which reads as offline) and leaves
    /// other Secrets without one.
    #[test]
    fn switching_to_an_offline_root_keeps_a_tls_secret_valid() {
        let now = OffsetDateTime::now_utc();
        let (old, new) = (root(), root());
        for (kind, key_left) in [(Some(SECRET_TYPE_TLS), Some(Vec::new())), (Some("Opaque"), None), (None, None)] {
            let mut start = secret(&old);
            start.type_ = kind.map(String::from);
            let added = add(&start, new.certificate_pem().as_bytes(), now).unwrap();
            let switched = switch(&added, new.certificate_pem().as_bytes(), None, now).unwrap();
            let data = switched.data.as_ref().unwrap();
            assert_eq!(data.get(TLS_KEY).map(|v| v.0.clone()), key_left, "{kind:?}");
            assert_eq!(switched.type_.as_deref(), kind);
            let s = status(&switched).unwrap();
            assert!(!s.online && s.stage().starts_with("switched"), "{kind:?}: {s:?}");
            assert!(parse_root_secret(&switched).unwrap().is_offline());
        }
    }

    /// `finish` runs from the moment the old chain's last leaf can have
    /// expired (the switch plus the leaf lifetime), not a second before.
    #[test]
    fn finish_runs_from_the_moment_the_old_leaves_expire() {
        let now = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
        let (old, new) = (root(), root());
        let added = add(&secret(&old), new.certificate_pem().as_bytes(), now).unwrap();
        let switched =
            switch(&added, new.certificate_pem().as_bytes(), Some(new.key().to_pem().as_bytes()), now).unwrap();
        let lifetime = time::Duration::hours(24);
        let second = time::Duration::seconds(1);
        assert!(finish(&switched, lifetime, false, now + lifetime - second).is_err());
        assert!(finish(&switched, lifetime, false, now + lifetime).is_ok());
    }

    /// A new root is taken from its NotBefore up to, not including, its NotAfter.
    #[test]
    fn a_new_root_is_taken_only_within_its_validity() {
        let new = root();
        let pem = new.certificate_pem().as_bytes();
        let parsed = crate::pki::authority::parse_certificate(new.certificate()).unwrap();
        let (nb, na) = (parsed.validity().not_before.to_datetime(), parsed.validity().not_after.to_datetime());
        let second = time::Duration::seconds(1);
        assert!(new_root_certificate(pem, nb).is_ok());
        assert!(new_root_certificate(pem, na - second).is_ok());
        for outside in [nb - second, na] {
            let refused = new_root_certificate(pem, outside);
            assert!(
                matches!(&refused, Err(RotationError::Refused(m)) if m.contains("not valid now")),
                "{outside}: {refused:?}"
            );
        }
    }

    /// The switch time is read from an annotation anyone with write access
    /// to the Secret can edit: one near the end of time is refused with a
    /// reason, not a panic in date arithmetic.
    #[test]
    fn a_switch_time_at_the_end_of_time_is_refused_not_a_panic() {
        let now = OffsetDateTime::now_utc();
        let (old, new) = (root(), root());
        let added = add(&secret(&old), new.certificate_pem().as_bytes(), now).unwrap();
        let mut switched =
            switch(&added, new.certificate_pem().as_bytes(), Some(new.key().to_pem().as_bytes()), now).unwrap();
        switched
            .metadata
            .annotations
            .get_or_insert_default()
            .insert(SWITCHED_AT_ANNOTATION.into(), "9999-12-31T23:59:59Z".into());
        let refused = finish(&switched, time::Duration::days(1), false, now);
        assert!(matches!(&refused, Err(RotationError::Current(m)) if m.contains("out of range")), "{refused:?}");
    }
}
