#!/bin/sh
# `resident-engine generate --text` prints the ids line, then the same ids
# decoded by the model directory's tokenizer: the text line must equal what
# `resident-engine detokenize` makes of the ids line (skip-special semantics
# aside, the bundled model's random output has no special tokens here).
set -eu
engine=$1
model=$RESIDENT_SOURCE_ROOT/tests/data/default-model
[ -d "$model" ] || { echo "SKIP: $model absent"; exit 77; }
out=$("$engine" generate --model "$model" --ids 151644,872,198,9707,151645,198,151644,77091,198 -n 12 --text)
ids=$(printf '%s\n' "$out" | sed -n 1p)
text=$(printf '%s\n' "$out" | sed -n '2,$p')
expect=$(printf '[%s]' "$ids" | "$engine" detokenize --model "$model" --skip-special-tokens)
n=$(printf '%s\n' "$ids" | tr ',' '\n' | grep -c .)
echo "ids ($n): $ids"
echo "text: $text"
[ "$n" -ge 1 ] || { echo "FAIL: no ids"; exit 1; }
[ "$text" = "$expect" ] || { echo "FAIL: --text differs from detokenize: '$expect'"; exit 1; }
echo "ok: --text equals detokenize of the ids"
