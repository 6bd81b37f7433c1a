"""Segments -> LiteRT: one .tflite file per precision holding every segment at every token bucket.

Mobile apps often ship LiteRT rather than onnxruntime. litert-torch converts the same PyTorch
modules that give the ONNX graphs (MiniLM in ~10 s per shape, max abs diff 4e-6: docs/platform-facts.md), at
static shapes, so each segment is converted at a set of token counts (batch 1). All of them go
into one file as signatures: signatures of one file share their weights (MiniLM: the full graph
alone 90.2 MB; full + embed + six blocks in one file 101 MB, where separate files would be 186 MB).

Stage spans are left out: they exist to save one onnxruntime call per exit, and would double the
conversion time. The runtime runs the covered segments one by one instead, with the same result.

Validation runs the package's ONNX chain and the LiteRT chain, through the runtime's own bucket
padding, on the same encoded texts, and fails the conversion when they differ.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ..errors import ExportError, InputError
from ..manifest import MANIFEST_NAME, PAD_BIAS, SCHEMA_VERSION, LiteRTGraphs, Manifest, litert_signature
from ..progress import progress_bar
from ..runtime.litert_graphs import LiteRTFile, LiteRTGraph, quiet_native_logs
from ..runtime.package import open_package
from ..runtime.encoder.whole_model import refuse_whole
from ..runtime.sessions import default_threads, open_session
from ..runtime.tokenize import TextEncoder
from .calibration_data import BUNDLED_SAMPLE
from .onnx_graphs import GraphJob
from .package_writer import discard, finalize
from .validate import chain_output

DEFAULT_BUCKETS = (8, 16, 32, 64, 128, 256)
LITERT_KINDS = ("embed", "block", "exit", "head")
FULL_SPAN = "full"
TOLERANCE = 1e-4


def parse_buckets(spec: str | None, max_length: int) -> tuple[int, ...]:
    """Token counts to convert at: the requested ones up to max_length, and max_length itself (so
    every input the tokenizer can produce has a bucket)."""
    if spec is None or not spec.strip():
        wanted = DEFAULT_BUCKETS
    else:
        try:
            wanted = tuple(int(part) for part in spec.split(",") if part.strip())
        except ValueError:
            raise InputError(f"--buckets {spec!r} must be token counts like 16,32,64,128") from None
        if not wanted or min(wanted) < 1:
            raise InputError(f"--buckets {spec!r} must be positive token counts like 16,32,64,128")
    return tuple(sorted({b for b in wanted if b < max_length} | {max_length}))


def litert_jobs(jobs: list[GraphJob]) -> list[GraphJob]:
    return [job for job in jobs if job.kind in LITERT_KINDS or job.name == FULL_SPAN]


class _KeptInputs(torch.nn.Module):
    """A segment's module taking only the inputs its ONNX graph kept, so that the LiteRT signature
    and the manifest's `inputs` agree (the ONNX exporter drops an unused input, such as the
    attention_bias of a head that reads the first token only)."""

    def __init__(self, module: torch.nn.Module, names: tuple[str, ...], kept: tuple[str, ...]):
        super().__init__()
        self.module, self.names, self.kept = module, names, kept

    def forward(self, *args: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        given = dict(zip(self.kept, args))
        unused = torch.zeros(args[0].shape[:2])  # never read: the graph did not use this input
        return self.module(*(given.get(name, unused) for name in self.names))


def _trace_args(job: GraphJob, kept: tuple[str, ...], tokens: int) -> tuple[torch.Tensor, ...]:
    """The kept inputs at `tokens` tokens (batch 1)."""
    shaped = []
    for name, example in zip(job.inputs, job.args):
        if name in kept:
            shape = (1, tokens, *example.shape[2:])
            shaped.append(torch.ones(shape, dtype=example.dtype) if name == "input_ids"
                          else torch.zeros(shape, dtype=example.dtype))
    return tuple(shaped)


@contextlib.contextmanager
def _quiet_converter() -> Iterator[None]:
    """litert-torch prints its steps through rich, logs through Python's root logger and warns once
    per signature, and it and the converter log from C++ to file descriptor 2 (on import too). All of
    that is silenced; Python's sys.stderr keeps the terminal, so progress bars opened inside still
    show. Errors still raise."""
    python_stderr, root, level = sys.stderr, logging.getLogger(), logging.getLogger().level
    terminal = os.dup(2)
    with quiet_native_logs(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sys.stderr = os.fdopen(terminal, "w", buffering=1)
        root.setLevel(logging.ERROR)
        try:
            try:
                from litert_torch import progress
            except ImportError:
                raise ExportError("LiteRT conversion needs litert-torch; pip install 'edgeinfer[export-litert]'") from None
            was_quiet, progress.console.quiet = progress.console.quiet, True
            try:
                yield
            finally:
                progress.console.quiet = was_quiet
        finally:
            root.setLevel(level)
            sys.stderr.close()
            sys.stderr = python_stderr


def convert_jobs(jobs: list[GraphJob], inputs: dict[str, tuple[str, ...]], path: Path, buckets: tuple[int, ...]) -> None:
    """Convert every job at every bucket into one .tflite file (signatures `{name}_t{tokens}`),
    each taking the inputs its segment lists in the manifest (`inputs`)."""
    converter = None
    path.parent.mkdir(parents=True, exist_ok=True)
    with _quiet_converter(), progress_bar(len(jobs) * len(buckets) + 1, "converting to LiteRT") as bar:
        import litert_torch

        for job in jobs:
            module = _KeptInputs(job.module, tuple(job.inputs), inputs[job.name]).eval()
            for tokens in buckets:
                name = litert_signature(job.name, tokens)
                args = _trace_args(job, inputs[job.name], tokens)
                converter = litert_torch.signature(name, module, args) if converter is None \
                    else converter.signature(name, module, args)
                bar.update()
        try:
            with torch.no_grad():
                converter.convert().export(str(path))
        except Exception as err:  # the converter's errors are its own, many layers deep
            first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
            raise ExportError(f"litert-torch could not convert the segments ({first})") from None
        bar.update()


def validation_batches(encoder: TextEncoder, buckets: tuple[int, ...]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(input_ids, attention_mask): one encoded text cut to a length inside every bucket (so each
    bucket runs, padded), one filling the last bucket exactly, and a padded batch of two."""
    lines = [line.split("\t")[0] for line in BUNDLED_SAMPLE.read_text(encoding="utf-8").splitlines() if line.strip()]
    long = encoder.encode([" ".join(lines[:100])])
    ids = long.input_ids[:, : buckets[-1]]
    end = ids[:, -1:]  # the tokenizer's closing token ([SEP], </s>)
    lengths = [max(low + 1, min(high, (low + high) // 2 + 1)) for low, high in zip((2, *buckets[:-1]), buckets)]
    batches = [(np.concatenate([ids[:, : n - 1], end], axis=1), np.ones((1, n), dtype=np.int64))
               for n in sorted({min(n, ids.shape[1]) for n in lengths} | {ids.shape[1]})]
    pair = encoder.encode([lines[0], lines[1] + " " + lines[2]])
    batches.append((pair.input_ids, pair.attention_mask))
    return batches


def validate_litert(root: Path, manifest: Manifest, litert: LiteRTGraphs) -> dict:
    """The LiteRT chain (and full span) against the package's ONNX chain, on the same inputs."""
    encoder = TextEncoder(root / manifest.tokenizer.path, manifest.tokenizer)
    segments = [manifest.segment(name) for name in litert.segments]
    exits = {e.after_block: manifest.segment(e.segment) for e in manifest.exits}
    onnx_graphs = {s.name: open_session(root / s.graph()) for s in segments}
    file = LiteRTFile(root / litert.files["fp32"], default_threads())
    litert_graphs = {s.name: LiteRTGraph(file, litert, s, manifest.tokenizer.pad_id) for s in segments}
    full = manifest.segment(FULL_SPAN)
    worst, cases = 0.0, []
    for ids, mask in validation_batches(encoder, litert.buckets):
        expected, expected_exits, _ = chain_output(onnx_graphs, segments, ids, mask, exits)
        got, got_exits, _ = chain_output(litert_graphs, segments, ids, mask, exits)
        bias = np.where(mask > 0, 0.0, PAD_BIAS).astype(np.float32)
        feeds = {"input_ids": ids, "token_type_ids": np.zeros_like(ids), "attention_bias": bias}
        fused = litert_graphs[FULL_SPAN].run(None, {k: feeds[k] for k in full.inputs})[0]
        diff = max([float(np.abs(expected - got).max()), float(np.abs(expected - fused).max()),
                    *(float(np.abs(expected_exits[d] - got_exits[d]).max()) for d in expected_exits)])
        worst = max(worst, diff)
        cases.append({"batch": int(ids.shape[0]), "tokens": int(ids.shape[1]),
                      "bucket": litert.bucket_for(int(ids.shape[1])), "max_abs_diff": diff})
    record = {"reference": "the package's ONNX graphs (validated against PyTorch at export)",
              "tolerance": TOLERANCE, "max_abs_diff": worst, "cases": cases, "passed": worst <= TOLERANCE,
              "interpreter": file.library}
    if not record["passed"]:
        raise ExportError(f"LiteRT validation failed: the LiteRT graphs differ from the package's ONNX graphs by "
                          f"{worst:.2e} (> {TOLERANCE}); if the model at {manifest.model.source} changed since "
                          f"export, re-export with --formats onnx,litert")
    return record


def add_litert(staging: Path, manifest: Manifest, jobs: list[GraphJob], buckets: tuple[int, ...]) -> Manifest:
    """Convert into `staging` (a package being written) and return its manifest with the LiteRT
    graphs listed and validated."""
    started = time.perf_counter()
    chosen = litert_jobs(jobs)
    relative = "litert/fp32.tflite"
    convert_jobs(chosen, {job.name: manifest.segment(job.name).inputs for job in chosen}, staging / relative, buckets)
    litert = LiteRTGraphs(files={"fp32": relative}, buckets=buckets, segments=tuple(job.name for job in chosen))
    record = validate_litert(staging, manifest, litert)
    import litert_torch

    record.update(converter=f"litert-torch {litert_torch.__version__}", seconds=round(time.perf_counter() - started, 1),
                  bytes=(staging / relative).stat().st_size)
    # the manifest now has a section older readers do not know: it is of this schema
    return replace(manifest, schema_version=SCHEMA_VERSION, litert=litert,
                   validation={**manifest.validation, "litert": record})


def convert_package(package: str | os.PathLike[str], buckets: str | None = None,
                    output: str | os.PathLike[str] | None = None, force: bool = False,
                    quant: str = "none", calib: str | None = None) -> Manifest:
    """`edgeinfer convert PKG --to litert [--quant int8]`: add LiteRT graphs to an exported encoder
    package, and with quant="int8" the LiteRT int8 variant (quant/litert_variant.py), its thresholds
    calibrated on `calib` (default: the bundled sample).

    The PyTorch modules are rebuilt from the model the package names as its source, with the exit
    heads' trained weights read back from the package's exit graphs; validation against the
    package's own ONNX graphs proves they are the same model."""
    source = Path(package)
    opened = open_package(source)
    manifest = opened.manifest
    if manifest.model.task == "text-generation":
        raise InputError("LiteRT conversion covers encoder packages; decoder packages run on onnxruntime")
    refuse_whole(manifest, "LiteRT conversion rebuilds the model's segments through its adapter")
    if quant not in ("none", "int8"):
        raise InputError(f"--quant {quant!r}: LiteRT conversion adds none or int8 (ai-edge-quantizer's dynamic int8)")
    target = Path(output) if output is not None else source
    if target.resolve() != source.resolve() and target.exists() and not force:
        raise InputError(f"{target} already exists; pass --force to replace it")
    chosen_buckets = parse_buckets(buckets, manifest.tokenizer.max_length)
    # adding the int8 variant to graphs already converted at these buckets needs no new conversion
    reuse = manifest.litert is not None and quant == "int8" and (buckets is None or chosen_buckets == manifest.litert.buckets)
    jobs = None if reuse else _rebuilt_jobs(opened)
    staging = target.parent / f".{target.name}.tmp-{os.getpid()}-{int(time.time())}"
    try:
        # copies, not hard links: onnx refuses external data with several links (a hard-link attack guard)
        shutil.copytree(opened.root, staging, ignore=shutil.ignore_patterns(MANIFEST_NAME, *(() if reuse else ("litert",))))
        lowered = manifest if reuse else add_litert(staging, _without_litert(manifest), jobs, chosen_buckets)
        if quant == "int8":
            from ..quant.litert_variant import add_litert_int8
            from .calibration_data import read_examples

            texts = list(read_examples(calib or BUNDLED_SAMPLE, None, use_labels=False).texts)
            lowered = add_litert_int8(staging, lowered, texts)
        return finalize(staging, target.resolve(), replace(lowered, schema_version=SCHEMA_VERSION))
    except BaseException:
        discard(staging)
        raise


def _rebuilt_jobs(opened) -> list[GraphJob]:
    """The package's graph jobs, rebuilt from its source model and its exit graphs' weights."""
    from .model_source import load_model
    from .graph_jobs import build_segments, graph_jobs, make_exit

    manifest = opened.manifest
    try:
        loaded = load_model(manifest.model.source, manifest.model.task)
    except ExportError as err:
        raise ExportError(f"the package's source model cannot be loaded ({err}); "
                          f"re-export it with --formats onnx,litert") from None
    segments = build_segments(loaded, manifest.model.task)
    head = (manifest.calibration.get("exit_training") or {}).get("head", "pooler")
    exit_modules = {e.after_block: _trained_exit(opened.path(manifest.segment(e.segment).graph()),
                                                 make_exit(manifest.model.task, loaded, segments, head), e.segment)
                    for e in manifest.exits}
    return graph_jobs(segments, exit_modules)


def _without_litert(manifest: Manifest) -> Manifest:
    """The manifest before conversion: no LiteRT graphs, nor the variants that lived in them."""
    if manifest.litert is None:
        return manifest
    gone = set(manifest.litert.files)
    return replace(manifest, litert=None, precision_variants=tuple(v for v in manifest.precision_variants if v.name not in gone))


def _trained_exit(graph: Path, module: torch.nn.Module, name: str) -> torch.nn.Module:
    """The exit module with the weights its ONNX graph holds (initializer names are the module's
    parameter names: exits are small Gemm heads the exporter does not rename)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(graph))
    weights = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in model.graph.initializer}
    wanted = module.state_dict()
    if set(wanted) - set(weights) or any(weights[k].shape != v.shape for k, v in wanted.items()):
        raise ExportError(f"{name}'s graph does not hold the weights of this edgeinfer's exit heads; "
                          f"re-export the package with --formats onnx,litert")
    module.load_state_dict({k: weights[k] for k in wanted})
    return module
