"""Is token pruning slow only because the runtime chains graphs? A bound with pruning compiled in.

    python -m edgeinfer.bench.pruning_in_graph [--rows 1000]

Issue 3 asks token pruning for >= 1.5x over adaptivity off on AG News. The runtime prunes between
block graphs (Python picks the tokens), and bench/RESULTS.md found the chain's own cost eats the
saving. Here the AG News classifier is exported once more as a single graph that prunes *inside*
(after each block: top-k by the attention each token received, [CLS] and [SEP] kept, order kept,
k an input), so the pruned path pays no extra call, hand-off or Python. Each schedule is timed
against the same model's fused full graph, interleaved per row, 2 passes over the rows, batch 1.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from ..runtime.sessions import open_session
from ..runtime.user_cache import cache_root

SCHEDULES = {  # fraction of the original tokens kept after blocks 1..5
    "after 2: 0.7, after 4: 0.5": (1.0, 0.7, 0.7, 0.5, 0.5),
    "after 2: 0.6, after 4: 0.4": (1.0, 0.6, 0.6, 0.4, 0.4),
    "0.7 per block from 2 (the merge schedule)": (1.0, 0.7, 0.49, 0.343, 0.2401),
    "0.8 per block from 2": (1.0, 0.8, 0.64, 0.512, 0.41),
}


def export_graphs(model_dir: Path, folder: Path) -> tuple[Path, Path]:
    import torch

    from ..export.model_source import load_model
    from ..export.pipeline import build_segments
    from ..export.segments import FullDepth

    segments = build_segments(load_model(str(model_dir), "text-classification"), "text-classification")

    class PrunedFull(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed, self.blocks, self.head = segments.embed, torch.nn.ModuleList(segments.blocks), segments.head

        def forward(self, input_ids, token_type_ids, attention_bias, keep_tokens):
            hidden = self.embed(input_ids, token_type_ids)
            for i, block in enumerate(self.blocks):
                hidden, importance, _ = block(hidden, attention_bias)
                if i == len(self.blocks) - 1:
                    break
                score = importance.clone()
                score[:, 0] = 1e9  # [CLS]
                score[:, -1] = 1e9  # [SEP] (batch 1, no padding)
                keep = torch.minimum(keep_tokens[i], torch.tensor(hidden.shape[1]))
                index = torch.sort(torch.topk(score, keep, dim=1).indices, dim=1).values
                hidden = torch.gather(hidden, 1, index.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
                attention_bias = torch.gather(attention_bias, 1, index)
            return self.head(hidden, attention_bias)

    ids = torch.ones((1, 12), dtype=torch.long)
    axes = {name: {0: "batch", 1: "sequence"} for name in ("input_ids", "token_type_ids", "attention_bias")}
    names = ["input_ids", "token_type_ids", "attention_bias"]
    full, pruned = folder / "full.onnx", folder / "pruned.onnx"
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(FullDepth(segments.embed, segments.blocks, segments.head).eval(),
                          (ids, torch.zeros_like(ids), torch.zeros((1, 12))), str(full), dynamo=False, opset_version=17,
                          input_names=names, output_names=["logits"], dynamic_axes=axes)
        torch.onnx.export(PrunedFull().eval(), (ids, torch.zeros_like(ids), torch.zeros((1, 12)),
                                                torch.full((5,), 12, dtype=torch.long)),
                          str(pruned), dynamo=False, opset_version=17, input_names=[*names, "keep_tokens"],
                          output_names=["logits"], dynamic_axes=axes)
    return full, pruned


def keep_counts(tokens: int, fractions: tuple[float, ...]) -> np.ndarray:
    """runtime/pruning.keep_count for each block: of the original length, at least [CLS], [SEP] + 1."""
    counts, current = [], tokens
    for fraction in fractions:
        current = max(min(math.ceil(fraction * tokens), current), min(3, current))
        counts.append(current)
    return np.array(counts, dtype=np.int64)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(cache_root() / "minilm-agnews"),
                        help="the AG News classifier (bench/finetune_classifier.py)")
    parser.add_argument("--data", default=str(cache_root() / "bench" / "agnews_dev_subset.tsv"))
    parser.add_argument("--rows", type=int, default=1000)
    args = parser.parse_args(argv)
    from tokenizers import Tokenizer

    rows = [r.split("\t") for r in Path(args.data).read_text(encoding="utf-8").splitlines()[1:] if r.strip()][:args.rows]
    labels = np.array([int(r[1]) for r in rows])
    tokenizer = Tokenizer.from_file(str(Path(args.model) / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(256)
    encoded = [tokenizer.encode(r[0]) for r in rows]
    feeds = [{"input_ids": np.array([e.ids], np.int64), "token_type_ids": np.array([e.type_ids], np.int64),
              "attention_bias": np.zeros((1, len(e.ids)), np.float32)} for e in encoded]
    with tempfile.TemporaryDirectory() as folder:
        full_path, pruned_path = export_graphs(Path(args.model), Path(folder))
        full, pruned = open_session(full_path), open_session(pruned_path)
        reference = np.array([full.run(None, f)[0][0].argmax() for f in feeds])
        cases = {"full graph": lambda i: full.run(None, feeds[i])}
        quality = {}
        for name, fractions in SCHEDULES.items():
            keeps = [keep_counts(len(e.ids), fractions) for e in encoded]
            answers = np.array([pruned.run(None, dict(f, keep_tokens=k))[0][0].argmax() for f, k in zip(feeds, keeps)])
            work = float(np.mean([(len(e.ids) + k.sum()) / (6 * len(e.ids)) for e, k in zip(encoded, keeps)]))
            quality[name] = (float((answers == labels).mean()), float((answers == reference).mean()), work)
            cases[name] = (lambda ks: (lambda i: pruned.run(None, dict(feeds[i], keep_tokens=ks[i]))))(keeps)
        for i in range(min(50, len(feeds))):
            for run in cases.values():
                run(i)
        times: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(2):
            for i in range(len(feeds)):
                for name, run in cases.items():
                    t0 = time.perf_counter()
                    run(i)
                    times[name].append((time.perf_counter() - t0) * 1000)
    base = float(np.mean(times["full graph"]))
    print(f"{len(rows)} AG News dev rows, mean {np.mean([len(e.ids) for e in encoded]):.1f} tokens; "
          f"full graph accuracy {(reference == labels).mean():.4f}, mean {base:.2f} ms")
    print("| schedule | token work | accuracy | agreement | mean ms | speed-up |\n|---|---:|---:|---:|---:|---:|")
    for name, (accuracy, agreement, work) in quality.items():
        mean = float(np.mean(times[name]))
        print(f"| {name} | {work:.3f} | {accuracy:.4f} | {agreement:.4f} | {mean:.2f} | {base / mean:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
