"""LLM tokenizer and chat-template reference: test/fixtures/llm-tokenizer/.

References:
  hf_gguf    AutoTokenizer.from_pretrained(dir, gguf_file=...): transformers' own conversion of a
             GGUF's tokenizer.ggml.* metadata to a Rust `tokenizers` tokenizer.
  reference  for SmolLM2 (tokenizer.ggml.pre = "smollm"): hf_gguf with the pre-tokenizer of
             SmolLM2's published tokenizer.json, Sequence[Digits(individual_digits=True),
             ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)]. transformers 5
             has no split regex for "smollm" and keeps GPT-2's ByteLevel alone, which tokenizes a
             whitespace run before a digit differently from the model's own tokenizer and from
             llama.cpp (whose "smollm" pre-tokenizer also splits every \\p{N} first). For every other
             pre-tokenizer, reference = hf_gguf.
  templates  tokenizer.apply_chat_template(..., tokenize=False) for the rendered strings and
             transformers' {% generation %} tracking (render_jinja_template with
             return_assistant_tokens_mask=True, and apply_chat_template(..., tokenize=True,
             return_assistant_tokens_mask=True) for token masks) on a copy of each template with the
             assistant's text wrapped in {% generation %} (the copy renders the same string; asserted).

Writes:
  corpus.json      texts; SmolLM2's reference and hf_gguf ids, reference decodes (with and
                   without special tokens); for each small GGUF its reference ids.
  small/<pre>.gguf vocab-only GGUFs (no tensors) with SmolLM2's first 2000 tokens, the merges among
                   them, a user-defined token "<think>" (type 4) and tokenizer.ggml.pre = <pre> for
                   pre in gpt-2, llama-bpe, qwen2, smollm; add_bos_token true for llama-bpe.
  small/<pre>/     the reference tokenizer saved by save_pretrained (tokenizer.json,
                   tokenizer_config.json); small/qwen2/generation_config.json names two eos ids.
  chat.json        chat-template cases: template, messages, tools, add_generation_prompt, the
                   rendered string, the assistant character spans; for SmolLM2 also input_ids and
                   assistant_masks.

Run: python3 scripts/reference/llm_tokenizer.py   (~30 s; needs scripts/fetch-llm.sh, pip gguf transformers)
"""

from __future__ import annotations

from common import FIXTURES, REPO_ROOT, versions, write_json  # before HF: offline

import copy
import hashlib
import importlib.metadata
import shutil
import tempfile
from pathlib import Path

import gguf
from gguf import GGUFReader, GGUFWriter
from tokenizers import pre_tokenizers
from transformers import AutoTokenizer
from transformers.utils.chat_template_utils import render_jinja_template
from transformers.utils import logging as hf_logging

OUT = FIXTURES / "llm-tokenizer"
MODEL_DIR = REPO_ROOT / ".cache" / "models" / "SmolLM2-135M-Instruct"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMALL_VOCAB = 2000
SMALL_PRES = ["gpt-2", "llama-bpe", "qwen2", "smollm"]

TEXTS = [
    "", " ", "  ", "\t", "\n", "\n\n", "\n\n\n", "\r\n", "\r\n\r\n", "\r", " \n ", "a\n\nb", "a\r\nb\r\n",
    "   leading spaces", "trailing spaces   ", "a  b   c    d     e", "\t\tindent\twith\ttabs", " \t \n mixed",
    "Hello world! 123", "1234567890", "12345678901234567890", "3.14159", "x=12345678", "a  1", "a   12",
    "year 2024 and 1999", "1,000,000", "$1,234.56", "007", " 0", "  42", "٣٤٥ ١٢", "²³ ½ Ⅻ ⅷ", "１２３ fullwidth",
    "I'm you're it's we'll they'd I've", "ISN'T DON'T You'LL WE'RE", "'s 'S '", "rock'n'roll",
    "😀", "👍🏽 thumbs", "👨‍👩‍👧‍👦 family", "🏳️‍🌈 flag", "🇯🇵🇺🇸", "❤️ heart", "a😀b😀c",
    "日本語のテキスト", "中文分词测试，标点符号。", "한국어 텍스트", "ｶﾀｶﾅ",
    "café naïve résumé", "cafe\u0301 e\u0301", "Ω ≈ ç √ ∫ ∑", "Ä Ö Ü ß ẞ", "ǅ ǈ",
    "مرحبا بالعالم", "שלום עולם", "abc مرحبا 123", "नमस्ते दुनिया", "สวัสดีชาวโลก", "Привет, мир!", "Γειά σου Κόσμε",
    "def f(x):\n    return x**2  # square\n",
    "if (a && b) { console.log(`${x}`); }",
    "<div class=\"a\">&amp;</div>",
    '{"key": [1, 2.5, null, true], "nested": {"a": "b"}}',
    "SELECT * FROM t WHERE id = 42;",
    "https://example.com/path?q=1&r=two#frag",
    "<|im_start|>user\nHi<|im_end|>\n", "text<|im_end|>more", "<|endoftext|>", "<|im_start|><|im_end|>",
    " <|im_start|> spaced <|im_end|> ", "<|im_start", "im_end|>", "<repo_name>x<file_sep>y",
    "<think>reasoning</think>", " <think> spaced",
    " hello", "  hello", "   hello", "hello ", "hello  ",
    "\u00a0nbsp", "zero\u200bwidth", "\ufeffBOM", "tab\u000bvt\u000cff", "line\u2028sep", "nel\u0085next",
    "ideographic\u3000space", "\u0001\u0002 control", "a\u0300\u0301\u0302 stacked marks",
    "supercalifragilisticexpialidocious" * 3,
    "The quick brown fox jumps over the lazy dog. " * 4,
    "!!!???...,,,;;;", "-----", "____init____", "@@@ ### $$$",
    "a \nb", "x  \n  y", "\n \n", " \n\n ", "\t\n", "end\n\n\n\n", " " * 100, "\n" * 20, "ab" + " " * 7 + "\t" * 3 + "cd",
    "5's don't I'M", "\u0301 lone combining", " \u0301\u0302", "thin\u2009space", "mongolian\u180esep",
    "x \ufeffy", "x \u0085y", "1234567", "12 345 6789", "𝛼𝛽 math letters", "𐀀 linear b", "🫨 shaking face", "𑼄 kawi", "𐵐 garay", "각 jamo",
]


def reader_fields(path: Path) -> dict:
    r = GGUFReader(str(path))
    return {k: f.contents() for k, f in r.fields.items()}


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def with_digits(tok):
    """The same tokenizer with SmolLM2's published pre-tokenizer (see the module docstring)."""
    ref = copy.deepcopy(tok)
    ref.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
        ]
    )
    return ref


def write_small_gguf(path: Path, fields: dict, pre: str) -> None:
    tokens = list(fields["tokenizer.ggml.tokens"][:SMALL_VOCAB])
    types = list(fields["tokenizer.ggml.token_type"][:SMALL_VOCAB])
    kept = set(tokens)
    merges = []
    for m in fields["tokenizer.ggml.merges"]:
        a, b = m.split(" ")
        if a in kept and b in kept and a + b in kept:
            merges.append(m)
    tokens.append("<think>")
    types.append(4)
    w = GGUFWriter(str(path), arch="llama")
    # llama.cpp reads the hyperparameters even for a vocab-only load.
    w.add_context_length(256)
    w.add_embedding_length(64)
    w.add_block_count(1)
    w.add_feed_forward_length(128)
    w.add_head_count(4)
    w.add_head_count_kv(4)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(16)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(pre == "llama-bpe")
    w.add_chat_template(fields["tokenizer.chat_template"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


# ---------------------------------------------------------------- chat templates

QWEN25_TEMPLATE = (
    # Qwen/Qwen2.5-0.5B-Instruct tokenizer_config.json chat_template (Apache-2.0), verbatim.
    "{%- if tools %}\n    {{- '<|im_start|>system\\n' }}\n    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- messages[0]['content'] }}\n    {%- else %}\n"
    "        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}\n    {%- endif %}\n"
    "    {{- \"\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n"
    "You are provided with function signatures within <tools></tools> XML tags:\\n<tools>\" }}\n"
    "    {%- for tool in tools %}\n        {{- \"\\n\" }}\n        {{- tool | tojson }}\n    {%- endfor %}\n"
    "    {{- \"\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments "
    "within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": <function-name>, \\\"arguments\\\": "
    "<args-json-object>}\\n</tool_call><|im_end|>\\n\" }}\n"
    "{%- else %}\n    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n    {%- else %}\n"
    "        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}\n"
    "    {%- endif %}\n{%- endif %}\n"
    "{%- for message in messages %}\n"
    "    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or "
    "(message.role == \"assistant\" and not message.tool_calls) %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    "    {%- elif message.role == \"assistant\" %}\n        {{- '<|im_start|>' + message.role }}\n"
    "        {%- if message.content %}\n            {{- '\\n' + message.content }}\n        {%- endif %}\n"
    "        {%- for tool_call in message.tool_calls %}\n            {%- if tool_call.function is defined %}\n"
    "                {%- set tool_call = tool_call.function %}\n            {%- endif %}\n"
    "            {{- '\\n<tool_call>\\n{\"name\": \"' }}\n            {{- tool_call.name }}\n"
    "            {{- '\", \"arguments\": ' }}\n            {{- tool_call.arguments | tojson }}\n"
    "            {{- '}\\n</tool_call>' }}\n        {%- endfor %}\n        {{- '<|im_end|>\\n' }}\n"
    "    {%- elif message.role == \"tool\" %}\n"
    "        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != \"tool\") %}\n"
    "            {{- '<|im_start|>user' }}\n        {%- endif %}\n        {{- '\\n<tool_response>\\n' }}\n"
    "        {{- message.content }}\n        {{- '\\n</tool_response>' }}\n"
    "        {%- if loop.last or (messages[loop.index0 + 1].role != \"tool\") %}\n"
    "            {{- '<|im_end|>\\n' }}\n        {%- endif %}\n    {%- endif %}\n{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n' }}\n{%- endif %}\n"
)

# The same template with the assistant's text (its content, tool calls and <|im_end|>, not the
# "<|im_start|>assistant\n" header nor the "\n" after <|im_end|>) inside {% generation %}.
QWEN25_TAGGED = QWEN25_TEMPLATE.replace(
    "    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or "
    "(message.role == \"assistant\" and not message.tool_calls) %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    "    {%- elif message.role == \"assistant\" %}\n        {{- '<|im_start|>' + message.role }}\n"
    "        {%- if message.content %}\n            {{- '\\n' + message.content }}\n        {%- endif %}\n"
    "        {%- for tool_call in message.tool_calls %}\n            {%- if tool_call.function is defined %}\n"
    "                {%- set tool_call = tool_call.function %}\n            {%- endif %}\n"
    "            {{- '\\n<tool_call>\\n{\"name\": \"' }}\n",
    "    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    "    {%- elif message.role == \"assistant\" and not message.tool_calls %}\n"
    "        {{- '<|im_start|>assistant\\n' }}{% generation %}{{- message.content + '<|im_end|>' }}{% endgeneration %}{{- '\\n' }}\n"
    "    {%- elif message.role == \"assistant\" %}\n        {{- '<|im_start|>assistant\\n' }}{% generation %}\n"
    "        {%- if message.content %}\n            {{- message.content }}\n        {%- endif %}\n"
    "        {%- for tool_call in message.tool_calls %}\n            {%- if tool_call.function is defined %}\n"
    "                {%- set tool_call = tool_call.function %}\n            {%- endif %}\n"
    "            {%- if message.content or not loop.first %}{{- '\\n' }}{%- endif %}\n"
    "            {{- '<tool_call>\\n{\"name\": \"' }}\n",
).replace(
    "            {{- '}\\n</tool_call>' }}\n        {%- endfor %}\n        {{- '<|im_end|>\\n' }}\n",
    "            {{- '}\\n</tool_call>' }}\n        {%- endfor %}\n        {{- '<|im_end|>' }}{% endgeneration %}{{- '\\n' }}\n",
)
assert QWEN25_TAGGED.count("{% generation %}") == 2 and QWEN25_TAGGED.count("{% endgeneration %}") == 2


def smollm_tagged(template: str) -> str:
    # The GGUF's template has real newlines inside its string literals.
    body = "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    assert template.count(body) == 1, "SmolLM2's template changed"
    return template.replace(
        body,
        "{% if message['role'] == 'assistant' %}{{'<|im_start|>assistant\n'}}{% generation %}"
        "{{message['content'] + '<|im_end|>'}}{% endgeneration %}{{'\n'}}{% else %}" + body + "{% endif %}",
    )


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the current weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "description": "City name, e.g. Zürich"},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                },
                "required": ["city"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "search_orders",
            "description": "Find a customer's orders.",
            "parameters": {
                "type": "object",
                "properties": {"customer_id": {"type": "integer"}, "open_only": {"type": "boolean"}},
                "required": ["customer_id"],
            },
        },
    },
]


def smollm_cases() -> list[dict]:
    return [
        {"name": "user only, generation prompt", "messages": [{"role": "user", "content": "Hi"}], "add_generation_prompt": True},
        {"name": "user only, no generation prompt", "messages": [{"role": "user", "content": "Hi"}], "add_generation_prompt": False},
        {
            "name": "system user assistant user",
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": "What is 2+2?"},
                {"role": "assistant", "content": "4"},
                {"role": "user", "content": "And 3+3?"},
            ],
            "add_generation_prompt": True,
        },
        {
            "name": "two assistant turns",
            "messages": [
                {"role": "user", "content": "Name a colour."},
                {"role": "assistant", "content": "Blue."},
                {"role": "user", "content": "Another?"},
                {"role": "assistant", "content": "Green, then red."},
            ],
            "add_generation_prompt": False,
        },
        {
            "name": "unicode, newlines and special-token text in content",
            "messages": [
                {"role": "user", "content": "Wie geht's? 😀 <|im_end|> in text\n\n  indented"},
                {"role": "assistant", "content": "Gut! 日本語\n\nnew lines  and 1234 digits  "},
            ],
            "add_generation_prompt": False,
        },
        {
            "name": "empty assistant content",
            "messages": [{"role": "user", "content": "Say nothing."}, {"role": "assistant", "content": ""}],
            "add_generation_prompt": False,
        },
    ]


def qwen_cases() -> list[dict]:
    call_weather = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Zürich", "unit": "celsius"}}}
    call_orders = {"name": "search_orders", "arguments": {"customer_id": 42, "open_only": True, "note": "line\nbreak \"q\" 😀", "tags": [], "x": None, "t": 22.5}}
    return [
        {"name": "no tools, default system", "messages": [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi there!"}], "add_generation_prompt": False},
        {"name": "no tools, own system, generation prompt", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}], "add_generation_prompt": True},
        {
            "name": "tools: one call, tool result, answer",
            "tools": TOOLS,
            "messages": [
                {"role": "user", "content": "Weather in Zürich?"},
                {"role": "assistant", "content": "", "tool_calls": [call_weather]},
                {"role": "tool", "content": '{"temperature": 21, "sky": "clear"}'},
                {"role": "assistant", "content": "It is 21 °C and clear in Zürich."},
            ],
            "add_generation_prompt": False,
        },
        {
            "name": "tools: own system, content with two calls, two tool results",
            "tools": TOOLS,
            "messages": [
                {"role": "system", "content": "You are a support agent."},
                {"role": "user", "content": "Weather and my open orders (customer 42)?"},
                {"role": "assistant", "content": "Let me check both.", "tool_calls": [call_weather, call_orders]},
                {"role": "tool", "content": "sunny"},
                {"role": "tool", "content": "[{\"id\": 7}]"},
                {"role": "assistant", "content": "Sunny, and you have one open order (#7)."},
            ],
            "add_generation_prompt": False,
        },
        {
            "name": "tools: after the tool results, generation prompt",
            "tools": TOOLS,
            "messages": [
                {"role": "user", "content": "Weather in Zürich?"},
                {"role": "assistant", "content": None, "tool_calls": [call_weather]},
                {"role": "tool", "content": "rain"},
            ],
            "add_generation_prompt": True,
        },
    ]


def render_case(tok, template: str, tagged: str, case: dict, special: dict, with_tokens: bool) -> dict:
    kwargs = dict(tools=case.get("tools"), add_generation_prompt=case["add_generation_prompt"])
    text = tok.apply_chat_template(case["messages"], chat_template=template, tokenize=False, **kwargs)
    rendered, spans = render_jinja_template(
        conversations=[case["messages"]], chat_template=tagged, return_assistant_tokens_mask=True, **kwargs, **special
    )
    assert rendered[0] == text, f"tagged template renders differently for {case['name']!r}"
    out = {**case, "expected": text, "assistant_spans": [list(s) for s in spans[0]]}
    if with_tokens:
        enc = tok.apply_chat_template(
            case["messages"], chat_template=tagged, tokenize=True, return_dict=True, return_assistant_tokens_mask=True, **kwargs
        )
        out["input_ids"] = list(enc["input_ids"])
        out["assistant_masks"] = list(enc["assistant_masks"])
    return out


def main() -> None:
    hf_logging.set_verbosity_error()
    gguf_path = MODEL_DIR / MODEL_FILE
    if not gguf_path.exists():
        raise SystemExit(f"{gguf_path} missing: run bash scripts/fetch-llm.sh")
    OUT.mkdir(parents=True, exist_ok=True)
    small_dir = OUT / "small"
    if small_dir.exists():
        shutil.rmtree(small_dir)
    small_dir.mkdir()

    fields = reader_fields(gguf_path)
    hf = AutoTokenizer.from_pretrained(str(MODEL_DIR), gguf_file=MODEL_FILE)
    ref = with_digits(hf)

    def encode(t, s):
        return t.encode(s, add_special_tokens=True)

    smollm2 = {
        "reference": [encode(ref, s) for s in TEXTS],
        "hf_gguf": [encode(hf, s) for s in TEXTS],
    }
    smollm2["decoded"] = [ref.decode(ids) for ids in smollm2["reference"]]
    smollm2["decoded_skip_special"] = [ref.decode(ids, skip_special_tokens=True) for ids in smollm2["reference"]]
    smollm2["reference_vs_hf_gguf"] = [i for i, (a, b) in enumerate(zip(smollm2["reference"], smollm2["hf_gguf"])) if a != b]
    smollm2["special"] = {
        "bos_token": hf.bos_token, "eos_token": hf.eos_token, "pad_token": hf.pad_token, "unk_token": hf.unk_token,
        "bos_token_id": hf.bos_token_id, "eos_token_id": hf.eos_token_id, "pad_token_id": hf.pad_token_id,
        "unk_token_id": hf.unk_token_id, "vocab_size": len(hf),
    }

    small = {}
    with tempfile.TemporaryDirectory() as tmp:
        for pre in SMALL_PRES:
            path = small_dir / f"{pre}.gguf"
            write_small_gguf(path, fields, pre)
            shutil.copy(path, Path(tmp) / path.name)
            t = AutoTokenizer.from_pretrained(tmp, gguf_file=path.name)
            r = with_digits(t) if pre == "smollm" else t
            folder = small_dir / pre
            r.save_pretrained(str(folder))
            for extra in folder.iterdir():
                if extra.name not in ("tokenizer.json", "tokenizer_config.json"):
                    extra.unlink()
            reloaded = AutoTokenizer.from_pretrained(str(folder))
            ids = [encode(r, s) for s in TEXTS]
            assert ids == [encode(reloaded, s) for s in TEXTS], f"{pre}: saved tokenizer.json tokenizes differently"
            small[pre] = {
                "gguf": f"small/{pre}.gguf",
                "folder": f"small/{pre}",
                "add_bos_token": pre == "llama-bpe",
                "reference": ids,
                "hf_gguf": [encode(t, s) for s in TEXTS],
                "decoded": [r.decode(i) for i in ids],
                "sha256": sha256(path),
            }
    write_json(small_dir / "qwen2" / "generation_config.json", {"eos_token_id": [2, 0]})

    write_json(
        OUT / "corpus.json",
        {
            "versions": {**versions(), "gguf": importlib.metadata.version("gguf")},
            "model": {"file": f".cache/models/SmolLM2-135M-Instruct/{MODEL_FILE}", "sha256": sha256(gguf_path)},
            "texts": TEXTS,
            "smollm2": smollm2,
            "small": small,
        },
    )

    smollm_template = fields["tokenizer.chat_template"]
    special = {"bos_token": hf.bos_token, "eos_token": hf.eos_token, "pad_token": hf.pad_token, "unk_token": hf.unk_token}
    templates = {
        "smollm2": {"source": "SmolLM2-135M-Instruct GGUF tokenizer.chat_template", "template": smollm_template},
        "qwen2.5": {"source": "Qwen/Qwen2.5-0.5B-Instruct tokenizer_config.json chat_template", "template": QWEN25_TEMPLATE},
    }
    cases = [
        {"template": "smollm2", **render_case(ref, smollm_template, smollm_tagged(smollm_template), c, special, True)}
        for c in smollm_cases()
    ] + [
        {"template": "qwen2.5", **render_case(ref, QWEN25_TEMPLATE, QWEN25_TAGGED, c, special, False)}
        for c in qwen_cases()
    ]
    write_json(
        OUT / "chat.json",
        {"versions": {**versions(), "jinja2": importlib.metadata.version("jinja2")}, "special_tokens": special, "templates": templates, "cases": cases},
    )
    print(f"wrote {OUT}: {len(TEXTS)} texts, {len(cases)} chat cases; "
          f"SmolLM2 reference differs from hf_gguf on {len(smollm2['reference_vs_hf_gguf'])} texts")


if __name__ == "__main__":
    main()
