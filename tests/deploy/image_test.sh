#!/usr/bin/env bash
# Builds the repository's Dockerfile (both stages) with Debian's buildah and runs the image's
# server: no Docker engine or registry is needed. Steps:
#   1. base:  the Dockerfile's base image (ARG DEBIAN_IMAGE) made from a debootstrap'd Debian 12
#             (minbase) and committed under that name, unless buildah already holds it;
#   2. build: `buildah bud --isolation chroot --network host --layers --format docker` (build +
#             runtime stages; the layer cache makes a re-run cheap; Docker's format keeps the
#             HEALTHCHECK, which is checked);
#   3. run:   the runtime image's server in a working container (`buildah run --isolation chroot
#             --network host`, as the image's user 10001) on a free loopback port;
#   4. check from outside: `ttt health` SERVING, `ttt create`, one `ttt ingest`, one `ttt score`
#             (the host's CLI when given or built, else the image's own `ttt`).
# Not in CTest/CI (the image's build stage compiles the whole project). Needs root and
# `deploy/install-deps.sh image` (buildah, debootstrap). Idempotent: removes its working container,
# mounts and server on every exit; keeps the base and the built images (and buildah's layer cache).
#   tests/deploy/image_test.sh [TTT_CLI_BIN]
# Environment (all optional):
#   TTT_IMAGE_TAG            tag to build (default localhost/ttt-serve:image-test)
#   TTT_IMAGE_DOCKERFILE     Dockerfile to build (default the repository's) and
#   TTT_IMAGE_CONTEXT        its build context (default the repository root)
#   TTT_IMAGE_MIRROR         Debian mirror for debootstrap (default http://deb.debian.org/debian)
#   TTT_IMAGE_BUILD_ARGS     extra `buildah bud` arguments (e.g. "--build-arg CUDA=12.6")
#   TTT_IMAGE_BASE_TIMEOUT_S debootstrap + commit limit (default 1800)
#   TTT_IMAGE_BUILD_TIMEOUT_S `buildah bud` limit (default 14400: the builder compiles everything)
#   TTT_IMAGE_RUN_TIMEOUT_S  server start + checks limit (default 300)
#   STORAGE_DRIVER           buildah storage driver (buildah's default when unset: overlay)
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cli="${1:-}"
dockerfile="${TTT_IMAGE_DOCKERFILE:-$root/Dockerfile}"
context="${TTT_IMAGE_CONTEXT:-$root}"
tag="${TTT_IMAGE_TAG:-localhost/ttt-serve:image-test}"
mirror="${TTT_IMAGE_MIRROR:-http://deb.debian.org/debian}"
base_timeout="${TTT_IMAGE_BASE_TIMEOUT_S:-1800}"
build_timeout="${TTT_IMAGE_BUILD_TIMEOUT_S:-14400}"
run_timeout="${TTT_IMAGE_RUN_TIMEOUT_S:-300}"

ctr=""; server_pid=""; bounded_pid=""; tmp="$(mktemp -d /var/tmp/ttt-image-test.XXXXXX)"
t_start=$SECONDS
step() { echo "== $* ($((SECONDS - t_start)) s)"; }
fail() {
  echo "FAIL: $*" >&2
  if [ -s "$tmp/server.log" ]; then echo "--- server log (last 40 lines)" >&2; tail -n 40 "$tmp/server.log" >&2; fi
  exit 1
}
# A long step runs in the background under timeout(1) (its own process group): `wait` returns
# at once on INT/TERM, and cleanup's TERM to timeout reaches the whole step (debootstrap, buildah).
bounded() {
  local limit="$1" rc=0; shift
  timeout "$limit" "$@" &
  bounded_pid=$!
  wait "$bounded_pid" || rc=$?
  bounded_pid=""
  return "$rc"
}
cleanup() {
  if [ -n "$bounded_pid" ] && kill -0 "$bounded_pid" 2>/dev/null; then
    kill -TERM "$bounded_pid" 2>/dev/null || true
    for _ in $(seq 1 60); do kill -0 "$bounded_pid" 2>/dev/null || break; sleep 0.5; done
  fi
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM -- "-$server_pid" 2>/dev/null || true
    for _ in $(seq 1 40); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.5; done
    kill -KILL -- "-$server_pid" 2>/dev/null || true
  fi
  if [ -n "$ctr" ]; then
    buildah umount "$ctr" >/dev/null 2>&1 || true
    buildah rm "$ctr" >/dev/null 2>&1 || true
  fi
  if [ -d "$tmp/rootfs" ]; then  # an interrupted debootstrap may leave its /proc mounted
    grep -o " $tmp/rootfs[^ ]*" /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[ "$(id -u)" = 0 ] || fail "run as root (buildah --isolation chroot and debootstrap need it)"
for tool in buildah debootstrap timeout; do
  command -v "$tool" >/dev/null || fail "no $tool: run deploy/install-deps.sh image"
done
# The Dockerfile's base image: its ARG DEBIAN_IMAGE default, the name both FROM lines use.
base="$(sed -n 's/^ARG DEBIAN_IMAGE=\(.*\)$/\1/p' "$dockerfile" | head -n1)"
[ -n "$base" ] || fail "no 'ARG DEBIAN_IMAGE=...' in $dockerfile"
for stage in build runtime; do
  grep -qF "FROM \${DEBIAN_IMAGE} AS $stage" "$dockerfile" ||
    fail "the Dockerfile's $stage stage is no longer FROM \${DEBIAN_IMAGE}: update this script"
done
case "$base" in */*) base_ref="$base" ;; *) base_ref="docker.io/library/$base" ;; esac

# 1. The base image, from debootstrap (a stand-in for Docker Hub's debian:bookworm-slim: Debian 12
# minbase, the same apt sources as the official image, docs and man pages left out as there).
if buildah inspect --type image "$base_ref" >/dev/null 2>&1; then
  step "base: $base_ref present, not rebuilt (buildah rmi $base_ref to rebuild)"
else
  step "base: debootstrap bookworm (minbase) from $mirror"
  t0=$SECONDS
  rootfs="$tmp/rootfs"
  bounded "$base_timeout" debootstrap --variant=minbase bookworm "$rootfs" "$mirror" \
    >"$tmp/debootstrap.log" 2>&1 || { tail -n 30 "$tmp/debootstrap.log" >&2; fail "debootstrap"; }
  rm -f "$rootfs/etc/apt/sources.list"
  cat >"$rootfs/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $mirror
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${mirror%/debian}/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  cat >"$rootfs/etc/dpkg/dpkg.cfg.d/slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
  # This machine's apt settings (e.g. a snapshot mirror's Valid-Until), as a Debian host's would be.
  for conf in /etc/apt/apt.conf.d/99*; do [ -f "$conf" ] && cp "$conf" "$rootfs/etc/apt/apt.conf.d/"; done
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/*.log
  tar -C "$rootfs" --numeric-owner -cf "$tmp/rootfs.tar" .
  rm -rf "$rootfs"
  base_ctr="$(buildah from scratch)"
  ctr="$base_ctr"
  buildah add "$base_ctr" "$tmp/rootfs.tar" / >/dev/null
  buildah config --cmd bash --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    "$base_ctr"
  buildah commit --quiet --rm "$base_ctr" "$base_ref" >/dev/null
  ctr=""; rm -f "$tmp/rootfs.tar"
  echo "   base image committed in $((SECONDS - t0)) s"
fi

# 2. Both stages of the real Dockerfile.
step "build: buildah bud $tag (build + runtime stages; log in $tmp/build.log while it runs)"
t0=$SECONDS
# shellcheck disable=SC2086  # TTT_IMAGE_BUILD_ARGS is a list of words
if ! bounded "$build_timeout" buildah bud --isolation chroot --network host --layers --pull=never --format docker \
    ${TTT_IMAGE_BUILD_ARGS:-} -f "$dockerfile" -t "$tag" "$context" >"$tmp/build.log" 2>&1; then
  tail -n 40 "$tmp/build.log" >&2
  echo "(an interrupted bud may leave its working containers: buildah containers; buildah rm ID)" >&2
  fail "buildah bud (exit or timeout after $((SECONDS - t0)) s of at most $build_timeout s)"
fi
build_s=$((SECONDS - t0))
grep -E '^STEP [0-9]+/[0-9]+: FROM' "$tmp/build.log" | sed 's/^/   /' || true
echo "   built in $build_s s"
# Docker's image format, as `docker build` makes: the OCI format has no HEALTHCHECK.
health_cmd="$(buildah inspect --type image --format '{{.Docker.Config.Healthcheck}}' "$tag")"
case "$health_cmd" in *ttt*health*) echo "   HEALTHCHECK: $health_cmd" ;;
  *) fail "the image has no HEALTHCHECK running ttt health (got: $health_cmd)" ;; esac

# 3. The runtime image's server, in a working container sharing the host's network.
step "run: the image's ttt-serve on loopback"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
grpc_port="$(free_port)"; metrics_port="$(free_port)"
while [ "$metrics_port" = "$grpc_port" ]; do metrics_port="$(free_port)"; done
ctr="$(buildah from --pull=never "$tag")"
# The image's ENTRYPOINT and CMD, with loopback ports instead of 0.0.0.0:50051/9464.
setsid buildah run --isolation chroot --network host "$ctr" -- /opt/ttt-serve/bin/ttt-serve \
  --model=/opt/ttt-serve/models/ttt-brown --checkpoint_dir=/var/lib/ttt-serve/checkpoints \
  --listen="127.0.0.1:$grpc_port" --metrics_listen="127.0.0.1:$metrics_port" \
  >"$tmp/server.log" 2>&1 &
server_pid=$!
t0=$SECONDS

# 4. Checks from outside the container: the host's CLI, else the image's own through the rootfs.
if [ -z "$cli" ] && [ -x "$root/build/cli/ttt" ]; then cli="$root/build/cli/ttt"; fi
if [ -n "$cli" ]; then
  ttt() { timeout 60 "$cli" --address="127.0.0.1:$grpc_port" "$@"; }
  echo "   CLI: $cli (host)"
else
  mnt="$(buildah mount "$ctr")"
  ttt() { timeout 60 chroot --userspec=10001:10001 "$mnt" /opt/ttt-serve/bin/ttt \
    --address="127.0.0.1:$grpc_port" "$@"; }
  echo "   CLI: the image's /opt/ttt-serve/bin/ttt (chroot into buildah mount)"
fi
healthy=""
while [ $((SECONDS - t0)) -lt "$run_timeout" ]; do
  kill -0 "$server_pid" 2>/dev/null || fail "the image's server exited early"
  if ttt health >"$tmp/health.out" 2>&1; then healthy=1; break; fi
  sleep 1
done
grep -qx SERVING "$tmp/health.out" || healthy=""
[ -n "$healthy" ] || fail "health not SERVING within $run_timeout s: $(cat "$tmp/health.out")"
echo "   health: $(tr '\n' ' ' <"$tmp/health.out")(SERVING after $((SECONDS - t0)) s)"
server="$(pgrep -g "$server_pid" -x ttt-serve | head -n1 || true)"
[ -n "$server" ] && echo "   server: pid $server, uid $(ps -o uid= -p "$server" | tr -d ' '), root $(readlink "/proc/$server/root")"
session="image-test-$$"
ttt create --id="$session" >"$tmp/create.out" 2>&1 || fail "ttt create: $(cat "$tmp/create.out")"
doc="$tmp/doc.txt"
printf '%s\n' "The image under test was built from the repository's Dockerfile by buildah." \
  "Its server learns from this document while it reads it, then scores a continuation." >"$doc"
chmod 644 "$doc"; chmod 755 "$tmp"
if [ -z "$cli" ]; then cp "$doc" "$mnt/tmp/doc.txt"; doc=/tmp/doc.txt; fi
ttt ingest "$session" "$doc" >"$tmp/ingest.out" 2>&1 || fail "ttt ingest: $(cat "$tmp/ingest.out")"
grep -q '^ingested [1-9]' "$tmp/ingest.out" || fail "ttt ingest ingested nothing: $(cat "$tmp/ingest.out")"
echo "   ingest: $(grep '^ingested' "$tmp/ingest.out")"
ttt score "$session" --text="The server learns from the document." >"$tmp/score.out" 2>&1 ||
  fail "ttt score: $(cat "$tmp/score.out")"
echo "   score: $(tr '\n' ' ' <"$tmp/score.out")"
grep -q 'mean nll' "$tmp/score.out" || fail "ttt score printed no score"

# Image sizes for the record (deploy/README.md).
step "sizes"
buildah images --format '{{.Name}}:{{.Tag}} {{.Size}}' | grep -E "^($base_ref|$tag)[[:space:]]" | sed 's/^/   /' || true
echo "OK: image $tag built (build stage + runtime stage), server SERVING, ingest and score through" \
  "the CLI; total $((SECONDS - t_start)) s"
