//! Root rotation end to end on a real API server: `meshroot root add`,
//! `switch` and `finish` against the running replica, then a switch to an
//! offline root (no key), which the API server accepts.

use crate::chart::{self, NS, ROOT_SECRET};
use crate::cluster::{Cluster, Options};
use crate::serve::{secret, secret_text};
use crate::support::eventually_async;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::Api;
use meshroot::cmd::root::{RootAction, apply, generate};
use meshroot::pki::authority::issued_by;
use meshroot::pki::{KeyAlgorithm, pem};
use rustls_pki_types::CertificateDer;
use std::path::Path;

fn certs(text: &str) -> Vec<CertificateDer<'static>> {
    pem::decode_certificates(text.as_bytes(), 1 << 20).unwrap()
}

fn new_root(dir: &Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf, CertificateDer<'static>) {
    let out = dir.join(name);
    generate(&out, KeyAlgorithm::EcdsaP256, time::Duration::days(3650)).unwrap();
    let cert = out.join("root-cert.pem");
    let der = certs(&std::fs::read_to_string(&cert).unwrap()).remove(0);
    (cert, out.join("root-key.pem"), der)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_rotates_and_can_switch_to_an_offline_root() {
    let cluster = Cluster::start(Options::default()).await;
    chart::install(&cluster).await;
    let server = chart::serve(&cluster, chart::serve_options("meshroot-0")).await;
    let old = eventually_async("the root", async || secret(&cluster, NS, ROOT_SECRET).await).await;
    let old = certs(&secret_text(&old, "tls.crt").unwrap()).remove(0);
    let bookinfo: Api<ConfigMap> = Api::namespaced(cluster.admin.clone(), "bookinfo");
    let published = async || -> Option<Vec<CertificateDer<'static>>> {
        let cm = bookinfo.get_opt("istio-ca-root-cert").await.ok()??;
        Some(certs(cm.data?.get("root-cert.pem")?))
    };
    // Both intermediates, the External mesh's and the PluginCA mesh's cacerts, under `root`.
    let intermediates_under = async |root: &CertificateDer<'static>| -> Option<()> {
        let external = secret(&cluster, NS, "meshroot-intermediate-service-mesh").await?;
        let cacerts = secret(&cluster, "openshift-ingress", "cacerts").await?;
        let under = |text: Option<String>| text.is_some_and(|t| issued_by(root, &certs(&t)[0]));
        (under(secret_text(&external, "tls.crt")) && under(secret_text(&cacerts, "ca-cert.pem"))).then_some(())
    };
    eventually_async("intermediates under the first root", async || intermediates_under(&old).await).await;

    let dir = tempfile::tempdir().unwrap();
    let (cert, key, next) = new_root(dir.path(), "next");
    let client = || cluster.admin.clone();
    apply(client(), NS, ROOT_SECRET, RootAction::Add { cert: cert.clone() }).await.unwrap();
    // The step's write is recorded as meshroot's: the Secret has no other field manager (a write
    // without one would appear under the client's user agent).
    let written = secret(&cluster, NS, ROOT_SECRET).await.unwrap();
    let entries = written.metadata.managed_fields.clone().unwrap_or_default();
    let managers: Vec<_> = entries.iter().map(|m| (m.manager.clone(), m.operation.clone())).collect();
    assert!(managers.iter().all(|(m, _)| m.as_deref() == Some("meshroot")), "{managers:?}");
    assert!(managers.iter().any(|(_, op)| op.as_deref() == Some("Update")), "the step's update: {managers:?}");
    eventually_async("both roots published", async || {
        (published().await? == vec![old.clone(), next.clone()]).then_some(())
    })
    .await;
    apply(client(), NS, ROOT_SECRET, RootAction::Switch { cert: cert.clone(), key: Some(key) }).await.unwrap();
    eventually_async("intermediates re-issued under the new root", async || intermediates_under(&next).await).await;
    let finish = || RootAction::Finish { leaf_lifetime: time::Duration::ZERO, force: false };
    let said = apply(client(), NS, ROOT_SECRET, finish()).await.unwrap();
    assert!(said.contains("stage: steady"), "{said}");
    eventually_async("only the new root published", async || (published().await? == vec![next.clone()]).then_some(()))
        .await;

    // An offline root: trusted first, then signing without its key online.
    let (offline_cert, _offline_key, offline) = new_root(dir.path(), "offline");
    apply(client(), NS, ROOT_SECRET, RootAction::Add { cert: offline_cert.clone() }).await.unwrap();
    let said = apply(client(), NS, ROOT_SECRET, RootAction::Switch { cert: offline_cert, key: None }).await.unwrap();
    assert!(said.contains("(offline)"), "{said}");
    eventually_async("the offline root published beside the last one", async || {
        (published().await? == vec![offline.clone(), next.clone()]).then_some(())
    })
    .await;
    server.shutdown().await.unwrap();
}
