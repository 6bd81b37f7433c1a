"""`edgeinfer bench`: plain baselines and edgeinfer's operating points, measured on this device in
one process and one run, joined in one report (JSON, Markdown, HTML with plots).

Baselines: PyTorch eager (when torch and the source model are at hand), the whole model as one
onnxruntime graph exported from the Hugging Face forward as Optimum does, and its int8 dynamic
per-channel quantization. Operating points: adaptivity off, early exit, pruning, both, each
precision variant's cascade, and the deadline when a budget is given. Configurations alternate
input by input (bench/interleaved.py), so that the machine's drift hits all alike; cold start
and peak memory come from fresh processes per configuration (bench/cold_start.py).
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import EdgeInferError, InputError
from ..export.calibration_data import read_examples
from ..manifest import exact_level
from ..progress import progress_bar
from ..runtime.encoder.planner import choose_point, choose_precision, policy_of
from ..runtime.policy import Budget, Policy, cosine, default_keep_schedule, embedding_agreement_cosine, softmax
from ..runtime.load import load
from ..runtime.encoder.session import EdgeSession
from ..runtime.sessions import default_threads
from ..targets.catalog import usable_target
from ..targets.fingerprint import device_fingerprint, fingerprint_key
from .interleaved import measure_interleaved, regime
from .retrieval import retrieval_agreement, search_example
from .cold_start import cold_start, edgeinfer_spec, onnxruntime_spec, torch_spec
from .timing import latency_summary

DEFAULT_CONFIGURATION = "edgeinfer default"  # what load(package) runs
STATIC_INT8 = "onnxruntime int8 dynamic (monolithic)"

WARMUP = 10


@dataclass(frozen=True)
class Answer:
    output: np.ndarray  # class probabilities or the embedding
    depth: int
    tokens: tuple[int, ...]
    cut_short: bool = False
    restarts: int = 0
    predicted_ms: float | None = None


@dataclass(frozen=True)
class Configuration:
    name: str
    kind: str  # "baseline" or "edgeinfer"
    answer: Callable[[str], Answer]
    cold_start_spec: dict
    model_bytes: int


@dataclass(frozen=True)
class BenchOptions:
    agreement: float = 0.99
    keep_schedule: tuple[tuple[int, float], ...] | None = None  # None: 70% after a third of the blocks, 50% after two
    budget_ms: float | None = None
    repeats: int = 3
    cold_start_runs: int = 5
    target: str = "cpu"
    profile: str | None = "auto"
    model_dir: str | None = None  # the Hugging Face model the package came from (baselines)
    baselines: bool = True
    label: str | None = None  # names this device in merged reports


def _edgeinfer(name: str, session: EdgeSession, spec: dict, model_bytes: int) -> Configuration:
    classification = session.manifest.model.task == "text-classification"

    def answer(text: str) -> Answer:
        result = session.run(text)
        trace = result.trace
        return Answer(result.probabilities if classification else result.embedding, trace.exit_after_block,
                      trace.tokens_per_block, trace.deadline_cut, trace.restarts, trace.predicted_ms)
    return Configuration(name, "edgeinfer", answer, spec, model_bytes)


def _pool(hidden: np.ndarray, mask: np.ndarray, normalize: bool) -> np.ndarray:
    weights = mask[..., None].astype(np.float32)
    pooled = (hidden * weights).sum(1) / np.maximum(weights.sum(1), 1e-9)
    return pooled / np.linalg.norm(pooled, axis=-1, keepdims=True) if normalize else pooled


def _baselines(session: EdgeSession, model_dir: str, tmp: Path, threads: int,
               notes: list[str]) -> list[Configuration]:
    """PyTorch eager and the monolithic onnxruntime graphs (fp32, int8), answering like the package."""
    from .baselines import MonolithicModel, export_monolithic, quantize_int8

    manifest = session.manifest
    task, normalize, blocks = manifest.model.task, manifest.model.normalize_embedding, manifest.model.num_blocks
    encoder, max_length = session.encoder, manifest.tokenizer.max_length
    tokenizer_file = session.package.path(manifest.tokenizer.path)

    def finish(raw: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return softmax(raw[0]) if task == "text-classification" else _pool(raw, mask, normalize)[0]

    configurations = []
    fp32 = export_monolithic(model_dir, task, tmp / "model.onnx")
    int8 = quantize_int8(fp32, tmp / "model.int8.onnx")
    try:
        import torch
        from transformers import AutoModel, AutoModelForSequenceClassification

        torch.set_num_threads(threads)
        loader = AutoModelForSequenceClassification if task == "text-classification" else AutoModel
        eager = loader.from_pretrained(model_dir).eval()
        output = "logits" if task == "text-classification" else "last_hidden_state"

        def torch_answer(text: str) -> Answer:
            batch = encoder.encode([text])
            with torch.no_grad():
                out = eager(input_ids=torch.from_numpy(batch.input_ids), attention_mask=torch.from_numpy(batch.attention_mask),
                            token_type_ids=torch.from_numpy(batch.token_type_ids))
            return Answer(finish(getattr(out, output).numpy(), batch.attention_mask), blocks, (batch.input_ids.shape[1],) * blocks)
        size = sum(p.numel() * p.element_size() for p in eager.parameters())
        configurations.append(Configuration("PyTorch eager (fp32)", "baseline", torch_answer,
                                            torch_spec(Path(model_dir), task, max_length, threads), size))
    except ImportError as err:
        notes.append(f"no PyTorch eager baseline: {err}")
    for name, path in (("onnxruntime fp32 (monolithic)", fp32), (STATIC_INT8, int8)):
        model = MonolithicModel(path, threads)

        def graph_answer(text: str, model: MonolithicModel = model) -> Answer:
            batch = encoder.encode([text])
            return Answer(finish(model.run(batch), batch.attention_mask), blocks, (batch.input_ids.shape[1],) * blocks)
        configurations.append(Configuration(name, "baseline", graph_answer,
                                            onnxruntime_spec(path, tokenizer_file, max_length, threads),
                                            path.stat().st_size))
    return configurations


def _operating_points(package: Path, options: BenchOptions, threads: int,
                      notes: list[str]) -> dict[str, tuple[Policy, Budget]]:
    probe = load(package, target=options.target, policy=Policy.off(), threads=threads, profile=None)
    a = options.agreement
    if probe.manifest.is_whole:
        return _whole_model_points(probe.manifest, a, notes)
    keep = options.keep_schedule if options.keep_schedule is not None else default_keep_schedule(probe.manifest.model.num_blocks)
    levels = ", ".join(f"{t.agreement:g}" for t in probe.manifest.exit_thresholds) or "none"
    exits = exact_level(probe.manifest.exit_thresholds, a) is not None
    if not exits:
        notes.append(f"no exits@{a:g} configurations: not a level this package calibrated (it has {levels})")
    points = {"edgeinfer off": (Policy.off(), Budget())}
    default = Policy()
    embed = next(s for s in probe.manifest.segments if s.kind == "embed")
    if exact_level(probe.manifest.exit_thresholds, default.agreement) is not None:
        chosen = choose_precision(probe.manifest, default.agreement, lambda name: probe.runner.has(embed, name))
        points[f"{DEFAULT_CONFIGURATION} (exits@{default.agreement:g}, {chosen.precision})"] = (default, Budget())
    if exits:
        points[f"edgeinfer exits@{a}"] = (Policy(agreement=a, precision="fp32"), Budget())
    if keep:
        schedule = ",".join(f"{b}:{k}" for b, k in keep)
        points[f"edgeinfer prune {schedule}"] = (Policy(agreement=None, keep_schedule=keep), Budget())
        if exits:
            points[f"edgeinfer exits@{a} + prune"] = (Policy(agreement=a, keep_schedule=keep, precision="fp32"), Budget())
        points[f"edgeinfer merge {schedule}"] = (Policy(agreement=None, keep_schedule=keep, reduction="merge"), Budget())
    variants = [v for v in probe.manifest.precision_variants if probe.runner.has(embed, v.name)]
    if probe.manifest.model.task != "text-classification":  # an embedding variant runs alone (no confidence)
        for variant in variants:
            points[f"edgeinfer {variant.name} variant alone"] = (Policy(agreement=None, precision=variant.name), Budget())
    if probe.manifest.model.task == "text-classification" and exits:
        for variant in variants:
            level = exact_level(variant.thresholds, a)
            if level is None or not level.certifies_final_answer:
                notes.append(f"no cascade {variant.name}@{a:g}: the variant certifies no answer at that level")
                continue
            points[f"edgeinfer cascade {variant.name}@{a} -> fp32"] = (Policy(agreement=a, precision=variant.name), Budget())
    if probe.manifest.operating_points:  # what `edgeinfer calibrate` stored: the planner's choice for this level
        try:
            point = choose_point(probe.manifest, a)
            points[f"edgeinfer auto:{a} ({point.name})"] = (policy_of(point), Budget())
        except InputError as err:
            notes.append(f"no auto point: {err}")
    if options.budget_ms is not None and exits:
        points[f"edgeinfer exits@{a}, deadline {options.budget_ms:g} ms"] = (Policy(agreement=a, precision="fp32"), Budget(latency_ms=options.budget_ms))
    return points


def _whole_model_points(manifest, a: float, notes: list[str]) -> dict[str, tuple[Policy, Budget]]:
    """A whole-model package: no exits, pruning or skipping to bench; its precisions, alone and (a
    classifier's variants with restart thresholds) as a cascade."""
    notes.append(f"{manifest.export.get('why', 'a whole-model package')}: the whole model runs on every input")
    chosen = choose_precision(manifest, Policy().agreement, lambda name: True)
    points = {"edgeinfer off": (Policy.off(), Budget()),
              f"{DEFAULT_CONFIGURATION} (whole model, {chosen.precision})": (Policy(), Budget())}
    for variant in manifest.precision_variants:
        points[f"edgeinfer {variant.name} (whole model)"] = (Policy(agreement=None, precision=variant.name), Budget())
        level = exact_level(variant.thresholds, a) if manifest.model.task == "text-classification" else None
        if level is not None and level.certifies_final_answer:
            points[f"edgeinfer cascade {variant.name}@{a} -> fp32"] = (Policy(agreement=a, precision=variant.name), Budget())
    return points


def _level_claimed(name: str, agreement: float) -> float | None:
    """The agreement level an edgeinfer configuration runs at: the report marks those that miss it."""
    if name.startswith(DEFAULT_CONFIGURATION):
        return Policy().agreement
    return agreement if name.startswith("edgeinfer") and f"@{agreement}" in name else None


def _row(c: Configuration, answers: list[Answer], times: list[float], reference: list[Answer],
         labels: np.ndarray | None, classification: bool, options: BenchOptions, num_blocks: int,
         embedding_cosine: float) -> dict:
    row: dict = {"configuration": c.name, "kind": c.kind, **latency_summary(times),
                 "latencies_ms": [round(t, 3) for t in times],
                 "throughput_per_s": round(1000.0 / float(np.mean(times)), 2), "model_mb": round(c.model_bytes / 2**20, 2)}
    if classification:
        predicted = np.array([a.output.argmax() for a in answers])
        row["agreement_with_full"] = round(float((predicted == np.array([a.output.argmax() for a in reference])).mean()), 4)
        if labels is not None:
            row["accuracy"] = round(float((predicted == labels).mean()), 4)
    else:
        cosines = np.array([cosine(a.output, r.output) for a, r in zip(answers, reference)])
        row["mean_cosine_to_full"] = round(float(cosines.mean()), 5)
        row["agreement_with_full"] = round(float((cosines >= embedding_cosine).mean()), 4)
        row.update(retrieval_agreement(np.stack([a.output for a in answers]), np.stack([r.output for r in reference])))
    level = _level_claimed(c.name, options.agreement)
    if level is not None:
        row["level"] = level
        row["meets_level"] = row["agreement_with_full"] >= level
    depths = np.array([a.depth for a in answers])
    row["exit_share"] = {str(d): round(float((depths == d).mean()), 4) for d in range(1, num_blocks + 1)}
    row["mean_depth"] = round(float(depths.mean()), 3)
    row["mean_tokens_per_block"] = [round(float(np.mean([a.tokens[b] for a in answers if len(a.tokens) > b])), 2)
                                    if any(len(a.tokens) > b for a in answers) else None for b in range(num_blocks)]
    row["restart_rate"] = round(float(np.mean([a.restarts > 0 for a in answers])), 4)
    row["cut_short_rate"] = round(float(np.mean([a.cut_short for a in answers])), 4)
    if options.budget_ms is not None:
        row["budget_miss_rate"] = round(float(np.mean(np.array(times) > options.budget_ms)), 4)
    if all(a.predicted_ms is not None for a in answers):
        # times run repeat by repeat over the inputs; an input's path, hence its prediction, repeats
        predicted = np.tile([a.predicted_ms for a in answers], len(times) // len(answers))
        measured = np.array(times)
        error = np.abs(predicted - measured) / measured
        row["prediction"] = {"median_abs_error": round(float(np.median(error)), 4),
                             "mean_predicted_ms": round(float(predicted.mean()), 4),
                             "share_within_10pct": round(float((error <= 0.10).mean()), 4),
                             "pairs": [[round(float(p), 3), round(float(t), 3)] for p, t in zip(predicted, measured)]}
    return row


def run_device_bench(package: Path, data: Path, report_dir: Path, options: BenchOptions = BenchOptions()) -> dict:
    """Measure, write report.json / report.md / report.html into report_dir, return the report."""
    from .html_report import write_reports

    if not data.is_file():
        raise InputError(f"bench data {data} does not exist; pass a TSV (text[, label]) or one text per line")
    threads = default_threads()
    off = load(package, target=options.target, policy=Policy.off(), threads=threads, profile=options.profile)
    manifest = off.manifest
    classification = manifest.model.task == "text-classification"
    examples = read_examples(data, manifest.model.labels if classification else None)
    texts = list(examples.texts)
    labels = np.array(examples.labels) if classification and examples.labels is not None else None
    package_bytes = sum(f.bytes for f in manifest.files)
    notes = [f"{regime()}, except PyTorch eager, measured alone afterwards "
             "(its OpenMP threads spin after each call and slow whatever runs next)"]
    points = _operating_points(package, options, threads, notes)
    sessions = {name: load(package, target=options.target, policy=p, budget=b, threads=threads, profile=options.profile)
                for name, (p, b) in points.items()}
    configurations = []
    with tempfile.TemporaryDirectory() as tmp:
        if options.baselines:
            model_dir = options.model_dir or _source_dir(manifest.model.source)
            if model_dir is not None:
                configurations += _baselines(off, model_dir, Path(tmp), threads, notes)
            else:
                notes.append(f"no baselines: the model the package came from ({manifest.model.source}) is not on "
                             f"this machine, or the export extra is not installed; pass --model HF_DIR")
        else:
            notes.append("no baselines: turned off for this run")
        for name, session in sessions.items():
            policy, budget = points[name]
            spec = edgeinfer_spec(package, _policy_dict(policy), asdict(budget), options.profile, options.target)
            configurations.append(_edgeinfer(name, session, spec, package_bytes))
        # PyTorch's OpenMP threads spin after each call and slowed whichever configuration ran next
        # by ~30% here (monolithic fp32 measured 0.74x of its usual speed beside it): torch runs
        # alone, after the interleaved others.
        interleaved = [c for c in configurations if c.cold_start_spec["kind"] != "torch"]
        answers, times = measure_interleaved(interleaved, texts, options.repeats, "benchmark", WARMUP)
        for alone in (c for c in configurations if c not in interleaved):
            alone_answers, alone_times = measure_interleaved([alone], texts, options.repeats, alone.name, WARMUP)
            answers.update(alone_answers)
            times.update(alone_times)
        reference = answers["edgeinfer off"]
        embedding_cosine = embedding_agreement_cosine(manifest)
        rows = [_row(c, answers[c.name], times[c.name], reference, labels, classification,
                     options, manifest.model.num_blocks, embedding_cosine) for c in configurations]
        example = None if classification else _search_example(texts, answers, reference)
        with progress_bar(len(configurations), "cold starts") as bar:
            for c, row in zip(configurations, rows):
                row["cold_start"] = cold_start(c.cold_start_spec, texts[:50], options.cold_start_runs)
                bar.update()
    notes.extend(_stated_against_realised(manifest, rows, options.agreement))
    base = next((r for r in rows if r["configuration"] == "onnxruntime fp32 (monolithic)"), rows[0])
    for row in rows:
        row["latency_vs_baseline"] = round(row["mean_ms"] / base["mean_ms"], 4)
    summary = _default_against_static_int8(rows)
    if summary:
        notes.insert(0, summary)
    fingerprint = device_fingerprint(threads, usable_target(options.target).providers[0])
    profile = off.profile
    report = {
        "format": "edgeinfer.bench", "package": str(package), "package_mb": round(package_bytes / 2**20, 2),
        "task": manifest.model.task, "data": str(data), "inputs": len(texts), "repeats": options.repeats,
        "warmup": WARMUP, "batch": 1, "threads": threads, "target": options.target,
        "device": {"label": options.label or f"{options.target} · {fingerprint['cpu']}", "fingerprint": fingerprint,
                   "key": fingerprint_key(fingerprint)},
        "profile": profile.key if profile is not None else None, "baseline": base["configuration"],
        "options": {"agreement": options.agreement,
                    "budget_ms": options.budget_ms},
        "embedding_agreement_cosine": None if classification else embedding_agreement_cosine(manifest),
        "configurations": rows,
        "notes": notes,
        **({"search_example": example} if example else {}),
    }
    write_reports(report, report_dir)
    return report


def _search_example(texts: list[str], answers: dict, reference: list) -> dict | None:
    """One query's top 3 by the full model and by what load(package) runs (the bundled demo's
    first line is the query)."""
    default = next((name for name in answers if name.startswith(DEFAULT_CONFIGURATION)), None)
    if default is None or len(texts) < 4:
        return None
    found = search_example(texts, np.stack([a.output for a in answers[default]]), np.stack([r.output for r in reference]))
    return {"query": found["query"][0], "full model": found["full model"], default: found["candidate"]}


def _default_against_static_int8(rows: list[dict]) -> str | None:
    """The report's first line: does what load(package) runs beat the static int8 session here?"""
    default = next((r for r in rows if r["configuration"].startswith(DEFAULT_CONFIGURATION)), None)
    static = next((r for r in rows if r["configuration"] == STATIC_INT8), None)
    if default is None or static is None:
        return None
    ratio = default["mean_ms"] / static["mean_ms"]
    verdict = "beats" if ratio < 1.0 else "does not beat"
    return (f"the default policy ({default['configuration']}) {verdict} static int8 on this device: mean "
            f"{default['mean_ms']:.2f} ms, {ratio:.3f}x the monolithic onnxruntime int8 dynamic session's "
            f"{static['mean_ms']:.2f} ms, agreement with the full model {default['agreement_with_full']:.4f}")


def _stated_against_realised(manifest, rows: list[dict], agreement: float) -> list[str]:
    """The promise the calibrated level makes beside what these inputs realised under it."""
    level = manifest.thresholds_for(agreement)
    record = manifest.calibration.get("thresholds", {})
    stated = record.get("guarantee", {}).get(str(level.agreement)) if level is not None else None
    if stated is None:
        return []
    realised = ", ".join(f"{r['configuration']} {r['agreement_with_full']:.4f}" for r in rows
                         if r["configuration"].startswith("edgeinfer") and f"@{agreement}" in r["configuration"]
                         and not any(word in r["configuration"] for word in ("prune", "merge", "deadline")))
    return [f"stated for exits@{agreement}: {stated} (calibrated on {record.get('data')}); realised on these "
            f"inputs: {realised}"]


def _policy_dict(policy: Policy) -> dict:
    return {k: (list(map(list, v)) if k == "keep_schedule" else v) for k, v in asdict(policy).items()}


def _source_dir(source: str) -> str | None:
    """The model directory a package was exported from, when it is on this machine."""
    try:
        from ..export.model_source import resolve_model_dir

        name = source.split(" (")[0]
        return str(resolve_model_dir(name)[0])
    except (ImportError, EdgeInferError):  # no export extra, or the model is not here: no baselines
        return None
