//! `istio.v1.auth.IstioCertificateService/CreateCertificate`.

use super::error::{Failure, quote_input};
use super::rate_limit::{RateLimiter, RateLimits};
use crate::auth::{AuthError, AuthenticatorChain, BearerToken, Caller, Credentials};
use crate::mesh::{Mesh, MeshRegistry};
use crate::pb::istio_certificate_service_server::IstioCertificateService;
use crate::pb::{IstioCertificateRequest, IstioCertificateResponse};
use crate::pki::{CertificateSigningRequest, PkiError, WorkloadIdentity};
use crate::telemetry::Metrics;
use crate::telemetry::audit::{self, AuditRecord};
use prost_types::value::Kind;
use std::sync::Arc;
use std::time::Instant;
use time::OffsetDateTime;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

/// The metadata key ztunnel uses to ask for another workload's certificate.
pub const IMPERSONATED_IDENTITY: &str = "ImpersonatedIdentity";
/// More metadata fields than any real client sends.
pub const MAX_METADATA_FIELDS: usize = 32;
/// The largest request message accepted (a CSR is at most 64 KiB).
pub const MAX_REQUEST_BYTES: usize = 128 * 1024;

/// Settings of the CreateCertificate service.
#[derive(Clone, Debug)]
pub struct ServiceConfig {
    /// The local cluster id; `clusterid` must be empty, this, or an alias.
    pub cluster_id: String,
    /// Other names of the local cluster that `clusterid` may carry.
    pub cluster_aliases: Vec<String>,
    /// The limits every request is held to.
    pub rate_limits: RateLimits,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            cluster_id: crate::names::DEFAULT_CLUSTER_ID.into(),
            cluster_aliases: Vec::new(),
            rate_limits: RateLimits::default(),
        }
    }
}

/// `IstioCertificateService`: limits by peer, authenticates, works out the identity and the mesh that signs
/// it, limits by identity and node, checks that the CSR asks for exactly that identity, and signs. Every
/// request gets one audit line and is counted in the metrics.
pub struct CertificateService {
    config: ServiceConfig,
    authenticators: AuthenticatorChain,
    registry: Arc<MeshRegistry>,
    metrics: Arc<Metrics>,
    limiter: RateLimiter,
}

impl CertificateService {
    /// A service that authenticates with `authenticators` and signs for the meshes in `registry`.
    pub fn new(
        config: ServiceConfig,
        authenticators: AuthenticatorChain,
        registry: Arc<MeshRegistry>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let limiter = RateLimiter::new(config.rate_limits);
        Self { config, authenticators, registry, metrics, limiter }
    }

    async fn handle(
        &self,
        request: Request<IstioCertificateRequest>,
        record: &mut AuditRecord<'_>,
    ) -> Result<(IstioCertificateResponse, Arc<Mesh>), Failure> {
        record.peer = request.remote_addr().map(|a| a.to_string());
        // Before any authentication work (a TokenReview, a signature check),
        // so an unauthenticated peer cannot make the CA spend without bound.
        self.limiter.check_peer(request.remote_addr().map(|a| a.ip())).map_err(Failure::RateLimited)?;
        let credentials = self.credentials(&request)?;
        let caller = self.authenticators.authenticate(&credentials).await.map_err(|e| match e {
            AuthError::Rejected(why) => Failure::Authentication(why),
            AuthError::Unavailable(why) => Failure::Unavailable(why),
        })?;
        record.caller = Some(caller.account());

        let body = request.into_inner();
        let (identity, mesh) = self.identity_for(&caller, body.metadata.as_ref(), record).await?;
        let identity_uri = identity.to_string();
        record.identity = Some(identity_uri.clone());
        // The identity's bucket first: requests one identity is refused never
        // spend the tokens its node's other workloads share.
        self.limiter.check_identity(&identity_uri).map_err(Failure::RateLimited)?;
        self.limiter.check_node(caller.node.as_deref(), &caller.namespace).map_err(Failure::RateLimited)?;

        let csr = CertificateSigningRequest::from_pem(body.csr.as_bytes()).map_err(Failure::Csr)?;
        record.key_type = Some(csr.key_kind().to_string());
        check_requested_names(&csr, &identity_uri)?;

        let ttl = mesh.ttl_for(body.validity_duration);
        record.ttl_seconds = Some(ttl.whole_seconds());
        let chain =
            mesh.signer.as_ref().map_err(|why| Failure::MeshNotReady { mesh: mesh.name.clone(), why: why.clone() })?;
        let issued = chain.issue_workload(csr.spki_der(), &identity_uri, ttl, OffsetDateTime::now_utc()).map_err(
            |e| match e {
                PkiError::Expired { .. } => Failure::SignerNotValidNow { mesh: mesh.name.clone(), error: e },
                other => Failure::Issue(other),
            },
        )?;
        record.not_after = Some(issued.not_after.unix_timestamp());
        record.serial = Some(issued.serial_hex);
        let cert_chain = chain.response_chain(issued.pem);
        Ok((IstioCertificateResponse { cert_chain }, mesh))
    }

    /// Reads `authorization`, `clusterid` and the TLS peer.
    fn credentials(&self, request: &Request<IstioCertificateRequest>) -> Result<Credentials, Failure> {
        let md = request.metadata();
        let cluster_id = self.cluster_id(md)?;
        let bearer_token = bearer_token(md)?;
        let peer_certificates = request.peer_certs();
        Ok(Credentials { bearer_token, cluster_id, peer_certificates, remote_addr: request.remote_addr() })
    }

    fn cluster_id(&self, md: &MetadataMap) -> Result<String, Failure> {
        let values: Vec<_> = md.get_all("clusterid").iter().collect();
        let value = match values.as_slice() {
            [] => "",
            [one] => one.to_str().map_err(|_| Failure::UnprintableHeader("clusterid"))?,
            _ => return Err(Failure::RepeatedHeader("clusterid")),
        };
        if value.is_empty() || value == self.config.cluster_id || self.config.cluster_aliases.iter().any(|a| a == value)
        {
            Ok(self.config.cluster_id.clone())
        } else {
            Err(Failure::UnknownCluster { given: value.to_string(), served: self.config.cluster_id.clone() })
        }
    }

    /// The identity the certificate will carry and the mesh that signs it:
    /// the caller's own, or, for a trusted node account, the workload it
    /// impersonates. The mesh is the one covering the namespace of the
    /// identity being certified, and the node account must be trusted by it.
    async fn identity_for(
        &self,
        caller: &Caller,
        metadata: Option<&prost_types::Struct>,
        record: &mut AuditRecord<'_>,
    ) -> Result<(WorkloadIdentity, Arc<Mesh>), Failure> {
        // A credential that binds a trust domain (a client certificate) must
        // be in the trust domain of the mesh covering the caller's own
        // namespace, on every path, impersonation included.
        if let Some(td) = &caller.trust_domain {
            let own = self.route(&caller.namespace)?;
            check_trust_domain(td, &own, "the caller's")?;
        }
        let Some(requested) = impersonated_identity(metadata)? else {
            let mesh = self.route(&caller.namespace)?;
            let identity = WorkloadIdentity::new(&mesh.trust_domain, &caller.namespace, &caller.service_account)
                .map_err(Failure::CallerIdentity)?;
            return Ok((identity, mesh));
        };
        record.impersonated = true;
        record.identity = Some(quote_input(&requested));
        let target = WorkloadIdentity::parse(&requested)
            .map_err(|error| Failure::BadImpersonatedIdentity { requested: requested.clone(), error })?;
        record.identity = Some(target.to_string());
        let mesh = self.route(&target.namespace)?;
        if let Some(td) = &caller.trust_domain {
            check_trust_domain(td, &mesh, "the impersonated")?;
        }
        if !mesh.trusted_node_accounts.contains(&caller.account()) {
            return Err(Failure::NotTrustedNode { account: caller.account(), mesh: mesh.name.clone() });
        }
        if target.trust_domain != mesh.trust_domain {
            return Err(Failure::ImpersonatedTrustDomain {
                requested: target.trust_domain,
                mesh: mesh.name.clone(),
                mesh_trust_domain: mesh.trust_domain.clone(),
            });
        }
        mesh.node_authorizer.authorize(caller, &target).await.map_err(|e| match e {
            AuthError::Rejected(why) => Failure::ImpersonationRefused(why),
            AuthError::Unavailable(why) => Failure::Unavailable(why),
        })?;
        Ok((target, mesh))
    }

    fn route(&self, namespace: &str) -> Result<Arc<Mesh>, Failure> {
        self.registry.route(namespace).map_err(Failure::Route)
    }
}

/// The trust domain a credential binds must be `mesh`'s.
fn check_trust_domain(credential_td: &str, mesh: &Mesh, whose: &'static str) -> Result<(), Failure> {
    if credential_td == mesh.trust_domain {
        return Ok(());
    }
    Err(Failure::CredentialTrustDomain {
        credential: credential_td.to_string(),
        mesh: mesh.name.clone(),
        whose,
        mesh_trust_domain: mesh.trust_domain.clone(),
    })
}

fn bearer_token(md: &MetadataMap) -> Result<Option<BearerToken>, Failure> {
    let values: Vec<_> = md.get_all("authorization").iter().collect();
    let value = match values.as_slice() {
        [] => return Ok(None),
        [one] => one,
        _ => return Err(Failure::RepeatedHeader("authorization")),
    };
    let value = value.to_str().map_err(|_| Failure::UnprintableHeader("authorization"))?;
    let token = match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
        _ => {
            return Err(Failure::NotBearer);
        }
    };
    if token.is_empty() {
        return Err(Failure::EmptyBearerToken);
    }
    Ok(Some(BearerToken::new(token.to_string())))
}

/// `ImpersonatedIdentity` from the request metadata, if present and non-empty.
fn impersonated_identity(metadata: Option<&prost_types::Struct>) -> Result<Option<String>, Failure> {
    let Some(metadata) = metadata else { return Ok(None) };
    if metadata.fields.len() > MAX_METADATA_FIELDS {
        return Err(Failure::TooManyMetadataFields { count: metadata.fields.len(), max: MAX_METADATA_FIELDS });
    }
    match metadata.fields.get(IMPERSONATED_IDENTITY).and_then(|v| v.kind.as_ref()) {
        None | Some(Kind::NullValue(_)) => Ok(None),
        Some(Kind::StringValue(s)) if s.is_empty() => Ok(None),
        Some(Kind::StringValue(s)) => Ok(Some(s.clone())),
        Some(_) => Err(Failure::NotAString(IMPERSONATED_IDENTITY)),
    }
}

/// The CSR must ask for exactly the identity and nothing else.
fn check_requested_names(csr: &CertificateSigningRequest, identity: &str) -> Result<(), Failure> {
    let names = csr.names();
    let mut extra = Vec::new();
    if !names.dns.is_empty() {
        extra.push(format!("{} DNS name(s)", names.dns.len()));
    }
    if !names.ips.is_empty() {
        extra.push(format!("{} IP address(es)", names.ips.len()));
    }
    if !names.emails.is_empty() {
        extra.push(format!("{} email address(es)", names.emails.len()));
    }
    if names.other > 0 {
        extra.push(format!("{} other name(s)", names.other));
    }
    if !extra.is_empty() {
        return Err(Failure::ExtraNames { asked: extra.join(", "), identity: identity.to_string() });
    }
    match names.uris.as_slice() {
        [only] if only == identity => Ok(()),
        [only] => Err(Failure::OtherIdentity { asked: only.clone(), identity: identity.to_string() }),
        [] => Err(Failure::NoIdentity { identity: identity.to_string() }),
        many => Err(Failure::ManyIdentities { count: many.len(), identity: identity.to_string() }),
    }
}

#[tonic::async_trait]
impl IstioCertificateService for CertificateService {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let started = Instant::now();
        self.metrics.csr_count.inc();
        let mut record = AuditRecord::default();
        let outcome = self.handle(request, &mut record).await;
        let latency = started.elapsed();
        match outcome {
            Ok((response, mesh)) => {
                self.metrics.success_cert_issuance_count.inc();
                self.metrics.record_duration("OK", latency.as_secs_f64());
                record.mesh = Some(&mesh.name);
                audit::issued(&record, latency);
                Ok(Response::new(response))
            }
            Err(failure) => {
                failure.record(&self.metrics);
                self.metrics.record_duration(failure.code_name(), latency.as_secs_f64());
                audit::denied(&record, failure.code_name(), &failure.to_string(), latency);
                Err(failure.to_status())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::error::Category;
    use prost_types::{Struct, Value};

    fn md(pairs: &[(&'static str, &str)]) -> MetadataMap {
        let mut m = MetadataMap::new();
        for (k, v) in pairs {
            m.append(*k, v.parse().unwrap());
        }
        m
    }

    #[test]
    fn bearer_token_forms() {
        assert!(bearer_token(&md(&[])).unwrap().is_none());
        assert_eq!(bearer_token(&md(&[("authorization", "Bearer abc")])).unwrap().unwrap().expose(), "abc");
        assert_eq!(bearer_token(&md(&[("authorization", "bearer abc")])).unwrap().unwrap().expose(), "abc");
        for bad in ["Basic abc", "Bearer ", "Bearer", "abc"] {
            assert!(bearer_token(&md(&[("authorization", bad)])).is_err(), "{bad}");
        }
        let two = md(&[("authorization", "Bearer a"), ("authorization", "Bearer b")]);
        assert!(matches!(bearer_token(&two), Err(Failure::RepeatedHeader("authorization"))));
        let failure = bearer_token(&two).err().unwrap();
        assert_eq!(failure.category(), Category::Unauthenticated);
        assert_eq!(failure.to_status().message(), "authentication failed: more than one authorization header");
    }

    #[test]
    fn impersonation_metadata_forms() {
        let s = |kind| Struct { fields: [(IMPERSONATED_IDENTITY.to_string(), Value { kind: Some(kind) })].into() };
        assert!(matches!(impersonated_identity(None), Ok(None)));
        assert!(matches!(impersonated_identity(Some(&s(Kind::StringValue(String::new())))), Ok(None)));
        assert_eq!(impersonated_identity(Some(&s(Kind::StringValue("x".into())))).unwrap(), Some("x".into()));
        assert!(matches!(
            impersonated_identity(Some(&s(Kind::NumberValue(1.0)))),
            Err(Failure::NotAString(IMPERSONATED_IDENTITY))
        ));
        let many = Struct {
            fields: (0..=MAX_METADATA_FIELDS)
                .map(|i| (format!("k{i}"), Value { kind: Some(Kind::BoolValue(true)) }))
                .collect(),
        };
        // Exactly the most accepted is accepted.
        let most = Struct { fields: many.fields.iter().skip(1).map(|(k, v)| (k.clone(), v.clone())).collect() };
        assert_eq!(most.fields.len(), MAX_METADATA_FIELDS);
        assert!(matches!(impersonated_identity(Some(&most)), Ok(None)));
        let failure = impersonated_identity(Some(&many)).err().unwrap();
        assert!(matches!(failure, Failure::TooManyMetadataFields { count: 33, max: 32 }), "{failure}");
        assert_eq!(failure.to_string(), "metadata has 33 fields; at most 32 are accepted");
        assert_eq!(failure.category(), Category::BadRequest);
    }

    #[test]
    fn quoted_input_is_bounded_and_printable() {
        let q = quote_input(&format!("a\u{0}b{}", "x".repeat(500)));
        assert!(q.len() < 300 && !q.contains('\u{0}'));
    }
}
