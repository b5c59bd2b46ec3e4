#!/usr/bin/env bash
# Installs what ttt-serve needs on Debian 12. Idempotent: apt-get skips what is present.
# The one source of truth for the README's set-up, CI and the Dockerfile.
#   deploy/install-deps.sh build    # compilers and -dev packages (default)
#   deploy/install-deps.sh test     # build + what the tests drive (python3-torch, grpcio, prometheus)
#   deploy/install-deps.sh runtime  # shared libraries only (the container's runtime stage)
set -euo pipefail
what="${1:-build}"

runtime_pkgs=(libtorch1.13 libgrpc++1.51 libprotobuf32 libprometheus-cpp-pull1.0 libprometheus-cpp-core1.0
  libsentencepiece0 libopenblas0-pthread ca-certificates)
build_pkgs=(build-essential cmake ninja-build pkg-config libtorch-dev libgrpc++-dev protobuf-compiler-grpc
  libprotobuf-dev protobuf-compiler libabsl-dev prometheus-cpp-dev libgtest-dev libgmock-dev
  libbenchmark-dev nlohmann-json3-dev libsentencepiece-dev sentencepiece libopenblas0-pthread)
test_pkgs=(python3 python3-torch python3-grpcio python3-grpc-tools python3-protobuf grpc-proto prometheus
  curl)

case "$what" in
  runtime) pkgs=("${runtime_pkgs[@]}") ;;
  build) pkgs=("${build_pkgs[@]}") ;;
  test) pkgs=("${build_pkgs[@]}" "${test_pkgs[@]}") ;;
  *) echo "usage: $0 [build|test|runtime]" >&2; exit 2 ;;
esac

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then exit 0; fi
sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
echo "installing: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
