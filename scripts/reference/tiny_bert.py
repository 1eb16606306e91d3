"""Whole-model parity reference for the native engine: test/fixtures/tiny-bert/.

Builds a tiny random BertForSequenceClassification (HF transformers, eager
attention, dropout off), perturbs every LayerNorm parameter and bias so that a
kernel which ignores them cannot pass, and records from float64 PyTorch:
logits, loss, the gradient of every parameter, three clipped AdamW steps with
HF Trainer's two parameter groups, and a class-weighted, label-smoothed
cross-entropy sub-case. The same forward/backward in float32 goes to
expected32.safetensors for information.

Run: python3 scripts/reference/tiny_bert.py   (offline, deterministic, ~seconds)
"""

from __future__ import annotations

import copy

from common import FIXTURES, deterministic, make_readable, versions, write_json  # before HF: offline mode

import torch
from safetensors.torch import save_file
from transformers import BertConfig, BertForSequenceClassification, Trainer

OUT = FIXTURES / "tiny-bert"

CONFIG = dict(
    vocab_size=100,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=64,
    type_vocab_size=2,
    num_labels=5,
    layer_norm_eps=1e-12,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
    initializer_range=0.02,
)

# AdamW + clipping exactly as the engine's tests replay them.
LR, BETAS, EPS, WEIGHT_DECAY, MAX_GRAD_NORM, STEPS = 1e-2, (0.9, 0.999), 1e-8, 0.01, 0.5, 3
CLASS_WEIGHTS = [0.5, 1.0, 2.0, 1.5, 0.8]
LABEL_SMOOTHING = 0.1
LENGTHS = [7, 5, 3]
T = 7


def build_model(model_class=BertForSequenceClassification, config_fields: dict = CONFIG):
    """Random init with torch.manual_seed(0), then non-trivial LayerNorm params and biases
    (named_parameters() lists a tied tensor once, so each is perturbed once)."""
    torch.manual_seed(0)
    config = BertConfig(**config_fields)
    model = model_class(config)
    model.config._attn_implementation = "eager"  # read at forward time by every BertSelfAttention
    assert model.bert.encoder.layer[0].attention.self.config._attn_implementation == "eager"
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm.weight" in name:
                p.add_(0.1 * torch.randn(p.shape, generator=gen))
            elif name.endswith(".bias"):  # includes LayerNorm.bias (and a masked LM's cls.predictions.bias)
                p.add_(0.05 * torch.randn(p.shape, generator=gen))
    model.eval()  # dropout is 0 anyway; eval keeps it that way under any config edit
    return model


def make_batch() -> dict:
    """B=3, T=7 right-padded batch; row 0 mixes token_type_ids 0/1; ids in [1, 100); labels (B)."""
    gen = torch.Generator().manual_seed(2)
    input_ids = torch.randint(1, CONFIG["vocab_size"], (len(LENGTHS), T), generator=gen)
    attention_mask = torch.zeros_like(input_ids)
    token_type_ids = torch.zeros_like(input_ids)
    for b, n in enumerate(LENGTHS):
        attention_mask[b, :n] = 1
    input_ids = input_ids * attention_mask  # padded ids = 0 ([PAD])
    token_type_ids[0, 4:] = 1
    token_type_ids[1, 2:5] = 1  # second segment inside row 1 too, ends before its padding
    labels = torch.tensor([1, 4, 2])
    return dict(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, labels=labels)


def decay_groups(model) -> tuple[list[str], list[str], list[str]]:
    """HF Trainer's own split (Trainer.get_decay_parameter_names does not use self).

    Trainer walks modules, so its list may also name tied aliases (a masked LM's
    cls.predictions.decoder.weight); Trainer keeps only names from named_parameters(), as done
    here. The third result lists those extra names (none for the classifier).
    """
    trainer = Trainer.get_decay_parameter_names(None, model)
    names = [n for n, _ in model.named_parameters()]
    decay = set(trainer) & set(names)
    extra = [n for n in trainer if n not in set(names)]
    rule = {n for n in names if "bias" not in n and "LayerNorm.weight" not in n}
    assert decay == rule, f"Trainer grouping differs from the documented rule: {sorted(decay ^ rule)}"
    return [n for n in names if n in decay], [n for n in names if n not in decay], extra


def forward_backward(model, batch) -> tuple[torch.Tensor, torch.Tensor, dict]:
    model.zero_grad(set_to_none=True)
    out = model(**batch)
    out.loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    return out.logits.detach().clone(), out.loss.detach().clone(), grads


def logits_grad(model, batch, loss_fn) -> torch.Tensor:
    """d loss / d logits, (B, num_labels), for the fused softmax-CE kernel tests."""
    fwd = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**fwd).logits.detach().requires_grad_(True)
    loss_fn(logits, batch["labels"]).backward()
    return logits.grad.detach().clone()


def weighted_smoothed_case(model, batch, dtype) -> dict:
    """CrossEntropyLoss(weight=w, label_smoothing=0.1), mean over sum of w[label] (PyTorch semantics)."""
    w = torch.tensor(CLASS_WEIGHTS, dtype=dtype)
    loss_fn = torch.nn.CrossEntropyLoss(weight=w, label_smoothing=LABEL_SMOOTHING)
    fwd = {k: v for k, v in batch.items() if k != "labels"}
    model.zero_grad(set_to_none=True)
    logits = model(**fwd).logits
    loss = loss_fn(logits, batch["labels"])
    loss.backward()
    # Independent restatement of the formula the engine implements; guards the fixture.
    logp = torch.log_softmax(logits.detach(), dim=-1)
    y = batch["labels"]
    eps, C = LABEL_SMOOTHING, logits.shape[-1]
    per = (1 - eps) * w[y] * -logp.gather(1, y[:, None])[:, 0] + (eps / C) * (-(logp * w).sum(-1))
    manual = per.sum() / w[y].sum()
    assert torch.allclose(manual, loss.detach(), rtol=1e-6, atol=0), (manual, loss)
    return {
        "ce_weighted.loss": loss.detach().reshape(1).clone(),
        "ce_weighted.grad.classifier.weight": model.classifier.weight.grad.detach().clone(),
        "ce_weighted.grad.classifier.bias": model.classifier.bias.grad.detach().clone(),
        "ce_weighted.logits_grad": logits_grad(model, batch, loss_fn),
    }


def reference_tensors(model, batch, dtype) -> dict:
    logits, loss, grads = forward_backward(model, batch)
    t = {"logits": logits, "loss": loss.reshape(1)}
    t.update({f"grad.{n}": g for n, g in grads.items()})
    t["logits_grad"] = logits_grad(model, batch, torch.nn.CrossEntropyLoss())
    t.update(weighted_smoothed_case(model, batch, dtype))
    return t


def train_steps(model, batch) -> tuple[dict, dict]:
    """STEPS x (forward, loss, backward, clip_grad_norm_, AdamW.step, zero_grad)."""
    decay, no_decay, extra = decay_groups(model)
    params = dict(model.named_parameters())
    opt = torch.optim.AdamW(
        [
            {"params": [params[n] for n in decay], "weight_decay": WEIGHT_DECAY},
            {"params": [params[n] for n in no_decay], "weight_decay": 0.0},
        ],
        lr=LR, betas=BETAS, eps=EPS, foreach=False,
    )
    t, info = {}, {"steps": []}
    model.zero_grad(set_to_none=True)  # earlier reference passes leave .grad behind
    for k in range(1, STEPS + 1):
        out = model(**batch)
        out.loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=MAX_GRAD_NORM)
        clipped = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in model.parameters()))
        opt.step()
        opt.zero_grad(set_to_none=True)
        if k == 1:
            t.update({f"after1.{n}": p.detach().clone() for n, p in model.named_parameters()})
        t[f"step{k}.loss"] = out.loss.detach().reshape(1).clone()
        t[f"step{k}.grad_norm"] = norm.detach().reshape(1).clone()
        info["steps"].append({"step": k, "loss": out.loss.item(), "grad_norm": norm.item(),
                              "grad_norm_after_clip": clipped.item(), "clipped": bool(norm.item() > MAX_GRAD_NORM)})
    t.update({f"after3.{n}": p.detach().clone() for n, p in model.named_parameters()})
    info.update(decay_tensors=len(decay), no_decay_tensors=len(no_decay), decay=decay, no_decay=no_decay)
    if extra:
        info["trainer_decay_names_not_in_named_parameters"] = extra
    return t, info


def replay_first_step(init: dict, t: dict, decay: set) -> None:
    """Restates clip_grad_norm_ + AdamW step 1 by formula; guards the fixture and the README's description."""
    norm = torch.sqrt(sum((t[f"grad.{n}"] ** 2).sum() for n in init))
    assert torch.allclose(norm, t["step1.grad_norm"][0], rtol=1e-12), (norm.item(), t["step1.grad_norm"].item())
    coef = min(1.0, MAX_GRAD_NORM / (norm.item() + 1e-6))
    b1, b2 = BETAS
    for n, p0 in init.items():
        g = t[f"grad.{n}"] * coef
        p = p0.double() * (1 - LR * (WEIGHT_DECAY if n in decay else 0.0))
        m, v = (1 - b1) * g, (1 - b2) * g * g
        p = p - (LR / (1 - b1)) * m / (v.sqrt() / (1 - b2) ** 0.5 + EPS)
        assert torch.allclose(p, t[f"after1.{n}"], rtol=0, atol=1e-12), n


def contiguous(t: dict) -> dict:
    return {k: v.contiguous() for k, v in t.items()}


def main() -> None:
    deterministic()
    OUT.mkdir(parents=True, exist_ok=True)
    model = build_model()
    model.save_pretrained(OUT)  # config.json (architectures, id2label, ...) + float32 model.safetensors
    batch = make_batch()

    m32 = copy.deepcopy(model)
    t32 = reference_tensors(m32, batch, torch.float32)

    m64 = copy.deepcopy(model).double()
    t64 = reference_tensors(m64, batch, torch.float64)
    init = {n: p.detach().clone() for n, p in m64.named_parameters()}
    steps, info = train_steps(m64, batch)
    t64.update(steps)
    assert torch.equal(t64["step1.loss"], t64["loss"]), "step 1 must start from the saved weights"
    replay_first_step(init, t64, set(info["decay"]))
    assert all(s["clipped"] for s in info["steps"]), f"clip_grad_norm_ did not clip: {info['steps']}"

    save_file(contiguous(t64), str(OUT / "expected.safetensors"), metadata={"dtype": "float64"})
    save_file(contiguous(t32), str(OUT / "expected32.safetensors"), metadata={"dtype": "float32"})

    d32 = {k: (t32[k].double() - t64[k]).abs().max().item() for k in t32}
    write_json(OUT / "batch.json", {
        "input_ids": batch["input_ids"].tolist(),
        "attention_mask": batch["attention_mask"].tolist(),
        "token_type_ids": batch["token_type_ids"].tolist(),
        "labels": batch["labels"].tolist(),
        "class_weights": CLASS_WEIGHTS,
        "label_smoothing": LABEL_SMOOTHING,
        "optimizer": {"name": "torch.optim.AdamW", "lr": LR, "betas": list(BETAS), "eps": EPS,
                      "weight_decay": WEIGHT_DECAY, "max_grad_norm": MAX_GRAD_NORM, "steps": STEPS},
        "param_groups": {k: info[k] for k in ("decay_tensors", "no_decay_tensors", "decay", "no_decay")},
        "train_log": info["steps"],
        "float32_vs_float64_max_abs_diff": {
            "logits": d32["logits"], "loss": d32["loss"],
            "grads": max(v for k, v in d32.items() if k.startswith("grad.")),
        },
        "versions": versions(),
    })
    make_readable(OUT)
    print(f"wrote {OUT}")
    print(f"loss={t64['loss'].item():.10f} groups decay={info['decay_tensors']} no_decay={info['no_decay_tensors']}")
    for s in info["steps"]:
        print(f"step {s['step']}: loss={s['loss']:.8f} grad_norm={s['grad_norm']:.6f} -> {s['grad_norm_after_clip']:.6f}")
    print("fp32 vs fp64 max|d|:", {k: f"{v:.2e}" for k, v in d32.items() if not k.startswith("grad.")},
          "grads", f"{max(v for k, v in d32.items() if k.startswith('grad.')):.2e}")


if __name__ == "__main__":
    main()
