"""The LLM main job (npm run main:llm) done by Hugging Face transformers + PEFT, as its peer:
the same model (SmolLM2-135M-Instruct, the Q4_1 GGUF dequantized to float32 by transformers),
the same chats (the train.jsonl / test.jsonl that scripts/banking77-chat.mjs writes), the same
masks (loss on the assistant turn and its <|im_end|> only), the same LoRA (r, alpha, dropout,
all-linear, layers_to_transform), optimizer (AdamW, no weight decay, clipping 1.0), schedule
(linear decay, no warmup), batch size and step count (each epoch a seeded shuffle, by Python's
own generator: the order is not nodetune's length-grouped one),
then greedy generation constrained to the 77 labels (prefix_allowed_tokens_fn over a trie of
the labels' token ids) and exact match.

Prints one JSON line: train_seconds, train_tokens_per_s (real tokens fed / training time),
eval_seconds, exact_match, peak_rss_mib (getrusage: the process's maximum resident set), and
the settings. It is slow (PyTorch eager on 2 threads); --train-limit / --test-limit run it on
the first N train / test chats of the files (the train file is shuffled and stratified by
scripts/banking77-chat.mjs, so a prefix of it still covers every label), --test-every k scores
every k-th test message (the test file is sorted by intent).

Usage:
  node scripts/banking77-chat.mjs --out runs/banking77-llm-data --per-label 80
  python3 scripts/reference/banking77_llm_peft.py --data runs/banking77-llm-data --threads 2 \
      --epochs 1 --batch-size 16 --lr 3e-3 --lora-r 16 --lora-alpha 32 --layers 15-29 [--test-every 10]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GGUF = os.path.join(ROOT, ".cache/models/SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf")


def layer_list(text: str) -> list[int] | None:
    if not text:
        return None
    out: set[int] = set()
    for part in text.split(","):
        a, _, b = part.partition("-")
        out.update(range(int(a), int(b or a) + 1))
    return sorted(out)


def read_jsonl(path: str, limit: int | None) -> list[list[dict]]:
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line)["messages"] for line in f if line.strip()]
    return rows[:limit] if limit else rows


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="folder with train.jsonl and test.jsonl")
    ap.add_argument("--gguf", default=GGUF)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--epochs", type=float, default=1)
    ap.add_argument("--max-steps", type=int, default=-1)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--lora-r", type=int, default=16)
    ap.add_argument("--lora-alpha", type=float, default=32)
    ap.add_argument("--lora-dropout", type=float, default=0.05)
    ap.add_argument("--layers", default="15-29", help="layers_to_transform, e.g. 15-29 ('' = all)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--train-limit", type=int, default=None)
    ap.add_argument("--test-limit", type=int, default=None)
    ap.add_argument("--test-every", type=int, default=1, help="score every k-th test message only (test.jsonl is sorted by intent: 10 gives 4 per intent)")
    ap.add_argument("--eval-batch-size", type=int, default=32)
    a = ap.parse_args(argv)

    import torch
    import transformers
    import peft
    from transformers import AutoModelForCausalLM, AutoTokenizer, get_linear_schedule_with_warmup
    from peft import LoraConfig, get_peft_model

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    folder = os.path.dirname(a.gguf)
    name = os.path.basename(a.gguf)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    layers = layer_list(a.layers)
    # PEFT takes layers_to_transform only with a list of modules: all-linear spelled out.
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model = get_peft_model(model, LoraConfig(r=a.lora_r, lora_alpha=a.lora_alpha, lora_dropout=a.lora_dropout,
                                             target_modules=targets, layers_to_transform=layers, task_type="CAUSAL_LM"))

    def encode(messages: list[dict]) -> tuple[list[int], list[int]]:
        prompt = tok.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=False)
        full = tok.apply_chat_template(messages, tokenize=False)
        ids = tok(full, add_special_tokens=False)["input_ids"]
        n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"])
        # nodetune's span: the answer and its <|im_end|>, not the "\n" the template writes after it.
        end = full.rindex("<|im_end|>") + len("<|im_end|>")
        n_through = len(tok(full[:end], add_special_tokens=False)["input_ids"])
        labels = [-100] * len(ids)
        labels[n_prompt:n_through] = ids[n_prompt:n_through]
        return ids, labels

    train = [encode(m) for m in read_jsonl(os.path.join(a.data, "train.jsonl"), a.train_limit)]
    test = read_jsonl(os.path.join(a.data, "test.jsonl"), a.test_limit)[:: a.test_every]
    steps_per_epoch = (len(train) + a.batch_size - 1) // a.batch_size
    total = a.max_steps if a.max_steps > 0 else int(-(-steps_per_epoch * a.epochs // 1))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.0)
    sched = get_linear_schedule_with_warmup(opt, 0, total)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    model.train()
    rng = random.Random(a.seed)
    step = 0
    tokens = 0
    t0 = time.perf_counter()
    losses = []
    while step < total:
        order = list(range(len(train)))
        rng.shuffle(order)
        for s in range(0, len(order), a.batch_size):
            if step >= total:
                break
            batch = [train[i] for i in order[s:s + a.batch_size]]
            T = max(len(ids) for ids, _ in batch)
            input_ids = torch.tensor([ids + [pad] * (T - len(ids)) for ids, _ in batch])
            mask = torch.tensor([[1] * len(ids) + [0] * (T - len(ids)) for ids, _ in batch])
            labels = torch.tensor([lab + [-100] * (T - len(lab)) for _, lab in batch])
            out = model(input_ids=input_ids, attention_mask=mask, labels=labels)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            opt.zero_grad()
            tokens += sum(len(ids) for ids, _ in batch)
            losses.append(out.loss.item())
            step += 1
            if step % 10 == 0:
                print(f"step {step}/{total} loss {sum(losses[-10:]) / 10:.4f} {tokens / (time.perf_counter() - t0):.1f} tokens/s", file=sys.stderr)
    train_seconds = time.perf_counter() - t0

    # Greedy generation constrained to the labels.
    labels_set = sorted({m[-1]["content"].strip() for m in read_jsonl(os.path.join(a.data, "train.jsonl"), a.train_limit)})
    trie: dict = {}
    for label in labels_set:
        node = trie
        for t in tok(label, add_special_tokens=False)["input_ids"] + [tok.convert_tokens_to_ids("<|im_end|>")]:
            node = node.setdefault(t, {})
    model.eval()
    tok.padding_side = "left"
    prompts = [tok.apply_chat_template(m[:-1], add_generation_prompt=True, tokenize=False) for m in test]
    refs = [m[-1]["content"].strip() for m in test]
    correct = 0
    t1 = time.perf_counter()
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    for s in range(0, len(prompts), a.eval_batch_size):
        enc = tok(prompts[s:s + a.eval_batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
        width = enc["input_ids"].shape[1]

        def allowed(_batch_id: int, ids: torch.Tensor) -> list[int]:
            node = trie
            for t in ids[width:].tolist():
                node = node.get(t, {})
            return list(node.keys()) or [eos]

        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=12, do_sample=False, prefix_allowed_tokens_fn=allowed,
                                 eos_token_id=eos, pad_token_id=pad)
        for k, row in enumerate(out[:, width:].tolist()):
            text = tok.decode([t for t in row if t not in (eos, pad)], skip_special_tokens=True).strip()
            correct += int(text == refs[s + k])
        print(f"generated {min(s + a.eval_batch_size, len(prompts))}/{len(prompts)}", file=sys.stderr)
    eval_seconds = time.perf_counter() - t1
    print(json.dumps({
        "train_examples": len(train), "steps": step, "train_seconds": round(train_seconds, 1),
        "train_tokens_per_s": round(tokens / train_seconds, 1), "final_loss_mean10": round(sum(losses[-10:]) / max(1, len(losses[-10:])), 4),
        "test_examples": len(test), "eval_seconds": round(eval_seconds, 1), "exact_match": correct / len(test),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "threads": a.threads, "batch_size": a.batch_size, "lr": a.lr, "lora_r": a.lora_r, "lora_alpha": a.lora_alpha,
        "layers_to_transform": layers, "epochs": a.epochs,
        "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
