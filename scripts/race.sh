#!/usr/bin/env bash
# The race of docs/performance.md: istiod's built-in CA against meshroot (a
# release build), driven in turn by Istio's own CA client on one loopback
# cluster (tests/real/race.rs). Prints one line per run and a table.
# Needs Go for the peers (scripts/build-peers.sh, cached).
set -euo pipefail
cd "$(dirname "$0")/.."
cache="${MESHROOT_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/meshroot}"
MESHROOT_HELM=$(MESHROOT_CACHE_DIR="$cache" ./scripts/install-helm.sh)
MESHROOT_PEERS=$(MESHROOT_CACHE_DIR="$cache" ./scripts/build-peers.sh etcd kube-apiserver cert-manager-crds \
  pilot-discovery istio-ca-client)
export MESHROOT_HELM MESHROOT_PEERS
cargo build --locked --release --bin meshroot
MESHROOT_RACE_BIN="$PWD/target/release/meshroot" \
  cargo test --locked --features real-cluster --test real -- --ignored --nocapture race::istiods_ca_against_meshroot
