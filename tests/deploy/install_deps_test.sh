#!/usr/bin/env bash
# Every package that deploy/install-deps.sh names (build, test, runtime; CPU and CUDA lists) must
# exist in Debian 12: a typo there would only show when the image is built, which CI cannot do.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
bad=0
for cuda in "" 12.6; do
  for mode in build test runtime; do
    mapfile -t pkgs < <(TTT_CUDA="$cuda" TTT_DRY_RUN=1 bash "$root/deploy/install-deps.sh" "$mode")
    # One apt-cache call (it is slow per call): packages with an installed or candidate version.
    known="$(apt-cache policy "${pkgs[@]}" 2>/dev/null | awk '
      /^[^ ].*:$/ {pkg = substr($0, 1, length($0) - 1); next}
      /Installed:|Candidate:/ && $2 != "(none)" {print pkg}' | sort -u)"
    for p in "${pkgs[@]}"; do
      if ! grep -qxF "$p" <<<"$known"; then
        echo "FAIL: install-deps.sh $mode${cuda:+ (TTT_CUDA=$cuda)}: no package $p in Debian 12"
        bad=1
      fi
    done
  done
done
[ "$bad" = 0 ] && echo "OK: every package in deploy/install-deps.sh exists"
exit "$bad"
