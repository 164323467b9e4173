#!/usr/bin/env bash
# Build the "real peer" binaries for the real-peers test tier from the harness
# modules in tests/peers/*/ (each holds only go.mod/go.sum), using nothing but
# Go and the Go module proxy.
#
#   PEERS=$(scripts/build-peers.sh)                 # everything
#   PEERS=$(scripts/build-peers.sh etcd kube-apiserver)   # a subset
#
# Components: etcd kube-apiserver kube-controller-manager
#             cert-manager-controller cert-manager-webhook
#             cert-manager-crds (only the CRDs, nothing built)
#             pilot-discovery (istiod), istio-ca-client, mtls-probe
#             istio-crds (only the CRDs, nothing built)
# istio-ca-client and mtls-probe are our own test programs in the Istio
# harness (tests/peers/istio/cmd): the first asks for certificates through
# Istio's own CA client package, the second checks mutual TLS between two
# workloads' certificates.
#
# Output: <cache>/peers/<key>/bin/<component>, and the cert-manager CRDs (Helm
# placeholders rendered) in <cache>/peers/<key>/crds/cert-manager/*.yaml, where
# <cache> is ${MESHROOT_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/meshroot} and
# <key> hashes the harness files (go.mod, go.sum, our Go sources), this script and the Go version:
# changing a pin rebuilds, otherwise the binaries are reused in seconds.
# The last line on stdout is the bin directory; all logging goes to stderr.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
harness=$repo/tests/peers
cache=${MESHROOT_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/meshroot}/peers

log() { printf 'build-peers: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

command -v go >/dev/null 2>&1 || die "go is not on PATH"

# Persistent caches outside the repository; GOPROXY/GOSUMDB stay as the
# environment sets them. GOTOOLCHAIN=local: never download another Go.
export GOMODCACHE=$cache/gomodcache
export GOCACHE=$cache/gocache
export GOFLAGS="-mod=readonly -buildvcs=false"
export GOTOOLCHAIN=local
export CGO_ENABLED=0

# component -> "harness-dir package"
declare -A pkg=(
  [etcd]="etcd go.etcd.io/etcd/server/v3"
  [kube-apiserver]="kube k8s.io/kubernetes/cmd/kube-apiserver"
  [kube-controller-manager]="kube k8s.io/kubernetes/cmd/kube-controller-manager"
  [cert-manager-controller]="cert-manager github.com/cert-manager/cert-manager/cmd/controller"
  [cert-manager-webhook]="cert-manager github.com/cert-manager/cert-manager/cmd/webhook"
  [pilot-discovery]="istio istio.io/istio/pilot/cmd/pilot-discovery"
  [istio-ca-client]="istio meshroot.invalid/peers/istio/cmd/istio-ca-client"
  [mtls-probe]="istio meshroot.invalid/peers/istio/cmd/mtls-probe"
)
all=(etcd kube-apiserver kube-controller-manager cert-manager-controller cert-manager-webhook
  pilot-discovery istio-ca-client mtls-probe)
crd_sets=(cert-manager-crds istio-crds)

wanted=("$@")
[ ${#wanted[@]} -gt 0 ] || wanted=("${all[@]}")
for c in "${wanted[@]}"; do
  [[ " ${crd_sets[*]} " == *" $c "* ]] || [ -n "${pkg[$c]:-}" ] || die "unknown component '$c' (known: ${all[*]} ${crd_sets[*]})"
done

# Cache key: pins + recipe + toolchain.
key=$(
  {
    go env GOVERSION GOOS GOARCH
    for f in $(find "$harness" -type f \( -name go.mod -o -name go.sum -o -name '*.go' \) | LC_ALL=C sort); do
      printf '== %s\n' "${f#"$harness"/}"
      cat "$f"
    done
    cat "${BASH_SOURCE[0]}"
  } | sha256sum | cut -c1-16
)
out=$cache/$key
bin=$out/bin
mkdir -p "$bin" "$GOMODCACHE" "$GOCACHE"

# Serialise concurrent callers (tests may start several at once).
if command -v flock >/dev/null 2>&1; then
  exec 9>"$cache/.lock"
  flock 9
fi

# -X flags stamping the version a harness pins.
ldflags_for() { # <harness-dir>
  local dir=$1 v
  case $dir in
    kube)
      v=$(cd "$harness/kube" && go list -m -f '{{.Version}}' k8s.io/kubernetes)
      local minor=${v#v1.}; minor=${minor%%.*}
      local p out=""
      for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        out+=" -X $p.gitVersion=$v -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
      done
      printf '%s' "$out"
      ;;
    cert-manager)
      v=$(cd "$harness/cert-manager" && go list -m -f '{{.Version}}' github.com/cert-manager/cert-manager)
      printf ' -X github.com/cert-manager/cert-manager/pkg/util.AppVersion=%s' "$v"
      ;;
    istio)
      v=$(cd "$harness/istio" && go list -m -f '{{.Version}}' istio.io/istio)
      printf ' -X istio.io/istio/pkg/version.buildVersion=%s' "$v"
      ;;
  esac
}

need_crds=false need_istio_crds=false
for c in "${wanted[@]}"; do
  case $c in
    cert-manager-crds) need_crds=true; continue ;;
    istio-crds) need_istio_crds=true; continue ;;
  esac
  read -r dir p <<<"${pkg[$c]}"
  [ "$dir" = cert-manager ] && need_crds=true
  [ "$c" = pilot-discovery ] && need_istio_crds=true
  if [ -x "$bin/$c" ]; then
    log "$c: up to date"
    continue
  fi
  log "$c: building $p (harness tests/peers/$dir) ..."
  start=$SECONDS
  tmp=$bin/.$c.tmp.$$
  (cd "$harness/$dir" &&
    nice -n 10 go build -trimpath -ldflags "-s -w$(ldflags_for "$dir")" -o "$tmp" "$p") >&2 ||
    { rm -f "$tmp"; die "$c: go build failed"; }
  mv -f "$tmp" "$bin/$c"
  log "$c: built in $((SECONDS - start))s"
done

# cert-manager CRDs from the same module version as the binaries. The module
# cache is read-only, so copy them out; older releases keep Helm placeholders in
# their labels, which are rendered here with fixed values.
if $need_crds && [ ! -e "$out/crds/cert-manager/.done" ]; then
  src=$(cd "$harness/cert-manager" &&
    go mod download github.com/cert-manager/cert-manager >&2 &&
    go list -m -f '{{.Dir}}' github.com/cert-manager/cert-manager)
  [ -d "$src/deploy/crds" ] || die "no deploy/crds in $src"
  rm -rf "$out/crds/cert-manager"
  mkdir -p "$out/crds/cert-manager"
  for f in "$src"/deploy/crds/*.yaml; do
    sed -e "s/'{{ template \"cert-manager.name\" . }}'/cert-manager/" \
        -e "s/'{{ .Release.Name }}'/cert-manager/" \
        -e '/^ *# Generated labels {{/d' "$f" >"$out/crds/cert-manager/$(basename "$f")"
  done
  ! grep -l '{{' "$out"/crds/cert-manager/*.yaml >&2 || die "unrendered template in CRDs"
  touch "$out/crds/cert-manager/.done"
  log "cert-manager CRDs: $out/crds/cert-manager"
fi

# Istio's CRDs from the istio.io/api version the istiod harness resolves.
if $need_istio_crds && [ ! -s "$out/crds/istio/istio.yaml" ]; then
  src=$(cd "$harness/istio" &&
    go mod download istio.io/api >&2 &&
    go list -m -f '{{.Dir}}' istio.io/api)
  [ -f "$src/kubernetes/customresourcedefinitions.gen.yaml" ] || die "no kubernetes/customresourcedefinitions.gen.yaml in $src"
  mkdir -p "$out/crds/istio"
  cp "$src/kubernetes/customresourcedefinitions.gen.yaml" "$out/crds/istio/.istio.yaml.tmp"
  chmod 644 "$out/crds/istio/.istio.yaml.tmp"
  mv -f "$out/crds/istio/.istio.yaml.tmp" "$out/crds/istio/istio.yaml"
  log "Istio CRDs: $out/crds/istio/istio.yaml"
fi

echo "$bin"
