//! meshroot's own gRPC serving certificate: issued in memory by each
//! replica under the root (or, with an offline root, under the first ready
//! mesh intermediate), with the Service's DNS names, and rotated in process
//! at two thirds of its life or when the root changes. Connections are not
//! dropped: only new handshakes see the new certificate.

use crate::k8s::root::RootState;
use crate::mesh::MeshRegistry;
use crate::pki::{KeyAlgorithm, PkiError, PrivateKey, profile};
use rustls_pki_types::CertificateDer;
use std::net::IpAddr;
use time::{Duration, OffsetDateTime};

/// How long a serving certificate is issued for; it is rotated at two thirds of that, or on a root change.
pub const LIFETIME: Duration = Duration::days(30);

/// A serving certificate with its key (redacted in `Debug`) and validity.
#[derive(Debug)]
pub struct Serving {
    /// The certificate, then any intermediates up to (excluding) the root, in DER.
    pub chain: Vec<CertificateDer<'static>>,
    /// The certificate's private key, generated for it (ECDSA P-256).
    pub key: PrivateKey,
    /// The certificate's NotBefore.
    pub not_before: OffsetDateTime,
    /// The certificate's NotAfter.
    pub not_after: OffsetDateTime,
    /// Serial of the authority that signed it, to notice a root change.
    pub issuer_serial: String,
}

impl Serving {
    /// Whether it should be replaced at `now`: once two thirds of its life have passed.
    pub fn due(&self, now: OffsetDateTime) -> bool {
        profile::renewal_due(self.not_before, self.not_after, now)
    }
}

/// The names a replica's serving certificate carries.
pub fn names(namespace: &str, service: &str, extra: &[String]) -> Vec<String> {
    let mut names = vec![format!("{service}.{namespace}.svc"), format!("{service}.{namespace}.svc.cluster.local")];
    names.extend(extra.iter().cloned());
    names.dedup();
    names
}

/// Why no serving certificate could be issued.
#[derive(Debug, thiserror::Error)]
pub enum ServingError {
    /// The root's key is offline and no mesh can sign yet.
    #[error("the root is offline and no mesh intermediate is ready to sign the serving certificate yet")]
    NoSigner,
    /// Generating the key or signing failed.
    #[error(transparent)]
    Pki(#[from] PkiError),
}

/// Issues a serving certificate, or says why it cannot yet.
pub fn issue(
    root: &RootState,
    registry: &MeshRegistry,
    names: &[String],
    now: OffsetDateTime,
) -> Result<Serving, ServingError> {
    let mut dns = Vec::new();
    let mut ips: Vec<IpAddr> = Vec::new();
    for n in names {
        match n.parse::<IpAddr>() {
            Ok(ip) => ips.push(ip),
            Err(_) => dns.push(n.clone()),
        }
    }
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256)?;
    if let Some(root_ca) = &root.authority {
        let issued = profile::issue_server(root_ca, &key.spki_der(), &dns, &ips, LIFETIME, now)?;
        // Under an imported intermediate, the chain to the root goes through it.
        return Ok(Serving {
            chain: std::iter::once(issued.der).chain(root.chain.iter().cloned()).collect(),
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
        return Err(ServingError::NoSigner);
    };
    let issued = profile::issue_server(signer.authority(), &key.spki_der(), &dns, &ips, LIFETIME, now)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::Mesh;
    use crate::pki::{Authority, CaSpec, SigningChain, TrustBundle};
    use std::sync::Arc;

    #[test]
    fn online_roots_sign_directly_and_offline_roots_use_a_mesh_intermediate() {
        let now = OffsetDateTime::now_utc();
        let root = Authority::new_root(&CaSpec::root(Duration::days(365)), now).unwrap();
        let bundle = Arc::new(TrustBundle::new(vec![root.certificate().clone()]).unwrap());
        let names = names("meshroot", "meshroot", &["localhost".into()]);
        assert_eq!(names[..2], ["meshroot.meshroot.svc", "meshroot.meshroot.svc.cluster.local"]);
        let int = root.new_intermediate(&CaSpec::intermediate("b-mesh", Duration::days(30)), now).unwrap();
        let chain = Arc::new(SigningChain::new(int, vec![], (*bundle).clone()).unwrap());
        let registry = MeshRegistry::default();

        let offline = RootState { authority: None, bundle: bundle.clone(), chain: Default::default() };
        assert!(matches!(issue(&offline, &registry, &names, now), Err(ServingError::NoSigner)));
        registry.replace(vec![Arc::new(Mesh::of_all_namespaces("b-mesh", "cluster.local", chain.clone()))]);
        let via_mesh = issue(&offline, &registry, &names, now).unwrap();
        assert_eq!(via_mesh.chain.len(), 2, "leaf + intermediate");
        bundle.verify_server(&via_mesh.chain[0], &via_mesh.chain[1..], now).unwrap();

        let online = RootState { authority: Some(Arc::new(root)), bundle: bundle.clone(), chain: Default::default() };
        let direct = issue(&online, &registry, &names, now).unwrap();
        assert_eq!(direct.chain.len(), 1);
        bundle.verify_server(&direct.chain[0], &[], now).unwrap();
        assert!(!direct.due(now) && direct.due(now + Duration::days(21)));
    }
}
