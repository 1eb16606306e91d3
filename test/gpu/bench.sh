#!/usr/bin/env bash
# Training-step throughput on the GPU, nodetune beside PyTorch eager, same
# machine, same shapes: MiniLM-L6 (all-MiniLM-L6-v2) and bert-base with a
# 77-label head, batch 32 and 128, sequence 128, full attention mask,
# dropout 0.1, AdamW + clipping. nodetune: nodetune_engine_check --bench
# (bf16 mixed precision and fp32); PyTorch: scripts/reference/bench_torch.py
# --device cuda --dtype bf16 (torch.autocast bf16, fp32 master weights, sdpa
# attention). FLOPs per step are nodetune's count for the same shape (6 x
# encoder params x tokens + head + attention; see test/gpu/engine_check.cpp),
# used for both, so the TFLOP/s columns compare like with like. MFU is
# against the H200's dense bf16 peak, 989 TFLOP/s (NVIDIA datasheet).
#
# Run by test/gpu/run.sh with BUILD (CMake build dir) and OUT set; alone:
#   BUILD=/tmp/nodetune-gpu-build OUT=/tmp/out bash test/gpu/bench.sh
# Writes $OUT/bench_nodetune.json, $OUT/bench_torch.jsonl, $OUT/bench.txt;
# prints the table; the last line is a one-line summary. Exit 1 unless all 8
# nodetune rows and all 4 torch rows were measured. NT_BENCH_TABLE_ONLY=1
# only re-prints the table from the files in $OUT.
set -uo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
out="${OUT:?OUT must be set}"
build="${BUILD:?BUILD must be set}"
peak="${NT_PEAK_TFLOPS:-989}"
steps="${NT_BENCH_STEPS:-10}"
py="${PYTHON:-python3}"

if [ "${NT_BENCH_TABLE_ONLY:-0}" != 1 ]; then
rm -f "$out/bench_nodetune.json"
"$build/Release/nodetune_engine_check" --bench --steps "$steps" --peak "$peak" --json "$out/bench_nodetune.json"

: >"$out/bench_torch.jsonl"
export PYTHONUNBUFFERED=1
for shape in "MiniLM-L6 --layers 6 --hidden 384 --heads 12 --intermediate 1536" \
             "bert-base --layers 12 --hidden 768 --heads 12 --intermediate 3072"; do
  set -- $shape
  name=$1
  shift
  for B in 32 128; do
    line="$(timeout 90 "$py" "$root/scripts/reference/bench_torch.py" "$@" --vocab 30522 --batch "$B" --seq 128 \
      --steps "$steps" --warmup 3 --dtype bf16 --device cuda 2>"$out/bench_torch_${name}_$B.err" | tail -n1)"
    if [ -n "$line" ]; then
      echo "{\"model\":\"$name\",\"result\":$line}" >>"$out/bench_torch.jsonl"
    else
      echo "torch $name B=$B failed: $(tail -n 3 "$out/bench_torch_${name}_$B.err")"
    fi
  done
done
fi

"$py" - "$out/bench_nodetune.json" "$out/bench_torch.jsonl" "$peak" <<'PY' | tee "$out/bench.txt"
import json, sys
nt_path, torch_path, peak = sys.argv[1], sys.argv[2], float(sys.argv[3])
try:
    nt = json.load(open(nt_path))["rows"]
except Exception as e:  # nodetune's bench failed: still print torch
    print(f"(no nodetune results: {e})")
    nt = []
torch = {}
for line in open(torch_path):
    r = json.loads(line)
    torch[(r["model"], r["result"]["batch"])] = r["result"]
flops = {(r["model"], r["batch"]): r["flops_per_step"] for r in nt}
print(f"{'model':<10} {'B':>4} {'T':>4}  {'engine':<16} {'ms/step':>8} {'samples/s':>10} {'TFLOP/s':>8} {'MFU':>6}")
summary = []
for model in ("MiniLM-L6", "bert-base"):
    for B in (32, 128):
        f = flops.get((model, B))
        for r in nt:
            if r["model"] == model and r["batch"] == B:
                print(f"{model:<10} {B:>4} {r['seq']:>4}  {'nodetune ' + r['precision']:<16} {r['step_ms_median']:>8.2f} "
                      f"{r['samples_per_s']:>10.1f} {r['tflops']:>8.1f} {100 * r['mfu']:>5.1f}%")
        t = torch.get((model, B))
        if t:
            tf = f / (t["step_ms_median"] * 1e-3) / 1e12 if f else float("nan")
            print(f"{model:<10} {B:>4} {t['seq']:>4}  {'torch bf16':<16} {t['step_ms_median']:>8.2f} "
                  f"{t['samples_per_s']:>10.1f} {tf:>8.1f} {100 * tf / peak:>5.1f}%")
        nb = next((r for r in nt if r["model"] == model and r["batch"] == B and r["precision"] == "bf16"), None)
        if nb and t:
            summary.append(f"{model} B{B} {nb['samples_per_s'] / t['samples_per_s']:.2f}x")
print(f"MFU vs {peak:g} TFLOP/s (H200 dense bf16). nodetune bf16 / torch bf16 samples/s: " + (", ".join(summary) or "n/a"))
sys.exit(0 if len(nt) == 8 and len(torch) == 4 else 1)
PY
