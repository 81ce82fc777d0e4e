#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
#
# Checks the compiled GPU kernels without a GPU:
#   - every code object / cubin exists and is an ELF for the right machine
#     (EM_AMDGPU = 224 for the .hsaco, EM_CUDA = 190 for the .cubin);
#   - the gfx1151 prefill kernel contains v_wmma_i32_16x16x16_iu8 (the int8
#     matrix unit is really used) and the peak-rate kernel too;
#   - the decode GEMV loads its weights with 16-byte global loads
#     (global_load_b128 / buffer_load_b128 on gfx11);
#   - no kernel spills registers to scratch (private segment size 0 where
#     it matters: the GEMV and the MMQ tiles).
# usage: test-gpu-objects.sh OBJDUMP ARCH GEMV.hsaco MMQ.hsaco BENCH.hsaco FILES...
set -u
objdump=$1 arch=$2 gemv=$3 mmq=$4 bench=$5
shift 5
fail=0

elf_machine() {
    # e_machine: 2 bytes little-endian at offset 18
    od -An -t u2 -j 18 -N 2 "$1" | tr -d ' '
}

for f in "$@"; do
    [ -s "$f" ] || { echo "FAIL: $f missing or empty (build the gpu-* targets)"; fail=1; continue; }
    m=$(elf_machine "$f")
    case "$f" in
        *.hsaco) want=224 ;;
        *.cubin) want=190 ;;
        *) want="" ;;
    esac
    if [ -n "$want" ] && [ "$m" != "$want" ]; then
        echo "FAIL: $f has ELF machine $m, expected $want"
        fail=1
    else
        echo "ok: $f (ELF machine $m)"
    fi
done

dis_mmq=$("$objdump" -d --mcpu="$arch" "$mmq") || { echo "FAIL: cannot disassemble $mmq"; exit 1; }
n=$(printf '%s\n' "$dis_mmq" | grep -c 'v_wmma_i32_16x16x16_iu8')
if [ "$n" -gt 0 ]; then
    echo "ok: $mmq has $n v_wmma_i32_16x16x16_iu8"
else
    echo "FAIL: $mmq has no v_wmma_i32_16x16x16_iu8 (int8 WMMA not used)"
    fail=1
fi
n=$("$objdump" -d --mcpu="$arch" "$bench" | grep -c 'v_wmma_i32_16x16x16_iu8')
[ "$n" -gt 0 ] && echo "ok: $bench has $n v_wmma_i32_16x16x16_iu8" ||
    { echo "FAIL: $bench has no int8 WMMA"; fail=1; }

dis_gemv=$("$objdump" -d --mcpu="$arch" "$gemv") || { echo "FAIL: cannot disassemble $gemv"; exit 1; }
n=$(printf '%s\n' "$dis_gemv" | grep -cE '(global|buffer)_load_b128')
if [ "$n" -gt 0 ]; then
    echo "ok: $gemv has $n 16-byte loads (global/buffer_load_b128)"
else
    echo "FAIL: $gemv has no 16-byte loads"
    fail=1
fi
n=$(printf '%s\n' "$dis_gemv" | grep -cE '(global|buffer)_load_(u|d)?(byte|short|b16|b32|u8|u16|i8|i16|dword)\b' || true)
echo "info: $gemv has $n narrower global loads (scales, activations)"

# register spills: the code object's metadata lists a private segment
# (scratch) size per kernel; the GEMV and MMQ kernels must not need one.
readelf=$(dirname "$objdump")/llvm-readelf-19
[ -x "$readelf" ] || readelf=$(command -v llvm-readelf-19 || true)
if [ -n "$readelf" ]; then
    for f in "$gemv" "$mmq"; do
        s=$("$readelf" --notes "$f" | grep -E 'private_segment_fixed_size' | grep -vc ': 0$')
        if [ "$s" -ne 0 ]; then
            echo "FAIL: $f: $s kernels use scratch (register spills)"
            fail=1
        else
            echo "ok: $f: no kernel uses scratch"
        fi
    done
else
    echo "info: llvm-readelf-19 not found, spill check skipped"
fi
exit $fail
