//! The tenant boundary of the issuer path: which namespaces may sign with
//! which mesh's intermediate, and the names no issuer grants by pattern
//! (every mesh's SPIFFE IDs, istiod's and meshroot's DNS names).
//!
//! Built from every `Mesh` object (External and PluginCA alike, since a
//! PluginCA istiod's names are just as critical) and meshroot's own Service.

use crate::api::mesh::MeshSpec;
use std::collections::{BTreeMap, BTreeSet};

/// meshroot's own Service, whose DNS names clients dial for the CA.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OwnService {
    /// The Service's namespace. If it or `name` is empty, no Service names are protected for meshroot.
    pub namespace: String,
    /// The Service's name.
    pub name: String,
    /// Extra names on meshroot's serving certificate.
    pub extra_names: Vec<String>,
}

/// Why a name is protected, for refusals.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Protection(pub String);

impl std::fmt::Display for Protection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// istiod's Service, and the prefix of its revisions' (`istiod-<rev>`).
const ISTIOD_SERVICE: &str = "istiod";

/// A Service whose names `<service>.<namespace>[.<anything>]` are protected
/// (for istiod, `istiod-<rev>` too).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct ProtectedService {
    service: String,
    namespace: String,
    owner: String,
    /// Revisions the Mesh lists (istiod only), for enumerating names.
    revisions: Vec<String>,
}

/// What the cluster's meshes and meshroot itself make off limits to
/// issuers, and which namespaces each mesh grants its intermediate to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tenancy {
    /// Mesh name → namespaces whose Issuers may sign with its intermediate.
    grants: BTreeMap<String, BTreeSet<String>>,
    /// Trust domain (lowercase) → the meshes that use it.
    trust_domains: BTreeMap<String, Vec<String>>,
    services: BTreeSet<ProtectedService>,
    /// Exact host names (lowercase) → whose they are.
    hosts: BTreeMap<String, String>,
    /// meshroot's serving IP addresses.
    ips: BTreeSet<std::net::IpAddr>,
    /// The cluster's namespaces.
    namespaces: BTreeSet<String>,
}

impl ProtectedService {
    fn matches(&self, service: &str) -> bool {
        service == self.service
            || (self.service == ISTIOD_SERVICE
                && service.strip_prefix(ISTIOD_SERVICE).is_some_and(|rest| rest.starts_with('-')))
    }
}

impl Tenancy {
    /// This boundary, knowing which namespaces exist: the cluster's DNS completes a short name's
    /// last label as a namespace.
    pub fn with_namespaces(self, namespaces: impl IntoIterator<Item = String>) -> Self {
        Self { namespaces: namespaces.into_iter().collect(), ..self }
    }

    /// Whether the namespace exists, as last seen.
    pub fn namespace_exists(&self, namespace: &str) -> bool {
        self.namespaces.contains(namespace)
    }

    /// From every Mesh (name, spec) and meshroot's own Service.
    pub fn new<'a>(meshes: impl IntoIterator<Item = (&'a str, &'a MeshSpec)>, own: &OwnService) -> Self {
        let mut t = Tenancy::default();
        for (name, spec) in meshes {
            t.grants.insert(name.to_string(), spec.issuer_namespaces.iter().cloned().collect());
            t.trust_domains.entry(spec.trust_domain.to_ascii_lowercase()).or_default().push(name.to_string());
            // Every `istiod` and `istiod-<anything>` Service there: a revision
            // not yet listed in the Mesh is protected before it is deployed.
            let owner = format!("istiod of mesh {name}");
            t.services.insert(ProtectedService {
                service: ISTIOD_SERVICE.into(),
                namespace: spec.istiod.namespace.to_ascii_lowercase(),
                owner: owner.clone(),
                revisions: spec.istiod.revisions.iter().map(|r| r.to_ascii_lowercase()).collect(),
            });
            for host in &spec.istiod.custom_hosts {
                t.hosts.insert(host.to_ascii_lowercase(), owner.clone());
            }
        }
        if !own.name.is_empty() && !own.namespace.is_empty() {
            t.services.insert(ProtectedService {
                service: own.name.to_ascii_lowercase(),
                namespace: own.namespace.to_ascii_lowercase(),
                owner: "meshroot's own Service".into(),
                revisions: Vec::new(),
            });
        }
        for name in &own.extra_names {
            match name.parse::<std::net::IpAddr>() {
                Ok(ip) => {
                    t.ips.insert(ip);
                }
                Err(_) => {
                    t.hosts.insert(name.to_ascii_lowercase(), "meshroot's serving certificate".into());
                }
            }
        }
        t
    }

    /// Whether the Issuers of `namespace` may sign with `mesh`'s intermediate.
    pub fn mesh_grants(&self, mesh: &str, namespace: &str) -> bool {
        self.grants.get(mesh).is_some_and(|namespaces| namespaces.contains(namespace))
    }

    /// Why the DNS name (or common name) `name` is protected, if it is. A
    /// wildcard name is protected when it covers a protected name.
    pub fn protected_dns(&self, name: &str) -> Option<Protection> {
        let name = name.to_ascii_lowercase();
        if let Some(rest) = name.strip_prefix("*.") {
            // `*.<ns>...` covers `<service>.<ns>...`; `*.<x>` covers a host `<label>.<x>`.
            let first = rest.split('.').next().unwrap_or_default();
            if let Some(s) = self.services.iter().find(|s| s.namespace == first) {
                return Some(Protection(format!("it covers {}.{}, a name of {}", s.service, rest, s.owner)));
            }
            let covered =
                self.hosts.iter().find(|(host, _)| host.split_once('.').is_some_and(|(_, parent)| parent == rest));
            return covered.map(|(host, owner)| Protection(format!("it covers {host}, a name of {owner}")));
        }
        if let Some(owner) = self.hosts.get(&name) {
            return Some(Protection(format!("it is a name of {owner}")));
        }
        let mut labels = name.splitn(3, '.');
        let (service, namespace) = (labels.next().unwrap_or_default(), labels.next().unwrap_or_default());
        self.services
            .iter()
            .find(|s| s.matches(service) && s.namespace == namespace)
            .map(|s| Protection(format!("it is a name of {} (Service {service}.{namespace})", s.owner)))
    }

    /// Why the URI `uri` is protected, if it is: every SPIFFE ID of a mesh's
    /// trust domain is a workload identity the mesh accepts, and istiod takes
    /// one of the form `spiffe://<any>/ns/<ns>/sa/<sa>` for an identity of that
    /// namespace whatever its trust domain ([`istio_reads_identity`]).
    pub fn protected_uri(&self, uri: &str) -> Option<Protection> {
        if let Some(meshes) = spiffe_trust_domain(uri).and_then(|domain| self.trust_domains.get(&domain)) {
            return Some(Protection(format!("it is a workload identity of mesh {}", meshes.join(", "))));
        }
        if istio_reads_identity(uri) {
            return Some(Protection("istiod reads it as a workload identity, whatever its trust domain".into()));
        }
        // Istio compiles `source.namespaces: [n]` to the principal pattern `.*/ns/n/.*`, and a
        // principal `*/sa/s` to `spiffe://.*/sa/s`; Envoy's principal is a certificate's first
        // URI SAN, whatever its scheme or domain.
        (contains_ignore_ascii_case(uri, "/ns/") || contains_ignore_ascii_case(uri, "/sa/")).then(|| {
            Protection(
                "Istio's authorization policies read /ns/<namespace>/ and /sa/<account> anywhere in a URI".into(),
            )
        })
    }

    /// Whether `domain`, in lowercase as a parsed SPIFFE ID's, is a mesh's trust domain.
    pub fn is_mesh_trust_domain(&self, domain: &str) -> bool {
        self.trust_domains.contains_key(domain)
    }

    /// Every protected DNS name in the forms clients dial (`.svc` and
    /// `.svc.cluster.local` included), for checking a CA's name constraints.
    pub fn protected_dns_names(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for s in &self.services {
            let mut services = vec![s.service.clone()];
            services.extend(s.revisions.iter().map(|r| format!("{ISTIOD_SERVICE}-{r}")));
            for service in services {
                for suffix in ["", ".svc", ".svc.cluster.local"] {
                    out.push((format!("{service}.{}{suffix}", s.namespace), s.owner.clone()));
                }
            }
        }
        out.extend(self.hosts.iter().map(|(h, o)| (h.clone(), o.clone())));
        out
    }

    /// meshroot's serving IP addresses, which only a literal /32 (/128)
    /// grants.
    pub fn protected_ips(&self) -> impl Iterator<Item = std::net::IpAddr> + '_ {
        self.ips.iter().copied()
    }

    /// Whether an istiod (or meshroot) runs in `namespace`.
    pub fn is_istiod_namespace(&self, namespace: &str) -> bool {
        self.services.iter().any(|s| s.namespace.eq_ignore_ascii_case(namespace))
    }

    /// Every mesh trust domain (lowercase).
    pub fn trust_domains(&self) -> impl Iterator<Item = &str> {
        self.trust_domains.keys().map(String::as_str)
    }
}

/// Whether istiod reads `value`, a SAN entry of any type, as a workload identity: its
/// `util.ExtractIDs` takes every entry of the SAN, `spiffe.ParseIdentity` accepts
/// `spiffe://<td>/ns/<ns>/sa/<sa>` with any segments, and its XDS authentication compares only
/// the namespace and service account.
pub fn istio_reads_identity(value: &str) -> bool {
    let path = value.strip_prefix("spiffe://").and_then(|rest| rest.find('/').and_then(|i| rest.get(i..)));
    path.and_then(crate::pki::spiffe::namespace_and_account).is_some()
}

/// Whether `haystack` contains `needle`, ASCII letters compared without case.
pub fn contains_ignore_ascii_case(haystack: &str, needle: &str) -> bool {
    haystack.as_bytes().windows(needle.len()).any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

/// The trust domain (lowercase) of a `spiffe://` URI, scheme matched
/// case-insensitively as URI schemes are.
pub fn spiffe_trust_domain(uri: &str) -> Option<String> {
    let scheme = uri.get(..9)?;
    if !scheme.eq_ignore_ascii_case("spiffe://") {
        return None;
    }
    let rest = uri.get(9..)?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = rest.get(..end)?;
    // Userinfo or a port never make it another domain.
    let host = authority.rsplit('@').next().unwrap_or(authority);
    let host = host.split(':').next().unwrap_or(host);
    Some(host.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::mesh::IstiodSpec;

    fn mesh(td: &str, ns: &str, revisions: &[&str], hosts: &[&str], grants: &[&str]) -> MeshSpec {
        MeshSpec {
            trust_domain: td.into(),
            mode: Default::default(),
            istiod: IstiodSpec {
                namespace: ns.into(),
                revisions: revisions.iter().map(|s| s.to_string()).collect(),
                service_account: "istiod".into(),
                custom_hosts: hosts.iter().map(|s| s.to_string()).collect(),
            },
            namespace_selector: None,
            intermediate: Default::default(),
            workload_certificates: Default::default(),
            trusted_node_accounts: Vec::new(),
            root_config_map_name: "istio-ca-root-cert".into(),
            issuer_namespaces: grants.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn tenancy() -> Tenancy {
        let a = mesh("cluster.local", "istio-system", &["canary"], &["istiod.example.com"], &["team-a"]);
        let b = mesh("gateway.local", "openshift-ingress", &[], &[], &[]);
        let own = OwnService { namespace: "meshroot".into(), name: "meshroot".into(), extra_names: vec![] };
        Tenancy::new([("default", &a), ("gateway", &b)], &own)
    }

    #[test]
    fn istiod_and_meshroot_names_are_protected_in_every_form() {
        let t = tenancy();
        for name in [
            "istiod.istio-system",
            "istiod.istio-system.svc",
            "ISTIOD.istio-system.svc.cluster.local",
            "istiod-canary.istio-system.svc",
            "istiod.openshift-ingress.svc",
            "istiod.example.com",
            "meshroot.meshroot.svc",
            "*.istio-system.svc",
            "*.meshroot.svc.cluster.local",
            "*.example.com",
        ] {
            assert!(t.protected_dns(name).is_some(), "{name} should be protected");
        }
        // Any istiod revision in an istiod namespace, listed or not yet.
        for name in ["istiod-next.istio-system.svc", "istiod-canary.openshift-ingress"] {
            assert!(t.protected_dns(name).is_some(), "{name} should be protected");
        }
        for name in [
            "web.istio-system.svc",
            "istiod.team-a.svc",
            "istiod",
            "example.com",
            "*.team-a.svc",
            "istiodx.istio-system.svc",
        ] {
            assert_eq!(t.protected_dns(name), None, "{name}");
        }
        let why = t.protected_dns("istiod.istio-system.svc").unwrap().to_string();
        assert!(why.contains("istiod of mesh default"), "{why}");
    }

    #[test]
    fn every_spiffe_id_of_a_mesh_trust_domain_and_every_identity_istiod_reads_is_protected() {
        let t = tenancy();
        for uri in [
            "spiffe://cluster.local/ns/istio-system/sa/istiod",
            "SPIFFE://Cluster.Local/ns/a/sa/b",
            "spiffe://user@cluster.local:443/ns/a/sa/b",
            "spiffe://gateway.local/anything",
            // Any trust domain, and segments as istiod's parser takes them.
            "spiffe://other.domain/ns/a/sa/b",
            "spiffe:///ns//sa/",
            "spiffe://other.domain/ns/a/sa/b?x",
            // Any URI an authorization policy's namespace pattern matches.
            "spiffe://other.domain/ns/a/sa/b/c",
            "SPIFFE://other.domain/ns/a/sa/b",
            "https://example.org/NS/victim/",
        ] {
            assert!(t.protected_uri(uri).is_some(), "{uri}");
        }
        assert!(t.protected_uri("spiffe://foreign.example/sa/admin").is_some());
        for uri in ["spiffe://other.domain/svc/a", "https://example.org/nsx/a", "urn:x"] {
            assert_eq!(t.protected_uri(uri), None, "{uri}");
        }
    }

    #[test]
    fn meshes_grant_their_intermediate_to_listed_namespaces_only() {
        let t = tenancy();
        assert!(t.mesh_grants("default", "team-a"));
        assert!(!t.mesh_grants("default", "team-b"));
        assert!(!t.mesh_grants("gateway", "team-a"));
        assert!(!t.mesh_grants("missing", "team-a"));
    }
}
