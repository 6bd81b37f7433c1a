"""Choosing an operating point for a budget, among those `edgeinfer calibrate` stored in the package."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ...errors import InputError, PackageError
from ...manifest import Manifest, OperatingPoint, exact_level
from ..policy import Policy, variant_answers

DEFAULT_AGREEMENT = 0.99


def policy_of(point: OperatingPoint) -> Policy:
    fields = dict(point.policy)
    try:
        fields["keep_schedule"] = tuple((int(b), float(k)) for b, k in fields.get("keep_schedule", ()))
        fields["skip_blocks"] = tuple(int(b) for b in fields.get("skip_blocks", ()))
        return Policy(**fields)
    except (TypeError, ValueError, InputError) as err:
        raise PackageError(f"manifest: operating point {point.name!r} holds no valid policy ({err})") from None


def parse_auto(spec: str) -> float:
    """"auto" (agreement 0.99) or "auto:0.985"."""
    if spec != "auto" and not spec.startswith("auto:"):
        raise InputError(f"policy {spec!r} must be a Policy or 'auto[:AGREEMENT]'")
    _, _, level = spec.partition(":")
    try:
        agreement = float(level) if level else DEFAULT_AGREEMENT
    except ValueError:
        raise InputError(f"policy {spec!r} must be 'auto' or 'auto:AGREEMENT', e.g. auto:0.985") from None
    if not 0.5 <= agreement <= 1.0:
        raise InputError(f"policy {spec!r}: the agreement must be between 0.5 and 1.0")
    return agreement


def choose_point(manifest: Manifest, agreement: float, latency_ms: float | None = None,
                 full_ms: float | None = None) -> OperatingPoint:
    """The cheapest point whose calibrated agreement (its 95% lower bound) holds the level; with a latency budget and the
    full model's latency on this device, the most agreeing point predicted to fit instead, if the
    cheapest holding the level does not."""
    points = manifest.operating_points
    if not points:
        raise InputError("this package has no operating points; run `edgeinfer calibrate PKG --calib FILE` first")
    holding = [p for p in points if p.agreement_bound >= agreement]
    cheapest = min(holding, key=lambda p: p.relative_latency) if holding else None
    if latency_ms is None or full_ms is None:
        if cheapest is None:
            best = max(points, key=lambda p: p.agreement_bound)
            raise InputError(f"no operating point holds agreement {agreement}: the best calibrated holds "
                             f"{best.agreement_bound:.4f} at 95% confidence ({best.name}); ask for that or less, "
                             f"or calibrate on more texts")
        return cheapest
    if cheapest is not None and cheapest.relative_latency * full_ms <= latency_ms:
        return cheapest
    fitting = [p for p in points if p.relative_latency * full_ms <= latency_ms]
    if not fitting:
        fastest = min(points, key=lambda p: p.relative_latency)
        raise InputError(f"no operating point is predicted to fit {latency_ms:g} ms; the fastest ({fastest.name}) "
                         f"needs about {fastest.relative_latency * full_ms:.2f} ms")
    return max(fitting, key=lambda p: (p.agreement_bound, -p.relative_latency))


@dataclass(frozen=True)
class PrecisionChoice:
    """Which precision a policy asking for "auto" runs at, and the expected costs it compared
    (relative to the fp32 full model, from calibration: blocks run, restarts included)."""

    precision: str
    expected_cost: dict[str, float]


def choose_precision(manifest: Manifest, agreement: float | None, usable: Callable[[str], bool]) -> PrecisionChoice:
    """The precision whose calibrated cascade at this agreement level is expected to cost least.

    A variant's expected depth counts its own blocks and, for inputs it restarts, a pass of every
    variant block plus the fp32 full model; dividing by its speed-up over fp32 (measured when the
    variant was written, predicted for older packages) puts every candidate in fp32 full-model
    units. Only levels the package calibrated exactly take part: "auto" never substitutes a level.
    usable: whether the backend in use has a precision's graphs.
    """
    blocks = manifest.model.num_blocks
    costs: dict[str, float] = {}
    if agreement is None:
        return PrecisionChoice("fp32", costs)
    level = exact_level(manifest.exit_thresholds, agreement)
    costs["fp32"] = level.expected_mean_depth / blocks if level is not None else 1.0
    for variant in manifest.precision_variants:
        level = exact_level(variant.thresholds, agreement)
        if level is None or not usable(variant.name) or variant.speedup is None or not variant_answers(manifest, level) \
                or any(r.thresholds[-1] is None for r in level.ranges):  # a range would start at fp32
            continue
        costs[variant.name] = round(level.expected_mean_depth / blocks / variant.speedup, 4)
    costs["fp32"] = round(costs["fp32"], 4)
    return PrecisionChoice(min(costs, key=lambda name: (costs[name], name != "fp32")), costs)
