"""kill -9 during an export leaves the old package or none, never a damaged one.

The benchmark `python -m edgeinfer.bench.studies.kill_export` runs 50 interruptions on MiniLM; this test
runs a few on a tiny model so CI keeps the property checked.
"""

from __future__ import annotations

from edgeinfer.bench.studies.kill_export import kill_runs


def test_killed_exports_leave_old_package_or_none(tiny_models, tiny_calibration):
    model = tiny_models[("bert", "text-classification")]
    report = kill_runs(str(model), runs=4, seed=1,
                       extra=("--task", "text-classification", "--calib", str(tiny_calibration), "--max-length", "64",
                              "--train-exits", "heads", "--exit-head", "pooler", "--no-quant"))
    assert report["broken"] == 0, report["outcomes"]
    assert report["killed"] >= 1
