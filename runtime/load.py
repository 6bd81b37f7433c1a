"""load(): open a package and hand it to the runtime that runs its kind.

Encoders with exits run in encoder/session.py; whole-model packages (encoder/whole_model.py) and
text generation (decoder/generation.py) are imported only when a package needs them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import InputError
from ..targets.catalog import usable_target
from ..targets.profile import Profile, find_profile
from . import arguments
from .encoder.planner import choose_point, parse_auto, policy_of
from .encoder.session import EdgeSession
from .optimized_graphs import enabled
from .package import open_package
from .policy import Budget, Policy
from .sessions import threads_in_use

if TYPE_CHECKING:
    from .decoder.generation import DecoderSession
    from .encoder.whole_model import WholeModelSession


def load(package: str | os.PathLike[str], target: str = "cpu", budget: Budget = Budget(),
         policy: Policy | str = Policy(), threads: int | None = None, verify_key: object = None,
         profile: str | os.PathLike[str] | None = "auto", optimized_cache: bool = True
         ) -> "EdgeSession | DecoderSession | WholeModelSession":
    """Open and verify a package, ready to run on a target (`edgeinfer targets` lists them).

    A text-generation package opens as a DecoderSession (runtime/decoder/generation.py: `generate()`), with
    budget.memory_mb as the cap on its KV cache; a whole-model package (one graph, exported through
    Optimum) as a WholeModelSession (runtime/encoder/whole_model.py).

    verify_key (an Ed25519 public key: PEM path or bytes) refuses packages not signed by it.
    profile: "auto" uses the profile `edgeinfer probe` stored for this package on this device, if
    any; a path uses that file (with a warning when it was measured elsewhere); None uses none.
    policy: a Policy, or "auto" / "auto:0.985": the operating point `edgeinfer calibrate` stored
    that is cheapest at that agreement (0.99 by default), or, with budget.latency_ms, the most
    agreeing point the device profile predicts to fit (session.operating_point names it).
    optimized_cache: keep each graph as onnxruntime optimized it on this device in the user cache
    (runtime/optimized_graphs.py), so later processes start faster at the cost of disk.
    """
    package = arguments.path("package", package)
    if threads is not None:
        arguments.whole("threads", threads, 1, arguments.max_threads())
    if not isinstance(policy, (Policy, str)):
        raise InputError(f"policy takes an edgeinfer.Policy or 'auto[:AGREEMENT]', not {type(policy).__name__}")
    if not isinstance(budget, Budget):
        raise InputError(f"budget takes an edgeinfer.Budget (e.g. Budget(latency_ms=5)), not {type(budget).__name__}")
    if profile is not None and profile != "auto":
        profile = arguments.path("profile", profile)
    if not isinstance(target, str):
        raise InputError(f"target takes a target name such as 'cpu' (see `edgeinfer targets`), not {target!r}")
    chosen = usable_target(target)
    opened = open_package(package, verify_key=verify_key)
    if chosen.backend == "litert" and opened.manifest.litert is None:
        raise InputError(f"{Path(package).name} has no LiteRT graphs; add them with "
                         f"`edgeinfer convert {package} --to litert` (or export with --formats onnx,litert)")
    if opened.manifest.model.task == "text-generation":
        from .decoder.generation import DecoderSession

        return DecoderSession(opened, threads, chosen.providers, memory_mb=budget.memory_mb)
    found = find_profile(opened.root, chosen.name, threads_in_use(threads),
                         None if profile == "auto" else profile) if profile is not None else None
    if opened.manifest.is_whole:
        from .encoder.whole_model import WholeModelSession

        if isinstance(policy, str):  # no operating points to choose between: the whole model at that level
            policy = Policy(agreement=parse_auto(policy))
        return WholeModelSession(opened, policy, budget, threads, chosen.providers, found, enabled(optimized_cache))
    point = None
    if isinstance(policy, str):
        point = _auto_point(opened.manifest, policy, budget, found)
        policy = policy_of(point)
    session = EdgeSession(opened, policy, budget, threads, chosen.providers, found, enabled(optimized_cache),
                          backend=chosen.backend)
    session.operating_point = point
    return session


def _auto_point(manifest, spec: str, budget: Budget, profile: Profile | None):
    agreement = parse_auto(spec)  # one line for what is not 'auto[:AGREEMENT]'
    full_ms = None
    if budget.latency_ms is not None:
        record = manifest.calibration.get("operating_points", {})
        full = manifest.full_depth()
        if profile is not None and full is not None:
            full_ms = profile.predict_ms(full.name, "fp32", int(record.get("mean_tokens", 32)))
        full_ms = full_ms or record.get("full_model_ms")
    return choose_point(manifest, agreement, budget.latency_ms, full_ms)
