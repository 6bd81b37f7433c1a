"""The restart figure: a cheap exit point, restarting (by resuming from its kept state) when
its confidence is low, beside the cheap point alone, the strong exit level and full depth.

    python -m edgeinfer.bench.studies.restart_cascade [--package ~/.cache/edgeinfer/bench/sst2-heads.edge]

The restart threshold is chosen on 500 sentence-like SST-2 train rows for 0.99 agreement; the
figures are on SST-2 dev (3 interleaved repeats).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ...export.calibration_data import read_examples
from ...runtime.policy import Policy
from ...runtime.load import load
from .runtime_bench import _edgeinfer, _measure, choose_restart_threshold
from .sst2_runtime import add_sst2_arguments

CHEAP_LEVEL = 0.95


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_sst2_arguments(parser)
    args = parser.parse_args(argv)
    package = Path(args.package)
    calibration = read_examples(Path(args.calib), None).split(500, 0, seed=2)[0]
    examples = read_examples(Path(args.data), None)
    texts, labels = list(examples.texts), np.array(examples.labels)
    threshold = choose_restart_threshold(package, list(calibration.texts), CHEAP_LEVEL, (), target=0.99)
    print(f"restart threshold (500 train sentences, cheap point exits@{CHEAP_LEVEL}, target 0.99): {threshold}")
    configurations = [_edgeinfer("full depth", load(package, policy=Policy.off())),
                      _edgeinfer(f"exits@{CHEAP_LEVEL}", load(package, policy=Policy(agreement=CHEAP_LEVEL, precision="fp32"))),
                      _edgeinfer(f"exits@{CHEAP_LEVEL}, restart below {threshold:.3f}",
                                 load(package, policy=Policy(agreement=CHEAP_LEVEL, restart_below=threshold))),
                      _edgeinfer("exits@0.99", load(package, policy=Policy(agreement=0.99, precision="fp32")))]
    measured = _measure(configurations, texts, 3, "restart cascade")
    reference = np.array([a[0] for a in measured["answers"]["full depth"]])
    base = np.mean(measured["times"]["full depth"])
    print("| configuration | accuracy | agreement | mean ms | vs full | mean depth | restarts |\n|---|---|---|---|---|---|---|")
    for c in configurations:
        answers = measured["answers"][c.name]
        predicted = np.array([a[0] for a in answers])
        times = measured["times"][c.name]
        print(f"| {c.name} | {np.mean(predicted == labels):.4f} | {np.mean(predicted == reference):.4f} | "
              f"{np.mean(times):.2f} | {np.mean(times) / base:.3f} | {np.mean([a[1] for a in answers]):.2f} | "
              f"{np.mean([a[4] > 0 for a in answers]):.1%} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
