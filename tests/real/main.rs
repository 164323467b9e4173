//! The real-cluster tier: meshroot against etcd, kube-apiserver,
//! kube-controller-manager, cert-manager and istiod built from their Go modules
//! (scripts/build-peers.sh), on loopback, with Istio's own CA client. What the fake API server models, checked against the real
//! thing, and what it cannot model (RBAC as the authorizer evaluates it, real
//! service-account tokens, validation, a hung server). Needs Go; run it with
//! `cargo test --features real-cluster --test real` (scripts/test.sh runs it).

#[path = "../support/mod.rs"]
mod support;

mod api_server;
mod cert_manager;
mod chart;
mod cluster;
mod faults;
mod istio;
mod leader;
mod migration;
mod race;
mod replicas;
mod rollout;
mod rotation;
mod serve;
