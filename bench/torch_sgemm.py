"""PyTorch's f32 matrix product speed on the shapes `lorafleet bench sgemm`
measures, with T threads on one product (PyTorch's own threading):

    python bench/torch_sgemm.py --threads 1 [--runs 5] [--dtype f32|bf16]

`--dtype bf16`: both matrices and the result in torch.bfloat16 (oneDNN's
bf16 product, f32 sums), as `lorafleet bench sgemm --dtype bf16` compares.

Prints one JSON object: dtype, threads, peak_gflops, shapes [{m, k, n, gflops}].
"""
import argparse
import json
import statistics
import time

import torch

SHAPES = [(1024, 1024, 1024), (512, 960, 2560), (512, 2048, 8192)]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
    a = p.parse_args()
    dtype = torch.bfloat16 if a.dtype == "bf16" else torch.float32
    torch.set_num_threads(a.threads)
    shapes = []
    for m, k, n in SHAPES:
        x, w = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
        out = torch.empty(m, n, dtype=dtype)
        torch.mm(x, w, out=out)
        times = []
        for _ in range(a.runs):
            start = time.perf_counter()
            torch.mm(x, w, out=out)
            times.append(time.perf_counter() - start)
        shapes.append({"m": m, "k": k, "n": n, "gflops": 2 * m * k * n / statistics.median(times) / 1e9})
    print(json.dumps({
        "dtype": a.dtype,
        "threads": a.threads,
        "peak_gflops": max(s["gflops"] for s in shapes),
        "shapes": shapes,
    }))


if __name__ == "__main__":
    main()
