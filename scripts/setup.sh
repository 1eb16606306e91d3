#!/usr/bin/env bash
# Sets up a fresh Debian/Ubuntu machine for nodetune: system packages (cmake, g++,
# OpenBLAS with OpenMP, oneDNN for bf16 GEMMs, Google Benchmark, Open MPI for data-parallel
# training), npm packages (which builds the native addon
# with cmake-js), the TypeScript build, and the real pretrained models all-MiniLM-L6-v2
# and SmolLM2-135M-Instruct (Q4_1 GGUF).
# Idempotent; safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

need_pkgs=()
for pkg in cmake g++ make pkg-config libopenblas-openmp-dev libdnnl-dev libbenchmark-dev libopenmpi-dev openmpi-bin python3-pip; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_pkgs+=("$pkg")
done
if [ ${#need_pkgs[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  echo "installing system packages: ${need_pkgs[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

# onnxruntime-node's postinstall would download CUDA binaries when it sees nvcc; the
# CPU binaries ship inside the npm package, which is all nodetune uses.
export ONNXRUNTIME_NODE_INSTALL=skip
npm ci --no-audit --no-fund
npm run build:ts
bash scripts/fetch-model.sh
bash scripts/fetch-llm.sh
