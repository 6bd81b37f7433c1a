"""The graphs a session calls, opened on first use: an onnxruntime session per (segment, precision),
or on the LiteRT backend a LiteRTGraph behind the same `run` call. Every runtime shares it: the
encoder session, the whole-model session, the decoder, and probe."""

from __future__ import annotations

import threading
from typing import Protocol

import numpy as np
import onnxruntime as ort

from ..errors import PackageError
from ..manifest import WHOLE, Segment
from ..targets.fingerprint import device_fingerprint, fingerprint_key
from .litert_graphs import LiteRTFile, LiteRTGraph, shared_file
from .optimized_graphs import cache_folder
from .package import Package, check_interface
from .sessions import default_threads, effective_threads, open_session


class Graph(Protocol):
    """What the executor calls: an onnxruntime session and a LiteRTGraph both answer it."""

    def run(self, output_names: None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]: ...


class OnnxGraph:
    """An onnxruntime session whose failure inside a run is one line naming the graph. Load checks what
    a manifest claims against its graphs; what they cannot see (a hostile package whose tokenizer
    makes ids its embedding table does not hold, say) fails here instead of as onnxruntime's trace."""

    __slots__ = ("session", "path", "first_output")

    def __init__(self, session: ort.InferenceSession, path: str):
        self.session, self.path = session, path
        self.first_output = session.get_outputs()[0].name

    def run(self, output_names: None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        try:
            return self.session.run(output_names, feeds)
        except Exception as err:  # onnxruntime raises its own untyped errors
            raise self._failed(err) from None

    def bind_in_place(self, buffers: dict[tuple[str, str], np.ndarray]) -> ort.IOBinding:
        """A binding whose (input, output) pairs are each one caller-owned buffer: the graph reads and
        writes it in place (GroupQueryAttention's shared past/present cache). The caller keeps the
        buffers alive as long as the binding."""
        binding = self.session.io_binding()
        try:  # names come from the manifest's blocks: a graph without them is a broken package
            for (input_name, output_name), array in buffers.items():
                value = ort.OrtValue.ortvalue_from_numpy(array)  # a view of the buffer, not a copy
                binding.bind_ortvalue_input(input_name, value)
                binding.bind_ortvalue_output(output_name, value)
        except Exception as err:
            raise self._failed(err) from None
        return binding

    def run_bound(self, binding: ort.IOBinding, feeds: dict[str, np.ndarray], output_shape: tuple[int, ...]
                  ) -> np.ndarray:
        """Run with `feeds` on a binding from bind_in_place; -> the graph's first output (float32, of
        the shape the caller knows it has), written straight into a fresh array."""
        output = np.empty(output_shape, np.float32)
        try:
            for name, array in feeds.items():
                binding.bind_cpu_input(name, array)
            binding.bind_output(self.first_output, "cpu", 0, np.float32, list(output_shape), output.ctypes.data)
            self.session.run_with_iobinding(binding)
        except Exception as err:
            raise self._failed(err) from None
        return output

    def _failed(self, err: Exception) -> PackageError:
        first = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
        return PackageError(f"graph {self.path} failed inside onnxruntime ({first}); the package's graphs do "
                            f"not take what its manifest and tokenizer give them: re-export it")


class GraphRunner:
    """One graph per (segment, precision), created on first use and shared by all threads: an
    onnxruntime session, or on the LiteRT backend a LiteRTGraph (same `run` call)."""

    def __init__(self, package: Package, threads: int | None, providers: tuple[str, ...] = ("CPUExecutionProvider",),
                 optimized_cache: bool = False, shared_arena: bool = False, backend: str = "onnxruntime"):
        self.package = package
        self.shared_arena = shared_arena
        self.threads = threads
        self.intra_op_threads = effective_threads(threads)  # what onnxruntime really runs on
        self.providers = providers
        self.backend = backend
        # a signed package trusts nothing from the user cache, optimized graphs included
        self._device_key = fingerprint_key(device_fingerprint(self.intra_op_threads, providers[0])) \
            if optimized_cache and backend == "onnxruntime" and not package.signed else None
        self._graphs: dict[str, Graph] = {}
        self._litert_files: dict[str, LiteRTFile] = {}
        self._lock = threading.Lock()

    def has(self, segment: Segment, precision: str = "fp32") -> bool:
        """Can this backend run the segment at this precision? (LiteRT files hold a subset.)"""
        if self.backend != "litert":
            return segment.has_precision(precision)
        litert = self.package.manifest.litert
        return litert is not None and precision in litert.files and segment.name in litert.segments

    def graph(self, segment: Segment, precision: str = "fp32") -> Graph:
        key = f"{segment.name}/{precision}"
        graph = self._graphs.get(key)
        if graph is None:
            with self._lock:
                graph = self._graphs.get(key)
                if graph is None:
                    graph = self._litert(segment, precision) if self.backend == "litert" \
                        else self._onnxruntime(segment, precision)
                    self._graphs[key] = graph
        return graph

    def _onnxruntime(self, segment: Segment, precision: str) -> OnnxGraph:
        path = segment.graph(precision)
        # only graphs of the whole depth (a fused full span, a whole-model package's one graph): their
        # optimization is what costs (28 ms of 95 for MiniLM); a block or stage graph optimizes in a
        # few ms and would add its weights to the disk again
        worth_caching = self._device_key is not None and (len(segment.covers) > 3 or segment.kind == WHOLE)
        cache = cache_folder(self.package.manifest, path, self.providers, self._device_key) if worth_caching else None
        read = [path, *self._external_files(path)]
        self.package.check_unchanged(read)  # a file swapped since load() is refused, by name
        session = open_session(self.package.path(path), self.threads, self.providers, cache, self.shared_arena,
                               lambda: self.package.all_unchanged(read))
        self.package.check_unchanged(read)  # ... and one swapped while onnxruntime read it
        check_interface(segment, path, [i.name for i in session.get_inputs()],
                        [(o.name, o.shape) for o in session.get_outputs()], self.package.manifest)
        return OnnxGraph(session, path)

    def _external_files(self, graph: str) -> list[str]:
        """The package files a graph reads its weights from (verified at load with the graph)."""
        folder = graph.rsplit("/", 1)[0] + "/" if "/" in graph else ""
        listed = {f.path for f in self.package.manifest.files}
        return [p for p in listed if p.startswith(folder) and p.endswith(".bin")]

    def _litert(self, segment: Segment, precision: str) -> LiteRTGraph:
        litert = self.package.manifest.litert
        if not self.has(segment, precision):
            raise PackageError(f"segment {segment.name!r} has no LiteRT graph at {precision}; "
                               f"convert the package with `edgeinfer convert PKG --to litert`")
        path = litert.files[precision]
        if path not in self._litert_files:
            self._litert_files[path] = shared_file(self.package.path(path), self.threads or default_threads())
        return LiteRTGraph(self._litert_files[path], litert, segment, self.package.manifest.tokenizer.pad_id)
