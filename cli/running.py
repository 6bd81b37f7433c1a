"""Running packages: run, plan, generate, inspect, audit, cache."""

from __future__ import annotations

import argparse
import json
import sys

from ..errors import EdgeInferError
from .inputs import keep_schedule, read_corpus, read_texts, stdin_text

from .package_text import gate_line, summary_text


def add_commands(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser("run", help="run an edge package on texts (--text, --file, or stdin lines)")
    run.add_argument("package", help="an edge package folder")
    run.add_argument("--text", action="append", help="an input text (repeatable)")
    run.add_argument("--file", help="a file with one input text per line")
    run.add_argument("--json", action="store_true", help="print one JSON object per input")
    _policy_arguments(run)
    run.set_defaults(handler=_run)

    plan = sub.add_parser("plan", help="print what a policy would run on a package, step by step, without running it")
    plan.add_argument("package", help="an edge package folder (a segmented encoder)")
    _policy_arguments(plan)
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")
    plan.set_defaults(handler=_plan)

    search = sub.add_parser("search", help="search a corpus with an embedding package at a stated top-1 agreement "
                                           "(cheap precision first, the full model when too close to call)")
    search.add_argument("package", help="an edge package folder (feature-extraction)")
    search.add_argument("--corpus", required=True, help="a text file with one corpus text per line (.tsv: first column)")
    search.add_argument("--text", action="append", help="a query (repeatable); else --file or stdin lines")
    search.add_argument("--file", help="a file with one query per line")
    search.add_argument("-k", type=int, default=3, help="results per query (default 3)")
    search.add_argument("--agreement", type=float, default=0.99,
                        help="share of queries whose first result must be the full model's (default 0.99)")
    search.add_argument("--precision", default="auto", help="the variant that embeds queries first (auto: the "
                                                            "package's first; fp32: the full model only)")
    search.add_argument("--json", action="store_true", help="print the gate, then one JSON object per query")
    search.set_defaults(handler=_search)

    generate = sub.add_parser("generate", help="generate text with a text-generation package")
    generate.add_argument("package", help="a text-generation edge package")
    generate.add_argument("--prompt", default=None, help="the prompt (default: read stdin)")
    generate.add_argument("--max-new-tokens", type=int, default=128, help="stop after this many new tokens (default 128)")
    generate.add_argument("--no-chat", action="store_true", help="use the prompt as it is, without the chat template")
    generate.add_argument("--stop", action="append", help="stop when the text contains this string (repeatable)")
    generate.add_argument("--temperature", type=float, default=0.0, help="0 is greedy (default)")
    generate.add_argument("--top-k", type=int, default=0, help="sample among the k likeliest tokens (0: all)")
    generate.add_argument("--top-p", type=float, default=1.0, help="sample within this probability mass (1.0: all)")
    generate.add_argument("--seed", type=int, default=None, help="seed for sampling (default: fresh each run)")
    generate.add_argument("--mode", choices=["full", "speculative", "early-exit"], default="full",
                          help="speculative: draft with the first blocks, verify with all (greedy, exact)")
    generate.add_argument("--draft-blocks", type=int, default=None,
                          help="speculative: blocks the draft runs (0: draft from the context only)")
    generate.add_argument("--draft-tokens", type=int, default=4, help="speculative: tokens drafted per check")
    generate.add_argument("--draft-precision", default=None,
                          help="speculative: the draft's variant (default: the package's closest to fp32, else fp32's first blocks)")
    generate.add_argument("--draft-ngram", type=int, default=3,
                          help="speculative: first propose what followed the last N tokens earlier in the context "
                               "(0: never)")
    generate.add_argument("--precision", default="fp32",
                          help="the variant to run (e.g. q8); speculative at a variant: it checks, the context drafts")
    generate.add_argument("--restart-below", type=float, default=None,
                          help="with a lowered --precision: answer again at fp32 when the lowest token "
                               "log-probability is below this")
    generate.add_argument("--agreement", type=float, default=None,
                          help="early-exit: the calibrated token agreement level (e.g. 0.95)")
    generate.add_argument("--exit-threshold", type=float, default=None,
                          help="early-exit: one top-2 margin for every exit instead of calibrated ones")
    generate.add_argument("--prune-prompt", default=None, metavar="BLOCK:FRACTION,...",
                          help="during the prefill, keep this fraction of the prompt after these blocks (e.g. 8:0.5)")
    generate.add_argument("--prune-to-fit", action="store_true",
                          help="with --memory-mb: prune a prompt the KV cap cannot hold instead of refusing")
    generate.add_argument("--audit", type=float, default=None, metavar="SHARE",
                          help="early-exit: score this share of generations again at full depth and tighten the "
                               "level when it is not held (`edgeinfer audit` shows what it found)")
    generate.add_argument("--budget-ms", type=float, default=None, help="stop generating after this long")
    generate.add_argument("--first-token-ms", type=float, default=None,
                          help="time-to-first-token budget: chooses precision and prompt pruning from costs "
                               "measured on this device (first use measures them, ~30 s)")
    generate.add_argument("--tokens-per-second", type=float, default=None,
                          help="decoding-speed budget, planned like --first-token-ms")
    generate.add_argument("--memory-mb", type=float, default=None, help="cap on the KV cache")
    generate.add_argument("--target", default="cpu", help="where to run (see `edgeinfer targets`)")
    generate.add_argument("--threads", type=int, default=None, help="intra-op threads (default: all cores, max 8)")
    generate.add_argument("--json", action="store_true", help="print the result and its trace as JSON")
    generate.set_defaults(handler=_generate)

    inspect = sub.add_parser("inspect", help="describe an edge package")
    inspect.add_argument("package", help="an edge package folder")
    inspect.add_argument("--json", action="store_true", help="print JSON")
    inspect.set_defaults(handler=_inspect)

    audit = sub.add_parser("audit", help="what the online audit (Policy(audit=...)) has seen of a package on "
                           "this machine: realised agreement, its bounds, the level changes made")
    audit.add_argument("package", help="an edge package folder")
    audit.set_defaults(handler=_audit)

    cache = sub.add_parser("cache", help="what the user cache holds (optimized graphs, verification stamps, "
                           "profiles, audits), or clear it")
    cache.add_argument("--info", action="store_true", help="list each part and its size (the default)")
    cache.add_argument("--clear", nargs="*", metavar="PART", default=None,
                       help="remove these parts (e.g. optimized), or everything when none is named")
    cache.set_defaults(handler=_cache)


def _policy_arguments(parser: argparse.ArgumentParser) -> None:
    """What `run` and `plan` share: the policy, the budget and where the package runs."""
    parser.add_argument("--agreement", type=float, default=0.99,
                        help="agreement with the full model to hold when exiting early (default 0.99)")
    parser.add_argument("--full-depth", action="store_true", help="never exit early")
    parser.add_argument("--precision", default="auto",
                        help="precision variant to start at (e.g. int8; low confidence restarts at fp32); "
                             "auto (default): the cheapest the package calibrated at --agreement")
    parser.add_argument("--keep", default=None, help="token pruning: after block : share of tokens kept, e.g. 2:0.7,4:0.5")
    parser.add_argument("--budget-ms", type=float, default=None,
                        help="latency budget per input; past it, answer from the best exit reached")
    parser.add_argument("--memory-mb", type=float, default=None,
                        help="memory cap for the model; refused with the smallest budget that fits")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: all cores, max 8)")
    parser.add_argument("--verify-key", default=None, help="refuse the package unless signed by this public key (PEM)")
    parser.add_argument("--target", default="cpu", help="where to run (see `edgeinfer targets`)")
    parser.add_argument("--auto", nargs="?", const="auto", default=None, metavar="auto:AGREEMENT",
                        help="pick the calibrated operating point (`edgeinfer calibrate`) for the agreement "
                             "(default 0.99) and --budget-ms")
    parser.add_argument("--profile", default="auto",
                        help="device profile from `edgeinfer probe` (default: the one stored for this device, if any)")


def _open(args: argparse.Namespace):
    from ..runtime.load import load
    from ..runtime.policy import Budget, Policy

    policy = Policy(agreement=None if args.full_depth else args.agreement, keep_schedule=keep_schedule(args.keep),
                    precision=args.precision) if args.auto is None else args.auto
    return load(args.package, policy=policy, budget=Budget(latency_ms=args.budget_ms, memory_mb=args.memory_mb),
                threads=args.threads, verify_key=args.verify_key, target=args.target, profile=args.profile)


def _plan(args: argparse.Namespace) -> int:
    from ..runtime.encoder.plan_record import plan_lines

    session = _open(args)
    if not hasattr(session, "plan_record"):
        what = "runs the whole model as one graph" if session.manifest.is_whole else "generates token by token"
        raise EdgeInferError(f"{args.package} {what}: it has no plan of blocks and exits to print; "
                             f"`edgeinfer inspect` describes it")
    record = session.plan_record()
    print(json.dumps(record, indent=2) if args.json else "\n".join(plan_lines(record)))
    return 0


def _run(args: argparse.Namespace) -> int:
    session = _open(args)
    plan = session.plan_record() if args.json and hasattr(session, "plan_record") else None
    for text, result in zip(texts := read_texts(args), session.run(texts)):
        if args.json:  # the first line also carries the plan the session compiled
            print(json.dumps({"text": text, **result.to_dict(), **({"plan": plan} if plan is not None else {})}))
            plan = None
        elif result.label is not None:
            print(f"{result.label}\t{result.confidence:.4f}\texit after block {result.trace.exit_after_block}"
                  f"\t{result.trace.total_ms:.2f} ms")
        else:
            print(f"embedding[{len(result.embedding)}]\texit after block {result.trace.exit_after_block}"
                  f"\t{result.trace.total_ms:.2f} ms")
    return 0


def _search(args: argparse.Namespace) -> int:
    from ..runtime.encoder.search import search_index

    corpus = read_corpus(args.corpus)
    queries = read_texts(args)
    index = search_index(args.package, corpus, agreement=args.agreement, precision=args.precision)
    if args.json:
        print(json.dumps(index.describe()))
    else:
        print(gate_line(index.describe()))
    for query in queries:
        hits = index.search(query, k=min(args.k, len(corpus)))
        if args.json:
            print(json.dumps({"query": query, "ids": list(hits.ids), "scores": [round(s, 6) for s in hits.scores],
                              "rescued": hits.rescued}))
            continue
        print(f"{query}  ({'full model' if hits.rescued or index.cheap is None else index.precision})")
        for rank, (i, score) in enumerate(zip(hits.ids, hits.scores), 1):
            print(f"  {rank}. {score:.4f}  {corpus[i]}")
    return 0


def _generate(args: argparse.Namespace) -> int:
    from ..runtime.policy import Budget
    from ..runtime.decoder.sampling import Sampling
    from ..runtime.load import load

    session = load(args.package, target=args.target, budget=Budget(memory_mb=args.memory_mb), threads=args.threads)
    if not hasattr(session, "generate"):
        raise EdgeInferError(f"{args.package} is not a text-generation package; use `edgeinfer run`")
    prompt = args.prompt if args.prompt is not None else stdin_text()
    stream = None if args.json else (lambda text: (sys.stdout.write(text), sys.stdout.flush()))
    result = session.generate(
        prompt, max_new_tokens=args.max_new_tokens, chat=not args.no_chat, stop=tuple(args.stop or ()),
        sampling=Sampling(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed),
        on_text=stream, mode=args.mode, draft_blocks=args.draft_blocks, draft_tokens=args.draft_tokens,
        draft_precision=args.draft_precision, draft_ngram=args.draft_ngram, precision=args.precision,
        exit_threshold=args.exit_threshold, agreement=args.agreement, restart_below=args.restart_below,
        prune_prompt=keep_schedule(args.prune_prompt, "--prune-prompt"), prune_to_fit=args.prune_to_fit, budget_ms=args.budget_ms,
        first_token_ms=args.first_token_ms, tokens_per_second=args.tokens_per_second, audit=args.audit)
    session.wait_for_audit()  # a process that ends now would end its audit with it
    trace = result.trace
    if args.json:
        print(json.dumps({"text": result.text, "token_ids": list(result.token_ids),
                          "mean_log_prob": result.mean_log_prob, "min_log_prob": result.min_log_prob,
                          "trace": {**trace.__dict__, "exit_blocks": list(trace.exit_blocks),
                                    "tokens_per_second": trace.tokens_per_second}}, indent=2))
    else:
        accepted = f", {trace.accepted}/{trace.drafted} drafts accepted" if trace.drafted else ""
        planned = (f", planned {trace.plan} for {trace.predicted_first_token_ms:.0f} ms / "
                   f"{trace.predicted_tokens_per_second:.1f} tokens/s") if trace.plan else ""
        print(f"\n[{trace.new_tokens} tokens, {trace.tokens_per_second:.1f} tokens/s, first token "
              f"{trace.first_token_ms:.0f} ms, stopped: {trace.stopped}{accepted}{planned}]", file=sys.stderr)
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from ..runtime.package import open_package
    from ..runtime.describe import describe_package

    package = open_package(args.package)
    summary = describe_package(package)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    try:
        text = summary_text(summary)
    except (TypeError, ValueError, KeyError, AttributeError, IndexError) as err:
        # the records (validation, evaluation, calibration) are free-form JSON a package may fill oddly
        from ..errors import PackageError

        raise PackageError(f"{args.package}: a record in its manifest has values of unexpected types ({err}); "
                           f"`edgeinfer inspect --json` shows them as they are") from None
    print(text)
    return 0


def _audit(args: argparse.Namespace) -> int:
    from ..runtime.encoder.audit_session import audit_files, audit_states
    from ..runtime.package import open_package

    package = open_package(args.package)
    if not audit_files(package.root):
        print(f"no audit of {args.package} on this machine yet; run it with Policy(agreement=..., audit=0.05)")
        return 0
    for path, state in audit_states(package):
        bounds = state.agreement_bounds()
        realised = (f"realised agreement {1 - state.disagreements / state.samples:.4f} over {state.samples} audits "
                    f"(95% anytime bounds {bounds[0]:.3f}-{bounds[1]:.3f})") if bounds else "no audits at this level yet"
        print(f"{path.name}: requested {state.requested}, in force {state.in_force or 'full depth (exits off)'}; "
              f"{realised}; {state.dropped} samples dropped (queue full)")
        if state.outside:
            print(f"  {state.outside} of {state.requests} requests had a length outside the calibration inputs' "
                  f"(`edgeinfer inspect` shows the range): the stated level is not promised for them")
        for move in state.adjustments:
            print(f"  {move['at']}: {move['from']} -> {move['to'] or 'full depth'} after {move['disagreements']} "
                  f"disagreements in {move['samples']} audits")
    return 0


def _cache(args: argparse.Namespace) -> int:
    from ..runtime.optimized_graphs import cap_bytes
    from ..runtime.user_cache import cache_root, cache_usage, clear_cache

    if args.clear is not None:
        freed = clear_cache(args.clear or None)
        print(f"removed {freed / 2**20:.1f} MB from {cache_root()}" + (f" ({', '.join(args.clear)})" if args.clear else ""))
        return 0
    usage = cache_usage()
    print(f"{cache_root()}: {sum(usage.values()) / 2**20:.1f} MB")
    for name, size in usage.items():
        note = f"  (capped at {cap_bytes() / 2**20:.0f} MB, least recently used first)" if name == "optimized" else ""
        print(f"  {name:14s} {size / 2**20:8.1f} MB{note}")
    return 0
