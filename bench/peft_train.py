"""One LoRA training step of PyTorch + transformers + PEFT on the reference
workload (docs/PERFORMANCE.md), timed as `lorafleet bench train` times its own.

    python bench/peft_train.py --preset tiny --threads 1 [--steps 10] [--warmup-steps 3]

Prints one JSON object with the keys of `lorafleet bench train --json`
that apply: preset, threads, tokens_per_s, step_ms, peak_rss_mib.
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
    # hidden, layers, heads, intermediate, vocab, batch, seq
    "tiny": (256, 4, 4, 688, 1024, 8, 128),
    "small": (512, 8, 8, 1376, 32000, 4, 256),
}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--preset", choices=PRESETS, default="tiny")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup-steps", type=int, default=3)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    hidden, layers, heads, inter, vocab, batch, seq = PRESETS[a.preset]
    config = LlamaConfig(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        intermediate_size=inter,
        vocab_size=vocab,
        max_position_embeddings=max(2048, seq),
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).float()
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
        "threads": a.threads,
        "tokens_per_s": batch * seq / step_s,
        "step_ms": step_s * 1e3,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "warmup_steps": a.warmup_steps,
        "timed_steps": a.steps,
    }))


if __name__ == "__main__":
    main()
