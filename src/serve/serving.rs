//! meshroot's own gRPC serving certificate: issued in memory by each
//! replica under the root (or, with an offline root, under the first ready
//! mesh intermediate), with the Service's DNS names, and rotated in process
//! at two thirds of its life or when the root changes. Connections are not
//! dropped: only new handshakes see the new certificate.

use crate::k8s::root::RootState;
use crate::mesh::MeshRegistry;
use crate::pki::{KeyAlgorithm, PrivateKey, profile};
use rustls_pki_types::CertificateDer;
use std::net::IpAddr;
use time::{Duration, OffsetDateTime};

pub const LIFETIME: Duration = Duration::days(30);

/// A serving certificate with its key and validity.
pub struct Serving {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKey,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    /// Serial of the authority that signed it, to notice a root change.
    pub issuer_serial: String,
}

impl Serving {
    pub fn due(&self, now: OffsetDateTime) -> bool {
        now >= self.not_before + (self.not_after - self.not_before) * 2 / 3
    }
}

/// The names a replica's serving certificate carries.
pub fn names(namespace: &str, service: &str, extra: &[String]) -> Vec<String> {
    let mut names = vec![format!("{service}.{namespace}.svc"), format!("{service}.{namespace}.svc.cluster.local")];
    names.extend(extra.iter().cloned());
    names.dedup();
    names
}

/// Issues a serving certificate, or says why it cannot yet.
pub fn issue(
    root: &RootState,
    registry: &MeshRegistry,
    names: &[String],
    now: OffsetDateTime,
) -> Result<Serving, String> {
    let mut dns = Vec::new();
    let mut ips: Vec<IpAddr> = Vec::new();
    for n in names {
        match n.parse::<IpAddr>() {
            Ok(ip) => ips.push(ip),
            Err(_) => dns.push(n.clone()),
        }
    }
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).map_err(|e| e.to_string())?;
    if let Some(root_ca) = &root.authority {
        let issued =
            profile::issue_server(root_ca, &key.spki_der(), &dns, &ips, LIFETIME, now).map_err(|e| e.to_string())?;
        return Ok(Serving {
            chain: vec![issued.der],
            key,
            not_before: issued.not_before,
            not_after: issued.not_after,
            issuer_serial: root_ca.serial_hex().to_string(),
        });
    }
    // Offline root: the alphabetically first mesh that can sign.
    let meshes = registry.meshes();
    let mut ready: Vec<_> =
        meshes.iter().filter_map(|m| m.signer.as_ref().ok().map(|c| (m.name.clone(), c.clone()))).collect();
    ready.sort_by(|a, b| a.0.cmp(&b.0));
    let Some((_, signer)) = ready.into_iter().next() else {
        return Err("the root is offline and no mesh intermediate is ready to sign the serving certificate yet".into());
    };
    let issued = profile::issue_server(signer.authority(), &key.spki_der(), &dns, &ips, LIFETIME, now)
        .map_err(|e| e.to_string())?;
    let mut chain = vec![issued.der];
    chain.extend(signer.ca_path());
    Ok(Serving {
        chain,
        key,
        not_before: issued.not_before,
        not_after: issued.not_after,
        issuer_serial: signer.authority().serial_hex().to_string(),
    })
}
