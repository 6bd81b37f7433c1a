"""Budgeted mixed-precision search: which precision each node takes for a size or latency budget.

Every node offers options (candidate, cost, error); a plan picks one per node; the model's error is
taken as the sum of the nodes' errors (each measured, or estimated by the proxy, alone), and the
cost as the sum of the nodes' costs plus what the rest of the graph costs. Two searches:

- greedy (QuantMCU-style): from all-fp32, repeatedly take the one lowering that saves cost at the
  least error per unit saved; every step is a plan, the ladder is a front;
- dynamic programming over a discretised cost (a multiple-choice knapsack), which is exact under
  the additive model and refines the greedy front: for every budget, the least-error plan.

Both fronts are kept in the report; the chosen plan is the least-error one within the budget.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import BudgetError


@dataclass(frozen=True)
class Option:
    candidate: str
    cost: float
    error: float


@dataclass(frozen=True)
class Plan:
    assignment: tuple[tuple[str, str], ...]  # (node name, candidate)
    cost: float
    error: float  # predicted, additive

    def as_dict(self) -> dict[str, str]:
        return dict(self.assignment)


def _plan(nodes: list[str], options: dict[str, list[Option]], choice: list[int], fixed_cost: float) -> Plan:
    picked = [options[n][i] for n, i in zip(nodes, choice)]
    return Plan(tuple((n, o.candidate) for n, o in zip(nodes, picked)),
                fixed_cost + sum(o.cost for o in picked), sum(o.error for o in picked))


def greedy_front(options: dict[str, list[Option]], fixed_cost: float = 0.0) -> list[Plan]:
    nodes = list(options)
    choice = [next(i for i, o in enumerate(options[n]) if o.candidate == "fp32") for n in nodes]
    front = [_plan(nodes, options, choice, fixed_cost)]
    while True:
        best: tuple[float, int, int] | None = None
        for position, node in enumerate(nodes):
            current = options[node][choice[position]]
            for index, option in enumerate(options[node]):
                saved = current.cost - option.cost
                if saved <= 0:
                    continue
                ratio = (option.error - current.error) / saved
                if best is None or ratio < best[0]:
                    best = (ratio, position, index)
        if best is None:
            return front
        choice[best[1]] = best[2]
        front.append(_plan(nodes, options, choice, fixed_cost))


def dp_front(options: dict[str, list[Option]], fixed_cost: float = 0.0, steps: int = 600) -> list[Plan]:
    """The least-error plan at each of `steps` cost levels, as a Pareto front."""
    nodes = list(options)
    low = [min(o.cost for o in options[n]) for n in nodes]
    span = sum(max(o.cost for o in options[n]) for n in nodes) - sum(low)
    unit = span / steps if span > 0 else 1.0
    best = np.zeros(steps + 1)  # best[c]: least error with extra cost <= c units over the cheapest plan
    back = np.zeros((len(nodes), steps + 1), dtype=np.int16)
    for position, node in enumerate(nodes):
        merged = np.full(steps + 1, np.inf)
        for index, option in enumerate(options[node]):
            units = int(np.ceil((option.cost - low[position]) / unit - 1e-9))
            if units > steps:
                continue
            shifted = np.full(steps + 1, np.inf)
            shifted[units:] = best[: steps + 1 - units] + option.error
            better = shifted < merged
            merged[better], back[position][better] = shifted[better], index
        best = merged
    plans: list[Plan] = []
    for level in range(steps, -1, -1):
        if not np.isfinite(best[level]):
            continue
        choice, remaining = [0] * len(nodes), level
        for position in range(len(nodes) - 1, -1, -1):
            index = int(back[position][remaining])
            choice[position] = index
            units = int(np.ceil((options[nodes[position]][index].cost - low[position]) / unit - 1e-9))
            remaining -= units
        plans.append(_plan(nodes, options, choice, fixed_cost))
    return pareto(plans)


def pareto(plans: list[Plan]) -> list[Plan]:
    """Plans no other plan beats on both cost and error, cheapest first."""
    kept: list[Plan] = []
    for plan in sorted(plans, key=lambda p: (p.cost, p.error)):
        if not kept or plan.error < kept[-1].error - 1e-15:
            kept.append(plan)
    return kept


def plan_for_budget(front: list[Plan], budget: float, unit: str) -> Plan:
    fitting = [p for p in front if p.cost <= budget + 1e-9]
    if not fitting:
        smallest = min(p.cost for p in front)
        raise BudgetError(f"no plan fits {budget:.3g} {unit}; the smallest possible is {smallest:.3g} {unit}")
    return min(fitting, key=lambda p: (p.error, p.cost))
