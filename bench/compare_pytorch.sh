#!/usr/bin/env bash
# LoRA training step of lorafleet against PyTorch + transformers + PEFT, in
# one run on this machine, as ratios (docs/PERFORMANCE.md). Each cell runs
# ours and theirs alternately, ROUNDS times, and reports the medians. The
# same run measures this machine's matrix-product peak (ours:
# `lorafleet bench sgemm`, one product per thread as training's shares run;
# PyTorch's: bench/torch_sgemm.py, one product on all threads), in f32 and,
# when a cell asks for bf16, in bf16, and reads each step's matrix products
# (`matmul_gflop_per_step`) as a fraction of the higher of the two peaks of
# the cell's dtype.
#
#   bench/compare_pytorch.sh [CELLS] [THREADS] [ROUNDS]
#   CELLS: presets, each with an optional :SEQ (tokens per row), :ROWS and
#     :DTYPE of the frozen weights (f32 or bf16, passed to both as --dtype; an
#     empty field keeps the default), e.g.
#     "tiny small smollm2-135m:512 smollm2-135m:2048:2 smollm2-135m:512:2:bf16"
#     (default: "tiny small")
#   THREADS: default "1 2"; ROUNDS: default 3
#
# PyTorch comes from the reference venv (.venv-ref, made from
# tests/fixtures/requirements.txt if missing; PYTHON=... to use another).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cells="${1:-tiny small}"
threads="${2:-1 2}"
rounds="${3:-3}"

. bench/reference.sh
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

for t in $threads; do
    "$bin" bench sgemm --threads "$t" --json > "$out/sgemm-ours-$t.json"
    OMP_NUM_THREADS="$t" "$PYTHON" bench/torch_sgemm.py --threads "$t" > "$out/sgemm-torch-$t.json"
    if [[ " $cells" == *:bf16* ]]; then
        "$bin" bench sgemm --threads "$t" --dtype bf16 --json > "$out/sgemm-ours-$t-bf16.json"
        OMP_NUM_THREADS="$t" "$PYTHON" bench/torch_sgemm.py --threads "$t" --dtype bf16 \
            > "$out/sgemm-torch-$t-bf16.json"
    fi
done

for cell in $cells; do
    IFS=: read -r preset seq rows dtype <<< "$cell"
    seq_flag=()
    [ -n "${seq:-}" ] && seq_flag+=(--seq "$seq")
    [ -n "${rows:-}" ] && seq_flag+=(--batch "$rows")
    [ -n "${dtype:-}" ] && seq_flag+=(--dtype "$dtype")
    # Warm-up and timed steps: fewer on the larger shapes (a step there takes seconds).
    case "$preset" in
        tiny) steps=(--warmup-steps 3 --steps 10) ;;
        small) steps=(--warmup-steps 3 --steps 4) ;;
        *) steps=(--warmup-steps 1 --steps 2) ;;
    esac
    for t in $threads; do
        for _ in $(seq "$rounds"); do
            "$bin" bench train --preset "$preset" "${seq_flag[@]}" --threads "$t" "${steps[@]}" --json \
                >> "$out/ours-$cell-$t.jsonl"
            OMP_NUM_THREADS="$t" "$PYTHON" -W ignore bench/peft_train.py --preset "$preset" \
                "${seq_flag[@]}" --threads "$t" "${steps[@]}" >> "$out/peft-$cell-$t.jsonl"
        done
    done
done

python3 - "$out" "$cells" "$threads" <<'PY'
import json, pathlib, statistics, sys
out, cells, threads = pathlib.Path(sys.argv[1]), sys.argv[2].split(), sys.argv[3].split()
load = lambda name: [json.loads(l) for l in (out / name).read_text().splitlines()]
med = lambda rows, key: statistics.median(r[key] for r in rows)
sgemm = lambda who, t, dtype: json.loads((out / f"sgemm-{who}-{t}{'' if dtype == 'f32' else '-' + dtype}.json").read_text())
for t in threads:
    ours, torch = (sgemm(w, t, "f32") for w in ("ours", "torch"))
    print(f"sgemm peak, {t} thread(s): lorafleet {ours['peak_gflops']:.1f}, PyTorch {torch['peak_gflops']:.1f} GFLOP/s")
    if (out / f"sgemm-ours-{t}-bf16.json").exists():
        ours, torch = (sgemm(w, t, "bf16") for w in ("ours", "torch"))
        print(f"bf16 peak, {t} thread(s): lorafleet {ours['peak_gflops']:.1f}, PyTorch {torch['peak_gflops']:.1f} GFLOP/s")
print()
print(f"{'cell':<20} {'thr':>3} {'lorafleet':>10} {'PyTorch':>9} {'ratio':>6} {'RSS ours':>9} {'RSS PyTorch':>11} {'peak% ours':>10} {'peak% PyTorch':>13} {'dtype':>5}")
print("   (tokens/s and MiB, medians; peak% = the step's matrix products per second over the higher sgemm peak of the cell's dtype)")
for c in cells:
    for t in threads:
        ours, ref = load(f"ours-{c}-{t}.jsonl"), load(f"peft-{c}-{t}.jsonl")
        a, b = med(ours, "tokens_per_s"), med(ref, "tokens_per_s")
        dtype = ref[0].get("dtype", "f32")
        peak = max(sgemm(w, t, dtype)["peak_gflops"] for w in ("ours", "torch"))
        per_token = ours[0]["matmul_gflop_per_step"] / (ours[0]["batch"] * ours[0]["seq_len"])
        label = f"{c} ({ours[0]['batch']}x{ours[0]['seq_len']})"
        print(f"{label:<20} {t:>3} {a:10.0f} {b:9.0f} {a / b:5.2f}x {med(ours, 'peak_rss_mib'):9.0f} "
              f"{med(ref, 'peak_rss_mib'):11.0f} {100 * a * per_token / peak:9.0f}% {100 * b * per_token / peak:12.0f}% "
              f"{dtype:>5}")
PY
