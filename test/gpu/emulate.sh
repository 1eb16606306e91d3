#!/usr/bin/env bash
# Runs the real CUDA sources (native/cuda/*.cu: kernels and the engine) on the
# CPU through the emulator in test/gpu/emu, with the unmodified parity programs
# kernel_check.cpp (every kernel against native/cpu) and engine_check.cpp (the
# whole CudaEngine against CpuEngine) at --quick sizes. For machines
# without a GPU: it checks indexing, barriers, shuffles, wmma use (alignment,
# strides, __syncwarp before reading another lane's stores), the cuBLASLt
# descriptors and the arithmetic; it cannot find races or GPU-only faults,
# and says nothing about speed. Needs only the CUDA headers (the wheel
# toolkit from scripts/cuda-toolkit.sh), g++, OpenMP and OpenBLAS.
#
# Usage: bash test/gpu/emulate.sh [build-dir]     (default /tmp/nodetune-emu)
#        EMU_ENGINE_ONLY=1 bash test/gpu/emulate.sh   (skip kernel_check)
#        bash test/gpu/emulate.sh --bench [build-dir]
#          instead builds the CUDA kernel benchmarks (bench/kernels_cuda.cpp,
#          needs Google Benchmark) as build-dir/nodetune_bench_cuda_emu and runs
#          test/gpu/bench_cuda.test.mjs on it: names, work counts and the JSON
#          contract, not speed (about a minute on 2 cores).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
bench=0
if [ "${1:-}" = --bench ]; then bench=1; shift; fi
out="${1:-/tmp/nodetune-emu}"
cuda="${CUDAToolkit_ROOT:-$root/.cache/cuda/toolkit}"
[ -f "$cuda/include/cuda_runtime.h" ] || {
  echo "emulate.sh: no CUDA headers at $cuda (run scripts/cuda-toolkit.sh or set CUDAToolkit_ROOT)" >&2
  exit 1
}
blas_inc="$(dirname "$(find /usr/include -name cblas.h -path '*openblas*' | head -n1)")"
mkdir -p "$out/src" "$out/obj"
# EMU_CXXFLAGS adds compiler flags, e.g. "-fsanitize=address": device memory is host
# memory here, so AddressSanitizer finds a kernel's out-of-bounds reads and writes.
cxx=(g++ -std=c++17 -O2 -g -fopenmp -Wall -Wno-unknown-pragmas -I"$root/native" -I"$cuda/include" -I"$blas_inc" ${EMU_CXXFLAGS:-})

# kernel<<<cfg>>>(args)  ->  ::emu::launch(::emu::Cfg(cfg), kernel, args)
python3 - "$root/native/cuda" "$out/src" <<'PY'
import re, sys, pathlib
src, dst = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
launch = re.compile(r'([A-Za-z_][\w:]*(?:<[^<>;()]*>)?)\s*<<<(.*?)>>>\s*\(', re.S)
for f in sorted(src.glob('*.cu')):
    text, n = launch.subn(lambda m: f'::emu::launch(::emu::Cfg({m.group(2)}), {m.group(1)}, ', f.read_text())
    (dst / (f.stem + '.cpp')).write_text(f'#line 1 "{f}"\n' + text)
    print(f'{f.name}: {n} launches rewritten')
PY

objs=() pids=()
compile() { "${cxx[@]}" "$@" & pids+=($!); }
for f in "$out"/src/*.cpp; do
  o="$out/obj/cuda_$(basename "$f" .cpp).o"
  compile -include "$root/test/gpu/emu/cuda_emu.h" -c "$f" -o "$o"
  objs+=("$o")
done
for f in "$root"/native/cpu/*.cpp; do
  o="$out/obj/cpu_$(basename "$f" .cpp).o"
  compile -O3 -c "$f" -o "$o"
  objs+=("$o")
done
compile -O3 -c "$root/native/engine/engine.cpp" -o "$out/obj/cpu_engine.o"
compile -O3 -c "$root/native/engine/training.cpp" -o "$out/obj/cpu_training.o"
compile -O3 -c "$root/native/models/llama.cpp" -o "$out/obj/cpu_llama.o"
objs+=("$out/obj/cpu_engine.o" "$out/obj/cpu_training.o" "$out/obj/cpu_llama.o")
compile -c "$root/test/gpu/emu/cuda_emu.cpp" -o "$out/obj/emu.o"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
if [ $bench = 1 ]; then
  compile -c "$root/bench/suite.cpp" -o "$out/obj/bench_suite.o"
  compile -c "$root/bench/kernels_cuda.cpp" -o "$out/obj/kernels_cuda.o"
  for p in "${pids[@]}"; do wait "$p"; done
  "${cxx[@]}" "${objs[@]}" "$out/obj/emu.o" "$out/obj/bench_suite.o" "$out/obj/kernels_cuda.o" \
    -lbenchmark -lpthread -lopenblas -o "$out/nodetune_bench_cuda_emu"
  [ -f "$root/dist/test/helpers/kernel-suite.js" ] || (cd "$root" && npx tsc -p tsconfig.json)
  echo "running the CUDA kernel benchmarks on the CPU emulator (--tiny) through test/gpu/bench_cuda.test.mjs ..."
  NODETUNE_BENCH_CUDA="$out/nodetune_bench_cuda_emu" node --test "$root/test/gpu/bench_cuda.test.mjs"
  exit
fi
compile -c "$root/test/gpu/kernel_check.cpp" -o "$out/obj/kernel_check.o"
compile -c "$root/test/gpu/engine_check.cpp" -o "$out/obj/engine_check.o"
compile -c "$root/test/gpu/llama_check.cpp" -o "$out/obj/llama_check.o"
for p in "${pids[@]}"; do wait "$p"; done   # set -e: the first failed compile stops here
"${cxx[@]}" "${objs[@]}" "$out/obj/emu.o" "$out/obj/kernel_check.o" -lopenblas -o "$out/kernel_check_emu"
"${cxx[@]}" "${objs[@]}" "$out/obj/emu.o" "$out/obj/engine_check.o" -lopenblas -o "$out/engine_check_emu"
"${cxx[@]}" "${objs[@]}" "$out/obj/emu.o" "$out/obj/llama_check.o" -lopenblas -o "$out/llama_check_emu"
status=0
if [ "${EMU_ENGINE_ONLY:-0}" != 1 ]; then
  echo "running the kernels on the CPU emulator (--quick sizes) ..."
  "$out/kernel_check_emu" --quick --json "$out/kernel_check_emu.json" || status=$?
fi
echo "running the whole CUDA engine against the CPU engine on the emulator (--quick shapes) ..."
"$out/engine_check_emu" --quick --json "$out/engine_check_emu.json" || status=$?
echo "running the whole CUDA decoder engine against the CPU engine on the emulator (tiny Llama and Qwen2) ..."
"$out/llama_check_emu" --quick --json "$out/llama_check_emu.json" || status=$?
echo "the decoder benchmark's code path at tiny shapes (llama_check --bench --tiny) ..."
"$out/llama_check_emu" --bench --tiny --steps 1 || status=$?
exit $status
