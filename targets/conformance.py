"""Test vectors another runtime must reproduce: inputs, and per policy what this runtime answers.

A binding in another language (the TypeScript runtime in js/, or one in Kotlin, Swift or C++) reads
the same edge package; these vectors say exactly what it must give back for each policy: the label
and probabilities (or the embedding), the depth the answer came from, the tokens each block ran on,
the precision that answered and the restarts. docs/conformance.md describes the file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from ..runtime.package import open_package
from ..runtime.encoder.whole_model import refuse_whole
from ..runtime.policy import Policy, default_keep_schedule
from ..runtime.load import load
from ..runtime.user_cache import write_text_atomically

FORMAT = "edgeinfer.conformance"
BUNDLED_TEXTS = tuple(Path(__file__).resolve().parents[1] / "data" / name
                      for name in ("demo_sentences.txt", "calibration_sentences.txt"))


@dataclass(frozen=True)
class NamedPolicy:
    name: str
    policy: Policy


def policies_to_check(package: Path) -> list[NamedPolicy]:
    """Full depth; the default policy (its precision chosen by the runtime); fp32 early exit at every
    stored level; each precision variant alone and as a cascade at every level it certifies; token
    pruning at the default schedule."""
    manifest = open_package(package).manifest
    refuse_whole(manifest, "conformance vectors check the adaptive path another runtime must reproduce")
    chosen = [NamedPolicy("full depth", Policy.off()), NamedPolicy("default", Policy())]
    chosen += [NamedPolicy(f"exits@{t.agreement:g}", Policy(agreement=t.agreement, precision="fp32"))
               for t in manifest.exit_thresholds]
    for variant in manifest.precision_variants:
        chosen.append(NamedPolicy(f"{variant.name} alone", Policy(agreement=None, precision=variant.name)))
        if manifest.model.task != "text-classification":
            continue
        for level in variant.thresholds:
            if level.certifies_final_answer:
                chosen.append(NamedPolicy(f"{variant.name} cascade@{level.agreement:g}",
                                          Policy(agreement=level.agreement, precision=variant.name)))
    keep = default_keep_schedule(manifest.model.num_blocks)
    if keep:
        chosen.append(NamedPolicy("prune " + ",".join(f"{b}:{f}" for b, f in keep),
                                  Policy(agreement=None, keep_schedule=keep)))
    return chosen


def conformance_vectors(package: Path, texts: list[str]) -> dict:
    if not texts:
        raise InputError("conformance vectors need at least one input text")
    cases = []
    for named in policies_to_check(package):
        session = load(package, policy=named.policy, profile=None, optimized_cache=False)
        expected = []
        for text in texts:
            result = session.run(text)
            answer = {"exit_after_block": result.trace.exit_after_block,
                      "tokens_per_block": list(result.trace.tokens_per_block),
                      "precision": result.trace.precision, "restarts": result.trace.restarts}
            if result.label is not None:
                answer |= {"label": result.label, "probabilities": [float(p) for p in result.probabilities]}
            else:
                answer |= {"embedding": [float(x) for x in result.embedding]}
            expected.append(answer)
        policy = named.policy
        cases.append({"name": named.name,
                      "policy": {"agreement": policy.agreement, "precision": policy.precision,
                                 "keep_schedule": [list(entry) for entry in policy.keep_schedule]},
                      "expected": expected})
    return {"format": FORMAT, "package": str(Path(package).resolve()), "inputs": texts, "cases": cases}


def write_vectors(package: Path, output: Path, texts: list[str] | None = None, limit: int = 64) -> Path:
    if texts is None:
        texts = [line for file in BUNDLED_TEXTS for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    vectors = conformance_vectors(package, texts[:limit])
    output.mkdir(parents=True, exist_ok=True)
    path = output / "vectors.json"
    write_text_atomically(path, json.dumps(vectors, indent=1) + "\n")
    return path
