#!/usr/bin/env bash
# LoRA training step of lorafleet against PyTorch + transformers + PEFT on
# the reference workloads (docs/PERFORMANCE.md), in one run on this machine,
# as ratios. Each cell runs ours and theirs alternately, ROUNDS times, and
# reports the medians.
#
#   bench/compare_pytorch.sh [PRESETS] [THREADS] [ROUNDS]
#   (defaults: "tiny small", "1 2", 3)
#
# PyTorch comes from the reference venv (.venv-ref, made from
# tests/fixtures/requirements.txt if missing; PYTHON=... to use another).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
presets="${1:-tiny small}"
threads="${2:-1 2}"
rounds="${3:-3}"

. bench/reference.sh
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

for preset in $presets; do
    steps=10
    [ "$preset" = small ] && steps=4
    for t in $threads; do
        for _ in $(seq "$rounds"); do
            "$bin" bench train --preset "$preset" --threads "$t" --steps "$steps" --json \
                >> "$out/ours-$preset-$t.jsonl"
            OMP_NUM_THREADS="$t" "$PYTHON" -W ignore bench/peft_train.py --preset "$preset" \
                --threads "$t" --steps "$steps" >> "$out/peft-$preset-$t.jsonl"
        done
    done
done

python3 - "$out" "$presets" "$threads" <<'PY'
import json, pathlib, statistics, sys
out, presets, threads = pathlib.Path(sys.argv[1]), sys.argv[2].split(), sys.argv[3].split()
load = lambda name: [json.loads(l) for l in (out / name).read_text().splitlines()]
med = lambda rows, key: statistics.median(r[key] for r in rows)
print(f"{'preset':<6} {'thr':>3} {'lorafleet':>10} {'PyTorch':>9} {'ratio':>6} {'RSS ours':>9} {'RSS PyTorch':>11}   (tokens/s, MiB; medians)")
for p in presets:
    for t in threads:
        ours, ref = load(f"ours-{p}-{t}.jsonl"), load(f"peft-{p}-{t}.jsonl")
        a, b = med(ours, "tokens_per_s"), med(ref, "tokens_per_s")
        print(f"{p:<6} {t:>3} {a:10.0f} {b:9.0f} {a / b:5.2f}x {med(ours, 'peak_rss_mib'):9.0f} {med(ref, 'peak_rss_mib'):11.0f}")
PY
