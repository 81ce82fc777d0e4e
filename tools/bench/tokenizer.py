#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Tokenizer benchmark: resident's C tokenizer vs HF `tokenizers` (PyPI), same
corpus, same run, single thread. Not a test; numbers go to
docs/performance.md ("Tokenizer").

    python3 -m venv .venv-tok && .venv-tok/bin/pip install tokenizers
    meson compile -C build engine/text/tokenizer-bench
    .venv-tok/bin/python tools/bench/tokenizer.py --build build \
        --model ../shared/models/qwen3-tokenizer

The mixed corpus is built from files in this repository and ../shared:
English prose and Markdown (spec, docs), C source, JSON, and the
multilingual/emoji strings of the tokenizer goldens, concatenated in a fixed
order. The ids of both tokenizers are compared: the benchmark fails if they
differ anywhere.
"""
import argparse
import glob
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAYON_NUM_THREADS", "1")
os.environ.setdefault("RAYON_RS_NUM_CPUS", "1")

from tokenizers import Tokenizer  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def build_corpus():
    parts = []
    for pattern in ("../shared/spec/*.md", "docs/*.md", "engine/text/*.c",
                    "engine/*.c", "kernels/cpu/*.c", "shm/*.c"):
        for p in sorted(glob.glob(os.path.join(ROOT, pattern))):
            with open(p, encoding="utf-8", errors="replace") as f:
                parts.append(f.read())
    with open(os.path.join(ROOT, "engine/text/testdata/tok/qwen3_goldens.json"),
              encoding="utf-8") as f:
        multi = "\n".join(c["text"] for c in json.load(f))
    parts += [multi] * 8
    return "\n".join(parts)


def documents(text, size=4096):
    """Paragraph groups of about `size` bytes: the unit of one encode call,
    like a prompt."""
    docs, cur, n = [], [], 0
    for para in text.split("\n\n"):
        cur.append(para)
        n += len(para) + 2
        if n >= size:
            docs.append("\n\n".join(cur))
            cur, n = [], 0
    if cur:
        docs.append("\n\n".join(cur))
    return docs


def cpu_model():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default="build")
    ap.add_argument("--model", default=os.path.join(ROOT, "../shared/models/qwen3-tokenizer"))
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()

    text = build_corpus().replace("\0", " ")
    docs = documents(text)
    data = "\0".join(docs).encode("utf-8")
    nbytes = sum(len(d.encode("utf-8")) for d in docs)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = os.path.join(tmp, "corpus.txt")
        with open(corpus, "wb") as f:
            f.write(data)

        # HF tokenizers: best of `repeat`, single thread
        t0 = time.perf_counter()
        hf = Tokenizer.from_file(os.path.join(args.model, "tokenizer.json"))
        hf_load = (time.perf_counter() - t0) * 1e3
        best = 1e30
        best_cpu = 1e30
        for _ in range(args.repeat):
            t0, c0 = time.perf_counter(), time.process_time()
            encs = [hf.encode(d, add_special_tokens=False) for d in docs]
            t1, c1 = time.perf_counter(), time.process_time()
            best = min(best, t1 - t0)
            best_cpu = min(best_cpu, c1 - c0)
        hf_ids = [i for e in encs for i in e.ids]
        # HF encode on a fresh object (empty BPE cache) for the cold number
        hf_cold = Tokenizer.from_file(os.path.join(args.model, "tokenizer.json"))
        t0 = time.perf_counter()
        for d in docs:
            hf_cold.encode(d, add_special_tokens=False)
        hf_cold_s = time.perf_counter() - t0

        ids_out = os.path.join(tmp, "ids.txt")
        exe = os.path.join(args.build, "engine/text/tokenizer-bench")
        out = subprocess.run([exe, args.model, corpus, str(args.repeat), ids_out],
                             capture_output=True, text=True, check=True).stdout
        c = json.loads(out)
        with open(ids_out) as f:
            c_ids = [int(x) for x in f]
        # split only: PCRE2 JIT vs interpreter vs a hand-written scanner,
        # for the Qwen2 regex (this model) and the Qwen3.5 regex (synthetic
        # tokenizer in engine/text/testdata/tok/synth)
        splits = []
        for model in (args.model, os.path.join(ROOT, "engine/text/testdata/tok/synth")):
            out = subprocess.run([exe, "--split", model, corpus, str(args.repeat)],
                                 capture_output=True, text=True, check=True).stdout
            splits.append(json.loads(out))

    same = c_ids == hf_ids
    mb = nbytes / 1e6
    res = {
        "cpu": cpu_model(),
        "corpus_bytes": nbytes,
        "documents": len(docs),
        "ids": len(hf_ids),
        "ids_identical": same,
        "hf_tokenizers_version": __import__("tokenizers").__version__,
        "hf_load_ms": round(hf_load, 1),
        "hf_encode_mb_s": round(mb / best, 2),
        "hf_encode_mb_s_cpu": round(mb / best_cpu, 2),
        "hf_encode_cold_mb_s": round(mb / hf_cold_s, 2),
        "c_load_ms": c["load_ms"],
        "c_load_cpu_ms": c["load_cpu_ms"],
        "c_load_cached_ms": c["load_cached_ms"],
        "c_load_cached_cpu_ms": c["load_cached_cpu_ms"],
        "c_encode_mb_s": c["mb_s"],
        "c_encode_mb_s_cpu": c["mb_s_cpu"],
        "speedup_wall": round(c["mb_s"] / (mb / best), 2),
        "speedup_cpu": round(c["mb_s_cpu"] / (mb / best_cpu), 2),
    }
    res["split"] = splits
    print(json.dumps(res, indent=1))
    if not same:
        first = next(i for i, (a, b) in enumerate(zip(c_ids, hf_ids)) if a != b) \
            if any(a != b for a, b in zip(c_ids, hf_ids)) else min(len(c_ids), len(hf_ids))
        print(f"ids differ from HF at position {first}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
