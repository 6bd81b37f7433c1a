"""Load bound: does load() of a package near 1 GB, genuine or crafted, finish within twice a sha256 of it?

    python -m edgeinfer.bench.studies.load_bound [--package PKG] [--gb 1.0] [--repeats 3] [--report reports/load_bound]

Each case copies a small package (--package: an exported classifier, e.g. the demo's) and grows it
to about --gb: a weights file listed and checksummed; one graph holding the bytes inline; a graph of
as many tiny protobuf fields as fit before one large field (what a crafted file makes the walk do);
ten hard links to one file. The baseline is hashing every file of the package with sha256 (read and
digest, page cache warm), measured beside each load; load() starts from an empty user cache, so
nothing is trusted from an earlier pass. The figure is load time over sha256 time, the median of
--repeats runs each.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from ...errors import EdgeInferError
from ...manifest import file_entry
from ...runtime.load import load
from ..report_files import write_atomically, write_json


def _relist(package: Path) -> None:
    """The manifest lists every file with its true size and digest: only what load() itself checks
    beyond them can refuse a case."""
    manifest = json.loads((package / "manifest.json").read_text(encoding="utf-8"))
    manifest["files"] = [asdict(file_entry(package, entry["path"])) for entry in manifest["files"]]
    (package / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")


def _list_more(package: Path, paths: list[str]) -> None:
    manifest = json.loads((package / "manifest.json").read_text(encoding="utf-8"))
    manifest["files"] += [{"path": p, "bytes": 0, "sha256": "0" * 64} for p in paths]
    (package / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")


def _zeros(path: Path, size: int, prefix: bytes = b"") -> None:
    chunk = bytes(1 << 24)
    with open(path, "wb") as out:
        out.write(prefix)
        left = size
        while left > 0:
            out.write(chunk[:min(left, len(chunk))])
            left -= len(chunk)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def external_weights(package: Path, size: int) -> None:
    _zeros(package / "graphs" / "extra.bin", size)
    _list_more(package, ["graphs/extra.bin"])


def inline_graph(package: Path, size: int) -> None:
    """The head graph gains an unused initializer of `size` bytes, and the manifest says it is resident."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    head = package / "graphs" / "head.onnx"
    model = onnx.load(str(head))
    model.graph.initializer.append(numpy_helper.from_array(np.zeros(size // 4, dtype=np.float32), "unused"))
    head.write_bytes(model.SerializeToString())
    manifest = json.loads((package / "manifest.json").read_text(encoding="utf-8"))
    for segment in manifest["segments"]:
        for variant in segment["variants"]:
            if variant["path"] == "graphs/head.onnx":
                variant["resident_bytes"] = head.stat().st_size
    (package / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")


def tiny_fields_then_a_blob(package: Path, size: int) -> None:
    """1,500,000 two-byte fields, then one field of `size` bytes: valid protobuf, crafted to be slow."""
    _zeros(package / "graphs" / "head.onnx", size, prefix=b"\x08\x01" * 1_500_000 + b"\x52" + _varint(size))


def hard_links(package: Path, size: int) -> None:
    _zeros(package / "graphs" / "extra.bin", size // 10)
    for i in range(10):
        os.link(package / "graphs" / "extra.bin", package / "graphs" / f"link{i}.bin")
    _list_more(package, ["graphs/extra.bin", *(f"graphs/link{i}.bin" for i in range(10))])


CASES: dict[str, Callable[[Path, int], None]] = {
    "external weights": external_weights, "inline graph": inline_graph,
    "tiny fields then a blob": tiny_fields_then_a_blob, "hard links": hard_links,
}


def sha256_seconds(package: Path) -> float:
    started = time.perf_counter()
    for path in sorted(package.rglob("*")):
        if path.is_file():
            with open(path, "rb") as file:
                hashlib.file_digest(file, "sha256")
    return time.perf_counter() - started


def load_seconds(package: Path, cache: Path) -> tuple[float, str]:
    shutil.rmtree(cache, ignore_errors=True)
    started = time.perf_counter()
    try:
        load(package, optimized_cache=False)
        outcome = "loaded"
    except EdgeInferError as err:
        outcome = f"refused: {err}"
    return time.perf_counter() - started, outcome


def measure(source: Path, name: str, size: int, repeats: int, work: Path) -> dict:
    package = work / "case.edge"
    shutil.rmtree(package, ignore_errors=True)
    shutil.copytree(source, package)
    CASES[name](package, size)
    _relist(package)
    cache = work / "cache"
    os.environ["EDGEINFER_CACHE"] = str(cache)
    sha256_seconds(package)  # the page cache warm for both sides
    hashes, loads, outcome = [], [], ""
    for _ in range(repeats):
        hashes.append(sha256_seconds(package))
        seconds, outcome = load_seconds(package, cache)
        loads.append(seconds)
    total = sum(p.stat().st_size for p in package.rglob("*") if p.is_file())
    shutil.rmtree(package)
    sha, loaded = statistics.median(hashes), statistics.median(loads)
    return {"case": name, "gb": round(total / 1e9, 3), "sha256_s": round(sha, 3), "load_s": round(loaded, 3),
            "ratio": round(loaded / sha, 3), "outcome": outcome[:160], "repeats": repeats}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package", required=True, help="a small exported classifier package to grow")
    parser.add_argument("--gb", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--report", default="reports/load_bound")
    args = parser.parse_args(argv)
    size = int(args.gb * 1e9)
    previous_cache = os.environ.get("EDGEINFER_CACHE")
    with tempfile.TemporaryDirectory(prefix="edgeinfer-load-bound-") as work:
        rows = [measure(Path(args.package), name, size, args.repeats, Path(work)) for name in CASES]
    if previous_cache is None:
        os.environ.pop("EDGEINFER_CACHE", None)
    else:
        os.environ["EDGEINFER_CACHE"] = previous_cache
    out = Path(args.report)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "load_bound.json", {"rows": rows})
    table = ["| case | GB | sha256 s | load() s | load / sha256 | outcome |", "|---|---:|---:|---:|---:|---|"]
    table += [f"| {r['case']} | {r['gb']} | {r['sha256_s']} | {r['load_s']} | {r['ratio']} | {r['outcome']} |"
              for r in rows]
    write_atomically(out / "load_bound.md", "# load() against sha256\n\n" + "\n".join(table) + "\n")
    print("\n".join(table))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
