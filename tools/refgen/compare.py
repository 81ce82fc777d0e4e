"""Compare fixture trees against MANIFEST.json (plain python3, no third-party modules)."""
import hashlib
import json
import os
import sys


def table(root):
    out = {}
    for dp, dn, fns in os.walk(root):
        dn.sort()
        for fn in sorted(fns):
            p = os.path.join(dp, fn)
            rel = os.path.relpath(p, root)
            if rel in ("MANIFEST.json", "README.md") or "__pycache__" in rel:
                continue
            h = hashlib.sha256()
            with open(p, "rb") as f:
                for c in iter(lambda: f.read(1 << 20), b""):
                    h.update(c)
            out[rel] = {"bytes": os.path.getsize(p), "sha256": h.hexdigest()}
    return out


def diff(a, b, la, lb):
    bad = 0
    for k in sorted(set(a) | set(b)):
        if k not in a:
            print(f"only in {lb}: {k}"); bad += 1
        elif k not in b:
            print(f"only in {la}: {k}"); bad += 1
        elif a[k]["sha256"] != b[k]["sha256"]:
            print(f"differs: {k}"); bad += 1
    return bad


def main():
    mode, data = sys.argv[1], sys.argv[2]
    with open(os.path.join(data, "MANIFEST.json")) as f:
        man = json.load(f)["files"]
    if mode == "static":
        bad = diff(man, table(data), "MANIFEST.json", data)
    else:
        fresh = sys.argv[3]
        with open(os.path.join(fresh, "MANIFEST.json")) as f:
            fman = json.load(f)["files"]
        bad = diff(man, fman, "committed MANIFEST.json", "fresh MANIFEST.json")
        bad += diff(fman, table(fresh), "fresh MANIFEST.json", fresh)
    if bad:
        print(f"refgen verify ({mode}): {bad} mismatches"); sys.exit(1)
    print(f"refgen verify ({mode}): {len(man)} files match")


if __name__ == "__main__":
    main()
