"""`export_model`: a Hugging Face encoder becomes an edge package.

load -> split into segments -> cache hidden features of the calibration texts -> train exit
heads -> calibrate thresholds -> (evaluate) -> export graphs -> validate against PyTorch ->
write the package atomically.
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer

from .. import __version__
from ..errors import ExportError
from ..manifest import SCHEMA_VERSION, ExitHead, Manifest, ModelFacts, Segment, Variant
from ..progress import progress_bar
from ..runtime.policy import EMBEDDING_AGREES_AT
from ..runtime.tokenize import TextEncoder
from .calibration_data import BUNDLED_SAMPLE, Examples, has_label_column, read_examples
from .exit_heads import EXIT_HEADS, TrainingSettings, cosine_loss, distillation_loss, train_head
from .exit_quality import evaluate, exit_outputs, judge
from .features import TorchSegments, attention_bias, collect_features
from .joint_training import JointSettings, final_answers, fine_tune_jointly
from .adapters import supported_model_types
from .graph_jobs import build_segments, graph_jobs, make_exit
from .model_source import LoadedModel, load_model, model_type_of, tokenizer_spec
from .onnx_graphs import GraphJob, export_graph
from .package_writer import discard, finalize, prepare_staging
from .pruning_training import PruningFamily
from .recipe import AUTO, resolve_recipe
from .shared_weights import WEIGHTS_FILE, share_weights
from .thresholds import AGREEMENT_LEVELS, calibrate_level, threshold_record
from .validate import sample_batches, validate_graphs

TRAIN_EXIT_MODES = ("heads", "joint")


@dataclass(frozen=True)
class ExportOptions:
    task: str = "feature-extraction"
    exits: str | None = None  # "1,2,3", "all", or None for every block but the last
    calib: str | None = None
    calib_thresholds: str | None = None
    eval_data: str | None = None
    max_length: int = 128
    train_exits: str = AUTO  # heads | joint | auto (export/recipe.py chooses)
    exit_head: str = AUTO  # classification exits: "pooler" (dense + activation + classes), "linear" or auto
    head_examples: int = 4000
    # 1000 steps of 32 see 32,000 rows: each of 16,000 twice. On SST-2, 600 steps cost the final
    # layer 0.9 pt of accuracy and the exits 0.8 blocks of depth at 0.99 against 1200; 1000 keep a
    # default export of MiniLM (teacher outputs, steps, int8 variant) within 10 minutes here.
    joint_examples: int = 16000
    joint_steps: int = 1000
    train_pruning: str | None = None  # joint training also prunes by this score (export/pruning_training.py)
    pruning_family: PruningFamily = PruningFamily()  # the keep schedules it prunes with
    threshold_examples: int = 3000
    force: bool = False
    seed: int = 0
    quant: str = AUTO  # none | int8 | int4 | fp16 | mixed | auto: a precision variant added after export
    size_budget_mb: float | None = None
    latency_budget_ms: float | None = None
    formats: tuple[str, ...] = ("onnx",)  # "litert" adds LiteRT graphs (export/litert.py)
    buckets: str | None = None  # LiteRT token buckets, "16,32,64,128"; export/litert.py's default when None
    whole: bool = False  # one graph through Optimum even where an adapter exists (export/whole_model.py)


FORMATS = ("onnx", "litert")
DRIFT_ROWS = 1000  # rows that measure how far joint training moved the final layer


def parse_exits(spec: str | None, num_blocks: int) -> tuple[int, ...]:
    """Exit positions as block counts (an exit after block 2 sees the output of blocks 1-2)."""
    if spec is None or spec.strip() == "":
        return tuple(range(1, num_blocks))
    if spec.strip().lower() == "all":
        return tuple(range(1, num_blocks))
    if spec.strip().lower() == "none":
        return ()
    try:
        exits = sorted({int(part) for part in spec.split(",") if part.strip()})
    except ValueError:
        raise ExportError(f"--exits {spec!r} must be block numbers like 1,2,3, 'all' or 'none'") from None
    bad = [e for e in exits if not 1 <= e < num_blocks]
    if bad:
        raise ExportError(f"--exits {bad} out of range: this model has {num_blocks} blocks, "
                          f"so exits go after blocks 1..{num_blocks - 1}")
    return tuple(exits)


def _rows_used(options: ExportOptions, heads: Examples, thresholds: Examples) -> dict[str, str]:
    """How many calibration rows each step used, and why that many (recorded in the manifest)."""
    rows = {"thresholds": f"{len(thresholds)}: enough for a 0.99 level to certify exits (436 allow no "
                          f"disagreement at all); the precision variant's thresholds use the same rows"}
    if options.train_exits == "joint":
        rows["joint"] = (f"{len(heads)} rows, {options.joint_steps} steps of 32: each row seen about "
                         f"{options.joint_steps * 32 / max(len(heads), 1):.1f} times, within the export's time budget")
        rows["heads"] = f"{min(len(heads), options.head_examples)}: the jointly trained heads are only refitted"
    else:
        rows["heads"] = f"{len(heads)}: the exit heads' features, computed once on the frozen backbone"
    return rows


def _labelled(options: ExportOptions) -> bool:
    """Does --calib carry labels (a TSV with a label column)? Decides joint training's loss."""
    return options.task == "text-classification" and has_label_column(options.calib or BUNDLED_SAMPLE)


def _calibration_sets(options: ExportOptions, labels: tuple[str, ...] | None) -> tuple[Examples, Examples]:
    use_labels = options.task == "text-classification"
    main = read_examples(options.calib or BUNDLED_SAMPLE, labels, use_labels)
    wanted = options.joint_examples if options.train_exits == "joint" else options.head_examples
    if options.calib_thresholds:
        thresholds = read_examples(options.calib_thresholds, labels, use_labels)
        heads, _ = main.split(wanted, 0, options.seed)
        _, thresholds = thresholds.split(0, options.threshold_examples, options.seed)
        return heads, thresholds
    head_share = min(wanted, max(len(main) - options.threshold_examples, len(main) // 2))
    heads, thresholds = main.split(head_share, options.threshold_examples, options.seed)
    if len(heads) < 8 or len(thresholds) < 8:
        raise ExportError(f"{main.source} has {len(main)} usable examples; at least 16 are needed "
                          f"(a few thousand give useful thresholds)")
    return heads, thresholds


def export_model(model: str, output: str | Path, options: ExportOptions = ExportOptions()) -> Manifest:
    started = time.perf_counter()
    output = Path(output).resolve()
    if output.exists() and not options.force:
        raise ExportError(f"{output} already exists; pass --force to replace it")
    if "onnx" not in options.formats or set(options.formats) - set(FORMATS):
        raise ExportError(f"--formats {','.join(options.formats)!r}: give onnx, optionally with litert "
                          f"(the ONNX graphs are the reference the LiteRT ones are validated against)")
    model_type = model_type_of(model)
    if options.whole or model_type not in supported_model_types():
        return _export_whole(model, output, options, model_type)
    options, recipe = resolve_recipe(options, _labelled(options))
    if options.train_exits not in TRAIN_EXIT_MODES:
        raise ExportError(f"--train-exits {options.train_exits!r}: choose one of {', '.join(TRAIN_EXIT_MODES)}")
    if options.exit_head not in EXIT_HEADS or (options.exit_head != "pooler" and options.task != "text-classification"):
        raise ExportError(f"--exit-head {options.exit_head!r}: choose one of {', '.join(EXIT_HEADS)} "
                          f"(linear is for text-classification; embedding exits are a linear map already)")
    torch.manual_seed(options.seed)
    loaded = load_model(model, options.task)
    segments = build_segments(loaded, options.task)
    num_blocks = len(segments.blocks)
    exit_blocks = parse_exits(options.exits, num_blocks)
    spec = tokenizer_spec(loaded, options.max_length, segments.embed.uses_token_type_ids)
    heads_data, threshold_data = _calibration_sets(options, loaded.labels)
    eval_data = read_examples(options.eval_data, loaded.labels, options.task == "text-classification") \
        if options.eval_data else None
    if options.train_pruning is not None and options.train_exits != "joint":
        raise ExportError("--train-pruning trains inside joint fine-tuning; add --train-exits joint")
    if options.train_pruning is not None:
        options.pruning_family.check(num_blocks)

    staging = prepare_staging(output, options.force)
    try:
        (staging / spec.path).write_text(loaded.tokenizer_json, encoding="utf-8")
        encoder = TextEncoder(staging / spec.path, spec)
        exit_modules = {depth: make_exit(options.task, loaded, segments, options.exit_head) for depth in exit_blocks}
        features_of = type(next(iter(exit_modules.values()))).features if exit_modules else None
        joint_record = None
        if options.train_exits == "joint":
            joint_record = _fine_tune(segments, exit_modules, encoder, heads_data, eval_data or threshold_data,
                                      JointSettings(steps=options.joint_steps, seed=options.seed,
                                                    pruning=options.pruning_family if options.train_pruning else None,
                                                    importance=options.train_pruning or "token_importance"),
                                      embeddings=options.task == "feature-extraction")
        calibration, thresholds, evaluation = _train_and_calibrate(
            options, loaded, segments, encoder, exit_modules, features_of, heads_data, threshold_data,
            eval_data, num_blocks)
        if joint_record is not None:
            calibration["exit_training"]["joint"] = joint_record
        # the pruning graph ranks by the score the model learned to be pruned by
        jobs = graph_jobs(segments, exit_modules, pruning=options.train_pruning or "token_importance")
        graph_segments, exits = _export_graphs(staging, jobs, exit_modules, options.task)
        validation = _validate(staging, graph_segments, exits, exit_modules, segments, loaded, options, spec)
        manifest = Manifest(
            schema_version=SCHEMA_VERSION,
            model=_model_facts(loaded, options.task, segments),
            tokenizer=spec,
            segments=tuple(graph_segments),
            exits=tuple(exits),
            exit_thresholds=thresholds,
            calibration=calibration,
            validation=validation,
            evaluation=evaluation,
            export={
                "edgeinfer": __version__, "torch": torch.__version__,
                "transformers": __import__("transformers").__version__,
                "onnx": __import__("onnx").__version__, "python": platform.python_version(),
                "seconds": round(time.perf_counter() - started, 1), "recipe": recipe,
                "rows": _rows_used(options, heads_data, threshold_data),
            },
        )
        if "litert" in options.formats:
            from .litert import add_litert, parse_buckets

            manifest = add_litert(staging, manifest, [j for j in jobs if j.ranks_by is None],
                                  parse_buckets(options.buckets, spec.max_length))
        manifest = finalize(staging, output, manifest)
    except BaseException:
        discard(staging)
        raise
    return _with_variant(output, manifest, list(threshold_data.texts), options)


def _with_variant(output: Path, manifest: Manifest, texts: list[str], options: ExportOptions) -> Manifest:
    """The written package with the precision variant the options ask for (none: as it is)."""
    if options.quant == "none":
        return manifest
    from ..quant.quantize import quantize_package

    return quantize_package(output, texts, options.quant, output=output, size_budget_mb=options.size_budget_mb,
                            latency_budget_ms=options.latency_budget_ms, force=True).manifest


def _export_whole(model: str, output: Path, options: ExportOptions, model_type: str) -> Manifest:
    """A family with no adapter (or --whole): the whole model as one graph through Optimum
    (export/whole_model.py). What needs segments is refused in one line; the precision variant is
    the recipe's (recipe.py: int8 for a classifier), or the one asked for."""
    why = ("exported whole as asked (--whole)" if options.whole and model_type in supported_model_types() else
           f"edgeinfer has no adapter for model_type {model_type!r} (adapters: {', '.join(supported_model_types())}), "
           f"so it cannot split the model into blocks for exits")
    needs_blocks = [flag for flag, value in (("--train-exits", options.train_exits), ("--exit-head", options.exit_head))
                    if value != AUTO] + [flag for flag, value in (("--exits", options.exits),
                    ("--train-pruning", options.train_pruning), ("--calib-thresholds", options.calib_thresholds))
                    if value is not None] + (["--formats litert"] if "litert" in options.formats else [])
    if needs_blocks:
        raise ExportError(f"{', '.join(needs_blocks)}: {why}; drop {'it' if len(needs_blocks) == 1 else 'them'} "
                          f"to export the whole model as one graph")
    from .whole_model import export_whole_model

    manifest = export_whole_model(model, output, options.task, options.max_length, options.force, why)
    # the recipe's variant (on the SST-2 MiniLM its cascade ran at 0.696x fp32, agreement 0.9977)
    options, _ = resolve_recipe(options, has_labels=False)
    texts = list(read_examples(options.calib or BUNDLED_SAMPLE, None, False).texts) if options.quant != "none" else []
    return _with_variant(output, manifest, texts, options)


def _fine_tune(segments: TorchSegments, exit_modules: dict[int, torch.nn.Module], encoder: TextEncoder,
               train: Examples, measure: Examples, settings: JointSettings, embeddings: bool) -> dict:
    """Joint fine-tuning, and how far it moved the final layer from the original model (measured on
    1,000 rows: a share of changed answers to within about a point, in seconds)."""
    measure = measure.split(DRIFT_ROWS, 0, settings.seed)[0]
    before = final_answers(segments, encoder, measure.texts, stage="final layer before joint training",
                                 embeddings=embeddings)
    record = fine_tune_jointly(segments, exit_modules, encoder, train, settings, embeddings)
    after = final_answers(segments, encoder, measure.texts, stage="final layer after joint training",
                                embeddings=embeddings)
    record.update(examples=len(train), measured_on=measure.source)
    if embeddings:
        record.update(embedding_drift(before, after))
        return record
    before, after = before.argmax(-1), after.argmax(-1)
    record.update(final_agreement_with_original=round(float((before == after).mean()), 6))
    if measure.labels is not None:
        labels = np.array(measure.labels)
        record.update(original_accuracy=round(float((before == labels).mean()), 6),
                      accuracy=round(float((after == labels).mean()), 6),
                      accuracy_change=round(float((after == labels).mean() - (before == labels).mean()), 6))
    return record


def embedding_drift(before: np.ndarray, after: np.ndarray) -> dict:
    """How far the final embedding moved, as a search sees it: the mean cosine to the original, and
    the bench's retrieval agreement (each held-back text the query, embedded after training; the
    others the corpus, embedded by the original model: bench/retrieval.py)."""
    from ..bench.retrieval import retrieval_agreement, unit_rows

    search = retrieval_agreement(after, before)
    return {"final_mean_cosine_to_original": round(float((unit_rows(before) * unit_rows(after)).sum(1).mean()), 6),
            "final_same_top1_neighbour": search.get("retrieval_top1_agreement"),
            "retrieval_queries": len(before), "retrieval_corpus": search.get("retrieval_corpus", 0)}


def _model_facts(loaded: LoadedModel, task: str, segments: TorchSegments) -> ModelFacts:
    config = loaded.model.config
    hidden = segments.blocks[0].query.in_features
    return ModelFacts(
        family=loaded.adapter.__name__.rsplit(".", 1)[-1], model_type=config.model_type, task=task,
        num_blocks=len(segments.blocks), hidden_size=hidden, num_heads=segments.blocks[0].num_heads,
        labels=loaded.labels, embedding_dim=hidden if task == "feature-extraction" else None,
        normalize_embedding=loaded.normalize_embedding, source=loaded.source,
    )


def _train_and_calibrate(options, loaded, segments, encoder, exit_modules, features_of, heads_data,
                         threshold_data, eval_data, num_blocks):
    exit_blocks = tuple(sorted(exit_modules))
    if not exit_blocks:
        return {"exits": "none"}, (), {}
    if options.train_exits == "joint":  # the heads trained with the backbone are only refitted to its last state:
        heads_data = heads_data.split(options.head_examples, 0, options.seed)[0]  # as many rows as heads alone use
    train = collect_features(segments, encoder, heads_data.texts, exit_blocks, features_of, "features (heads)")
    calib = collect_features(segments, encoder, threshold_data.texts, exit_blocks, features_of,
                             "features (thresholds)")
    classification = options.task == "text-classification"
    target = torch.softmax(train.final, -1) if classification else train.final
    labels = torch.tensor(heads_data.labels) if classification and heads_data.labels is not None else None
    loss_fn = distillation_loss if classification else cosine_loss
    settings = TrainingSettings(seed=options.seed)
    losses = {}
    with progress_bar(len(exit_blocks) * settings.epochs, "training exit heads") as bar:
        for depth in exit_blocks:
            losses[depth] = round(train_head(exit_modules[depth], train.per_exit[depth], target, labels,
                                             loss_fn, settings, bar.update), 6)
    outputs = exit_outputs(exit_modules, calib.per_exit)
    final = calib.final.numpy()
    confidence, agrees = judge(options.task, outputs, final)
    lengths = encoder.encode(list(threshold_data.texts)).attention_mask.sum(1)
    levels = tuple(calibrate_level(confidence, agrees, list(exit_blocks), num_blocks, level, lengths)
                   for level in AGREEMENT_LEVELS)
    calibration = {
        "exit_training": {
            "mode": options.train_exits, "head": options.exit_head, "data": heads_data.source,
            "examples": len(heads_data), "labels_used": labels is not None,
            "loss": "KL to the final layer (+ cross-entropy to labels)" if classification
            else "1 - cosine to the final embedding",
            "final_loss_per_exit": {str(k): v for k, v in losses.items()},
            "epochs": settings.epochs,
        },
        "thresholds": {
            **threshold_record(threshold_data.source, len(threshold_data), "max_prob" if classification
                               else "consecutive_cosine", lengths),
            **({} if classification else {"embedding_agreement_cosine": EMBEDDING_AGREES_AT}),
        },
    }
    evaluation = {}
    if eval_data is not None:
        ev = collect_features(segments, encoder, eval_data.texts, exit_blocks, features_of, "features (eval)")
        ev_labels = np.array(eval_data.labels) if eval_data.labels is not None else None
        evaluation = evaluate(options.task, exit_outputs(exit_modules, ev.per_exit), ev.final.numpy(),
                              ev_labels, levels, num_blocks, eval_data.source,
                              encoder.encode(list(eval_data.texts)).attention_mask.sum(1))
    return calibration, levels, evaluation


def _export_graphs(staging: Path, jobs: list[GraphJob], exit_modules: dict[int, torch.nn.Module],
                   task: str) -> tuple[list[Segment], list[ExitHead]]:
    graph_dir = staging / "graphs"
    graph_segments: list[Segment] = []
    with progress_bar(len(jobs), "exporting graphs") as bar:
        for job in jobs:
            path = graph_dir / f"{job.name}.onnx"
            real_inputs, real_outputs = export_graph(job.module, job.args, job.inputs, job.outputs, path)
            graph_segments.append(Segment(name=job.name, kind=job.kind, index=job.index, inputs=tuple(real_inputs),
                                          outputs=tuple(real_outputs),
                                          variants=(Variant("fp32", f"graphs/{job.name}.onnx"),), covers=job.covers,
                                          ranks_by=job.ranks_by))
            bar.update()
    share_weights([graph_dir / f"{job.name}.onnx" for job in jobs], graph_dir / WEIGHTS_FILE)
    confidence = "max_prob" if task == "text-classification" else "consecutive_cosine"
    exits = [ExitHead(after_block=depth, segment=f"exit_{depth:02d}", confidence=confidence)
             for depth in sorted(exit_modules)]
    return graph_segments, exits


def _validate(staging, graph_segments, exits, exit_modules, segments, loaded, options, spec) -> dict:
    config = loaded.model.config
    # the tokenizer's own framing tokens ([CLS] ... [SEP], <s> ... </s>) start and end each sample
    probe = Tokenizer.from_str(loaded.tokenizer_json).encode("validation")
    cls_id, sep_id = probe.ids[0], probe.ids[-1]

    def torch_hidden_at(ids: np.ndarray, mask: np.ndarray, depth: int) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            types = torch.zeros_like(torch.from_numpy(ids)) if segments.embed.uses_token_type_ids else None
            hidden = segments.embed(torch.from_numpy(ids), types)
            bias = attention_bias(mask)
            for block in segments.blocks[:depth]:
                hidden = block(hidden, bias)[0]
        return hidden, bias

    batches = sample_batches(config.vocab_size, loaded.special_ids, cls_id, sep_id, loaded.pad_id, spec.max_length)
    exit_segments = {e.after_block: next(s for s in graph_segments if s.name == e.segment) for e in exits}
    return validate_graphs(staging / "graphs", graph_segments, exit_segments, exit_modules, torch_hidden_at,
                           loaded.model, options.task, loaded.normalize_embedding, batches)
