#!/usr/bin/env bash
# Keeps the image's runtime stage honest without a Docker engine: every shared library the built
# binaries load (ldd) must come from a Debian package that `deploy/install-deps.sh runtime`
# installs, directly or as a dependency, or from the base image's essential set.
#   runtime_deps_test.sh BINARY...
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
[ $# -gt 0 ] || { echo "usage: $0 BINARY..." >&2; exit 2; }
mapfile -t runtime < <(TTT_DRY_RUN=1 bash "$root/deploy/install-deps.sh" runtime)
# What apt would install for them (Depends and PreDepends, recursively), plus what every
# debian:bookworm-slim image already has (Essential and Priority: required).
closure="$(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks \
  --no-replaces --no-enhances "${runtime[@]}" 2>/dev/null | sed -n 's/^\([a-z0-9][^ <>]*\)$/\1/p; s/^ *\(Pre\)\?Depends: \([^<>]*\)$/\2/p' \
  | sed 's/:any$//' | sort -u)"
base="$(dpkg-query -W -f='${Package} ${Essential} ${Priority}\n' | awk '$2=="yes" || $3=="required" {print $1}')"
missing=0
# ldd's "name => path" pairs; one dpkg -S for all of them (it is slow per call). Debian 12 merged
# /lib into /usr/lib, and dpkg knows a file under the path its package used: ask for both.
declare -A owner=()
mapfile -t libs < <(for bin in "$@"; do [ "$bin" = - ] || ldd "$bin" | awk '/=>/ {print $1, $3}'; done | sort -u)
paths=()
for l in "${libs[@]}"; do
  p="${l#* }"; [ "$p" = "not" ] && continue
  r="$(readlink -f "$p")"; paths+=("$p" "$r" "${r#/usr}")
done
while IFS= read -r line; do
  pkgs="${line%%: /*}"; path="/${line#*: /}"
  owner["$path"]="${pkgs%%:*}"
done < <(dpkg -S "${paths[@]}" 2>/dev/null | grep -v '^diversion' || true)
for l in "${libs[@]}"; do
  lib="${l%% *}"; p="${l#* }"
  if [ "$p" = "not" ]; then echo "FAIL: $lib not found"; missing=1; continue; fi
  r="$(readlink -f "$p")"
  pkg="${owner[$p]:-${owner[$r]:-${owner[${r#/usr}]:-}}}"
  if [ -z "$pkg" ]; then
    echo "FAIL: $p belongs to no Debian package (a local build the image would lack)"
    missing=1
  elif ! grep -qxF "$pkg" <<<"$closure" && ! grep -qxF "$pkg" <<<"$base"; then
    echo "FAIL: $p ($lib) is in package $pkg, which deploy/install-deps.sh runtime does not install"
    missing=1
  fi
done
[ "$missing" = 0 ] && echo "OK: ${#libs[@]} shared libraries of $*: all come with deploy/install-deps.sh runtime"
exit "$missing"
