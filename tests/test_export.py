"""Export: every family and task becomes a valid, validated package."""

from __future__ import annotations

from dataclasses import replace

import json

import numpy as np
import onnx
import pytest

from edgeinfer.manifest_reading import manifest_from_json
from edgeinfer.runtime.package import open_package
from conftest import plain_options

FAMILIES = ("bert", "roberta", "distilbert")
TASKS = ("feature-extraction", "text-classification")


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("task", TASKS)
def test_package_has_segments_exits_and_passed_validation(tiny_packages, family, task):
    package = open_package(tiny_packages[(family, task)])
    manifest = package.manifest
    assert manifest.model.num_blocks == 3
    assert [s.name for s in manifest.blocks()] == ["block_00", "block_01", "block_02"]
    assert [e.after_block for e in manifest.exits] == [1, 2]  # default: every block but the last
    assert manifest.validation["max_abs_diff"] <= 1e-4
    assert {c["tokens"] for c in manifest.validation["cases"]} >= {4, 16, 64}
    assert [t.agreement for t in manifest.exit_thresholds] == [0.95, 0.98, 0.99, 0.995]
    for level in manifest.exit_thresholds:
        assert abs(sum(level.exit_shares) - 1.0) < 1e-5
        assert 1.0 <= level.expected_mean_depth <= 3.0


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("task", TASKS)
def test_the_package_answers_what_transformers_answers(tiny_models, tiny_packages, family, task):
    import edgeinfer
    from conftest import transformers_reference

    session = edgeinfer.load(tiny_packages[(family, task)], policy=edgeinfer.Policy.off())
    for text in ("good movie", "a dull plot with a kind actor in the city , and more"):
        batch = session.encoder.encode([text])
        expected = transformers_reference(tiny_models[(family, task)], task, batch.input_ids, batch.attention_mask,
                                          session.manifest.model.normalize_embedding)
        result = session.run(text)
        got = result.probabilities if task == "text-classification" else result.embedding
        np.testing.assert_allclose(got, expected, atol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_graphs_are_opset17_checked_and_dynamic(tiny_packages, family):
    package = open_package(tiny_packages[(family, "text-classification")])
    block = onnx.load(str(package.path(package.manifest.segment("block_00").graph())))
    onnx.checker.check_model(block, full_check=True)
    assert max(o.version for o in block.opset_import if o.domain in ("", "ai.onnx")) >= 17
    dims = [d.dim_param for d in block.graph.input[0].type.tensor_type.shape.dim]
    assert dims[:2] == ["batch", "sequence"]
    assert [o.name for o in block.graph.output] == ["next_hidden", "token_importance", "cls_attention"]


def test_token_types_only_where_the_family_has_them(tiny_packages):
    bert = open_package(tiny_packages[("bert", "feature-extraction")]).manifest.segment("embed")
    distil = open_package(tiny_packages[("distilbert", "feature-extraction")]).manifest.segment("embed")
    assert bert.inputs == ("input_ids", "token_type_ids")
    assert distil.inputs == ("input_ids",)


def test_manifest_round_trips_and_matches_the_json_schema(tiny_packages):
    import jsonschema

    from pathlib import Path

    path = tiny_packages[("bert", "text-classification")] / "manifest.json"
    manifest = manifest_from_json(path.read_text())
    assert manifest_from_json(manifest.to_json()) == manifest
    schema = json.loads((Path(__file__).resolve().parents[1] / "docs" / "manifest.schema.json").read_text())
    jsonschema.validate(json.loads(path.read_text()), schema)


def test_every_file_listed_with_size_and_sha256(tiny_packages):
    root = tiny_packages[("roberta", "feature-extraction")]
    manifest = open_package(root).manifest
    on_disk = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.name != "manifest.json")
    assert sorted(f.path for f in manifest.files) == on_disk
    assert all(f.bytes == (root / f.path).stat().st_size for f in manifest.files)


def test_chosen_exits_only(tiny_models, tiny_calibration, tmp_path):
    from edgeinfer.export.pipeline import export_model

    manifest = export_model(str(tiny_models[("bert", "text-classification")]), tmp_path / "p.edge",
                            plain_options(task="text-classification", exits="2", calib=str(tiny_calibration)))
    assert [e.after_block for e in manifest.exits] == [2]
    assert not (tmp_path / "p.edge" / "graphs" / "exit_01.onnx").exists()


def test_evaluation_recorded_when_eval_data_given(tiny_models, tiny_calibration, tmp_path):
    from edgeinfer.export.pipeline import export_model

    manifest = export_model(str(tiny_models[("distilbert", "text-classification")]), tmp_path / "p.edge",
                            plain_options(task="text-classification", calib=str(tiny_calibration),
                                          eval_data=str(tiny_calibration)))
    evaluation = manifest.evaluation
    assert evaluation["examples"] == 400
    assert {e["after_block"] for e in evaluation["exits"]} == {1, 2}
    assert all(0.0 <= e["accuracy"] <= 1.0 and 0.0 <= e["agreement_with_final"] <= 1.0
               for e in evaluation["exits"])
    assert [lv["agreement"] for lv in evaluation["levels"]] == [0.95, 0.98, 0.99, 0.995]


def test_runtime_full_depth_matches_pytorch(tiny_models, tiny_packages):
    """The runtime's full-depth answer is the Hugging Face model's answer."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    import edgeinfer

    directory = tiny_models[("bert", "text-classification")]
    model = AutoModelForSequenceClassification.from_pretrained(str(directory)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    text = "good movie with a dull plot and a kind actor"
    with torch.no_grad():
        expected = torch.softmax(model(**tokenizer(text, return_tensors="pt")).logits, -1)[0].numpy()
    session = edgeinfer.load(tiny_packages[("bert", "text-classification")], policy=edgeinfer.Policy(agreement=None))
    result = session.run(text)
    np.testing.assert_allclose(result.probabilities, expected, atol=1e-5)
    assert result.trace.exit_after_block == 3


def test_joint_fine_tuning_records_how_far_the_final_layer_moved(tiny_models, tiny_calibration, tmp_path):
    from edgeinfer.export.pipeline import export_model

    manifest = export_model(str(tiny_models[("bert", "text-classification")]), tmp_path / "j.edge",
                            plain_options(task="text-classification", calib=str(tiny_calibration),
                                          eval_data=str(tiny_calibration), train_exits="joint", joint_steps=15))
    joint = manifest.calibration["exit_training"]["joint"]
    assert joint["steps"] == 15 and joint["measured_on"] == str(tiny_calibration)
    assert 0.0 <= joint["final_agreement_with_original"] <= 1.0
    assert joint["accuracy_change"] == pytest.approx(joint["accuracy"] - joint["original_accuracy"], abs=1e-5)
    # the graphs hold the fine-tuned weights the record describes: their answers agree with the original
    # model's (run by transformers itself) as often as the record says
    import edgeinfer
    from conftest import transformers_reference

    session = edgeinfer.load(tmp_path / "j.edge", policy=edgeinfer.Policy.off())
    texts = [line.split("\t")[0] for line in tiny_calibration.read_text().splitlines()[1:]][:60]
    original = tiny_models[("bert", "text-classification")]
    same = [session.run(t).probabilities.argmax() == transformers_reference(
        original, "text-classification", *(lambda b: (b.input_ids, b.attention_mask))(session.encoder.encode([t])),
        False).argmax() for t in texts]
    assert abs(np.mean(same) - joint["final_agreement_with_original"]) <= 0.15


def test_joint_fine_tuning_of_embeddings_needs_no_labels(tiny_models, tiny_calibration, tmp_path):
    """A sentence-embedding model trains its exits jointly on unlabeled text (the TSV's labels are
    ignored) against its own embeddings; the record says how far the final embedding moved, as a
    cosine and as a search sees it, and the graphs hold what the record describes."""
    import torch

    import edgeinfer
    from conftest import transformers_reference
    from edgeinfer.export.joint_training import embedding_distillation_loss
    from edgeinfer.export.pipeline import export_model

    same = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
    assert float(embedding_distillation_loss(same, same)) == pytest.approx(0.0, abs=1e-6)
    assert float(embedding_distillation_loss(same, torch.roll(same, 1, 0))) > 0.1
    manifest = export_model(str(tiny_models[("bert", "feature-extraction")]), tmp_path / "e.edge",
                            plain_options(task="feature-extraction", calib=str(tiny_calibration),
                                          eval_data=str(tiny_calibration), train_exits="joint", joint_steps=15))
    joint = manifest.calibration["exit_training"]["joint"]
    assert joint["steps"] == 15 and "self-distillation" in joint["loss"]
    assert 0.0 < joint["final_mean_cosine_to_original"] <= 1.0 + 1e-6
    assert 0.0 <= joint["final_same_top1_neighbour"] <= 1.0 and joint["retrieval_queries"] > 0
    session = edgeinfer.load(tmp_path / "e.edge", policy=edgeinfer.Policy.off())
    texts = [line.split("\t")[0] for line in tiny_calibration.read_text().splitlines()[1:]][:40]
    original = tiny_models[("bert", "feature-extraction")]
    cosines = []
    for text in texts:
        batch = session.encoder.encode([text])
        mine = session.run(text).embedding
        theirs = transformers_reference(original, "feature-extraction", batch.input_ids, batch.attention_mask,
                                        manifest.model.normalize_embedding)
        cosines.append(float(mine @ theirs / (np.linalg.norm(mine) * np.linalg.norm(theirs))))
    assert abs(np.mean(cosines) - joint["final_mean_cosine_to_original"]) <= 0.05


def test_pruning_in_training_keeps_what_the_runtime_keeps_row_by_row():
    import torch

    from edgeinfer.export.pruning_training import prune_padded
    from edgeinfer.manifest import PAD_BIAS
    from edgeinfer.runtime.pruning import keep_count, keep_tokens

    generator = torch.Generator().manual_seed(3)
    lengths = torch.tensor([9, 4, 13, 2])
    width = int(lengths.max())
    valid = torch.arange(width)[None] < lengths[:, None]
    bias = torch.where(valid, 0.0, PAD_BIAS)
    protected = (torch.arange(width)[None] == 0) | (torch.arange(width)[None] == lengths[:, None] - 1)
    hidden = torch.randn(4, width, 5, generator=generator)
    importance = torch.rand(4, width, generator=generator)
    pruned, pruned_bias, pruned_protected = prune_padded(hidden, bias, protected, importance, lengths, 0.5)
    for row, length in enumerate(lengths.tolist()):
        keep = keep_count(length, length, 0.5, int(protected[row].sum()))
        index = keep_tokens(importance[row, :length].numpy(), protected[row, :length].numpy(), keep)
        assert int((pruned_bias[row] == 0).sum()) == keep
        np.testing.assert_array_equal(pruned[row, :keep].numpy(), hidden[row, index].numpy())
        np.testing.assert_array_equal(pruned_protected[row, :keep].numpy(), protected[row, index].numpy())
        assert bool((pruned_bias[row, keep:] == PAD_BIAS).all()) and not pruned_protected[row, keep:].any()


def test_keep_schedules_come_from_the_family_asked_for():
    import torch

    from edgeinfer.export.pruning_training import PruningFamily, sample_keep_schedule

    generator = torch.Generator().manual_seed(0)
    family = PruningFamily(first_blocks=(2,), ratio_range=(0.5, 0.75))
    schedules = [sample_keep_schedule(generator, 6, family) for _ in range(200)]
    assert all(sorted(s) == [2, 3, 4, 5] for s in schedules)
    ratios = [s[2] for s in schedules]
    assert 0.5 <= min(ratios) < 0.55 and 0.7 < max(ratios) <= 0.75
    assert all(abs(s[4] - s[2] ** 3) < 1e-9 for s in schedules)  # geometric


def test_cli_refuses_a_malformed_pruning_family(tiny_models, tiny_calibration, tmp_path, capsys):
    from edgeinfer.cli import main

    model = str(tiny_models[("bert", "text-classification")])
    for flags in (["--train-pruning-ratios", "0.5"], ["--train-pruning-after", "one"]):
        assert main(["export", model, "-o", str(tmp_path / "p.edge"), "--task", "text-classification", "--calib",
                     str(tiny_calibration), "--train-exits", "joint", "--train-pruning", "token_importance",
                     *flags]) == 2
        assert "--train-pruning-" in capsys.readouterr().err
    assert not (tmp_path / "p.edge").exists()


def test_joint_fine_tuning_with_pruning_in_the_loop(tiny_models, tiny_calibration, tmp_path):
    import dataclasses

    import edgeinfer
    from edgeinfer.errors import ExportError
    from edgeinfer.export.pipeline import export_model
    from edgeinfer.export.pruning_training import PruningFamily

    model = str(tiny_models[("bert", "text-classification")])
    family = PruningFamily(first_blocks=(1,), ratio_range=(0.5, 0.75), share=0.9)
    manifest = export_model(model, tmp_path / "p.edge", plain_options(
        task="text-classification", calib=str(tiny_calibration), train_exits="joint", joint_steps=12,
        train_pruning="cls_attention", pruning_family=family))
    pruning = manifest.calibration["exit_training"]["joint"]["pruning"]
    assert pruning["importance"] == "cls_attention" and pruning["share_of_steps"] == 0.9
    assert "f in (1,)" in pruning["schedules"] and "(0.5, 0.75)" in pruning["schedules"]
    assert manifest.pruning_span("cls_attention").name == "full_pruned"  # ranks by the score it learned
    assert manifest.pruning_span("token_importance") is None
    text = "good movie with a long dull plot and a kind happy actor in the city"
    policy = edgeinfer.Policy(agreement=None, keep_schedule=((1, 0.6), (2, 0.3)), importance="cls_attention")
    inside = edgeinfer.load(tmp_path / "p.edge", policy=policy).run(text)
    chained = edgeinfer.load(tmp_path / "p.edge", policy=dataclasses.replace(policy, importance="token_importance"))
    assert inside.trace.segments == ("full_pruned",) and chained.run(text).trace.segments[0] == "embed"
    chain = edgeinfer.load(tmp_path / "p.edge", policy=policy)
    chain.plan = replace(chain.plan, pruned_full=None)  # the block-by-block path the graph replaces
    np.testing.assert_allclose(inside.probabilities, chain.run(text).probabilities, atol=1e-5)
    with pytest.raises(ExportError, match="add --train-exits joint"):
        export_model(model, tmp_path / "q.edge", plain_options(task="text-classification", calib=str(tiny_calibration),
                                                               train_pruning="token_importance"))
    for bad, message in ((PruningFamily(ratio_range=(0.8, 0.5)), "LOW <= HIGH"),
                         (PruningFamily(first_blocks=(0, 1)), "pruning starts after blocks 1.."),
                         (PruningFamily(share=0.0), "share of the steps")):
        with pytest.raises(ExportError, match=message):
            export_model(model, tmp_path / "q.edge", plain_options(
                task="text-classification", calib=str(tiny_calibration), train_exits="joint",
                train_pruning="token_importance", pruning_family=bad))
    assert not (tmp_path / "q.edge").exists()


def test_linear_exit_heads(tiny_models, tiny_calibration, tmp_path):
    import edgeinfer
    from edgeinfer.errors import ExportError
    from edgeinfer.export.pipeline import export_model

    package = tmp_path / "linear.edge"
    manifest = export_model(str(tiny_models[("bert", "text-classification")]), package,
                            plain_options(task="text-classification", calib=str(tiny_calibration), exit_head="linear"))
    assert manifest.calibration["exit_training"]["head"] == "linear"
    exit_graph = onnx.load(str(package / manifest.segment(manifest.exits[0].segment).graph()))
    assert sorted(i.name for i in exit_graph.graph.initializer if i.name.endswith(("weight", "bias"))) == ["out.bias", "out.weight"]
    # an exit that answers everything gives what its own graphs give, chained by plain onnxruntime
    from dataclasses import replace

    import onnxruntime as ort

    from edgeinfer.export.package_writer import rewrite_manifest

    first = replace(manifest.exit_thresholds[0], thresholds=(0.0, *manifest.exit_thresholds[0].thresholds[1:]),
                    by_length=())
    eager = tmp_path / "eager.edge"
    rewrite_manifest(package, eager, replace(manifest, exit_thresholds=(first, *manifest.exit_thresholds[1:])), force=False)
    session = edgeinfer.load(eager, policy=edgeinfer.Policy(agreement=first.agreement))
    result = session.run("a fine plot")
    batch = session.encoder.encode(["a fine plot"])
    bias = np.zeros(batch.input_ids.shape, np.float32)

    def run(segment: str, feeds: dict) -> np.ndarray:
        graph = ort.InferenceSession(str(eager / manifest.segment(segment).graph()), providers=["CPUExecutionProvider"])
        return graph.run(None, {i.name: feeds[i.name] for i in graph.get_inputs()})[0]
    hidden = run("embed", {"input_ids": batch.input_ids, "token_type_ids": batch.token_type_ids, "attention_bias": bias})
    hidden = run("block_00", {"hidden": hidden, "attention_bias": bias})
    logits = run(manifest.exits[0].segment, {"hidden": hidden, "attention_bias": bias})[0]
    assert result.trace.exit_after_block == 1
    np.testing.assert_allclose(result.probabilities, np.exp(logits) / np.exp(logits).sum(), atol=1e-5)
    with pytest.raises(ExportError, match="linear is for text-classification"):
        export_model(str(tiny_models[("bert", "feature-extraction")]), tmp_path / "e.edge",
                     plain_options(calib=str(tiny_calibration), exit_head="linear"))


def test_the_default_recipe_for_a_classifier_is_joint_linear_and_int8(tiny_models, tiny_calibration, tmp_path):
    """A plain export of a classifier trains exits with the backbone, linear, and adds an int8 variant;
    without labels the joint training distils the original model alone. The manifest says why."""
    from edgeinfer.export.pipeline import ExportOptions, export_model

    from conftest import write_calibration

    model = str(tiny_models[("bert", "text-classification")])
    manifest = export_model(model, tmp_path / "d.edge",
                            ExportOptions(task="text-classification", calib=str(tiny_calibration), joint_steps=20))
    recipe = manifest.export["recipe"]
    assert recipe["train_exits"].startswith("joint: ") and "labels and" in recipe["train_exits"]
    assert recipe["exit_head"].startswith("linear: ") and recipe["quant"].startswith("int8: ")
    assert manifest.calibration["exit_training"]["head"] == "linear"
    assert [v.name for v in manifest.precision_variants] == ["int8"]
    assert "cross-entropy" in manifest.calibration["exit_training"]["joint"]["loss"]

    unlabelled = write_calibration(tmp_path / "plain.txt", labels=False)
    manifest = export_model(model, tmp_path / "u.edge", ExportOptions(
        task="text-classification", calib=str(unlabelled), joint_steps=20, quant="none", exit_head="pooler"))
    assert "self-distillation" in manifest.calibration["exit_training"]["joint"]["loss"]
    assert manifest.export["recipe"]["quant"] == "none: asked for" and not manifest.precision_variants
    assert manifest.export["recipe"]["exit_head"] == "pooler: asked for"

    embeddings = export_model(str(tiny_models[("bert", "feature-extraction")]), tmp_path / "e.edge",
                              ExportOptions(calib=str(tiny_calibration)))
    assert embeddings.export["recipe"]["train_exits"].startswith("heads: ")
    assert embeddings.export["recipe"]["quant"].startswith("int8: ")  # smoothed, run alone where it holds a level
    assert [v.name for v in embeddings.precision_variants] == ["int8"]


def test_weights_stored_once_and_full_span_matches_the_chain(tiny_packages):
    import edgeinfer

    root = tiny_packages[("bert", "text-classification")]
    manifest = open_package(root).manifest
    full = manifest.segment("full")
    assert full.kind == "span" and full.covers == ("embed", "block_00", "block_01", "block_02", "head")
    weights = next(f.bytes for f in manifest.files if f.path == "graphs/weights.bin")
    references = []  # (offset, length) of every external tensor every graph reads
    for entry in (f for f in manifest.files if f.path.endswith(".onnx")):
        graph = onnx.load(str(root / entry.path), load_external_data=False)
        for tensor in graph.graph.initializer:
            if tensor.data_location == onnx.TensorProto.EXTERNAL:
                where = {e.key: e.value for e in tensor.external_data}
                references.append((int(where.get("offset", 0)), int(where["length"])))
    distinct = sum(length for _, length in set(references))
    assert distinct <= weights <= distinct * 1.05  # each tensor once in weights.bin (plus alignment)
    assert sum(length for _, length in references) > 2 * weights  # read by segments, stages and full
    text = "good movie with a dull plot"
    fused = edgeinfer.load(root, policy=edgeinfer.Policy.off()).run(text)
    assert fused.trace.segments == ("full",)
    chained = edgeinfer.load(root, policy=edgeinfer.Policy(agreement=None, keep_schedule=((2, 1.0),),
                                                           importance="cls_attention")).run(text)
    assert chained.trace.segments[0] == "embed"
    np.testing.assert_allclose(fused.probabilities, chained.probabilities, atol=1e-5)
