"""One LoRA training step of PyTorch + transformers + PEFT on the reference
workload (docs/PERFORMANCE.md), timed as `lorafleet bench train` times its own.

    python bench/peft_train.py --preset tiny --threads 1 [--steps 10] [--warmup-steps 3]
        [--batch ROWS] [--seq TOKENS] [--dtype f32|bf16]

`--dtype bf16` creates the model in torch.bfloat16 (weights and
activations); PEFT keeps the LoRA adapters in f32, as it does by default.

Prints one JSON object with the keys of `lorafleet bench train --json`
that apply: preset, dtype, threads, tokens_per_s, step_ms, peak_rss_mib.
"""
import argparse
import json
import resource
import statistics
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

PRESETS = {
    # hidden, layers, heads, kv heads, intermediate, vocab, batch, seq, tied, rope theta
    "tiny": (256, 4, 4, 4, 688, 1024, 8, 128, False, 10000.0),
    "small": (512, 8, 8, 8, 1376, 32000, 4, 256, False, 10000.0),
    # the published configs of HuggingFaceTB/SmolLM2-135M, -360M and meta-llama/Llama-3.2-1B
    "smollm2-135m": (576, 30, 9, 3, 1536, 49152, 2, 512, True, 100000.0),
    "smollm2-360m": (960, 32, 15, 5, 2560, 49152, 2, 512, True, 100000.0),
    "llama-1b-shape": (2048, 16, 32, 8, 8192, 128256, 2, 512, True, 500000.0),
}
ROPE_SCALING = {
    "llama-1b-shape": {
        "rope_type": "llama3",
        "factor": 32.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    },
}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--preset", choices=PRESETS, default="tiny")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup-steps", type=int, default=3)
    p.add_argument("--batch", type=int)
    p.add_argument("--seq", type=int)
    p.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    hidden, layers, heads, kv, inter, vocab, batch, seq, tied, theta = PRESETS[a.preset]
    batch, seq = a.batch or batch, a.seq or seq
    config = LlamaConfig(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        head_dim=hidden // heads,
        intermediate_size=inter,
        vocab_size=vocab,
        max_position_embeddings=max(2048, seq),
        tie_word_embeddings=tied,
        rope_theta=theta,
        rope_scaling=ROPE_SCALING.get(a.preset),
    )
    model = LlamaForCausalLM(config).float()
    if a.dtype == "bf16":
        model = model.to(torch.bfloat16)
    model = get_peft_model(
        model,
        LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj"]),
    )
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(0, vocab, (batch, seq))

    def step():
        opt.zero_grad(set_to_none=True)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        return loss.item()

    for _ in range(a.warmup_steps):
        step()
    times = []
    for _ in range(a.steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    step_s = statistics.median(times)
    print(json.dumps({
        "preset": a.preset,
        "dtype": a.dtype,
        "threads": a.threads,
        "batch": batch,
        "seq_len": seq,
        "tokens_per_s": batch * seq / step_s,
        "step_ms": step_s * 1e3,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "warmup_steps": a.warmup_steps,
        "timed_steps": a.steps,
    }))


if __name__ == "__main__":
    main()
