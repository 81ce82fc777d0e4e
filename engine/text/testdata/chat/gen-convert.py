#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Generate schema-typed argument conversion goldens for engine/text/test-parse.c.

convert() restates the rules of vLLM's Qwen3CoderToolParser._convert_param_value
(spec text.md section 4) on top of the real CPython int(), float(), json.loads,
ast.literal_eval and json.dumps, so the C conversion is checked against
Python itself. Usage: python3 gen-convert.py SEED COUNT > convert-goldens.json
Records: {"schema", "value", "want"}; want is null where json.dumps fails
(vLLM then drops to plain content; the C side keeps the raw string)."""
import ast
import json
import random
import sys

R = random.Random(int(sys.argv[1]))
def convert(value, pc):
    # the rules of _convert_param_value, on real Python builtins
    allows_null = False
    if isinstance(pc, dict) and "type" in pc:
        t = str(pc["type"]).strip().lower(); allows_null = t == "null"
    elif isinstance(pc, dict) and "anyOf" in pc:
        t = "string"; picked = False
        for o in pc["anyOf"]:
            if isinstance(o, dict) and "type" in o:
                ot = str(o["type"]).strip().lower()
                if ot == "null": allows_null = True
                elif not picked: t = ot; picked = True
    else: t = "string"
    if allows_null and value.lower() in ("null", "none"): return None
    if t in ["string", "str", "text", "varchar", "char", "enum"]: return value
    if value.lower() in ("null", "none"): return None
    if t.startswith(("int", "uint", "long", "short", "unsigned")):
        try: return int(value)
        except (ValueError, TypeError): return value
    if t.startswith(("num", "float")):
        try:
            f = float(value)
            return f if f - int(f) != 0 else int(f)
        except (ValueError, TypeError): return value
    if t in ["boolean", "bool", "binary"]: return value.lower() == "true"
    cont = t in ["object", "array", "arr"] or t.startswith("dict") or t.startswith("list")
    if cont:
        try:
            p = json.loads(value)
            if isinstance(p, str):
                try: p = ast.literal_eval(p)
                except (ValueError, SyntaxError, TypeError): pass
            return p
        except (json.JSONDecodeError, TypeError, ValueError): pass
    try:
        v = ast.literal_eval(value)
        if cont and isinstance(v, str):
            try: v = ast.literal_eval(v)
            except (ValueError, SyntaxError, TypeError): pass
        return v
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError): return value
types = [{"type": "integer"}, {"type": "number"}, {"type": "boolean"}, {"type": "object"}, {"type": "array"}, {"type": "string"},
         {"type": "custom"}, {"type": "null"}, {"anyOf": [{"type": "integer"}, {"type": "null"}]}, {"type": ["integer"]}, {"type": " Float "}]
pieces = ["1", "0", "-", "+", ".", "e", "E", "5", "_", "9" * 20, "0x1f", "0o7", "0b1", "'a'", '"b"', "[", "]", "{", "}", ",", ":", " ", "\n",
          "None", "null", "True", "true", "False", "(", ")", "1.5", "1e400", "nan", "inf", "'it\\'s'", "r'x\\n'", "\\u00e9", "é",
          "{'k': 1}", '{"k": [1, 2.0]}', "#c\n", "j", "'''t'''", "b'x'", "1_000", "00", "07", "\\x41", "NaN", "Infinity", "\t"]
recs = []
seen = set()
for i in range(int(sys.argv[2])):
    v = "".join(R.choice(pieces) for _ in range(R.randint(1, 6)))
    pc = R.choice(types)
    if (v, json.dumps(pc)) in seen: continue
    seen.add((v, json.dumps(pc)))
    try:
        out = json.dumps(convert(v, pc), ensure_ascii=False)
    except (TypeError, ValueError, OverflowError) as e:
        out = None   # vLLM would fail the whole message
    recs.append({"schema": pc, "value": v, "want": out})
json.dump(recs, sys.stdout, ensure_ascii=False)
