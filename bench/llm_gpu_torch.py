"""PyTorch + PEFT LoRA training steps: the peer of `nodetune_llama_check --bench`.

The same shapes, data and step as the nodetune side (test/gpu/llama_check.cpp):
LlamaForCausalLM from a config with random weights (SmolLM2-135M's shape or
Llama-3.2-1B's), the base in bf16, PEFT LoRA r 16 / alpha 32 on all linear
layers (target_modules="all-linear", no dropout; PEFT keeps the adapters in
float32 over a bf16 base), SDPA attention, batch 8 of full random sequences
with labels = input_ids, torch.optim.AdamW over the adapters, one optimizer
step per batch. Median step time after 2 warm-up steps; peak memory is
torch.cuda.max_memory_reserved() (what the caching allocator took from the
device: the counterpart of nodetune's cudaMalloc total).

Usage: python3 bench/llm_gpu_torch.py --shape llama-3.2-1b --seq 2048 [--steps 5]
         [--device cuda] [--json-lines FILE]
Prints one JSON line per run (and appends it to --json-lines).
"""

import argparse
import json
import statistics
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

SHAPES = {
    "smollm2-135m": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, head_dim=64, max_position_embeddings=8192,
                         rope_theta=100000.0, tie_word_embeddings=True),
    "llama-3.2-1b": dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                         num_attention_heads=32, num_key_value_heads=8, head_dim=64, max_position_embeddings=131072,
                         rope_theta=500000.0, tie_word_embeddings=True),
    # For trying the script on a CPU: the same code path on a small model.
    "tiny": dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, max_position_embeddings=4096, tie_word_embeddings=True),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", choices=sorted(SHAPES), required=True)
    ap.add_argument("--seq", type=int, required=True)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--json-lines")
    a = ap.parse_args()
    dev = torch.device(a.device)
    torch.manual_seed(0)
    cfg = LlamaConfig(**SHAPES[a.shape], attn_implementation="sdpa")
    model = LlamaForCausalLM(cfg).to(device=dev, dtype=torch.bfloat16)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear",
                                             task_type="CAUSAL_LM"))
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(0, cfg.vocab_size, (a.batch, a.seq), device=dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for s in range(a.steps + 2):
        sync()
        t0 = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        if s >= 2:
            times.append(time.perf_counter() - t0)
    step = statistics.median(times)
    row = {
        "peer": f"torch {torch.__version__} + peft",
        "shape": a.shape,
        "batch": a.batch,
        "seq": a.seq,
        "step_s": step,
        "tokens_per_s": a.batch * a.seq / step,
        "peak_bytes": torch.cuda.max_memory_reserved() if dev.type == "cuda" else None,
        "loss": loss.item(),
    }
    line = json.dumps(row)
    print(line, flush=True)
    if a.json_lines:
        with open(a.json_lines, "a") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
