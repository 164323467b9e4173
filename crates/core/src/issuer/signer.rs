//! The CA an issuer signs with: the root (when its key is online) or an
//! External mesh's intermediate, with the chain up to the root.

use super::policy::PolicySpecError;
use super::tenancy::Tenancy;
use crate::api::issuer::{IssuerScope, SignerRef};
use crate::mesh::{MeshRegistry, NoSigner};
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
    #[error(transparent)]
    Invalid(#[from] IssuerSpecError),
    /// The signer is not available yet (or any more); retried.
    #[error(transparent)]
    Unavailable(#[from] SignerUnavailable),
    /// The issuer names a signer, or asks for a power, its namespace is not granted.
    #[error(transparent)]
    NotGranted(#[from] NotGranted),
}

/// What is wrong in an issuer's spec.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum IssuerSpecError {
    /// `spec.policy` is invalid.
    #[error(transparent)]
    Policy(#[from] PolicySpecError),
    /// `spec.signer` names both the root and a mesh.
    #[error("spec.signer: set either root or mesh, not both")]
    RootAndMesh,
    /// `spec.signer` names neither.
    #[error("spec.signer: set root: true or mesh: <Mesh name>")]
    NoSigner,
}

/// Why the signer an issuer names cannot sign now.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SignerUnavailable {
    /// The root's Secret holds no key.
    #[error("the root's key is offline (its Secret has no tls.key); sign with a mesh's intermediate instead")]
    RootKeyOffline,
    /// No External mesh of that name is loaded.
    #[error("Mesh {0:?} is not an External mesh meshroot signs for (missing, PluginCA, or invalid)")]
    NoSuchMesh(String),
    /// The mesh has no usable intermediate.
    #[error("Mesh {mesh:?}: {why}")]
    MeshNotReady {
        /// The mesh.
        mesh: String,
        /// Why.
        why: NoSigner,
    },
    /// No root the mesh trusts signed its intermediate.
    #[error("Mesh {0:?}: no trusted root signed its intermediate")]
    NoTrustedRoot(String),
    /// The signing certificate is expired or not yet valid.
    #[error("{signer}: {why}")]
    NotValidNow {
        /// The signer, described.
        signer: String,
        /// The validity error.
        why: String,
    },
}

/// What an issuer asks for that its scope does not grant.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum NotGranted {
    /// A namespaced Issuer names the root.
    #[error("a namespaced Issuer may not sign with the root; only a ClusterIssuer may")]
    RootToNamespaced,
    /// A namespaced Issuer names a mesh that does not grant its namespace.
    #[error(
        "Mesh {mesh:?} does not grant its intermediate to namespace {namespace:?} (the Mesh's \
         spec.issuerNamespaces must list it)"
    )]
    MeshToNamespace {
        /// The mesh.
        mesh: String,
        /// The Issuer's namespace.
        namespace: String,
    },
    /// A ClusterIssuer with an empty `allowedNamespaces`.
    #[error(
        "spec.allowedNamespaces is empty, so this ClusterIssuer serves no namespace; list them (or \"*\" for every \
         namespace)"
    )]
    NoNamespaces,
    /// A namespaced Issuer with `allowCA`, and what else it is not granted, if anything.
    #[error(
        "{}policy.allowCA: a namespaced Issuer may not issue CA certificates; only a ClusterIssuer may",
        .0.as_ref().map(|also| format!("{also}; ")).unwrap_or_default()
    )]
    CaToNamespaced(Option<Box<NotGranted>>),
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
    /// The signing mesh's trust domain; None for the root.
    trust_domain: Option<String>,
}

impl IssuingCa {
    /// The trust domain of the mesh whose intermediate signs; None when the root signs.
    pub fn trust_domain(&self) -> Option<&str> {
        self.trust_domain.as_deref()
    }

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
            return Err(NotGranted::RootToNamespaced.into());
        }
        if let Some(mesh) = signer.mesh.as_deref()
            && !tenancy.mesh_grants(mesh, namespace)
        {
            return Err(NotGranted::MeshToNamespace { mesh: mesh.to_string(), namespace: namespace.to_string() }.into());
        }
    }
    match (signer.root, signer.mesh.as_deref()) {
        (true, Some(_)) => Err(IssuerSpecError::RootAndMesh.into()),
        (false, None) => Err(IssuerSpecError::NoSigner.into()),
        (true, None) => {
            let Some(authority) = root.authority.clone() else {
                return Err(SignerUnavailable::RootKeyOffline.into());
            };
            // Under an imported intermediate, the chain goes through it to the bundle's first root.
            let root_cert = match root.chain.is_empty() {
                true => authority.certificate().clone(),
                false => root.bundle.roots().first().cloned().unwrap_or_else(|| authority.certificate().clone()),
            };
            Ok(IssuingCa {
                source: Source::Root(authority),
                path: root.chain.to_vec(),
                root: root_cert,
                description: "the root".into(),
                trust_domain: None,
            })
        }
        (false, Some(name)) => {
            let meshes = registry.meshes();
            let Some(mesh) = meshes.iter().find(|m| m.name == name) else {
                return Err(SignerUnavailable::NoSuchMesh(name.to_string()).into());
            };
            let chain =
                mesh.signer.clone().map_err(|why| SignerUnavailable::MeshNotReady { mesh: name.to_string(), why })?;
            let path = chain.ca_path();
            let top = path.last().cloned().unwrap_or_else(|| chain.authority().certificate().clone());
            let root =
                issuing_root(&top, chain.bundle()).ok_or_else(|| SignerUnavailable::NoTrustedRoot(name.to_string()))?;
            Ok(IssuingCa {
                source: Source::Mesh(chain),
                path,
                root,
                description: format!("mesh {name}'s intermediate"),
                trust_domain: Some(mesh.trust_domain.clone()),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{Authority, CaSpec};
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

    /// A root with pathLenConstraint `root_limit` and below it the signer with `signer_limit`.
    fn chain(root_limit: u8, signer_limit: u8) -> IssuingCa {
        let ca = |limit| {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Constrained(limit));
            params
        };
        let (root_key, signer_key) = (KeyPair::generate().unwrap(), KeyPair::generate().unwrap());
        let root_params = ca(root_limit);
        let root = root_params.self_signed(&root_key).unwrap();
        let issuer = Issuer::new(root_params, root_key);
        let signer = ca(signer_limit).signed_by(&signer_key, &issuer).unwrap();
        let any = Authority::new_root(&CaSpec::root(time::Duration::days(1)), time::OffsetDateTime::now_utc()).unwrap();
        IssuingCa {
            source: Source::Root(Arc::new(any)),
            path: vec![signer.der().clone()],
            root: root.der().clone(),
            description: "test".into(),
            trust_domain: None,
        }
    }

    /// Two roots with the same name, as in a rotation where both were generated alike: the one
    /// whose key signed the certificate is its issuing root, not the first of that name.
    #[test]
    fn the_issuing_root_is_the_one_whose_key_signed_not_the_first_of_that_name() {
        use rcgen::DnType;
        let root = || {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.distinguished_name.push(DnType::CommonName, "meshroot root CA");
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            let key = KeyPair::generate().unwrap();
            let cert = params.self_signed(&key).unwrap();
            (cert.der().clone(), Issuer::new(params, key))
        };
        let ((old, _), (new, new_issuer)) = (root(), root());
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let intermediate = params.signed_by(&KeyPair::generate().unwrap(), &new_issuer).unwrap().der().clone();
        let both = TrustBundle::new(vec![old.clone(), new.clone()]).unwrap();
        assert_eq!(issuing_root(&intermediate, &both), Some(new.clone()));
        assert_eq!(issuing_root(&intermediate, &TrustBundle::new(vec![old.clone()]).unwrap()), None);
        assert_eq!(issuing_root(&old, &both), Some(old), "a root is its own");
    }

    /// The tightest pathLenConstraint in the chain decides, whichever certificate carries it.
    #[test]
    fn the_tightest_path_length_in_the_chain_decides() {
        // The signer allows 4 more CAs below the new one, the root only 1 (the new CA is its second below).
        assert_eq!(chain(2, 5).ca_allowance(), CaAllowance::UpTo(0));
        assert_eq!(chain(5, 1).ca_allowance(), CaAllowance::UpTo(0));
        assert_eq!(chain(9, 3).ca_allowance(), CaAllowance::UpTo(2));
        assert_eq!(chain(4, 6).ca_allowance(), CaAllowance::UpTo(2));
        assert_eq!(chain(1, 3).ca_allowance(), CaAllowance::Forbidden);
        assert_eq!(chain(5, 0).ca_allowance(), CaAllowance::Forbidden);
    }
}
