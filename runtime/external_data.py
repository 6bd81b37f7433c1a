"""Where an ONNX graph says its external weights live, read without the onnx package.

ONNX had path-traversal bugs through external-data locations (CVE-2024-27318, CVE-2024-27319): a
tensor may name any file as its data. The runtime must check those names before onnxruntime opens
the graph, and it depends on neither onnx nor protobuf's generated classes, so this module walks the
protobuf wire format itself, descending only into the fields that can hold tensors (onnx.proto3):

    ModelProto.graph = 7, functions = 25 (model-local functions: FunctionProto.node = 7)
    GraphProto.node = 1, initializer = 5, sparse_initializer = 15
    NodeProto.attribute = 5
    AttributeProto.t = 5, g = 6, tensors = 10, graphs = 11, sparse_tensor = 22, sparse_tensors = 23
    SparseTensorProto.values = 1, indices = 2
    TensorProto.external_data = 13 (StringStringEntryProto: key = 1, value = 2)
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator

from ..errors import PackageError

_MODEL_GRAPH = 7
_MODEL_FUNCTIONS = 25
_FUNCTION_NODE = 7
_GRAPH = {1: "node", 5: "tensor", 15: "sparse"}
_NODE_ATTRIBUTE = 5
_ATTRIBUTE = {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"}
_SPARSE = {1: "tensor", 2: "tensor"}
_TENSOR_EXTERNAL_DATA = 13
MAX_DEPTH = 32
# Fields a walk may visit, over all graphs of one package: the walk costs about 0.7 us a field, so a
# crafted file of tiny fields (10 MB of them took 3.4 s) would otherwise keep load() busy for minutes.
# Exported packages hold far fewer (MiniLM with every span and an int8 variant: 86,000 in all).
MAX_FIELDS = 2_000_000
_budget: ContextVar[list[int] | None] = ContextVar("edgeinfer_protobuf_fields", default=None)


@contextmanager
def field_budget(limit: int = MAX_FIELDS) -> Iterator[None]:
    """One budget of protobuf fields for every walk inside the block (one package's verification)."""
    token = _budget.set([limit])
    try:
        yield
    finally:
        _budget.reset(token)


def _varint(data: memoryview, position: int) -> tuple[int, int]:
    result, shift = 0, 0
    while True:
        if position >= len(data) or shift > 63:
            raise PackageError("graph file is not valid ONNX protobuf (truncated varint)")
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, position
        shift += 7


def _fields(data: memoryview):
    """(field number, wire type, value) for each field; length-delimited values as memoryviews."""
    budget = _budget.get()
    position = 0
    while position < len(data):
        if budget is not None:
            budget[0] -= 1
            if budget[0] < 0:
                raise PackageError(f"the package's graphs hold more than {MAX_FIELDS:,} protobuf fields where "
                                   f"tensors may be (exported models hold far fewer); refusing to walk them")
        key, position = _varint(data, position)
        number, wire = key >> 3, key & 7
        if number == 0:  # invalid in protobuf; also what a file of zeros parses as, byte pair by byte pair
            raise PackageError("graph file is not valid ONNX protobuf (field number 0)")
        if wire == 0:
            value, position = _varint(data, position)
        elif wire == 1:
            value, position = None, position + 8
        elif wire == 5:
            value, position = None, position + 4
        elif wire == 2:
            length, position = _varint(data, position)
            if position + length > len(data):
                raise PackageError("graph file is not valid ONNX protobuf (a field runs past the end)")
            value, position = data[position:position + length], position + length
        else:
            raise PackageError(f"graph file is not valid ONNX protobuf (wire type {wire})")
        if position > len(data):
            raise PackageError("graph file is not valid ONNX protobuf (truncated)")
        yield number, wire, value


def external_entries(model_bytes: bytes) -> list[dict[str, str]]:
    """The external_data entries (location, offset, length) of every tensor of this model, subgraphs
    included; within the field budget in force (field_budget), or one of MAX_FIELDS for this graph."""
    if _budget.get() is None:
        with field_budget():
            return external_entries(model_bytes)
    found: list[dict[str, str]] = []
    for number, wire, value in _fields(memoryview(model_bytes)):
        if number == _MODEL_GRAPH and wire == 2:
            _graph(value, found, 0)
        elif number == _MODEL_FUNCTIONS and wire == 2:  # a Constant inside a function may name a file too
            for function_number, function_wire, node in _fields(value):
                if function_number == _FUNCTION_NODE and function_wire == 2:
                    _node(node, found, 0)
    return found


def external_locations(model_bytes: bytes) -> set[str]:
    """Every `location` an external-data tensor of this model names."""
    return {entry["location"] for entry in external_entries(model_bytes) if "location" in entry}


def external_bytes(model_bytes: bytes) -> int:
    """Bytes of the external tensors this model reads (each (location, offset) once)."""
    seen: dict[tuple[str, str], int] = {}
    for entry in external_entries(model_bytes):
        length = entry.get("length", "0")
        seen[(entry.get("location", ""), entry.get("offset", "0"))] = int(length) if length.isdigit() else 0
    return sum(seen.values())


def _graph(data: memoryview, found: list[dict[str, str]], depth: int) -> None:
    if depth > MAX_DEPTH:
        raise PackageError("graph file nests subgraphs too deeply; refusing it")
    for number, wire, value in _fields(data):
        if wire != 2 or number not in _GRAPH:
            continue
        kind = _GRAPH[number]
        if kind == "node":
            _node(value, found, depth)
        else:
            _tensor_or_sparse(kind, value, found)


def _node(data: memoryview, found: list[dict[str, str]], depth: int) -> None:
    for number, wire, attribute in _fields(data):
        if number == _NODE_ATTRIBUTE and wire == 2:
            _attribute(attribute, found, depth)


def _attribute(data: memoryview, found: list[dict[str, str]], depth: int) -> None:
    for number, wire, value in _fields(data):
        if wire != 2 or number not in _ATTRIBUTE:
            continue
        kind = _ATTRIBUTE[number]
        if kind == "graph":
            _graph(value, found, depth + 1)
        else:
            _tensor_or_sparse(kind, value, found)


def _tensor_or_sparse(kind: str, data: memoryview, found: list[dict[str, str]]) -> None:
    if kind == "sparse":
        for number, wire, value in _fields(data):
            if wire == 2 and number in _SPARSE:
                _tensor(value, found)
    else:
        _tensor(data, found)


def _tensor(data: memoryview, found: list[dict[str, str]]) -> None:
    """One dict per tensor: its external_data entries (each a key/value pair) together."""
    entry: dict[str, str] = {}
    for number, wire, value in _fields(data):
        if number == _TENSOR_EXTERNAL_DATA and wire == 2:
            entry.update(_entry(value))
    if entry:
        found.append(entry)


def _entry(data: memoryview):
    key = value = None
    for number, wire, item in _fields(data):
        if wire == 2 and number in (1, 2):
            text = bytes(item).decode("utf-8", errors="replace")
            key, value = (text, value) if number == 1 else (key, text)
    if key is not None and value is not None:
        yield key, value
