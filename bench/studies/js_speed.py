"""How fast is the TypeScript runtime (js/, onnxruntime-node) beside the Python one, on the same
package, policies and inputs?

    python -m edgeinfer.bench.studies.js_speed PKG --data DEV.tsv [--limit 200] [--rounds 3]

Each round runs every policy in Python (this process), then in Node (a fresh process running
js/bench/latency.mjs): 10 untimed warm-up requests, then each input once, batch 1, 2 threads.
Rounds alternate so that machine noise falls on both. Figure: mean and p50/p90 milliseconds per
runtime and policy, the Node/Python ratio of means, and whether both answered at the same depths.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from ...export.calibration_data import read_examples
from ...runtime.policy import Policy
from ...runtime.load import load

JS = Path(__file__).resolve().parents[1] / "js"
POLICIES = {"full depth": {"agreement": None}, "exits@0.99": {"agreement": 0.99}}


def python_latency(package: Path, policy: dict, texts: list[str]) -> tuple[list[float], list[int]]:
    session = load(package, policy=Policy(agreement=policy.get("agreement"), precision=policy.get("precision", "fp32")),
                   threads=2, profile=None)
    for text in texts[:10]:
        session.run(text)
    ms, depths = [], []
    for text in texts:
        t0 = time.perf_counter()
        result = session.run(text)
        ms.append((time.perf_counter() - t0) * 1000)
        depths.append(result.trace.exit_after_block)
    return ms, depths


def node_latency(package: Path, policy: dict, texts_file: Path) -> tuple[list[float], list[int]]:
    done = subprocess.run(["node", str(JS / "bench" / "latency.mjs"), str(package), json.dumps(policy), str(texts_file), "1"],
                          capture_output=True, text=True, timeout=1800, check=True)
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    return measured["ms"], measured["depths"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("package")
    parser.add_argument("--data", required=True, help="TSV (text[, label]) or one text per line")
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cascade", default=None, help="also time this variant's cascade at 0.99 (e.g. int8)")
    args = parser.parse_args()
    package = Path(args.package)
    texts = list(read_examples(args.data, None, use_labels=False).texts)[:args.limit]
    policies = dict(POLICIES)
    if args.cascade:
        policies[f"{args.cascade} cascade@0.99"] = {"agreement": 0.99, "precision": args.cascade}
    times: dict[tuple[str, str], list[float]] = {}
    same_depths: dict[str, bool] = {}
    with tempfile.TemporaryDirectory() as tmp:
        texts_file = Path(tmp) / "texts.txt"
        texts_file.write_text("\n".join(t.replace("\n", " ") for t in texts) + "\n", encoding="utf-8")
        for _ in range(args.rounds):
            for name, policy in policies.items():
                py_ms, py_depths = python_latency(package, policy, texts)
                js_ms, js_depths = node_latency(package, policy, texts_file)
                times.setdefault((name, "python"), []).extend(py_ms)
                times.setdefault((name, "node"), []).extend(js_ms)
                same_depths[name] = same_depths.get(name, True) and py_depths == js_depths
    print(f"{len(texts)} inputs x {args.rounds} rounds, batch 1, 2 threads, from {args.data}\n")
    print("| policy | Python mean ms | p50 | p90 | Node mean ms | p50 | p90 | Node / Python | same depths |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for name in policies:
        py, js = np.array(times[(name, "python")]), np.array(times[(name, "node")])
        print(f"| {name} | {py.mean():.2f} | {np.median(py):.2f} | {np.percentile(py, 90):.2f} | {js.mean():.2f} | "
              f"{np.median(js):.2f} | {np.percentile(js, 90):.2f} | {js.mean() / py.mean():.3f} | {same_depths[name]} |")


if __name__ == "__main__":
    main()
