#!/usr/bin/env bash
# The one-shot GPU check, for a machine with an NVIDIA GPU and a CUDA toolkit
# (the H200 machines: CUDA 13.0 image, 16 cores, no network). Builds the CUDA
# kernels, the CUDA engine, the parity programs and the Node addon, then:
#   kernel_check   every CUDA kernel against the CPU kernels (test/gpu/kernel_check.cpp)
#   engine_check   the whole CudaEngine against CpuEngine: logits, loss, every
#                  gradient, 3 AdamW steps, dropout masks, freezing, gradient
#                  accumulation; bf16 vs fp32 over 20 steps (test/gpu/engine_check.cpp)
#   llama_check    the whole decoder engine (CudaLlamaEngine) against the CPU's on
#                  tiny Llama and Qwen2 fixtures: logits, loss, every gradient and 3
#                  AdamW steps (full, LoRA, checkpointing, freezing), generation
#                  (prefill + decode logits, greedy tokens), 20 LoRA steps bf16 vs
#                  fp32 (test/gpu/llama_check.cpp)
#   llama_addon    the decoder's Hugging Face/PEFT parity tests (dist/test/llama.test.js)
#                  with NODETUNE_TEST_DEVICE=cuda: the CUDA decoder engine through the addon
#   addon_parity   device 'cuda' through the addon on the tiny-bert fixture
#                  against Hugging Face (test/gpu/parity.mjs; needs node)
#   nccl_smoke     `mpirun -n 1 nodetune_nccl_check`: the data-parallel gradient
#                  all-reduce (NCCL's unique id over MPI, ncclAllReduce on the GPU)
#                  on one rank (test/gpu/nccl_check.cpp; needs MPI and NCCL there:
#                  NCCL_ROOT, or python3's nvidia-nccl-cu13, or the system's)
#   bench          nodetune vs PyTorch eager bf16 training steps, TFLOP/s, MFU (test/gpu/bench.sh)
#   bench_llm      decoder LoRA r16 bf16 vs PyTorch + PEFT: SmolLM2-135M and Llama-3.2-1B
#                  shapes, B 8, T 1024/2048: tokens/s, MFU, peak memory (test/gpu/bench_llm.sh)
#   kernels_contract  the CUDA kernel benchmarks at --tiny: every kernel, the counts
#                  (test/gpu/bench_cuda.test.mjs)
#   kernels_bf16, kernels_fp32   every CUDA kernel against the GPU's own GEMM and copy
#                  ceilings (bench/kernels_cuda.cpp through `nodetune bench kernels
#                  --device cuda`; MiniLM-L6 B=32 T=128; needs Google Benchmark)
#   memcheck, racecheck, engine_memcheck   compute-sanitizer at --quick sizes
# and prints a short table last, whatever failed. Designed for < 6 minutes:
# each step has its own time limit, cut to what is left of NT_BUDGET seconds
# (default 340) for the whole run; a step with under 15 s left is skipped.
#
# Prepare HERE first (no network there):  bash test/gpu/prepare.sh
# then with the device tool:
#   run(command="bash test/gpu/run.sh", timeout_s=480,
#       carry=[".cache/gpu-deps", "dist", "node_modules/node-addon-api", "node_modules/node-api-headers"])
# Outputs land in $OUT (the device tool's folder) or /tmp/nodetune-gpu-out:
#   summary.txt, kernel_check.json, engine_check.json, bench.txt,
#   kernels_cuda_{bf16,fp32}.{json,md}, *.log
#
# Env: NT_CUDA_ARCHS (default 90), NT_GPU_BUILD (default /tmp/nodetune-gpu-build),
#      NT_SANITIZE=0 skips compute-sanitizer, NT_CARRIED_BLAS=1 uses the carried
#      OpenBLAS even where the image has one, NT_BUDGET (seconds, whole run).
set -uo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
out="${OUT:-/tmp/nodetune-gpu-out}"
build="${NT_GPU_BUILD:-/tmp/nodetune-gpu-build}"
budget="${NT_BUDGET:-340}"
mkdir -p "$out" "$build"
summary=()
failed=0
t_all=$(date +%s)

row() {  # name status seconds note
  summary+=("$(printf '%-16s %-8s %5ss  %s' "$1" "$2" "$3" "${4:0:150}")")
  printf '== %-14s %-8s %5ss  %s\n' "$1" "$2" "$3" "$4"
}
# run_step NAME LIMIT LOG CMD...: CMD with a time limit, output to LOG (and
# echoed afterwards, so the device tool's tail shows it).
run_step() {
  local name=$1 limit=$2 log=$3
  shift 3
  local t0 left
  t0=$(date +%s)
  left=$((budget - (t0 - t_all)))
  if [ "$left" -lt 15 ]; then
    step_rc=125 step_secs=0 step_status=skipped
    echo "not run: the ${budget}s budget is spent" >"$log"
    return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  timeout --kill-after=10 "$limit" "$@" >"$log" 2>&1
  step_rc=$?
  step_secs=$(($(date +%s) - t0))
  if [ $step_rc -eq 124 ] || [ $step_rc -eq 137 ]; then step_status=TIMEOUT
  elif [ $step_rc -eq 0 ]; then step_status=ok
  else step_status=FAIL; fi
}
# finish NAME NOTE: records the last run_step; a failure fails the run.
finish() {
  row "$1" "$step_status" "$step_secs" "$2"
  case "$step_status" in ok | skipped) ;; *) failed=1 ;; esac
}
print_summary() {
  {
    echo
    printf '%-16s %-8s %6s  %s\n' step status time note
    printf '%s\n' "${summary[@]}"
    echo "total $(($(date +%s) - t_all))s; logs and JSON in $out"
  } | tee "$out/summary.txt"
}

# ---- toolchain -----------------------------------------------------------------
nvcc="${CUDACXX:-$(command -v nvcc || true)}"
for c in /usr/local/cuda/bin/nvcc "$root/.cache/cuda/toolkit/bin/nvcc"; do
  [ -n "$nvcc" ] || { [ -x "$c" ] && nvcc="$c"; }
done
if [ -z "$nvcc" ]; then
  row toolchain FAIL 0 "no nvcc found (CUDACXX, PATH, /usr/local/cuda)"
  print_summary
  exit 2
fi
echo "nvcc: $nvcc ($("$nvcc" --version | tail -n1))"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv,noheader 2>&1 | sed 's/^/gpu: /'
echo "cmake: $(cmake --version | head -n1); cores: $(nproc)"

# unpack_debs DEST DEB...: extracts carried .deb files (dpkg-deb, or ar + tar where the image has none).
unpack_debs() {
  local dest=$1 deb
  shift
  mkdir -p "$dest"
  for deb in "$@"; do
    if command -v dpkg-deb >/dev/null; then
      dpkg-deb -x "$deb" "$dest"
    else
      (cd "$dest" && ar x "$deb" && tar -xf data.tar.* && rm -f data.tar.* control.tar.* debian-binary)
    fi
  done
}

# OpenBLAS for the CPU reference kernels: the image's own, else the carried debs.
blas_args=()
if [ "${NT_CARRIED_BLAS:-0}" = 1 ] || ! find /usr/include /usr/local/include -name cblas.h 2>/dev/null | grep -q . ||
   ! ldconfig -p 2>/dev/null | grep -q libopenblas; then
  deps="$root/.cache/gpu-deps"
  if [ ! -f "$deps/include/cblas.h" ]; then
    row toolchain FAIL 0 "no OpenBLAS here and no .cache/gpu-deps (run test/gpu/prepare.sh, carry it)"
    print_summary
    exit 2
  fi
  unpack=/tmp/nodetune-gpu-deps
  unpack_debs "$unpack" "$deps"/debs/*.deb
  blas_lib="$(find "$unpack" -name 'libopenblas.so.0' | head -n1)"
  libdirs="$(dirname "$blas_lib"):$(dirname "$(find "$unpack" -name 'libgfortran.so.5' | head -n1)")"
  export LD_LIBRARY_PATH="$libdirs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  blas_args=(-DCBLAS_INCLUDE_DIR="$deps/include" -DOPENBLAS_LIBRARY="$blas_lib")
  echo "openblas: carried ($blas_lib)"
else
  echo "openblas: system"
fi

# Google Benchmark for the CUDA kernel benchmarks: the image's, else the carried debs.
bench_args=(-DNODETUNE_BUILD_BENCH=OFF)
bench_target=()
bench_cfg="$(find /usr/lib /usr/local/lib /usr/lib64 -name benchmarkConfig.cmake 2>/dev/null | head -n1)"
if [ -z "$bench_cfg" ] && ls "$root"/.cache/gpu-deps/bench/*.deb >/dev/null 2>&1; then
  unpack=/tmp/nodetune-gpu-bench
  unpack_debs "$unpack" "$root"/.cache/gpu-deps/bench/*.deb
  bench_cfg="$(find "$unpack" -name benchmarkConfig.cmake | head -n1)"
  lib="$(dirname "$(find "$unpack" -name 'libbenchmark.so.1*' | head -n1)")"
  export LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
if [ -n "$bench_cfg" ]; then
  bench_args=(-DNODETUNE_BUILD_BENCH=ON -Dbenchmark_DIR="$(dirname "$bench_cfg")")
  bench_target=(nodetune_bench_cuda)
  echo "google benchmark: $(dirname "$bench_cfg")"
else
  echo "google benchmark: not found and not carried (run test/gpu/prepare.sh): kernel benchmarks skipped"
fi

# Node 20+ for the addon: the image's, else the one prepare.sh carried.
node_bin=""
if command -v node >/dev/null && node -e 'process.exit(+process.versions.node.split(".")[0] >= 20 ? 0 : 1)'; then
  node_bin="$(command -v node)"
elif [ -f "$root/.cache/gpu-deps/node/node.xz" ]; then
  mkdir -p /tmp/nodetune-node
  if command -v xz >/dev/null; then
    xz -dc "$root/.cache/gpu-deps/node/node.xz" >/tmp/nodetune-node/node
  else
    python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
      "$root/.cache/gpu-deps/node/node.xz" /tmp/nodetune-node/node
  fi
  chmod +x /tmp/nodetune-node/node
  /tmp/nodetune-node/node --version >/dev/null 2>&1 && node_bin=/tmp/nodetune-node/node
fi
addon_args=()
addon_target=()
if [ -n "$node_bin" ] && [ -f node_modules/node-addon-api/napi.h ] && [ -f node_modules/node-api-headers/include/node_api.h ]; then
  export PATH="$(dirname "$node_bin"):$PATH"
  # What cmake-js passes on Linux, without needing cmake-js itself.
  addon_args=(-DCMAKE_JS_VERSION=8.0.0 "-DCMAKE_JS_INC=$root/node_modules/node-api-headers/include;$root/node_modules/node-addon-api"
              -DCMAKE_JS_SRC= -DCMAKE_JS_LIB= -DCMAKE_CXX_FLAGS=-DBUILDING_NODE_EXTENSION)
  addon_target=(nodetune)
  echo "node: $node_bin $("$node_bin" --version)"
else
  echo "node: not available (carry .cache/gpu-deps with node, node_modules/node-addon-api, node_modules/node-api-headers): addon step skipped"
fi

# NCCL for the data-parallel all-reduce (with MPI): NCCL_ROOT, else the wheel that
# scripts/cuda-toolkit.sh installs (if carried), else python3's nvidia-nccl-cu13
# (PyTorch's), else the system's (CMake looks there itself).
nccl_args=()
nccl_root="${NCCL_ROOT:-}"
[ -z "$nccl_root" ] && [ -f "$root/.cache/cuda/nccl/include/nccl.h" ] && nccl_root="$root/.cache/cuda/nccl"
if [ -z "$nccl_root" ]; then
  nccl_root="$(python3 -c 'import importlib.util as u; s = u.find_spec("nvidia.nccl"); print(next(iter(s.submodule_search_locations)))' 2>/dev/null || true)"
fi
if [ -n "$nccl_root" ] && [ -f "$nccl_root/include/nccl.h" ]; then
  nccl_args=(-DNCCL_ROOT="$nccl_root")
  echo "nccl: $nccl_root"
else
  echo "nccl: no NCCL_ROOT and no python3 nvidia-nccl-cu13; the system's if CMake finds one"
fi
echo "mpi: $(command -v mpirun >/dev/null && mpirun --version 2>&1 | head -n1 || echo 'no mpirun: the NCCL smoke is skipped')"

# ---- build -----------------------------------------------------------------------
gen=()
command -v ninja >/dev/null && gen=(-G Ninja)
run_step configure 90 "$out/configure.log" cmake -S "$root" -B "$build" "${gen[@]}" \
  -DCMAKE_BUILD_TYPE=Release -DNODETUNE_CUDA=ON "${bench_args[@]}" -DCMAKE_CUDA_COMPILER="$nvcc" \
  -DCMAKE_CUDA_ARCHITECTURES="${NT_CUDA_ARCHS:-90}" "${blas_args[@]}" "${addon_args[@]}" "${nccl_args[@]}"
finish configure "$(grep -m1 'nodetune CUDA:' "$out/configure.log" | sed 's/^-- //')"
if [ "$step_rc" -ne 0 ]; then tail -n 30 "$out/configure.log"; print_summary; exit 1; fi
grep -E 'nodetune (MPI|NCCL):|MPI not found|NCCL not found' "$out/configure.log" | sed 's/^-- //'
nccl_target=()
grep -q 'nodetune NCCL:' "$out/configure.log" && nccl_target=(nodetune_nccl_check)

run_step build 240 "$out/build.log" cmake --build "$build" -j "$(nproc)" \
  --target nodetune_cuda_check nodetune_engine_check nodetune_llama_check "${addon_target[@]}" "${bench_target[@]}" "${nccl_target[@]}"
finish build "nodetune_cuda_check nodetune_engine_check nodetune_llama_check ${addon_target[*]} ${bench_target[*]} ${nccl_target[*]}"
if [ "$step_rc" -ne 0 ]; then grep -E 'error|Error' "$out/build.log" | head -n 30; print_summary; exit 1; fi
bin="$build/Release"

# ---- parity ------------------------------------------------------------------------
run_step kernel_check 120 "$out/kernel_check.txt" "$bin/nodetune_cuda_check" --json "$out/kernel_check.json"
finish kernel_check "$(grep -E 'checks failed|no CUDA device' "$out/kernel_check.txt" | tail -n1)"
grep -E 'FAIL|ERROR|error' "$out/kernel_check.txt" | head -n 20

run_step engine_check 150 "$out/engine_check.txt" "$bin/nodetune_engine_check" --json "$out/engine_check.json"
finish engine_check "$(grep -E 'engine checks failed|no CUDA device|error' "$out/engine_check.txt" | tail -n1)"
grep -E 'FAIL|error' "$out/engine_check.txt" | head -n 20

run_step llama_check 90 "$out/llama_check.txt" "$bin/nodetune_llama_check" --json "$out/llama_check.json"
finish llama_check "$(grep -E 'decoder engine checks failed|no CUDA device|error' "$out/llama_check.txt" | tail -n1)"
grep -E 'FAIL|threw' "$out/llama_check.txt" | head -n 20

if [ ${#addon_target[@]} -gt 0 ] && [ -f "$root/dist/test/llama.test.js" ]; then
  # The decoder's Hugging Face parity tests (tiny Llama and Qwen2 fixtures: logits, every
  # gradient, 3 AdamW steps, LoRA against PEFT, padding, packing, checkpointing) on device 'cuda'.
  run_step llama_addon 90 "$out/llama_addon.txt" env NODETUNE_ADDON="$bin/nodetune.node" NODETUNE_TEST_DEVICE=cuda \
    "$node_bin" --test --test-name-pattern='tiny-(llama|qwen2)|padded|checkpointing|packing|layers_to_transform|LoRA adapter starts' \
    "$root/dist/test/llama.test.js"
  finish llama_addon "$(grep -E '^# (pass|fail)' "$out/llama_addon.txt" | tr '\n' ' ')"
  grep -E '^not ok|rel err' "$out/llama_addon.txt" | head -n 20
fi
if [ ${#addon_target[@]} -gt 0 ] && [ -f "$root/dist/src/engine.js" ]; then
  run_step addon_parity 90 "$out/addon_parity.txt" env NODETUNE_ADDON="$bin/nodetune.node" "$node_bin" "$root/test/gpu/parity.mjs"
  finish addon_parity "$(tail -n1 "$out/addon_parity.txt")"
  grep -E '^FAIL' "$out/addon_parity.txt" | head -n 10
else
  row addon_parity skipped 0 "needs node, node_modules/node-addon-api, node_modules/node-api-headers and dist/ (carry them)"
fi

# ---- data parallel on the GPU: NCCL on one rank (issue 15) --------------------------------
if [ ${#nccl_target[@]} -gt 0 ] && command -v mpirun >/dev/null; then
  run_step nccl_smoke 60 "$out/nccl_smoke.txt" env OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 \
    NCCL_DEBUG=WARN mpirun -n 1 "$bin/nodetune_nccl_check" --timeout 30
  finish nccl_smoke "$(grep -E '^nccl_check: |no CUDA device' "$out/nccl_smoke.txt" | tail -n1)"
  [ "$step_status" = ok ] || tail -n 20 "$out/nccl_smoke.txt"
else
  row nccl_smoke skipped 0 "needs MPI (mpirun, mpi.h) and NCCL (NCCL_ROOT or python3's nvidia-nccl-cu13) on this machine"
fi

# ---- decoder LoRA training beside PyTorch + PEFT (issue 14): before the older benchmarks,
# so a tight budget cuts those first --------------------------------------------------------
run_step bench_llm 150 "$out/bench_llm.log" env BUILD="$build" OUT="$out" bash "$root/test/gpu/bench_llm.sh"
finish bench_llm "$(tail -n1 "$out/bench_llm.log")"
cat "$out/bench_llm.txt" 2>/dev/null || tail -n 20 "$out/bench_llm.log"

# ---- kernel benchmarks against the GPU's ceilings (issue: kernel benchmarks) -------------
# Through dist/src/bench/kernels.js (no npm dependencies: node_modules is not carried).
# bf16 (the training precision) runs before the training benchmark, fp32 after it,
# so a slow training benchmark cannot starve both tables of the budget.
kernels_ok=0
[ ${#bench_target[@]} -gt 0 ] && [ -n "$node_bin" ] && [ -f "$root/dist/src/bench/kernels.js" ] && kernels_ok=1
kernel_table() {  # PRECISION
  local prec=$1
  run_step "kernels_$prec" 75 "$out/kernels_cuda_$prec.log" "$node_bin" --input-type=module -e "
    import { writeFileSync } from 'node:fs';
    import { runKernelBench } from '$root/dist/src/bench/kernels.js';
    import { formatTable, formatMarkdown } from '$root/dist/src/bench/report.js';
    const r = await runKernelBench({ device: 'cuda', precision: '$prec', binary: '$bin/nodetune_bench_cuda' }).catch((e) => {
      process.stdout.write(e.message.replace(/^.* failed \\([^)]*\\): /, '') + '\\n');
      process.exit(1);
    });
    writeFileSync('$out/kernels_cuda_$prec.json', JSON.stringify(r, null, 2));
    writeFileSync('$out/kernels_cuda_$prec.md', formatMarkdown(r));
    process.stdout.write(formatTable(r));"
  cat "$out/kernels_cuda_$prec.log"
  finish "kernels_$prec" "$(grep -m1 -o 'furthest from the roof: .*' "$out/kernels_cuda_$prec.log" || tail -n1 "$out/kernels_cuda_$prec.log")"
}
if [ $kernels_ok = 1 ]; then
  run_step kernels_contract 60 "$out/kernels_contract.txt" env NODETUNE_BENCH_CUDA="$bin/nodetune_bench_cuda" \
    "$node_bin" --test "$root/test/gpu/bench_cuda.test.mjs"
  finish kernels_contract "$(grep -E '^# (pass|fail)' "$out/kernels_contract.txt" | tr '\n' ' ')"
  grep -E '^not ok' "$out/kernels_contract.txt" | head -n 10
  kernel_table bf16
else
  row kernels skipped 0 "needs Google Benchmark (carried by prepare.sh), node and dist/"
fi

# ---- training benchmark vs PyTorch ----------------------------------------------------------
run_step bench 200 "$out/bench.log" env BUILD="$build" OUT="$out" bash "$root/test/gpu/bench.sh"
finish bench "$(tail -n1 "$out/bench.log")"
cat "$out/bench.txt" 2>/dev/null || tail -n 20 "$out/bench.log"
[ $kernels_ok = 1 ] && kernel_table fp32

# ---- compute-sanitizer at --quick sizes (seen working on Firecracker machines) ---------
if [ "${NT_SANITIZE:-1}" != "0" ]; then
  san="$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)"
  for spec in "memcheck nodetune_cuda_check 60" "engine_memcheck nodetune_engine_check 90" "racecheck nodetune_cuda_check 60"; do
    set -- $spec
    name=$1 prog=$2 limit=$3
    tool=${name#engine_}
    if [ -z "$san" ]; then row "$name" skipped 0 "compute-sanitizer not found"; continue; fi
    run_step "$name" "$limit" "$out/$name.log" "$san" --tool "$tool" --error-exitcode 3 "$bin/$prog" --quick
    finish "$name" "$(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|not supported|checks failed' "$out/$name.log" | tail -n1)"
    [ "$step_status" = FAIL ] && grep -m 20 -E '=====' "$out/$name.log"
  done
fi

print_summary
exit $failed
