"""A device fingerprint: the facts that change measured latencies."""

from __future__ import annotations

import hashlib
import json
import os
import platform
from functools import lru_cache


@lru_cache(maxsize=1)  # read once per process: load() and the graph cache both ask
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@lru_cache(maxsize=1)
def cpu_flags() -> tuple[str, ...]:
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "fma", "f16c", "neon", "asimd")
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith(("flags", "Features")):
                    present = set(line.split(":", 1)[1].split())
                    return tuple(f for f in wanted if f in present)
    except OSError:
        pass
    return ()


def device_fingerprint(threads: int, provider: str = "CPUExecutionProvider") -> dict[str, object]:
    import onnxruntime

    found = {"cpu": cpu_model(), "cores": os.cpu_count(), "isa": list(cpu_flags()),
             "os": f"{platform.system()} {platform.machine()}", "onnxruntime": onnxruntime.__version__,
             "provider": provider, "threads": threads}
    if provider.startswith("LiteRT"):
        from ..runtime.litert_graphs import litert_library_version

        found["litert"] = litert_library_version()
    return found


def fingerprint_key(fingerprint: dict[str, object]) -> str:
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:12]
