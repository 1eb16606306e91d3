#!/usr/bin/env bash
# Run HERE (a Debian machine with network), before handing the repo to a GPU
# machine that cannot download anything: puts what that machine's CUDA image
# may lack into .cache/gpu-deps, which the device call then carries
# (carry: [".cache/gpu-deps"]) and test/gpu/run.sh uses only when the image
# has no OpenBLAS of its own:
#   .cache/gpu-deps/include/cblas.h, openblas_config.h   (from libopenblas-openmp-dev)
#   .cache/gpu-deps/debs/*.deb   libopenblas0-openmp, libgfortran5, libquadmath0
#                                (about 8 MB; unpacked by run.sh there)
# Idempotent. Usage: bash test/gpu/prepare.sh
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
dest="$root/.cache/gpu-deps"
if [ -f "$dest/include/cblas.h" ] && [ "$(ls "$dest"/debs/*.deb 2>/dev/null | wc -l)" -ge 3 ]; then
  echo "GPU-machine dependencies already in $dest"
  exit 0
fi
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
du -sh "$dest"
echo "carry .cache/gpu-deps to the GPU machine; test/gpu/run.sh unpacks it when needed"
