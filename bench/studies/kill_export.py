"""Atomicity: kill -9 an export at random moments; the output is the old package or none.

    python -m edgeinfer.bench.studies.kill_export [--runs 50] [--model minilm] [--report reports/atomicity]

Each run starts `edgeinfer export` in a fresh process and sends SIGKILL after a random delay up to
the time a whole export takes. Half the runs export over an existing package (which must survive
intact or be replaced whole), half into an empty place (which must stay empty or hold a whole
package). Whole means: `open_package` verifies every file against the manifest.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ...errors import PackageError
from ...progress import progress_bar
from ...runtime.package import open_package
from ..report_files import write_json


def _export_command(model: str, out: Path, extra: tuple[str, ...]) -> list[str]:
    return [sys.executable, "-m", "edgeinfer.cli", "export", model, "-o", str(out), "--force", *extra]


def _state(out: Path) -> str:
    if not out.exists():
        return "none"
    try:
        open_package(out)
        return "whole"
    except PackageError:
        return "BROKEN"


def kill_runs(model: str, runs: int, extra: tuple[str, ...] = (), seed: int = 0) -> dict:
    rng = random.Random(seed)
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="edgeinfer-kill-") as folder:
        root = Path(folder)
        reference = root / "reference.edge"
        started = time.perf_counter()
        subprocess.run(_export_command(model, reference, extra), check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        full_seconds = time.perf_counter() - started
        reference_manifest = (reference / "manifest.json").read_text()
        with progress_bar(runs, "kill -9 during export") as bar:
            for run in range(runs):
                out = root / f"run{run}.edge"
                over_existing = run % 2 == 0
                if over_existing:
                    shutil.copytree(reference, out)
                process = subprocess.Popen(_export_command(model, out, extra), stdout=subprocess.DEVNULL,
                                           stderr=subprocess.DEVNULL)
                delay = rng.uniform(0.0, full_seconds * 1.05)
                try:
                    process.wait(timeout=delay)
                    finished = True
                except subprocess.TimeoutExpired:
                    process.send_signal(signal.SIGKILL)
                    process.wait()
                    finished = False
                state = _state(out)
                same_as_before = state == "whole" and (out / "manifest.json").read_text() == reference_manifest
                outcomes.append({"run": run, "over_existing": over_existing, "killed_after_s": round(delay, 2),
                                 "finished_before_kill": finished, "state": state, "old_kept": same_as_before})
                bar.update()
    broken = [o for o in outcomes if o["state"] == "BROKEN"]
    return {"model": model, "runs": runs, "full_export_seconds": round(full_seconds, 1),
            "killed": sum(not o["finished_before_kill"] for o in outcomes), "broken": len(broken),
            "states": {s: sum(o["state"] == s for o in outcomes) for s in ("none", "whole", "BROKEN")},
            "outcomes": outcomes}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--report", default="reports/atomicity")
    args = parser.parse_args(argv)
    report = kill_runs(args.model, args.runs)
    out = Path(args.report)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "kill_export.json", report)
    print(json.dumps({k: v for k, v in report.items() if k != "outcomes"}))
    return 0 if report["broken"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
