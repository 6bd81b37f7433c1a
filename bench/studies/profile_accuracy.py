"""Device-profile figures: two probes in a row agree per segment, and the profile predicts the
measured per-request latency of the SST-2 package's operating points.

    python -m edgeinfer.bench.studies.profile_accuracy PACKAGE --data ../shared/data/sst2/dev.tsv [--report DIR]

Operating points: exits at every calibrated agreement level, with and without pruning, at every
precision the package has. Each point answers every input, interleaved input by input across
points after warm-up, as in the benchmarks (bench/interleaved.py); a request's error is
|predicted - measured| / measured, with measured the wall time of `session.run` and predicted
the profile's sum over the graphs the request called plus the runtime's per-request overhead
(trace.predicted_ms).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ...export.calibration_data import read_examples
from ...runtime.policy import Policy
from ...runtime.load import load
from ...targets.probe import consistency, probe
from ..interleaved import Named, measure_interleaved
from ..report_files import write_atomically, write_json

SCHEDULES = ((), ((2, 0.7), (4, 0.5)), ((1, 0.8), (3, 0.6)))


def operating_points(package: Path) -> dict[str, Policy]:
    manifest = load(package, policy=Policy.off(), profile=None).manifest
    points = {"full depth (fused)": Policy.off()}
    precisions = ["fp32", *(v.name for v in manifest.precision_variants)]
    for precision in precisions:
        for level in [t.agreement for t in manifest.exit_thresholds]:
            for schedule in SCHEDULES:
                name = f"{precision} exits@{level}" + (" prune " + ",".join(f"{b}:{k}" for b, k in schedule) if schedule else "")
                points[name] = Policy(agreement=level, keep_schedule=schedule, precision=precision)
    return points


def run(package: Path, data: Path, report_dir: Path, quick: bool) -> dict:
    first = probe(package, quick=quick)
    second = probe(package, quick=quick)
    rows = consistency(first, second)
    profile_path = report_dir / "profile.json"
    write_json(profile_path, first.to_json())
    write_json(report_dir / "profile_second.json", second.to_json())
    texts = list(read_examples(data, None).texts)
    sessions = {name: load(package, policy=policy, profile=profile_path) for name, policy in operating_points(package).items()}
    results, measured = measure_interleaved([Named(name, session.run) for name, session in sessions.items()],
                                            texts, repeats=1, desc="operating points")
    errors = {name: [abs(r.trace.predicted_ms - wall) / wall for r, wall in zip(results[name], measured[name])]
              for name in sessions}
    points = [{"point": name, "median_abs_error": round(float(np.median(errors[name])), 4),
               "mean_measured_ms": round(float(np.mean(measured[name])), 4)} for name in sessions]
    within = [p for p in points if p["median_abs_error"] <= 0.10]
    report = {"package": str(package), "data": str(data), "inputs": len(texts), "probe_mode": "quick" if quick else "full",
              "probe_rounds": first.rounds, "consistency": rows,
              "segments_within_10pct": sum(r["max_relative_difference"] <= 0.10 for r in rows),
              "segments": len(rows), "points": points,
              "share_of_points_within_10pct": round(len(within) / len(points), 4)}
    write_json(report_dir / "profile_accuracy.json", report)
    write_atomically(report_dir / "profile_accuracy.md", markdown(report))
    return report


def markdown(report: dict) -> str:
    lines = [f"# Profile accuracy: {Path(report['package']).name}", "",
             f"Two {report['probe_mode']} probes in a row ({report['probe_rounds']} rounds each): "
             f"{report['segments_within_10pct']} of {report['segments']} (segment, precision) costs agree within 10% "
             f"at every token count.", "",
             "| segment | precision | batch | probe 1 ms (by tokens) | probe 2 ms | max rel. difference |",
             "|---|---|---|---|---|---|"]
    for r in report["consistency"]:
        lines.append(f"| {r['segment']} | {r['precision']} | {r['batch']} | {' '.join(f'{x:.3f}' for x in r['first_ms'])} | "
                     f"{' '.join(f'{x:.3f}' for x in r['second_ms'])} | {r['max_relative_difference']:.1%} |")
    lines += ["", f"Per-request prediction on {report['inputs']} inputs: "
                  f"{report['share_of_points_within_10pct']:.0%} of {len(report['points'])} operating points have a median "
                  f"absolute error within 10%.", "", "| operating point | mean measured ms | median abs error |", "|---|---|---|"]
    for p in report["points"]:
        lines.append(f"| {p['point']} | {p['mean_measured_ms']:.2f} | {p['median_abs_error']:.1%} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package")
    parser.add_argument("--data", required=True)
    parser.add_argument("--report", default="reports/profile")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    report = run(Path(args.package), Path(args.data), Path(args.report), args.quick)
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
