//! The mesh registry: which mesh covers a caller, and the signing chain and
//! policy it signs with. Readers take a snapshot without locking; updates
//! swap the whole snapshot atomically.

use crate::auth::node::{NodeAuthorizer, TrustedAccountOnly};
use crate::pki::SigningChain;
use arc_swap::ArcSwap;
use rustls_pki_types::CertificateDer;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use thiserror::Error;
use time::{Duration, OffsetDateTime};

/// How many earlier signing certificates a mesh remembers after renewals,
/// so workload leaves issued before a renewal can still renew with their
/// client certificate.
pub const MAX_PREVIOUS_SIGNERS: usize = 2;

/// Which namespaces a mesh covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NamespaceScope {
    /// Every namespace.
    All,
    /// Only these namespaces, by name.
    Only(BTreeSet<String>),
}

impl NamespaceScope {
    /// Whether `namespace` is in scope.
    pub fn covers(&self, namespace: &str) -> bool {
        match self {
            NamespaceScope::All => true,
            NamespaceScope::Only(set) => set.contains(namespace),
        }
    }
}

/// One mesh that meshroot signs workload certificates for.
#[derive(Debug)]
pub struct Mesh {
    /// The `Mesh` object's name.
    pub name: String,
    /// The SPIFFE trust domain of the mesh's workload identities.
    pub trust_domain: String,
    /// The namespaces whose workloads this mesh certifies.
    pub scope: NamespaceScope,
    /// The mesh's signing chain, or why it has none yet (its namespaces
    /// then get `Unavailable`, which clients retry).
    pub signer: Result<Arc<SigningChain>, NoSigner>,
    /// The lifetime issued when a request asks for none.
    pub default_ttl: Duration,
    /// The longest lifetime issued; longer requests are clamped.
    pub max_ttl: Duration,
    /// `namespace/serviceaccount` entries allowed to impersonate (ztunnel).
    pub trusted_node_accounts: BTreeSet<String>,
    /// Decides whether a trusted node account may act for a given workload.
    pub node_authorizer: Arc<dyn NodeAuthorizer>,
}

impl Mesh {
    /// A mesh of every namespace, signing with `signer`, with Istio's default lifetimes (24 hours
    /// when a request asks for none, at most 90 days) and no trusted node accounts: the shape of
    /// `meshroot dev`, the benchmark and tests. Other settings by struct update.
    pub fn of_all_namespaces(name: &str, trust_domain: &str, signer: Arc<SigningChain>) -> Self {
        Self {
            name: name.to_string(),
            trust_domain: trust_domain.to_string(),
            scope: NamespaceScope::All,
            signer: Ok(signer),
            default_ttl: Duration::hours(24),
            max_ttl: Duration::days(90),
            trusted_node_accounts: BTreeSet::new(),
            node_authorizer: Arc::new(TrustedAccountOnly),
        }
    }

    /// The lifetime to issue for a requested `validity_duration` (seconds):
    /// the default for 0 or less, the maximum for anything longer.
    pub fn ttl_for(&self, requested_seconds: i64) -> Duration {
        if requested_seconds <= 0 {
            self.default_ttl.min(self.max_ttl)
        } else {
            Duration::seconds(requested_seconds).min(self.max_ttl)
        }
    }
}

/// Why a mesh has no signing chain.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum NoSigner {
    /// Its intermediate's Secret does not exist yet.
    #[error("waiting for the intermediate in Secret {0}")]
    Waiting(String),
    /// Its intermediate's Secret holds no usable chain (the parser's or verifier's words).
    #[error("intermediate Secret {secret}: {why}")]
    Invalid {
        /// The Secret's name.
        secret: String,
        /// What is wrong with it.
        why: String,
    },
}

/// Why no single mesh covers a namespace.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum RouteError {
    /// The registry holds no mesh yet; callers treat this as retryable.
    #[error("no mesh is ready to sign yet")]
    NotReady,
    /// No mesh covers the namespace.
    #[error("namespace {0:?} is not part of any mesh")]
    NoMesh(String),
    /// More than one mesh covers the namespace, and none is chosen.
    #[error("namespace {namespace:?} is selected by more than one mesh ({meshes}); refusing to choose")]
    Ambiguous {
        /// The namespace asked about.
        namespace: String,
        /// The names of the meshes that cover it, sorted and comma-separated.
        meshes: String,
    },
}

/// A signing certificate a mesh used before its current one.
#[derive(Clone, Debug, PartialEq, Eq)]
struct PreviousSigner {
    cert: CertificateDer<'static>,
    /// When to forget it: its own NotAfter, or when the last leaf it can have
    /// signed expires (replaced + the mesh's maximum TTL), whichever is first.
    until: OffsetDateTime,
}

/// The meshes meshroot signs workload certificates for, replaced as a whole on every change, with each
/// mesh's recent signing certificates and the problems of the last rebuild.
#[derive(Debug)]
pub struct MeshRegistry {
    meshes: ArcSwap<Vec<Arc<Mesh>>>,
    /// Per mesh name, the signing certificates it had before the current
    /// one, newest first, at most [`MAX_PREVIOUS_SIGNERS`].
    previous: ArcSwap<HashMap<String, Vec<PreviousSigner>>>,
    /// Serializes replacements (each reads the previous snapshot).
    writer: Mutex<()>,
    /// Counts replacements, so other parts can follow changes.
    generation: tokio::sync::watch::Sender<u64>,
    /// Meshes the last rebuild left out or that cannot sign yet, and why.
    problems: ArcSwap<BTreeMap<String, String>>,
}

impl Default for MeshRegistry {
    fn default() -> Self {
        Self::new(Vec::new())
    }
}

impl MeshRegistry {
    /// A registry holding `meshes`, with no previous signing certificates and no problems.
    pub fn new(meshes: Vec<Arc<Mesh>>) -> Self {
        Self {
            meshes: ArcSwap::from_pointee(meshes),
            previous: ArcSwap::from_pointee(HashMap::new()),
            writer: Mutex::new(()),
            generation: tokio::sync::watch::Sender::new(0),
            problems: ArcSwap::from_pointee(BTreeMap::new()),
        }
    }

    /// Swaps in a new set of meshes. A mesh (by name) whose signing
    /// certificate changed remembers the one it replaces (see
    /// [`MeshRegistry::signing_certificates`]).
    pub fn replace(&self, meshes: Vec<Arc<Mesh>>) {
        self.replace_at(meshes, OffsetDateTime::now_utc());
    }

    /// As [`MeshRegistry::replace`], at `now`.
    pub fn replace_at(&self, meshes: Vec<Arc<Mesh>>, now: OffsetDateTime) {
        let _writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.meshes.load_full();
        let old_previous = self.previous.load_full();
        let mut previous = HashMap::new();
        for mesh in &meshes {
            let current = mesh.signer.as_ref().ok().map(|c| c.authority().certificate());
            let mut list = old_previous.get(&mesh.name).cloned().unwrap_or_default();
            if let Some(before) = old.iter().find(|o| o.name == mesh.name)
                && let Ok(chain) = &before.signer
            {
                let cert = chain.authority().certificate();
                if Some(cert) != current && !list.iter().any(|p| p.cert == *cert) {
                    let leaves_end = now.checked_add(mesh.max_ttl.max(before.max_ttl)).unwrap_or(now);
                    list.insert(
                        0,
                        PreviousSigner { cert: cert.clone(), until: chain.authority().not_after().min(leaves_end) },
                    );
                }
            }
            list.retain(|p| Some(&p.cert) != current && p.until > now);
            list.truncate(MAX_PREVIOUS_SIGNERS);
            if !list.is_empty() {
                previous.insert(mesh.name.clone(), list);
            }
        }
        self.previous.store(Arc::new(previous));
        self.meshes.store(Arc::new(meshes));
        self.generation.send_modify(|g| *g = g.wrapping_add(1));
    }

    /// The certificates whose leaves count as issued by `mesh` at `now`: its
    /// current signing certificate, then the ones it replaced that may
    /// still have live leaves (newest first).
    pub fn signing_certificates(&self, mesh: &Mesh, now: OffsetDateTime) -> Vec<CertificateDer<'static>> {
        let mut certs: Vec<CertificateDer<'static>> =
            mesh.signer.as_ref().ok().map(|c| c.authority().certificate().clone()).into_iter().collect();
        if let Some(list) = self.previous.load().get(&mesh.name) {
            certs.extend(list.iter().filter(|p| p.until > now).map(|p| p.cert.clone()));
        }
        certs
    }

    /// Notified after every replacement.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// The current meshes, as one snapshot.
    pub fn meshes(&self) -> Arc<Vec<Arc<Mesh>>> {
        self.meshes.load_full()
    }

    /// Per mesh name, why the last rebuild left it out or why it cannot
    /// sign yet (an invalid spec, a missing intermediate).
    pub fn problems(&self) -> Arc<BTreeMap<String, String>> {
        self.problems.load_full()
    }

    /// Records what the last rebuild could not use, beside its meshes.
    pub fn set_problems(&self, problems: BTreeMap<String, String>) {
        self.problems.store(Arc::new(problems));
    }

    /// The one mesh that covers `namespace`.
    pub fn route(&self, namespace: &str) -> Result<Arc<Mesh>, RouteError> {
        let meshes = self.meshes.load();
        if meshes.is_empty() {
            return Err(RouteError::NotReady);
        }
        let mut matching = meshes.iter().filter(|m| m.scope.covers(namespace));
        let Some(first) = matching.next() else {
            return Err(RouteError::NoMesh(namespace.to_string()));
        };
        let rest: Vec<&Arc<Mesh>> = matching.collect();
        if !rest.is_empty() {
            let mut names: Vec<&str> = std::iter::once(first).chain(rest).map(|m| m.name.as_str()).collect();
            names.sort_unstable();
            return Err(RouteError::Ambiguous { namespace: namespace.to_string(), meshes: names.join(", ") });
        }
        Ok(first.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{Authority, CaSpec, TrustBundle};

    fn mesh(name: &str, signer: Option<Arc<SigningChain>>, max_ttl: Duration) -> Arc<Mesh> {
        Arc::new(Mesh {
            name: name.into(),
            trust_domain: "cluster.local".into(),
            scope: NamespaceScope::All,
            signer: signer.ok_or_else(|| NoSigner::Waiting("no-signer".to_string())),
            default_ttl: Duration::hours(1),
            max_ttl,
            trusted_node_accounts: BTreeSet::new(),
            node_authorizer: Arc::new(TrustedAccountOnly),
        })
    }

    fn chains(n: usize) -> Vec<Arc<SigningChain>> {
        let now = OffsetDateTime::now_utc();
        let root = Authority::new_root(&CaSpec::root(Duration::days(30)), now).unwrap();
        let bundle = TrustBundle::new(vec![root.certificate().clone()]).unwrap();
        (0..n)
            .map(|_| {
                let int = root.new_intermediate(&CaSpec::intermediate("m", Duration::days(10)), now).unwrap();
                Arc::new(SigningChain::new(int, vec![], bundle.clone()).unwrap())
            })
            .collect()
    }

    fn cert(c: &SigningChain) -> CertificateDer<'static> {
        c.authority().certificate().clone()
    }

    /// dev's and the benchmark's mesh: every namespace, Istio's lifetimes, nobody may impersonate.
    #[test]
    fn a_mesh_of_all_namespaces_has_istios_lifetimes_and_no_node_accounts() {
        let chain = chains(1).remove(0);
        let m = Mesh::of_all_namespaces("m", "td.example", chain.clone());
        assert_eq!((m.name.as_str(), m.trust_domain.as_str()), ("m", "td.example"));
        assert!(m.scope.covers("any-namespace"));
        assert!(m.signer.as_ref().is_ok_and(|s| Arc::ptr_eq(s, &chain)));
        assert_eq!((m.ttl_for(0), m.ttl_for(i64::MAX)), (Duration::hours(24), Duration::days(90)));
        assert!(m.trusted_node_accounts.is_empty());
    }

    #[test]
    fn a_renewed_mesh_remembers_its_last_two_signers_while_their_leaves_can_live() {
        let c = chains(4);
        let ttl = Duration::days(1);
        let now = OffsetDateTime::now_utc();
        let registry = MeshRegistry::new(vec![mesh("m", Some(c[0].clone()), ttl)]);
        let m0 = registry.meshes()[0].clone();
        assert_eq!(registry.signing_certificates(&m0, now), vec![cert(&c[0])]);

        registry.replace_at(vec![mesh("m", Some(c[1].clone()), ttl)], now);
        // Replacing with the same signer (a rebuild for another reason) adds nothing.
        registry.replace_at(vec![mesh("m", Some(c[1].clone()), ttl)], now);
        let m1 = registry.meshes()[0].clone();
        assert_eq!(registry.signing_certificates(&m1, now), vec![cert(&c[1]), cert(&c[0])]);

        registry.replace_at(vec![mesh("m", Some(c[2].clone()), ttl)], now);
        registry.replace_at(vec![mesh("m", Some(c[3].clone()), ttl)], now);
        let m3 = registry.meshes()[0].clone();
        assert_eq!(
            registry.signing_certificates(&m3, now),
            vec![cert(&c[3]), cert(&c[2]), cert(&c[1])],
            "at most {MAX_PREVIOUS_SIGNERS} earlier signers, newest first"
        );
        // A leaf signed before a renewal expires within the mesh's maximum
        // TTL; after that its signer is forgotten.
        let later = now + ttl + Duration::seconds(1);
        assert_eq!(registry.signing_certificates(&m3, later), vec![cert(&c[3])]);
        registry.replace_at(vec![mesh("m", Some(c[3].clone()), ttl)], later);
        assert_eq!(registry.signing_certificates(&m3, now), vec![cert(&c[3])], "dropped on the next replace");
    }

    #[test]
    fn previous_signers_belong_to_their_mesh_and_leave_with_it() {
        let c = chains(3);
        let ttl = Duration::days(1);
        let registry = MeshRegistry::new(vec![mesh("a", Some(c[0].clone()), ttl), mesh("b", Some(c[2].clone()), ttl)]);
        registry.replace(vec![mesh("a", Some(c[1].clone()), ttl), mesh("b", Some(c[2].clone()), ttl)]);
        let now = OffsetDateTime::now_utc();
        let [a, b] = registry.meshes().as_slice().to_vec().try_into().unwrap();
        assert_eq!(registry.signing_certificates(&a, now), vec![cert(&c[1]), cert(&c[0])]);
        assert_eq!(registry.signing_certificates(&b, now), vec![cert(&c[2])]);
        // A mesh that cannot sign now still knows the signer it had.
        registry.replace(vec![mesh("a", None, ttl)]);
        let a = registry.meshes()[0].clone();
        assert_eq!(registry.signing_certificates(&a, now), vec![cert(&c[1]), cert(&c[0])]);
        // A mesh that goes away forgets them; one that comes back starts afresh.
        registry.replace(vec![]);
        registry.replace(vec![mesh("a", Some(c[2].clone()), ttl)]);
        let a = registry.meshes()[0].clone();
        assert_eq!(registry.signing_certificates(&a, now), vec![cert(&c[2])]);
    }
}
