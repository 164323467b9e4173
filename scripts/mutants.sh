#!/usr/bin/env bash
# Mutation testing of the security-critical code (the files listed in
# .cargo/mutants.toml) with cargo-mutants: does any test fail when the
# code is wrong?
#
#   scripts/mutants.sh full [ARGS...]       every mutant of those files
#   scripts/mutants.sh diff [REF] [ARGS...] only mutants in lines changed
#                                           since REF (default HEAD~1;
#                                           for a branch, since it left
#                                           REF), or
#                                           in a unified diff FILE given
#                                           instead of REF
#
# ARGS go to cargo-mutants, e.g. `--file src/issuer/glob.rs` (only that
# module), `--list` (what would run), `--shard K/N` (one of N parts, for N
# clones run side by side), `--in-place` (mutate this tree and reuse its
# ./target: fastest, but leave the tree alone meanwhile), and
# `-C --lib -C --test=fast` (build and run only those test targets). Each
# mutant is built and its tests run under cargo-nextest, which stops at the
# first failure.
#
# Not `--jobs N`: the copies it builds in share one CARGO_TARGET_DIR here,
# and cargo names a workspace crate's test binaries alike in every copy, so
# one job can run another's mutant. Run shards in separate clones, each with
# its own target directory, instead.
#
# cargo-mutants and cargo-nextest (pinned) are installed into the cache if
# they are not on PATH.
# Everything is written outside the repository, under
# ${MESHROOT_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/meshroot}:
#   mutants/<full|diff>/mutants.out/   the report (caught.txt, missed.txt,
#                                      timeout.txt, unviable.txt, logs)
#   mutants/target/                    a build cache reused across runs
#                                      (not with --in-place)
# Exit status is cargo-mutants': 0 all caught, 2 some missed, 3 some timed
# out, 4 the unmutated tree failed its tests.
set -euo pipefail
cd "$(dirname "$0")/.."
cache="${MESHROOT_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/meshroot}"
version="27.1.0"
nextest_version="0.9.151"

usage() { sed -n '2,36p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 64; }
[ $# -ge 1 ] || usage
mode=$1
shift
case "$mode" in
  full) ;;
  diff)
    ref=HEAD~1
    if [ $# -ge 1 ] && [ "${1#-}" = "$1" ]; then ref=$1; shift; fi
    ;;
  *) usage ;;
esac

if ! cargo mutants --version >/dev/null 2>&1; then
  if [ ! -x "$cache/cargo-mutants-$version/bin/cargo-mutants" ]; then
    echo "==> installing cargo-mutants $version into $cache/cargo-mutants-$version" >&2
    cargo install --locked --quiet --root "$cache/cargo-mutants-$version" cargo-mutants --version "$version"
  fi
  export PATH="$cache/cargo-mutants-$version/bin:$PATH"
fi

if ! cargo nextest --version >/dev/null 2>&1; then
  if [ ! -x "$cache/cargo-nextest-$nextest_version/bin/cargo-nextest" ]; then
    echo "==> installing cargo-nextest $nextest_version into $cache/cargo-nextest-$nextest_version" >&2
    cargo install --locked --quiet --root "$cache/cargo-nextest-$nextest_version" cargo-nextest --version "$nextest_version"
  fi
  export PATH="$cache/cargo-nextest-$nextest_version/bin:$PATH"
fi
case " $* " in
  *" --jobs "* | *" -j "* | *" --jobs="*)
    echo "error: --jobs shares one target directory between copies; use --shard K/N in separate clones" >&2
    exit 64
    ;;
esac

# The chart tests render with the pinned helm, as scripts/test.sh does.
MESHROOT_HELM=$(MESHROOT_CACHE_DIR="$cache" ./scripts/install-helm.sh)
export MESHROOT_HELM

out="$cache/mutants/$mode"
mkdir -p "$out"

# --workspace: the listed files span the workspace's crates (crates/pki too).
args=(--output "$out" --workspace)
# `--file GLOB` narrows the run to those files. (cargo-mutants would add
# them to the config's examine_globs instead.) The config is copied with
# its examine_globs replaced.
files=() rest=()
while [ $# -gt 0 ]; do
  case "$1" in
    --) rest+=("$@"); break ;;
    -f | --file) files+=("$2"); shift 2 ;;
    --file=*) files+=("${1#--file=}"); shift ;;
    *) rest+=("$1"); shift ;;
  esac
done
# Tested one crate at a time (--test-workspace=false), a mutant of meshroot-core or meshroot-pki
# is built for that package alone, which has no `meshroot/...` features: the config's feature
# arguments are left out (the fuzz-seed and bench tests they enable run in stage 2).
per_crate=false
case " ${rest[*]-} " in *" --test-workspace=false "*) per_crate=true ;; esac
if [ ${#files[@]} -gt 0 ] || $per_crate; then
  globs=
  if [ ${#files[@]} -gt 0 ]; then
    globs=$(printf '"%s", ' "${files[@]}")
    globs="examine_globs = [${globs%, }]"
  fi
  awk -v globs="$globs" -v per_crate="$per_crate" '
    globs != "" && /^examine_globs = \[/ { print globs; skipping = 1; next }
    skipping && /^\]/ { skipping = 0; next }
    per_crate == "true" && /^additional_cargo_args = / { next }
    !skipping { print }' .cargo/mutants.toml >"$out/mutants.toml"
  args+=(--config "$out/mutants.toml")
fi
# cargo-mutants times its baseline on the mutated crates' own tests only, so
# its automatic timeout (a few times that) kills whole-suite mutants that
# merely take the suite's full minute: give a fixed one unless asked.
case " ${rest[*]-} " in
  *" --timeout "* | *" --timeout="*) ;;
  *) args+=(--timeout 300) ;;
esac
case " ${rest[*]-} " in
  *" --in-place "*) ;; # mutates this tree and builds in its ./target, incrementally
  *)
    # cargo-mutants builds in a copy of the tree: keep one target directory
    # across runs so dependencies are built once, without debug info so the
    # many test binaries link faster.
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$cache/mutants/target}"
    export CARGO_PROFILE_DEV_DEBUG=0 CARGO_PROFILE_TEST_DEBUG=0
    ;;
esac

if [ "$mode" = diff ] && [ -f "$ref" ]; then
  cp "$ref" "$out/changes.diff"
  echo "==> mutants in the lines changed by $ref"
  args+=(--in-diff "$out/changes.diff")
elif [ "$mode" = diff ]; then
  git rev-parse --verify --quiet "$ref^{commit}" >/dev/null || { echo "error: $ref is not a commit" >&2; exit 64; }
  # What this tree changed since it left REF (for a branch: `diff main`).
  base=$(git merge-base "$ref" HEAD)
  patch="$out/changes.diff"
  git diff "$base" -- '*.rs' >"$patch"
  if [ ! -s "$patch" ]; then
    echo "no Rust changes since $ref: nothing to mutate"
    exit 0
  fi
  echo "==> mutants in the lines changed since $(git rev-parse --short "$base") ($(git diff --shortstat "$base" -- '*.rs'))"
  args+=(--in-diff "$patch")
fi

start=$(date +%s)
status=0
cargo mutants "${args[@]}" ${rest[@]+"${rest[@]}"} || status=$?
report="$out/mutants.out"
case " ${rest[*]-} " in *" --list "*) exit "$status" ;; esac
if [ -d "$report" ]; then
  count() { if [ -f "$report/$1.txt" ]; then grep -c . "$report/$1.txt" || true; else echo 0; fi; }
  echo "==> $(count caught) caught, $(count missed) missed, $(count timeout) timed out, $(count unviable) unviable in $(($(date +%s) - start))s; report: $report"
  if [ -s "$report/missed.txt" ]; then
    echo "missed (no test failed with these changes):"
    sed 's/^/  /' "$report/missed.txt"
  fi
fi
exit "$status"
