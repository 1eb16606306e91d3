#!/usr/bin/env bash
# The one-shot GPU check, for a machine with an NVIDIA GPU and a CUDA
# toolkit (the H200 machines: CUDA 13.0 image, no network). Builds the CUDA
# kernels and the parity program, runs it, runs it again under
# compute-sanitizer (memcheck, racecheck) at --quick sizes, then any extra
# steps in test/gpu/steps/*.sh, and prints a short table. Designed to finish
# in under 6 minutes; each step has its own time limit.
#
# Prepare HERE first (no network there):  bash test/gpu/prepare.sh
# then on the device tool:  run(command="bash test/gpu/run.sh",
#                               carry=[".cache/gpu-deps"], timeout_s=480)
# Outputs land in $OUT (the device tool's folder) or /tmp/nodetune-gpu-out:
#   summary.txt, kernel_check.txt (full table), kernel_check.json, *.log
#
# Extra steps (engine parity, benchmark): drop an executable-free bash file
# test/gpu/steps/NN-name.sh; it runs as `bash FILE` with BUILD (the CMake
# build dir, targets already configured), OUT and LD_LIBRARY_PATH set, has
# NT_STEP_LIMIT seconds (default 120), and its last output line becomes the
# table's note. A non-zero exit marks it FAIL.
#
# Env: NT_CUDA_ARCHS (default 90), NT_GPU_BUILD (default /tmp/nodetune-gpu-build),
#      NT_SANITIZE=0 to skip compute-sanitizer, NT_CARRIED_BLAS=1 to use the
#      carried OpenBLAS even where the image has one.
set -uo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
out="${OUT:-/tmp/nodetune-gpu-out}"
build="${NT_GPU_BUILD:-/tmp/nodetune-gpu-build}"
mkdir -p "$out" "$build"
summary=()
failed=0
t_all=$(date +%s)

row() {  # name status seconds note
  summary+=("$(printf '%-22s %-8s %6ss  %s' "$1" "$2" "$3" "$4")")
  printf '== %-20s %-8s %6ss  %s\n' "$1" "$2" "$3" "$4"
}
# run_step NAME LIMIT LOG CMD...: runs CMD with a time limit, output to LOG.
run_step() {
  local name=$1 limit=$2 log=$3
  shift 3
  local t0 rc
  t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" >"$log" 2>&1
  rc=$?
  step_secs=$(($(date +%s) - t0))
  step_rc=$rc
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then step_status="TIMEOUT"; else step_status=$([ $rc -eq 0 ] && echo ok || echo FAIL); fi
}

# ---- toolchain -----------------------------------------------------------------
nvcc="${CUDACXX:-$(command -v nvcc || true)}"
for c in /usr/local/cuda/bin/nvcc "$root/.cache/cuda/toolkit/bin/nvcc"; do
  [ -n "$nvcc" ] || { [ -x "$c" ] && nvcc="$c"; }
done
if [ -z "$nvcc" ]; then
  echo "run.sh: no nvcc found (CUDACXX, PATH, /usr/local/cuda)" >&2
  exit 2
fi
echo "nvcc: $nvcc ($("$nvcc" --version | tail -n1))"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | sed 's/^/gpu: /'
echo "cmake: $(cmake --version | head -n1); cores: $(nproc)"

# OpenBLAS for the CPU reference kernels: the image's own, else the carried debs.
blas_args=()
if [ "${NT_CARRIED_BLAS:-0}" = 1 ] || ! find /usr/include /usr/local/include -name cblas.h 2>/dev/null | grep -q . ||
   ! ldconfig -p 2>/dev/null | grep -q libopenblas; then
  deps="$root/.cache/gpu-deps"
  if [ ! -f "$deps/include/cblas.h" ]; then
    echo "run.sh: no OpenBLAS on this machine and no .cache/gpu-deps (run test/gpu/prepare.sh here, carry it)" >&2
    exit 2
  fi
  unpack=/tmp/nodetune-gpu-deps
  mkdir -p "$unpack"
  for deb in "$deps"/debs/*.deb; do
    if command -v dpkg-deb >/dev/null; then
      dpkg-deb -x "$deb" "$unpack"
    else
      (cd "$unpack" && ar x "$deb" && tar -xf data.tar.* && rm -f data.tar.* control.tar.* debian-binary)
    fi
  done
  blas_lib="$(find "$unpack" -name 'libopenblas.so.0' | head -n1)"
  libdirs="$(dirname "$blas_lib"):$(dirname "$(find "$unpack" -name 'libgfortran.so.5' | head -n1)")"
  export LD_LIBRARY_PATH="$libdirs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  blas_args=(-DCBLAS_INCLUDE_DIR="$deps/include" -DOPENBLAS_LIBRARY="$blas_lib")
  echo "openblas: carried ($blas_lib)"
else
  echo "openblas: system"
fi

# ---- build -----------------------------------------------------------------------
gen=()
command -v ninja >/dev/null && gen=(-G Ninja)
run_step configure 90 "$out/configure.log" cmake -S "$root" -B "$build" "${gen[@]}" \
  -DCMAKE_BUILD_TYPE=Release -DNODETUNE_CUDA=ON -DCMAKE_CUDA_COMPILER="$nvcc" \
  -DCMAKE_CUDA_ARCHITECTURES="${NT_CUDA_ARCHS:-90}" "${blas_args[@]}"
row configure "$step_status" "$step_secs" "$(grep -m1 'nodetune CUDA:' "$out/configure.log" | sed 's/^-- //')"
if [ "$step_rc" -ne 0 ]; then tail -n 30 "$out/configure.log"; exit 1; fi

run_step build 240 "$out/build.log" cmake --build "$build" -j "$(nproc)" --target nodetune_cuda_check
row build "$step_status" "$step_secs" "nodetune_cuda_check"
if [ "$step_rc" -ne 0 ]; then grep -E 'error|Error' "$out/build.log" | head -n 30; exit 1; fi
check="$build/Release/nodetune_cuda_check"

# ---- kernel parity -----------------------------------------------------------------
run_step kernel_check 150 "$out/kernel_check.txt" "$check" --json "$out/kernel_check.json"
note="$(grep -E 'checks failed|no CUDA device' "$out/kernel_check.txt" | tail -n1)"
row kernel_check "$step_status" "$step_secs" "$note"
[ "$step_rc" -eq 0 ] || failed=1
grep -E 'FAIL|ERROR|error' "$out/kernel_check.txt" | head -n 40

# ---- compute-sanitizer at --quick sizes (seen working on Firecracker machines) ---------
if [ "${NT_SANITIZE:-1}" != "0" ]; then
  san="$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)"
  for tool in memcheck racecheck; do
    if [ -z "$san" ]; then row "$tool" skipped 0 "compute-sanitizer not found"; continue; fi
    run_step "$tool" 60 "$out/$tool.log" "$san" --tool "$tool" --error-exitcode 3 "$check" --quick --json "$out/$tool.json"
    row "$tool" "$step_status" "$step_secs" "$(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|not supported' "$out/$tool.log" | tail -n1)"
    [ "$step_status" = FAIL ] && { failed=1; grep -m 20 -E '=====' "$out/$tool.log"; }
  done
fi

# ---- extra steps (engine parity, benchmark) ------------------------------------------
for f in "$root"/test/gpu/steps/*.sh; do
  [ -e "$f" ] || continue
  name="$(basename "$f" .sh)"
  run_step "$name" "${NT_STEP_LIMIT:-120}" "$out/$name.log" env BUILD="$build" OUT="$out" bash "$f"
  row "$name" "$step_status" "$step_secs" "$(tail -n1 "$out/$name.log")"
  [ "$step_rc" -eq 0 ] || { failed=1; tail -n 20 "$out/$name.log"; }
done

{
  echo
  printf '%-22s %-8s %7s  %s\n' step status time note
  printf '%s\n' "${summary[@]}"
  echo "total $(($(date +%s) - t_all))s; logs and kernel_check.json in $out"
} | tee "$out/summary.txt"
exit $failed
