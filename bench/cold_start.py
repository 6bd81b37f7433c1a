"""Cold start and peak memory of one configuration, each in a fresh process.

A child process times import + load + first result from its own first line (interpreter start-up
is not counted: it is the same for every configuration), then answers the remaining texts and
reports its peak resident memory (VmHWM, read from /proc: the kernel's ru_maxrss would also count
pages the child shared with the benchmark process before exec).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

_CHILD = r"""
import time
started = time.perf_counter()
import json, sys
spec = json.loads(sys.argv[1])
texts = spec["texts"]
if spec["kind"] == "edgeinfer":
    import edgeinfer
    policy = dict(spec["policy"])
    policy["keep_schedule"] = tuple(tuple(k) for k in policy.get("keep_schedule", ()))
    session = edgeinfer.load(spec["package"], policy=edgeinfer.Policy(**policy), target=spec.get("target", "cpu"),
                             budget=edgeinfer.Budget(**spec["budget"]), profile=spec["profile"])
    answer = session.run
elif spec["kind"] == "onnxruntime":
    import numpy as np, onnxruntime as ort
    from tokenizers import Tokenizer
    tokenizer = Tokenizer.from_file(spec["tokenizer"])
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=spec["max_length"])
    options = ort.SessionOptions()
    options.intra_op_num_threads = spec["threads"]
    options.log_severity_level = 3
    graph = ort.InferenceSession(spec["model"], options, providers=["CPUExecutionProvider"])
    names = [i.name for i in graph.get_inputs()]
    def answer(text):
        e = tokenizer.encode(text)
        feeds = {"input_ids": np.array([e.ids], np.int64), "attention_mask": np.array([e.attention_mask], np.int64),
                 "token_type_ids": np.array([e.type_ids], np.int64)}
        return graph.run(None, {k: feeds[k] for k in names})
else:
    import torch
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer
    torch.set_num_threads(spec["threads"])
    loader = AutoModelForSequenceClassification if spec["task"] == "text-classification" else AutoModel
    model = loader.from_pretrained(spec["model"]).eval()
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    def answer(text):
        with torch.no_grad():
            return model(**tokenizer(text, return_tensors="pt", truncation=True, max_length=spec["max_length"]))
answer(texts[0])
first = time.perf_counter() - started
for text in texts[1:]:
    answer(text)
peak = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print("COLD_START " + json.dumps({"cold_start_ms": first * 1000, "peak_rss_mb": int(peak.split()[1]) / 1024}))
"""


def cold_start(spec: dict, texts: list[str], runs: int = 5) -> dict:
    """Median cold start (ms) and peak RSS (MB) over `runs` fresh processes answering `texts`."""
    starts, peaks = [], []
    for _ in range(runs):
        done = subprocess.run([sys.executable, "-c", _CHILD, json.dumps({**spec, "texts": texts})],
                              capture_output=True, text=True)
        lines = [line for line in done.stdout.splitlines() if line.startswith("COLD_START ")]
        if done.returncode != 0 or not lines:
            return {"error": (done.stderr.strip().splitlines() or ["no output"])[-1][:200]}
        measured = json.loads(lines[-1].split(" ", 1)[1])
        starts.append(measured["cold_start_ms"])
        peaks.append(measured["peak_rss_mb"])
    return {"processes": runs, "inputs_per_process": len(texts),
            "cold_start_ms_median": round(float(np.median(starts)), 2),
            "cold_start_ms_all": [round(s, 2) for s in starts],
            "peak_rss_mb_median": round(float(np.median(peaks)), 1)}


def edgeinfer_spec(package: Path, policy: dict, budget: dict, profile: str | None, target: str = "cpu") -> dict:
    return {"kind": "edgeinfer", "package": str(package), "policy": policy, "budget": budget, "profile": profile,
            "target": target}


def onnxruntime_spec(model: Path, tokenizer: Path, max_length: int, threads: int) -> dict:
    return {"kind": "onnxruntime", "model": str(model), "tokenizer": str(tokenizer), "max_length": max_length,
            "threads": threads}


def torch_spec(model_dir: Path, task: str, max_length: int, threads: int) -> dict:
    return {"kind": "torch", "model": str(model_dir), "task": task, "max_length": max_length, "threads": threads}
