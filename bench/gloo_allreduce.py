"""torch.distributed gloo all-reduce, timed as nccl-tests and
`lorafleet bench allreduce` time it: one warm-up, a barrier, then the mean
over timed iterations of the slowest rank. Prints one JSON line per size.

    python bench/gloo_allreduce.py --world 2 --sizes 16M,64M,256M
"""
import argparse
import json
import os
import socket
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def parse_size(s):
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    s = s.strip().upper()
    return int(s[:-1]) * units[s[-1]] if s[-1] in units else int(s)


def iters_for(size):
    return max(5, min(50, (1 << 30) // size))


def rank_main(rank, world, port, sizes, queue):
    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    for size in sizes:
        buf = torch.ones(size // 4, dtype=torch.float32)
        dist.all_reduce(buf)
        dist.barrier()
        iters = iters_for(size)
        start = time.perf_counter()
        for _ in range(iters):
            dist.all_reduce(buf)
        queue.put((rank, size, iters, (time.perf_counter() - start) / iters))
    dist.destroy_process_group()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--sizes", default="16M,64M,256M")
    args = ap.parse_args()
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=rank_main, args=(r, args.world, port, sizes, queue)) for r in range(args.world)]
    for p in procs:
        p.start()
    results = [queue.get() for _ in range(args.world * len(sizes))]
    for p in procs:
        p.join()
    for size in sizes:
        times = [t for (_, s, _, t) in results if s == size]
        iters = next(i for (_, s, i, _) in results if s == size)
        t = max(times)
        algbw = size / t / 1e9
        print(json.dumps({
            "world": args.world, "transport": "gloo", "size_bytes": size, "iters": iters,
            "time_s": t, "algbw_GBps": algbw,
            "busbw_GBps": algbw * 2 * (args.world - 1) / args.world,
        }))


if __name__ == "__main__":
    main()
