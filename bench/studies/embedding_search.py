"""Semantic search on AG News, as a search user sees it: does a query still find the fp32 model's
neighbours, and how long does embedding it take?

    python -m edgeinfer.bench.studies.embedding_search PACKAGE [--corpus 2000] [--queries 400]
        [--repeats 2] [--fused-int8] [--index-agreement 0.99 ...] [--out reports/embedding-search]

The corpus is the first --corpus AG News dev texts embedded by the fp32 model (one monolithic
onnxruntime graph, exported as Optimum does); the queries are the --queries dev texts after them.
Each configuration embeds the queries, and each query's top-1 and top-10 neighbours in the corpus
are compared with the fp32 model's (same top-1; recall@10 of the fp32 top 10). Configurations: the
monolithic fp32 and int8 dynamic per-channel sessions (bench/baselines.py), with --fused-int8 also
the int8 onnxruntime reaches after its transformer optimizer (the hardware's int8 floor), the
package at full depth, each precision variant alone, the default policy, and the operating point
`auto:LEVEL` when `edgeinfer calibrate` stored any, and the search index (runtime/encoder/search.py) built
on the same corpus texts for each --index-agreement. The index row's time is the whole search (embedding,
scoring the corpus, and the fp32 embedding when the gate sends a query there); the other rows time
the embedding alone. Latencies: batch 1, configurations interleaved query by query.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
from pathlib import Path

import numpy as np

from ...manifest import Manifest
from ...runtime.encoder.planner import choose_point, policy_of
from ...runtime.load import load
from ...runtime.package import open_package
from ...runtime.policy import Policy
from ...runtime.encoder.search import Hits, SearchIndex, search_index
from ...runtime.sessions import default_threads
from ...runtime.tokenize import TextEncoder
from ..baselines import MonolithicModel, export_monolithic, fused_int8, quantize_int8
from ..interleaved import Named, measure_interleaved, regime
from ..report_files import write_json
from ..retrieval import search_agreement
from ..timing import latency_summary

FP32 = "onnxruntime fp32 (monolithic)"
STATIC_INT8 = "onnxruntime int8 dynamic per-channel (monolithic)"
FUSED_INT8 = "onnxruntime int8, transformer-optimized (QAttention; monolithic)"
INDEX = "edgeinfer search index at"


def read_texts(shared: Path, count: int) -> list[str]:
    rows = (shared / "data" / "agnews" / "dev.tsv").read_text(encoding="utf-8").splitlines()[1:]
    return [row.split("\t")[0].strip() for row in rows if row.strip()][:count]


def configurations(package: Path, manifest: Manifest, monolithic: dict[str, MonolithicModel],
                   encoder: TextEncoder) -> list[Named]:
    def baseline(model: MonolithicModel):
        def answer(text: str) -> np.ndarray:
            batch = encoder.encode([text])
            hidden = model.run(batch)[0]
            return hidden[: int(batch.attention_mask.sum())].mean(axis=0)
        return answer

    def edge(policy: Policy):
        session = load(package, policy=policy)
        return lambda text: session.run(text).embedding

    found = [Named(name, baseline(model)) for name, model in monolithic.items()]
    found.append(Named("edgeinfer full depth fp32", edge(Policy(agreement=None, precision="fp32"))))
    for variant in manifest.precision_variants:
        found.append(Named(f"edgeinfer {variant.name} variant alone", edge(Policy(agreement=None, precision=variant.name))))
    found.append(Named("edgeinfer default policy", edge(Policy())))
    for level in (0.99,):
        if manifest.operating_points:
            point = choose_point(manifest, level)
            found.append(Named(f"edgeinfer auto:{level} ({point.name})", edge(policy_of(point))))
    return found


def index_configuration(package: Path, corpus_texts: list[str], agreement: float) -> tuple[Named, SearchIndex]:
    """The search index over the same corpus (embedded again, by the package's fp32 model): its answer
    is the Hits, whose embedding is what ranked the corpus."""
    index = search_index(package, corpus_texts, agreement=agreement)
    return Named(f"{INDEX} {agreement} ({index.precision} first, fp32 when too close to call)", index.search), index


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("package", help="an all-MiniLM-L6-v2 feature-extraction package")
    parser.add_argument("--shared", default="../shared", help="the folder holding data/agnews")
    parser.add_argument("--model", default="minilm", help="the model the package was exported from")
    parser.add_argument("--corpus", type=int, default=2000)
    parser.add_argument("--queries", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--fused-int8", action="store_true",
                        help="also run onnxruntime's transformer-optimized int8 (QAttention) as a baseline")
    parser.add_argument("--index-agreement", type=float, nargs="+", default=[0.99],
                        help="the agreements a search index row is built for (runtime/encoder/search.py), one row each")
    parser.add_argument("--out", default="reports/embedding-search")
    args = parser.parse_args(argv)
    from ...export.model_source import resolve_model_dir

    package = Path(args.package)
    texts = read_texts(Path(args.shared), args.corpus + args.queries)
    corpus_texts, query_texts = texts[:args.corpus], texts[args.corpus:]
    manifest = open_package(package).manifest
    encoder = TextEncoder(package / manifest.tokenizer.path, manifest.tokenizer)
    with tempfile.TemporaryDirectory(prefix="edgeinfer-search-") as folder:
        model_dir = str(resolve_model_dir(args.model)[0])
        fp32 = export_monolithic(model_dir, "feature-extraction", Path(folder) / "model.onnx")
        monolithic = {FP32: MonolithicModel(fp32), STATIC_INT8: MonolithicModel(quantize_int8(fp32, Path(folder) / "int8.onnx"))}
        if args.fused_int8:
            monolithic[FUSED_INT8] = MonolithicModel(fused_int8(model_dir, Path(folder)))
        found = configurations(package, manifest, monolithic, encoder)
        indexes = {}
        for agreement in args.index_agreement:
            indexed, indexes[indexed.name] = index_configuration(package, corpus_texts, agreement)
            found.append(indexed)
        reference = found[0].answer
        corpus = np.stack([reference(text) for text in corpus_texts])
        answers, latencies = measure_interleaved(found, query_texts, args.repeats, "embedding queries")
    fp32_queries = np.stack(answers[FP32])
    fp32_mean = float(np.mean(latencies[FP32]))
    int8_mean = float(np.mean(latencies[STATIC_INT8]))
    rows = []
    for configuration in found:
        name = configuration.name
        mean = float(np.mean(latencies[name]))
        hits = answers[name] if isinstance(answers[name][0], Hits) else None
        embeddings = np.stack([h.embedding for h in hits] if hits else answers[name])
        rows.append({"configuration": name, **search_agreement(embeddings, fp32_queries, corpus),
                     **latency_summary(latencies[name]), "x_fp32": round(mean / fp32_mean, 4),
                     "x_static_int8": round(mean / int8_mean, 4),
                     **({"rescued_share": round(float(np.mean([h.rescued for h in hits])), 4)} if hits else {})})
    report = {"corpus": len(corpus_texts), "queries": len(query_texts), "repeats": args.repeats,
              "threads": default_threads(), "regime": regime(), "machine": platform.processor() or platform.machine(),
              "search_indexes": {name: index.describe() for name, index in indexes.items()}, "rows": rows}
    out = Path(args.out)
    write_json(out / "embedding_search.json", report)
    for row in rows:
        print(f"{row['configuration'][:58]:58s} top-1 {row['top1_agreement']:.4f}  recall@10 {row['recall_at_10']:.4f}  "
              f"{row['mean_ms']:.2f} ms  {row['x_fp32']:.3f}x fp32  {row['x_static_int8']:.3f}x static int8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
