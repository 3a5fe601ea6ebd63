#!/usr/bin/env python3
"""Builds chat fine-tuning data for SmolLM2 from the chatterbot-corpus package.

Downloads chatterbot-corpus==1.3.3 (BSD-3-Clause) from PyPI with pip, reads its
English question/answer conversations, and writes
examples/data/smollm2-chat-{train,val}.jsonl in the `messages` shape: each
conversation's turns alternate user, assistant. Deterministic: the same
package gives the same files. Standard library only (the corpus's YAML is a
plain list of lists, read by the small parser below).
"""
import glob
import json
import os
import random
import subprocess
import sys
import tempfile
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "data")


def conversations(text):
    """The `conversations:` list of a chatterbot YAML file, as lists of str."""
    convs, current, inside = [], None, False
    for raw in text.splitlines():
        if raw.startswith("conversations:"):
            inside = True
            continue
        if not inside or not raw.strip():
            continue
        if raw.startswith("- - "):
            current = [raw[4:].strip()]
            convs.append(current)
        elif raw.startswith("  - ") and current is not None:
            current.append(raw[4:].strip())
        elif raw.startswith("    ") and current:
            current[-1] += " " + raw.strip()  # folded continuation line
    clean = lambda s: s.strip().strip("'\"")
    return [[clean(t) for t in c if clean(t)] for c in convs]


def main():
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                        "chatterbot-corpus==1.3.3", "-d", tmp], check=True)
        wheel = glob.glob(os.path.join(tmp, "*.whl"))[0]
        samples = []
        with zipfile.ZipFile(wheel) as z:
            for name in sorted(z.namelist()):
                if "/english/" in name and name.endswith(".yml"):
                    for conv in conversations(z.read(name).decode("utf-8")):
                        turns = conv[: len(conv) - len(conv) % 2]
                        if not turns:
                            continue
                        roles = ["user", "assistant"] * (len(turns) // 2)
                        samples.append({"messages": [
                            {"role": r, "content": t} for r, t in zip(roles, turns)]})
    random.Random(0).shuffle(samples)
    val, train = samples[:60], samples[60:]
    for split, rows in [("train", train), ("val", val)]:
        path = os.path.join(OUT, f"smollm2-chat-{split}.jsonl")
        with open(path, "w") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        print(f"{path}: {len(rows)} conversations")


if __name__ == "__main__":
    main()
