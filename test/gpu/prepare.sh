#!/usr/bin/env bash
# Run HERE (a Debian machine with network), before handing the repo to a GPU
# machine that cannot download anything: puts what that machine's CUDA image
# may lack into .cache/gpu-deps, which the device call carries, and compiles
# the TypeScript (dist/, carried too) that test/gpu/parity.mjs imports:
#   .cache/gpu-deps/include/cblas.h, openblas_config.h   (from libopenblas-openmp-dev)
#   .cache/gpu-deps/debs/*.deb   libopenblas0-openmp, libgfortran5, libquadmath0
#                                (about 8 MB; unpacked by run.sh only when the image has no OpenBLAS)
#   .cache/gpu-deps/bench/*.deb  libbenchmark1debian, libbenchmark-dev (Google Benchmark, about
#                                0.2 MB; unpacked by run.sh when the image has none, for the
#                                CUDA kernel benchmarks bench/kernels_cuda.cpp)
#   .cache/gpu-deps/node/node.xz this machine's Node 20 binary, xz-compressed (about 24 MB;
#                                unpacked by run.sh when the image has no Node 20)
# The addon is built there with plain CMake from node_modules/node-addon-api and
# node_modules/node-api-headers (carried; no cmake-js needed).
# Idempotent. Usage: bash test/gpu/prepare.sh; then
#   run(command="bash test/gpu/run.sh", timeout_s=480,
#       carry=[".cache/gpu-deps", "dist", "node_modules/node-addon-api", "node_modules/node-api-headers"])
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
dest="$root/.cache/gpu-deps"

if [ -f "$dest/include/cblas.h" ] && [ "$(ls "$dest"/debs/*.deb 2>/dev/null | wc -l)" -ge 3 ]; then
  echo "OpenBLAS for the GPU machine already in $dest"
else
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  mkdir -p "$dest/include" "$dest/debs"
  (cd "$tmp" && apt-get download libopenblas0-openmp libopenblas-openmp-dev libgfortran5 libquadmath0 >/dev/null 2>&1) || {
    echo "prepare.sh: apt-get download failed (needs a Debian/Ubuntu machine with network)" >&2
    exit 1
  }
  dpkg-deb -x "$tmp"/libopenblas-openmp-dev_*.deb "$tmp/dev"
  cp "$(find "$tmp/dev" -name cblas.h | head -n1)" "$(find "$tmp/dev" -name openblas_config.h | head -n1)" "$dest/include/"
  rm -f "$dest"/debs/*.deb
  cp "$tmp"/libopenblas0-openmp_*.deb "$tmp"/libgfortran5_*.deb "$tmp"/libquadmath0_*.deb "$dest/debs/"
fi

if [ "$(ls "$dest"/bench/*.deb 2>/dev/null | wc -l)" -ge 2 ]; then
  echo "Google Benchmark for the GPU machine already in $dest/bench"
else
  mkdir -p "$dest/bench"
  (cd "$dest/bench" && apt-get download libbenchmark1debian libbenchmark-dev >/dev/null 2>&1) || {
    echo "prepare.sh: apt-get download libbenchmark1debian libbenchmark-dev failed" >&2
    exit 1
  }
fi

node_bin="$(readlink -f "$(command -v node)")"
stamp="$dest/node/version"
if [ -f "$dest/node/node.xz" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$("$node_bin" --version)" ]; then
  echo "Node $(cat "$stamp") already in $dest/node"
else
  mkdir -p "$dest/node"
  echo "compressing $node_bin ($("$node_bin" --version)) into $dest/node/node.xz ..."
  xz -T0 -6 -c "$node_bin" >"$dest/node/node.xz.tmp"
  mv "$dest/node/node.xz.tmp" "$dest/node/node.xz"
  "$node_bin" --version >"$stamp"
fi

for m in node-addon-api node-api-headers; do
  [ -d "$root/node_modules/$m" ] || { echo "prepare.sh: node_modules/$m missing: run npm ci" >&2; exit 1; }
done
(cd "$root" && npx tsc -p tsconfig.json >/dev/null) || echo "prepare.sh: tsc reported errors (dist/ was still written)"
[ -f "$root/dist/src/engine.js" ] || { echo "prepare.sh: dist/src/engine.js missing after tsc" >&2; exit 1; }
du -sh "$dest" "$root/dist"
echo "ready: carry .cache/gpu-deps, dist, node_modules/node-addon-api, node_modules/node-api-headers"
