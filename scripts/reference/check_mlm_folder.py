"""Check that Hugging Face transformers loads a `nodetune pretrain` output folder as
BertForMaskedLM and reproduces nodetune's masked-LM logits.

Usage:
  python3 scripts/reference/check_mlm_folder.py <folder> <logits.json> [--tol 1e-4]

<folder>       the run folder (config.json with architectures BertForMaskedLM, model.safetensors,
               tokenizer files)
<logits.json>  {"sentences": [...], "mask_logits": [[vocab_size floats], ...]}: nodetune's logits
               at the single [MASK] of each sentence (each sentence tokenized alone)

It loads the folder with AutoModelForMaskedLM (eager attention, eval mode, float32) and
AutoTokenizer, reports what from_pretrained says is missing or unexpected (a carried pooler is
expected to be unexpected), checks the decoder is tied to the word embeddings, and prints one JSON
line: {"max_abs_diff", "top5_equal", "top5", "missing", "unexpected", "ok"}. Exit 0 when ok.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import AutoModelForMaskedLM, AutoTokenizer  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("folder")
    ap.add_argument("logits")
    ap.add_argument("--tol", type=float, default=1e-4)
    a = ap.parse_args()
    with open(a.logits, encoding="utf-8") as f:
        ref = json.load(f)
    model, info = AutoModelForMaskedLM.from_pretrained(a.folder, output_loading_info=True, attn_implementation="eager")
    model.eval()
    tied = model.cls.predictions.decoder.weight.data_ptr() == model.bert.embeddings.word_embeddings.weight.data_ptr()
    tok = AutoTokenizer.from_pretrained(a.folder)
    diffs, top5_equal, top5 = [], True, []
    for sentence, want in zip(ref["sentences"], ref["mask_logits"]):
        enc = tok(sentence, return_tensors="pt")
        with torch.no_grad():
            logits = model(**enc).logits[0]
        pos = (enc["input_ids"][0] == tok.mask_token_id).nonzero()[0, 0]
        got = logits[pos]
        want_t = torch.tensor(want, dtype=got.dtype)
        diffs.append((got - want_t).abs().max().item())
        g5, w5 = got.topk(5).indices.tolist(), want_t.topk(5).indices.tolist()
        top5_equal &= g5 == w5
        top5.append(tok.convert_ids_to_tokens(g5))
    out = {
        "architectures": model.config.architectures,
        "decoder_tied": tied,
        "max_abs_diff": max(diffs),
        "top5_equal": top5_equal,
        "top5": top5,
        "missing": sorted(info["missing_keys"]),
        "unexpected": sorted(info["unexpected_keys"]),
    }
    out["ok"] = bool(tied and out["max_abs_diff"] <= a.tol and top5_equal and not out["missing"])
    print(json.dumps(out))
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
