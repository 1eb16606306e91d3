"""What nodetune writes for other tools (src/io/peft.ts, src/io/llm-export.ts), checked by those tools.

Two modes:

  python3 scripts/reference/check_llm_export.py fixtures --llama-cpp <llama.cpp checkout>
      writes test/fixtures/llm-export/ (the references test/llm-export.test.ts reads):
      - peft-tiny-llama/, peft-tiny-qwen2-rslora/: adapter_config.json + adapter_model.safetensors
        exactly as PEFT's save_pretrained writes them (README.md, a model card, removed), with the
        tiny models' lora_init.safetensors values;
      - merged.safetensors: PEFT merge_and_unload() of those adapters in float32, the 14 adapted
        weights of each model, keyed '<model>.<HF name>';
      - lora-tiny-llama.gguf (F32), lora-tiny-qwen2-rslora.gguf (F16): llama.cpp's own
        convert_lora_to_gguf.py run on the two PEFT folders (its gguf-py on PYTHONPATH).
      The llama.cpp checkout used is the one node-llama-cpp 3.21.1 bundles:
        git clone node_modules/node-llama-cpp/llama/gitRelease.bundle /tmp/llama.cpp

  python3 scripts/reference/check_llm_export.py check <folder>
      loads what the test wrote into <folder> (LLM_EXPORT_OUT=<folder> node --test
      dist/test/llm-export.test.js) with transformers + PEFT and with gguf-py and prints one JSON
      line of max differences (see README.md, "check_llm_export.py"). Exit 0 when every check is
      within its tolerance, 1 when one is not.

Offline and deterministic (PYTHONHASHSEED is pinned so PEFT's target_modules set is written in one
order on every run).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

if os.environ.get("PYTHONHASHSEED") != "0":  # PEFT keeps target_modules in a set
    os.environ["PYTHONHASHSEED"] = "0"
    os.execv(sys.executable, [sys.executable, *sys.argv])

from common import FIXTURES, REPO_ROOT, deterministic  # noqa: E402  (before HF: offline mode)

import torch  # noqa: E402
from peft import LoraConfig, PeftModel, get_peft_model, set_peft_model_state_dict  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

OUT = FIXTURES / "llm-export"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# name -> (base fixture, use_rslora, convert_lora_to_gguf --outtype)
ADAPTERS = {
    "tiny-llama": ("tiny-llama", False, "f32"),
    "tiny-qwen2-rslora": ("tiny-qwen2", True, "f16"),
}
LORA = dict(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=TARGETS, task_type="CAUSAL_LM")


def load_base(fixture: str):
    m = AutoModelForCausalLM.from_pretrained(FIXTURES / fixture, dtype=torch.float32, attn_implementation="eager")
    m.eval()
    return m


def peft_model(fixture: str, use_rslora: bool):
    pm = get_peft_model(load_base(fixture), LoraConfig(**LORA, use_rslora=use_rslora))
    result = set_peft_model_state_dict(pm, load_file(FIXTURES / fixture / "lora_init.safetensors"))
    assert not result.unexpected_keys, result.unexpected_keys
    assert not [k for k in result.missing_keys if "lora_" in k], result.missing_keys
    # Relative, so the committed file does not name this machine's checkout.
    pm.peft_config["default"].base_model_name_or_path = f"test/fixtures/{fixture}"
    pm.eval()
    return pm


def make_fixtures(llama_cpp: Path) -> None:
    deterministic()
    OUT.mkdir(parents=True, exist_ok=True)
    merged = {}
    for name, (fixture, rslora, outtype) in ADAPTERS.items():
        pm = peft_model(fixture, rslora)
        folder = OUT / f"peft-{name}"
        if folder.exists():
            shutil.rmtree(folder)
        pm.save_pretrained(folder)
        (folder / "README.md").unlink()
        base_names = {n for n, _ in load_base(fixture).named_parameters()}
        adapted = [n for n in base_names if any(f".{t}.weight" in n for t in TARGETS)]
        sd = pm.merge_and_unload().state_dict()
        for n in sorted(adapted):
            merged[f"{name}.{n}"] = sd[n].detach().float().contiguous().clone()
        gguf_out = OUT / f"lora-{name}.gguf"
        env = dict(os.environ, PYTHONPATH=str(llama_cpp / "gguf-py"))
        subprocess.run(
            [sys.executable, str(llama_cpp / "convert_lora_to_gguf.py"), "--base", str(FIXTURES / fixture),
             "--outfile", str(gguf_out), "--outtype", outtype, str(folder)],
            check=True, env=env, cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
        )
    save_file(merged, OUT / "merged.safetensors", metadata={"format": "pt"})
    print(f"wrote {OUT}")


# --------------------------------------------------------------------------- check


def batch_of(fixture: str) -> dict:
    b = json.loads((FIXTURES / fixture / "batch.json").read_text())
    return {k: torch.tensor(b[k]) for k in ("input_ids", "attention_mask", "position_ids")}


def logits_of(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits.double()


def max_abs_real(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    """Max |a - b| over real tokens (padded positions' logits are HF-specific, see tiny_llama.py)."""
    return (a - b).abs()[mask.bool()].max().item()


def gguf_tensors(path: Path) -> tuple[dict, dict]:
    from gguf import GGUFReader
    from gguf.quants import dequantize

    r = GGUFReader(path)
    meta = {}
    for k, f in r.fields.items():
        if not k.startswith("GGUF."):
            try:
                meta[k] = f.contents()
            except Exception:  # noqa: BLE001 — arrays of arrays; not needed here
                meta[k] = None
    tensors = {}
    for t in r.tensors:
        shape = [int(d) for d in reversed(t.shape.tolist())]
        tensors[t.name] = (t.tensor_type.name, torch.from_numpy(dequantize(t.data, t.tensor_type).reshape(shape).copy()))
    return meta, tensors


def unpermute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """transformers' reverse_permute_weights: llama.cpp's rotary row order -> HF's."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


_GGUF_LAYER = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
               "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
               "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
_GGUF_GLOBAL = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


def GGUF_TO_HF(name: str) -> str | None:  # noqa: N802
    """GGUF tensor name -> HF name (gguf-py tensor_mapping.py for llama/qwen2), None for rope_freqs."""
    parts = name.split(".")
    if parts[0] == "blk":
        return f"model.layers.{parts[1]}.{_GGUF_LAYER[parts[2]]}.{parts[3]}"
    base = _GGUF_GLOBAL.get(parts[0])
    return f"{base}.{parts[1]}" if base else None


def check(folder: Path) -> int:
    deterministic()
    report: dict = {}
    ok = True

    def record(key: str, value: float, tol: float) -> None:
        nonlocal ok
        report[key] = value
        if not value <= tol:
            ok = False
            report.setdefault("failed", []).append(f"{key} {value:.3g} > {tol:g}")

    for name, (fixture, rslora, _) in ADAPTERS.items():
        batch = batch_of(fixture)
        expected = load_file(FIXTURES / fixture / "expected.safetensors")["rslora.logits" if rslora else "lora.logits"]
        # transformers + PEFT applying nodetune's adapter folder to the base model
        peft_folder = folder / f"peft-{name}"
        if peft_folder.exists():
            pm = PeftModel.from_pretrained(load_base(fixture), peft_folder)
            pm.eval()
            got = logits_of(pm, batch)
            record(f"{name}.peft_adapter_vs_fixture_logits", max_abs_real(got, expected, batch["attention_mask"]), 1e-4)
            merged_ref = logits_of(pm.merge_and_unload(), batch)
        # transformers loading nodetune's merged Hugging Face folder
        hf_folder = folder / f"hf-{name}-merged"
        if hf_folder.exists():
            m = AutoModelForCausalLM.from_pretrained(hf_folder, dtype=torch.float32, attn_implementation="eager")
            m.eval()
            got = logits_of(m, batch)
            record(f"{name}.hf_folder_vs_fixture_logits", max_abs_real(got, expected, batch["attention_mask"]), 1e-4)
            if peft_folder.exists():
                record(f"{name}.hf_folder_vs_peft_merge_logits", max_abs_real(got, merged_ref, batch["attention_mask"]), 1e-4)
        # gguf-py reading nodetune's LoRA GGUF: undo the permutation, compare with PEFT's tensors
        lora_gguf = folder / f"lora-{name}.gguf"
        if lora_gguf.exists():
            meta, tensors = gguf_tensors(lora_gguf)
            init = load_file(FIXTURES / fixture / "lora_init.safetensors")
            cfg = json.loads((FIXTURES / fixture / "config.json").read_text())
            arch = meta.get("general.architecture")
            scale = LORA["lora_alpha"] / (LORA["r"] ** 0.5 if rslora else LORA["r"])
            report[f"{name}.lora_gguf_metadata"] = {k: meta.get(k) for k in ("general.architecture", "general.type", "adapter.type", "adapter.lora.alpha")}
            record(f"{name}.lora_gguf_alpha_over_r_vs_scale", abs(meta["adapter.lora.alpha"] / LORA["r"] - scale), 1e-6)
            worst = 0.0
            gmap = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
                    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                    "mlp.down_proj": "ffn_down"}
            for key, want in init.items():
                layer = int(key.split(".")[4])
                module = ".".join(key.split(".")[5:7])
                ab = "a" if ".lora_A." in key else "b"
                _, t = tensors[f"blk.{layer}.{gmap[module]}.weight.lora_{ab}"]
                if arch == "llama" and ab == "b" and module in ("self_attn.q_proj", "self_attn.k_proj"):
                    t = unpermute(t, cfg["num_attention_heads"] if "q_proj" in module else cfg["num_key_value_heads"])
                worst = max(worst, (t - want).abs().max().item())
            report[f"{name}.lora_gguf_tensors"] = len(tensors)
            record(f"{name}.lora_gguf_vs_peft_tensors_max_abs", worst, 1e-3 if "F16" in {v[0] for v in tensors.values()} else 0.0)
        # nodetune's merged GGUF: gguf-py's dequantized tensors (q/k rows back in HF order) against
        # PEFT's merge; and logits through transformers' GGUF loader, except for tiny-llama, whose
        # llama3 rope scaling that loader drops (llama.cpp keeps it in rope_freqs.weight).
        for qtype, rel_tol, logit_tol in (("f16", 1e-3, 1e-2), ("q8_0", 1e-2, 1e-1)):
            merged_gguf = folder / f"merged-{name}-{qtype}.gguf"
            if not merged_gguf.exists():
                continue
            meta, tensors = gguf_tensors(merged_gguf)
            cfg = json.loads((FIXTURES / fixture / "config.json").read_text())
            ref_sd = PeftModel.from_pretrained(load_base(fixture), FIXTURES / "llm-export" / f"peft-{name}").merge_and_unload().state_dict()
            worst = 0.0
            for gname, (gtype, t) in tensors.items():
                hf = GGUF_TO_HF(gname)
                if hf is None:
                    continue
                if meta["general.architecture"] == "llama" and (".attn_q." in gname or ".attn_k." in gname):
                    t = unpermute(t, cfg["num_attention_heads"] if ".attn_q." in gname else cfg["num_key_value_heads"])
                want = ref_sd[hf].float()
                worst = max(worst, ((t - want).abs().max() / want.abs().max()).item())
            record(f"{name}.merged_gguf_{qtype}_vs_peft_merge_tensors_max_rel", worst, rel_tol)
            if cfg.get("rope_parameters", {}).get("rope_type", "default") == "default":
                m = AutoModelForCausalLM.from_pretrained(merged_gguf.parent, gguf_file=merged_gguf.name, dtype=torch.float32,
                                                         attn_implementation="eager")
                m.eval()
                got = logits_of(m, batch)
                record(f"{name}.merged_gguf_{qtype}_transformers_vs_fixture_logits", max_abs_real(got, expected, batch["attention_mask"]), logit_tol)
    report["ok"] = ok
    print(json.dumps(report))
    return 0 if ok else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="mode", required=True)
    f = sub.add_parser("fixtures")
    f.add_argument("--llama-cpp", type=Path, required=True, help="llama.cpp checkout (convert_lora_to_gguf.py, gguf-py/)")
    c = sub.add_parser("check")
    c.add_argument("folder", type=Path)
    args = ap.parse_args()
    if args.mode == "fixtures":
        make_fixtures(args.llama_cpp.resolve())
        return 0
    return check(args.folder.resolve())


if __name__ == "__main__":
    sys.exit(main())
