"""Time-to-first-token and tokens-per-second budgets for a decoder, planned on costs measured here.

What a budget can trade: the prefill is about linear in the prompt's tokens (chunked into 256-token
pieces, so attention's quadratic part stays small), and pruning the prompt after a block takes the
deeper blocks' share of that work away; a decode step is about linear in the tokens already cached,
and a lowered variant (q8) makes it cheaper. Which precision is faster for which phase is the
device's business: on this 2-core AVX2 machine SmolLM2's q8 decodes 1.7x faster than fp32 but
prefills no faster (MatMulNBits' kernels gain only at a few rows). So every precision's two lines
are measured on this device, once per package, and cached beside the device profiles.

The plan is the gentlest setting that meets both budgets: full precision before a lowered one, no
pruning before pruning, since in bench/RESULTS-archive.md q8 kept 97% token agreement where pruning half
the prompt kept 83% of next tokens. When nothing meets them, the refusal names what would.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ...errors import BudgetError
from ...progress import progress_bar
from ...targets.fingerprint import device_fingerprint, fingerprint_key
from ...targets.profile import package_id
from ..cost_model import LinearCost
from .kv_cache import MIN_PRUNED_FRACTION
from ..sessions import default_threads
from ..user_cache import cache_root

if TYPE_CHECKING:
    from .generation import DecoderSession

PRUNE_FRACTIONS = (1.0, 0.7, 0.5, 0.3)
MEASURED_PROMPTS = (64, 512)
MEASURED_PRUNING = 0.5
MEASURED_STEPS = 8
MEASURE_REPEATS = 3
COSTS_FORMAT = "edgeinfer.decoder-costs"


@dataclass(frozen=True)
class PhaseCosts:
    """One precision on this device: first token vs prompt tokens, decode step vs cached tokens, and
    how much of the prefill work pruning removes on paper it saves in time (a pruned prompt is
    ranked whole, not in pieces, so its attention costs more than its share of tokens says)."""
    precision: str
    first_token: LinearCost
    step: LinearCost
    prune_efficiency: float = 1.0


@dataclass(frozen=True)
class GenerationPlan:
    precision: str
    prune_prompt: tuple[tuple[int, float], ...]
    predicted_first_token_ms: float
    predicted_tokens_per_second: float

    def describe(self) -> str:
        pruning = ", ".join(f"keep {f:.0%} after block {b}" for b, f in self.prune_prompt) or "no pruning"
        return f"{self.precision}, {pruning}"


def prune_point(exits: tuple[int, ...], num_blocks: int) -> int:
    """Where a planned pruning cuts: the first exit (the package's spans break there), else a quarter in."""
    return exits[0] if exits else max(1, num_blocks // 4)


def pruned_share(num_blocks: int, prune: tuple[tuple[int, float], ...]) -> float:
    """The share of the prompt's block-tokens (and cache entries) a schedule removes."""
    kept, removed = 1.0, 0.0
    for block, fraction in sorted(prune):
        removed += (num_blocks - block) / num_blocks * (kept - fraction)
        kept = fraction
    return removed


def prefill_work(costs: PhaseCosts, num_blocks: int, prune: tuple[tuple[int, float], ...]) -> float:
    """The share of an unpruned prefill's per-token cost a pruned one pays (as far as pruning saved
    time when measured)."""
    return 1.0 - costs.prune_efficiency * pruned_share(num_blocks, prune)


def predict(costs: PhaseCosts, prompt_tokens: int, new_tokens: int, num_blocks: int,
            prune: tuple[tuple[int, float], ...]) -> tuple[float, float]:
    """(first-token ms, tokens/s) for a request: the prefill at its pruned work; each step priced at
    the cache's mean length over blocks, halfway through the answer."""
    work = prefill_work(costs, num_blocks, prune)
    first = costs.first_token.fixed_ms + costs.first_token.per_token_ms * prompt_tokens * work
    step = costs.step.predict(int(prompt_tokens * (1.0 - pruned_share(num_blocks, prune)) + new_tokens / 2))
    return first, 1000.0 / step if step > 0 else float("inf")


def plan_generation(costs: dict[str, PhaseCosts], precisions: tuple[str, ...], num_blocks: int,
                    exits: tuple[int, ...], prompt_tokens: int, new_tokens: int,
                    first_token_ms: float | None, tokens_per_second: float | None) -> GenerationPlan:
    """precisions: strongest first (fp32, then lowered variants)."""
    point = prune_point(exits, num_blocks)
    floor = max(MIN_PRUNED_FRACTION, 20 / max(prompt_tokens, 1))
    candidates: list[GenerationPlan] = []
    for fraction in PRUNE_FRACTIONS:
        if fraction < 1.0 and (fraction < floor or point >= num_blocks):
            continue
        prune = () if fraction == 1.0 else ((point, fraction),)
        for precision in precisions:
            first, rate = predict(costs[precision], prompt_tokens, new_tokens, num_blocks, prune)
            candidates.append(GenerationPlan(precision, prune, round(first, 2), round(rate, 2)))
    for plan in candidates:
        if (first_token_ms is None or plan.predicted_first_token_ms <= first_token_ms) and \
                (tokens_per_second is None or plan.predicted_tokens_per_second >= tokens_per_second):
            return plan
    raise BudgetError(_refusal(candidates, costs, num_blocks, prompt_tokens, first_token_ms, tokens_per_second))


def _refusal(candidates: list[GenerationPlan], costs: dict[str, PhaseCosts], num_blocks: int, prompt_tokens: int,
             first_token_ms: float | None, tokens_per_second: float | None) -> str:
    fastest_first = min(candidates, key=lambda p: p.predicted_first_token_ms)
    fastest_rate = max(candidates, key=lambda p: p.predicted_tokens_per_second)
    if tokens_per_second is not None and fastest_rate.predicted_tokens_per_second < tokens_per_second:
        return (f"no setting decodes {tokens_per_second:g} tokens/s on this device: at most "
                f"{fastest_rate.predicted_tokens_per_second:.1f} ({fastest_rate.describe()}); lower tokens_per_second")
    assert first_token_ms is not None  # one of the two budgets failed
    if fastest_first.predicted_first_token_ms <= first_token_ms:  # each reachable, not both at once
        return (f"no setting meets both budgets on this device: {fastest_rate.describe()} decodes "
                f"{fastest_rate.predicted_tokens_per_second:.1f} tokens/s but needs "
                f"{fastest_rate.predicted_first_token_ms:.0f} ms to the first token; relax one of them")
    # the longest prompt whose first token the fastest setting still gives in time
    cost = costs[fastest_first.precision]
    work = prefill_work(cost, num_blocks, fastest_first.prune_prompt)
    fits = int((first_token_ms - cost.first_token.fixed_ms) / max(cost.first_token.per_token_ms * work, 1e-9))
    shorter = f" or shorten the prompt to {fits} tokens" if 0 < fits < prompt_tokens else ""
    return (f"a {prompt_tokens}-token prompt needs at least {fastest_first.predicted_first_token_ms:.0f} ms to its "
            f"first token on this device ({fastest_first.describe()}); raise first_token_ms to "
            f"{np.ceil(fastest_first.predicted_first_token_ms):.0f}{shorter}")


# --- measuring ---------------------------------------------------------------------------------

def costs_path(session: DecoderSession) -> Path:
    key = fingerprint_key(device_fingerprint(session.runner.threads or default_threads(), session.runner.providers[0]))
    return cache_root() / "decoder-costs" / f"{package_id(session.package.root)}-{key}.json"


def _read(path: Path, precisions: tuple[str, ...]) -> dict[str, PhaseCosts] | None:
    try:
        document = json.loads(path.read_text())
        if document.get("format") != COSTS_FORMAT:
            return None
        found = {p["precision"]: PhaseCosts(p["precision"], LinearCost(**p["first_token"]), LinearCost(**p["step"]),
                                            float(p["prune_efficiency"]))
                 for p in document["precisions"]}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return found if all(p in found for p in precisions) else None


def measure_costs(session: DecoderSession) -> dict[str, PhaseCosts]:
    """Per precision: MEASURED_PROMPTS-token prompts (fewer where the model has fewer positions)
    decoding MEASURED_STEPS tokens, and the longer one pruned to MEASURED_PRUNING at the pruning
    point; one warm-up, then the p90 of MEASURE_REPEATS (planning on the median misses half the
    time). About 30 s for SmolLM2 here."""
    precisions = session.precisions()
    vocab = session.facts.vocab_size
    longest = min(MEASURED_PROMPTS[1], session.facts.max_positions - MEASURED_STEPS - 2)
    lengths = (min(MEASURED_PROMPTS[0], longest // 4), longest)
    point = prune_point(session.exits, session.num_blocks)
    prune = ((point, MEASURED_PRUNING),) if point < session.num_blocks else ()

    def synthetic(tokens: int) -> list[int]:  # costs do not depend on what the tokens say
        return [(11 + 7 * i) % vocab for i in range(tokens)]

    runs = [(synthetic(n), ()) for n in lengths] + ([(synthetic(longest), prune)] if prune else [])
    found: dict[str, PhaseCosts] = {}
    with progress_bar(len(precisions) * (MEASURE_REPEATS + 1), "measuring decoder costs on this device") as bar:
        for precision in precisions:
            firsts: list[list[float]] = [[] for _ in runs]
            steps: list[list[float]] = [[] for _ in runs]
            for repeat in range(MEASURE_REPEATS + 1):
                for k, (ids, schedule) in enumerate(runs):
                    trace = session.generate(ids, MEASURED_STEPS + 1, min_new_tokens=MEASURED_STEPS + 1,
                                             precision=precision, chat=False, prune_prompt=schedule).trace
                    if repeat:
                        firsts[k].append(trace.first_token_ms)
                        steps[k].append((trace.total_ms - trace.first_token_ms) / MEASURED_STEPS)
                bar.update()
            tail = [float(np.percentile(f, 90)) for f in firsts]
            first = LinearCost.through(*zip(lengths, tail))
            step = LinearCost.through(*((n + MEASURED_STEPS // 2, float(np.percentile(s, 90)))
                                        for n, s in zip(lengths, steps)))
            efficiency = 1.0
            if prune and first.per_token_ms > 0:
                saved = 1.0 - (tail[2] - first.fixed_ms) / (first.per_token_ms * longest)
                efficiency = float(np.clip(saved / pruned_share(session.num_blocks, prune), 0.0, 1.0))
            found[precision] = PhaseCosts(precision, first, step, round(efficiency, 4))
    return found


def device_costs(session: DecoderSession) -> dict[str, PhaseCosts]:
    """This package's costs on this device: from the cache, or measured now and cached."""
    path = costs_path(session)
    cached = _read(path, session.precisions())
    if cached is not None:
        return cached
    found = measure_costs(session)
    document = {"format": COSTS_FORMAT, "measured": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "precisions": [asdict(c) for c in found.values()]}
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_suffix(f".tmp{time.monotonic_ns()}")
    staging.write_text(json.dumps(document, indent=2))
    staging.replace(path)
    return found
