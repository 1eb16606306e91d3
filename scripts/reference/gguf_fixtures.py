"""GGUF reference fixtures: test/fixtures/gguf/.

The `gguf` Python package (gguf-py, llama.cpp's own Python library) is the reference
for the GGUF layout, the block formats and the Q8_0 / F16 quantizers; Hugging Face
transformers (which reads GGUF through gguf-py) is the reference for what a Llama GGUF
means as a Hugging Face model.

Writes:
  quant-blocks.gguf         GGUFWriter file: metadata of every value type (arrays, nested
                            arrays) and one (2, 256) tensor per type F32 F16 BF16 Q8_0 Q4_0
                            Q4_1 Q5_0 Q5_1 Q4_K Q5_K Q6_K, plus Q2_K (a type nodetune does
                            not dequantize); raw blocks are random bytes with random finite
                            f16 scales.
  quant-expected.safetensors  float32 gguf.quants.dequantize of each of those tensors.
  writer-input.safetensors  float32 inputs of the writer fixture (edge cases for the F16
                            and Q8_0 rounding included).
  writer-reference.gguf     GGUFWriter file of the same metadata and the writer inputs as F32,
                            F16 (numpy astype) and Q8_0 (gguf.quants.quantize); nodetune's
                            writer must reproduce it byte for byte.
  metadata.json             the metadata both .gguf files hold, typed (see `typed`).
  smollm2-expected.json     the real model (.cache/models/SmolLM2-135M-Instruct, from
                            scripts/fetch-llm.sh): transformers' config for it and, for a few
                            dequantized tensors of AutoModelForCausalLM.from_pretrained(
                            gguf_file=...) in float32, the shape, first 2 rows, sum, sum of
                            squares and sha256 of the whole tensor's little-endian float32 bytes.

Run: python3 scripts/reference/gguf_fixtures.py   (~60 s; needs pip gguf, torch, transformers)
"""

from __future__ import annotations

from common import FIXTURES, REPO_ROOT, deterministic, make_readable, versions, write_json  # before HF: offline

import hashlib
import importlib.metadata
import math
import struct

import gguf
import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import GGUFValueType as V
from safetensors.numpy import save_file

OUT = FIXTURES / "gguf"
MODEL_DIR = REPO_ROOT / ".cache" / "models" / "SmolLM2-135M-Instruct"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
ROWS, COLS = 2, 256
# Byte offsets of the f16 scale fields in each block (ggml-common.h block_* structs).
F16_FIELDS = {
    T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0],
    T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208], T.Q2_K: [80, 82],
}
QUANT_TYPES = [T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q4_K, T.Q5_K, T.Q6_K, T.Q2_K]

# (key, gguf value type, item type for arrays, value). Arrays of arrays take their inner
# types from the Python values (gguf-py: int -> INT32, float -> FLOAT32, str -> STRING).
METADATA = [
    ("test.uint8", V.UINT8, None, 255),
    ("test.int8", V.INT8, None, -128),
    ("test.uint16", V.UINT16, None, 65535),
    ("test.int16", V.INT16, None, -32768),
    ("test.uint32", V.UINT32, None, 4294967295),
    ("test.int32", V.INT32, None, -2147483648),
    ("test.float32", V.FLOAT32, None, 0.1),
    ("test.float32_inf", V.FLOAT32, None, -math.inf),
    ("test.float32_negzero", V.FLOAT32, None, -0.0),
    ("test.bool_true", V.BOOL, None, True),
    ("test.bool_false", V.BOOL, None, False),
    ("test.string", V.STRING, None, 'h\u00e9llo w\u00f6rld \u4f60\u597d \U0001f999\n\t"q"'),
    ("test.string_empty", V.STRING, None, ""),
    ("test.uint64", V.UINT64, None, 2**64 - 1),
    ("test.int64", V.INT64, None, -(2**63)),
    ("test.float64", V.FLOAT64, None, math.pi),
    ("test.array_uint8", V.ARRAY, V.UINT8, [0, 1, 255]),
    ("test.array_int8", V.ARRAY, V.INT8, [-128, 0, 127]),
    ("test.array_uint16", V.ARRAY, V.UINT16, [0, 65535]),
    ("test.array_int16", V.ARRAY, V.INT16, [-32768, 32767]),
    ("test.array_uint32", V.ARRAY, V.UINT32, [0, 4294967295]),
    ("test.array_int32", V.ARRAY, V.INT32, [-2147483648, 2147483647, 3]),
    ("test.array_float32", V.ARRAY, V.FLOAT32, [0.5, -1e-30, 3.4e38]),
    ("test.array_bool", V.ARRAY, V.BOOL, [True, False, True]),
    ("test.array_string", V.ARRAY, V.STRING, ["a", "", "\u0120 t", "\U0001f999"]),
    ("test.array_uint64", V.ARRAY, V.UINT64, [0, 2**64 - 1]),
    ("test.array_int64", V.ARRAY, V.INT64, [-(2**63), 2**63 - 1]),
    ("test.array_float64", V.ARRAY, V.FLOAT64, [1e-300, -2.5]),
    ("test.array_nested", V.ARRAY, None, [[1, 2, 3], [4], [5, 6]]),
    ("test.array_nested_mixed", V.ARRAY, None, [[1, 2], ["a"], [[0.5]]]),
    ("test.array_nested_deep", V.ARRAY, None, [[[1.5], [2.5, 3.5]], [[4.5]]]),
]

TYPE_NAMES = {
    V.UINT8: "uint8", V.INT8: "int8", V.UINT16: "uint16", V.INT16: "int16", V.UINT32: "uint32",
    V.INT32: "int32", V.FLOAT32: "float32", V.BOOL: "bool", V.STRING: "string", V.ARRAY: "array",
    V.UINT64: "uint64", V.INT64: "int64", V.FLOAT64: "float64",
}


def python_type(v) -> V:
    return gguf.GGUFValueType.get_type(v)


def typed(vtype: V, item_type: V | None, value):
    """JSON for one value as nodetune's reader returns it: {type, value} for scalars,
    {type: 'array', itemType, items} for arrays. Floats are given as IEEE bit patterns
    (float32: uint32 number; float64: 16 hex digits) and 64-bit integers as decimal strings,
    so the comparison is exact and needs no JSON extension for inf or -0."""
    if vtype == V.ARRAY:
        it = item_type if item_type is not None else python_type(value[0])
        return {"type": "array", "itemType": TYPE_NAMES[it], "items": [typed_item(it, x) for x in value]}
    return {"type": TYPE_NAMES[vtype], "value": typed_item(vtype, value)}


def typed_item(vtype: V, x):
    if vtype == V.ARRAY:
        return typed(V.ARRAY, None, x)
    if vtype == V.FLOAT32:
        return struct.unpack("<I", struct.pack("<f", x))[0]
    if vtype == V.FLOAT64:
        return struct.pack(">d", x).hex()
    if vtype in (V.UINT64, V.INT64):
        return str(x)
    return x


def add_metadata(w: gguf.GGUFWriter) -> None:
    for key, vtype, item_type, value in METADATA:
        w.add_key_value(key, value, vtype, sub_type=item_type)


def random_blocks(rng: np.random.Generator, qtype: T) -> np.ndarray:
    """(ROWS, bytes per row) uint8 of random blocks whose f16 fields are finite, spread over
    normal and subnormal magnitudes."""
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    n_blocks = ROWS * COLS // block
    raw = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
    for off in F16_FIELDS[qtype]:
        mags = 10.0 ** rng.uniform(-7, 3, size=n_blocks)
        scales = (mags * rng.choice([-1.0, 1.0], size=n_blocks)).astype(np.float16)
        raw[:, off : off + 2] = scales.reshape(-1, 1).view(np.uint8)
    return raw.reshape(ROWS, -1)


def quant_fixture(rng: np.random.Generator) -> None:
    w = gguf.GGUFWriter(OUT / "quant-blocks.gguf", "llama")
    add_metadata(w)
    expected: dict[str, np.ndarray] = {}

    f32 = (rng.standard_normal((ROWS, COLS)) * 10.0 ** rng.uniform(-40, 38, (ROWS, COLS))).astype(np.float32)
    w.add_tensor("F32", f32)
    expected["F32"] = gguf.quants.dequantize(f32.view(np.uint8), T.F32).reshape(ROWS, COLS)

    bits16 = rng.integers(0, 65536, size=(ROWS, COLS), dtype=np.uint16)
    f16_bits = np.where((bits16 & 0x7C00) == 0x7C00, bits16 & 0x83FF, bits16)  # no inf/NaN patterns
    f16_bits[0, :4] = [0x7C00, 0xFC00, 0x8000, 0x0001]  # +inf, -inf, -0, smallest subnormal
    w.add_tensor("F16", f16_bits.view(np.uint8), raw_dtype=T.F16)
    expected["F16"] = gguf.quants.dequantize(f16_bits.view(np.uint8), T.F16).reshape(ROWS, COLS)

    bf_bits = rng.integers(0, 65536, size=(ROWS, COLS), dtype=np.uint16)
    bf_bits = np.where((bf_bits & 0x7F80) == 0x7F80, bf_bits & 0x807F, bf_bits)  # no inf/NaN patterns
    bf_bits[0, :3] = [0x7F80, 0xFF80, 0x8000]
    w.add_tensor("BF16", bf_bits.view(np.uint8), raw_dtype=T.BF16)
    expected["BF16"] = gguf.quants.dequantize(bf_bits.view(np.uint8), T.BF16).reshape(ROWS, COLS)

    for qtype in QUANT_TYPES:
        raw = random_blocks(rng, qtype)
        w.add_tensor(qtype.name, raw, raw_dtype=qtype)
        if qtype != T.Q2_K:
            expected[qtype.name] = gguf.quants.dequantize(raw, qtype)

    for name, arr in expected.items():
        assert arr.dtype == np.float32 and arr.shape == (ROWS, COLS), name
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    save_file({k: np.ascontiguousarray(v) for k, v in expected.items()}, OUT / "quant-expected.safetensors")


def writer_fixture(rng: np.random.Generator) -> None:
    # F16 rounding cases: ties to even at the normal and subnormal ends, overflow to inf,
    # the largest finite value, underflow to zero, -0.
    f16_cases = np.array(
        [0.0, -0.0, 1.0, 65504.0, 65519.99, 65520.0, -1e6, 2.0**-24, 2.0**-25, 2.0**-25 * 1.0000001,
         3 * 2.0**-25, 2.0**-26, 1 + 2.0**-11, 1 + 3 * 2.0**-11, 6.1e-5, 6.097555e-5, -3.14159, 1e-8],
        dtype=np.float32,
    )
    f16_in = np.concatenate([f16_cases, rng.standard_normal(128 - len(f16_cases)).astype(np.float32)]).reshape(2, 64)
    # Q8_0 cases (one 32-value block per row): all zero (d = 0), exact halves (round away
    # from zero), tiny values (f16 subnormal d), a normal random block, large values.
    halves = np.array([127.0, 2.5, -2.5, 0.5, -0.5, 1.5, -1.5, 126.5] + [0.0] * 24, dtype=np.float32)
    q8_in = np.stack([
        np.zeros(32, dtype=np.float32),
        halves,
        (rng.standard_normal(32) * 1e-6).astype(np.float32),
        rng.standard_normal(32).astype(np.float32),
        (rng.standard_normal(32) * 3e4).astype(np.float32),
        rng.uniform(-1, 1, 32).astype(np.float32),
    ]).reshape(3, 64)
    q8_3d = rng.standard_normal((2, 2, 32)).astype(np.float32)
    f32_in = rng.standard_normal((3, 5)).astype(np.float32)
    f32_1d = rng.standard_normal(7).astype(np.float32)

    w = gguf.GGUFWriter(OUT / "writer-reference.gguf", "llama")
    add_metadata(w)
    w.add_tensor("t.f32", f32_in)
    w.add_tensor("t.f32_1d", f32_1d)
    with np.errstate(over="ignore"):  # 65520 and -1e6 overflow to inf on purpose
        w.add_tensor("t.f16", f16_in.astype(np.float16))
    w.add_tensor("t.q8_0", gguf.quants.quantize(q8_in, T.Q8_0), raw_dtype=T.Q8_0)
    w.add_tensor("t.q8_0_3d", gguf.quants.quantize(q8_3d, T.Q8_0), raw_dtype=T.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    save_file(
        {"t.f32": f32_in, "t.f32_1d": f32_1d, "t.f16": f16_in, "t.q8_0": q8_in, "t.q8_0_3d": q8_3d},
        OUT / "writer-input.safetensors",
    )


def tensor_summary(t) -> dict:
    a = t.detach().to("cpu").contiguous().numpy().astype("<f4", copy=False)
    flat64 = a.astype(np.float64).ravel()
    return {
        "shape": list(a.shape),
        # the first 128 values of the first 2 rows (of a vector: its first 128 values)
        "rows": [[float(x) for x in row[:128]] for row in (a.reshape(a.shape[0], -1)[:2] if a.ndim > 1 else a[None])],
        "sum": float(flat64.sum()),
        "sum_of_squares": float((flat64 * flat64).sum()),
        "sha256": hashlib.sha256(a.tobytes()).hexdigest(),
    }


CONFIG_FIELDS = [
    "model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
    "num_attention_heads", "num_key_value_heads", "head_dim", "hidden_act", "max_position_embeddings",
    "rms_norm_eps", "tie_word_embeddings", "attention_bias", "mlp_bias", "bos_token_id",
    "eos_token_id", "pad_token_id", "unk_token_id",
]
MODEL_TENSORS = [
    "model.embed_tokens.weight",  # Q8_0
    "model.layers.0.self_attn.q_proj.weight",  # Q4_1, rows permuted in the GGUF
    "model.layers.0.self_attn.k_proj.weight",  # Q4_1, GQA: 3 kv heads
    "model.layers.0.self_attn.v_proj.weight",
    "model.layers.0.input_layernorm.weight",  # F32
    "model.layers.29.mlp.down_proj.weight",
    "model.layers.29.self_attn.k_proj.weight",
    "model.norm.weight",
]


def model_fixture() -> dict:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    deterministic()
    if not (MODEL_DIR / MODEL_FILE).exists():
        raise SystemExit(f"{MODEL_DIR / MODEL_FILE} is missing: run bash scripts/fetch-llm.sh first")
    cfg = AutoConfig.from_pretrained(MODEL_DIR, gguf_file=MODEL_FILE).to_dict()
    config = {k: cfg[k] for k in CONFIG_FIELDS}
    rope = cfg.get("rope_parameters") or {}
    config["rope_theta"] = rope.get("rope_theta", cfg.get("rope_theta"))
    config["rope_type"] = rope.get("rope_type", "default")
    model = AutoModelForCausalLM.from_pretrained(MODEL_DIR, gguf_file=MODEL_FILE, dtype=torch.float32)
    sd = model.state_dict()
    return {
        "file": MODEL_FILE,
        "config": config,
        "state_dict_keys": len(sd),
        "tensors": {name: tensor_summary(sd[name]) for name in MODEL_TENSORS},
        "versions": {**versions(), "gguf": importlib.metadata.version("gguf")},
    }


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(12)
    quant_fixture(rng)
    writer_fixture(rng)
    write_json(OUT / "metadata.json", {key: typed(vt, it, v) for key, vt, it, v in METADATA})
    write_json(OUT / "smollm2-expected.json", model_fixture())
    make_readable(OUT)
    total = sum(f.stat().st_size for f in OUT.iterdir())
    print(f"wrote {OUT} ({total} bytes)")


if __name__ == "__main__":
    main()
