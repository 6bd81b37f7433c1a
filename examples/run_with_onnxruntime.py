"""Run an edge package at full depth with onnxruntime, numpy and tokenizers alone.

This file does not import edgeinfer: it follows docs/manifest.md, as an app in another language
would with its own onnxruntime binding.

    python examples/run_with_onnxruntime.py PACKAGE "some text"

prints the full-depth output (class probabilities, or the embedding) as JSON.
"""

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer


def main(package_dir: str, text: str) -> dict:
    root = Path(package_dir)
    manifest = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
    if manifest.get("format") != "edgeinfer.package" or not manifest["schema_version"].startswith("1."):
        raise SystemExit("not an edge package of schema 1.x")
    for entry in manifest["files"]:  # refuse damaged files before loading any graph
        if hashlib.sha256((root / entry["path"]).read_bytes()).hexdigest() != entry["sha256"]:
            raise SystemExit(f"{entry['path']} fails its checksum")

    spec = manifest["tokenizer"]
    tokenizer = Tokenizer.from_file(str(root / spec["path"]))
    tokenizer.no_padding()  # the runtime pads itself; tokenizer.json may carry a fixed padding
    tokenizer.enable_truncation(max_length=spec["max_length"])
    encoding = tokenizer.encode(text)
    feeds = {
        "input_ids": np.array([encoding.ids], dtype=np.int64),
        "token_type_ids": np.array([encoding.type_ids], dtype=np.int64),
    }

    def graph_of(segment):
        fp32 = next(v for v in segment["variants"] if v["precision"] == "fp32")
        return ort.InferenceSession(str(root / fp32["path"]), providers=["CPUExecutionProvider"])

    def run(segment, values):
        return graph_of(segment).run(None, {name: values[name] for name in segment["inputs"]})[0]

    segments = manifest["segments"]
    embed = next(s for s in segments if s["kind"] == "embed")
    blocks = sorted((s for s in segments if s["kind"] == "block"), key=lambda s: s["index"])
    head = next(s for s in segments if s["kind"] == "head")

    hidden = run(embed, feeds)
    # attention_bias: 0 for every real token (no padding in a batch of one)
    bias = np.zeros(feeds["input_ids"].shape, dtype=np.float32)
    for block in blocks:
        hidden = run(block, {"hidden": hidden, "attention_bias": bias})
    output = run(head, {"hidden": hidden, "attention_bias": bias})[0]

    model = manifest["model"]
    if model["task"] == "text-classification":
        probabilities = np.exp(output - output.max())
        probabilities /= probabilities.sum()
        return {"label": model["labels"][int(probabilities.argmax())],
                "probabilities": [float(p) for p in probabilities]}
    return {"embedding": [float(x) for x in output]}


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    print(json.dumps(main(sys.argv[1], sys.argv[2])))
