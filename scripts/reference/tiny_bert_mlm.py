"""Masked-LM parity reference for the native engine: test/fixtures/tiny-bert-mlm/.

Builds a tiny random BertForMaskedLM (HF transformers, eager attention, dropout
off; same sizes as tiny_bert.py), perturbs every LayerNorm weight and every bias
(cls.predictions.bias included) so that a kernel which ignores them cannot pass,
and records from float64 PyTorch: logits, the MLM loss (mean CE over the
labelled positions), the gradient of every parameter (the word embedding's is
the lookup part plus the tied decoder's part), and three clipped AdamW steps
with HF Trainer's two parameter groups. The same forward/backward in float32
goes to expected32.safetensors for information. It also loads the tiny-bert
classifier checkpoint into BertForMaskedLM and records HF's loading info.

Run: python3 scripts/reference/tiny_bert_mlm.py   (offline, deterministic, ~seconds)
"""

from __future__ import annotations

import copy
import io
import logging
import re

from common import FIXTURES, deterministic, make_readable, versions, write_json  # before HF: offline mode

import torch
import transformers
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import BertForMaskedLM

import tiny_bert  # its CONFIG, optimizer recipe, replay_first_step and contiguous (its main() does not run)

OUT = FIXTURES / "tiny-bert-mlm"
CLASSIFIER_DIR = FIXTURES / "tiny-bert"  # written by tiny_bert.py

# tiny-bert's model config (without its classification head) and its AdamW + clipping recipe,
# which the engine's tests replay for both heads.
CONFIG = {k: v for k, v in tiny_bert.CONFIG.items() if k != "num_labels"}
LR, BETAS, EPS, WEIGHT_DECAY, MAX_GRAD_NORM, STEPS = (tiny_bert.LR, tiny_bert.BETAS, tiny_bert.EPS, tiny_bert.WEIGHT_DECAY,
                                                      tiny_bert.MAX_GRAD_NORM, tiny_bert.STEPS)
LENGTHS, T = tiny_bert.LENGTHS, tiny_bert.T
MASK_ID = 3  # "[MASK]" for this fixture (pad_token_id is 0)
RANDOM_ID = 42  # the one "random other token" replacement
# Fixed stand-in for BERT's 80/10/10 rule: (row, position, what input_ids gets there).
MLM_POSITIONS = [
    (0, 1, "mask"),
    (0, 4, "random"),
    (0, 6, "mask"),  # row 0's last token
    (1, 2, "keep"),  # labelled, input left unchanged
    (1, 4, "mask"),  # row 1's last real token
    (2, 1, "mask"),
]

TIES = {  # tied name -> the name named_parameters() reports it under
    "cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
    "cls.predictions.decoder.bias": "cls.predictions.bias",
}


def assert_tied(model) -> None:
    for tied, source in TIES.items():
        assert model.get_parameter(tied) is model.get_parameter(source), f"{tied} is no longer {source}"
    names = {n for n, _ in model.named_parameters()}
    assert not names & set(TIES), "named_parameters lists a tied alias"


def build_model() -> BertForMaskedLM:
    """tiny_bert.py's random init and perturbation, as BertForMaskedLM (no pooler, ties intact)."""
    model = tiny_bert.build_model(BertForMaskedLM, CONFIG)
    assert model.bert.pooler is None, "BertForMaskedLM has no pooler"
    assert model.bert.embeddings.word_embeddings.padding_idx == 0
    assert_tied(model)
    assert model.cls.predictions.bias.abs().min() > 0, "cls.predictions.bias was not perturbed"
    return model


def make_batch() -> tuple[dict, list]:
    """tiny_bert.py's B=3, T=7 right-padded batch, MLM labels at MLM_POSITIONS."""
    batch = tiny_bert.make_batch()
    input_ids, attention_mask, token_type_ids = batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]
    original = input_ids.clone()
    labels = torch.full_like(input_ids, -100)
    log = []
    for b, t, how in MLM_POSITIONS:
        assert t < LENGTHS[b], "MLM positions must be real tokens"
        y = int(original[b, t])
        assert y not in (0, MASK_ID, RANDOM_ID), (b, t, y)
        labels[b, t] = y
        new = {"mask": MASK_ID, "random": RANDOM_ID, "keep": y}[how]
        input_ids[b, t] = new
        log.append({"row": b, "position": t, "rule": how, "label": y, "input_id": new})
    assert sorted({b for b, _, _ in MLM_POSITIONS}) == [0, 1, 2]
    batch = dict(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, labels=labels)
    return batch, log


def forward_backward(model, batch) -> tuple[torch.Tensor, torch.Tensor, dict, torch.Tensor]:
    """One forward/backward; also returns the prediction transform's output (decoder input)."""
    model.zero_grad(set_to_none=True)
    seen = {}
    hook = model.cls.predictions.transform.register_forward_hook(lambda m, i, o: seen.update(h=o.detach().clone()))
    out = model(**batch)
    hook.remove()
    out.loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    return out.logits.detach().clone(), out.loss.detach().clone(), grads, seen["h"]


def logits_grad(model, batch) -> torch.Tensor:
    """d loss / d logits, (B, T, vocab), for the fused softmax-CE kernel tests."""
    fwd = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**fwd).logits.detach().requires_grad_(True)
    V = logits.shape[-1]
    torch.nn.CrossEntropyLoss()(logits.view(-1, V), batch["labels"].view(-1)).backward()  # HF's MLM loss
    return logits.grad.detach().clone()


def check_loss(logits, loss, labels, dtype) -> None:
    """Independent restatement: mean over labelled positions of -log_softmax gathered at the label."""
    keep = labels != -100
    logp = torch.log_softmax(logits, dim=-1)[keep]
    manual = -logp.gather(1, labels[keep][:, None])[:, 0].mean()
    rtol = 1e-12 if dtype == torch.float64 else 1e-6
    assert torch.allclose(manual, loss, rtol=rtol, atol=0), (manual, loss)


def reference_tensors(model, batch, dtype) -> tuple[dict, dict]:
    assert_tied(model)
    logits, loss, grads, h = forward_backward(model, batch)
    check_loss(logits, loss, batch["labels"], dtype)
    t = {"logits": logits, "loss": loss.reshape(1)}
    t.update({f"grad.{n}": g for n, g in grads.items()})
    dlogits = logits_grad(model, batch)
    t["logits_grad"] = dlogits
    # Word-embedding gradient = lookup part (row 0 zeroed: padding_idx) + tied decoder part (not zeroed).
    V, H = dlogits.shape[-1], h.shape[-1]
    decoder_part = dlogits.reshape(-1, V).T @ h.reshape(-1, H)
    t["grad_part.cls.predictions.decoder.weight"] = decoder_part
    we = grads["bert.embeddings.word_embeddings.weight"]
    lookup_part = we - decoder_part
    tol = 1e-15 if dtype == torch.float64 else 1e-8
    assert (lookup_part[0].abs().max() <= tol), lookup_part[0].abs().max()
    assert torch.allclose(grads["cls.predictions.bias"], dlogits.sum((0, 1)), rtol=0, atol=tol * 10)
    unused = sorted(set(range(V)) - set(batch["input_ids"].unique().tolist()))
    assert lookup_part[unused].abs().max() <= tol  # ids never looked up get only the decoder part
    info = {
        "row0_max_abs": we[0].abs().max().item(),
        "row0_decoder_part_max_abs": decoder_part[0].abs().max().item(),
        "row0_lookup_part_max_abs": lookup_part[0].abs().max().item(),
        "ids_looked_up": batch["input_ids"].unique().tolist(),
    }
    return t, info


def train_steps(model, batch) -> tuple[dict, dict]:
    """tiny_bert.py's 3 clipped AdamW steps (HF Trainer's groups, which here drop the tied alias
    cls.predictions.decoder.weight that Trainer's module walk also names); the ties must hold after."""
    t, info = tiny_bert.train_steps(model, batch)
    assert info.get("trainer_decay_names_not_in_named_parameters") == ["cls.predictions.decoder.weight"], info
    assert_tied(model)
    return t, info


def from_classifier_checkpoint() -> dict:
    """BertForMaskedLM.from_pretrained(<tiny-bert classifier folder>): HF's loading info and log."""
    assert (CLASSIFIER_DIR / "model.safetensors").exists(), "run tiny_bert.py first"
    with safe_open(str(CLASSIFIER_DIR / "model.safetensors"), "pt") as f:
        ckpt_keys = sorted(f.keys())
        ckpt_words = f.get_tensor("bert.embeddings.word_embeddings.weight")
    transformers.logging.disable_progress_bar()
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    transformers.logging.add_handler(handler)
    try:
        torch.manual_seed(0)  # the new head's random init (not recorded)
        model, info = BertForMaskedLM.from_pretrained(str(CLASSIFIER_DIR), output_loading_info=True)
    finally:
        transformers.logging.remove_handler(handler)
        transformers.logging.enable_progress_bar()
    assert_tied(model)
    p = model.cls.predictions
    assert torch.equal(p.decoder.weight.detach(), ckpt_words), "decoder is the loaded word embedding"
    # The newly initialised head (HF _init_weights): deterministic parts only.
    init = {
        "cls.predictions.bias_all_zero": bool((p.bias == 0).all()),
        "cls.predictions.transform.LayerNorm.weight_all_one": bool((p.transform.LayerNorm.weight == 1).all()),
        "cls.predictions.transform.LayerNorm.bias_all_zero": bool((p.transform.LayerNorm.bias == 0).all()),
        "cls.predictions.transform.dense.bias_all_zero": bool((p.transform.dense.bias == 0).all()),
        "cls.predictions.transform.dense.weight": "normal(0, initializer_range=0.02), random",
        "cls.predictions.decoder.weight": "tied: the checkpoint's bert.embeddings.word_embeddings.weight",
        "cls.predictions.decoder.bias": "tied: cls.predictions.bias",
    }
    assert all(v for k, v in init.items() if k.endswith(("_zero", "_one"))), init
    # HF's log: ANSI styling dropped, absolute path made repo-relative. The report's rows come
    # from sets (order varies with PYTHONHASHSEED), so they are kept sorted, not in printed order.
    text = re.sub(r"\x1b\[[0-9;]*m", "", buf.getvalue()).replace(str(CLASSIFIER_DIR), "test/fixtures/tiny-bert")
    messages, report = text.split("BertForMaskedLM LOAD REPORT")
    lines = report.splitlines()
    rows = sorted(tuple(c.strip() for c in ln.split("|")[:2]) for ln in lines if "|" in ln and "---" not in ln
                  and not ln.startswith("Key "))
    notes = [ln for ln in lines if ln.startswith("- ")]
    return {
        "call": "BertForMaskedLM.from_pretrained('test/fixtures/tiny-bert', output_loading_info=True)",
        "checkpoint_keys": ckpt_keys,
        "missing_keys": sorted(info["missing_keys"]),
        "unexpected_keys": sorted(info["unexpected_keys"]),
        "mismatched_keys": sorted(info["mismatched_keys"]),
        "error_msgs": list(info["error_msgs"]),
        "loading_info_types": {k: type(v).__name__ for k, v in info.items()},
        "warnings": [m for m in messages.strip().splitlines() if m],
        "load_report": {
            "title": "BertForMaskedLM LOAD REPORT" + lines[0],
            "rows_sorted": [list(r) for r in rows],
            "notes": notes,
        },
        "new_head_init": init,
    }


def reload_check(batch, logits32: torch.Tensor) -> dict:
    """from_pretrained(OUT) restores both ties from a file without decoder keys, and the same logits."""
    transformers.logging.disable_progress_bar()
    try:
        model, info = BertForMaskedLM.from_pretrained(str(OUT), output_loading_info=True, attn_implementation="eager")
    finally:
        transformers.logging.enable_progress_bar()
    assert_tied(model)
    assert not any(info.values()), info
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    assert torch.equal(logits, logits32), (logits - logits32).abs().max()
    return {"loading_info_all_empty": True, "ties_restored": True, "logits_equal_expected32": True}


def write_vocab() -> None:
    """A 100-token WordPiece vocab.txt so the folder is a loadable model folder: [PAD] 0, [UNK] 1,
    [CLS] 2, [MASK] 3 (the batch's mask id), [SEP] 4, then plain tokens."""
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[MASK]", "[SEP]"] + [f"w{i}" for i in range(5, CONFIG["vocab_size"])]
    (OUT / "vocab.txt").write_text("".join(t + "\n" for t in tokens), encoding="utf-8")


def main() -> None:
    deterministic()
    OUT.mkdir(parents=True, exist_ok=True)
    model = build_model()
    model.save_pretrained(OUT)  # config.json + float32 model.safetensors
    with safe_open(str(OUT / "model.safetensors"), "pt") as f:
        saved_keys = list(f.keys())
        saved_meta = f.metadata()
    batch, mlm_log = make_batch()

    m32 = copy.deepcopy(model)
    t32, _ = reference_tensors(m32, batch, torch.float32)

    m64 = copy.deepcopy(model).double()
    t64, we_info = reference_tensors(m64, batch, torch.float64)
    init = {n: p.detach().clone() for n, p in m64.named_parameters()}
    steps, info = train_steps(m64, batch)
    t64.update(steps)
    assert torch.equal(t64["step1.loss"], t64["loss"]), "step 1 must start from the saved weights"
    tiny_bert.replay_first_step(init, t64, set(info["decay"]))
    assert all(s["clipped"] for s in info["steps"]), f"clip_grad_norm_ did not clip: {info['steps']}"
    t64 = {k: v for k, v in t64.items() if not k.startswith("after1.")}
    # The same 3 steps in float32: how far torch's own float32 lands from float64 per tensor (AdamW's
    # g / sqrt(v) magnifies the round-off of near-zero gradients), the yardstick for the engine's.
    s32, _ = train_steps(copy.deepcopy(model), batch)
    after3_f32 = {k[len("after3."):]: ((s32[k].double() - t64[k]).abs().max() / t64[k].abs().max()).item()
                  for k in t64 if k.startswith("after3.")}
    write_vocab()

    save_file(tiny_bert.contiguous(t64), str(OUT / "expected.safetensors"), metadata={"dtype": "float64"})
    save_file(tiny_bert.contiguous(t32), str(OUT / "expected32.safetensors"), metadata={"dtype": "float32"})

    reloaded = reload_check(batch, t32["logits"])
    loaded = from_classifier_checkpoint()

    d32 = {k: (t32[k].double() - t64[k]).abs().max().item() for k in t32}
    write_json(OUT / "batch.json", {
        "input_ids": batch["input_ids"].tolist(),
        "attention_mask": batch["attention_mask"].tolist(),
        "token_type_ids": batch["token_type_ids"].tolist(),
        "labels": batch["labels"].tolist(),
        "mask_token_id": MASK_ID,
        "mlm_positions": mlm_log,
        "num_labelled": len(mlm_log),
        "model_safetensors_keys": saved_keys,
        "model_safetensors_metadata": saved_meta,
        "parameters": [[n, list(p.shape)] for n, p in model.named_parameters()],
        "tied": TIES,
        "reload_of_this_folder": reloaded,
        "word_embeddings_grad": we_info,
        "optimizer": {"name": "torch.optim.AdamW", "lr": LR, "betas": list(BETAS), "eps": EPS,
                      "weight_decay": WEIGHT_DECAY, "max_grad_norm": MAX_GRAD_NORM, "steps": STEPS},
        "param_groups": {k: info[k] for k in ("decay_tensors", "no_decay_tensors", "decay", "no_decay",
                                              "trainer_decay_names_not_in_named_parameters")},
        "train_log": info["steps"],
        "float32_vs_float64_max_abs_diff": {
            "logits": d32["logits"], "loss": d32["loss"],
            "grads": max(v for k, v in d32.items() if k.startswith("grad.")),
        },
        "float32_after3_rel_err": after3_f32,
        "from_classifier_checkpoint": loaded,
        "versions": versions(),
    })
    make_readable(OUT)
    print(f"wrote {OUT}")
    print("model.safetensors keys:", len(saved_keys), saved_keys)
    print(f"loss={t64['loss'].item():.10f} groups decay={info['decay_tensors']} no_decay={info['no_decay_tensors']}")
    print("word_embeddings grad row 0:", we_info)
    for s in info["steps"]:
        print(f"step {s['step']}: loss={s['loss']:.8f} grad_norm={s['grad_norm']:.6f} -> {s['grad_norm_after_clip']:.6f}")
    print("fp32 vs fp64 max|d|:", {k: f"{v:.2e}" for k, v in d32.items() if not k.startswith("grad")},
          "grads", f"{max(v for k, v in d32.items() if k.startswith('grad.')):.2e}")
    print("from classifier: missing", loaded["missing_keys"], "unexpected", loaded["unexpected_keys"])


if __name__ == "__main__":
    main()
