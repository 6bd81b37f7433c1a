"""Targets: a backend with an ordered list of execution providers, and whether this machine has it.

A target names what runs the graphs, not the hardware: `cpu` is onnxruntime's default provider,
`xnnpack` its XNNPACK provider (the mobile CPU kernels), and the accelerator targets need an
onnxruntime build that carries their provider (CUDA, CoreML, NNAPI, QNN, OpenVINO). Providers
after the first are onnxruntime's fallback for the operators the first cannot run. `litert-cpu` runs
a package's LiteRT graphs (`edgeinfer convert --to litert`) in the LiteRT interpreter, whose CPU
kernels are XNNPACK's; its "provider" is only a label for fingerprints and reports.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from ..errors import InputError


@dataclass(frozen=True)
class Target:
    name: str
    backend: str  # "onnxruntime" | "litert"
    providers: tuple[str, ...]
    description: str


TARGETS: tuple[Target, ...] = (
    Target("cpu", "onnxruntime", ("CPUExecutionProvider",), "onnxruntime's own CPU kernels"),
    Target("xnnpack", "onnxruntime", ("XnnpackExecutionProvider", "CPUExecutionProvider"),
           "XNNPACK CPU kernels (Android/iOS/ARM builds of onnxruntime)"),
    Target("cuda", "onnxruntime", ("CUDAExecutionProvider", "CPUExecutionProvider"), "NVIDIA GPU (onnxruntime-gpu)"),
    Target("coreml", "onnxruntime", ("CoreMLExecutionProvider", "CPUExecutionProvider"), "Apple Neural Engine/GPU (macOS, iOS)"),
    Target("nnapi", "onnxruntime", ("NnapiExecutionProvider", "CPUExecutionProvider"), "Android NNAPI"),
    Target("qnn", "onnxruntime", ("QNNExecutionProvider", "CPUExecutionProvider"), "Qualcomm NPU (onnxruntime-qnn)"),
    Target("openvino", "onnxruntime", ("OpenVINOExecutionProvider", "CPUExecutionProvider"),
           "Intel CPU/GPU/NPU (onnxruntime-openvino)"),
    Target("litert-cpu", "litert", ("LiteRT-XNNPACK",),
           "LiteRT interpreter (ai-edge-litert) on XNNPACK CPU kernels; packages converted with --to litert"),
)


@dataclass(frozen=True)
class Availability:
    target: Target
    usable: bool
    reason: str  # why not, or what it will use


def availability(target: Target) -> Availability:
    if target.backend == "litert":
        return _litert_availability(target)
    if importlib.util.find_spec("onnxruntime") is None:
        return Availability(target, False, "onnxruntime is not installed (pip install edgeinfer)")
    import onnxruntime

    present = set(onnxruntime.get_available_providers())
    first = target.providers[0]
    if first not in present:
        return Availability(target, False, f"this onnxruntime build ({onnxruntime.__version__}) has no {first}; "
                                           f"it has {', '.join(sorted(present))}")
    return Availability(target, True, f"{first} in onnxruntime {onnxruntime.__version__}")


def _litert_availability(target: Target) -> Availability:
    from ..runtime.litert_graphs import litert_library_version

    try:
        return Availability(target, True, litert_library_version())
    except ImportError:
        return Availability(target, False, "this environment has no LiteRT interpreter (pip install 'edgeinfer[litert]')")


def list_targets() -> list[Availability]:
    return [availability(t) for t in TARGETS]


def usable_target(name: str) -> Target:
    """The named target, or one line saying why this machine cannot use it."""
    known = {t.name: t for t in TARGETS}
    if name not in known:
        raise InputError(f"unknown target {name!r}; known targets: {', '.join(known)} (see `edgeinfer targets`)")
    found = availability(known[name])
    if not found.usable:
        raise InputError(f"target {name!r} is not usable here: {found.reason}; `edgeinfer targets` lists what is")
    return found.target
