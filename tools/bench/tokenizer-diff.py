#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Differential test of resident's C tokenizer against HF `tokenizers` on
random documents built to hit the corners (added-token fragments,
contractions incl. Unicode case folding, every White_Space kind, combining
marks from old and new Unicode versions, Hangul jamo, Indic/Thai/Hebrew/
Arabic clusters, emoji ZWJ sequences, random code points of all planes).
Prints the first differing document, if any. Not part of the test suite
(needs the PyPI package); the goldens it finds go to
engine/text/testdata/tok/gen.py.

    .venv-tok/bin/python tools/bench/tokenizer-diff.py --build build \\
        --model ../shared/models/qwen3-tokenizer --docs 20000 --seed 3
"""
import argparse
import os
import random
import subprocess
import sys
import tempfile

from tokenizers import Tokenizer

PIECES = [
    "<|im_start|>", "<|im_end|>", "<think>", "</think>", "<tool_call>", "<|endoftext|>",
    "<|im_sta", "<", "|>", "'s", "'S", "'ll", "'\u017f", "\u017f", "\u212a", "'", " ", "  ",
    "\n", "\r\n", "\t", "\u00a0", "\u0085", "\u2028", "\u3000", "\u200d", "\ufe0f",
    "e\u0301", "\u0301", "\u0308", "A\u030a", "\u1100\u1161\u11a8", "\uac00\u11a8",
    "\u0915\u094d\u0937", "\u0e01\u0e34", "\u05e9\u05c1", "\u0627\u064e", "123",
    "\u0661\u0662", "\u00bd", "\u2460", "x", "Hello", "world", "CAPS", "mIxEd",
    "\u65e5\u672c\u8a9e", "\u4e2d\u6587", "\ud55c\uad6d\uc5b4", "\U0001f600",
    "\U0001f468\u200d\U0001f469\u200d\U0001f467", "\U0001f3f3\ufe0f\u200d\U0001f308",
    "{", "}", "();", "...", "!!!", "\\", "\"", "\u00ad", "\ufeff", "\u1df6", "\u0316",
    "\U0001e4ef", "\U00011f42", "\u08d3", "\u0323", "o\u0302", "\u089b", "\U0001f3fd",
    "\x7f",
]


def random_doc(rng):
    out = []
    for _ in range(rng.randint(1, 25)):
        if rng.random() < 0.8:
            out.append(rng.choice(PIECES))
        else:
            cp = rng.choice([rng.randint(0x20, 0x7E), rng.randint(0xA0, 0x2FFF),
                             rng.randint(0x3000, 0xD7FF), rng.randint(0xE000, 0xFFFD),
                             rng.randint(0x10000, 0x1FFFF), rng.randint(0x20000, 0x323AF)])
            out.append(chr(cp))
    return "".join(out).replace("\0", " ")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default="build")
    ap.add_argument("--model", required=True)
    ap.add_argument("--docs", type=int, default=20000)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    docs = [random_doc(rng) for _ in range(args.docs)]
    hf = Tokenizer.from_file(os.path.join(args.model, "tokenizer.json"))
    exe = os.path.join(args.build, "engine/text/tokenizer-bench")
    with tempfile.TemporaryDirectory() as tmp:
        corpus, ids_out = os.path.join(tmp, "corpus"), os.path.join(tmp, "ids")
        with open(corpus, "wb") as f:
            f.write("\0".join(docs).encode("utf-8"))
        subprocess.run([exe, args.model, corpus, "1", ids_out], check=True,
                       capture_output=True)
        with open(ids_out) as f:
            c_ids = [int(x) for x in f]
    pos = 0
    for d in docs:
        ids = hf.encode(d, add_special_tokens=False).ids
        if c_ids[pos:pos + len(ids)] != ids:
            print("MISMATCH", repr(d), "HF", ids, "C", c_ids[pos:pos + len(ids)])
            return 1
        pos += len(ids)
    print(f"{len(docs)} documents, {pos} ids: identical to HF tokenizers"
          if pos == len(c_ids) else f"C produced {len(c_ids) - pos} extra ids")
    return 0 if pos == len(c_ids) else 1


if __name__ == "__main__":
    sys.exit(main())
