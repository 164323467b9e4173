#!/usr/bin/env bash
# cargo-deny over the workspace (deny.toml): licenses, bans (including
# duplicate versions, reported) and sources. cargo-deny (pinned) is installed
# into the cache on first use; it fetches any locked crate not yet in cargo's
# cache (from crates.io), including ones only other platforms build.
#
# Security advisories need the RustSec advisory database, a git repository on
# GitHub rather than a package registry, so this script does not fetch it and
# says the check was skipped. Where GitHub is reachable, run
# `cargo deny check advisories` (it fetches the database itself).
set -euo pipefail
cd "$(dirname "$0")/.."
cache="${MESHROOT_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/meshroot}"
version="0.20.2"
deny="$cache/cargo-deny-$version/bin/cargo-deny"
if [ ! -x "$deny" ]; then
  echo "==> installing cargo-deny $version into $cache/cargo-deny-$version (once; a few minutes)" >&2
  cargo install --locked --quiet --root "$cache/cargo-deny-$version" cargo-deny --version "$version"
fi

"$deny" check licenses bans sources

echo "advisories: skipped (the RustSec database is on GitHub, not a package registry; where it is reachable run: cargo deny check advisories)"
