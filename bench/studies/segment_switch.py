"""Where the segmented path loses time against the fused graph: graph switches, not calls.

    python -m edgeinfer.bench.studies.segment_switch [PACKAGE] [--tokens 24] [--precision int8]

On one package's graphs at one token count, batch 1, interleaved rounds (medians of 15 x 50 calls):
the fused full graph; the chain the runtime runs with exits on (stage_01..05 + stage_head); the same
chain of plain blocks (embed + block_00..05); one block's session called six times in a row; and six
separate sessions of that same block graph. The last two do identical arithmetic on identical
weights; only the number of sessions differs, which isolates what switching between onnxruntime
sessions costs on this device.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from ...runtime.sessions import open_session
from ...runtime.user_cache import cache_root


def _timed(cases: dict, rounds: int = 15, calls: int = 50) -> dict[str, float]:
    for run in cases.values():
        for _ in range(20):
            run()
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, run in cases.items():
            t0 = time.perf_counter()
            for _ in range(calls):
                run()
            samples[name].append((time.perf_counter() - t0) / calls * 1000)
    return {name: float(np.median(v)) for name, v in samples.items()}


def measure(package: Path, tokens: int, precision: str) -> dict[str, float]:
    suffix = ".onnx" if precision == "fp32" else f".{precision}.onnx"

    def session(name: str):
        return open_session(package / "graphs" / f"{name}{suffix}")

    rng = np.random.default_rng(0)
    ids = rng.integers(1000, 20000, (1, tokens)).astype(np.int64)
    first = {"input_ids": ids, "token_type_ids": np.zeros_like(ids), "attention_bias": np.zeros((1, tokens), np.float32)}
    bias = first["attention_bias"]
    full = session("full")
    stages = [session(f"stage_{i:02d}") for i in range(1, 6)]
    last_stage = session("stage_head")
    embed = session("embed")
    blocks = [session(f"block_{i:02d}") for i in range(6)]
    copies = [session("block_02") for _ in range(6)]
    hidden = embed.run(None, {k: first[k] for k in ("input_ids", "token_type_ids")})[0]

    def stage_chain() -> None:
        state = stages[0].run(None, first)[0]
        for stage in stages[1:]:
            state = stage.run(None, {"hidden": state, "attention_bias": bias})[0]
        last_stage.run(None, {"hidden": state, "attention_bias": bias})

    def chain(graphs) -> callable:
        def run() -> None:
            state = hidden
            for graph in graphs:
                state = graph.run(None, {"hidden": state, "attention_bias": bias})[0]
        return run

    return _timed({"fused full graph": lambda: full.run(None, first),
                   "stage chain (exits on)": stage_chain,
                   "block chain (6 sessions)": chain(blocks),
                   "one block session x6": chain([copies[0]] * 6),
                   "six sessions of that block": chain(copies)})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package", nargs="?", default=str(cache_root() / "bench" / "sst2-joint-int8.edge"))
    parser.add_argument("--tokens", type=int, nargs="+", default=[16, 24, 64])
    parser.add_argument("--precision", nargs="+", default=["int8", "fp32"])
    args = parser.parse_args(argv)
    for precision in args.precision:
        for tokens in args.tokens:
            found = measure(Path(args.package), tokens, precision)
            base = found["fused full graph"]
            print(f"{precision} {tokens} tokens: " + "; ".join(f"{k} {v:.3f} ms ({v / base:.2f}x)" for k, v in found.items()),
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
