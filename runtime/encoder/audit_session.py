"""How an EdgeSession audits itself: the persistent state's key, what counts as agreeing, and which
level comes next when the one in force is not held (runtime/audit.py has the test itself)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ...targets.fingerprint import device_fingerprint, fingerprint_key
from ...targets.profile import package_id
from ..audit import AuditState, Auditor, read_state, state_path
from ..policy import cosine, embedding_agreement_cosine
from ..result import Result
from ..user_cache import cache_root

if TYPE_CHECKING:
    from ..package import Package
    from .session import EdgeSession



def start_audit(session: "EdgeSession", seed: int | None = None) -> Auditor:
    levels = _stored_levels(session)
    requested = float(session.policy.agreement)
    device = fingerprint_key(device_fingerprint(session.runner.intra_op_threads, session.runner.providers[0]))
    path = state_path(package_id(session.package.root), device)
    state = read_state(path, requested, levels)
    if state is None:
        state = AuditState(requested=requested, in_force=session.level.agreement if session.level else None)
    elif state.in_force != (session.level.agreement if session.level else None):
        session.use_level(state.in_force)  # a level tightened by an earlier process stays tightened
        warnings.warn(f"an earlier audit found level {requested:g} not held on this device: the session runs at "
                      f"{f'{state.in_force:g}' if state.in_force is not None else 'full depth (exits off)'} "
                      f"(trace.level_used; `edgeinfer audit` shows why)", UserWarning, stacklevel=3)
    return Auditor(session.policy.audit, state, path, session.full_output, _agreement_test(session),
                   lambda current: _tighten(session, levels, current), seed)


def audit_states(package: "Package") -> list[tuple[Path, AuditState]]:
    """Every readable audit state saved for this package on this machine (any level, any device)."""
    manifest = package.manifest
    levels = tuple(t.agreement for t in manifest.exit_thresholds) + tuple(
        t.agreement for v in manifest.precision_variants for t in v.thresholds)
    found = ((path, read_state(path, None, levels, any_level=True)) for path in audit_files(package.root))
    return [(path, state) for path, state in found if state is not None]


def audit_files(package_root: Path) -> list[Path]:
    """Every audit state saved for this package (one per device and thread count)."""
    folder = cache_root() / "audit"
    return sorted(folder.glob(f"{package_id(package_root)}-*.json")) if folder.is_dir() else []


def _stored_levels(session: "EdgeSession") -> tuple[float, ...]:
    manifest = session.manifest
    if session.policy.precision != "fp32":
        return tuple(t.agreement for t in manifest.precision_variant(session.policy.precision).thresholds)
    return tuple(t.agreement for t in manifest.exit_thresholds)


def _tighten(session: "EdgeSession", levels: tuple[float, ...], current: float | None) -> float | None:
    """The next stricter stored level, or None (exits off) when there is none."""
    stricter = sorted(level for level in levels if current is not None and level > current)
    chosen = stricter[0] if stricter else None
    session.use_level(chosen)
    warnings.warn(f"the audit found level {current:g} is not held on this traffic: the session now runs at "
                  f"{f'{chosen:g}' if chosen is not None else 'full depth (exits off)'} (trace.level_used)",
                  UserWarning, stacklevel=2)
    return chosen


def _agreement_test(session: "EdgeSession"):
    """One sample per request: (1, 1) when the answer disagrees with the full model's, else (1, 0)."""
    if session.manifest.model.task == "text-classification":
        return lambda result, reference: (1, int(int(np.argmax(result.probabilities)) != int(np.argmax(reference))))
    at = embedding_agreement_cosine(session.manifest)

    def tally(result: Result, reference: np.ndarray) -> tuple[int, int]:
        return 1, int(cosine(result.embedding, reference) < at)

    return tally
