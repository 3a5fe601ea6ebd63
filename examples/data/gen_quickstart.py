#!/usr/bin/env python3
"""Generates the quickstart dataset: examples/data/quickstart-{train,val}.jsonl.

A synthetic task in the prompt/completion shape with deterministic answers
(string games over a small vocabulary of short English words), small enough
for a tiny random Llama with LoRA and a byte-level tokenizer (one token per
byte) to learn within ~150 steps of batch 16 on a CPU. Every sample is under
60 bytes; validation prompts never appear in the training file.

Python 3 standard library only; deterministic (fixed seed): running it again
rewrites byte-identical files.

    python3 examples/data/gen_quickstart.py
"""

import json
import random
from pathlib import Path

SEED = 20250101
TRAIN_LINES = 2000
VAL_LINES = 200
MAX_BYTES = 60

WORDS = """
ant ape arm art bag bat bed bee bell box boy bus cap car cat cow cup dog ear egg
elf eye fan fig fox gum hat hen ice ink jam jar jet key kid leg lip map mud
net nut owl pan pea pen pig pin pot rat red rug sea sun tea toe toy van web
yak zip bird boat book cake coin corn crab desk door drum duck fish flag
frog gift goat hand harp kite lamp leaf lion milk moon nest note pear rain
ring road rock rope salt sand seed ship shoe sock star tent tree wind wolf
apple bread chair cloud dream grape horse house lemon mango music ocean
onion piano plant queen river robot sheep snake spoon stone tiger train
water whale zebra
""".split()

TASKS = {
    "reverse": (lambda w: f"Reverse: {w}\n", lambda w: w[::-1]),
    "upper": (lambda w: f"Uppercase: {w}\n", lambda w: w.upper()),
    "twice": (lambda w: f"Repeat twice: {w}\n", lambda w: w + w),
    "first": (lambda w: f"First letter of {w}:\n", lambda w: w[0]),
    "last": (lambda w: f"Last letter of {w}:\n", lambda w: w[-1]),
    "length": (lambda w: f"Length of {w}:\n", lambda w: str(len(w))),
}


def next_letter_samples():
    """Next letter after a..y: only 25 prompts, so all of them train."""
    return [
        (f"Next letter after {c}:\n", chr(ord(c) + 1))
        for c in "abcdefghijklmnopqrstuvwxy"
    ]


def main():
    rng = random.Random(SEED)
    assert len(set(WORDS)) == len(WORDS), "duplicate words"
    pairs = [
        (make_prompt(w), answer(w))
        for make_prompt, answer in TASKS.values()
        for w in WORDS
    ]
    rng.shuffle(pairs)
    val = pairs[:VAL_LINES]
    train_pool = pairs[VAL_LINES:] + next_letter_samples()

    # The training file cycles through its pool, reshuffled on each pass.
    train = []
    while len(train) < TRAIN_LINES:
        batch = train_pool[:]
        rng.shuffle(batch)
        train.extend(batch[: TRAIN_LINES - len(train)])

    val_prompts = {p for p, _ in val}
    assert not val_prompts & {p for p, _ in train}, "val prompts leak into train"
    out = Path(__file__).resolve().parent
    for name, rows in [("quickstart-train.jsonl", train), ("quickstart-val.jsonl", val)]:
        lines = []
        for prompt, completion in rows:
            assert len((prompt + completion).encode()) < MAX_BYTES, prompt
            lines.append(json.dumps({"prompt": prompt, "completion": completion}))
        (out / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
        print(f"wrote {out / name}: {len(rows)} lines")


if __name__ == "__main__":
    main()
