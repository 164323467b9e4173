#!/usr/bin/env bash
# Installs nghttp2's h2load (Debian's nghttp2-client), the benchmark's independent load
# generator (`meshroot bench --h2load PATH`, docs/performance.md), into the cache directory and
# prints the path of a wrapper that runs it. Packages come from Debian's mirror with
# `apt-get download` (apt checks them against the signed archive index), are unpacked without
# installing anything, and the libraries the system lacks are found through LD_LIBRARY_PATH.
# Nothing is written into the repository or the system.
set -euo pipefail
cache="${MESHROOT_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/meshroot}"
for tool in apt-get apt-cache dpkg-deb dpkg-query; do
  command -v "$tool" >/dev/null 2>&1 || { echo "error: $tool is required to install h2load" >&2; exit 1; }
done
version=$(apt-cache policy nghttp2-client | sed -n 's/^ *Candidate: //p')
case "$version" in
  "" | "(none)") echo "error: apt knows no nghttp2-client package (apt-get update?)" >&2; exit 1 ;;
esac
dest="$cache/h2load-${version//[^A-Za-z0-9.+-]/_}"
if [ -x "$dest/h2load" ] && "$dest/h2load" --version >/dev/null 2>&1; then
  echo "$dest/h2load"
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# nghttp2-client, and those of its direct dependencies that are not installed here. glibc and
# libstdc++ are never taken from a download: loading them beside the system's breaks both.
packages=(nghttp2-client)
for dep in $(apt-cache depends nghttp2-client | sed -n 's/^ *|\{0,1\}Depends: //p' | sort -u); do
  case "$dep" in libc6 | libgcc-s1 | libstdc++6 | "<"*) continue ;; esac
  dpkg-query -W -f='${Status}' "$dep" 2>/dev/null | grep -q "ok installed" || packages+=("$dep")
done
(cd "$work" && apt-get download "${packages[@]}" >"$work/apt.log" 2>&1) || {
  cat "$work/apt.log" >&2; echo "error: apt-get download ${packages[*]} failed" >&2; exit 1; }
rm -rf "$dest.tmp"
mkdir -p "$dest.tmp/root"
for deb in "$work"/*.deb; do
  dpkg-deb -x "$deb" "$dest.tmp/root"
done
libdir=$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || echo "$(uname -m)-linux-gnu")
cat >"$dest.tmp/h2load" <<EOF
#!/bin/sh
# h2load from Debian's nghttp2-client $version, unpacked by scripts/install-h2load.sh.
LD_LIBRARY_PATH="$dest/root/usr/lib/$libdir:$dest/root/lib/$libdir\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" exec "$dest/root/usr/bin/h2load" "\$@"
EOF
chmod 0755 "$dest.tmp/h2load"
rm -rf "$dest"
mv "$dest.tmp" "$dest"
if ! "$dest/h2load" --version >/dev/null 2>&1; then
  LD_LIBRARY_PATH="$dest/root/usr/lib/$libdir" ldd "$dest/root/usr/bin/h2load" | grep "not found" >&2 || true
  rm -rf "$dest"
  echo "error: the unpacked h2load does not run (libraries missing above?)" >&2
  exit 1
fi
echo "$dest/h2load"
