"""Where a decoded token's time goes: onnxruntime's kernels by operator, the calls around them, and
the Python of the decoding loop.

    python -m edgeinfer.bench.studies.decoder_profile PACKAGE [--precision q8] [--prompts 4]
        [--new-tokens 48] [--shared ../shared] [--out reports/decoder_profile]

The package's graphs are opened with onnxruntime's profiler on (the same session options
otherwise), and greedy generation runs on "Summarize: <AG News dev text>" prompts. Only decoding
steps count: the prefill's calls are left out. Per token: kernel time by operator type (summed over
the graphs a step calls), the rest of each onnxruntime call (binding, thread wake-ups, the
executor), and what remains of the step's wall time: Python.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import onnxruntime as ort

from ...runtime.graph_runner import OnnxGraph
from ...runtime.sessions import session_options
from ..report_files import write_atomically, write_json
from .decoder_bench import read_prompts


def _profiled(session, precision: str, prefix: Path) -> list[ort.InferenceSession]:
    """Profiled sessions in place of the runner's for the graphs a full-depth step calls."""
    runner = session.runner
    opened = []
    for segment in session.step_graphs(precision):
        options = session_options(runner.threads, shared_arena=True)
        options.enable_profiling = True
        options.profile_file_prefix = str(prefix / segment.name)
        path = session.package.path(segment.graph(precision))
        inner = ort.InferenceSession(str(path), sess_options=options, providers=list(runner.providers))
        runner._graphs[f"{segment.name}/{precision}"] = OnnxGraph(inner, str(path))
        opened.append(inner)
    return opened


def _decode_calls(name: str, warm_up: int, per_generation: int) -> tuple[Counter, float]:
    """Kernel microseconds by operator and whole-call microseconds of one graph's decoding calls:
    after `warm_up` calls, each generation makes `per_generation` (its prefill first, left out)."""
    events = json.loads(Path(name).read_text(encoding="utf-8"))
    runs = sorted((e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"),
                  key=lambda e: e["ts"])[warm_up:]
    if len(runs) % per_generation:
        raise SystemExit(f"{name}: {len(runs)} calls do not split into generations of {per_generation}; "
                         f"this study takes prompts under the prefill chunk and full-depth decoding")
    decoding = [r for i, r in enumerate(runs) if i % per_generation]
    nodes = sorted((e for e in events if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")),
                   key=lambda e: e["ts"])
    kernels: Counter = Counter()
    at = 0
    for run in decoding:
        while at < len(nodes) and nodes[at]["ts"] < run["ts"]:
            at += 1
        while at < len(nodes) and nodes[at]["ts"] <= run["ts"] + run["dur"]:
            kernels[nodes[at]["args"]["op_name"]] += nodes[at]["dur"]
            at += 1
    return kernels, float(sum(r["dur"] for r in decoding))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package")
    parser.add_argument("--precision", default="q8")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--shared", default=str(Path(__file__).resolve().parents[3] / "shared"))
    parser.add_argument("--out", default="reports/decoder_profile")
    args = parser.parse_args(argv)
    import edgeinfer

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    session = edgeinfer.load(args.package)
    prompts = [session.encode(p) for p in read_prompts(Path(args.shared), args.prompts)]
    warm_up = 4

    def decode() -> tuple[int, float]:
        session.generate(prompts[0], max_new_tokens=warm_up, min_new_tokens=warm_up, precision=args.precision)
        tokens, wall = 0, 0.0
        for ids in prompts:
            trace = session.generate(ids, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                                     precision=args.precision).trace
            tokens += trace.new_tokens - 1
            wall += (trace.total_ms - trace.first_token_ms) * 1000  # microseconds after the first token
        return tokens, wall

    plain_tokens, plain_wall = decode()
    opened = _profiled(session, args.precision, out)
    tokens, wall = decode()
    kernels: Counter = Counter()
    calls = 0.0
    for inner in opened:
        graph_kernels, graph_calls = _decode_calls(inner.end_profiling(), warm_up, args.new_tokens)
        kernels.update(graph_kernels)
        calls += graph_calls
    kernel_total = sum(kernels.values())
    rows = [{"part": f"kernel: {op}", "ms_per_token": us / tokens / 1000} for op, us in kernels.most_common()]
    rows.append({"part": "onnxruntime calls beyond their kernels", "ms_per_token": (calls - kernel_total) / tokens / 1000})
    rows.append({"part": "Python (decoding loop, sampling, text)", "ms_per_token": (wall - calls) / tokens / 1000})
    document = {"package": args.package, "precision": args.precision, "tokens": tokens,
                "ms_per_token": wall / tokens / 1000, "ms_per_token_unprofiled": plain_wall / plain_tokens / 1000,
                "rows": rows}
    lines = [f"{args.precision}: {document['ms_per_token_unprofiled']:.2f} ms per decoded token without the "
             f"profiler, {document['ms_per_token']:.2f} ms with it (it times every kernel: the calls' overhead "
             f"grows), over {tokens} tokens ({args.prompts} prompts)", "", "| part | ms per token (profiled) | share |",
             "|---|---:|---:|"]
    lines += [f"| {r['part']} | {r['ms_per_token']:.3f} | {r['ms_per_token'] / document['ms_per_token']:.1%} |"
              for r in rows]
    text = "\n".join(lines) + "\n"
    write_json(out / f"profile-{args.precision}.json", document)
    write_atomically(out / f"profile-{args.precision}.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
