# SPDX-License-Identifier: Apache-2.0
"""Regenerates the tokenizer goldens in this folder with HF `tokenizers`
(the oracle vLLM uses). Run from the repository root:

    python3 -m venv .venv-tok && .venv-tok/bin/pip install tokenizers
    .venv-tok/bin/python engine/text/testdata/tok/gen.py ../shared/models/qwen3-tokenizer

Writes:
  qwen3_goldens.json   [{"text", "ids"}] on the Qwen3 vocabulary
  synth/tokenizer.json a small byte-level BPE (first 3000 Qwen3 merges, the
                       Qwen3.5 split regex, added tokens with every flag)
  synth_goldens.json   [{"text", "ids"}] on synth/
  utf8_replace.json    [{"hex", "text"}]: Python's decode("utf-8","replace")
"""
import json
import os
import random
import sys

from tokenizers import Tokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
QWEN35 = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?[\\p{L}\\p{M}]+|"
          "\\p{N}| ?[^\\s\\p{L}\\p{M}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")

FIXED = [
    "", " ", "  ", "\n", "\n\n\n", "\t\t", " \n \n", "a", "Hello world",
    "Hello, World! How's it going? I'M FINE, THEY'LL SEE, we'd", "'s 'S 'Re",
    "int main(void) {\n    return 0;\n}\n", "x=1;y=22;z=333;w=4444",
    "3.14159 2,718 1e-9 0x1F 1_000_000", "日本語のテキストです。", "中文测试，你好！",
    "한국어 텍스트 입니다", "Привет, мир!", "مرحبا بالعالم", "שלום עולם",
    "नमस्ते दुनिया", "สวัสดีครับ", "Ελληνικά κείμενα", "🎉🎉 party 🥳 😶‍🌫️ 👨‍👩‍👧‍👦",
    " 🎉", "e\u0301 cafe\u0301 Cafe\u0301s", "\u212b \u2126 \u1e0b\u0323",
    "\u1100\u1161\u11a8 \uac00\u11a8", "a\u0308\u0301 o\u0302\u0323",
    "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n",
    "<|im_start|><|im_start|> <|im_end|>x<|endoftext|>", "<|im_sta", "<tool_call>\n{\"a\": 1}\n</tool_call>",
    "a" * 200, "ab" * 150, " " * 300 + "x", "!" * 120, "\n" * 50 + "a",
    "Supercalifragilisticexpialidocious" * 5, "😀" * 40,
    "\u0085a\u0085 \u00a0b\u2028c\u3000d", "x\r\ny\rz\n\r", "tab\tsep\tvalues\t\t\n",
    "mixed 123abc ABC123 a1b2c3", "\u0000nul\u0000", "\x7f\x01\x1b[0m",
    "http://example.com/path?q=1&r=2#frag", "email@example.org",
    "$$ \\frac{a}{b} $$", "    indented\n        more\n", "ſ 'ſ 'Ｓ",
    "\U0001F600\U0001F3FD\uFE0F\u200D", "\u0300\u0301 leading marks", "4\u0301 digit mark",
    "it'\u017ft", "'\u017ft", "x'\u017f y", "I'LL WE'VE", "a \u0085b", "\u212a'\u212a",
    # letters / marks / digits added in Unicode 15 and 16 (HF uses 16.0)
    "a\u1c89b \U00013460x'S\U00013a0a's", "\U00031350\U0002ebf0 CJK H/I", "a\U00011f00b",
    "x\U0001ccf0y \U00016130", "\U0001e4d0\U0001e4ec \U00011f04", "\u0897a \U00010d4a1",
    # marks added after Unicode 9.0: HF's NFC (Unicode 9.0 data) leaves them as starters
    "a\u1df6\u0316 a\u1df6\u0301 e\u0301\u1df6\u0316x", "a\U0001e4ef\U0001e4ec\u0316",
    "o\u0302\U00011f42\u0323 \u0915\u093c\u08d3\u0316",
]


def rand_text(rng, n):
    ranges = [(0x20, 0x7e)] * 6 + [(0x0a, 0x0a)] * 2 + [(0xa0, 0x24f), (0x300, 0x36f),
              (0x370, 0x3ff), (0x400, 0x4ff), (0x590, 0x6ff), (0x900, 0x97f),
              (0xe00, 0xe7f), (0x1100, 0x11ff), (0x2000, 0x206f), (0x3000, 0x30ff),
              (0x4e00, 0x9fff), (0xac00, 0xd7a3), (0xfe00, 0xfe0f), (0xff00, 0xffef),
              (0x1f300, 0x1faff), (0x10000, 0x1ffff)]
    out = []
    for _ in range(n):
        lo, hi = rng.choice(ranges)
        c = rng.randint(lo, hi)
        if 0xd800 <= c <= 0xdfff:
            c = 0x41
        out.append(chr(c))
    return "".join(out)


def goldens(tok, texts):
    return [{"text": t, "ids": tok.encode(t, add_special_tokens=False).ids} for t in texts]


def main():
    src = sys.argv[1]
    rng = random.Random(20261126)
    texts = FIXED + [rand_text(rng, rng.randint(1, 60)) for _ in range(300)]
    qwen3 = Tokenizer.from_file(os.path.join(src, "tokenizer.json"))
    with open(os.path.join(HERE, "qwen3_goldens.json"), "w", encoding="utf-8") as f:
        json.dump(goldens(qwen3, texts), f, ensure_ascii=False, indent=0)

    # synthetic: 3000 merges, Qwen3.5 regex, flagged added tokens
    full = json.load(open(os.path.join(src, "tokenizer.json"), encoding="utf-8"))
    k = 3000
    vocab = {t: i for t, i in full["model"]["vocab"].items() if i < 256 + k}
    merges = full["model"]["merges"][:k]
    for a, b in merges:
        assert a in vocab and b in vocab and a + b in vocab
    full["model"]["vocab"] = vocab
    full["model"]["merges"] = merges
    full["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = QWEN35
    base = 256 + k
    flags = [
        ("<|endoftext|>", dict(special=True)),
        ("<|im_start|>", dict(special=True)),
        ("<|im_end|>", dict(special=True)),
        ("<think>", dict(special=False)),
        ("</think>", dict(special=False)),
        ("<mask>", dict(special=True, lstrip=True)),
        ("<sep>", dict(special=True, rstrip=True)),
        ("<both>", dict(special=True, lstrip=True, rstrip=True)),
        ("<sw>", dict(special=False, single_word=True)),
        ("zqx", dict(special=False, single_word=True)),
        ("caf\u00e9", dict(special=False, normalized=True)),
        ("<norm>", dict(special=False, normalized=True)),
        ("<im", dict(special=False)),
        ("Ġraw", dict(special=False)),
        ("\u00c5ngstr\u00f6m", dict(special=True, normalized=False)),
    ]
    added = []
    for i, (content, f) in enumerate(flags):
        e = {"id": base + i, "content": content, "single_word": False, "lstrip": False,
             "rstrip": False, "normalized": False, "special": False}
        e.update(f)
        added.append(e)
    full["added_tokens"] = added
    os.makedirs(os.path.join(HERE, "synth"), exist_ok=True)
    path = os.path.join(HERE, "synth", "tokenizer.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(full, f, ensure_ascii=False)
    synth = Tokenizer.from_file(path)
    stexts = texts[:80] + [
        "a <mask> b", "a   <mask>   b", "<mask><mask>", " <sep>  x", "x <both>  y  <both>",
        "<sw> <sw>s s<sw> <sw>_ <sw>. (<sw>) <sw><sw>", "a <sw> b", "<sw>", "é<sw> <sw>9",
        "zqx zqxs szqx zqx_ zqx. (zqx) zqxzqx zqx", "a zqx b", "zqx", "ézqx zqx9 ́zqx",
        "cafe\u0301 caf\u00e9 CAF\u00c9", "<norm> <norm>x", "<im_start|> <im", "Ġraw raw",
        "A\u030angstro\u0308m \u00c5ngstr\u00f6m", "<|im_start|>system\n<mask> zqx<sep> end<|im_end|>",
        "\u3000<mask>\u3000", "\u0085<both>\u0085",
    ] + [rand_text(rng, rng.randint(1, 40)) for _ in range(100)]
    with open(os.path.join(HERE, "synth_goldens.json"), "w", encoding="utf-8") as f:
        json.dump(goldens(synth, stexts), f, ensure_ascii=False, indent=0)

    # UTF-8 replacement oracle
    cases = []
    interesting = [b"\xe0\x80\x80", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xf0\x9f\x8e",
                   b"\xc0\xaf", b"\xe2\x82", b"\x80\x80", b"a\xffb", b"\xf0\x9f\x8e\x89",
                   b"\xe2\x82\xac\xe2", b"\xf5\x80", b"\xe1\x80\xe1\x80\x80"]
    for b in interesting:
        cases.append(b)
    alphabet = [0x41, 0x80, 0x8f, 0x90, 0x9f, 0xa0, 0xbf, 0xc0, 0xc2, 0xdf, 0xe0, 0xe1,
                0xed, 0xef, 0xf0, 0xf1, 0xf4, 0xf5, 0xff, 0x20]
    for _ in range(400):
        cases.append(bytes(rng.choice(alphabet) for _ in range(rng.randint(1, 12))))
    with open(os.path.join(HERE, "utf8_replace.json"), "w", encoding="utf-8") as f:
        json.dump([{"hex": b.hex(), "text": b.decode("utf-8", "replace")} for b in cases],
                  f, ensure_ascii=False, indent=0)


if __name__ == "__main__":
    main()
