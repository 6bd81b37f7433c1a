"""Do first-token and tokens-per-second budgets hold on SmolLM2-135M?

    python -m edgeinfer.bench.studies.decoder_budget [--long-prompts 12] [--prompts 12] [--out reports/decoder]

The package's costs are measured afresh on this device (what `generate(first_token_ms=...)` does on
first use). Each budget is set against a no-budget fp32 run of the same prompts in this run (a first
pass sets them; a second interleaves every configuration prompt by prompt): a first-token budget at
0.7x the median unpruned first token on ~512-token prompts, a rate budget at 1.4x fp32's median
decoding rate on "Summarize: <AG News>" prompts, and both together on the long prompts. Per configuration: the plan chosen, how many requests met the budget, predicted
against measured, and the first token's agreement with the unpruned fp32 answer.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ...progress import progress_bar
from ...runtime.user_cache import cache_root
from .decoder_bench import bench_package, long_prompts, read_prompts
from ..report_files import write_atomically, write_json

NEW_TOKENS = 24


def _runs(session, prompts: list[list[int]], options: dict, bar) -> list:
    out = []
    for ids in prompts:
        out.append(session.generate(ids, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, **options))
        bar.update()
    return out


def _row(name: str, budget: dict, runs: list, reference: list) -> dict:
    first = np.array([r.trace.first_token_ms for r in runs])
    rate = np.array([r.trace.tokens_per_second for r in runs])
    row = {"config": name, "budget": budget, "requests": len(runs), "plan": runs[0].trace.plan or "fp32, no pruning",
           "first_token_ms_median": round(float(np.median(first)), 1),
           "tokens_per_second_median": round(float(np.median(rate)), 2),
           "next_token_agreement": round(float(np.mean([r.token_ids[0] == f.token_ids[0]
                                                        for r, f in zip(runs, reference)])), 3)}
    if runs[0].trace.plan:
        predicted_first = np.array([r.trace.predicted_first_token_ms for r in runs])
        predicted_rate = np.array([r.trace.predicted_tokens_per_second for r in runs])
        row["first_token_error_median"] = round(float(np.median(np.abs(first - predicted_first) / first)), 3)
        row["rate_error_median"] = round(float(np.median(np.abs(rate - predicted_rate) / rate)), 3)
    if "first_token_ms" in budget:
        row["within_first_token_budget"] = round(float(np.mean(first <= budget["first_token_ms"])), 3)
    if "tokens_per_second" in budget:
        row["within_rate_budget"] = round(float(np.mean(rate >= budget["tokens_per_second"])), 3)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared"))
    parser.add_argument("--long-prompts", type=int, default=12)
    parser.add_argument("--prompts", type=int, default=12)
    parser.add_argument("--out", default="reports/decoder")
    args = parser.parse_args(argv)
    import edgeinfer
    from ...runtime.decoder import generation_budget

    session = edgeinfer.load(bench_package(cache_root() / "bench"))
    shared = Path(args.shared)
    costs = generation_budget.measure_costs(session)
    generation_budget.costs_path(session).unlink(missing_ok=True)  # generate() re-reads what it measures itself
    long_ids = long_prompts(shared, session, args.long_prompts)
    short_ids = [session.encode(p) for p in read_prompts(shared, args.prompts, skip=100)]
    session.generate(short_ids[0], max_new_tokens=4)
    # a first no-budget pass sets the budgets (and warms up); the second runs every configuration
    # prompt by prompt, so all of them meet the machine in the same state
    with progress_bar(2 * (len(long_ids) + len(short_ids)), "decoder budgets: setting them") as bar:
        first_budget = round(0.7 * float(np.median([r.trace.first_token_ms for r in _runs(session, long_ids, {}, bar)])), 1)
        rate_budget = round(1.4 * float(np.median([r.trace.tokens_per_second for r in _runs(session, short_ids, {}, bar)])), 2)
    long_configs = {"no budget, long prompts": {}, "first token <= 0.7x unpruned": {"first_token_ms": first_budget},
                    "both, long prompts": {"first_token_ms": first_budget, "tokens_per_second": rate_budget}}
    short_configs = {"no budget, short prompts": {}, "tokens/s >= 1.4x fp32": {"tokens_per_second": rate_budget}}
    results: dict[str, list] = {name: [] for name in (*long_configs, *short_configs)}
    with progress_bar(len(long_ids) * len(long_configs) + len(short_ids) * len(short_configs), "decoder budgets") as bar:
        for prompts, configs in ((long_ids, long_configs), (short_ids, short_configs)):
            for ids in prompts:
                for name, options in configs.items():
                    results[name].extend(_runs(session, [ids], options, bar))
    rows = []
    for prompts, configs in ((long_ids, long_configs), (short_ids, short_configs)):
        reference = results[next(iter(configs))]
        rows += [_row(name, options, results[name], reference) for name, options in configs.items()]
    document = {"new_tokens": NEW_TOKENS, "long_prompt_tokens_median": float(np.median([len(i) for i in long_ids])),
                "short_prompt_tokens_median": float(np.median([len(i) for i in short_ids])),
                "costs": {p: asdict(c) for p, c in costs.items()},
                "rows": rows}
    out = Path(args.out)
    write_json(out / "budgets.json", document)
    lines = ["| configuration | plan | met | first token ms (median) | predicted error | tokens/s (median) | "
             "predicted error | next token = unpruned fp32 |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        met = [f"{r[k]:.0%}" for k in ("within_first_token_budget", "within_rate_budget") if k in r]
        lines.append(f"| {r['config']} | {r['plan']} | {' / '.join(met) or '-'} | {r['first_token_ms_median']:.0f} | "
                     f"{r.get('first_token_error_median', float('nan')):.1%} | {r['tokens_per_second_median']:.1f} | "
                     f"{r.get('rate_error_median', float('nan')):.1%} | {r['next_token_agreement']:.0%} |")
    write_atomically(out / "budgets.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
