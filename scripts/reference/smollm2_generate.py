"""Greedy generation reference for the real model: SmolLM2-135M-Instruct Q4_1 GGUF, dequantized to
float32 by transformers (from_pretrained(gguf_file=...), with the `gguf` package), 5 chat prompts
(ChatML via the GGUF's own chat template, add_generation_prompt) left-padded into one batch, 32 new
tokens each with HF generate(do_sample=False, use_cache=True).

Writes test/fixtures/smollm2-generate/expected.json: prompt ids (unpadded), generated ids, and per
step the 20 largest logits of each row (ids and values) plus the row's max and logsumexp, so a test can
check the engine's logits at every step within a tolerance without storing (5, 32, 49152) floats.
Needs .cache/models/SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf (scripts/fetch-llm.sh).
Deterministic (one thread); ~1 min.
"""
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

torch.set_num_threads(1)
root = os.path.join(os.path.dirname(__file__), "../..")
folder = os.path.join(root, ".cache/models/SmolLM2-135M-Instruct")
gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=torch.float32, attn_implementation="eager").eval()

questions = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "My card has not arrived yet. What should I do?",
    "List three prime numbers.",
    "Translate 'good morning' into Spanish.",
]
prompts = [tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
           for q in questions]
ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
T = max(len(x) for x in ids)
pad = tok.pad_token_id if tok.pad_token_id is not None else 0
input_ids = torch.tensor([[pad] * (T - len(x)) + x for x in ids])
mask = torch.tensor([[0] * (T - len(x)) + [1] * len(x) for x in ids])
NEW = 32
with torch.no_grad():
    out = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False,
                         min_new_tokens=NEW, output_logits=True, return_dict_in_generate=True, pad_token_id=pad,
                         temperature=None, top_p=None, top_k=None)
gen = out.sequences[:, T:].tolist()
steps = []
for s, logits in enumerate(out.logits):
    rows = []
    for b in range(len(ids)):
        row = logits[b].double()
        top = torch.topk(row, 20)
        rows.append({"ids": top.indices.tolist(), "values": [float(v) for v in top.values],
                     "max": float(row.max()), "logsumexp": float(torch.logsumexp(row, 0))})
    steps.append(rows)
result = {
    "model": gguf, "questions": questions, "prompt_ids": ids, "pad_token_id": pad, "max_new_tokens": NEW,
    "generated_ids": gen, "generated_text": [tok.decode(g) for g in gen], "steps": steps,
    "note": "min_new_tokens=32: eos is suppressed (HF sets its logit to -inf before the argmax), so every row runs 32 steps; "
            "logits in `steps` are the raw model logits before that processor",
    "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
}
path = os.path.join(root, "test/fixtures/smollm2-generate/expected.json")
os.makedirs(os.path.dirname(path), exist_ok=True)
with open(path, "w") as f:
    json.dump(result, f)
    f.write("\n")
print("wrote", os.path.normpath(path))
for q, t in zip(questions, result["generated_text"]):
    print(repr(q), "->", repr(t))
