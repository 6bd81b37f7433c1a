"""Opening an edge package: the manifest is read and every file checked before any graph loads.

A package is untrusted input (an app downloads it): paths must stay inside the package, every
file the manifest relies on must be listed with its size and sha256, and a mismatch is refused
with one line before onnxruntime ever sees the file.
"""

from __future__ import annotations

import hashlib
import mmap
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterator

from ..errors import PackageError
from ..manifest import (MANIFEST_NAME, MAX_MANIFEST_BYTES, POSITIONS_AFTER_PADDING, FileEntry, Manifest, Segment,
                        file_entry)
from ..manifest_reading import manifest_from_json
from .onnx_wire import GraphFacts, field_budget, graph_facts, package_field_budget
from .verified import identity, read_stamp, write_stamp

MAX_FILE_BYTES = 4 * 1024**3


@dataclass(frozen=True)
class Package:
    root: Path
    manifest: Manifest
    verified: dict[str, list[int]] = field(default_factory=dict)  # identity of each file when it passed
    signed: bool = False  # opened with a verify key: nothing in the user cache is trusted for it

    def path(self, relative: str) -> Path:
        return self.root / relative

    def unchanged(self, relative: str) -> Path:
        """The file, refused when it changed on disk since load() verified it: graphs open lazily, and
        a file swapped in between would otherwise run unchecked."""
        target = self.root / relative
        expected = self.verified.get(relative)
        if expected is not None:
            try:
                now = identity(target)
            except OSError:
                now = None
            if now != expected:
                raise PackageError(f"{relative} changed on disk after the package was verified; load it again")
        return target

    def verified_bytes(self, relative: str) -> bytes:
        """A small listed file's bytes, checked against its sha256 as they are read, so that what is
        used is what was verified, however the file changes afterwards (the tokenizer: its JSON is
        parsed from these bytes, not opened again by path)."""
        data = self.unchanged(relative).read_bytes()
        listed = next((f for f in self.manifest.files if f.path == relative), None)
        if self.verified and (listed is None or hashlib.sha256(data).hexdigest() != listed.sha256):
            raise PackageError(f"{relative} changed on disk after the package was verified; load it again")
        return data

    def check_unchanged(self, relatives: list[str]) -> None:
        for relative in relatives:
            self.unchanged(relative)

    def all_unchanged(self, relatives: list[str]) -> bool:
        try:
            self.check_unchanged(relatives)
        except PackageError:
            return False
        return True


def _inside(root: Path, relative: str) -> Path:
    pure = PurePosixPath(relative)
    if pure.is_absolute() or ".." in pure.parts or relative.startswith(("/", "\\")) or ":" in relative:
        raise PackageError(f"package path {relative!r} leaves the package; refusing it")
    resolved = (root / relative).resolve()
    if root not in resolved.parents:
        raise PackageError(f"package path {relative!r} resolves outside the package (symlink?); refusing it")
    return resolved


def open_package(path: str | os.PathLike[str], verify: bool = True, verify_key: object = None) -> Package:
    """verify_key: refuse the package unless manifest.sig is a valid Ed25519 signature by this key."""
    root = Path(path)
    if not root.is_dir():
        raise PackageError(f"{root} is not an edge package directory; export one with `edgeinfer export`")
    root = root.resolve()
    manifest_path = root / MANIFEST_NAME
    if not manifest_path.is_file():
        raise PackageError(f"{root} has no {MANIFEST_NAME}; it is not an edge package")
    if manifest_path.stat().st_size > MAX_MANIFEST_BYTES:
        raise PackageError(f"{MANIFEST_NAME} is larger than {MAX_MANIFEST_BYTES} bytes; refusing it")
    manifest_bytes = manifest_path.read_bytes()
    if verify_key is not None:
        from .signing import verify_signature

        verify_signature(root, manifest_bytes, verify_key)
    manifest = manifest_from_json(manifest_bytes)
    if verify:
        # a stamp in the user cache is not signed: with a key, every file is hashed again
        stamp = read_stamp(manifest_bytes) if verify_key is None else {}
        checked = verify_files(root, manifest, stamp)
        if checked != stamp and verify_key is None:
            write_stamp(manifest_bytes, checked)
        return Package(root, manifest, checked, signed=verify_key is not None)
    return Package(root, manifest, signed=verify_key is not None)


def verify_files(root: Path, manifest: Manifest, stamp: dict[str, list[int]] | None = None) -> dict[str, list[int]]:
    """Check every file; returns the identities of the files checked (runtime/verified.py). A file
    whose identity matches `stamp` passed these checks before and has not changed since."""
    stamp = stamp or {}
    checked: dict[str, list[int]] = {}
    listed = {entry.path: entry for entry in manifest.files}
    # ONNX graphs, each with the segment it serves: their external data and interface are checked too
    graphs = {v.path: s for s in manifest.segments for v in s.variants}
    litert = set(manifest.litert.files.values()) if manifest.litert is not None else set()
    needed = set(graphs) | litert | {manifest.tokenizer.path}
    for relative in sorted(needed | set(listed)):
        _inside(root, relative)
    for relative in sorted(needed):
        if relative not in listed:
            raise PackageError(f"{relative} is used by the manifest but not listed in its files; "
                               f"the package is incomplete or tampered with")
    digests: dict[tuple, str] = {}  # hard links to one file are hashed once
    # the graph walks of one package share one bound, which grows with the bytes they come with
    with field_budget(package_field_budget(sum(entry.bytes for entry in listed.values()))):
        for relative, entry in listed.items():
            _verify_file(root, relative, entry, manifest, graphs, listed, stamp, checked, digests)
    for variant in (v for s in manifest.segments for v in s.variants):
        if variant.resident_bytes is not None and variant.resident_bytes < listed[variant.path].bytes:
            raise PackageError(f"the manifest says {variant.path} holds {variant.resident_bytes} bytes in memory, "
                               f"less than its file's {listed[variant.path].bytes}; memory budgets would be "
                               f"planned on it: re-export the package")
    return checked


def _verify_file(root: Path, relative: str, entry: FileEntry, manifest: Manifest, graphs: dict[str, Segment],
                 listed: dict, stamp: dict, checked: dict[str, list[int]], digests: dict[tuple, str]) -> None:
    """One listed file: its size, its sha256 (once per hard-linked file), and for a graph the external
    data it reads and the interface it declares."""
    target = _inside(root, relative)
    if entry.bytes > MAX_FILE_BYTES:
        raise PackageError(f"{relative} declares {entry.bytes} bytes, over the {MAX_FILE_BYTES} limit")
    if not target.is_file():
        raise PackageError(f"{relative} is missing from the package; re-export or re-download it")
    if target.stat().st_size != entry.bytes:
        raise PackageError(f"{relative} has {target.stat().st_size} bytes where the manifest says "
                           f"{entry.bytes}; the package is damaged or tampered with")
    before = identity(target)
    if stamp.get(relative) == before:
        checked[relative] = before
        return
    if relative in graphs:
        # a graph is mapped once: the bytes that pass the digest are the bytes whose declarations are
        # checked. The walk goes first, as it is what a crafted file can make slow: its field budget
        # refuses such a file before any time goes to hashing it.
        refusal = None
        with _mapped(target) as data:
            try:
                facts = graph_facts(data)
            except PackageError as err:  # raised below, once the walk's views of the mapping are gone
                refusal = str(err)
            else:
                digest = hashlib.sha256(data).hexdigest()
        if refusal is not None:
            raise PackageError(f"{relative}: {refusal}")
    else:
        facts = None
        digest = digests.get(tuple(before)) or file_entry(root, relative).sha256
        digests[tuple(before)] = digest
    if digest != entry.sha256:
        raise PackageError(f"{relative} fails its sha256 check; the package is damaged or tampered with")
    if facts is not None:
        _check_external_data(root, relative, facts, listed)
        check_interface(graphs[relative], relative, list(facts.inputs), [(n, list(d)) for n, d in facts.outputs],
                        manifest)
        _check_positions(relative, facts, manifest)
    if identity(target) == before:  # unchanged while it was read
        checked[relative] = before


@contextmanager
def _mapped(path: Path) -> Iterator[memoryview | bytes]:
    """The file's bytes without copying them into memory (a 1 GB graph read whole cost a third of its
    hashing time in page faults)."""
    with open(path, "rb") as file:
        if os.fstat(file.fileno()).st_size == 0:
            yield b""
            return
        mapped = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
        view = memoryview(mapped)
        try:
            yield view
        finally:
            try:
                view.release()
                mapped.close()
            except BufferError:  # a view still held somewhere: the mapping closes when it is collected
                pass


def _check_positions(graph: str, facts: GraphFacts, manifest: Manifest) -> None:
    """An input of tokenizer.max_length tokens must find a row in the graph's learned position table;
    otherwise the first long input would fail inside onnxruntime."""
    if facts.positions is None or manifest.decoder is not None:
        return
    offset = manifest.tokenizer.pad_id + 1 if manifest.model.model_type in POSITIONS_AFTER_PADDING else 0
    if manifest.tokenizer.max_length + offset > facts.positions:
        raise PackageError(f"manifest: tokenizer.max_length {manifest.tokenizer.max_length} is more than the "
                           f"{facts.positions - offset} positions {graph} holds; re-export with a smaller --max-length")


def _check_external_data(root: Path, graph: str, facts: GraphFacts, listed: dict) -> None:
    """Every external-data file a graph names must sit inside the package and be listed (so hashed)."""
    folder = PurePosixPath(graph).parent
    for location in sorted(facts.locations):
        pure = PurePosixPath(location)
        if pure.is_absolute() or ".." in pure.parts or location.startswith("\\") or ":" in location:
            raise PackageError(f"{graph} reads external data from {location!r}, outside the package; refusing it")
        relative = str(folder / location)
        _inside(root, relative)
        if relative not in listed:
            raise PackageError(f"{graph} reads external data from {location!r}, which the manifest does not "
                               f"list; the package is tampered with")


def check_interface(segment: Segment, path: str, inputs: list[str], outputs: list[tuple[str, list]],
                    manifest: Manifest) -> None:
    """The graph takes and gives what the manifest says it does, and a classifier's answers have one
    value per label: a manifest that lies is refused at load (from the graph file's declarations) and
    again when onnxruntime opens the graph, never deep inside a run."""
    if set(inputs) != set(segment.inputs):
        raise PackageError(f"{path} takes inputs {sorted(inputs)}, but the manifest says {sorted(segment.inputs)}; "
                           f"re-export the package")
    if [name for name, _ in outputs] != list(segment.outputs):
        raise PackageError(f"{path} gives outputs {[name for name, _ in outputs]}, but the manifest says "
                           f"{list(segment.outputs)}; re-export the package")
    labels, embedding_dim = manifest.model.labels, manifest.model.embedding_dim
    answers = segment.kind in ("head", "exit") or (segment.kind == "span" and segment.covers
                                                  and manifest.segment(segment.covers[-1]).kind in ("head", "exit"))
    width = outputs[-1][1][-1] if answers and outputs and outputs[-1][1] else None
    if not isinstance(width, int):
        return
    if manifest.model.task == "text-classification" and labels and width != len(labels):
        raise PackageError(f"{path} answers {width} classes, but the manifest names {len(labels)} labels; "
                           f"re-export the package")
    if manifest.model.task == "feature-extraction" and embedding_dim is not None and width != embedding_dim:
        raise PackageError(f"{path} answers {width}-dimensional embeddings, but the manifest says "
                           f"embedding_dim {embedding_dim}; re-export the package")
