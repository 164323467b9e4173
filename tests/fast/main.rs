//! The fast tier, in one test binary: meshroot in process, against the
//! in-repo fake API server (crates/fake-apiserver) and real gRPC/TLS on
//! loopback. One binary compiles the shared support code once and links
//! once; each module is the tests of one area. See tests/README.md.

#[path = "../support/mod.rs"]
mod support;

mod cert_manager_cacerts;
mod cert_manager_conformance;
mod cert_manager_issuer;
mod crds;
mod early_answer;
mod fake_api;
mod faults;
#[cfg(feature = "fuzzing")]
mod fuzz_corpus;
mod grpc_api;
mod hostile_input;
mod istiod_tls;
mod k8s_intermediates;
mod k8s_registry;
mod k8s_root;
mod kube_csr_signer;
mod leader;
mod mesh_controller;
mod node_authz;
mod root_configmaps;
mod root_rotation;
mod serve_options;
mod supervision;
mod tenant_boundaries;
mod tls_transport;
mod tokenreview;
mod trust_boundaries;
