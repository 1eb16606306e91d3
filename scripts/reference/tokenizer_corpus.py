"""Token-id parity reference for the tokenizer: test/fixtures/tokenizer/corpus.json.

For each hard case (accents, CJK, emoji, control and zero-width characters,
odd spaces, over-long words, punctuation, numbers, URLs, special-token text,
truncation, text pairs) it records what three Hugging Face tokenizers for
all-MiniLM-L6-v2 (uncased WordPiece) produce with truncation=True
('longest_first'), no padding:

  fast  AutoTokenizer.from_pretrained(model folder)  (tokenizer.json, Rust `tokenizers`)
  slow  BertTokenizerLegacy(vocab.txt, do_lower_case=True, tokenize_chinese_chars=True,
        strip_accents=None)  (pure-Python WordPiece; in transformers 5 this is the
        former slow `BertTokenizer`; the name `BertTokenizer` now means the Rust-backed one)
  vocab BertTokenizer(vocab=<vocab.txt dict>, same options)  (Rust backend built from
        vocab.txt alone; only its agreement with `fast` is recorded)
  raw   tokenizers.Tokenizer.from_file(tokenizer.json), no padding, truncation
        longest_first at max_length, .encode(text, text_pair)  (what a port of the
        Rust library, such as @huggingface/tokenizers, does without the transformers
        wrapper; recorded only where it differs from `fast`)

`fast` is the reference the product must match (it is what tokenizer.json
means); every case where `slow` differs is listed in `fast_vs_slow_differences`.

Run: python3 scripts/reference/tokenizer_corpus.py   (needs scripts/fetch-model.sh first)
"""

from __future__ import annotations

from common import FIXTURES, MINILM_DIR, deterministic, make_readable, versions, write_json  # before HF: offline

from tokenizers import Tokenizer
from transformers import AutoTokenizer
from transformers.models.bert.tokenization_bert import BertTokenizer, load_vocab
from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy
from transformers.utils import logging as hf_logging

OUT = FIXTURES / "tokenizer"
DEFAULT_MAX_LENGTH = 128
SLOW_OPTIONS = dict(do_lower_case=True, tokenize_chinese_chars=True, strip_accents=None)

LONG_TEXT = " ".join(
    ["My transfer to another bank has been pending for three days and the recipient has not received it yet."] * 12
)
LONG_A = " ".join(["Where is the money I sent to my sister last week?"] * 10)
LONG_B = " ".join(["It left my account on Monday but never arrived, can you check?"] * 10)


def single(name: str, texts: list[str], max_length: int = DEFAULT_MAX_LENGTH) -> list[dict]:
    return [{"group": name, "text": t, "text_pair": None, "max_length": max_length} for t in texts]


def pairs(name: str, items: list[tuple[str, str]], max_length: int = DEFAULT_MAX_LENGTH) -> list[dict]:
    return [{"group": name, "text": a, "text_pair": b, "max_length": max_length} for a, b in items]


def cases() -> list[dict]:
    c: list[dict] = []
    c += single("basic", [
        "hello world", "Hello World", "HELLO WORLD", "iPhone McDonald's", "The quick brown fox jumps over the lazy dog.",
        "I am still waiting on my card?", "How do I top up my account?", "unaffable", "tokenization",
    ])
    c += single("accents", [
        "café", "naïve", "Ångström", "Crème Brûlée", "résumé", "São Paulo", "Zürich", "ñandú",
        "e\u0301", "Ελληνικά", "ΣΑΣ", "Привет мир", "İstanbul", "straße", "ǅemal", "ﬁnance", "Tiếng Việt",
    ])
    c += single("cjk", [
        "中文字符", "日本語", "한국어", "中文abc混合123", "こんにちは世界", "ｆｕｌｌｗｉｄｔｈ ＡＢＣ", "㐀", "𠀀",
        "〇々", "ㄱㄴㄷ", "我的银行卡丢了，怎么办？", "カードが届きません。",
    ])
    c += single("emoji", [
        "👍", "😀😃", "👨\u200d👩\u200d👧", "🇫🇷", "❤\ufe0f", "♡", "to send me your vote♡♡", "☺", "👍🏽",
        "ok thx 👍", "💸💸 refund", "🙂🙃🤔",
    ])
    c += single("control", [
        "\u0000", "a\u0000b", "\u0007bell", "tab\there", "line\r\nbreak", "del\u007fchar", "nel\u0085x",
        "\u001b[31mred", "rep\ufffdlace", "soft\u00adhyphen", "\u0001\u0002\u0003",
    ])
    c += single("zero_width", [
        "\u200b", "a\u200bb", "\u200d", "\ufeffBOM", "zw\u200cnj", "word\u2060joiner", "left\u200eto",
    ])
    c += single("spaces", [
        "\u00a0", "a\u00a0b", "\u3000", "a\u3000b", "em\u2003space", "line\u2028sep", "para\u2029sep",
        "   ", "\t\n", "\r\n\r\n", "", "  leading and trailing  ", "many     spaces",
    ])
    c += single("long_words", [
        "x" * 99, "x" * 100, "x" * 101, "a" * 200, "pneumonoultramicroscopicsilicovolcanoconiosis",
        "antidisestablishmentarianism", "x" * 101 + " ok", "é" * 101,
    ])
    c += single("punctuation", [
        "!!!", "...", "?!?!", "hello,world", "(parentheses)", "[brackets]", "don't", "rock'n'roll", "e-mail",
        "—–-", "“quotes” «guillemets» ‘single’", "$100", "50%", "#hashtag @mention", "a/b\\c", "~`^|",
        "§¶†‡", "¿Qué?", "¡Hola!", "C++ & C#", "1+1=2", "<html><body>", "**bold** _it_", "…",
    ])
    c += single("numbers", [
        "123", "3.14159", "1,000,000", "1e-10", "0x1F", "2024-01-15", "12:30pm", "+1 (555) 123-4567",
        "٣٤٥", "①②", "½ ¾", "10km/h", "€1,250.00", "£20", "¥5000",
    ])
    c += single("urls", [
        "https://www.example.com/path?query=1&b=2#frag", "user@example.com", "www.bank.co.uk", "ftp://x.y/z",
    ])
    c += single("special_token_text", ["[CLS] hello [SEP]", "[MASK]", "[UNK]", "[PAD]", "[cls]", "hello[SEP]world"])
    c += single("scripts", [
        "مرحبا بالعالم", "שלום", "नमस्ते", "สวัสดี", "ქართული", "Հայերեն", "ᚠᚢᚦ",
    ])
    c += single("truncation_128", [LONG_TEXT])
    c += single("truncation_512", [LONG_TEXT + " " + LONG_TEXT + " " + LONG_TEXT + " " + LONG_TEXT], 512)
    c += single("truncation_16", [
        "I transferred money to my landlord but it still shows as pending, why?", LONG_TEXT,
        "café naïve Ångström 中文字符 日本語 한국어 emoji 👍 ♡♡", "x" * 101 + " " + "y" * 20 + " done",
        "one two three four five six seven eight nine ten eleven twelve thirteen fourteen",
    ], 16)
    c += pairs("pairs", [
        ("How do I top up?", "Top up with a card"), ("café", "naïve"), ("中文", "日本語"), ("hi", ""),
        ("", "only the second"), ("Is my card blocked?", "[SEP]"), (LONG_TEXT, "short second"),
        ("short first", LONG_TEXT), (LONG_A, LONG_B),
    ])
    c += pairs("pairs_16", [
        ("How do I top up my account with a card?", "Top up with a card"),
        ("short", "a much longer second segment that must be cut down to fit"),
        (LONG_A, LONG_B), ("a b c d e f g", "h i j k l m n"),
    ], 16)
    c += pairs("pairs_5", [("first segment here", "second segment here")], 5)
    for i, case in enumerate(c):
        case["id"] = i
    return c


def encode(tok, case: dict) -> dict:
    enc = tok(case["text"], case["text_pair"], truncation="longest_first", max_length=case["max_length"],
              padding=False, return_token_type_ids=True, return_attention_mask=True)
    return {
        "input_ids": list(enc["input_ids"]),
        "token_type_ids": list(enc["token_type_ids"]),
        "attention_mask": list(enc["attention_mask"]),
        "tokens": tok.convert_ids_to_tokens(list(enc["input_ids"])),
    }


def encode_raw(raw: Tokenizer, case: dict) -> dict:
    raw.enable_truncation(case["max_length"], strategy="longest_first")
    enc = raw.encode(case["text"], case["text_pair"])
    return {"input_ids": enc.ids, "token_type_ids": enc.type_ids, "attention_mask": enc.attention_mask,
            "tokens": enc.tokens}


def main() -> None:
    deterministic()
    hf_logging.set_verbosity_error()  # the slow tokenizer warns once per truncated pair
    raw = Tokenizer.from_file(str(MINILM_DIR / "tokenizer.json"))
    raw.no_padding()
    fast = AutoTokenizer.from_pretrained(MINILM_DIR)
    vocab_file = str(MINILM_DIR / "vocab.txt")
    slow = BertTokenizerLegacy(vocab_file, **SLOW_OPTIONS)
    from_vocab = BertTokenizer(vocab=load_vocab(vocab_file), **SLOW_OPTIONS)

    records, diffs, vocab_diffs, raw_diffs = [], [], [], []
    for case in cases():
        f, s, v = encode(fast, case), encode(slow, case), encode(from_vocab, case)
        same = {k: f[k] == s[k] for k in ("input_ids", "token_type_ids", "attention_mask")}
        if not all(same.values()):
            diffs.append({"id": case["id"], "group": case["group"], "text": case["text"],
                          "text_pair": case["text_pair"], "fast_tokens": f["tokens"], "slow_tokens": s["tokens"]})
        if f["input_ids"] != v["input_ids"] or f["token_type_ids"] != v["token_type_ids"]:
            vocab_diffs.append(case["id"])
        r = encode_raw(raw, case)
        if any(f[k] != r[k] for k in ("input_ids", "token_type_ids", "attention_mask")):
            raw_diffs.append({"id": case["id"], "text": case["text"], "text_pair": case["text_pair"], "raw": r})
        records.append({**case, "fast": f, "slow": s, "fast_equals_slow": all(same.values())})

    assert len(records) >= 120, len(records)
    write_json(OUT / "corpus.json", {
        "model": "all-MiniLM-L6-v2 (uncased WordPiece, vocab 30522)",
        "call": {"truncation": "longest_first", "padding": False, "add_special_tokens": True,
                 "default_max_length": DEFAULT_MAX_LENGTH},
        "fast": f"AutoTokenizer.from_pretrained(<model>) -> {type(fast).__name__} (tokenizer.json)",
        "slow": f"BertTokenizerLegacy(vocab.txt, {SLOW_OPTIONS})",
        "cases_count": len(records),
        "fast_vs_slow_differences": diffs,
        "fast_vs_vocab_built_rust_differences": vocab_diffs,
        "fast_vs_raw_tokenizers_differences": raw_diffs,
        "versions": versions(),
        "cases": records,
    })
    make_readable(OUT)
    print(f"wrote {OUT / 'corpus.json'}: {len(records)} cases, fast!=slow in {len(diffs)}, "
          f"fast!=vocab-built in {len(vocab_diffs)}, fast!=raw tokenizers in {len(raw_diffs)}")
    for d in diffs:
        print(f"  #{d['id']} [{d['group']}] {d['text']!r:.60} | pair={d['text_pair']!r:.30}\n"
              f"     fast={d['fast_tokens']}\n     slow={d['slow_tokens']}")
    for d in raw_diffs:
        print(f"  raw #{d['id']} {d['text']!r:.40} | pair={d['text_pair']!r:.30} raw={d['raw']['tokens']}")


if __name__ == "__main__":
    main()
