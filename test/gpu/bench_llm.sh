#!/usr/bin/env bash
# Decoder LoRA training throughput and memory on the GPU, nodetune beside
# PyTorch + PEFT bf16, same machine, same shapes (issue 14): SmolLM2-135M's
# and Llama-3.2-1B's shapes with random weights, LoRA r 16 all-linear, batch
# 8, sequence 1024 and 2048. nodetune: nodetune_llama_check --bench (bf16
# mixed precision; MFU against the GPU's own cuBLASLt bf16 GEMM ceiling);
# PyTorch: bench/llm_gpu_torch.py (bf16 base, fp32 adapters, SDPA). The last
# line: nodetune/PyTorch tokens/s and peak-memory ratios, and whether the 1B
# targets (>= 1.5x tokens/s, <= 0.6x memory) are met.
#
# Run by test/gpu/run.sh with BUILD and OUT set; alone:
#   BUILD=/tmp/nodetune-gpu-build OUT=/tmp/out bash test/gpu/bench_llm.sh
# Writes $OUT/bench_llm_nodetune.json, $OUT/bench_llm_torch.jsonl, $OUT/bench_llm.txt.
# NT_LLM_BENCH_STEPS (default 5) timed steps per row.
set -uo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
out="${OUT:?OUT must be set}"
build="${BUILD:?BUILD must be set}"
steps="${NT_LLM_BENCH_STEPS:-5}"
py="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1

rm -f "$out/bench_llm_nodetune.json"
"$build/Release/nodetune_llama_check" --bench --steps "$steps" --json "$out/bench_llm_nodetune.json"
: >"$out/bench_llm_torch.jsonl"
for shape in smollm2-135m llama-3.2-1b; do
  for T in 1024 2048; do
    timeout 120 "$py" "$root/bench/llm_gpu_torch.py" --shape "$shape" --seq "$T" --steps "$steps" \
      --json-lines "$out/bench_llm_torch.jsonl" >/dev/null 2>"$out/bench_llm_torch_${shape}_$T.err" ||
      echo "torch $shape T=$T failed: $(tail -n 2 "$out/bench_llm_torch_${shape}_$T.err")"
  done
done

"$py" - "$out/bench_llm_nodetune.json" "$out/bench_llm_torch.jsonl" <<'PY' | tee "$out/bench_llm.txt"
import json, sys
try:
    nt = json.load(open(sys.argv[1]))
except Exception as e:
    print(f"(no nodetune results: {e})")
    nt = {"rows": [], "gemm_ceiling_tflops": float("nan")}
names = {"SmolLM2-135M": "smollm2-135m", "Llama-3.2-1B": "llama-3.2-1b"}
torch = {(r["shape"], r["seq"]): r for r in map(json.loads, open(sys.argv[2]))}
print(f"{'shape':<13} {'T':>5}  {'nodetune tok/s':>14} {'MFU':>6} {'peak GiB':>9} {'attn %':>7}  {'torch tok/s':>11} {'peak GiB':>9}  {'speed':>6} {'memory':>7}")
summary = []
for r in nt["rows"]:
    t = torch.get((names.get(r["shape"], r["shape"]), r["seq"]))
    speed = r["tokens_per_s"] / t["tokens_per_s"] if t else float("nan")
    mem = r["peak_bytes"] / t["peak_bytes"] if t and t.get("peak_bytes") else float("nan")
    print(f"{r['shape']:<13} {r['seq']:>5}  {r['tokens_per_s']:>14.0f} {100 * r['mfu']:>5.1f}% {r['peak_bytes'] / 2**30:>9.2f} "
          f"{100 * r.get('attention_share', float('nan')):>6.1f}%  "
          f"{t['tokens_per_s'] if t else float('nan'):>11.0f} {(t['peak_bytes'] or 0) / 2**30 if t else float('nan'):>9.2f}  "
          f"{speed:>5.2f}x {mem:>6.2f}x")
    if r["shape"] == "Llama-3.2-1B":
        summary.append(f"1B T{r['seq']}: {speed:.2f}x tokens/s ({'met' if speed >= 1.5 else 'MISSED'} >= 1.5x), "
                       f"{mem:.2f}x memory ({'met' if mem <= 0.6 else 'MISSED'} <= 0.6x)")
print(f"bf16 GEMM ceiling {nt['gemm_ceiling_tflops']:.0f} TFLOP/s. " + ("; ".join(summary) or "no 1B comparison"))
PY
