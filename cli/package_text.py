"""`edgeinfer inspect` in words: the package summary (runtime/describe.py) as aligned lines."""

from __future__ import annotations

from ..runtime.encoder.plan_record import plan_lines


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
    plan = summary.get("plan") or {}
    if "steps" in plan:  # what load(package) runs, the precision choice included
        lines += ["default    load(package) runs this plan (`edgeinfer plan` prints another policy's):", *plan_lines(plan)]
    elif default is not None and len(default["expected_cost"]) > 1:
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
    validation = _record(summary.get("validation"))
    if model["task"] == "text-generation":
        checked = validation.get("prompts")
        lines.append(f"validation greedy generation identical to PyTorch's for {_number(validation.get('new_tokens'), 'd')} "
                     f"tokens on {len(checked) if isinstance(checked, list) else '?'} prompts; key/value graphs within "
                     f"{_number(validation.get('kv_max_abs_diff'), '.1e')}")
        return "\n".join(lines)
    exits = f"(exits {_number(validation['exit_max_abs_diff'], '.2e')}) " if "exit_max_abs_diff" in validation else ""
    lines.append(f"validation max abs diff {_number(validation.get('max_abs_diff'), '.2e')} {exits}vs "
                 f"{validation.get('reference', '?')}: {'passed' if validation.get('passed') is True else 'FAILED'}")
    litert = summary.get("litert")
    if litert:
        checked = _record(validation.get("litert"))
        lines.append(f"litert     {', '.join(litert['files'])}: {len(litert['segments'])} segments at token buckets "
                     f"{litert['buckets']}, {litert['bytes'] / 1e6:.1f} MB; within "
                     f"{_number(checked.get('max_abs_diff'), '.1e')} of the ONNX graphs (target litert-cpu)")
    lines += _evaluation_lines(_record(summary.get("evaluation")))
    return "\n".join(lines)


def _record(value: object) -> dict:
    """A report record from the manifest (validation, evaluation): kept as the exporter wrote it, so
    read here without trusting its shape; a value of the wrong kind shows as '?'."""
    return value if isinstance(value, dict) else {}


def _rows(value: object) -> list[dict]:
    """A report's list of records, each one that is a record."""
    return [row for row in value if isinstance(row, dict)] if isinstance(value, list) else []


def _number(value: object, spec: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "?"
    try:
        return format(value, spec)
    except (ValueError, OverflowError):
        return "?"


def _evaluation_lines(evaluation: dict) -> list[str]:
    if not evaluation:
        return []
    lines = [f"evaluation on {evaluation.get('data', '?')} ({_number(evaluation.get('examples'), 'd')} examples)"]
    if "final_accuracy" in evaluation:
        lines.append(f"  full model accuracy {_number(evaluation['final_accuracy'], '.4f')}")
    for row in _rows(evaluation.get("exits")):
        acc = f"accuracy {_number(row['accuracy'], '.4f')}, " if "accuracy" in row else ""
        lines.append(f"  exit after block {row.get('after_block', '?')}: {acc}agreement "
                     f"{_number(row.get('agreement_with_final'), '.4f')}")
    for row in _rows(evaluation.get("levels")):
        acc = f", accuracy {_number(row['accuracy'], '.4f')}" if "accuracy" in row else ""
        lines.append(f"  level {row.get('agreement', '?')}: agreement {_number(row.get('realized_agreement'), '.4f')}, "
                     f"mean depth {_number(row.get('mean_depth'), '.2f')}{acc}")
    return lines


def gate_line(index: dict) -> str:
    """What a search index (runtime/encoder/search.py: SearchIndex.describe()) will do, in one line."""
    gate, precision = index["gate"], index["precision"]
    if precision == "fp32":
        return f"search: the full model embeds every query ({index['texts']} corpus texts)"
    if gate["margin"] is None:
        return (f"search: the full model embeds every query: {gate['sampled']} sampled corpus texts cannot certify "
                f"top-1 agreement {gate['agreement']:g} for {precision} (about 300 can at 0.99)")
    return (f"search: {precision} embeds each query first; the full model answers when the first result leads the "
            f"second by less than {gate['margin']:.4f} ({gate['rescued_share']:.1%} of {gate['sampled']} sampled "
            f"corpus texts). First result = the full model's for >= {gate['agreement']:g} of queries, 95% confidence")
