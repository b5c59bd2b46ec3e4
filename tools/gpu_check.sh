#!/usr/bin/env bash
# One command for the GPU machine (issue 11 #5): builds the engine-only target against the
# LibTorch of the PyTorch found there, runs the golden test on the device (f32 and bf16), the
# engine model tests, and engine_bench on the device, and writes the figures to a file.
#
#   tools/gpu_check.sh --pack
#       Here (Debian 12): copies what the engine-only build needs and a GPU machine lacks
#       (Debian's Abseil headers, shared libraries and CMake files, nlohmann-json, GoogleTest and
#       GoogleMock) into .gpu_deps/ (git-ignored, ~10 MiB). Carry it to the GPU machine.
#   tools/gpu_check.sh [--device=cuda|cpu] [--out=FILE] [--build_dir=DIR] [--quick]
#       --device=cuda (default) needs a PyTorch built with CUDA and a visible GPU, and exits 3
#       with a message saying so otherwise. --device=cpu runs the same steps on the CPU (with
#       Debian's LibTorch when the Python torch has no CMake files, as Debian's python3-torch).
#       --quick: a shorter benchmark (256 tokens instead of 1024).
#       Results: FILE (default <build_dir>/gpu_check_results.txt); logs next to it.
#
# Environment: TTT_PYTHON (the Python with torch; default python3, then /usr/bin/python3),
# TTT_JOBS (build jobs; default all cores).
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."

die() { echo "gpu_check: $1" >&2; exit "${2:-1}"; }

pack_deps() {
  local dest=.gpu_deps lib=/usr/lib/x86_64-linux-gnu
  [ -d /usr/include/absl ] && [ -d /usr/include/nlohmann ] && [ -d "$lib/cmake/absl" ] ||
    die "--pack needs Debian's libabsl-dev and nlohmann-json3-dev (deploy/install-deps.sh build)"
  rm -rf "$dest"
  mkdir -p "$dest/include" "$dest/lib/x86_64-linux-gnu/cmake" "$dest/share/cmake"
  cp -a /usr/include/{absl,nlohmann,gtest,gmock} "$dest/include/"
  cp -a "$lib"/libabsl_*.so* "$lib"/libgtest*.a "$lib"/libgmock*.a "$dest/lib/x86_64-linux-gnu/"
  cp -a "$lib/cmake/absl" "$lib/cmake/GTest" "$dest/lib/x86_64-linux-gnu/cmake/"
  # nlohmann's CMake files live under share/ (or lib/) depending on the Debian release.
  for d in /usr/share/cmake/nlohmann_json "$lib/cmake/nlohmann_json"; do
    if [ -d "$d" ]; then cp -a "$d" "$dest/share/cmake/"; fi
  done
  echo "gpu_check: packed $(du -sh "$dest" | cut -f1) into $dest (carry it with the tree)"
}

find_python() {
  local py
  for py in ${TTT_PYTHON:-} python3 /usr/bin/python3; do
    if command -v "$py" >/dev/null 2>&1 && "$py" -c 'import torch' 2>/dev/null; then
      echo "$py"
      return
    fi
  done
  die "no Python with torch found (set TTT_PYTHON)"
}

# Prints the directory holding TorchConfig.cmake for $device.
find_torch_dir() {
  local py=$1 device=$2 prefix
  prefix=$("$py" -c 'import torch; print(torch.utils.cmake_prefix_path)')
  if [ -f "$prefix/Torch/TorchConfig.cmake" ]; then
    echo "$prefix/Torch"
  elif [ "$device" = cpu ] && [ -f /usr/lib/x86_64-linux-gnu/cmake/Torch/TorchConfig.cmake ]; then
    echo /usr/lib/x86_64-linux-gnu/cmake/Torch  # Debian's LibTorch (python3-torch has none)
  else
    die "no TorchConfig.cmake under $prefix (from $py's torch.utils.cmake_prefix_path)"
  fi
}

require_cuda() {
  local py=$1 why
  why=$("$py" - <<'EOF'
import torch
if not torch.version.cuda:
    print(f"this PyTorch ({torch.__version__}) is built without CUDA")
elif not torch.cuda.is_available():
    print(f"PyTorch {torch.__version__} has CUDA {torch.version.cuda} but sees no GPU")
EOF
)
  if [ -n "$why" ]; then
    die "no CUDA here: $why. Nothing was built. Run on the GPU machine, or with --device=cpu \
to check the same steps on the CPU." 3
  fi
}

device=cuda out="" build_dir="" quick=0
for arg in "$@"; do
  case "$arg" in
    --pack) pack_deps; exit 0 ;;
    --device=*) device=${arg#--device=} ;;
    --out=*) out=${arg#--out=} ;;
    --build_dir=*) build_dir=${arg#--build_dir=} ;;
    --quick) quick=1 ;;
    *) die "unknown argument '$arg' (see the top of $0)" 2 ;;
  esac
done
case "$device" in cuda | cpu) ;; *) die "--device must be cuda or cpu, got '$device'" 2 ;; esac
build_dir=${build_dir:-build-gpucheck-$device}
out=${out:-$build_dir/gpu_check_results.txt}
jobs=${TTT_JOBS:-$(nproc)}

py=$(find_python)
if [ "$device" = cuda ]; then require_cuda "$py"; fi
torch_dir=$(find_torch_dir "$py" "$device")
prefix_path="$(dirname "$torch_dir")"
if [ -d .gpu_deps ]; then
  prefix_path="$PWD/.gpu_deps;$prefix_path"
  export LD_LIBRARY_PATH="$PWD/.gpu_deps/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
mkdir -p "$build_dir" "$(dirname "$out")"
log_dir=$(dirname "$out")
start=$(date +%s)

step() { echo "gpu_check: [$(($(date +%s) - start)) s] $*" >&2; }

step "configure $build_dir against $torch_dir (python: $py)"
generator=()
if command -v ninja >/dev/null; then generator=(-G Ninja); fi
launcher=()
if command -v ccache >/dev/null; then launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache); fi
cmake -S . -B "$build_dir" "${generator[@]}" "${launcher[@]}" -DCMAKE_BUILD_TYPE=Release \
  -DTTT_ENGINE_ONLY=ON -DTTT_BUILD_TESTS=ON -DTTT_BUILD_BENCH=ON \
  -DTorch_DIR="$torch_dir" -DCMAKE_PREFIX_PATH="$prefix_path" \
  -DTTT_REFERENCE_PYTHON="$(command -v "$py")" >"$log_dir/configure.log" 2>&1 ||
  die "configure failed; see $log_dir/configure.log"

step "build engine, golden_test, model_test, chunk_scan_test, delta_dtype_test, engine_bench (-j$jobs)"
cmake --build "$build_dir" -j "$jobs" --target golden_test model_test chunk_scan_test \
  delta_dtype_test engine_bench >"$log_dir/build.log" 2>&1 ||
  die "build failed; see $log_dir/build.log"

{
  echo "# tools/gpu_check.sh --device=$device, $(date -u '+%Y-%m-%d %H:%M UTC'), $(hostname)"
  torch_version=$("$py" -c 'import torch; print(torch.__version__, "cuda", torch.version.cuda)')
  echo "# commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'); torch $torch_version"
  if [ "$device" = cuda ]; then
    "$py" -c 'import torch; print("# gpu:", torch.cuda.get_device_name(0))'
  fi
  cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)
  echo "# cpu: $cpu, $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
} >"$out"

failed=0
run_test() {  # name, then the command; records pass/fail and the gtest summary
  local name=$1
  shift
  step "test: $name"
  if "$@" >"$log_dir/$name.log" 2>&1; then
    echo "PASS $name: $(grep -E '^\[  PASSED  \]' "$log_dir/$name.log" | head -1)" >>"$out"
  else
    failed=1
    echo "FAIL $name (log: $log_dir/$name.log)" >>"$out"
    grep -E 'Failure|FAILED|error' "$log_dir/$name.log" | head -20 >>"$out" || true
  fi
}

golden="$build_dir/golden"
run_test golden_fixtures "$py" tests/reference/ttt_reference.py --out "$golden"
# f32 matches the float32 reference within 1e-4 (relative); bf16 within 5e-2 (golden_test.cc).
run_test "golden_test_${device}_f32" env TTT_GOLDEN_DIR="$golden" TTT_GOLDEN_DEVICE="$device" \
  TTT_GOLDEN_DTYPE=f32 "$build_dir/tests/engine/golden_test"
run_test "golden_test_${device}_bf16" env TTT_GOLDEN_DIR="$golden" TTT_GOLDEN_DEVICE="$device" \
  TTT_GOLDEN_DTYPE=bf16 "$build_dir/tests/engine/golden_test"
# model_test checks engine invariants (split, batch, state) on the CPU whatever the device.
run_test model_test "$build_dir/tests/engine/model_test"
# The Gram form of a long ingest's chunk updates (engine/internal/chunk_scan.h) against the direct
# per-chunk rule; on CUDA the golden test and the ingest rows below run its tensor form.
run_test chunk_scan_test "$build_dir/tests/engine/chunk_scan_test"
# bf16 deltas (ttt_delta_dtype) against the fp32 path rounded by LibTorch, on the CPU.
run_test delta_dtype_test "$build_dir/tests/engine/delta_dtype_test"

bench() {  # label, then engine_bench flags
  local label=$1
  shift
  step "bench: $label"
  echo "## engine_bench $label: $*" >>"$out"
  if ! "$build_dir/bench/engine_bench" --device="$device" "$@" >>"$out" 2>"$log_dir/bench.err"; then
    failed=1
    echo "FAIL engine_bench $label (stderr: $log_dir/bench.err)" >>"$out"
  fi
}
tokens=1024
if [ "$quick" = 1 ]; then tokens=256; fi
bench "small shape, 1/8/64 sessions" --shape=small --tokens="$tokens" --sessions=1,8,64 \
  --only=scaling
bench "small shape, all rows" --shape=small --tokens="$tokens" --python="$(command -v "$py")"
# Issue 26: decode steps of the shipped model's shape (chunk 16) and the LibTorch operations a
# step dispatches (on the CPU the short-step form; on CUDA the general path, which a CUDA-graph
# capture of the decode step would replace), and the digest of a fixed mix of calls.
bench "shipped shape, 512 decode steps, 1/16/64 sessions" --shape=shipped --only=decode \
  --sessions=1,16,64
bench "shipped shape, operations per decode step" --shape=shipped --only=ops --sessions=1,16
# Issue 26 item 2: TTT on/off of one ingest call at the shipped chunk (16), a served step (512
# tokens) and a long call, and the small shape at chunk 16 (the chunk scan's blocks of 64 rows).
bench "shipped shape, ingest 512 tokens in one call" --shape=shipped --only=ingest --tokens=512
bench "shipped shape, ingest 4096 tokens in one call" --shape=shipped --only=ingest --tokens=4096
bench "small shape at chunk 16, ingest 512 tokens in one call" --shape=small --only=ingest \
  --tokens=512 --chunk=16
bench "shipped shape, digest of a fixed mix of calls" --shape=shipped --only=digest
# Issue 26 item 5: the same decode rows with each session's deltas in bf16 (--ttt_delta_dtype).
bench "small shape, 1/8/64 sessions, bf16 deltas" --shape=small --tokens="$tokens" \
  --sessions=1,8,64 --only=scaling --ttt_delta_dtype=bfloat16
bench "shipped shape, 512 decode steps, 1/16/64 sessions, bf16 deltas" --shape=shipped \
  --only=decode --sessions=1,16,64 --ttt_delta_dtype=bfloat16
if [ "$device" = cuda ]; then
  bench "24 layers, d_model 2048" --shape=large --tokens="$tokens" --sessions=1,8,64 --only=scaling
else
  # 5 GiB of weights per model copy and minutes per step on a CPU: GPU only.
  echo "## engine_bench --shape=large: skipped on the CPU" >>"$out"
fi

step "done in $(($(date +%s) - start)) s; results in $out"
echo "# total $(($(date +%s) - start)) s" >>"$out"
exit "$failed"
