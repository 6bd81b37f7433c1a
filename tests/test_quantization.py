"""Precision variants: candidates applied by onnxruntime.quantization, the budgeted search, variants
in the package with their own thresholds, the runtime's cheap-first cascade, and bad input."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import numpy as np
import pytest

import edgeinfer
from edgeinfer.errors import BudgetError, InputError, PackageError
from edgeinfer.quant.apply_plan import apply_plan
from edgeinfer.quant.candidates import CANDIDATES, INT4_B32, INT8_CHANNEL
from edgeinfer.quant.mixed_precision import analyse, choose_plan, full_model
from edgeinfer.quant.output_error import calibration_batches
from edgeinfer.quant.quantize import quantize_package
from edgeinfer.quant.search import Option, dp_front, greedy_front, plan_for_budget
from edgeinfer.quant.value_stats import weight_noise
from edgeinfer.quant.weight_nodes import weight_nodes
from edgeinfer.runtime.package import open_package

CLASSIFIER = ("bert", "text-classification")


def _texts(path: Path) -> list[str]:
    return [line.split("\t")[0] for line in path.read_text().splitlines()[1:]]


def test_every_candidate_lowers_a_node_and_still_runs(tiny_packages, tiny_calibration):
    package = open_package(tiny_packages[CLASSIFIER])
    model = full_model(package)
    batches = calibration_batches(package, model, _texts(tiny_calibration)[:16])
    node = next(n for n in weight_nodes(model) if n.op_type == "MatMul")
    for candidate in CANDIDATES:
        lowered = apply_plan(model, {node.digest: candidate.name})
        error = batches.error(lowered)
        assert np.isfinite(error) and error >= 0
        if candidate.name == "fp32":
            assert error < 1e-9
    int8 = apply_plan(model, {n.digest: "int8-channel" for n in weight_nodes(model)})
    assert any(n.op_type == "MatMulInteger" for n in int8.graph.node)
    assert not any(n.op_type == "MatMul" and n.name == node.name for n in int8.graph.node)


def test_int8_weights_keep_seven_bits_so_no_cpu_saturates(tiny_packages):
    """x86 without VNNI sums pairs of uint8 x int8 products in 16 bits: 7-bit weights keep every pair
    in range, so a variant computes the same integers there as on ARM and in WASM."""
    from onnx import numpy_helper

    model = full_model(open_package(tiny_packages[CLASSIFIER]))
    int8 = apply_plan(model, {n.digest: "int8-channel" for n in weight_nodes(model)})
    weights = {node.input[1] for node in int8.graph.node if node.op_type == "MatMulInteger"}
    quantized = [numpy_helper.to_array(t) for t in int8.graph.initializer if t.name in weights]
    assert quantized and all(q.dtype == np.int8 for q in quantized)
    assert max(int(np.abs(q.astype(np.int32)).max()) for q in quantized) <= 64


def _outlier_graph(rng: np.random.Generator):
    """x [1, n, 32] -> x * gamma (channel 3 40x the others, as after a BERT LayerNorm) -> two MatMuls."""
    from onnx import TensorProto, helper, numpy_helper

    gamma = np.ones(32, np.float32)
    gamma[3] = 40.0
    tensors = [numpy_helper.from_array(gamma, "gamma"),
               numpy_helper.from_array(rng.standard_normal((32, 32)).astype(np.float32) * 0.2, "w1"),
               numpy_helper.from_array(rng.standard_normal((32, 32)).astype(np.float32) * 0.2, "w2")]
    nodes = [helper.make_node("Mul", ["x", "gamma"], ["normed"], name="norm"),
             helper.make_node("MatMul", ["normed", "w1"], ["a"], name="first"),
             helper.make_node("MatMul", ["normed", "w2"], ["b"], name="second"),
             helper.make_node("Add", ["a", "b"], ["y"], name="join")]
    graph = helper.make_graph(nodes, "outlier", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, None, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, None, 32])], tensors)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_smoothing_keeps_fp32_and_tames_an_outlier_channel_for_int8():
    """SmoothQuant's rescaling is the same function in fp32; where an input has an outlier channel
    (as BERT-like models have after a LayerNorm), it brings int8 much closer to fp32. Both MatMuls
    read one input: they share one divisor."""
    from edgeinfer.quant.smoothing import NONE, channel_peaks, smoothed, smoothing_for
    from edgeinfer.runtime.sessions import open_session

    rng = np.random.default_rng(0)
    model = _outlier_graph(rng)
    feeds = tuple({"x": rng.standard_normal((1, 24, 32)).astype(np.float32), "attention_bias": np.zeros((1, 24))}
                  for _ in range(8))

    def outputs(graph) -> np.ndarray:
        session = open_session(graph.SerializeToString())
        return np.concatenate([session.run(None, {"x": f["x"]})[0] for f in feeds])

    def error(graph) -> float:
        return float(np.linalg.norm(outputs(graph) - reference) / np.linalg.norm(reference))

    reference = outputs(model)
    nodes = weight_nodes(model)
    smoothing = smoothing_for(model, nodes, channel_peaks(model, nodes, feeds), alpha=0.8)
    assert len({s.tobytes() for s in smoothing.scales.values()}) == 1 and len(smoothing.scales) == 2
    rescaled = smoothed(copy.deepcopy(model), nodes, smoothing)
    assert sum(n.op_type == "Mul" for n in rescaled.graph.node) == 2 and error(rescaled) < 1e-6
    int8 = {n.digest: "int8-channel" for n in nodes}
    plain, smooth = error(apply_plan(model, int8)), error(apply_plan(model, int8, smoothing))
    assert smooth < 0.6 * plain
    assert error(apply_plan(model, int8, NONE)) == plain


def test_weight_noise_orders_precisions():
    weights = np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32)
    noise = {c.name: weight_noise(weights, c, 0) for c in CANDIDATES}
    assert noise["fp32"] == 0 and noise["fp16"] < noise["int8-channel"] <= noise["int8-tensor"] < noise["int4-b32"]
    assert INT8_CHANNEL.weight_bytes((64, 32)) < 64 * 32 * 4 and INT4_B32.weight_bytes((64, 32)) < 64 * 32


def test_dp_search_is_never_worse_than_greedy_within_a_budget():
    rng = np.random.default_rng(1)
    options = {f"n{i}": [Option("fp32", 4.0, 0.0), Option("int8-channel", 1.0, float(rng.random())),
                         Option("int4-b32", 0.6, float(rng.random()) + 0.5)] for i in range(12)}
    greedy, dp = greedy_front(options), dp_front(options)
    for budget in (8.0, 12.0, 20.0, 30.0):
        assert plan_for_budget(dp, budget, "MB").error <= plan_for_budget(greedy, budget, "MB").error + 1e-9
    with pytest.raises(BudgetError, match="smallest possible is 7.2 MB"):
        plan_for_budget(dp, 5.0, "MB")


def test_mixed_plan_fits_its_size_budget_and_bad_budgets_are_refused(tiny_packages, tiny_calibration, tmp_path):
    os.environ.setdefault("EDGEINFER_CACHE", str(tmp_path))
    package = open_package(tiny_packages[CLASSIFIER])
    analysis, _ = analyse(package, _texts(tiny_calibration)[:48])
    fp32_bytes = analysis.predicted({})[0]
    plan = choose_plan(analysis, "mixed", size_budget_mb=0.6 * fp32_bytes / 1e6)
    assert analysis.predicted(plan)[0] <= 0.6 * fp32_bytes
    with pytest.raises(BudgetError, match="smallest possible"):
        choose_plan(analysis, "mixed", size_budget_mb=0.001)
    with pytest.raises(InputError, match="needs --quant mixed"):
        choose_plan(analysis, "int8", size_budget_mb=1.0)


def test_too_little_calibration_data_is_refused(tiny_packages, tiny_calibration, tmp_path):
    with pytest.raises(InputError, match="at least 32"):
        quantize_package(tiny_packages[CLASSIFIER], _texts(tiny_calibration)[:5], "int8", output=tmp_path / "x.edge")
    assert not (tmp_path / "x.edge").exists()


def test_variant_is_listed_with_its_own_thresholds(quantized):
    import jsonschema

    schema = json.loads((Path(edgeinfer.__file__).parent / "docs" / "manifest.schema.json").read_text())
    jsonschema.validate(json.loads((quantized / "manifest.json").read_text()), schema)
    manifest = open_package(quantized).manifest
    variant = manifest.precision_variant("int8")
    assert all("int8" in [v.precision for v in s.variants] for s in manifest.segments)
    assert all(len(level.thresholds) == len(manifest.exits) + 1 for level in variant.thresholds)
    assert 0.5 <= variant.quality["agreement_with_fp32"] <= 1.0
    assert variant.plan and set(variant.plan.values()) == {"int8-channel"}
    with pytest.raises(PackageError, match="no precision variant 'int4'"):
        manifest.precision_variant("int4")


def test_runtime_runs_the_variant_and_restarts_at_fp32(quantized):
    full_int8 = edgeinfer.load(quantized, policy=edgeinfer.Policy(agreement=None, precision="int8"))
    fp32 = edgeinfer.load(quantized, policy=edgeinfer.Policy.off())
    text = "good movie with a kind happy actor"
    lowered, reference = full_int8.run(text), fp32.run(text)
    assert lowered.trace.precision == "int8" and reference.trace.precision == "fp32"
    assert np.allclose(lowered.probabilities, reference.probabilities, atol=0.1)
    cascade = edgeinfer.load(quantized, policy=edgeinfer.Policy(agreement=0.95, precision="int8", fallback="nearest"))
    for result in cascade.run([text, "dull plot", "the city"]):
        assert result.trace.precision_requested == "int8"
        if result.trace.restarts:
            assert result.trace.precision == "fp32" and result.trace.segments[-1] == "full"


def test_auto_precision_takes_the_cheaper_calibrated_cascade(quantized):
    """The default precision weighs fp32's exits against each variant's cascade by their calibrated
    expected cost; the variant's measured speed-up decides, and the trace says what was asked."""
    from dataclasses import replace

    from edgeinfer.runtime.encoder.planner import choose_precision

    manifest = open_package(quantized).manifest
    variant = manifest.precision_variant("int8")
    assert variant.quality["speedup_measured"] > 0 and "speedup_prediction_error" in variant.quality

    def with_speedup(speedup: float):
        quality = {**variant.quality, "speedup_measured": speedup}
        return replace(manifest, precision_variants=(replace(variant, quality=quality),))
    level = next(t.agreement for t in variant.thresholds if all(r.thresholds[-1] is not None for r in t.ranges))
    assert choose_precision(with_speedup(1000.0), level, lambda name: True).precision == "int8"
    assert choose_precision(with_speedup(0.001), level, lambda name: True).precision == "fp32"
    assert choose_precision(with_speedup(1000.0), level, lambda name: False).precision == "fp32"
    assert choose_precision(with_speedup(1000.0), None, lambda name: True).precision == "fp32"

    session = edgeinfer.load(quantized, policy=edgeinfer.Policy(agreement=level))
    chosen = session.precision_choice
    assert chosen.precision == min(chosen.expected_cost, key=chosen.expected_cost.get)
    trace = session.run("good movie with a kind happy actor").trace
    assert trace.precision_requested == "auto" and trace.precision in ("fp32", "int8")
    pruned = edgeinfer.load(quantized, policy=edgeinfer.Policy(agreement=level, keep_schedule=((1, 0.7),)))
    assert pruned.policy.precision == "fp32"


def test_unknown_variant_is_refused_at_load(quantized):
    with pytest.raises(PackageError, match="no precision variant 'int2'"):
        edgeinfer.load(quantized, policy=edgeinfer.Policy(precision="int2"))


def test_quantize_cli_writes_variant_and_report(tiny_packages, tiny_calibration, tmp_path):
    from edgeinfer.cli import main

    out, report = tmp_path / "mixed.edge", tmp_path / "report"
    code = main(["quantize", str(tiny_packages[CLASSIFIER]), "--calib", str(tiny_calibration), "-o", str(out),
                 "--name", "small", "--report", str(report)])
    assert code == 0
    document = json.loads((report / "quant.json").read_text())
    assert document["variant"] == "small" and (report / "pareto.png").stat().st_size > 1000
    # without a size budget, mixed is the fastest plan predicted no less faithful than uniform int8
    measured = {m["name"]: m for m in document["measured"]}
    assert {"fp32", "uniform int8", "predicted best"} <= set(measured)
    assert measured["predicted best"]["predicted_ms"] <= measured["uniform int8"]["predicted_ms"] + 1e-9
    # the variant written is the plan that ran fastest at no more output error than uniform int8
    quality = open_package(out).manifest.precision_variant("small").quality
    picked = measured[quality["measured_choice"]]
    assert picked["output_error"] <= measured["uniform int8"]["output_error"] * (1 + 1e-9)
    assert all(m["speedup"] <= picked["speedup"] + 1e-9 for m in measured.values()
               if m["name"] != "fp32" and m["output_error"] <= measured["uniform int8"]["output_error"] * (1 + 1e-9))
    assert quality["speedup_measured"] == pytest.approx(picked["speedup"], abs=1e-3)
    assert "Measured as they run" in (report / "quant.md").read_text()
    assert main(["quantize", str(tiny_packages[CLASSIFIER]), "--calib", str(tiny_calibration), "-o",
                 str(tmp_path / "none.edge"), "--quant", "none"]) == 2
    assert not (tmp_path / "none.edge").exists()


def test_embedding_variant_holds_a_level_only_alone_and_outright(tiny_packages, tiny_calibration, tmp_path):
    """An embedding has no answer confidence to restart on: a variant's level keeps every answer
    at full depth with exits off, and exists only where calibration counted enough agreeing
    answers outright; elsewhere the variant certifies nothing and the policy is refused."""
    from edgeinfer.export.exit_quality import cosine_rows
    from edgeinfer.export.thresholds import allowed_disagreements
    from edgeinfer.quant.output_error import single_texts

    texts = _texts(tiny_calibration)
    out = tmp_path / "embed-int8.edge"
    quantize_package(tiny_packages[("bert", "feature-extraction")], texts, "int8", output=out)
    manifest = open_package(out).manifest
    variant = manifest.precision_variant("int8")
    assert variant.quality["mean_cosine_to_fp32"] > 0.5
    result = edgeinfer.load(out, policy=edgeinfer.Policy(agreement=None, precision="int8")).run("a kind actor")
    assert result.trace.precision == "int8" and np.isfinite(result.embedding).all()
    package = open_package(out)
    alone = single_texts(calibration_batches(package, full_model(package), texts), len(texts))
    session = edgeinfer.load(out, policy=edgeinfer.Policy(agreement=None, precision="int8"))
    answers = np.stack([session.run(t).embedding for t in sorted(texts, key=len)])  # the batches' order
    wrong = int((cosine_rows(answers, alone.reference) < 0.99).sum())
    for level in variant.thresholds:
        holds = wrong <= allowed_disagreements(len(texts), level.agreement)
        assert level.certifies_final_answer == holds and all(t is None for t in level.thresholds[:-1])
        policy = edgeinfer.Policy(agreement=level.agreement, precision="int8")
        if holds:
            traced = edgeinfer.load(out, policy=policy).run("a kind actor").trace
            assert traced.precision == "int8" and traced.restarts == 0
        else:
            with pytest.raises(InputError, match="certifies no answer"):
                edgeinfer.load(out, policy=policy)
    # a level calibrated with restarts (as embedding variants were before they ran alone) answers nothing
    from dataclasses import replace

    from edgeinfer.runtime.policy import variant_answers

    level = variant.thresholds[0]
    assert variant_answers(manifest, level) == level.certifies_final_answer
    restarting = replace(level, thresholds=(*level.thresholds[:-1], 0.97),
                         exit_shares=(*level.exit_shares[:-2], 0.6, 0.4))
    assert not variant_answers(manifest, restarting)


def test_overrides_force_a_node_and_unknown_nodes_are_refused(tiny_packages, tiny_calibration, tmp_path, capsys):
    from edgeinfer.cli import main

    package = open_package(tiny_packages[CLASSIFIER])
    node = next(n.name for n in weight_nodes(full_model(package)) if n.op_type == "MatMul")
    out = tmp_path / "o.edge"
    assert main(["quantize", str(package.root), "--calib", str(tiny_calibration), "--quant", "int8", "-o", str(out),
                 "--override", f"{node}=fp32"]) == 0
    plan = open_package(out).manifest.precision_variant("int8").plan
    assert node not in plan and plan  # fp32 nodes are left out of the stored plan
    capsys.readouterr()  # what that run printed
    for bad, message in (("/no/such/MatMul=fp32", "which this model does not have"),
                         (f"{node}=int3", "unknown precision"), ("justtext", "must look like NODE=PRECISION")):
        assert main(["quantize", str(package.root), "--calib", str(tiny_calibration), "--quant", "int8",
                     "-o", str(tmp_path / "bad.edge"), "--override", bad]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
    assert not (tmp_path / "bad.edge").exists()


def test_memory_need_counts_the_graphs_a_policy_opens(quantized):
    """Each onnxruntime session holds the tensors it reads: the int8 variant alone needs less than
    fp32 (a quarter of the weights on a real model; graph structure weighs more on this tiny one),
    the cascade both, and a cap between them names the cheapest way."""
    from edgeinfer.errors import BudgetError

    package = quantized
    fp32 = edgeinfer.load(package, policy=edgeinfer.Policy.off()).memory
    int8 = edgeinfer.load(package, policy=edgeinfer.Policy(agreement=None, precision="int8")).memory
    cascade = edgeinfer.load(package, policy=edgeinfer.Policy(agreement=None, precision="int8", restart_below=0.9)).memory
    assert int8.weights_mb < 0.8 * fp32.weights_mb
    assert cascade.weights_mb > fp32.weights_mb + 0.5 * int8.weights_mb
    with pytest.raises(BudgetError, match=r"Policy\(precision='int8', agreement=None\)"):
        edgeinfer.load(package, policy=edgeinfer.Policy.off(),
                       budget=edgeinfer.Budget(memory_mb=int8.total_mb + 0.5 * (fp32.total_mb - int8.total_mb)))


def test_restart_threshold_is_set_on_the_agreement_scale():
    """A faithful variant's final answer restarts only when its margin is within the noise: the
    calibration on the agreement scale and the runtime's comparison of max probabilities agree."""
    from types import SimpleNamespace

    from edgeinfer.export.exit_quality import judge
    from edgeinfer.export.thresholds import allowed_disagreements, calibrate_level
    from edgeinfer.quant.variant_thresholds import (agreement_scale, calibrate_variant, confidence_scale,
                                                    logit_noise_scale)

    rng = np.random.default_rng(0)
    n = 3000
    fp32 = rng.normal(0, 2.5, (n, 2))
    final = fp32 + rng.normal(0, 0.05, (n, 2))
    exits = {1: fp32 * 0.4 + rng.normal(0, 1.0, (n, 2)), 2: fp32 * 0.7 + rng.normal(0, 0.6, (n, 2))}
    noise = logit_noise_scale(final, fp32)
    assert 0.05 < noise < 0.05 * np.sqrt(2) * 1.5  # the gap between two logits moves by sqrt(2) sigma
    assert logit_noise_scale(fp32, fp32) is None
    assert abs(confidence_scale(float(agreement_scale(np.array([0.505]), noise)[0]), noise) - 0.505) < 1e-9

    manifest = SimpleNamespace(model=SimpleNamespace(num_blocks=3, task="text-classification"))
    levels = calibrate_variant(manifest, exits, final, fp32, speedup=1.5).thresholds
    level = next(t for t in levels if t.agreement == 0.99)
    confidence, agrees = judge("text-classification", {**exits, 3: final}, fp32)
    plain = calibrate_level(confidence, agrees, [1, 2, 3], 3 + 3 * 1.5, 0.99)
    assert level.exit_shares[-1] < plain.exit_shares[-1] / 3  # far fewer restarts

    leaves = np.full(n, 3)  # the runtime's rule: each stage compares its max probability with its threshold
    for stage in range(2, -1, -1):
        leaves = np.where(confidence[:, stage] >= level.thresholds[stage], stage, leaves)
    wrong = sum(not agrees[i, leaves[i]] for i in range(n) if leaves[i] < 3)
    assert wrong <= allowed_disagreements(n, 0.99)
    assert abs(np.mean(leaves == 3) - level.exit_shares[-1]) < 1e-6  # shares are stored to 6 places


def test_a_predicted_speedup_outside_reason_is_recorded_as_none():
    # a tiny model's node timings can scale a plan's predicted total to ~0; the record must stay readable
    from edgeinfer.quant.quantize import predicted_speedup, speed_record

    assert predicted_speedup(2.0, 1.0) == 2.0
    assert predicted_speedup(1.0, 0.0) is None and predicted_speedup(1.0, -0.5) is None
    assert predicted_speedup(1.0, 1e-9) is None
    record = speed_record(3.0, 2.0, None)
    assert record["speedup_measured"] == 1.5 and record["speedup_predicted"] is None
    assert record["speedup_prediction_error"] is None
