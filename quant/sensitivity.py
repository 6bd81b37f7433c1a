"""Measured sensitivity: the model's output error when one node alone is lowered.

This is the ground truth the search trusts and the proxy is checked against (Spearman). It costs
one lowering and one evaluation per node and candidate, minutes for MiniLM, hence the proxy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import onnx

from ..progress import progress_bar
from .apply_plan import apply_plan
from .candidates import Candidate
from .smoothing import NONE, Smoothing
from .weight_nodes import WeightNode


def measure_sensitivity(model: onnx.ModelProto, nodes: Sequence[WeightNode], candidates: Sequence[Candidate],
                        error_of: Callable[[onnx.ModelProto], float], smoothing: Smoothing = NONE
                        ) -> dict[tuple[str, str], float]:
    """{(node name, candidate name): output error}, for every candidate that can lower the node."""
    pairs = [(n, c) for n in nodes for c in candidates if c.bits < 32 and n.op_type in c.ops]
    errors: dict[tuple[str, str], float] = {}
    with progress_bar(len(pairs), "sensitivity") as bar:
        for node, candidate in pairs:
            errors[(node.name, candidate.name)] = error_of(apply_plan(model, {node.digest: candidate.name}, smoothing))
            bar.update()
    return errors
