"""The built-in default job: export all-MiniLM-L6-v2, probe it on this device, and bench it on a
bundled sample beside the plain baselines, ending with an HTML report."""

from __future__ import annotations

from pathlib import Path

from ..runtime.policy import Policy
from ..runtime.load import load
from .device_bench import BenchOptions, run_device_bench
from .report_files import write_json

DEMO_SENTENCES = Path(__file__).resolve().parent.parent / "data" / "demo_sentences.txt"


def run_demo(out_dir: Path, agreement: float = 0.99, force: bool = False, repeats: int = 3,
             cold_starts: int = 3) -> dict:
    """Writes out_dir/minilm.edge, out_dir/profile.json and out_dir/report/report.{html,md,json}."""
    from ..runtime.sessions import default_threads
    from ..targets.probe import probe
    from ..targets.profile import default_profile_path

    out_dir.mkdir(parents=True, exist_ok=True)
    package = out_dir / "minilm.edge"
    if force or not package.exists():
        from ..export.pipeline import ExportOptions, export_model

        export_model("minilm", package, ExportOptions(task="feature-extraction", force=True))
    profile = out_dir / "profile.json"
    measured = probe(package, quick=True).to_json()
    write_json(profile, measured)
    # also where load() and `edgeinfer run` find it for this device (profile="auto")
    write_json(default_profile_path(package.resolve(), "cpu", default_threads()), measured)
    session = load(package, policy=Policy(agreement=agreement, precision="fp32"), profile=profile)
    session.run("edge inference in a few milliseconds")  # the first call opens the graphs
    sample = session.run("edge inference in a few milliseconds")
    print(f"one adaptive run: exit after block {sample.trace.exit_after_block}, {sample.trace.total_ms:.2f} ms "
          f"(profile predicted {sample.trace.predicted_ms:.2f} ms)")
    options = BenchOptions(agreement=agreement, repeats=repeats, cold_start_runs=cold_starts, profile=str(profile))
    return run_device_bench(package, DEMO_SENTENCES, out_dir / "report", options)
