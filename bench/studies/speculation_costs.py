"""Where a lossless speculative token's time goes, and what a draft would need to reach a rate.

    python -m edgeinfer.bench.studies.speculation_costs PACKAGE [--prompts 10] [--new-tokens 48]
        [--gguf F16=PATH] [--target 1.2] [--shared ../shared] [--out reports/speculation]

Greedy speculative decoding as `mode="speculative"` runs it by default (context lookups, then the
package's lowered variant drafting, fp32 checking) on "Summarize: <AG News dev text>" prompts. Every
graph call after each prompt's prefill is timed and put in one of four parts: a draft step's blocks
and head (lowered, one token) and a check's blocks and head (fp32, the drafted tokens at once).
With `--gguf NAME=PATH` llama.cpp (the peers extra) decodes the same prompts, alternated prompt by
prompt, and the target rate is `--target` times its rate. A round costs k draft steps and one check,
and keeps (1 - a^(k+1)) / (1 - a) tokens when each draft is accepted with probability a; the last
table solves that for the per-draft acceptance rate a draft of a given step cost would need.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..report_files import write_atomically, write_json
from .decoder_bench import LlamaCppPeer, _rate, read_prompts

PARTS = ("draft blocks", "draft head", "check blocks", "check head")


def tokens_per_round(acceptance: float, drafts: int) -> float:
    """Expected tokens a round keeps: the accepted prefix of `drafts` drafts plus the check's own."""
    if acceptance >= 1.0:
        return drafts + 1.0
    return (1.0 - acceptance ** (drafts + 1)) / (1.0 - acceptance)


def acceptance_needed(step_ms: float, check_ms: float, drafts: int, target_ms: float) -> float | None:
    """The smallest per-draft acceptance at which rounds of `drafts` drafts costing `step_ms` each and
    one check of `check_ms` reach `target_ms` a token; None when even always-accepted drafts do not."""
    cost = drafts * step_ms + check_ms
    if cost / (drafts + 1) > target_ms:
        return None
    low, high = 0.0, 1.0
    for _ in range(50):
        middle = (low + high) / 2
        low, high = (middle, high) if cost / tokens_per_round(middle, drafts) > target_ms else (low, middle)
    return high


class CallClock:
    """Times a session's block and head calls by part, from the prefill's first-token choice on (a
    head or screened-head call) until `restart()`, which each generation calls first. It replaces the
    two methods on this study's session object only."""

    def __init__(self, session: Any):  # a DecoderSession
        self.ms: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.decoding = False
        blocks, head, greedy = session.blocks, session.head, session.greedy_logits

        def timed_blocks(cache: Any, hidden: np.ndarray, positions: np.ndarray, start: int, stop: int,
                         precision: str = "fp32", attention: bool = False) -> tuple[np.ndarray, np.ndarray]:
            return self._time("blocks", precision, blocks, cache, hidden, positions, start, stop, precision,
                              attention)

        def timed_head(hidden: np.ndarray, precision: str = "fp32") -> np.ndarray:
            return self._time("head", precision, head, hidden, precision)

        def first_choice(*args: Any) -> np.ndarray:
            out = greedy(*args)
            self.decoding = True
            return out

        session.blocks, session.head, session.greedy_logits = timed_blocks, timed_head, first_choice

    def restart(self) -> None:
        self.decoding = False

    def _time(self, what: str, precision: str, call: Callable[..., Any], *args: Any) -> Any:
        if not self.decoding:
            out = call(*args)
            self.decoding = what == "head"  # the prefill ends with the first token's head
            return out
        started = time.perf_counter()
        out = call(*args)
        part = f"{'check' if precision == 'fp32' else 'draft'} {what}"
        self.ms[part] += (time.perf_counter() - started) * 1000
        self.calls[part] += 1
        return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package")
    parser.add_argument("--prompts", type=int, default=10)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--draft-tokens", type=int, default=4)
    parser.add_argument("--gguf", default=None, metavar="NAME=PATH", help="llama.cpp on a GGUF of the same weights")
    parser.add_argument("--target", type=float, default=1.2, help="the rate to reach, as a multiple of the peer's")
    parser.add_argument("--shared", default=str(Path(__file__).resolve().parents[3] / "shared"))
    parser.add_argument("--out", default="reports/speculation")
    args = parser.parse_args(argv)
    if args.gguf is not None and "=" not in args.gguf:
        parser.error(f"--gguf takes NAME=PATH (e.g. F16=smol-f16.gguf), not {args.gguf!r}")
    import edgeinfer

    session = edgeinfer.load(args.package)
    if len(session.precisions()) < 2:  # an fp32 draft's calls would count as checks
        parser.error("this study times a lowered variant's drafts: add one with `edgeinfer quantize PKG --quant q8`")
    prompts = [session.encode(p) for p in read_prompts(Path(args.shared), args.prompts)]
    peer_name, peer = None, None
    if args.gguf:
        peer_name, path = args.gguf.split("=", 1)
        peer = LlamaCppPeer(Path(path))
        peer.generate(prompts[0], 4, session.facts.eos_ids)
    options = {"mode": "speculative", "draft_tokens": args.draft_tokens}
    session.generate(prompts[0], max_new_tokens=4, min_new_tokens=4, **options)  # every graph opens
    clock = CallClock(session)
    ours, theirs, decoding_ms = [], [], 0.0
    tokens = drafted = accepted = 0
    for ids in prompts:
        if peer is not None:
            theirs.append(_rate(*peer.generate(ids, args.new_tokens, session.facts.eos_ids))["tokens_per_s"])
        clock.restart()
        result = session.generate(ids, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, **options)
        trace = result.trace
        ours.append(_rate(list(result.token_ids), trace.first_token_ms, trace.total_ms)["tokens_per_s"])
        decoding_ms += trace.total_ms - trace.first_token_ms
        tokens += trace.new_tokens - 1
        drafted, accepted = drafted + trace.drafted, accepted + trace.accepted
    per_token = {part: clock.ms[part] / tokens for part in PARTS}
    per_call = {part: clock.ms[part] / max(clock.calls[part], 1) for part in PARTS}
    step_ms = per_call["draft blocks"] + per_call["draft head"]
    check_ms = per_call["check blocks"] + per_call["check head"]
    ms_per_token = decoding_ms / tokens
    document = {"package": args.package, "prompts": len(prompts), "tokens": tokens, "drafted": drafted,
                "accepted": accepted, "ms_per_token": ms_per_token, "tokens_per_s": float(np.median(ours)),
                "parts": {p: {"calls": clock.calls[p], "ms_per_call": per_call[p], "ms_per_token": per_token[p]}
                          for p in PARTS},
                "draft_step_ms": step_ms, "check_ms": check_ms,
                "checks_per_token": clock.calls["check blocks"] / tokens}
    lines = [f"speculative (draft_tokens={args.draft_tokens}): {ms_per_token:.2f} ms a decoded token, median "
             f"{document['tokens_per_s']:.1f} tokens/s over {len(prompts)} prompts; {accepted} of {drafted} drafts "
             f"accepted", "", "| part | calls | ms a call | ms a token |", "|---|---:|---:|---:|"]
    lines += [f"| {p} | {clock.calls[p]} | {per_call[p]:.2f} | {per_token[p]:.2f} |" for p in PARTS]
    other = ms_per_token - sum(per_token.values())
    lines.append(f"| the rest (embedding, cache, Python) | | | {other:.2f} |")
    if peer is not None:
        peer_rate = float(np.median(theirs))
        ratio = float(np.mean(1 / np.array(theirs)) / np.mean(1 / np.array(ours)))
        target_ms = 1000 / (args.target * peer_rate)
        document.update(peer=peer_name, peer_tokens_per_s=peer_rate, ratio_to_peer=ratio, target_ms=target_ms)
        lines += ["", f"llama.cpp {peer_name}: median {peer_rate:.1f} tokens/s; speculative at {ratio:.3f}x its rate "
                      f"(total decoding time). {args.target:g}x is {target_ms:.2f} ms a token.", "",
                  f"With a check of {check_ms:.1f} ms, the per-draft acceptance a draft needs for {target_ms:.2f} ms "
                  f"a token:", "", "| draft step | cost | 2 drafts | 4 drafts | 6 drafts |",
                  "|---|---:|---:|---:|---:|"]
        needs = []
        for name, cost in (("this package's draft", step_ms), ("a fifth of it", step_ms / 5), ("free", 0.0)):
            cells = [acceptance_needed(cost, check_ms, k, target_ms) for k in (2, 4, 6)]
            needs.append({"draft": name, "step_ms": cost, "acceptance": cells})
            lines.append(f"| {name} | {cost:.2f} ms | " + " | ".join("out of reach" if c is None else f"{c:.3f}"
                                                                       for c in cells) + " |")
        document["acceptance_needed"] = needs
    text = "\n".join(lines) + "\n"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "speculation-costs.json", document)
    write_atomically(out / "speculation-costs.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
