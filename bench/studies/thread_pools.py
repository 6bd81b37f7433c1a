"""What does giving up onnxruntime's process-wide thread pool cost the segmented runtime?

edgeinfer once ran every session on one global onnxruntime pool, which breaks any plain
onnxruntime session its host creates afterwards. Each thread mode runs here in a fresh process
(the global pool cannot be undone), timing, in turns of 20 on the same text at 16 and 128 tokens: a
monolithic session of the package's fused full graph with onnxruntime's default options, the same
graph under the mode's options, edgeinfer with adaptivity off (the fused graph) and edgeinfer's
exits at 0.99 (stage graphs, one session each).

    python -m edgeinfer.bench.studies.thread_pools PKG [--runs 300] [--out DIR]

Figure (bench/RESULTS-archive.md): per mode, mean ms and the ratio of adaptivity-off to the default
monolithic session, at 16 and 128 tokens.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

MODES = ("global", "spin-stop", "no-spin")


def measure(package: str, mode: str, runs: int) -> dict:
    """In this process: install the mode, then time the four configurations."""
    import numpy as np
    import onnxruntime as ort

    from ...runtime import sessions
    from ...runtime.policy import Policy
    from ...runtime.load import load
    from ..interleaved import Named, measure_interleaved
    from ..timing import latency_summary

    threads = sessions.default_threads()
    if mode == "global":
        sessions.use_global_thread_pool(threads)
    elif mode == "no-spin":
        plain_options = sessions.session_options

        def no_spin(*args, **kwargs):
            options = plain_options(*args, **kwargs)
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            return options

        sessions.session_options = no_spin
    off = load(package, policy=Policy.off())
    exits = load(package, policy=Policy(agreement=0.99, precision="fp32"))
    full_graph = str(off.package.path(off.manifest.span_covering(
        ("embed", *(b.name for b in off.manifest.blocks()), "head")).graph("fp32")))
    default_options = ort.SessionOptions()
    default_options.intra_op_num_threads = threads
    if mode == "global":
        default_options.use_per_session_threads = False  # onnxruntime refuses anything else now
    plain = ort.InferenceSession(full_graph, default_options, providers=["CPUExecutionProvider"])
    under_mode = sessions.open_session(Path(full_graph), threads)
    result = {}
    for tokens in (16, 128):
        text = "the " * (tokens - 2)
        batch = off.encoder.encode([text])
        feeds = {"input_ids": batch.input_ids, "token_type_ids": batch.token_type_ids,
                 "attention_bias": np.zeros(batch.input_ids.shape, dtype=np.float32)}
        names = [i.name for i in plain.get_inputs()]
        feeds = {k: feeds[k] for k in names}
        configurations = [Named("monolithic, default options", lambda _: plain.run(None, feeds)),
                          Named("monolithic, mode's options", lambda _: under_mode.run(None, feeds)),
                          Named("edgeinfer off", off.run), Named("edgeinfer exits@0.99", exits.run)]
        # turns of 20 opened by 5 untimed runs: a session with onnxruntime's default options spins
        # after each run and would slow whichever configuration came next, input by input
        _, times = measure_interleaved(configurations, [text] * runs, 1, f"{mode} at {tokens} tokens", turn=20)
        summary = {name: latency_summary(values) for name, values in times.items()}
        base = summary["monolithic, default options"]["mean_ms"]
        result[str(tokens)] = {name: {**s, "vs_default_monolithic": round(s["mean_ms"] / base, 4)}
                               for name, s in summary.items()}
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("package", help="an encoder package with exits")
    parser.add_argument("--runs", type=int, default=300, help="timed runs per configuration and length")
    parser.add_argument("--out", default="reports/thread-pools", help="folder for thread_pools.json")
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)  # one mode, in this process
    args = parser.parse_args(argv)
    if args.mode:
        print(json.dumps(measure(args.package, args.mode, args.runs)))
        return
    results = {}
    for mode in MODES:
        done = subprocess.run([sys.executable, "-m", __spec__.name, args.package, "--runs", str(args.runs),
                               "--mode", mode], capture_output=True, text=True, check=True)
        results[mode] = json.loads(done.stdout.strip().splitlines()[-1])
        for tokens, rows in results[mode].items():
            print(f"{mode:9} {tokens:>3} tokens: " + ", ".join(
                f"{name} {row['mean_ms']:.2f} ms ({row['vs_default_monolithic']:.3f}x)" for name, row in rows.items()),
                flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "thread_pools.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
