#!/usr/bin/env bash
# All-reduce busbw of lorafleet (the ring over TCP, the ring over
# shared-memory links, and the shared-memory group the ranks of one host
# use by default) against torch.distributed gloo, in one run on this
# machine, as ratios.
#
#   bench/compare_allreduce.sh [SIZES]        (default 16M,64M,256M)
#
# gloo comes from the reference venv (.venv-ref, made from
# tests/fixtures/requirements.txt if missing; PYTHON=... to use another).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
sizes="${1:-16M,64M,256M}"

. bench/reference.sh
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

for world in 2 4; do
    "$PYTHON" bench/gloo_allreduce.py --world "$world" --sizes "$sizes" > "$out/gloo-$world.jsonl"
    for transport in tcp shm; do
        "$bin" bench allreduce --world "$world" --sizes "$sizes" --transport "$transport" --json \
            > "$out/$transport-$world.jsonl"
    done
    "$bin" bench allreduce --world "$world" --sizes "$sizes" --transport shm --no-shared-group --json \
        > "$out/shmring-$world.jsonl"
done
"$bin" bench allreduce --world 2 --sizes 4 --baselines --json | tail -1 > "$out/baselines.json"

python3 - "$out" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
load = lambda name: [json.loads(l) for l in (out / name).read_text().splitlines()]
base = json.loads((out / "baselines.json").read_text())
print(f"baselines: memcpy 1 thread {base['memcpy_GBps']:.2f} GB/s, loopback TCP 1 stream {base['loopback_GBps']:.2f} GB/s")
print(f"{'N':>2} {'size':>6} {'gloo':>8} {'tcp':>8} {'ratio':>6} {'shm ring':>8} {'ratio':>6} {'shm':>8} {'ratio':>6}   (busbw GB/s)")
for world in (2, 4):
    runs = [load(f"{name}-{world}.jsonl") for name in ("gloo", "tcp", "shmring", "shm")]
    for g, *ours in zip(*runs):
        mib = g["size_bytes"] >> 20
        cells = " ".join(f"{o['busbw_GBps']:8.3f} {o['busbw_GBps'] / g['busbw_GBps']:5.2f}x" for o in ours)
        print(f"{world:>2} {str(mib) + 'M':>6} {g['busbw_GBps']:8.3f} {cells}")
PY
