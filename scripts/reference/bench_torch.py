"""PyTorch eager training-step benchmark (CPU, or CUDA with --device cuda): the peer nodetune is compared against.

One step = forward + cross-entropy loss + backward + clip_grad_norm_(1.0) + AdamW.step + zero_grad,
on BertForSequenceClassification(num_labels=77) with random init, random input_ids in
[1, vocab) and a full attention mask (no padding), exactly the work nodetune's step does.

Usage (all flags optional; defaults are all-MiniLM-L6-v2 shapes, batch 32, seq 32):
  python3 scripts/reference/bench_torch.py --layers 6 --hidden 384 --heads 12 --intermediate 1536 \
      --vocab 30522 --batch 32 --seq 32 --threads 2 --steps 20 --warmup 3 --dtype fp32|bf16 --device cpu|cuda

Prints one JSON line on stdout:
  {"samples_per_s": ..., "step_ms_median": ..., "step_ms_min": ..., "steps": ..., "threads": ...,
   "dtype": ..., "torch": ..., "transformers": ...}
samples_per_s = batch / median step time. bf16 runs the forward and loss under
torch.autocast(device, dtype=torch.bfloat16) with float32 master weights and optimizer.
--device cuda puts model, batch and optimizer on GPU 0 and synchronizes before
reading the clock (the step ends with loss.item(), a sync, either way); TF32
stays off (torch's default for matmuls), so fp32 is true fp32.
Attention is HF's sdpa implementation unless --attn eager (the model runs in eager mode either way:
no torch.compile).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

NUM_LABELS = 77  # Banking77


def parse(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--hidden", type=int, default=384)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--intermediate", type=int, default=1536)
    ap.add_argument("--vocab", type=int, default=30522)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=32)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--steps", type=int, default=20, help="timed steps")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--attn", choices=("sdpa", "eager"), default="sdpa",
                    help="HF attention implementation (sdpa is what transformers picks by default)")
    a = ap.parse_args(argv)
    if a.hidden % a.heads:
        ap.error(f"--hidden {a.hidden} must be divisible by --heads {a.heads}")
    if min(a.layers, a.hidden, a.heads, a.intermediate, a.vocab, a.batch, a.seq, a.threads, a.steps) < 1:
        ap.error("all sizes, --threads and --steps must be >= 1")
    if a.seq > 512:
        ap.error(f"--seq {a.seq} exceeds max_position_embeddings 512")
    return a


def build(a):
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(a.seed)
    config = BertConfig(vocab_size=a.vocab, hidden_size=a.hidden, num_hidden_layers=a.layers,
                        num_attention_heads=a.heads, intermediate_size=a.intermediate,
                        max_position_embeddings=512, num_labels=NUM_LABELS)
    config._attn_implementation = a.attn
    model = BertForSequenceClassification(config).train().to(a.device)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.01)
    g = torch.Generator().manual_seed(a.seed)
    batch = {
        "input_ids": torch.randint(1, a.vocab, (a.batch, a.seq), generator=g),
        "attention_mask": torch.ones(a.batch, a.seq, dtype=torch.long),
        "token_type_ids": torch.zeros(a.batch, a.seq, dtype=torch.long),
        "labels": torch.randint(0, NUM_LABELS, (a.batch,), generator=g),
    }
    return model, opt, {k: v.to(a.device) for k, v in batch.items()}


def step(model, opt, batch, bf16: bool, device: str) -> float:
    import torch

    with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
        loss = model(**batch).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.item()


def main(argv: list[str]) -> int:
    a = parse(argv)
    import torch
    import transformers

    torch.set_num_threads(a.threads)
    model, opt, batch = build(a)
    bf16 = a.dtype == "bf16"
    sync = torch.cuda.synchronize if a.device == "cuda" else (lambda: None)
    for _ in range(a.warmup):
        step(model, opt, batch, bf16, a.device)
    times = []
    for _ in range(a.steps):
        sync()
        t0 = time.perf_counter()
        loss = step(model, opt, batch, bf16, a.device)
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    med = statistics.median(times)
    print(json.dumps({
        "samples_per_s": a.batch / (med / 1e3), "step_ms_median": med, "step_ms_min": min(times),
        "steps": a.steps, "warmup": a.warmup, "threads": torch.get_num_threads(), "dtype": a.dtype,
        "attn": model.config._attn_implementation, "batch": a.batch, "seq": a.seq, "layers": a.layers, "hidden": a.hidden, "last_loss": loss,
        "torch": torch.__version__, "transformers": transformers.__version__, "device": a.device,
        "device_name": torch.cuda.get_device_name(0) if a.device == "cuda" else "cpu",
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
