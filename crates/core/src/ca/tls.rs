//! TLS for the gRPC port: TLS 1.3, and TLS 1.2 with ECDHE + AES-GCM only
//! (what pilot-agent's FIPS 140-2 policy offers), ALPN `h2`, and a serving
//! certificate that can be replaced without dropping connections.

use crate::pki::{PrivateKey, TrustBundle};
use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::crypto::aws_lc_rs::{self as provider, cipher_suite};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls_pki_types::CertificateDer;
use std::fmt;
use std::sync::Arc;

/// The cipher suites offered: TLS 1.3's, and TLS 1.2 ECDHE with AES-GCM.
pub fn crypto_provider() -> CryptoProvider {
    let mut p = provider::default_provider();
    p.cipher_suites = vec![
        cipher_suite::TLS13_AES_128_GCM_SHA256,
        cipher_suite::TLS13_AES_256_GCM_SHA384,
        cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
        cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        cipher_suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        cipher_suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    ];
    p
}

/// The serving certificate, swappable at run time: new handshakes use the
/// new one, established connections keep going.
pub struct ServingCertificate {
    current: ArcSwap<CertifiedKey>,
}

impl fmt::Debug for ServingCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServingCertificate").field("chain_len", &self.current.load().cert.len()).finish()
    }
}

impl ServingCertificate {
    /// `chain` is the leaf followed by its intermediates.
    pub fn new(chain: Vec<CertificateDer<'static>>, key: &PrivateKey) -> Result<Arc<Self>, rustls::Error> {
        Ok(Arc::new(Self { current: ArcSwap::from_pointee(certified_key(chain, key)?) }))
    }

    /// Serves `chain` and `key` from the next handshake on. On an error (a key that is unusable or does not
    /// match the leaf) the current certificate stays.
    pub fn replace(&self, chain: Vec<CertificateDer<'static>>, key: &PrivateKey) -> Result<(), rustls::Error> {
        self.current.store(Arc::new(certified_key(chain, key)?));
        Ok(())
    }
}

fn certified_key(chain: Vec<CertificateDer<'static>>, key: &PrivateKey) -> Result<CertifiedKey, rustls::Error> {
    let signing_key = provider::sign::any_supported_type(&key.to_der())?;
    let certified = CertifiedKey::new(chain, signing_key);
    certified.keys_match()?;
    Ok(certified)
}

impl ResolvesServerCert for ServingCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// The gRPC port's TLS configuration: the serving certificate plus, when
/// client-certificate authentication is on, the roots client certificates
/// must chain to. Both can change at run time; new handshakes see the change
/// and established connections keep going.
pub struct ServerTls {
    serving: Arc<ServingCertificate>,
    config: ArcSwap<rustls::ServerConfig>,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls").field("serving", &self.serving).finish()
    }
}

impl ServerTls {
    /// `client_roots`: verify client certificates against these roots when a
    /// client presents one (clients without one still connect).
    pub fn new(
        serving: Arc<ServingCertificate>,
        client_roots: Option<&TrustBundle>,
    ) -> Result<Arc<Self>, rustls::Error> {
        let config = server_config(serving.clone(), client_roots)?;
        Ok(Arc::new(Self { serving, config: ArcSwap::from_pointee(config) }))
    }

    /// The serving certificate, for replacing it.
    pub fn serving(&self) -> &Arc<ServingCertificate> {
        &self.serving
    }

    /// Replaces the roots client certificates are verified against, from the next handshake on; `None` stops
    /// asking for client certificates. On an error the current configuration stays.
    pub fn set_client_roots(&self, client_roots: Option<&TrustBundle>) -> Result<(), rustls::Error> {
        self.config.store(Arc::new(server_config(self.serving.clone(), client_roots)?));
        Ok(())
    }

    /// The configuration for the next handshake.
    pub fn current(&self) -> Arc<rustls::ServerConfig> {
        self.config.load_full()
    }
}

fn server_config(
    cert: Arc<ServingCertificate>,
    client_roots: Option<&TrustBundle>,
) -> Result<rustls::ServerConfig, rustls::Error> {
    let provider = Arc::new(crypto_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let builder = match client_roots {
        Some(bundle) => {
            let mut roots = rustls::RootCertStore::empty();
            for root in bundle.roots() {
                roots.add(root.clone())?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| rustls::Error::General(format!("client certificate verifier: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(cert);
    // grpc-go refuses servers that do not negotiate h2.
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}
