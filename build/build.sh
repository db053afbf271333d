#!/usr/bin/env bash
# Build the one-file executable dist/codexlb from codexlb.spec.
#
#   PYTHON=/path/to/venv/bin/python build/build.sh
#
# PYTHON must have codexlb's dependencies and PyInstaller installed
# (pip install -e '.[dev]'). The binary runs on Linux systems whose glibc is as
# new as the one it prints (at most the build machine's).
set -euo pipefail

ROOT="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

PY="${PYTHON:-python3}"
if ! "$PY" -c 'import PyInstaller' 2>/dev/null; then
    echo "build.sh: $PY cannot import PyInstaller; set PYTHON to a venv with '.[dev]' installed" >&2
    exit 1
fi

start=$(date +%s)
"$PY" -m PyInstaller codexlb.spec \
    --noconfirm --clean \
    --log-level WARN \
    --workpath build/work \
    --distpath dist
elapsed=$(( $(date +%s) - start ))

out="$ROOT/dist/codexlb"
if [[ ! -x "$out" ]]; then
    echo "build.sh: FAIL: $out was not produced" >&2
    exit 1
fi
echo "built $out ($(du -h "$out" | cut -f1), $(stat -c %s "$out") bytes) in ${elapsed}s"
# What it bundles was linked against this machine's C library and asks for its newer symbols.
glibc="$("$PY" build/glibc_needed.py "$out" 2>/dev/null || getconf GNU_LIBC_VERSION | awk '{print $2}')"
echo "runs on Linux $(uname -m) with glibc $glibc or newer"
echo "warnings about missing modules, if any: build/work/codexlb/warn-codexlb.txt"
