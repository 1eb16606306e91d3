"""Real-weights inference reference: test/fixtures/minilm-head/.

all-MiniLM-L6-v2 (a bare BertModel checkpoint: no `bert.` prefix, has a pooler
and an int64 `embeddings.position_ids` buffer) gets a fresh 5-label
classification head (seeded, non-zero bias). HF transformers'
BertForSequenceClassification (eager attention, eval mode) runs a padded batch
of varied sentences tokenized by the model's fast tokenizer.

Writes head.safetensors (classifier.weight (5, 384), classifier.bias (5),
float32), sentences.json (texts, HF input_ids/attention_mask/token_type_ids,
float32 logits copy, fp32-vs-fp64 delta) and logits.safetensors (`logits`
(N, 5) and `pooler_output` (N, 384), float32).

Run: python3 scripts/reference/minilm_head.py   (needs scripts/fetch-model.sh first)
"""

from __future__ import annotations

from common import (  # before HF: offline mode
    FIXTURES, MINILM_DIR, REPO_ROOT, deterministic, make_readable, versions, write_json,
)

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer, BertForSequenceClassification

OUT = FIXTURES / "minilm-head"
NUM_LABELS = 5
MAX_LENGTH = 128
HEAD_SEED = 1234

SENTENCES = [
    "I am still waiting on my card, when will it arrive?",
    "How do I top up my account with Apple Pay?",
    "Why was I charged a fee for withdrawing cash at the ATM?",
    "My card payment was declined at the supermarket.",
    "Can I change my PIN at any cash machine?",
    "The exchange rate you gave me for GBP to EUR looks wrong.",
    "hi",
    "?",
    "Refund!!!",
    "",
    "ok thx 👍",
    "I transferred €1,250.00 to my landlord on 03/04/2024 but it still shows as pending — what's going on?",
    "Café crème, naïve façade, jalapeño — Ångström señor.",
    "Überweisung nach Österreich dauert zu lange.",
    "我的银行卡丢了，怎么办？",
    "カードが届きません。",
    "카드를 잃어버렸어요",
    "Pourquoi ma carte a-t-elle été refusée à l'étranger ?",
    "😡😡😡 still no money back after 10 days 💸",
    "WHY IS MY ACCOUNT BLOCKED?????",
    "Is there a limit on how much I can send... per day? per month?!",
    "call me at +44 20 7946 0958 or email help@example.com / https://example.com/help?id=42",
    "   leading and trailing spaces   ",
    "tabs\tand\nnewlines\r\nin one message",
    "I moved to a new country last month and I would like to know whether I can keep using this account "
    "from abroad, how the exchange rates are calculated when I pay in the local currency, whether there are "
    "extra fees for receiving my salary in a different currency, and how long it usually takes before an "
    "international transfer from my old bank arrives in my balance here.",
    "Someone I do not recognise made three contactless payments with my card yesterday evening while I was at "
    "home, so I think my card details were stolen; please freeze the card immediately, cancel those payments, "
    "and tell me how to get a replacement card delivered to my new address as quickly as possible.",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "0 1 2 3 4 5 6 7 8 9 10 100 1000 3.14159 1e-5 -42",
    # > 128 tokens: exercises truncation=True, max_length=128 inside the padded batch.
    " ".join(["Please explain every fee on my statement for the card, the transfers and the cash withdrawals."] * 9),
]


def make_head() -> dict:
    """Fresh classifier: weight ~ N(0, 0.02) like HF init; bias small random so a dropped bias shows."""
    torch.manual_seed(HEAD_SEED)
    hidden = 384
    weight = torch.empty(NUM_LABELS, hidden).normal_(0.0, 0.02)
    bias = 0.05 * torch.randn(NUM_LABELS)
    return {"classifier.weight": weight.contiguous(), "classifier.bias": bias.contiguous()}


def load_model(head: dict) -> BertForSequenceClassification:
    model, info = BertForSequenceClassification.from_pretrained(
        MINILM_DIR, num_labels=NUM_LABELS, attn_implementation="eager", output_loading_info=True
    )
    missing = set(info["missing_keys"])
    assert missing <= set(head), f"encoder weights missing from checkpoint: {sorted(missing - set(head))}"
    assert not info.get("mismatched_keys"), info["mismatched_keys"]
    own = model.load_state_dict(head, strict=False)
    assert not own.unexpected_keys, own.unexpected_keys
    assert model.bert.pooler is not None
    return model.eval()


def check_checkpoint_layout() -> dict:
    """Records what the engine's loader must cope with in this checkpoint."""
    raw = load_file(str(MINILM_DIR / "model.safetensors"))
    return {
        "tensors": len(raw),
        "has_bert_prefix": any(k.startswith("bert.") for k in raw),
        "has_pooler": "pooler.dense.weight" in raw,
        "non_float_tensors": {k: str(v.dtype) for k, v in raw.items() if not v.dtype.is_floating_point},
    }


def main() -> None:
    deterministic()
    tok = AutoTokenizer.from_pretrained(MINILM_DIR)
    enc = tok(SENTENCES, padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
    head = make_head()
    model = load_model(head)
    with torch.no_grad():
        logits32 = model(**enc).logits.float()
        pooled32 = model.bert(**enc).pooler_output.float()  # (N, 384): localises an encoder mismatch
        logits64 = model.double()(**enc).logits
    delta = (logits32.double() - logits64).abs().max().item()

    OUT.mkdir(parents=True, exist_ok=True)
    save_file(head, str(OUT / "head.safetensors"))
    save_file({"logits": logits32.contiguous(), "pooler_output": pooled32.contiguous()},
              str(OUT / "logits.safetensors"))
    write_json(OUT / "sentences.json", {
        "model": str(MINILM_DIR.relative_to(REPO_ROOT)),
        "checkpoint": check_checkpoint_layout(),
        "num_labels": NUM_LABELS,
        "head": f"classifier.weight ~ N(0, 0.02), then classifier.bias = 0.05*randn(5); torch.manual_seed({HEAD_SEED})",
        "tokenizer_call": {"padding": True, "truncation": True, "max_length": MAX_LENGTH,
                           "tokenizer": type(tok).__name__},
        "shape": list(enc["input_ids"].shape),
        "float32_vs_float64_max_abs_diff": delta,
        "sentences": [
            {"text": s, "input_ids": enc["input_ids"][i].tolist(),
             "attention_mask": enc["attention_mask"][i].tolist(),
             "token_type_ids": enc["token_type_ids"][i].tolist()}
            for i, s in enumerate(SENTENCES)
        ],
        "logits": [[float(x) for x in row] for row in logits32.tolist()],
        "versions": versions(),
    })
    make_readable(OUT)
    print(f"wrote {OUT}: N={len(SENTENCES)} T={enc['input_ids'].shape[1]} fp32-vs-fp64 max|d|={delta:.3e}")


if __name__ == "__main__":
    main()
