"""Does the stated agreement hold on traffic the calibration never saw, with and without the audit?

A package calibrated on one kind of text (SST-2's training phrases, the default path) serves a
stream of another (SST-2 dev sentences), three passes in a fresh order each, in one process. Per
pass and configuration: the realised agreement with the package's full model against the stated
level, the accuracy against the labels (and the original model's), and the mean latency against
a monolithic fp32 onnxruntime session. Configurations take turns input by input; the audited one's
background full-depth runs slow whatever runs next on this machine's cores, so its cost is counted
in every configuration's latency, its own included, and each pass ends by waiting for its queue.

    python -m edgeinfer.bench.studies.audit_stream PKG --data DEV.tsv [--model HF_DIR] [--agreement 0.99]
        [--audit 0.05] [--passes 3] [--out reports/audit]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from ...export.calibration_data import read_examples
from ...runtime.policy import Policy
from ...runtime.load import load
from ..baselines import MonolithicModel, export_monolithic
from ..timing import latency_summary


def run_stream(package: Path, data: Path, model_dir: str | None, agreement: float, audit: float, passes: int,
               seed: int = 0, precision: str = "auto") -> dict:
    """precision: "auto" (what load(package) runs: the cheapest calibrated cascade), or a name."""
    off = load(package, policy=Policy.off())
    examples = read_examples(data, off.manifest.model.labels)
    texts, labels = list(examples.texts), np.array(examples.labels) if examples.labels is not None else None
    reference = np.array([r.probabilities.argmax() for r in off.run(texts)])
    plain = load(package, policy=Policy(agreement=agreement, precision=precision))
    audited = load(package, policy=Policy(agreement=agreement, audit=audit, precision=precision))
    sessions = {f"exits@{agreement} ({plain.precision})": plain,
                f"exits@{agreement} ({audited.precision}), audit {audit:g}": audited}
    with tempfile.TemporaryDirectory() as tmp:
        monolithic = MonolithicModel(export_monolithic(model_dir or off.manifest.model.source,
                                                       off.manifest.model.task, Path(tmp) / "model.onnx"))
        original = np.array([monolithic.run(off.encoder.encode([t])).argmax() for t in texts])
        rng = np.random.default_rng(seed)
        report = {"package": str(package), "data": str(data), "inputs": len(texts), "agreement": agreement,
                  "audit": audit, "stated": off.manifest.calibration.get("thresholds", {}).get("guarantee", {}).get(
                      str(off.manifest.thresholds_for(agreement).agreement)),
                  "original_accuracy": None if labels is None else round(float((original == labels).mean()), 4),
                  "passes": []}
        for number in range(1, passes + 1):
            order = rng.permutation(len(texts))
            times: dict[str, list[float]] = {"monolithic fp32": [], **{name: [] for name in sessions}}
            answers: dict[str, list[int]] = {name: [] for name in sessions}
            levels: list[float | None] = []
            for i in order:
                encoded = off.encoder.encode([texts[i]])
                t0 = time.perf_counter()
                monolithic.run(encoded)
                times["monolithic fp32"].append((time.perf_counter() - t0) * 1000)
                for name, session in sessions.items():
                    t0 = time.perf_counter()
                    result = session.run(texts[i])
                    times[name].append((time.perf_counter() - t0) * 1000)
                    answers[name].append(int(result.probabilities.argmax()))
                levels.append(audited.level.agreement if audited.level else None)
            audited.auditor.wait()
            base = float(np.mean(times["monolithic fp32"]))
            entry = {"pass": number, "monolithic_ms": latency_summary(times["monolithic fp32"]), "configurations": {}}
            for name in sessions:
                chosen = np.array(answers[name])
                entry["configurations"][name] = {
                    "agreement_with_full": round(float((chosen == reference[order]).mean()), 4),
                    "accuracy": None if labels is None else round(float((chosen == labels[order]).mean()), 4),
                    **latency_summary(times[name]), "vs_monolithic": round(float(np.mean(times[name])) / base, 4)}
            state = audited.auditor.state
            entry["audit"] = {"level_in_force_at_end": levels[-1], "audits_at_level": state.samples,
                              "disagreements_at_level": state.disagreements, "adjustments": list(state.adjustments),
                              "dropped": state.dropped}
            report["passes"].append(entry)
            print(f"pass {number}: " + "; ".join(
                f"{name} agreement {c['agreement_with_full']:.4f}, {c['vs_monolithic']:.3f}x"
                for name, c in entry["configurations"].items()) + f"; level in force {levels[-1]}", flush=True)
    whole = {name: round(float(np.mean([p["configurations"][name]["agreement_with_full"] for p in report["passes"]])), 4)
             for name in sessions}
    report["stream_agreement"] = whole
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("package", type=Path)
    parser.add_argument("--data", type=Path, required=True, help="the stream's texts (TSV, labels optional)")
    parser.add_argument("--model", default=None, help="the source model folder, for the monolithic baseline")
    parser.add_argument("--agreement", type=float, default=0.99, help="the stated level (default 0.99)")
    parser.add_argument("--audit", type=float, default=0.05, help="share of requests audited (default 0.05)")
    parser.add_argument("--passes", type=int, default=3, help="passes through the data (default 3)")
    parser.add_argument("--precision", default="auto", help="precision to run first (default auto, as load() does)")
    parser.add_argument("--out", type=Path, default=Path("reports/audit"), help="folder for audit_stream.json")
    args = parser.parse_args(argv)
    # a fresh audit state: the stream starts with no history (this process only)
    os.environ["EDGEINFER_CACHE"] = tempfile.mkdtemp(prefix="edgeinfer-audit-")
    report = run_stream(args.package, args.data, args.model, args.agreement, args.audit, args.passes,
                        precision=args.precision)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "audit_stream.json").write_text(json.dumps(report, indent=2))
    print(f"stated: {report['stated']}; stream agreement: {report['stream_agreement']}")


if __name__ == "__main__":
    main()
