"""The graphs of a decoder package, and which of them compute a stretch of blocks.

One onnxruntime session per segment (the stretches of blocks between exits fused, each block's
weights held once), the mapped embedding table, and the routes through the blocks that every
decoding step asks for. DecoderSession (generation.py) adds the tokenizer and the generation loop.
"""

from __future__ import annotations

import numpy as np

from ...errors import PackageError
from ...manifest import Segment
from ..graph_runner import GraphRunner
from ..package import Package
from .head_screen import read_head_screen, screened_logits
from .kv_cache import KVCache


def embedding_table(package: Package) -> np.ndarray | None:
    """The embedding table mapped from the package's (verified) weights file: only the rows a prompt
    uses become resident, where an embed session would hold the whole table (113 MB for SmolLM2)."""
    facts = package.manifest.decoder
    if facts is None or facts.embedding_file is None or facts.embedding_offset is None:
        return None
    return mapped_rows(package, facts.embedding_file, facts.embedding_offset, "decoder.embedding_file/offset")


def mapped_rows(package: Package, file: str, offset: int, field: str) -> np.memmap:
    """A [vocab_size, hidden_size] float32 matrix inside a listed package file, mapped read-only."""
    facts = package.manifest.decoder
    path = package.path(file)
    shape = (facts.vocab_size, package.manifest.model.hidden_size)
    listed = {f.path for f in package.manifest.files}  # empty only for a package being written
    if (listed and file not in listed) or offset + shape[0] * shape[1] * 4 > path.stat().st_size:
        raise PackageError(f"manifest: {field} point outside the package's files")
    return np.memmap(path, np.float32, "r", offset, shape)


def _block_index(name: str) -> int:
    return int(name.rsplit("_", 1)[1])


GQA_FEED = "seqlens_k"  # what a span written with GroupQueryAttention takes instead of positions (gqa_graphs.py)


def _gqa_counters(total: int) -> dict[str, np.ndarray]:
    """What GroupQueryAttention takes for a cache holding `total` entries after this step."""
    return {GQA_FEED: np.array([total - 1], np.int32), "total_sequence_length": np.array(total, np.int32)}


class DecoderGraphs:
    def __init__(self, package: Package, threads: int | None = None,
                 providers: tuple[str, ...] = ("CPUExecutionProvider",), fused: bool = True):
        """fused=False runs one graph per block (validation and profiling); True uses the package's spans."""
        manifest = package.manifest
        if manifest.decoder is None:
            raise PackageError("this package is not a text-generation package; use run() instead")
        self.package, self.manifest, self.facts = package, manifest, manifest.decoder
        self.num_blocks = manifest.model.num_blocks
        self.runner = GraphRunner(package, threads, providers, shared_arena=True)  # sessions.py: why
        self._embed = manifest.segment("embed")
        self._table = embedding_table(package)
        # the precisions whose embed graph is the fp32 one, i.e. the mapped table
        self._table_serves = frozenset(v.precision for v in self._embed.variants
                                       if self._table is not None and v.path == self._embed.graph("fp32"))
        self._routes: dict[tuple[int, int, tuple[int, ...], bool], list[tuple[Segment, range]]] = {}
        self._head = manifest.segment("head")
        screen = self.facts.head_screen
        self._screen = None if screen is None else read_head_screen(package, mapped_rows(
            package, screen.weight_file, screen.weight_offset, "decoder.head_screen.weight_file/offset"))
        # traced spans (any cache, and the attention each entry received) and, where the package has
        # them, spans on onnxruntime's GroupQueryAttention (contiguous caches only, and faster)
        self._spans = self._span_table(self._block_spans(gqa=False) if fused else [])
        gqa = self._block_spans(gqa=True) if fused else []
        self._gqa_spans = self._span_table(gqa)
        self._gqa_precisions = frozenset.intersection(*(frozenset(v.precision for v in s.variants) for s in gqa)) \
            if gqa else frozenset()
        self._blocks = {b.index: b for b in manifest.blocks()}
        self._kv = {s.index: s for s in manifest.segments if s.kind == "kv"}
        self.exits = tuple(e.after_block for e in manifest.exits)

    def _block_spans(self, gqa: bool) -> list[Segment]:
        """Every span of blocks; a route takes the longest that fits. A step through all blocks with
        nothing decided between them (full depth, a speculative check) is then one call, and the
        stretches between exits serve early exits, shallow drafts and pruned caches. Graphs open on
        first use, so a session that only answers at full depth holds the block weights once; one
        that also exits holds them twice (onnxruntime sessions do not share weights), for three
        calls fewer per token at full depth."""
        return [s for s in self.manifest.segments if s.kind == "span" and s.covers
                and all(c.startswith("block_") for c in s.covers) and (GQA_FEED in s.inputs) == gqa]

    @staticmethod
    def _span_table(spans: list[Segment]) -> dict[int, list[tuple[int, Segment]]]:
        table: dict[int, list[tuple[int, Segment]]] = {}
        for segment in spans:
            first, last = _block_index(segment.covers[0]), _block_index(segment.covers[-1])
            table.setdefault(first, []).append((last + 1, segment))
        return table


    def route(self, start: int, stop: int, breaks: tuple[int, ...] = (), gqa: bool = False
              ) -> list[tuple[Segment, range]]:
        """The fewest graphs computing blocks start..stop-1: the longest span that fits, else a block.
        A span never crosses a break (a block whose cache holds other tokens than the one before it).
        gqa: take the GroupQueryAttention spans. Every decode step asks for the same few routes, so
        each is worked out once."""
        key = (start, stop, breaks, gqa)
        found = self._routes.get(key)
        if found is None:
            found = self._routes[key] = self._plan_route(start, stop, breaks, self._gqa_spans if gqa else self._spans)
        return found

    def _plan_route(self, start: int, stop: int, breaks: tuple[int, ...],
                    spans: dict[int, list[tuple[int, Segment]]]) -> list[tuple[Segment, range]]:
        route: list[tuple[Segment, range]] = []
        at = start
        while at < stop:
            fitting = [(end, s) for end, s in spans.get(at, [])
                       if end <= stop and not any(at < b < end for b in breaks)]
            end, segment = max(fitting, key=lambda pair: pair[0]) if fitting else (at + 1, self._blocks[at])
            route.append((segment, range(at, end)))
            at = end
        return route

    def step_graphs(self, precision: str = "fp32") -> list[Segment]:
        """The graphs one full-depth decoding step calls, in order (profiling)."""
        gqa = precision in self._gqa_precisions
        return [segment for segment, _ in self.route(0, self.num_blocks, (), gqa)] + [self._head]

    def embed(self, ids: np.ndarray, precision: str = "fp32") -> np.ndarray:
        if precision in self._table_serves:
            return np.ascontiguousarray(self._table[ids])
        return self.runner.graph(self._embed, precision).run(None, {"input_ids": ids})[0]

    def head(self, hidden: np.ndarray, precision: str = "fp32") -> np.ndarray:
        return self.runner.graph(self._head, precision).run(None, {"hidden": hidden})[0]

    @property
    def screens_head(self) -> bool:
        return self._screen is not None

    def greedy_logits(self, hidden: np.ndarray, ruled_out: tuple[int, ...] = ()) -> np.ndarray:
        """[rows, vocab] logits whose argmax is the fp32 head's: through the lowered head's screen
        when the package has one (head_screen.py), else from the fp32 head."""
        if self._screen is None:
            return self.head(hidden)[0]
        lowered, normed = self.runner.graph(self._head, self._screen.precision).run(None, {"hidden": hidden})[:2]
        return screened_logits(self._screen, lowered[0], normed.reshape(-1, normed.shape[-1]), ruled_out)

    def blocks(self, cache: KVCache, hidden: np.ndarray, positions: np.ndarray, start: int, stop: int,
               precision: str = "fp32", attention: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Run blocks start..stop-1 on new tokens at `positions`, appending their keys and values.
        -> hidden states, and (attention=True) the attention each cache entry of the last block received."""
        position_ids = positions.reshape(1, -1).astype(np.int64)
        received = np.zeros((1, 0), np.float32)
        gqa = not attention and precision in self._gqa_precisions and cache.contiguous(start, stop, positions)
        breaks = () if gqa else tuple(cache.uniform_from(start))
        for segment, blocks in self.route(start, stop, breaks, gqa):
            total = cache.length(blocks[0]) + hidden.shape[1]
            on_gqa = GQA_FEED in segment.inputs  # a route may mix in a traced block where no GQA span fits
            if on_gqa and cache.capacity:
                hidden = self._in_place(cache, segment, precision, blocks, hidden, total)
                cache.wrote(blocks, positions)
                continue
            if on_gqa:
                feeds = {"hidden": hidden, **_gqa_counters(total)}
            else:
                feeds = {"hidden": hidden, "position_ids": position_ids,
                         "attention_bias": np.zeros((1, total), np.float32)}
            for b in blocks:
                feeds[f"past_key_{b:02d}"], feeds[f"past_value_{b:02d}"] = self._past(cache, b)
            outputs = self.runner.graph(segment, precision).run(None, feeds)
            hidden = outputs[0]
            if not on_gqa:
                received = outputs[-1]
            for i, b in enumerate(blocks):
                cache.store(b, outputs[1 + 2 * i], outputs[2 + 2 * i], positions)
        return hidden, received

    def _in_place(self, cache: KVCache, segment: Segment, precision: str, blocks: range, hidden: np.ndarray,
                  total: int) -> np.ndarray:
        """A GroupQueryAttention span on the cache's own buffers: it appends the new entries in place,
        and only the hidden states, two counters and the new states cross per call."""
        graph = self.runner.graph(segment, precision)
        key = f"{segment.name}/{precision}"
        binding = cache.bindings.get(key)  # a binding's buffers hold at least the capacity
        if binding is None or total > cache.capacity:
            buffers = {b: cache.buffers(b, self.facts.num_kv_heads, self.facts.head_dim, total) for b in blocks}
            binding = cache.bindings.get(key)  # growing buffers drops the bindings
            if binding is None:
                shared = {}
                for b in blocks:
                    shared[(f"past_key_{b:02d}", f"present_key_{b:02d}")] = buffers[b][0]
                    shared[(f"past_value_{b:02d}", f"present_value_{b:02d}")] = buffers[b][1]
                binding = cache.bindings[key] = graph.bind_in_place(shared)
        return graph.run_bound(binding, {"hidden": hidden, **_gqa_counters(total)}, hidden.shape)

    def fill_key_values(self, cache: KVCache, hidden: np.ndarray, positions: np.ndarray, start: int,
                        precision: str = "fp32") -> None:
        """Cache entries of blocks start.. for tokens that exited early: their K/V of the exit's state."""
        position_ids = positions.reshape(1, -1).astype(np.int64)
        for b in range(start, self.num_blocks):
            past_key, past_value = self._past(cache, b)
            key, value = self.runner.graph(self._kv[b], precision).run(None, {
                "hidden": hidden, "position_ids": position_ids,
                f"past_key_{b:02d}": past_key, f"past_value_{b:02d}": past_value})
            cache.store(b, key, value, positions)

    def _past(self, cache: KVCache, block: int) -> tuple[np.ndarray, np.ndarray]:
        entries = cache.entries(block)
        if entries is None:
            empty = np.zeros((1, self.facts.num_kv_heads, 0, self.facts.head_dim), np.float32)
            return empty, empty
        return entries

    def sequence_logits(self, ids: list[int], precision: str = "fp32") -> np.ndarray:
        """Next-token logits at every position of a sequence, in one pass (teacher forcing)."""
        cache = KVCache(self.num_blocks)
        hidden = self.embed(np.array([ids], np.int64), precision)
        hidden, _ = self.blocks(cache, hidden, np.arange(len(ids)), 0, self.num_blocks, precision)
        return self.head(hidden, precision)[0]

    def precisions(self) -> tuple[str, ...]:
        return ("fp32", *(v.name for v in self.manifest.precision_variants))
