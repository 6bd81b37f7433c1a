"""onnxruntime sessions that neither starve each other nor change the host's own sessions.

Every onnxruntime session owns a thread pool whose threads spin after each run, waiting for the
next; with 9 sessions of a segmented MiniLM the spinning threads starved the running one and the
model ran ~7x slower (measured with MiniLM as embed + 6 blocks + head on a 2-core EPYC). One
process-wide pool avoids that, but it is process-wide: once installed, every plain
`onnxruntime.InferenceSession` the host application creates with its default options fails
("use_per_session_threads must be false when using a global thread pool"). So each session keeps
its own pool, spinning while a run is under way and told to stop spinning when the run ends
(`session.force_spinning_stop`): no idle spinning to starve the next session, and no state outside
edgeinfer's own sessions. `use_global_thread_pool()` is the opt-in for a process that owns all its
onnxruntime sessions.
"""

from __future__ import annotations

import os
import shutil
import threading
import warnings
from pathlib import Path
from typing import Callable

import onnxruntime as ort

from ..errors import InputError, PackageError
from .optimized_graphs import cached_graph, publish, save_options

_lock = threading.Lock()
_global_pool_threads: int | None = None


def default_threads() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


def use_global_thread_pool(threads: int | None = None) -> None:
    """Run every edgeinfer session of this process on one onnxruntime thread pool (opt-in).

    Consequence: onnxruntime installs the pool for the whole process, and from then on every
    onnxruntime session the application creates itself must set
    `SessionOptions.use_per_session_threads = False`, or onnxruntime refuses to create it. Call this
    before the first edgeinfer session; it cannot be undone or resized."""
    global _global_pool_threads
    threads = threads or default_threads()
    with _lock:
        if _global_pool_threads == threads:
            return
        if _global_pool_threads is not None:
            raise InputError(f"the global thread pool already has {_global_pool_threads} threads; "
                             f"onnxruntime cannot resize it within a process")
        try:
            from onnxruntime.capi import _pybind_state

            _pybind_state.set_global_thread_pool_sizes(threads, 1)
        except (ImportError, AttributeError, RuntimeError) as err:
            raise InputError(f"this onnxruntime cannot install a global thread pool ({err}); "
                             f"leave the default per-session pools") from None
        _global_pool_threads = threads


def global_thread_pool_threads() -> int | None:
    """The global pool's size when use_global_thread_pool() installed one, else None."""
    return _global_pool_threads


def threads_in_use(threads: int | None) -> int:
    """The intra-op threads a session asking for `threads` really gets: with the global pool
    installed, the pool's size whatever was asked."""
    return _global_pool_threads or threads or default_threads()


def effective_threads(threads: int | None) -> int:
    """threads_in_use, with a warning when the global pool overrides what was asked."""
    if _global_pool_threads is not None and threads is not None and threads != _global_pool_threads:
        warnings.warn(f"threads={threads} is ignored: this process runs on onnxruntime's global pool of "
                      f"{_global_pool_threads} threads (use_global_thread_pool); trace.threads says so",
                      UserWarning, stacklevel=3)
    return threads_in_use(threads)


_shared_arena: bool | None = None


def _ensure_shared_arena() -> bool:
    """One CPU arena for every session that asks for it, registered once per process."""
    global _shared_arena
    with _lock:
        if _shared_arena is None:
            try:
                memory = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
                ort.create_and_register_allocator(memory, ort.OrtArenaCfg(0, -1, -1, -1))
                _shared_arena = True
            except (AttributeError, RuntimeError, TypeError):
                _shared_arena = False
        return _shared_arena


def session_options(threads: int | None = None, shared_arena: bool = False) -> ort.SessionOptions:
    """shared_arena: the session allocates from one process-wide arena instead of its own. A decoder
    runs a long prefill through several sessions; with an arena each, every one grew to the prefill's
    activations and kept them: peak RSS 1,753 MB against 1,053 MB shared for a 1,363-token SmolLM2
    prompt, at the same decoding speed (without any arena: 1,004 MB, 3-4% slower)."""
    threads = threads or default_threads()
    options = ort.SessionOptions()
    if shared_arena:
        if _ensure_shared_arena():
            options.add_session_config_entry("session.use_env_allocators", "1")
        else:
            options.enable_cpu_mem_arena = False
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if _global_pool_threads is not None:
        options.use_per_session_threads = False
    else:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.force_spinning_stop", "1")
    return options


def open_session(graph: Path | bytes, threads: int | None = None,
                 providers: tuple[str, ...] = ("CPUExecutionProvider",),
                 optimized_cache: Path | None = None, shared_arena: bool = False,
                 still_verified: Callable[[], bool] = lambda: True) -> ort.InferenceSession:
    """A session on a graph file, or on a serialized graph held in memory (the quantization search).

    optimized_cache: a folder (optimized_graphs.py) holding this graph as onnxruntime optimized it
    on this device; used when valid, written when missing, and only when `still_verified()` says the
    files onnxruntime just read are still the ones that passed their checks (a file swapped while
    the session was built must not poison the cache for later processes).
    """
    if optimized_cache is not None:
        cached = cached_graph(optimized_cache)
        if cached is not None:
            options = session_options(threads, shared_arena)
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # done before
            try:
                return ort.InferenceSession(str(cached), sess_options=options, providers=list(providers))
            except Exception:  # a damaged cache entry: build from the package graph again
                pass
    options = session_options(threads, shared_arena)
    staging = save_options(options, optimized_cache) if optimized_cache is not None and not isinstance(graph, bytes) else None
    source = graph if isinstance(graph, bytes) else str(graph)
    try:
        session = ort.InferenceSession(source, sess_options=options, providers=list(providers))
    except Exception as err:  # onnxruntime raises its own untyped errors for bad graphs
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        name = "in memory" if isinstance(graph, bytes) else Path(graph).name
        raise PackageError(f"graph {name} cannot be loaded by onnxruntime "
                           f"({str(err).splitlines()[0][:160]})") from None
    if staging is not None:
        if still_verified():
            publish(staging, optimized_cache)
        else:
            shutil.rmtree(staging, ignore_errors=True)
    return session
