"""The `edgeinfer` command. Documented errors become one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from .errors import EdgeInferError

if TYPE_CHECKING:
    from .export.pruning_training import PruningFamily


def _export(args: argparse.Namespace) -> int:
    if args.task == "text-generation":
        return _export_decoder(args)
    from .export.pipeline import ExportOptions, export_model

    options = ExportOptions(
        task=args.task, exits=args.exits, calib=args.calib, calib_thresholds=args.calib_thresholds,
        eval_data=args.eval, max_length=args.max_length, train_exits=args.train_exits, exit_head=args.exit_head,
        head_examples=args.head_examples, joint_steps=args.joint_steps, threshold_examples=args.threshold_examples,
        train_pruning=args.train_pruning, pruning_family=_pruning_family(args), force=args.force, seed=args.seed,
        quant=args.quant, size_budget_mb=args.size_budget,
        latency_budget_ms=args.latency_budget_ms, formats=_formats(args.formats), buckets=args.buckets,
        whole=args.whole,
    )
    manifest = export_model(args.model, args.output, options)
    total = sum(f.bytes for f in manifest.files)
    shape = "the whole model in one graph (no exits: `edgeinfer inspect` says why)" if manifest.is_whole \
        else f"{manifest.model.num_blocks} blocks, {len(manifest.exits)} exits"
    print(f"wrote {args.output}: {shape}, {total / 1e6:.1f} MB, validated to {manifest.validation['max_abs_diff']:.1e} "
          f"in {manifest.export['seconds']:.0f} s")
    if manifest.litert is not None:
        _print_litert(args.output, manifest)
    return 0


def _pruning_family(args: argparse.Namespace) -> PruningFamily:
    """--train-pruning-after / -ratios / -share, each falling back to the default family's."""
    from .errors import ExportError
    from .export.pruning_training import PruningFamily

    default = PruningFamily()
    try:
        after = tuple(int(p) for p in args.train_pruning_after.split(",")) if args.train_pruning_after \
            else default.first_blocks
        ratios = tuple(float(p) for p in args.train_pruning_ratios.split(",")) if args.train_pruning_ratios \
            else default.ratio_range
    except ValueError:
        raise ExportError("--train-pruning-after takes block numbers like 1,2 and --train-pruning-ratios "
                          "LOW,HIGH like 0.5,0.75") from None
    if len(ratios) != 2:
        raise ExportError(f"--train-pruning-ratios {args.train_pruning_ratios!r}: give two numbers, LOW,HIGH")
    return PruningFamily(first_blocks=after, ratio_range=(ratios[0], ratios[1]),
                         share=default.share if args.train_pruning_share is None else args.train_pruning_share)


def _formats(spec: str) -> tuple[str, ...]:
    return tuple(part.strip().lower() for part in spec.split(",") if part.strip())


def _print_litert(path: str, manifest) -> None:
    record = manifest.validation["litert"]
    print(f"LiteRT graphs in {path}: {len(manifest.litert.segments)} segments at {len(manifest.litert.buckets)} "
          f"token buckets {list(manifest.litert.buckets)}, {record['bytes'] / 1e6:.1f} MB, validated against "
          f"the ONNX graphs to {record['max_abs_diff']:.1e} in {record['seconds']:.0f} s")


def _convert(args: argparse.Namespace) -> int:
    from .export.litert import convert_package

    if args.to != "litert":
        raise EdgeInferError(f"--to {args.to!r}: the one conversion there is is --to litert")
    manifest = convert_package(args.package, args.buckets, args.output, args.force, args.quant, args.calib)
    _print_litert(args.output or args.package, manifest)
    if args.quant == "int8":
        variant = manifest.precision_variant("litert-int8")
        print(f"LiteRT int8 variant 'litert-int8': {variant.bytes / 1e6:.1f} MB, agreement with fp32 "
              f"{variant.quality['agreement_with_fp32']:.4f} on {variant.quality['calibration_examples']} calibration "
              f"texts, {variant.quality['speedup_measured']:.2f}x fp32's speed; run it with precision='litert-int8'")
    return 0


def _export_decoder(args: argparse.Namespace) -> int:
    from .export.decoder.pipeline import DecoderExportOptions, export_decoder

    manifest = export_decoder(args.model, args.output, DecoderExportOptions(exits=args.exits, force=args.force,
                                                                              calib=args.calib))
    total = sum(f.bytes for f in manifest.files)
    checked = manifest.validation["prompts"]
    print(f"wrote {args.output}: {manifest.model.num_blocks} blocks, exits after {[e.after_block for e in manifest.exits]}, "
          f"{total / 1e6:.1f} MB; greedy generation identical to PyTorch's for {manifest.validation['new_tokens']} "
          f"tokens on {len(checked)} prompts; {manifest.export['seconds']:.0f} s")
    if args.quant not in ("none", "auto"):  # auto adds no variant to a decoder
        _add_decoder_variant(args.output, args.quant)
    return 0


def _generate(args: argparse.Namespace) -> int:
    from .runtime.policy import Budget
    from .runtime.sampling import Sampling
    from .runtime.session import load

    session = load(args.package, target=args.target, budget=Budget(memory_mb=args.memory_mb), threads=args.threads)
    if not hasattr(session, "generate"):
        raise EdgeInferError(f"{args.package} is not a text-generation package; use `edgeinfer run`")
    prompt = args.prompt if args.prompt is not None else _stdin_text()
    stream = None if args.json else (lambda text: (sys.stdout.write(text), sys.stdout.flush()))
    result = session.generate(
        prompt, max_new_tokens=args.max_new_tokens, chat=not args.no_chat, stop=tuple(args.stop or ()),
        sampling=Sampling(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed),
        on_text=stream, mode=args.mode, draft_blocks=args.draft_blocks, draft_tokens=args.draft_tokens,
        draft_precision=args.draft_precision, draft_ngram=args.draft_ngram, precision=args.precision,
        exit_threshold=args.exit_threshold, agreement=args.agreement, restart_below=args.restart_below,
        prune_prompt=_keep_schedule(args.prune_prompt, "--prune-prompt"), prune_to_fit=args.prune_to_fit, budget_ms=args.budget_ms,
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


def _add_decoder_variant(package: str, scheme: str, output: str | None = None, force: bool = False) -> None:
    from .quant.decoder_variant import SCHEMES, add_decoder_variant

    if scheme not in SCHEMES:
        raise EdgeInferError(f"--quant {scheme} does not apply to a text-generation package; use one of {', '.join(SCHEMES)}")
    manifest = add_decoder_variant(package, scheme, output=output, force=force)
    variant = manifest.precision_variants[-1]
    print(f"wrote variant {variant.name!r} into {output or package}: {variant.bytes / 1e6:.1f} MB resident, "
          f"next-token agreement with fp32 {variant.quality['next_token_agreement_with_fp32']:.3f}")


def _quantize(args: argparse.Namespace) -> int:
    from .runtime.package import open_package

    if open_package(args.package, verify=False).manifest.decoder is not None:
        _add_decoder_variant(args.package, args.quant, args.output, args.force)
        return 0
    from .export.calibration_data import BUNDLED_SAMPLE, read_examples
    from .quant.quantize import quantize_package
    from .quant.report import write_quant_report

    texts = list(read_examples(args.calib or BUNDLED_SAMPLE, None, use_labels=False).texts)
    result = quantize_package(Path(args.package), texts, args.quant, output=Path(args.output) if args.output else None,
                              name=args.name, size_budget_mb=args.size_budget, latency_budget_ms=args.latency_budget_ms,
                              sensitivity=args.sensitivity, force=args.force, overrides=_overrides(args.override))
    variant = result.manifest.precision_variants[-1]
    closeness = {k: v for k, v in variant.quality.items() if k in ("agreement_with_fp32", "mean_cosine_to_fp32")}
    print(f"wrote variant {variant.name!r} into {args.output or args.package}: {variant.bytes / 1e6:.1f} MB "
          f"(fp32 {result.analysis.predicted({})[0] / 1e6:.1f} MB), predicted {result.predicted[1]:.2f} ms at "
          f"64 tokens, {', '.join(f'{k} {v:.4f}' for k, v in closeness.items())}")
    if args.report:
        write_quant_report(result, Path(args.report))
        print(f"report: {args.report}/quant.md, quant.json, pareto.png")
    return 0


def _stdin_text() -> str:
    """Standard input, or one line saying how else to give texts when there is none (closed)."""
    from .errors import InputError

    if sys.stdin is None or sys.stdin.closed:
        raise InputError("standard input is closed; pass --text or --file, or pipe the texts in")
    try:
        return sys.stdin.read()
    except (OSError, ValueError) as err:
        raise InputError(f"cannot read standard input ({err}); pass --text or --file") from None


def _keygen(args: argparse.Namespace) -> int:
    from .runtime.signing import generate_key

    private, public = generate_key(Path(args.out))
    print(f"private key {private} (keep it secret), public key {public} (ship it with your app)")
    return 0


def _sign(args: argparse.Namespace) -> int:
    from .runtime.package import open_package
    from .runtime.signing import sign_package

    package = open_package(args.package)  # never sign a package that fails its own checks
    print(f"signed {sign_package(package.root, Path(args.key))}")
    return 0


def _overrides(specs: list[str] | None) -> dict[str, str]:
    from .errors import InputError

    overrides = {}
    for spec in specs or []:
        node, separator, precision = spec.rpartition("=")
        if not separator or not node:
            raise InputError(f"--override {spec!r} must look like NODE=PRECISION, e.g. /blocks.0/dense_2/MatMul=fp32")
        overrides[node] = precision
    return overrides


def _inspect(args: argparse.Namespace) -> int:
    from .runtime.package import open_package
    from .runtime.describe import describe_package

    package = open_package(args.package)
    summary = describe_package(package)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    try:
        text = summary_text(summary)
    except (TypeError, ValueError, KeyError, AttributeError, IndexError) as err:
        # the records (validation, evaluation, calibration) are free-form JSON a package may fill oddly
        from .errors import PackageError

        raise PackageError(f"{args.package}: a record in its manifest has values of unexpected types ({err}); "
                           f"`edgeinfer inspect --json` shows them as they are") from None
    print(text)
    return 0


def _read_texts(args: argparse.Namespace) -> list[str]:
    from .errors import InputError

    if args.text:
        return list(args.text)
    if args.file:
        path = Path(args.file)
        if not path.is_file():
            raise InputError(f"{path} does not exist; pass a text file with one input per line")
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    else:
        lines = _stdin_text().splitlines()
    texts = [line for line in lines if line.strip()]
    if not texts:
        raise InputError("no input texts; pass --text, --file, or lines on stdin")
    return texts


def _keep_schedule(spec: str | None, flag: str = "--keep") -> tuple[tuple[int, float], ...]:
    from .errors import InputError

    if not spec:
        return ()
    try:
        return tuple((int(b), float(k)) for b, k in (part.split(":") for part in spec.split(",")))
    except ValueError:
        raise InputError(f"{flag} {spec!r} must look like 2:0.7,4:0.5 (after block : share of tokens kept)") from None


def _run(args: argparse.Namespace) -> int:
    from .runtime.policy import Budget, Policy
    from .runtime.session import load

    policy = Policy(agreement=None if args.full_depth else args.agreement, keep_schedule=_keep_schedule(args.keep),
                    precision=args.precision) if args.auto is None else args.auto
    session = load(args.package, policy=policy, budget=Budget(latency_ms=args.budget_ms, memory_mb=args.memory_mb),
                   threads=args.threads, verify_key=args.verify_key, target=args.target, profile=args.profile)
    for text, result in zip(texts := _read_texts(args), session.run(texts)):
        if args.json:
            print(json.dumps({"text": text, **result.to_dict()}))
        elif result.label is not None:
            print(f"{result.label}\t{result.confidence:.4f}\texit after block {result.trace.exit_after_block}"
                  f"\t{result.trace.total_ms:.2f} ms")
        else:
            print(f"embedding[{len(result.embedding)}]\texit after block {result.trace.exit_after_block}"
                  f"\t{result.trace.total_ms:.2f} ms")
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    from .export.calibration_data import read_examples
    from .export.operating_points import calibrate_package

    examples = read_examples(Path(args.calib), None)
    texts = list(examples.texts)[: args.limit]
    labels = list(examples.labels)[: args.limit] if examples.labels is not None else None
    manifest = calibrate_package(Path(args.package), texts, labels, target=args.agreement,
                                 output=Path(args.output) if args.output else None, force=args.force)
    record = manifest.calibration["operating_points"]
    print(f"{record['candidates']} operating points measured on {record['texts']} texts ({record['cost']}); "
          f"the Pareto set kept in {args.output or args.package}:")
    for point in manifest.operating_points:
        print(f"  {point.relative_latency:6.3f}x  agreement {point.agreement:.4f}  {point.name}")
    return 0


def _thresholds(args: argparse.Namespace) -> int:
    from .export.calibration_data import read_examples
    from .export.recalibrate import recalibrate_thresholds

    examples = read_examples(Path(args.calib), None, use_labels=False)
    texts = list(examples.texts)[: args.limit]
    manifest = recalibrate_thresholds(Path(args.package), texts, examples.source,
                                      output=Path(args.output) if args.output else None, force=args.force)
    print(f"exit thresholds calibrated on {len(texts)} texts from {examples.source}; "
          f"written to {args.output or args.package}:")
    for level in manifest.exit_thresholds:
        print(f"  {manifest.calibration['thresholds']['guarantee'][str(level.agreement)]}: expected mean depth "
              f"{level.expected_mean_depth:.2f}, {level.calibration_agreement:.4f} on these texts")
    return 0


def _cache(args: argparse.Namespace) -> int:
    from .runtime.optimized_graphs import cap_bytes
    from .runtime.user_cache import cache_root, cache_usage, clear_cache

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


def _conformance(args: argparse.Namespace) -> int:
    from .targets.conformance import write_vectors

    texts = None
    if args.texts:
        path = Path(args.texts)
        if not path.is_file():
            from .errors import InputError

            raise InputError(f"{path} does not exist; pass a text file with one input per line")
        texts = [line for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    written = write_vectors(Path(args.package), Path(args.output), texts, args.limit)
    print(f"conformance vectors: {written}")
    return 0


def _audit(args: argparse.Namespace) -> int:
    from .runtime.audit_session import audit_files, audit_states
    from .runtime.package import open_package

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


def _targets(args: argparse.Namespace) -> int:
    from .targets.catalog import list_targets

    found_all = list_targets()
    width = max(len(found.target.name) for found in found_all)
    for found in found_all:
        mark = "usable " if found.usable else "missing"
        print(f"{found.target.name:<{width}} {mark}  {found.target.description}: {found.reason}")
    return 0


def _probe(args: argparse.Namespace) -> int:
    from .runtime.sessions import default_threads
    from .targets.probe import probe
    from .targets.profile import default_profile_path
    from .bench.report_files import write_json

    profile = probe(Path(args.package), target=args.target, quick=args.quick, threads=args.threads)
    # stored where load() and `run` look for it, and also at -o when asked
    stored = default_profile_path(Path(args.package).resolve(), profile.target, args.threads or default_threads())
    write_json(stored, profile.to_json())
    out = Path(args.output) if args.output else stored
    if out != stored:
        write_json(out, profile.to_json())
    batch1 = [c for c in profile.costs if c.batch == 1 and c.precision == "fp32"]
    for cost in batch1:
        cells = ", ".join(f"{t}: {m:.3f}" for t, m in zip(cost.tokens, cost.median_ms))
        print(f"{cost.segment:<11} {cost.model:<6} ms by tokens  {cells}")
    print(f"overhead per request {profile.overhead_fixed_ms:.3f} ms + {profile.overhead_per_call_ms:.3f} ms per call")
    print(f"profile: {out}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from .errors import InputError

    report_dir = Path(args.report)
    if args.merge:
        from .bench.merge import merge_reports

        merge_reports([Path(p) for p in args.merge], report_dir)
    else:
        from .bench.device_bench import BenchOptions, run_device_bench

        if not args.package or not args.data:
            raise InputError("bench needs a package and --data FILE (or --merge A/report.json B/report.json)")
        keep = _keep_schedule(args.keep) if args.keep is not None else None
        options = BenchOptions(agreement=args.agreement, keep_schedule=keep, budget_ms=args.budget_ms,
                               repeats=args.repeats, target=args.target, profile=args.profile, model_dir=args.model,
                               baselines=not args.no_baselines, label=args.label, cold_start_runs=args.cold_starts)
        run_device_bench(Path(args.package), Path(args.data), report_dir, options)
    print((report_dir / "report.md").read_text(encoding="utf-8"))
    print(f"report: {report_dir / 'report.html'} (and report.json, report.md)")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .bench.demo import run_demo

    out = Path(args.out)
    run_demo(out, agreement=args.agreement, force=args.force)
    print((out / "report" / "report.md").read_text(encoding="utf-8"))
    print(f"package: {out / 'minilm.edge'}\nprofile: {out / 'profile.json'}\n"
          f"report:  {(out / 'report' / 'report.html').resolve()} (and report.md, report.json)")
    return 0


def summary_text(summary: dict) -> str:
    model = summary["model"]
    lines = [
        f"{summary['path']}  (schema {summary['schema_version']}, {summary['total_bytes'] / 1e6:.1f} MB)",
        f"model      {model['model_type']} ({model['family']}), task {model['task']}, "
        f"{model['num_blocks']} blocks, hidden {model['hidden_size']}, source {model['source']}",
        f"weights    {summary['shared_weights_bytes'] / 1e6:.1f} MB shared by all graphs (graphs/weights.bin)",
        "segments   (graph bytes; 'full' is the fused embed..head graph used when nothing is decided)",
    ]
    for segment in summary["segments"]:
        lines.append(f"  {segment['name']:<10} {segment['kind']:<6} {segment['bytes'] / 1e6:8.2f} MB  "
                     f"{', '.join(segment['precisions'])}")
    levels = summary["agreement_levels"]
    if summary["exits"]:
        lines.append("exits      thresholds per agreement level (expected share of inputs leaving there)")
        header = "  after block  " + "  ".join(f"{lv:>15}" for lv in levels)
        lines.append(header)
        for row in summary["exits"]:
            cells = []
            for lv in levels:
                cell = row["levels"][lv]
                t = "never" if cell["threshold"] is None else f"{cell['threshold']:.4f}"
                cells.append(f"{t:>7} ({cell['share']:5.1%})")
            lines.append(f"  {row['after_block']:>11}  " + "  ".join(f"{c:>15}" for c in cells))
        depths = "  ".join(f"{lv}: {summary['expected_mean_depth'][lv]:.2f}" for lv in levels)
        lines.append(f"  expected mean depth  {depths}")
        lines.append(f"  guarantee  {summary['guarantee']}")
        ranges = next(iter(summary.get("length_ranges", {}).values()), [])
        if ranges:
            bounds, low = [], 1
            for r in ranges:
                bounds.append(f"{low}-{r['max_tokens']} tokens ({r['examples']} inputs)" if r["max_tokens"]
                              else f"{low}+ tokens ({r['examples']} inputs)")
                low = (r["max_tokens"] or 0) + 1
            lines.append("  per input length, each range with its own thresholds (the table shows the strictest): "
                         + ", ".join(bounds))
        span = summary.get("calibration_lengths")
        if span:
            lines.append(f"  calibrated on inputs of {span['min']}-{span['max']} tokens (median {span['p50']}); "
                         f"longer or shorter inputs are counted as outside (trace.outside_calibration)")
    elif summary.get("why_no_exits"):
        lines.append(f"exits      none: {summary['why_no_exits']}; it runs the whole model on every input")
    else:
        lines.append("exits      none")
    for variant in (v for v in summary.get("precision_variants", []) if "restart_share" in v and v["restart_share"]):
        quality = variant["quality"]
        close = ", ".join(f"{k} {quality[k]:.4f}" for k in ("agreement_with_fp32", "mean_cosine_to_fp32") if k in quality)
        restarts = "  ".join(f"{lv}: {share:.1%}" for lv, share in variant["restart_share"].items())
        lines.append(f"variant    {variant['name']}: {variant['bytes'] / 1e6:.1f} MB, {variant['nodes_lowered']} nodes "
                     f"lowered ({', '.join(variant['precisions'])}), {close}; restarts at fp32 {restarts}")
    for variant in summary.get("precision_variants", []):
        if "next_token_agreement_with_fp32" in variant["quality"]:
            lines.append(f"variant    {variant['name']}: {variant['bytes'] / 1e6:.1f} MB resident, next-token agreement "
                         f"with fp32 {variant['quality']['next_token_agreement_with_fp32']:.3f}")
    default = summary.get("default_policy")
    if default is not None and len(default["expected_cost"]) > 1:
        costs = ", ".join(f"{name} {cost:.3f}x" for name, cost in default["expected_cost"].items())
        runs = "the whole model" if summary.get("kind") == "whole model in one graph" else f"exits at {default['agreement']:g}"
        lines.append(f"default    load(package) runs {runs} at precision {default['precision']} "
                     f"(expected cost vs the fp32 full model, from calibration: {costs})")
    served = summary.get("served") or {}
    if served.get("outside_calibration"):
        lines.append(f"warning    {served['outside_calibration']} of {served['requests']} requests served here (audited "
                     f"sessions) had a length outside the calibration inputs': the levels are not promised for them; "
                     f"calibrate on such texts with `edgeinfer thresholds --calib`")
    for point in summary.get("operating_points", []):
        accuracy = f", accuracy {point['accuracy']:.4f}" if point["accuracy"] is not None else ""
        lines.append(f"point      {point['name']}: agreement {point['agreement']:.4f}, {point['relative_latency']:.3f}x "
                     f"the full model's latency, mean depth {point['mean_depth']:.2f}{accuracy}")
    validation = summary["validation"]
    if model["task"] == "text-generation":
        checked = validation.get("prompts", [])
        lines.append(f"validation greedy generation identical to PyTorch's for {validation.get('new_tokens', 0)} tokens "
                     f"on {len(checked)} prompts; key/value graphs within {validation.get('kv_max_abs_diff', 0):.1e}")
        return "\n".join(lines)
    exits = f"(exits {validation['exit_max_abs_diff']:.2e}) " if "exit_max_abs_diff" in validation else ""
    lines.append(f"validation max abs diff {validation.get('max_abs_diff', float('nan')):.2e} {exits}vs "
                 f"{validation.get('reference', '?')}: {'passed' if validation.get('passed') else 'FAILED'}")
    litert = summary.get("litert")
    if litert:
        checked = validation.get("litert", {})
        lines.append(f"litert     {', '.join(litert['files'])}: {len(litert['segments'])} segments at token buckets "
                     f"{litert['buckets']}, {litert['bytes'] / 1e6:.1f} MB; within {checked.get('max_abs_diff', float('nan')):.1e} "
                     f"of the ONNX graphs (target litert-cpu)")
    evaluation = summary.get("evaluation") or {}
    if evaluation:
        lines.append(f"evaluation on {evaluation['data']} ({evaluation['examples']} examples)")
        if "final_accuracy" in evaluation:
            lines.append(f"  full model accuracy {evaluation['final_accuracy']:.4f}")
        for row in evaluation["exits"]:
            acc = f"accuracy {row['accuracy']:.4f}, " if "accuracy" in row else ""
            lines.append(f"  exit after block {row['after_block']}: {acc}agreement {row['agreement_with_final']:.4f}")
        for row in evaluation["levels"]:
            acc = f", accuracy {row['accuracy']:.4f}" if "accuracy" in row else ""
            lines.append(f"  level {row['agreement']}: agreement {row['realized_agreement']:.4f}, "
                         f"mean depth {row['mean_depth']:.2f}{acc}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgeinfer", description="Edge packages and adaptive inference.")
    sub = parser.add_subparsers(dest="command", required=True)

    export = sub.add_parser("export", help="export a Hugging Face model as an edge package")
    export.add_argument("model", help="a Hugging Face model directory, 'minilm' (all-MiniLM-L6-v2), "
                                      "or 'smollm2' (SmolLM2-135M-Instruct, with --task text-generation)")
    export.add_argument("-o", "--output", required=True, help="package directory to write (e.g. model.edge)")
    export.add_argument("--task", choices=["feature-extraction", "text-classification", "text-generation"],
                        default="feature-extraction", help="what the package answers: sentence embeddings (the "
                        "default), class labels, or generated text")
    export.add_argument("--exits", default=None, help="exit after these blocks: 1,2,3 | all | none "
                                                      "(default: every block but the last)")
    export.add_argument("--calib", default=None, help="calibration data: TSV (text/sentence[, label]) or one "
                                                      "example per line (default: a bundled sample)")
    export.add_argument("--calib-thresholds", default=None,
                        help="separate data, closer to deployment, for calibrating exit thresholds")
    export.add_argument("--eval", default=None, help="held-out data to measure exits on (recorded in the manifest)")
    export.add_argument("--max-length", type=int, default=128, help="longest input in tokens (default 128)")
    export.add_argument("--train-exits", choices=["auto", "heads", "joint"], default="auto",
                        help="heads: train exit heads on a frozen backbone; joint: fine-tune backbone and exits "
                             "together (labels and self-distillation, or self-distillation alone without labels); "
                             "auto (default): joint for classifiers, heads for embeddings")
    export.add_argument("--joint-steps", type=int, default=1000,
                        help="optimizer steps of joint training (default 1000: batches of 32 from 16,000 rows)")
    export.add_argument("--train-pruning", choices=["token_importance", "cls_attention"], default=None,
                        help="with --train-exits joint: most steps prune tokens by this score as the runtime "
                             "would, so the model keeps its accuracy under a keep schedule")
    export.add_argument("--train-pruning-after", default=None,
                        help="blocks pruning may start after in those steps (default 1,2)")
    export.add_argument("--train-pruning-ratios", default=None,
                        help="LOW,HIGH: the geometric keep ratio r those steps draw from (default 0.4,0.9; "
                             "narrow it to where the runtime will prune, e.g. 0.5,0.75)")
    export.add_argument("--train-pruning-share", type=float, default=None,
                        help="share of the joint steps that prune (default 0.75)")
    export.add_argument("--exit-head", choices=["auto", "pooler", "linear"], default="auto",
                        help="classification exits: pooler (dense + activation + classes, from the model's own "
                             "head) or linear (cheaper per exit); auto (default): linear for classifiers")
    export.add_argument("--head-examples", type=int, default=4000, help="examples that train exit heads")
    export.add_argument("--threshold-examples", type=int, default=3000, help="examples that calibrate thresholds")
    export.add_argument("--seed", type=int, default=0, help="seed of exit-head training and sampling (default 0)")
    export.add_argument("--force", action="store_true", help="replace OUTPUT if it exists")
    export.add_argument("--whole", action="store_true",
                        help="export the whole model as one graph through Optimum (edgeinfer[optimum]), even where an "
                             "adapter exists: no exits, pruning or skipping; families with no adapter always take this way")
    export.add_argument("--formats", default="onnx",
                        help="onnx (default) or onnx,litert: also convert the segments to LiteRT (needs "
                             "edgeinfer[export-litert])")
    export.add_argument("--buckets", default=None,
                        help="LiteRT token counts to convert at (default 8,16,32,64,128,256 up to --max-length)")
    _quant_options(export, default="auto")
    export.add_argument("--no-quant", dest="quant", action="store_const", const="none",
                        help="add no precision variant (the same as --quant none)")
    export.set_defaults(handler=_export)

    convert = sub.add_parser("convert", help="add LiteRT graphs to an exported package (--to litert)")
    convert.add_argument("package", help="the edge package to add graphs to")
    convert.add_argument("--to", required=True, help="litert")
    convert.add_argument("--buckets", default=None,
                         help="token counts to convert at (default 8,16,32,64,128,256 up to the package's max length)")
    convert.add_argument("--quant", choices=["none", "int8"], default="none",
                         help="int8: also add the LiteRT int8 variant 'litert-int8' (ai-edge-quantizer, dynamic int8; "
                              "classifiers), thresholds calibrated on --calib")
    convert.add_argument("--calib", default=None, help="calibration texts for --quant int8 (default: a bundled sample)")
    convert.add_argument("-o", "--output", default=None, help="write a new package here (default: in place)")
    convert.add_argument("--force", action="store_true", help="replace OUTPUT if it exists")
    convert.set_defaults(handler=_convert)

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
    generate.add_argument("--draft-precision", default="fp32", help="speculative: the draft's variant (e.g. q8)")
    generate.add_argument("--draft-ngram", type=int, default=0,
                          help="speculative: first propose what followed the last N tokens earlier in the context")
    generate.add_argument("--precision", default="fp32", help="full/early-exit: the variant to run (e.g. q8)")
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

    quantize = sub.add_parser("quantize", help="add a precision variant (int8, int4, fp16, mixed) to a package")
    quantize.add_argument("package", help="the edge package to add a variant to")
    quantize.add_argument("--calib", default=None, help="calibration texts (TSV or one per line; a few "
                                                       "thousand give useful thresholds; default: a bundled sample)")
    quantize.add_argument("-o", "--output", default=None, help="write a new package here (default: in place)")
    quantize.add_argument("--name", default=None, help="variant name (default: the mode, or mixed-<MB>mb)")
    quantize.add_argument("--sensitivity", choices=["proxy", "measured"], default="proxy",
                          help="node errors from the value-driven proxy (seconds) or measured one by one (minutes)")
    quantize.add_argument("--report", default=None, help="folder for quant.md, quant.json and pareto.png")
    quantize.add_argument("--override", action="append", metavar="NODE=PRECISION",
                          help="force a node's precision after the search (repeatable)")
    quantize.add_argument("--force", action="store_true", help="replace OUTPUT or a variant of the same name")
    _quant_options(quantize, default="mixed")
    quantize.set_defaults(handler=_quantize)

    keygen = sub.add_parser("keygen", help="make an Ed25519 key pair for signing packages")
    keygen.add_argument("--out", required=True, help="private key file to write (the public key gets .pub)")
    keygen.set_defaults(handler=_keygen)

    sign = sub.add_parser("sign", help="sign a package (manifest.sig) so apps can verify who published it")
    sign.add_argument("package", help="the edge package to sign")
    sign.add_argument("--key", required=True, help="private key from `edgeinfer keygen`")
    sign.set_defaults(handler=_sign)

    inspect = sub.add_parser("inspect", help="describe an edge package")
    inspect.add_argument("package", help="an edge package folder")
    inspect.add_argument("--json", action="store_true", help="print JSON")
    inspect.set_defaults(handler=_inspect)

    run = sub.add_parser("run", help="run an edge package on texts (--text, --file, or stdin lines)")
    run.add_argument("package", help="an edge package folder")
    run.add_argument("--text", action="append", help="an input text (repeatable)")
    run.add_argument("--file", help="a file with one input text per line")
    run.add_argument("--agreement", type=float, default=0.99,
                     help="agreement with the full model to hold when exiting early (default 0.99)")
    run.add_argument("--full-depth", action="store_true", help="never exit early")
    run.add_argument("--precision", default="auto",
                     help="precision variant to start at (e.g. int8; low confidence restarts at fp32); "
                          "auto (default): the cheapest the package calibrated at --agreement")
    run.add_argument("--keep", default=None, help="token pruning: after block : share of tokens kept, e.g. 2:0.7,4:0.5")
    run.add_argument("--budget-ms", type=float, default=None,
                     help="latency budget per input; past it, answer from the best exit reached")
    run.add_argument("--memory-mb", type=float, default=None,
                     help="memory cap for the model; refused with the smallest budget that fits")
    run.add_argument("--threads", type=int, default=None, help="intra-op threads (default: all cores, max 8)")
    run.add_argument("--json", action="store_true", help="print one JSON object per input")
    run.add_argument("--verify-key", default=None, help="refuse the package unless signed by this public key (PEM)")
    run.add_argument("--target", default="cpu", help="where to run (see `edgeinfer targets`)")
    run.add_argument("--auto", nargs="?", const="auto", default=None, metavar="auto:AGREEMENT",
                     help="pick the calibrated operating point (`edgeinfer calibrate`) for the agreement "
                          "(default 0.99) and --budget-ms")
    run.add_argument("--profile", default="auto",
                     help="device profile from `edgeinfer probe` (default: the one stored for this device, if any)")
    run.set_defaults(handler=_run)

    calibrate = sub.add_parser("calibrate", help="measure operating points (exits x pruning x skipping x precision) "
                                                 "and store the Pareto set in the package")
    calibrate.add_argument("package", help="the edge package to measure")
    calibrate.add_argument("--calib", required=True, help="calibration texts: TSV (text[, label]) or one per line")
    calibrate.add_argument("--agreement", type=float, default=0.99,
                           help="agreement a skipped block must keep to enter the grid (default 0.99)")
    calibrate.add_argument("--limit", type=int, default=500, help="texts to use (default 500)")
    calibrate.add_argument("-o", "--output", default=None, help="write a new package here (default: in place)")
    calibrate.add_argument("--force", action="store_true", help="replace an existing package at --output")
    calibrate.set_defaults(handler=_calibrate)

    audit = sub.add_parser("audit", help="what the online audit (Policy(audit=...)) has seen of a package on "
                           "this machine: realised agreement, its bounds, the level changes made")
    audit.add_argument("package", help="an edge package folder")
    audit.set_defaults(handler=_audit)

    conformance = sub.add_parser("conformance", help="write test vectors another runtime (js/, or a binding of "
                                 "your own) must reproduce on this package")
    conformance.add_argument("package", help="the edge package")
    conformance.add_argument("-o", "--output", required=True, help="folder for vectors.json")
    conformance.add_argument("--texts", default=None, help="inputs, one per line (default: the bundled sample)")
    conformance.add_argument("--limit", type=int, default=64, help="inputs to use (default 64)")
    conformance.set_defaults(handler=_conformance)

    cache = sub.add_parser("cache", help="what the user cache holds (optimized graphs, verification stamps, "
                           "profiles, audits), or clear it")
    cache.add_argument("--info", action="store_true", help="list each part and its size (the default)")
    cache.add_argument("--clear", nargs="*", metavar="PART", default=None,
                       help="remove these parts (e.g. optimized), or everything when none is named")
    cache.set_defaults(handler=_cache)

    thresholds = sub.add_parser("thresholds", help="calibrate the exit thresholds again on texts like the "
                                "traffic the package will serve (no labels needed)")
    thresholds.add_argument("package", help="the edge package to calibrate again")
    thresholds.add_argument("--calib", required=True,
                            help="texts: one per line, or a TSV with a text or sentence column (labels are ignored)")
    thresholds.add_argument("--limit", type=int, default=3000, help="texts to use (default 3000)")
    thresholds.add_argument("-o", "--output", default=None, help="write a new package here (default: in place)")
    thresholds.add_argument("--force", action="store_true", help="replace an existing package at --output")
    thresholds.set_defaults(handler=_thresholds)

    targets = sub.add_parser("targets", help="list the targets this machine can run, and why the others cannot")
    targets.set_defaults(handler=_targets)

    probe = sub.add_parser("probe", help="measure every graph of a package on this device (a latency profile)")
    probe.add_argument("package", help="the edge package to measure")
    probe.add_argument("--target", default="cpu", help="target to measure (see `edgeinfer targets`)")
    probe.add_argument("-o", "--output", default=None,
                       help="profile file (default: the cache where `edgeinfer run` finds it for this device)")
    probe.add_argument("--quick", action="store_true", help="fewer token counts and rounds (under a minute)")
    probe.add_argument("--threads", type=int, default=None, help="intra-op threads (default: all cores, max 8)")
    probe.set_defaults(handler=_probe)

    bench = sub.add_parser("bench", help="baselines and operating points on this device, in one report (HTML, MD, JSON)")
    bench.add_argument("package", nargs="?", help="the edge package to bench (omit it with --merge)")
    bench.add_argument("--data", help="inputs: TSV (text[, label]) or one text per line")
    bench.add_argument("--target", default="cpu", help="where to run (see `edgeinfer targets`)")
    bench.add_argument("--budget-ms", type=float, default=None, help="also run with this latency budget (deadline)")
    bench.add_argument("--agreement", type=float, default=0.99, help="the stored agreement level the exit configurations run at (default 0.99)")
    bench.add_argument("--keep", default=None, help="pruning schedule of the pruned points, e.g. 2:0.7,4:0.5 "
                                                   "(default: 70%% after a third of the blocks, 50%% after two thirds)")
    bench.add_argument("--repeats", type=int, default=3, help="interleaved passes over the data")
    bench.add_argument("--cold-starts", type=int, default=5, help="fresh processes per configuration")
    bench.add_argument("--model", default=None, help="Hugging Face directory the package came from (baselines)")
    bench.add_argument("--no-baselines", action="store_true", help="edgeinfer's points only")
    bench.add_argument("--profile", default="auto", help="device profile (default: the stored one for this device)")
    bench.add_argument("--label", default=None, help="name of this device/backend in merged reports")
    bench.add_argument("--report", default="bench-report", help="folder for report.json, report.md, report.html")
    bench.add_argument("--merge", nargs="+", metavar="REPORT_JSON", help="merge reports from several devices instead")
    bench.set_defaults(handler=_bench)

    demo = sub.add_parser("demo", help="export all-MiniLM-L6-v2, probe it, bench it on a bundled sample, write an HTML report")
    demo.add_argument("--out", default="edgeinfer-demo", help="folder for the package and report")
    demo.add_argument("--agreement", type=float, default=0.99, help="the agreement level the demo benches (default 0.99)")
    demo.add_argument("--force", action="store_true", help="re-export even if the package exists")
    demo.set_defaults(handler=_demo)
    return parser


def _quant_options(parser: argparse.ArgumentParser, default: str) -> None:
    choices = ["none", "int8", "int4", "fp16", "mixed", "q8", "q4"] + (["auto"] if default == "auto" else [])
    parser.add_argument("--quant", choices=choices, default=default,
                        help=f"precision variant to add (default {default}"
                             f"{': int8 for classifiers, none for embeddings' if default == 'auto' else ''}); mixed "
                             f"searches per node for the budget; text-generation packages take q8 (weight-only "
                             f"8-bit), q4 or int8")
    parser.add_argument("--size-budget", type=float, default=None, help="mixed: model size budget in MB")
    parser.add_argument("--latency-budget-ms", type=float, default=None,
                        help="mixed: latency budget in ms for a 64-token input on this device")


def _show_progress_lines() -> None:
    """Off a terminal, long stages log a line now and then (progress.py); the CLI shows them on stderr."""
    import logging

    class CurrentStderr(logging.Handler):  # whatever sys.stderr is when a line is written
        def emit(self, record: logging.LogRecord) -> None:
            sys.stderr.write(f"edgeinfer: {record.getMessage()}\n")

    logger = logging.getLogger("edgeinfer")
    if not any(type(h).__name__ == "CurrentStderr" for h in logger.handlers):
        logger.addHandler(CurrentStderr())
        logger.setLevel(logging.INFO)
        logger.propagate = False


EXPORT_MODULES = ("torch", "transformers", "safetensors", "onnx", "scipy", "tqdm", "matplotlib")
NEEDS = {  # command -> (extra, modules it imports): checked before any work starts
    "export": ("export", EXPORT_MODULES), "demo": ("export", EXPORT_MODULES),
    "quantize": ("export", EXPORT_MODULES), "calibrate": ("export", EXPORT_MODULES),
    "thresholds": ("export", EXPORT_MODULES), "bench": ("export", EXPORT_MODULES),
    "convert": ("export-litert", ("torch", "onnx", "litert_torch")),
    "keygen": ("signing", ("cryptography",)), "sign": ("signing", ("cryptography",)),
}
EXTRA_OF_MODULE = {**{m: "export" for m in EXPORT_MODULES}, "litert_torch": "export-litert",
                   "ai_edge_litert": "litert", "cryptography": "signing", "gguf": "llm", "accelerate": "llm"}


def missing_extra(command: str) -> str | None:
    """One line naming the extra to install, when a module the command needs is not installed."""
    extra, modules = NEEDS.get(command, (None, ()))
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if not missing:
        return None
    return (f"`edgeinfer {command}` needs the {extra} extra (missing: {', '.join(missing)}); "
            f"pip install 'edgeinfer[{extra}]'")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _show_progress_lines()
    handler: Callable[[argparse.Namespace], int] = args.handler
    command = args.command
    needed = missing_extra(command)
    if needed is not None:
        print(f"edgeinfer: error: {needed}", file=sys.stderr)
        return 2
    try:
        return handler(args)
    except EdgeInferError as err:
        print(f"edgeinfer: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("edgeinfer: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`edgeinfer run ... | head`): stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except ModuleNotFoundError as err:  # an optional module the check above does not list
        root = (err.name or "").split(".")[0]
        if root not in EXTRA_OF_MODULE:
            raise
        print(f"edgeinfer: error: `edgeinfer {command}` needs the {EXTRA_OF_MODULE[root]} extra (missing: {root}); "
              f"pip install 'edgeinfer[{EXTRA_OF_MODULE[root]}]'", file=sys.stderr)
        return 2
    except (OSError, ValueError, UnicodeError, OverflowError, RecursionError, MemoryError) as err:
        # what the arguments or the filesystem made impossible (a path that is not one, a full disk,
        # a number too large): one line naming the command, never a traceback
        detail = str(err).splitlines()[0][:200] if str(err) else ""
        print(f"edgeinfer: error: {command}: {type(err).__name__}{': ' + detail if detail else ''}; "
              f"check the arguments (`edgeinfer {command} --help`)", file=sys.stderr)
        return 2

if __name__ == "__main__":
    sys.exit(main())
