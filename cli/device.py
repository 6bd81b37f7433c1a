"""The device: targets, probe, bench, demo, conformance vectors."""

from __future__ import annotations

import argparse
from pathlib import Path

from .inputs import keep_schedule


def add_commands(sub: argparse._SubParsersAction) -> None:
    targets = sub.add_parser("targets", help="list the targets this machine can run, and why the others cannot")
    targets.set_defaults(handler=_targets)

    probe = sub.add_parser("probe", help="measure every graph of a package on this device (a latency profile)")
    probe.add_argument("package", help="the edge package to measure")
    probe.add_argument("--target", default="cpu", help="target to measure (see `edgeinfer targets`)")
    probe.add_argument("-o", "--output", default=None,
                       help="profile file (default: the cache where `edgeinfer run` finds it for this device)")
    probe.add_argument("--quick", action="store_true", help="fewer token counts and rounds (under a minute)")
    probe.add_argument("--threads", type=int, default=None, help="intra-op threads (default: all cores, max 8)")
    probe.set_defaults(handler=_probe)

    bench = sub.add_parser("bench", help="baselines and operating points on this device, in one report (HTML, MD, JSON)")
    bench.add_argument("package", nargs="?", help="the edge package to bench (omit it with --merge)")
    bench.add_argument("--data", help="inputs: TSV (text[, label]) or one text per line")
    bench.add_argument("--target", default="cpu", help="where to run (see `edgeinfer targets`)")
    bench.add_argument("--budget-ms", type=float, default=None, help="also run with this latency budget (deadline)")
    bench.add_argument("--agreement", type=float, default=0.99, help="the stored agreement level the exit configurations run at (default 0.99)")
    bench.add_argument("--keep", default=None, help="pruning schedule of the pruned points, e.g. 2:0.7,4:0.5 "
                                                   "(default: 70%% after a third of the blocks, 50%% after two thirds)")
    bench.add_argument("--repeats", type=int, default=3, help="interleaved passes over the data")
    bench.add_argument("--cold-starts", type=int, default=5, help="fresh processes per configuration")
    bench.add_argument("--model", default=None, help="Hugging Face directory the package came from (baselines)")
    bench.add_argument("--no-baselines", action="store_true", help="edgeinfer's points only")
    bench.add_argument("--profile", default="auto", help="device profile (default: the stored one for this device)")
    bench.add_argument("--label", default=None, help="name of this device/backend in merged reports")
    bench.add_argument("--report", default="bench-report", help="folder for report.json, report.md, report.html")
    bench.add_argument("--merge", nargs="+", metavar="REPORT_JSON", help="merge reports from several devices instead")
    bench.set_defaults(handler=_bench)

    demo = sub.add_parser("demo", help="export all-MiniLM-L6-v2, probe it, bench it on a bundled sample, write an HTML report")
    demo.add_argument("--out", default="edgeinfer-demo", help="folder for the package and report")
    demo.add_argument("--agreement", type=float, default=0.99, help="the agreement level the demo benches (default 0.99)")
    demo.add_argument("--force", action="store_true", help="re-export even if the package exists")
    demo.set_defaults(handler=_demo)

    conformance = sub.add_parser("conformance", help="write test vectors another runtime (js/, or a binding of "
                                 "your own) must reproduce on this package")
    conformance.add_argument("package", help="the edge package")
    conformance.add_argument("-o", "--output", required=True, help="folder for vectors.json")
    conformance.add_argument("--texts", default=None, help="inputs, one per line (default: the bundled sample)")
    conformance.add_argument("--limit", type=int, default=64, help="inputs to use (default 64)")
    conformance.set_defaults(handler=_conformance)


def _targets(args: argparse.Namespace) -> int:
    from ..targets.catalog import list_targets

    found_all = list_targets()
    width = max(len(found.target.name) for found in found_all)
    for found in found_all:
        mark = "usable " if found.usable else "missing"
        print(f"{found.target.name:<{width}} {mark}  {found.target.description}: {found.reason}")
    return 0


def _probe(args: argparse.Namespace) -> int:
    from ..runtime.sessions import default_threads
    from ..targets.probe import probe
    from ..targets.profile import default_profile_path
    from ..bench.report_files import write_json

    profile = probe(Path(args.package), target=args.target, quick=args.quick, threads=args.threads)
    # stored where load() and `run` look for it, and also at -o when asked
    stored = default_profile_path(Path(args.package).resolve(), profile.target, args.threads or default_threads())
    write_json(stored, profile.to_json())
    out = Path(args.output) if args.output else stored
    if out != stored:
        write_json(out, profile.to_json())
    batch1 = [c for c in profile.costs if c.batch == 1 and c.precision == "fp32"]
    for cost in batch1:
        cells = ", ".join(f"{t}: {m:.3f}" for t, m in zip(cost.tokens, cost.median_ms))
        print(f"{cost.segment:<11} {cost.model:<6} ms by tokens  {cells}")
    print(f"overhead per request {profile.overhead_fixed_ms:.3f} ms + {profile.overhead_per_call_ms:.3f} ms per call")
    print(f"profile: {out}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from ..errors import InputError

    report_dir = Path(args.report)
    if args.merge:
        from ..bench.merge import merge_reports

        merge_reports([Path(p) for p in args.merge], report_dir)
    else:
        from ..bench.device_bench import BenchOptions, run_device_bench

        if not args.package or not args.data:
            raise InputError("bench needs a package and --data FILE (or --merge A/report.json B/report.json)")
        keep = keep_schedule(args.keep) if args.keep is not None else None
        options = BenchOptions(agreement=args.agreement, keep_schedule=keep, budget_ms=args.budget_ms,
                               repeats=args.repeats, target=args.target, profile=args.profile, model_dir=args.model,
                               baselines=not args.no_baselines, label=args.label, cold_start_runs=args.cold_starts)
        run_device_bench(Path(args.package), Path(args.data), report_dir, options)
    print((report_dir / "report.md").read_text(encoding="utf-8"))
    print(f"report: {report_dir / 'report.html'} (and report.json, report.md)")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from ..bench.demo import run_demo

    out = Path(args.out)
    run_demo(out, agreement=args.agreement, force=args.force)
    print((out / "report" / "report.md").read_text(encoding="utf-8"))
    print(f"package: {out / 'minilm.edge'}\nprofile: {out / 'profile.json'}\n"
          f"report:  {(out / 'report' / 'report.html').resolve()} (and report.md, report.json)")
    return 0


def _conformance(args: argparse.Namespace) -> int:
    from ..targets.conformance import write_vectors

    texts = None
    if args.texts:
        path = Path(args.texts)
        if not path.is_file():
            from ..errors import InputError

            raise InputError(f"{path} does not exist; pass a text file with one input per line")
        texts = [line for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    written = write_vectors(Path(args.package), Path(args.output), texts, args.limit)
    print(f"conformance vectors: {written}")
    return 0
