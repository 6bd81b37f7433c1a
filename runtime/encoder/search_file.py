"""A search index as one file, so that an app can ship a corpus embedded once, elsewhere, and search
it on the device (the Python runtime and the TypeScript one read the same file).

Layout: the 8 bytes `EDGEIDX1`, a little-endian uint32 header length, the header (UTF-8 JSON), zero
bytes up to a multiple of 4, then the corpus embeddings as little-endian float32, row by row. The
header names the package the index belongs to (the sha256 of its manifest, which lists every file's
sha256), the precision that embeds queries first, the gate, the corpus shape, and the sha256 of the
embeddings, so a damaged file or one built with another package is refused before it can answer.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ...errors import InputError, PackageError
from ..user_cache import write_bytes_atomically
from .search_gate import MarginGate

MAGIC = b"EDGEIDX1"
FORMAT = "edgeinfer-search-index"
VERSION = 1
MAX_HEADER_BYTES = 1 << 16


def write_index_file(path: Path, corpus: np.ndarray, gate: MarginGate, precision: str, package: str) -> None:
    """Written beside its destination and renamed into place (user_cache.write_bytes_atomically)."""
    rows = np.ascontiguousarray(corpus, dtype="<f4")
    header = json.dumps({"format": FORMAT, "version": VERSION, "package_manifest_sha256": package,
                         "precision": precision, "texts": int(rows.shape[0]), "dimension": int(rows.shape[1]),
                         "gate": {**asdict(gate), "margin": None if math.isinf(gate.margin) else gate.margin},
                         "embeddings_sha256": hashlib.sha256(rows.data).hexdigest()},
                        sort_keys=True).encode("utf-8")
    padding = b"\0" * (-(len(MAGIC) + 4 + len(header)) % 4)
    write_bytes_atomically(path, MAGIC + struct.pack("<I", len(header)) + header + padding, rows.data)


def read_index_file(path: Path, package: str, dimension: int) -> tuple[np.ndarray, MarginGate, str]:
    """(corpus embeddings, gate, precision), or one line saying why the file cannot be used."""
    if not path.is_file():
        raise InputError(f"{path} does not exist; build an index with search_index(...) and save it with index.save(PATH)")
    data = path.read_bytes()
    if len(data) < len(MAGIC) + 4 or data[:len(MAGIC)] != MAGIC:
        raise PackageError(f"{path} is not an edgeinfer search index (no EDGEIDX1 header)")
    (length,) = struct.unpack("<I", data[len(MAGIC):len(MAGIC) + 4])
    start = len(MAGIC) + 4
    if length > MAX_HEADER_BYTES or start + length > len(data):
        raise PackageError(f"{path}: its header length ({length} bytes) does not fit the file; rebuild the index")
    try:
        header = json.loads(data[start:start + length].decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise PackageError(f"{path}: its header is not valid JSON; rebuild the index") from None
    texts, width, gate = _check_header(path, header, package, dimension)
    body = data[start + length + (-(start + length) % 4):]
    if len(body) != texts * width * 4:
        raise PackageError(f"{path} holds {len(body)} bytes of embeddings, not {texts} x {width} float32; rebuild the index")
    if hashlib.sha256(body).hexdigest() != header["embeddings_sha256"]:
        raise PackageError(f"{path} fails its sha256 check; the index is damaged or tampered with")
    corpus = np.frombuffer(body, dtype="<f4").reshape(texts, width).astype(np.float32)
    if not np.all(np.isfinite(corpus)):
        raise PackageError(f"{path} holds embeddings that are not finite; rebuild the index")
    return corpus, gate, header["precision"]


def _check_header(path: Path, header: object, package: str, dimension: int) -> tuple[int, int, MarginGate]:
    def refuse(what: str) -> PackageError:
        return PackageError(f"{path}: {what}; rebuild the index")

    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise refuse(f"format must be {FORMAT!r}")
    if header.get("version") != VERSION:
        raise refuse(f"version {header.get('version')!r} is not {VERSION}")
    if header.get("package_manifest_sha256") != package:
        raise InputError(f"{path} was built with another package (or another export of it); build the index "
                         f"again with this one")
    texts, width = header.get("texts"), header.get("dimension")
    if not _whole(texts, 2, 1 << 31) or not _whole(width, 1, 1 << 16):
        raise refuse("texts and dimension must be whole numbers (at least 2 texts)")
    if width != dimension:
        raise refuse(f"its embeddings have {width} dimensions, the package's {dimension}")
    if not isinstance(header.get("precision"), str) or not isinstance(header.get("embeddings_sha256"), str):
        raise refuse("precision and embeddings_sha256 must be strings")
    return texts, width, _gate(header.get("gate"), refuse)


def _gate(raw: object, refuse) -> MarginGate:
    if not isinstance(raw, dict):
        raise refuse("gate must be an object")
    numbers = {key: raw.get(key) for key in ("agreement", "rescued_share", "bound")}
    if not all(_real(v, 0.0, 1.0) for v in numbers.values()) or not _whole(raw.get("sampled"), 0, 1 << 31) \
            or not _whole(raw.get("changed"), 0, 1 << 31):
        raise refuse("gate must hold agreement, rescued_share and bound in [0, 1], sampled and changed counts")
    margin = raw.get("margin")
    if margin is not None and not _real(margin, 0.0, 2.0):
        raise refuse("gate.margin must be a cosine gap in [0, 2] or null")
    return MarginGate(float(numbers["agreement"]), math.inf if margin is None else float(margin), raw["sampled"],
                      float(numbers["rescued_share"]), raw["changed"], float(numbers["bound"]))


def _whole(value: object, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _real(value: object, low: float, high: float) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and low <= value <= high
