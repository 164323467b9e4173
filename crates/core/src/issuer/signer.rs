//! The CA an issuer signs with: the root (when its key is online) or an
//! External mesh's intermediate, with the chain up to the root.

use super::tenancy::Tenancy;
use crate::api::issuer::{IssuerScope, SignerRef};
use crate::mesh::MeshRegistry;
use crate::pki::RootState;
use crate::pki::authority::parse_certificate;
use crate::pki::chain::sha256_hex;
use crate::pki::{Authority, SigningChain, TrustBundle, pem};
use rustls_pki_types::CertificateDer;
use std::sync::Arc;
use thiserror::Error;

/// Why an issuer cannot sign.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SignerProblem {
    /// The issuer's spec is wrong; nothing but an edit fixes it.
    #[error("{0}")]
    Invalid(String),
    /// The signer is not available yet (or any more); retried.
    #[error("{0}")]
    Unavailable(String),
    /// The issuer names a signer its namespace is not granted.
    #[error("{0}")]
    NotGranted(String),
}

/// How deep a CA certificate issued by this signer may itself sign.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaAllowance {
    /// No pathLenConstraint in the signer's chain limits an issued CA.
    Unlimited,
    /// The largest pathLenConstraint an issued CA may have.
    UpTo(u8),
    /// The chain's path length constraints forbid issuing CAs at all.
    Forbidden,
}

#[derive(Clone, Debug)]
enum Source {
    Root(Arc<Authority>),
    Mesh(Arc<SigningChain>),
}

/// A resolved signer with its chain and root.
#[derive(Clone, Debug)]
pub struct IssuingCa {
    source: Source,
    /// Certificates from the signer up to (excluding) the root.
    path: Vec<CertificateDer<'static>>,
    root: CertificateDer<'static>,
    description: String,
}

impl IssuingCa {
    /// The CA that signs: the root, or the mesh's current intermediate.
    pub fn authority(&self) -> &Authority {
        match &self.source {
            Source::Root(authority) => authority,
            Source::Mesh(chain) => chain.authority(),
        }
    }

    /// The chain after a leaf: the signer (unless it is the root) and any
    /// intermediates above it, never the root.
    pub fn path(&self) -> &[CertificateDer<'static>] {
        &self.path
    }

    /// The self-signed root the chain ends at.
    pub fn root(&self) -> &CertificateDer<'static> {
        &self.root
    }

    /// The root as PEM: what a request's status gets as its CA.
    pub fn root_pem(&self) -> String {
        pem::encode_certificate(&self.root)
    }

    /// SHA-256 of the root's DER, as lowercase hex.
    pub fn root_fingerprint(&self) -> String {
        sha256_hex(self.root.as_ref())
    }

    /// For messages: "the root" or "mesh istio-system's intermediate".
    pub fn description(&self) -> &str {
        &self.description
    }

    /// What the path length constraints of the signer and everything above
    /// it leave for a CA certificate issued below them.
    pub fn ca_allowance(&self) -> CaAllowance {
        let mut allowance = CaAllowance::Unlimited;
        let above = self.path.iter().chain(std::iter::once(&self.root));
        for (depth, cert) in above.enumerate() {
            let Ok(parsed) = parse_certificate(cert) else { return CaAllowance::Forbidden };
            let limit = parsed.basic_constraints().ok().flatten().and_then(|bc| bc.value.path_len_constraint);
            if let Some(limit) = limit {
                // A CA at `depth` above the new certificate allows `limit`
                // CAs below it; the new one is the (depth+1)th.
                let below = u32::try_from(depth).ok().and_then(|d| d.checked_add(1));
                let Some(left) = below.and_then(|below| limit.checked_sub(below)) else {
                    return CaAllowance::Forbidden;
                };
                let left = u8::try_from(left).unwrap_or(u8::MAX);
                allowance = match allowance {
                    CaAllowance::UpTo(n) if n <= left => allowance,
                    CaAllowance::Forbidden => allowance,
                    _ => CaAllowance::UpTo(left),
                };
            }
        }
        allowance
    }
}

/// Resolves `signer` for an issuer in `scope` against the current root and
/// meshes. A namespaced Issuer may never sign with the root, and with a
/// mesh's intermediate only when the Mesh grants its namespace.
pub fn resolve(
    signer: &SignerRef,
    scope: IssuerScope<'_>,
    root: &RootState,
    registry: &MeshRegistry,
    tenancy: &Tenancy,
) -> Result<IssuingCa, SignerProblem> {
    if let IssuerScope::Namespaced { namespace } = scope {
        if signer.root {
            return Err(SignerProblem::NotGranted(
                "a namespaced Issuer may not sign with the root; only a ClusterIssuer may".into(),
            ));
        }
        if let Some(mesh) = signer.mesh.as_deref()
            && !tenancy.mesh_grants(mesh, namespace)
        {
            return Err(SignerProblem::NotGranted(format!(
                "Mesh {mesh:?} does not grant its intermediate to namespace {namespace:?} (the Mesh's \
                 spec.issuerNamespaces must list it)"
            )));
        }
    }
    match (signer.root, signer.mesh.as_deref()) {
        (true, Some(_)) => Err(SignerProblem::Invalid("spec.signer: set either root or mesh, not both".into())),
        (false, None) => Err(SignerProblem::Invalid("spec.signer: set root: true or mesh: <Mesh name>".into())),
        (true, None) => {
            let Some(authority) = root.authority.clone() else {
                return Err(SignerProblem::Unavailable(
                    "the root's key is offline (its Secret has no tls.key); sign with a mesh's intermediate instead"
                        .into(),
                ));
            };
            let root_cert = authority.certificate().clone();
            Ok(IssuingCa {
                source: Source::Root(authority),
                path: Vec::new(),
                root: root_cert,
                description: "the root".into(),
            })
        }
        (false, Some(name)) => {
            let meshes = registry.meshes();
            let Some(mesh) = meshes.iter().find(|m| m.name == name) else {
                return Err(SignerProblem::Unavailable(format!(
                    "Mesh {name:?} is not an External mesh meshroot signs for (missing, PluginCA, or invalid)"
                )));
            };
            let chain =
                mesh.signer.clone().map_err(|why| SignerProblem::Unavailable(format!("Mesh {name:?}: {why}")))?;
            let path = chain.ca_path();
            let top = path.last().cloned().unwrap_or_else(|| chain.authority().certificate().clone());
            let root = issuing_root(&top, chain.bundle()).ok_or_else(|| {
                SignerProblem::Unavailable(format!("Mesh {name:?}: no trusted root signed its intermediate"))
            })?;
            Ok(IssuingCa {
                source: Source::Mesh(chain),
                path,
                root,
                description: format!("mesh {name}'s intermediate"),
            })
        }
    }
}

/// The root in `bundle` that issued `cert` (or `cert` itself, if a root).
fn issuing_root(cert: &CertificateDer<'static>, bundle: &TrustBundle) -> Option<CertificateDer<'static>> {
    if bundle.roots().contains(cert) {
        return Some(cert.clone());
    }
    let child = parse_certificate(cert).ok()?;
    bundle
        .roots()
        .iter()
        .find(|root| {
            parse_certificate(root).is_ok_and(|r| {
                r.subject().as_raw() == child.issuer().as_raw() && child.verify_signature(Some(r.public_key())).is_ok()
            })
        })
        .cloned()
}
