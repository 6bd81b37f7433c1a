"""A package's LiteRT graphs behind the call an onnxruntime session answers: `run(None, feeds)`.

The executor (session.py) is written against that one call, so LiteRT needs no second executor.
What differs is hidden here: LiteRT graphs have static shapes, so the token axis is padded up to
the next converted bucket (padding masked by PAD_BIAS in `attention_bias`, exactly as in a padded
batch), batches run row by row (signatures are converted at batch 1), and token-axis outputs are
cut back to the tokens given. Pruning therefore still saves time, one bucket at a time.

The graphs run in ai_edge_litert's CompiledModel on XNNPACK with a weight cache file. Without it,
XNNPACK packs the weights of every signature separately, although the signatures share them in the
file: the SST-2 MiniLM file (108 MB, 14 segments x 5 buckets) grew the process by 536 MB; with the
cache each weight is packed once, +110 MB, and 64 tokens ran at 12.3 ms instead of 15.5. The cache
file lives while its model does (per process: a file being built by one process is not safe for
another to map). `tflite_runtime` is accepted where ai_edge_litert is missing, through its
Interpreter (no weight cache); its last release (2.14) predates the op versions current converters
write, so a graph it cannot load is refused with one line naming the fix.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import os
import sys
import tempfile
import threading
import uuid
import weakref
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from ..errors import InputError, PackageError
from ..manifest import PAD_BIAS, TOKEN_AXIS_NAMES, LiteRTGraphs, Segment
from .user_cache import cache_root

INSTALL_HINT = "pip install 'edgeinfer[litert]' (ai-edge-litert)"
WEIGHT_CACHE_SUFFIX = ".xnnpack"

Runner = Callable[[list[np.ndarray]], list[np.ndarray]]  # inputs in signature order -> outputs in order


def litert_library() -> str:
    """The interpreter this process would use; ImportError when none is installed."""
    import importlib.util

    for module, name in (("ai_edge_litert", "ai-edge-litert"), ("tflite_runtime", "tflite-runtime")):
        if importlib.util.find_spec(module) is not None:
            return name
    raise ImportError(f"no LiteRT interpreter is installed; {INSTALL_HINT}")


def litert_library_version() -> str:
    """'ai-edge-litert 2.3.0': what `edgeinfer targets` and device fingerprints name."""
    from importlib.metadata import PackageNotFoundError, version

    name = litert_library()
    try:
        return f"{name} {version(name)}"
    except PackageNotFoundError:
        return f"{name} (unknown version)"


_quiet_lock = threading.RLock()  # two windows at once would restore each other's /dev/null


@contextlib.contextmanager
def quiet_native_logs() -> Iterator[None]:
    """LiteRT's C++ side logs to file descriptor 2 while it loads (plugins it looks for and does not
    find, the accelerators it registers); a runtime embedded in an app should not print that. The
    window is process-wide, so it is kept short: loading, and each signature's first run."""
    with _quiet_lock:
        sys.stderr.flush()
        saved = os.dup(2)
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            os.close(null)


def _weight_cache_path() -> Path:
    """A fresh cache file for this process, in the user cache when writable; files left by
    processes that no longer run are removed first."""
    folder = cache_root() / "litert"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob(f"*{WEIGHT_CACHE_SUFFIX}"):
            pid = stale.name.split("-", 1)[0]
            if pid.isdigit() and not _alive(int(pid)):
                stale.unlink(missing_ok=True)
    except OSError:
        folder = Path(tempfile.gettempdir())
    return folder / f"{os.getpid()}-{uuid.uuid4().hex[:12]}{WEIGHT_CACHE_SUFFIX}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_open_files: "weakref.WeakSet[LiteRTFile]" = weakref.WeakSet()
_loaded = threading.Event()  # LiteRT has run in this process
_shared: "weakref.WeakValueDictionary[tuple, LiteRTFile]" = weakref.WeakValueDictionary()
_shared_lock = threading.Lock()


def shared_file(path: Path, threads: int) -> "LiteRTFile":
    """The loaded file for this path and thread count, shared by every session of the process (a
    session per policy would otherwise load and pack the same weights again). Keyed by the file's
    identity too, so a package rewritten in place loads afresh."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns, threads)
    with _shared_lock:
        found = _shared.get(key)
        if found is None:
            found = _shared[key] = LiteRTFile(path, threads)
        return found


@atexit.register
def _release_quietly() -> None:
    """LiteRT logs as its models and accelerators are destroyed, and its process-wide environment
    is destroyed only after Python's last exit handler: where LiteRT ran, the models are released
    silently and file descriptor 2 stays silent for the last moments of the process."""
    if not _loaded.is_set():
        return
    sys.stderr.flush()
    os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
    for file in list(_open_files):
        file.release()
    gc.collect()


class LiteRTFile:
    """One .tflite file loaded once, its signatures prepared on first use.

    A model's buffers are not safe to fill from two threads at once, so calls on one file take turns.
    """

    def __init__(self, path: Path, threads: int):
        try:
            self.library = litert_library()
        except ImportError as err:
            raise InputError(str(err)) from None
        self.lock = threading.Lock()
        self._runners: dict[str, Runner] = {}
        try:
            with quiet_native_logs():
                self._open = self._compiled(path, threads) if self.library == "ai-edge-litert" \
                    else self._interpreter(path, threads)
        except (ValueError, RuntimeError) as err:
            first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
            hint = f"; {INSTALL_HINT}" if self.library == "tflite-runtime" else ""
            raise PackageError(f"{self.library} cannot load {path.name} ({first}){hint}") from None
        _open_files.add(self)
        _loaded.set()

    def runner(self, signature: str) -> Runner:
        found = self._runners.get(signature)
        if found is None:
            try:
                with quiet_native_logs():
                    opened = self._open(signature)
            except (ValueError, RuntimeError, KeyError):
                raise PackageError(f"the LiteRT file has no signature {signature!r}; re-convert the package") from None
            found = self._runners[signature] = self._quiet_first_call(signature, opened)
        return found

    def _quiet_first_call(self, signature: str, run: Runner) -> Runner:
        """LiteRT creates its environment and accelerators on a model's first run, logging as it does;
        after that first run the signature's own runner takes its place, with nothing in between."""
        def first(arrays: list[np.ndarray]) -> list[np.ndarray]:
            with quiet_native_logs():
                outputs = run(arrays)
            self._runners[signature] = run
            return outputs
        return first

    def release(self) -> None:
        """Drop the model and its buffers (the file is unusable afterwards)."""
        self._runners.clear()
        self._open = None

    def __del__(self) -> None:
        try:  # LiteRT logs as a model and its environment are destroyed
            with quiet_native_logs():
                self.release()
        except Exception:  # noqa: BLE001 - late in interpreter shutdown, os may be gone; nothing to do
            pass

    def _compiled(self, path: Path, threads: int) -> Callable[[str], Runner]:
        from ai_edge_litert.compiled_model import CompiledModel
        from ai_edge_litert.options import CpuOptions, Options

        cache = _weight_cache_path()
        model = CompiledModel.from_file(str(path), options=Options(
            cpu_options=CpuOptions(num_threads=threads, xnnpack_weight_cache_path=str(cache))))
        weakref.finalize(self, cache.unlink, missing_ok=True)

        def open_signature(key: str) -> Runner:
            index = model.get_signature_index(key)
            if index < 0:
                raise KeyError(key)
            names = model.get_signature_by_index(index)
            inputs, outputs = model.create_input_buffers(index), model.create_output_buffers(index)
            in_details = model.get_input_tensor_details(key)
            out_details = model.get_output_tensor_details(key)
            # fixed per signature, so worked out once: (buffer, dtype) per input position,
            # (buffer, elements, dtype, shape) per output position
            feeds = [(inputs[slot], np.dtype(in_details[names["inputs"][slot]]["dtype"]))
                     for slot in _order(names["inputs"])]
            reads = []
            for slot in _order(names["outputs"]):
                detail = out_details[names["outputs"][slot]]
                shape = tuple(detail["shape"])
                reads.append((outputs[slot], int(np.prod(shape)), np.dtype(detail["dtype"]), shape))

            def run(arrays: list[np.ndarray]) -> list[np.ndarray]:
                for (buffer, dtype), array in zip(feeds, arrays):
                    buffer.write(np.ascontiguousarray(array, dtype=dtype))
                model.run_by_index(index, inputs, outputs)
                return [buffer.read(size, dtype).reshape(shape) for buffer, size, dtype, shape in reads]
            return run
        return open_signature

    def _interpreter(self, path: Path, threads: int) -> Callable[[str], Runner]:
        from tflite_runtime.interpreter import Interpreter  # type: ignore[import-not-found]

        interpreter = Interpreter(model_path=str(path), num_threads=threads)

        def open_signature(key: str) -> Runner:
            runner = interpreter.get_signature_runner(key)
            details = runner.get_input_details()
            inputs = sorted(details, key=_position)
            types = [details[k]["dtype"] for k in inputs]
            outputs = sorted(runner.get_output_details(), key=_position)

            def run(arrays: list[np.ndarray]) -> list[np.ndarray]:
                got = runner(**{k: np.ascontiguousarray(a, dtype=t) for k, a, t in zip(inputs, arrays, types)})
                return [got[k] for k in outputs]
            return run
        return open_signature


def _position(key: str) -> int:
    """args_3 -> 3, output_1 -> 1: signature tensors are named by position."""
    return int(key.rsplit("_", 1)[1])


def _order(names: list[str]) -> list[int]:
    """Slot of each position: _order(["args_1", "args_0"]) == [1, 0]."""
    return [slot for slot, _ in sorted(enumerate(names), key=lambda item: _position(item[1]))]


class LiteRTGraph:
    """One segment at every bucket of a LiteRT file."""

    def __init__(self, file: LiteRTFile, graphs: LiteRTGraphs, segment: Segment, pad_id: int):
        self.file, self.graphs, self.segment = file, graphs, segment
        self._pads = {"input_ids": pad_id, "attention_bias": PAD_BIAS}

    def run(self, output_names: None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        names = self.segment.inputs
        tokens = int(feeds[names[0]].shape[1])
        bucket = self.graphs.bucket_for(tokens)
        if bucket is None:
            raise InputError(f"{tokens} tokens exceed the largest LiteRT bucket ({self.graphs.buckets[-1]}); "
                             f"re-convert with --buckets up to the tokenizer's max_length")
        padded = [self._pad(name, feeds[name], bucket) for name in names]
        runner = self.file.runner(self.graphs.signature(self.segment.name, bucket))
        rows: list[list[np.ndarray]] = []
        with self.file.lock:
            for r in range(padded[0].shape[0]):
                rows.append(runner([value[r:r + 1] for value in padded]))
        results = []
        for position, name in enumerate(self.segment.outputs):
            stacked = np.concatenate([row[position] for row in rows]) if len(rows) > 1 else rows[0][position]
            results.append(stacked[:, :tokens] if name in TOKEN_AXIS_NAMES else stacked)
        return results

    def _pad(self, name: str, value: np.ndarray, bucket: int) -> np.ndarray:
        missing = bucket - value.shape[1]
        if missing == 0 or name not in TOKEN_AXIS_NAMES:
            return value
        widths = [(0, 0)] * value.ndim
        widths[1] = (0, missing)
        return np.pad(value, widths, constant_values=self._pads.get(name, 0))
