"""PyTorch eager (+ PEFT for LoRA) causal-LM training-step benchmark on the CPU: the peer of
nodetune's decoder engine in `nodetune bench train --shapes smollm2-135m-lora,...`.

One step = forward of LlamaForCausalLM on (B, T) random token ids with labels = input_ids (HF
shifts them inside the loss), backward, clip_grad_norm_(1.0), AdamW(lr 1e-4, weight_decay
0.01) over the trainable parameters, zero_grad: what nodetune's trainStep does. With --lora R
the model is wrapped by PEFT get_peft_model(LoraConfig(r=R, lora_alpha=2R, lora_dropout=0.05,
target_modules="all-linear")), so only the adapters train. Random init (HF's), sdpa attention, fp32;
with --dtype bf16 (LoRA only) the frozen base is cast to bfloat16 before PEFT wraps it, and PEFT
keeps the adapters in fp32 (its autocast_adapter_dtype default), as nodetune's --precision bf16.

Usage (defaults: the SmolLM2-135M shape, LoRA r 16, batch 8, seq 128, 2 threads):
  python3 scripts/reference/bench_torch_llama.py --layers 30 --hidden 576 --heads 9 --kv-heads 3 \
      --intermediate 1536 --vocab 49152 --tied 1 --lora 16 --batch 8 --seq 128 --threads 2 --steps 5 --warmup 2

Prints one JSON line: {"tokens_per_s", "step_ms_median", "peak_rss_mib", "steps", "threads", "torch",
"transformers", "peft", ...}. tokens_per_s = B*T / median step time; peak_rss_mib = the process's
maximum resident set (getrusage), model and optimizer included.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def parse(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, default in (("layers", 30), ("hidden", 576), ("heads", 9), ("kv-heads", 3), ("intermediate", 1536),
                          ("vocab", 49152), ("tied", 1), ("lora", 16), ("batch", 8), ("seq", 128),
                          ("threads", os.cpu_count() or 1), ("steps", 5), ("warmup", 2), ("seed", 0)):
        ap.add_argument(f"--{name}", type=int, default=default)
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    a = ap.parse_args(argv)
    if a.dtype == "bf16" and a.lora < 1:
        ap.error("--dtype bf16 casts the frozen base: it needs --lora")
    if a.hidden % a.heads or a.heads % a.kv_heads:
        ap.error("--hidden must be divisible by --heads, and --heads by --kv-heads")
    if min(a.layers, a.hidden, a.heads, a.kv_heads, a.intermediate, a.vocab, a.batch, a.seq, a.threads, a.steps) < 1:
        ap.error("all sizes, --threads and --steps must be >= 1")
    return a


def main(argv: list[str]) -> int:
    a = parse(argv)
    import torch
    import transformers
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    config = LlamaConfig(vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=a.intermediate,
                         num_hidden_layers=a.layers, num_attention_heads=a.heads, num_key_value_heads=a.kv_heads,
                         max_position_embeddings=max(2048, a.seq), tie_word_embeddings=bool(a.tied),
                         rms_norm_eps=1e-5, attn_implementation="sdpa")
    model = LlamaForCausalLM(config).train()
    if a.dtype == "bf16":
        model = model.to(torch.bfloat16)
    peft_version = None
    if a.lora > 0:
        import peft
        from peft import LoraConfig, get_peft_model
        model = get_peft_model(model, LoraConfig(r=a.lora, lora_alpha=2 * a.lora, lora_dropout=0.05,
                                                 target_modules="all-linear", task_type="CAUSAL_LM"))
        peft_version = peft.__version__
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)
    g = torch.Generator().manual_seed(a.seed)
    ids = torch.randint(0, a.vocab, (a.batch, a.seq), generator=g)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}

    def step() -> float:
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, max_norm=1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    for _ in range(a.warmup):
        step()
    times = []
    for _ in range(a.steps):
        t0 = time.perf_counter()
        loss = step()
        times.append((time.perf_counter() - t0) * 1e3)
    med = statistics.median(times)
    print(json.dumps({
        "tokens_per_s": a.batch * a.seq / (med / 1e3), "step_ms_median": med, "step_ms_min": min(times),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "trainable_parameters": sum(p.numel() for p in params), "last_loss": loss,
        "steps": a.steps, "warmup": a.warmup, "threads": torch.get_num_threads(), "batch": a.batch, "seq": a.seq,
        "lora": a.lora, "dtype": a.dtype, "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft_version,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
