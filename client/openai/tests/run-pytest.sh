#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
# Runs the gateway's end-to-end tests with the project's venv, which has
# the official `openai` package (tools/requirements-test.txt). Exit 77
# (meson: skipped) when something they need is missing, saying what.
root=${RESIDENT_SOURCE_ROOT:?RESIDENT_SOURCE_ROOT is not set (run through meson test)}
build=${RESIDENT_BUILD_ROOT:?RESIDENT_BUILD_ROOT is not set (run through meson test)}
py=$root/.venv/bin/python3
if [ ! -x "$py" ]; then
    echo "skip: $py is missing (tools/setup-deps creates the venv from tools/requirements-test.txt)"
    exit 77
fi
if ! "$py" -c 'import openai, pytest' 2>/dev/null; then
    echo "skip: the venv lacks openai or pytest: $root/.venv/bin/pip install -r $root/tools/requirements-test.txt"
    exit 77
fi
for exe in "$build/daemon/residentd" "$build/client/openai/resident-openai"; do
    if [ ! -x "$exe" ]; then
        echo "skip: $exe is not built"
        exit 77
    fi
done
command -v curl >/dev/null 2>&1 || { echo "skip: curl is not installed (raw SSE framing tests)"; exit 77; }
# The source tree may be read-only (CI): no __pycache__ there.
export PYTHONDONTWRITEBYTECODE=1
exec "$py" -m pytest -q -p no:cacheprovider "$@"
