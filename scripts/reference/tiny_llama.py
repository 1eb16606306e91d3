"""Whole-model parity references for the decoder engine: test/fixtures/tiny-llama/, tiny-qwen2/.

Builds two tiny random causal LMs with HF transformers (eager attention, dropout
off) — a LlamaForCausalLM (GQA, llama3 RoPE scaling, tied embeddings) and a
Qwen2ForCausalLM (q/k/v biases, untied lm_head) — perturbs every RMSNorm weight
and bias so that a kernel which ignores them cannot pass, and records in
float64, on one batch with right and left padding and -100 labels:

- logits, loss, and the gradient of every parameter (full fine-tuning);
- 3 optimizer steps of gradient accumulation over two micro-batches with
  different token counts (loss normalised by the step's total target count, as
  transformers PR #34191), clip_grad_norm_, AdamW with HF Trainer's two
  parameter groups;
- the same with PEFT LoRA (r 4, alpha 8, all-linear; lora_B drawn non-zero and
  saved so the engine can start from the same adapter), and the rsLoRA logits/loss.

HF's modules upcast to float32 in four places (RMSNorm, the eager softmax, the
RoPE cos/sin, and the causal-LM loss). In a float64 model that makes HF compute
in float32 and, with left padding, return NaN (a fully masked query row becomes
-inf after the cast). The float64 references therefore run HF's own modules
with those casts removed (`exact_float64`; the copies are checked to be bitwise
identical to HF in float32) and compute the loss with HF's formula in float64.

Run: python3 scripts/reference/tiny_llama.py   (offline, deterministic, ~seconds)
"""

from __future__ import annotations

import contextlib
import copy
import math
import time

from common import FIXTURES, deterministic, make_readable, versions, write_json  # before HF: offline mode

import peft
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM, Trainer
from transformers.models.llama import modeling_llama
from transformers.models.qwen2 import modeling_qwen2

COMMON = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=64,
    hidden_act="silu",
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
    attention_dropout=0.0,
    initializer_range=0.1,  # not HF's 0.02: at 0.02 attention is near uniform and dropping RoPE moves logits 0.3%
)
MODELS = {
    "tiny-llama": (LlamaConfig, LlamaForCausalLM, dict(
        COMMON,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 16},
        tie_word_embeddings=True,
        attention_bias=False,
        mlp_bias=False,
    )),
    "tiny-qwen2": (Qwen2Config, Qwen2ForCausalLM, dict(
        COMMON,
        rms_norm_eps=1e-6,
        rope_theta=1000000.0,
        rope_scaling=None,
        tie_word_embeddings=False,  # Qwen2Attention has q/k/v biases built in (no o_proj bias)
    )),
}

# AdamW + clipping exactly as the engine's tests replay them (same settings as tiny_bert.py).
LR, BETAS, EPS, WEIGHT_DECAY, MAX_GRAD_NORM, STEPS = 1e-2, (0.9, 0.999), 1e-8, 0.01, 0.5, 3
LORA = dict(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0, bias="none")
LORA_B_STD = 0.05
T = 8
REAL = [8, 5, 4, 3]  # real tokens per row: rows 0-2 are the batch, row 3 is micro_b
LEFT_PADDED = [False, False, True, False]
EXTRA_IGNORED_ROW0 = [1, 2]  # two more prompt positions of row 0 carry label -100
IGNORE = -100


# --------------------------------------------------------------------------- float64 that is float64

def _rmsnorm_forward(self, hidden_states):
    """HF LlamaRMSNorm/Qwen2RMSNorm.forward without `.to(torch.float32)`."""
    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
    return self.weight * hidden_states


def _rotary_forward(self, x, position_ids):
    """HF LlamaRotaryEmbedding.forward computing in inv_freq's dtype instead of float32
    (its @dynamic_rope_update is a no-op for the "default" and "llama3" rope types)."""
    freqs = position_ids[..., None].to(self.inv_freq.dtype) * self.inv_freq.to(x.device)
    emb = torch.cat((freqs, freqs), dim=-1)
    cos = emb.cos() * self.attention_scaling
    sin = emb.sin() * self.attention_scaling
    return cos.to(dtype=x.dtype), sin.to(dtype=x.dtype)


_KV_MAP = {"mode": "hf"}  # "modulo": query head h uses kv head h % num_kv (a wrong GQA map, sensitivity only)


def _eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """HF eager_attention_forward with the softmax in the query's dtype instead of float32."""
    if _KV_MAP["mode"] == "hf":
        key_states = modeling_llama.repeat_kv(key, module.num_key_value_groups)
        value_states = modeling_llama.repeat_kv(value, module.num_key_value_groups)
    else:
        key_states = key.repeat(1, module.num_key_value_groups, 1, 1)
        value_states = value.repeat(1, module.num_key_value_groups, 1, 1)
    attn_weights = torch.matmul(query, key_states.transpose(2, 3)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = torch.nn.functional.softmax(attn_weights, dim=-1, dtype=query.dtype)
    attn_weights = torch.nn.functional.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value_states)
    attn_output = attn_output.transpose(1, 2).contiguous()
    return attn_output, attn_weights


@contextlib.contextmanager
def exact_float64():
    """Run HF's Llama/Qwen2 modules without their float32 upcasts (no-ops for a float32 model)."""
    saved = []
    for owner, attr, new in [
        (modeling_llama, "eager_attention_forward", _eager_attention_forward),
        (modeling_qwen2, "eager_attention_forward", _eager_attention_forward),
        (modeling_llama.LlamaRMSNorm, "forward", _rmsnorm_forward),
        (modeling_qwen2.Qwen2RMSNorm, "forward", _rmsnorm_forward),
        (modeling_llama.LlamaRotaryEmbedding, "forward", _rotary_forward),
        (modeling_qwen2.Qwen2RotaryEmbedding, "forward", _rotary_forward),
    ]:
        saved.append((owner, attr, getattr(owner, attr)))
        setattr(owner, attr, new)
    try:
        yield
    finally:
        for owner, attr, old in saved:
            setattr(owner, attr, old)


def rope_table(config) -> tuple[torch.Tensor, list[dict]]:
    """inv_freq in float64 by the formulas the README states (HF computes it in float32)."""
    rp = config.rope_parameters
    d = config.head_dim
    base = 1.0 / rp["rope_theta"] ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    rows = []
    if rp["rope_type"] == "default":
        return base, [{"i": i, "inv_freq": base[i].item(), "band": "unscaled"} for i in range(d // 2)]
    assert rp["rope_type"] == "llama3", rp
    factor, lo, hi, old = (rp[k] for k in ("factor", "low_freq_factor", "high_freq_factor",
                                           "original_max_position_embeddings"))
    out = base.clone()
    for i in range(d // 2):
        wavelen = 2 * math.pi / base[i].item()
        if wavelen < old / hi:
            band, f = "high: unchanged", base[i].item()
        elif wavelen > old / lo:
            band, f = "low: inv_freq / factor", base[i].item() / factor
        else:
            s = (old / wavelen - lo) / (hi - lo)
            band, f = f"medium: smoothed (smooth={s:.6f})", (1 - s) * base[i].item() / factor + s * base[i].item()
        out[i] = f
        rows.append({"i": i, "inv_freq_unscaled": base[i].item(), "wavelen": wavelen, "band": band,
                     "inv_freq": f})
    return out, rows


def to_float64(model):
    """model.double() plus a float64 inv_freq (HF's buffer holds float32-computed values)."""
    m = copy.deepcopy(model).double()
    rotary = m.model.rotary_emb
    inv, _ = rope_table(m.config)
    assert torch.allclose(inv, rotary.inv_freq, rtol=1e-6, atol=0), (inv, rotary.inv_freq)
    rotary.inv_freq = inv.clone()
    rotary.original_inv_freq = inv.clone()
    return m


# --------------------------------------------------------------------------- model, batch, loss

def build_model(name: str):
    """Random init after torch.manual_seed(0), then non-trivial RMSNorm weights and biases."""
    config_cls, model_cls, kw = MODELS[name]
    torch.manual_seed(0)
    config = config_cls(**copy.deepcopy(kw), attn_implementation="eager")  # HF edits rope_scaling in place
    model = model_cls(config)
    assert model.config._attn_implementation == "eager"
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("norm.weight"):  # input_layernorm, post_attention_layernorm, model.norm
                p.add_(0.1 * torch.randn(p.shape, generator=gen))
            elif n.endswith(".bias"):
                p.add_(0.05 * torch.randn(p.shape, generator=gen))
    model.eval()
    return model


def make_rows() -> dict:
    """4 rows of T=8: row 0 full, row 1 right-padded (5), row 2 left-padded (4), row 3 = micro_b (3, right)."""
    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(3, COMMON["vocab_size"], (len(REAL), T), generator=gen)
    mask = torch.zeros_like(ids)
    for b, (n, left) in enumerate(zip(REAL, LEFT_PADDED)):
        if left:
            mask[b, T - n:] = 1
        else:
            mask[b, :n] = 1
    ids = ids * mask  # padded ids = pad_token_id 0
    labels = ids.masked_fill(mask == 0, IGNORE)
    first = mask.argmax(-1)  # first real token of every row
    labels[torch.arange(len(REAL)), first] = IGNORE
    labels[0, EXTRA_IGNORED_ROW0] = IGNORE
    return dict(input_ids=ids, attention_mask=mask, labels=labels)


def take(rows: dict, idx: list[int]) -> dict:
    return {k: v[idx].clone() for k, v in rows.items()}


def position_ids(mask: torch.Tensor) -> torch.Tensor:
    """The engine's convention: positions follow the mask (left padding starts at 0 on the first real token)."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


def forward(model, batch) -> torch.Tensor:
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                 position_ids=position_ids(batch["attention_mask"])).logits


def loss_sum(logits, labels) -> tuple[torch.Tensor, int]:
    """HF ForCausalLMLoss in the logits' dtype: logits[:, :-1] predict labels[:, 1:]; sum over non-ignored."""
    tgt = labels[:, 1:].reshape(-1)
    s = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), tgt, ignore_index=IGNORE, reduction="sum")
    return s, int((tgt != IGNORE).sum())


def check_pad_never_counts(batch) -> None:
    """No padded position's logits may feed the loss: padded t predicts labels[t+1], which must be -100;
    and no padded position is a target."""
    mask, labels = batch["attention_mask"], batch["labels"]
    assert bool((labels[mask == 0] == IGNORE).all())
    assert bool((labels[:, 1:][mask[:, :-1] == 0] == IGNORE).all()), "a padded position's logits reach the loss"


def decay_groups(model) -> tuple[list[str], list[str]]:
    """HF Trainer's own split (get_decay_parameter_names does not use self), trainable parameters only."""
    decay = set(Trainer.get_decay_parameter_names(None, model))
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    return [n for n in names if n in decay], [n for n in names if n not in decay]


# --------------------------------------------------------------------------- reference computations

def full_reference(m64, batch) -> tuple[dict, torch.Tensor]:
    m64.zero_grad(set_to_none=True)
    logits = forward(m64, batch)
    s, n = loss_sum(logits, batch["labels"])
    loss = s / n
    loss.backward()
    t = {"logits": logits.detach().clone(), "loss": loss.detach().reshape(1).clone()}
    t.update({f"grad.{k}": p.grad.detach().clone() for k, p in m64.named_parameters()})
    m64.zero_grad(set_to_none=True)
    return t, logits.detach()


def train_replay(model, names: dict, micro: list[dict], prefix: str) -> tuple[dict, dict, dict]:
    """STEPS x (for each micro-batch: forward, sum of token losses / N_step, backward), clip, AdamW, zero_grad.

    names: parameter name in `model` -> name written to the fixture (HF names, or PEFT state-dict names)."""
    params = dict(model.named_parameters())
    decay, no_decay = decay_groups(model)
    assert set(decay) | set(no_decay) == set(names)
    opt = torch.optim.AdamW(
        [{"params": [params[n] for n in decay], "weight_decay": WEIGHT_DECAY},
         {"params": [params[n] for n in no_decay], "weight_decay": 0.0}],
        lr=LR, betas=BETAS, eps=EPS, foreach=False,
    )
    counts = [int((mb["labels"][:, 1:] != IGNORE).sum()) for mb in micro]
    n_step = sum(counts)
    trainable = [params[n] for n in names]
    t, log = {}, []
    model.zero_grad(set_to_none=True)
    first_grads = None
    for k in range(1, STEPS + 1):
        total, per_mb = 0.0, []
        for mb in micro:
            s, _ = loss_sum(forward(model, mb), mb["labels"])
            (s / n_step).backward()
            total = total + s.detach()
            per_mb.append(s.item())
        if k == 1:
            first_grads = {n: params[n].grad.detach().clone() for n in names}
        norm = torch.nn.utils.clip_grad_norm_(trainable, max_norm=MAX_GRAD_NORM)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss = total / n_step
        t[f"{prefix}step{k}.loss"] = loss.reshape(1).clone()
        t[f"{prefix}step{k}.grad_norm"] = norm.detach().reshape(1).clone()
        log.append({"step": k, "loss": loss.item(), "grad_norm": norm.item(),
                    "clipped": bool(norm.item() > MAX_GRAD_NORM),
                    "micro_batch_loss_sums": per_mb,
                    "mean_of_micro_batch_means_wrong":
                        sum(s_ / c for s_, c in zip(per_mb, counts)) / len(counts)})
    t.update({f"{prefix}after{STEPS}.{names[n]}": params[n].detach().clone() for n in names})
    info = {"train_log": log, "decay": [names[n] for n in decay], "no_decay": [names[n] for n in no_decay],
            "micro_batch_target_counts": counts, "num_items_in_batch": n_step}
    return t, info, first_grads


def check_accumulation(model, micro, first_grads, names) -> float:
    """Accumulated gradient of step 1 == gradient of one forward over all micro-batch rows (one mean)."""
    model.zero_grad(set_to_none=True)
    joint = {k: torch.cat([mb[k] for mb in micro]) for k in micro[0]}
    s, n = loss_sum(forward(model, joint), joint["labels"])
    (s / n).backward()
    worst = 0.0
    for k in names:
        g = dict(model.named_parameters())[k].grad
        worst = max(worst, ((g - first_grads[k]).abs().max() / first_grads[k].abs().max().clamp(min=1e-300)).item())
    model.zero_grad(set_to_none=True)
    assert worst < 1e-12, worst
    return worst


def lora_model(model, use_rslora: bool, init: dict | None):
    """PEFT LoRA on a float64 copy. First call: keep PEFT's Kaiming-uniform lora_A (torch.manual_seed(3)),
    draw lora_B ~ N(0, 0.05^2) (generator seed 4), round both to float32. Later calls load `init`."""
    base = to_float64(model)
    torch.manual_seed(3)
    pm = get_peft_model(base, LoraConfig(**LORA, use_rslora=use_rslora))
    names = {n: n.replace(".default.", ".") for n, p in pm.named_parameters() if p.requires_grad}
    sd_names = set(get_peft_model_state_dict(pm).keys())
    assert set(names.values()) == sd_names, sorted(set(names.values()) ^ sd_names)
    params = dict(pm.named_parameters())
    with torch.no_grad():
        if init is None:
            gen = torch.Generator().manual_seed(4)
            for n in names:
                if ".lora_B." in n:
                    params[n].copy_(LORA_B_STD * torch.randn(params[n].shape, generator=gen, dtype=torch.float64))
                params[n].copy_(params[n].float().double())  # the engine loads the float32 file
            init = {names[n]: params[n].detach().float().clone() for n in names}
        else:
            for n in names:
                params[n].copy_(init[names[n]].double())
    return pm, names, init


def lora_reference(pm, names, batch, prefix) -> dict:
    pm.zero_grad(set_to_none=True)
    logits = forward(pm, batch)
    s, n = loss_sum(logits, batch["labels"])
    (s / n).backward()
    params = dict(pm.named_parameters())
    t = {f"{prefix}logits": logits.detach().clone(), f"{prefix}loss": (s / n).detach().reshape(1).clone()}
    t.update({f"{prefix}grad.{names[k]}": params[k].grad.detach().clone() for k in names})
    for k in names:
        assert params[k].grad.abs().max() > 0, f"zero gradient for {k}"
    pm.zero_grad(set_to_none=True)
    return t


def restated_forward(sd: dict, cfg, batch: dict, lora: dict | None = None, scaling: float = 0.0) -> torch.Tensor:
    """The model written out from the README's description (float64, no HF code), for all positions.

    sd: HF parameter names -> float64 tensors; lora: PEFT state-dict names -> lora_A/lora_B, merged as
    W + scaling * B @ A. Guards the fixture and the README's statement of the semantics."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    B, T_ = ids.shape
    H, KV, D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    eps = cfg.rms_norm_eps
    inv_freq, _ = rope_table(cfg)
    ang = position_ids(mask).double()[..., None] * inv_freq  # (B, T, D/2)
    cos = torch.cat([ang.cos(), ang.cos()], -1)[:, None]  # (B, 1, T, D)
    sin = torch.cat([ang.sin(), ang.sin()], -1)[:, None]
    allowed = torch.ones(T_, T_, dtype=torch.bool).tril()[None] & mask.bool()[:, None, :]  # (B, Tq, Tk)
    additive = torch.zeros(allowed.shape, dtype=torch.float64).masked_fill(~allowed, torch.finfo(torch.float64).min)
    additive = additive[:, None]  # (B, 1, Tq, Tk): HF's additive mask
    kv_of_head = torch.arange(H) // (H // KV)  # query head h uses key/value head h // (H / KV)

    def weight(name):
        w = sd[name + ".weight"]
        if lora is not None and f"base_model.model.{name}.lora_A.weight" in lora:
            w = w + scaling * lora[f"base_model.model.{name}.lora_B.weight"] @ lora[f"base_model.model.{name}.lora_A.weight"]
        return w

    def lin(x, name):
        y = x @ weight(name).T
        return y + sd[name + ".bias"] if name + ".bias" in sd else y

    def rms(x, name):
        return sd[name + ".weight"] * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))

    def rope(x):  # rotate_half: dimension i pairs with i + D/2
        return x * cos + torch.cat([-x[..., D // 2:], x[..., : D // 2]], -1) * sin

    h = sd["model.embed_tokens.weight"][ids]
    for layer in range(cfg.num_hidden_layers):
        p = f"model.layers.{layer}."
        x = rms(h, p + "input_layernorm")
        q = rope(lin(x, p + "self_attn.q_proj").view(B, T_, H, D).transpose(1, 2))
        k = rope(lin(x, p + "self_attn.k_proj").view(B, T_, KV, D).transpose(1, 2))
        v = lin(x, p + "self_attn.v_proj").view(B, T_, KV, D).transpose(1, 2)
        scores = q @ k[:, kv_of_head].transpose(-1, -2) / math.sqrt(D) + additive
        a = (torch.softmax(scores, -1) @ v[:, kv_of_head]).transpose(1, 2).reshape(B, T_, H * D)
        h = h + lin(a, p + "self_attn.o_proj")
        x = rms(h, p + "post_attention_layernorm")
        h = h + lin(F.silu(lin(x, p + "mlp.gate_proj")) * lin(x, p + "mlp.up_proj"), p + "mlp.down_proj")
    h = rms(h, "model.norm")
    return h @ (sd["lm_head.weight"] if "lm_head.weight" in sd else sd["model.embed_tokens.weight"]).T


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| (b the float64 reference)."""
    return ((a.double() - b).abs().max() / b.abs().max()).item()


def real(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return x[mask.bool()]


# --------------------------------------------------------------------------- one model

def run_model(name: str, rows: dict) -> dict:
    out = FIXTURES / name
    out.mkdir(parents=True, exist_ok=True)
    model = build_model(name)
    model.save_pretrained(out)  # config.json, generation_config.json, float32 model.safetensors
    cfg = model.config
    batch = take(rows, [0, 1, 2])
    micro = [take(rows, [0, 1]), take(rows, [2, 3])]
    for b in [batch, *micro]:
        check_pad_never_counts(b)
    mask = batch["attention_mask"]
    hf_names = [n for n, _ in model.named_parameters()]
    report: dict = {}

    # HF float32, untouched: the float32 information and the check that exact_float64 copies HF exactly.
    m32 = copy.deepcopy(model)
    with torch.no_grad():
        logits32 = forward(m32, batch)
        with exact_float64():
            same = forward(m32, batch)
        assert torch.equal(same, logits32), "exact_float64 changed a float32 forward"
        s32, n32 = loss_sum(logits32, batch["labels"])
        hf_loss32 = m32(**batch, position_ids=position_ids(mask)).loss
        assert torch.allclose(hf_loss32, s32 / n32, rtol=1e-6), (hf_loss32, s32 / n32)
        n_step = sum(int((mb["labels"][:, 1:] != IGNORE).sum()) for mb in micro)
        hf_mb = m32(**micro[0], position_ids=position_ids(micro[0]["attention_mask"]),
                    num_items_in_batch=torch.tensor(n_step)).loss  # HF with num_items_in_batch: sum / N
        s_mb, _ = loss_sum(forward(m32, micro[0]), micro[0]["labels"])
        assert torch.allclose(hf_mb, s_mb / n_step, rtol=1e-6), (hf_mb, s_mb / n_step)

    m64 = to_float64(model)
    with torch.no_grad():  # HF's own float64 (with its float32 casts): information only
        hf64 = forward(to_float64(model), batch)
    nan_rows = [b for b in range(hf64.shape[0]) if bool(torch.isnan(hf64[b]).any())]
    ok_rows = [b for b in range(hf64.shape[0]) if b not in nan_rows]

    with exact_float64():
        t, logits64 = full_reference(m64, batch)
        loss64 = t["loss"][0]
        assert 0 < rel(hf64[ok_rows], logits64[ok_rows]) < 1e-5

        # positions follow the mask: every padded row equals the same tokens unpadded, at its real tokens
        pad_checks = {}
        with torch.no_grad():
            for b in (1, 2):
                r = mask[b].bool()
                alone = forward(m64, {"input_ids": batch["input_ids"][b][r][None],
                                      "attention_mask": torch.ones(1, int(r.sum()), dtype=mask.dtype)})[0]
                d = (logits64[b][r] - alone).abs().max().item()
                assert d < 1e-10, (b, d)
                pad_checks[f"row{b}_vs_unpadded_max_abs_diff"] = d
            # row 2's tokens right-padded instead of left-padded
            r = mask[2].bool()
            n_real = int(r.sum())
            ids_r = torch.zeros(1, T, dtype=torch.long)
            ids_r[0, :n_real] = batch["input_ids"][2][r]
            mask_r = torch.zeros(1, T, dtype=mask.dtype)
            mask_r[0, :n_real] = 1
            right = forward(m64, {"input_ids": ids_r, "attention_mask": mask_r})[0]
            d = (logits64[2][r] - right[:n_real]).abs().max().item()
            assert d < 1e-10, d
            pad_checks["row2_left_vs_right_padded_max_abs_diff"] = d

            # what the fixture catches (forward only, real tokens): a few plausible engine bugs
            sens = {}
            plain = m64.model.rotary_emb.inv_freq.clone()
            if cfg.rope_parameters["rope_type"] == "llama3":
                m64.model.rotary_emb.inv_freq = 1.0 / cfg.rope_parameters["rope_theta"] ** (
                    torch.arange(0, cfg.head_dim, 2, dtype=torch.float64) / cfg.head_dim)
                sens["llama3_scaling_ignored"] = rel(real(forward(m64, batch), mask), real(logits64, mask))
                medium = plain.clone()
                medium[0] = m64.model.rotary_emb.inv_freq[0]  # the one smoothed frequency left unscaled
                m64.model.rotary_emb.inv_freq = medium
                sens["llama3_medium_band_left_unscaled"] = rel(real(forward(m64, batch), mask), real(logits64, mask))
                m64.model.rotary_emb.inv_freq = plain
            _KV_MAP["mode"] = "modulo"
            sens["gqa_map_h_mod_num_kv"] = rel(real(forward(m64, batch), mask), real(logits64, mask))
            _KV_MAP["mode"] = "hf"
            arange = m64(input_ids=batch["input_ids"], attention_mask=mask).logits  # HF default: 0..T-1
            sens["position_ids_0_to_T_ignoring_mask"] = rel(real(arange, mask), real(logits64, mask))
            m64.model.rotary_emb.inv_freq = torch.zeros_like(plain)
            sens["no_rope"] = rel(real(forward(m64, batch), mask), real(logits64, mask))
            m64.model.rotary_emb.inv_freq = plain

        # full fine-tuning replay with accumulation
        m_train = to_float64(model)
        steps, info, g1 = train_replay(m_train, {n: n for n in hf_names}, micro, "")
        acc_check = check_accumulation(to_float64(model), micro, g1, hf_names)
        t.update(steps)
        rule = {n for n in hf_names if n.endswith("norm.weight") or n.endswith(".bias")}
        assert set(info["no_decay"]) == rule, sorted(set(info["no_decay"]) ^ rule)

        # LoRA
        pm, lnames, init = lora_model(model, use_rslora=False, init=None)
        base0 = {n: p.detach().clone() for n, p in pm.named_parameters() if not p.requires_grad}
        t.update(lora_reference(pm, lnames, batch, "lora."))
        lsteps, linfo, lg1 = train_replay(pm, lnames, micro, "lora.")
        t.update(lsteps)
        for n, p in pm.named_parameters():
            if not p.requires_grad:
                assert torch.equal(p, base0[n]), f"base weight {n} changed"
        pm_check, lnames_check, _ = lora_model(model, use_rslora=False, init=init)
        lacc_check = check_accumulation(pm_check, micro, lg1, lnames_check)
        targeted = sorted(pm.targeted_module_names)
        scal = {n: m.scaling["default"] for n, m in pm.named_modules() if isinstance(m, LoraLayer)}
        assert set(scal.values()) == {LORA["lora_alpha"] / LORA["r"]}, scal

        rs, rnames, _ = lora_model(model, use_rslora=True, init=init)
        rs_scal = {m.scaling["default"] for m in rs.modules() if isinstance(m, LoraLayer)}
        assert rs_scal == {LORA["lora_alpha"] / math.sqrt(LORA["r"])}, rs_scal
        with torch.no_grad():
            rl = forward(rs, batch)
            rsum, rn = loss_sum(rl, batch["labels"])
        t["rslora.logits"] = rl.clone()
        t["rslora.loss"] = (rsum / rn).reshape(1).clone()

    # the README's statement of the model, restated without HF, at every position (padded ones included)
    sd64 = {n: p.detach().double() for n, p in model.named_parameters()}
    if cfg.tie_word_embeddings:
        assert model.lm_head.weight is model.model.embed_tokens.weight and "lm_head.weight" not in sd64
    lora64 = {k: v.double() for k, v in init.items()}
    restated = {
        "logits": (restated_forward(sd64, cfg, batch) - t["logits"]).abs().max().item(),
        "lora.logits": (restated_forward(sd64, cfg, batch, lora64, LORA["lora_alpha"] / LORA["r"])
                        - t["lora.logits"]).abs().max().item(),
        "rslora.logits": (restated_forward(sd64, cfg, batch, lora64, LORA["lora_alpha"] / math.sqrt(LORA["r"]))
                          - t["rslora.logits"]).abs().max().item(),
    }
    assert max(restated.values()) < 1e-12, restated

    t = {k: v.contiguous() for k, v in t.items()}
    assert all(v.dtype == torch.float64 for v in t.values())
    save_file(t, str(out / "expected.safetensors"), metadata={"dtype": "float64"})
    save_file({k: v.contiguous() for k, v in init.items()}, str(out / "lora_init.safetensors"),
              metadata={"format": "pt"})
    make_readable(out)

    _, rope_rows = rope_table(cfg)
    lora_shapes = {k: list(v.shape) for k, v in init.items()}
    return {
        "model": name,
        "architecture": type(model).__name__,
        "config": {k: v for k, v in MODELS[name][2].items()},
        "config_json_note": ("transformers 5 writes rope_theta and rope_scaling into config.json as one "
                             "rope_parameters dict (rope_type, rope_theta and the scaling keys); Llama 3 / "
                             "Qwen2.5 checkpoints on the Hub still carry rope_theta + rope_scaling"),
        "parameters": [{"name": n, "shape": list(p.shape)} for n, p in model.named_parameters()],
        "tied_word_embeddings_note": ("lm_head.weight is model.embed_tokens.weight: model.safetensors and the "
                                      "fixtures have no lm_head.weight key; grad.model.embed_tokens.weight sums "
                                      "the lookup and the lm_head contributions")
        if cfg.tie_word_embeddings else "lm_head.weight is a separate tensor",
        "rope": {"rope_type": cfg.rope_parameters["rope_type"], "head_dim": cfg.head_dim,
                 "rope_theta": cfg.rope_parameters["rope_theta"], "inv_freq": rope_rows},
        **pack(batch),
        "real_token_mask_note": ("compare logits where attention_mask == 1; a left-padded query row has no "
                                 "allowed key, HF's additive mask then gives it uniform attention over all T "
                                 "keys, so padded-position logits are HF-specific (they never reach the loss)"),
        "micro_b": {k: rows[k][3].tolist() for k in ("input_ids", "attention_mask", "labels")},
        "micro_batches": [
            {"name": "A", "rows": "batch rows 0 and 1", **pack(micro[0]),
             "num_targets": info["micro_batch_target_counts"][0]},
            {"name": "B", "rows": "batch row 2 and micro_b", **pack(micro[1]),
             "num_targets": info["micro_batch_target_counts"][1]},
        ],
        "num_items_in_batch": info["num_items_in_batch"],
        "num_targets_batch": int(n32),
        "loss": loss64.item(),
        "optimizer": {"name": "torch.optim.AdamW", "lr": LR, "betas": list(BETAS), "eps": EPS,
                      "weight_decay": WEIGHT_DECAY, "max_grad_norm": MAX_GRAD_NORM, "steps": STEPS,
                      "clip": "torch.nn.utils.clip_grad_norm_ (pre-clip norm stored)", "foreach": False,
                      "loss_per_step": "sum over both micro-batches of per-token CE / num_items_in_batch"},
        "param_groups": {"rule": "Trainer.get_decay_parameter_names: no decay for names with 'bias' or a norm",
                         "decay_tensors": len(info["decay"]), "no_decay_tensors": len(info["no_decay"]),
                         "decay": info["decay"], "no_decay": info["no_decay"]},
        "train_log": info["train_log"],
        "lora": {
            "config": {**LORA, "use_rslora": False, "init_lora_weights": True},
            "scaling": LORA["lora_alpha"] / LORA["r"],
            "rslora_scaling": LORA["lora_alpha"] / math.sqrt(LORA["r"]),
            "targeted_modules": targeted,
            "not_targeted": "lm_head (PEFT's all-linear excludes the output layer)",
            "init": ("lora_A: PEFT's kaiming_uniform_(a=sqrt(5)) after torch.manual_seed(3); lora_B: "
                     f"N(0, {LORA_B_STD}^2) (torch.Generator seed 4, in named_parameters order); both rounded "
                     "to float32 (lora_init.safetensors) and used as such in float64"),
            "parameters": [{"name": k, "shape": s} for k, s in lora_shapes.items()],
            "param_groups": {"decay_tensors": len(linfo["decay"]), "no_decay_tensors": len(linfo["no_decay"]),
                             "decay": linfo["decay"], "no_decay": linfo["no_decay"]},
            "loss": t["lora.loss"][0].item(),
            "rslora_loss": t["rslora.loss"][0].item(),
            "train_log": linfo["train_log"],
        },
        "checks": {**pad_checks,
                   "accumulated_step1_grad_vs_one_batch_max_rel": acc_check,
                   "lora_accumulated_step1_grad_vs_one_batch_max_rel": lacc_check,
                   "lora_base_weights_unchanged": True,
                   "restated_forward_max_abs_diff_all_positions": restated,
                   "padded_positions_never_reach_loss": True},
        "float32_vs_float64": {
            "definition": "max|x32 - x64| / max|x64|; float32 = HF unmodified (its own loss function)",
            "logits_real_tokens_max_rel": rel(real(logits32, mask), real(logits64, mask)),
            "logits_all_positions_max_rel": rel(logits32, logits64),
            "loss_rel": abs(hf_loss32.item() - loss64.item()) / abs(loss64.item()),
        },
        "hf_float64_unmodified": {
            "note": ("HF modules upcast to float32 (RMSNorm, eager softmax, RoPE cos/sin, loss); in a float64 "
                     "model a fully masked (left-padded) query row becomes -inf in the float32 softmax: NaN, "
                     "which 0 * NaN carries into every position of that row"),
            "rows_with_nan": nan_rows,
            "other_rows_max_rel_vs_fixture": rel(hf64[ok_rows], logits64[ok_rows]),
        },
        "sensitivity_max_rel_logits_real_tokens": sens,
        "versions": {**versions(), "peft": peft.__version__},
    }


def pack(b: dict) -> dict:
    d = {k: b[k].tolist() for k in ("input_ids", "attention_mask", "labels")}
    d["position_ids"] = position_ids(b["attention_mask"]).tolist()
    d["shape"] = list(b["input_ids"].shape)
    return d


def main() -> None:
    t0 = time.perf_counter()
    deterministic()
    rows = make_rows()
    for name in MODELS:
        info = run_model(name, rows)
        write_json(FIXTURES / name / "batch.json", info)
        make_readable(FIXTURES / name)
        print(f"wrote {FIXTURES / name}: loss={info['loss']:.10f} lora.loss={info['lora']['loss']:.10f} "
              f"rslora.loss={info['lora']['rslora_loss']:.10f}")
        for s in info["train_log"]:
            print(f"  full step {s['step']}: loss={s['loss']:.8f} grad_norm={s['grad_norm']:.6f} clipped={s['clipped']}")
        for s in info["lora"]["train_log"]:
            print(f"  lora step {s['step']}: loss={s['loss']:.8f} grad_norm={s['grad_norm']:.6f} clipped={s['clipped']}")
        print("  fp32 vs fp64:", info["float32_vs_float64"], "\n  sensitivity:",
              info["sensitivity_max_rel_logits_real_tokens"], "\n  hf f64:", info["hf_float64_unmodified"]["rows_with_nan"])
    print(f"time {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
