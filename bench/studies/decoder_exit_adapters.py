"""How far can per-token early exit take SmolLM2-135M? The aim is >= 1.5x tokens/s at >= 95%
token agreement with full depth; the shared final norm + LM head on intermediate states agrees far
too rarely for that (bench/RESULTS-archive.md). This script measures what the remedy, a
small adapter trained by self-distillation before the shared head, buys, and what speed-up the best
single exit could give at 95% agreement even before paying for exit tests and the skipped layers' cache.

    python -m edgeinfer.bench.studies.decoder_exit_adapters [--prompts 128] [--new-tokens 32] [--out reports/decoder]

Positions are the model's own greedy continuations of "Summarize: <AG News dev text>" prompts (what
token agreement is measured on in decoder_bench), teacher-forced in one forward pass. Adapters
(h + A h, A starting at zero: the shared head at first) are trained per exit layer with KL to the final
layer's distribution on the continuations of the first 3/4 of the prompts (plus the prompts' own
tokens), and judged on the last quarter. Confidence = top-2 probability margin (CALM).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from ..report_files import write_atomically, write_json

LAYERS = (8, 12, 15, 18, 22, 26)
LEVEL = 0.95


def agnews_prompts(shared: Path, count: int) -> list[str]:
    from .decoder_bench import read_prompts

    return read_prompts(shared, count, skip=300)  # not the rows decoder_bench decodes or calibrates on


def continuations(lm, tokenizer, prompts: list[str], new_tokens: int, batch: int = 16) -> list[tuple[list[int], int]]:
    """(prompt + greedy continuation ids, prompt length) per prompt, from transformers' generate."""
    import torch

    out: list[tuple[list[int], int]] = []
    tokenizer.padding_side = "left"
    for start in range(0, len(prompts), batch):
        texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                               add_generation_prompt=True) for p in prompts[start:start + batch]]
        encoded = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            generated = lm.generate(**encoded, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                                    pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
        for row, mask in zip(generated, encoded["attention_mask"]):
            pad = int((mask == 0).sum())
            ids = row[pad:].tolist()
            out.append((ids, int(mask.sum())))
        print(f"  generated {len(out)}/{len(prompts)}", flush=True)
    return out


def layer_states(lm, sequences: list[tuple[list[int], int]], layers: tuple[int, ...], generated_only: bool):
    """Per layer: hidden states at the positions that predict a continuation token (or every position),
    and the final layer's log-probabilities there."""
    import torch

    states: dict[int, list] = {layer: [] for layer in layers}
    finals = []
    with torch.no_grad():
        for ids, prompt_len in sequences:
            output = lm(torch.tensor([ids]), output_hidden_states=True)
            first = prompt_len - 1 if generated_only else 0
            stop = len(ids) - 1
            for layer in layers:
                states[layer].append(output.hidden_states[layer][0, first:stop])
            finals.append(torch.log_softmax(output.logits[0, first:stop], dim=-1))
    return {layer: torch.cat(v) for layer, v in states.items()}, torch.cat(finals)


def train_adapter(lm, hidden, teacher_log_probs, epochs: int = 4, batch: int = 256, lr: float = 1e-3):
    import torch

    torch.manual_seed(0)
    size = hidden.shape[1]
    adapter = torch.nn.Linear(size, size)
    torch.nn.init.zeros_(adapter.weight)
    torch.nn.init.zeros_(adapter.bias)
    optimizer = torch.optim.AdamW(adapter.parameters(), lr=lr, weight_decay=1e-3)
    norm, head = lm.model.norm, lm.lm_head
    for _ in range(epochs):
        order = torch.randperm(len(hidden))
        for start in range(0, len(hidden), batch):
            pick = order[start:start + batch]
            h = hidden[pick]
            logits = head(norm(h + adapter(h)))
            loss = torch.nn.functional.kl_div(torch.log_softmax(logits, -1), teacher_log_probs[pick],
                                              log_target=True, reduction="batchmean")
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return adapter


def exit_quality(lm, hidden, teacher_log_probs, adapter=None) -> dict:
    """Top-1 agreement with the final layer, and the largest share of tokens one exit can answer with
    overall agreement >= LEVEL when the most confident (top-2 margin) exit first."""
    import torch

    with torch.no_grad():
        h = hidden if adapter is None else hidden + adapter(hidden)
        probs = torch.softmax(lm.lm_head(lm.model.norm(h)), -1)
        top2 = probs.topk(2, dim=-1)
        margin = (top2.values[:, 0] - top2.values[:, 1]).numpy()
        agrees = (top2.indices[:, 0] == teacher_log_probs.argmax(-1)).numpy()
    order = np.argsort(-margin, kind="stable")
    wrong = np.cumsum(~agrees[order])
    n = len(agrees)
    allowed = np.flatnonzero(wrong <= (1 - LEVEL) * n)
    share = (allowed[-1] + 1) / n if len(allowed) else 0.0
    return {"agreement": round(float(agrees.mean()), 4), "exit_share_at_level": round(float(share), 4)}


def speedup_bound(layer: int, share: float, blocks: int, block_ms: float, head_ms: float) -> float:
    """Tokens/s over full depth if `share` of tokens left at `layer` and nothing else cost anything:
    no exit test on tokens that stay, no cache filled for the layers skipped (both cost in practice)."""
    full = blocks * block_ms + head_ms
    early = layer * block_ms + head_ms
    return full / (share * early + (1 - share) * full)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared"))
    parser.add_argument("--prompts", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--block-ms", type=float, default=1.40, help="fp32 decode step per block (decoder_bench profile)")
    parser.add_argument("--head-ms", type=float, default=6.4, help="fp32 final norm + LM head per token")
    parser.add_argument("--layers", type=int, nargs="+", default=list(LAYERS))
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--out", default="reports/decoder")
    args = parser.parse_args()

    import torch

    from ...export.decoder.pipeline import load_causal_lm

    torch.set_num_threads(2)
    began = time.perf_counter()
    lm, tokenizer, _ = load_causal_lm("smollm2")
    sequences = continuations(lm, tokenizer, agnews_prompts(Path(args.shared), args.prompts), args.new_tokens)
    split = len(sequences) * 3 // 4
    layers = tuple(args.layers)
    train_gen, train_gen_teacher = layer_states(lm, sequences[:split], layers, generated_only=True)
    train_all, train_all_teacher = layer_states(lm, sequences[:split], layers, generated_only=False)
    test, test_teacher = layer_states(lm, sequences[split:], layers, generated_only=True)
    blocks = lm.config.num_hidden_layers
    rows = []
    for layer in layers:
        shared = exit_quality(lm, test[layer], test_teacher)
        adapter = train_adapter(lm, torch.cat([train_gen[layer], train_all[layer]]),
                                torch.cat([train_gen_teacher, train_all_teacher]), epochs=args.epochs)
        trained = exit_quality(lm, test[layer], test_teacher, adapter)
        rows.append({"layer": layer, "shared_head": shared, "adapter": trained,
                     "speedup_bound_adapter": round(speedup_bound(layer, trained["exit_share_at_level"], blocks,
                                                                  args.block_ms, args.head_ms), 3),
                     "speedup_bound_if_all_exit": round(speedup_bound(layer, 1.0, blocks, args.block_ms, args.head_ms), 3)})
        print(rows[-1], flush=True)
    result = {"prompts": len(sequences), "train_prompts": split, "test_positions": int(len(test_teacher)),
              "train_positions": int(len(train_gen_teacher) + len(train_all_teacher)), "level": LEVEL,
              "block_ms": args.block_ms, "head_ms": args.head_ms, "layers": rows,
              "seconds": round(time.perf_counter() - began, 1)}
    out = Path(args.out)
    write_json(out / "exit_adapters.json", result)
    lines = [f"Exit adapters on SmolLM2-135M: {len(sequences)} prompts x {args.new_tokens} greedy tokens, "
             f"judged on {result['test_positions']} positions of the last {len(sequences) - split} prompts", "",
             "| exit after block | agreement, shared head | agreement, adapter | tokens that can exit at 0.95, shared | "
             "with adapter | speed-up bound, adapter | bound if every token exited |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['layer']} | {r['shared_head']['agreement']:.3f} | {r['adapter']['agreement']:.3f} | "
                     f"{r['shared_head']['exit_share_at_level']:.1%} | {r['adapter']['exit_share_at_level']:.1%} | "
                     f"{r['speedup_bound_adapter']:.2f}x | {r['speedup_bound_if_all_exit']:.2f}x |")
    write_atomically(out / "exit_adapters.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
