"""A device profile: what each graph of a package costs on one device, measured there by the probe.

The runtime reads it to predict a request's latency before and while running it (the deadline
guard, the trace's predicted_ms). Costs are kept as measured medians and p90s per token count and
batch size, and as a line (fixed + per token) where a line fits the medians within 5%; otherwise
predictions interpolate the table. A block's cost on a CPU is close to linear in tokens up to a
few hundred (docs/platform-facts.md), but the smallest counts sit on a floor of per-call costs, which
is why the table stays the reference.

Reading a profile needs json and numpy only: the runtime may import this module.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import PackageError
from ..runtime.user_cache import cache_root
from .fingerprint import device_fingerprint, fingerprint_key

PROFILE_FORMAT = "edgeinfer.profile"
LINE_FITS_WITHIN = 0.05


class ProfileWarning(UserWarning):
    """A profile that does not describe this device: its predictions may be off."""


@dataclass(frozen=True)
class SegmentCost:
    segment: str
    precision: str
    batch: int
    tokens: tuple[int, ...]
    median_ms: tuple[float, ...]
    p90_ms: tuple[float, ...]
    fixed_ms: float
    per_token_ms: float
    model: str  # "linear" or "table"

    def predict(self, tokens: int, tail: bool = False) -> float:
        """Median (or p90 with tail=True) milliseconds at a token count."""
        if self.model == "linear":
            ratio = float(np.interp(tokens, self.tokens, np.array(self.p90_ms) / np.array(self.median_ms))) if tail else 1.0
            return (self.fixed_ms + self.per_token_ms * tokens) * ratio
        beyond = max(tokens - self.tokens[-1], 0) * self.per_token_ms
        return float(np.interp(tokens, self.tokens, self.p90_ms if tail else self.median_ms)) + beyond


def fit_cost(segment: str, precision: str, batch: int, tokens: list[int], samples: list[list[float]]) -> SegmentCost:
    """Medians and p90s per token count; a least-squares line, kept when it fits every median."""
    medians = np.array([float(np.median(s)) for s in samples])
    tails = np.array([float(np.percentile(s, 90)) for s in samples])
    x = np.array(tokens, dtype=float)
    per_token, fixed = np.polyfit(x, medians, 1) if len(x) > 1 else (0.0, medians[0])
    per_token = max(float(per_token), 0.0)
    fitted = fixed + per_token * x
    fits = bool(np.all(np.abs(fitted - medians) <= LINE_FITS_WITHIN * medians))
    return SegmentCost(segment, precision, batch, tuple(tokens), tuple(round(float(m), 5) for m in medians),
                       tuple(round(float(t), 5) for t in tails), round(float(fixed), 5), round(per_token, 6),
                       "linear" if fits else "table")


@dataclass(frozen=True)
class Profile:
    package_id: str
    target: str
    fingerprint: dict
    created: str
    warmup_rounds: int
    rounds: int
    costs: tuple[SegmentCost, ...]
    overhead_fixed_ms: float  # per request: tokenizing, numpy hand-offs, decisions
    overhead_per_call_ms: float  # per graph call, beyond the call's own time
    sessions: dict  # graph name -> {"load_ms", "rss_mb"}
    notes: dict

    @property
    def key(self) -> str:
        return f"{self.target}-{fingerprint_key(self.fingerprint)}"

    def cost(self, segment: str, precision: str = "fp32", batch: int = 1) -> SegmentCost | None:
        matches = [c for c in self.costs if c.segment == segment and c.precision == precision]
        if not matches:
            return None
        return min(matches, key=lambda c: (abs(c.batch - batch), c.batch))

    def predict_ms(self, segment: str, precision: str, tokens: int, batch: int = 1, tail: bool = False) -> float | None:
        cost = self.cost(segment, precision, batch)
        if cost is None:
            return None
        return cost.predict(tokens, tail) * (batch / cost.batch if batch != cost.batch else 1.0)

    def overhead_ms(self, calls: int) -> float:
        return self.overhead_fixed_ms + self.overhead_per_call_ms * calls

    def to_json(self) -> dict:
        return {"format": PROFILE_FORMAT, **asdict(self)}


def manifest_digest(package_root: Path) -> str:
    """A package build's identity: the sha256 of its manifest, which lists every file's sha256."""
    return hashlib.sha256((package_root / "manifest.json").read_bytes()).hexdigest()


def package_id(package_root: Path) -> str:
    """Profiles belong to one package build: its manifest digest, shortened for file names."""
    return manifest_digest(package_root)[:16]


def profile_dir() -> Path:
    return cache_root() / "profiles"


def default_profile_path(package_root: Path, target: str, threads: int) -> Path:
    """Where the probe stores, and load() finds, this package's profile for this device."""
    key = fingerprint_key(device_fingerprint(threads, _first_provider(target)))
    return profile_dir() / package_id(package_root) / f"{target}-{key}.json"


def _first_provider(target: str) -> str:
    from .catalog import TARGETS

    return next((t.providers[0] for t in TARGETS if t.name == target), "CPUExecutionProvider")


def read_profile(path: Path) -> Profile:
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise PackageError(f"profile {str(path)!r} cannot be read ({type(err).__name__}); run `edgeinfer probe` again") from None
    if not isinstance(document, dict) or document.get("format") != PROFILE_FORMAT:
        raise PackageError(f"{str(path)!r} is not an edgeinfer profile; make one with `edgeinfer probe PKG -o {str(path)!r}`")
    try:
        costs = tuple(SegmentCost(**{**c, "tokens": tuple(c["tokens"]), "median_ms": tuple(c["median_ms"]),
                                     "p90_ms": tuple(c["p90_ms"])}) for c in document["costs"])
        fields = {k: document[k] for k in ("package_id", "target", "fingerprint", "created", "warmup_rounds", "rounds",
                                           "overhead_fixed_ms", "overhead_per_call_ms", "sessions", "notes")}
        return Profile(costs=costs, **fields)
    except (KeyError, TypeError) as err:
        raise PackageError(f"profile {str(path)!r} is malformed ({type(err).__name__}: {err}); run `edgeinfer probe` again") from None


def find_profile(package_root: Path, target: str, threads: int, explicit: str | os.PathLike[str] | None) -> Profile | None:
    """The profile to plan with: the one passed, else the one the probe stored for this device.

    One measured elsewhere (another CPU, thread count, onnxruntime or provider) or for another build
    of the package still loads, with a warning, since a rough prediction beats none.
    """
    path = Path(explicit) if explicit is not None else default_profile_path(package_root, target, threads)
    if explicit is None and not path.is_file():
        return None
    profile = read_profile(path)
    here = device_fingerprint(threads, _first_provider(target))
    if fingerprint_key(profile.fingerprint) != fingerprint_key(here):
        differing = sorted(k for k in here if profile.fingerprint.get(k) != here[k])
        warnings.warn(f"profile {str(path)!r} was measured on another device ({', '.join(differing)} differ); "
                      f"its predictions may be off: run `edgeinfer probe` on this device", ProfileWarning, stacklevel=3)
    elif profile.package_id != package_id(package_root):
        warnings.warn(f"profile {str(path)!r} was measured for another build of this package; "
                      f"run `edgeinfer probe` again", ProfileWarning, stacklevel=3)
    return profile
