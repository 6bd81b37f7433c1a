"""Making packages: export, convert, quantize, calibrate, thresholds, keygen, sign."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import EdgeInferError

if TYPE_CHECKING:
    from ..export.pruning_training import PruningFamily


def add_commands(sub: argparse._SubParsersAction) -> None:
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

    thresholds = sub.add_parser("thresholds", help="calibrate the exit thresholds again on texts like the "
                                "traffic the package will serve (no labels needed)")
    thresholds.add_argument("package", help="the edge package to calibrate again")
    thresholds.add_argument("--calib", required=True,
                            help="texts: one per line, or a TSV with a text or sentence column (labels are ignored)")
    thresholds.add_argument("--limit", type=int, default=3000, help="texts to use (default 3000)")
    thresholds.add_argument("-o", "--output", default=None, help="write a new package here (default: in place)")
    thresholds.add_argument("--force", action="store_true", help="replace an existing package at --output")
    thresholds.set_defaults(handler=_thresholds)

    keygen = sub.add_parser("keygen", help="make an Ed25519 key pair for signing packages")
    keygen.add_argument("--out", required=True, help="private key file to write (the public key gets .pub)")
    keygen.set_defaults(handler=_keygen)

    sign = sub.add_parser("sign", help="sign a package (manifest.sig) so apps can verify who published it")
    sign.add_argument("package", help="the edge package to sign")
    sign.add_argument("--key", required=True, help="private key from `edgeinfer keygen`")
    sign.set_defaults(handler=_sign)


def _export(args: argparse.Namespace) -> int:
    if args.task == "text-generation":
        return _export_decoder(args)
    from ..export.pipeline import ExportOptions, export_model

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
    from ..errors import ExportError
    from ..export.pruning_training import PruningFamily

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
    from ..export.litert import convert_package

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
    from ..export.decoder.pipeline import DecoderExportOptions, export_decoder

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


def _add_decoder_variant(package: str, scheme: str, output: str | None = None, force: bool = False) -> None:
    from ..quant.decoder_variant import SCHEMES, add_decoder_variant

    if scheme not in SCHEMES:
        raise EdgeInferError(f"--quant {scheme} does not apply to a text-generation package; use one of {', '.join(SCHEMES)}")
    manifest = add_decoder_variant(package, scheme, output=output, force=force)
    variant = manifest.precision_variants[-1]
    print(f"wrote variant {variant.name!r} into {output or package}: {variant.bytes / 1e6:.1f} MB resident, "
          f"next-token agreement with fp32 {variant.quality['next_token_agreement_with_fp32']:.3f}")


def _quantize(args: argparse.Namespace) -> int:
    from ..runtime.package import open_package

    if open_package(args.package, verify=False).manifest.decoder is not None:
        _add_decoder_variant(args.package, args.quant, args.output, args.force)
        return 0
    from ..export.calibration_data import BUNDLED_SAMPLE, read_examples
    from ..quant.quantize import quantize_package
    from ..quant.report import write_quant_report

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


def _overrides(specs: list[str] | None) -> dict[str, str]:
    from ..errors import InputError

    overrides = {}
    for spec in specs or []:
        node, separator, precision = spec.rpartition("=")
        if not separator or not node:
            raise InputError(f"--override {spec!r} must look like NODE=PRECISION, e.g. /blocks.0/dense_2/MatMul=fp32")
        overrides[node] = precision
    return overrides


def _calibrate(args: argparse.Namespace) -> int:
    from ..export.calibration_data import read_examples
    from ..export.operating_points import calibrate_package

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
    from ..export.calibration_data import read_examples
    from ..export.recalibrate import recalibrate_thresholds

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


def _keygen(args: argparse.Namespace) -> int:
    from ..runtime.signing import generate_key

    private, public = generate_key(Path(args.out))
    print(f"private key {private} (keep it secret), public key {public} (ship it with your app)")
    return 0


def _sign(args: argparse.Namespace) -> int:
    from ..runtime.package import open_package
    from ..runtime.signing import sign_package

    package = open_package(args.package)  # never sign a package that fails its own checks
    print(f"signed {sign_package(package.root, Path(args.key))}")
    return 0


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
