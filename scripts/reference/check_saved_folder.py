"""Check that Hugging Face transformers loads a model folder written by nodetune
and reproduces the logits nodetune computed.

Usage:
  python3 scripts/reference/check_saved_folder.py <folder> <sentences.json> [--tol 1e-4] [--max-length 128]

<folder>          a HF model folder (config.json, model.safetensors, tokenizer files)
<sentences.json>  JSON object with
                    "sentences": list of strings, or of objects with a "text" field
                    "logits":    (N, num_labels) list of lists, the logits to compare against;
                  if "logits" is absent, `logits` from logits.safetensors next to the JSON
                  file is used (the layout of test/fixtures/minilm-head/).

It loads the folder with AutoModelForSequenceClassification (eager attention,
eval mode, float32) and AutoTokenizer, tokenizes all sentences as one batch
(padding=True, truncation=True, max_length), and prints one JSON line:
  {"max_abs_diff": ..., "argmax_agreement": ..., "n": N, "num_labels": C, "tol": ..., "ok": ...}
Exit status: 0 when max_abs_diff <= tol, 1 when larger, 2 on bad input
(the message names the file and the key or shape that was wrong).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


class InputError(Exception):
    pass


def read_expected(path: Path) -> tuple[list[str], list[list[float]]]:
    """Sentences (N) and expected logits (N, C) from the JSON file, or its sibling logits.safetensors."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: cannot read JSON: {e}") from e
    if not isinstance(data, dict) or not isinstance(data.get("sentences"), list):
        raise InputError(f'{path}: expected an object with a "sentences" list')
    texts = []
    for i, s in enumerate(data["sentences"]):
        text = s.get("text") if isinstance(s, dict) else s
        if not isinstance(text, str):
            raise InputError(f'{path}: sentences[{i}] must be a string or an object with a string "text"')
        texts.append(text)
    logits = data.get("logits")
    if logits is None:
        logits = read_sibling_logits(path)
    if len(logits) != len(texts) or any(len(row) != len(logits[0]) for row in logits):
        raise InputError(f'{path}: "logits" must be (N={len(texts)}, num_labels); got {len(logits)} rows '
                         f"of lengths {sorted({len(r) for r in logits})}")
    return texts, [[float(x) for x in row] for row in logits]


def read_sibling_logits(path: Path) -> list[list[float]]:
    from safetensors.numpy import load_file

    st = path.with_name("logits.safetensors")
    if not st.exists():
        raise InputError(f'{path}: no "logits" key and no {st.name} next to it')
    tensors = load_file(str(st))
    if "logits" not in tensors or tensors["logits"].ndim != 2:
        raise InputError(f"{st}: expected a 2-D tensor named 'logits'")
    return tensors["logits"].astype("float64").tolist()


def run_folder(folder: Path, texts: list[str], max_length: int):
    """(N, C) float64 numpy logits from HF transformers on the folder."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if not (folder / "config.json").is_file():
        raise InputError(f"{folder}: not a model folder (config.json missing)")
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder, attn_implementation="eager",
                                                               dtype=torch.float32).eval()
    enc = tok(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    with torch.no_grad():
        return model(**enc).logits.double().numpy()


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path)
    ap.add_argument("sentences", type=Path)
    ap.add_argument("--tol", type=float, default=1e-4, help="max allowed |logit difference| (default 1e-4)")
    ap.add_argument("--max-length", type=int, default=128)
    args = ap.parse_args(argv)
    try:
        texts, expected = read_expected(args.sentences)
        got = run_folder(args.folder, texts, args.max_length)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    import numpy as np

    exp = np.asarray(expected, dtype=np.float64)
    if got.shape != exp.shape:
        print(f"error: {args.folder}: model gives logits {tuple(got.shape)}, {args.sentences} has {exp.shape}",
              file=sys.stderr)
        return 2
    diff = float(np.abs(got - exp).max())
    agree = float((got.argmax(-1) == exp.argmax(-1)).mean())
    report = {"max_abs_diff": diff, "argmax_agreement": agree, "n": int(exp.shape[0]),
              "num_labels": int(exp.shape[1]), "tol": args.tol, "ok": diff <= args.tol}
    print(json.dumps(report))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
