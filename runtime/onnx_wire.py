"""What an ONNX graph file says about itself, read without the onnx package: where its external weights
live, and the inputs and outputs it declares.

ONNX had path-traversal bugs through external-data locations (CVE-2024-27318, CVE-2024-27319): a
tensor may name any file as its data. The runtime must check those names before onnxruntime opens
the graph, and it depends on neither onnx nor protobuf's generated classes, so this module walks the
protobuf wire format itself, descending only into the fields that can hold tensors (onnx.proto3):

    ModelProto.graph = 7, functions = 25 (model-local functions: FunctionProto.node = 7),
        training_info = 20 (TrainingInfoProto: initialization = 1, algorithm = 2, both graphs)
    GraphProto.node = 1, initializer = 5, sparse_initializer = 15
    NodeProto.attribute = 5
    AttributeProto.t = 5, g = 6, tensors = 10, graphs = 11, sparse_tensor = 22, sparse_tensors = 23
    SparseTensorProto.values = 1, indices = 2
    TensorProto.dims = 1, name = 8, external_data = 13 (StringStringEntryProto: key = 1, value = 2)

and, in the top graph only, its interface and the size of a learned position table (checked against
the manifest at load, so a manifest that lies about a graph is refused before anything runs):

    GraphProto.input = 11, output = 12 (ValueInfoProto: name = 1, type = 2)
    TypeProto.tensor_type = 1, TypeProto.Tensor.shape = 2, TensorShapeProto.dim = 1
    Dimension: dim_value = 1, dim_param = 2
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Iterator

from ..errors import PackageError

_MODEL_GRAPH = 7
_MODEL_FUNCTIONS = 25
_MODEL_TRAINING_INFO = 20
_FUNCTION_NODE = 7
_GRAPH = {1: "node", 5: "tensor", 15: "sparse", 11: "input", 12: "output"}
_NODE_ATTRIBUTE = 5
_ATTRIBUTE = {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"}
_SPARSE = {1: "tensor", 2: "tensor"}
_TENSOR_EXTERNAL_DATA = 13
_TENSOR_NAME = 8
_TENSOR_DIMS = 1
_POSITION_TABLE = "position_embeddings.weight"
_LOCATION = re.compile(b"location")
MAX_DEPTH = 32
# Fields a walk may visit. The walk costs about 0.7-1.4 us a field, so a crafted file of tiny fields (10
# MB of them took 3.4 s) would keep load() busy for minutes. A package's walks share one budget that
# grows with its bytes: at one field per 2 KB the walk costs at most half of what hashing those bytes
# does (sha256 runs at 0.7 ns a byte here), so load() stays within twice a sha256 of the package.
# Exported packages walk far fewer (fields, bytes): MiniLM SST-2 with every span and an int8 variant
# 32,000 in 116 MB; SmolLM2-135M with its q8 variant 106,000 in 697 MB; a tiny test model 12,000.
MAX_FIELDS = 2_000_000
BASE_FIELDS = 100_000
BYTES_PER_FIELD = 2048


def package_field_budget(package_bytes: int) -> int:
    return min(MAX_FIELDS, BASE_FIELDS + package_bytes // BYTES_PER_FIELD)


Dim = int | str | None


@dataclass(frozen=True)
class GraphFacts:
    external: tuple[dict[str, str], ...]  # each external tensor's entries (location, offset, length)
    inputs: tuple[str, ...]  # the inputs a caller feeds: declared inputs that are not initializers
    outputs: tuple[tuple[str, tuple[Dim, ...]], ...]  # name and shape (a number, a symbol or None per dim)
    positions: int | None  # rows of a learned position table (…position_embeddings.weight), if it has one

    @property
    def locations(self) -> set[str]:
        """Every file an external-data tensor of this model names."""
        return {entry["location"] for entry in self.external if "location" in entry}


_budget: ContextVar[list[int] | None] = ContextVar("edgeinfer_protobuf_fields", default=None)


@contextmanager
def field_budget(limit: int = MAX_FIELDS) -> Iterator[None]:
    """One budget of protobuf fields for every walk inside the block (one package's verification)."""
    token = _budget.set([limit, limit])
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
    position, end = 0, len(data)
    while position < end:
        if budget is not None:
            budget[0] -= 1
            if budget[0] < 0:
                raise PackageError(f"the package's graphs hold more than {budget[1]:,} protobuf fields where "
                                   f"tensors may be, too many for their size (exported models hold far "
                                   f"fewer); refusing to walk them")
        key = data[position]  # one byte for every field number below 16: the common case, without a call
        if key < 0x80:
            position += 1
        else:
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
            length = data[position] if position < end else 0x80  # past the end: _varint says so
            if length < 0x80:
                position += 1
            else:
                length, position = _varint(data, position)
            if position + length > end:
                raise PackageError("graph file is not valid ONNX protobuf (a field runs past the end)")
            value, position = data[position:position + length], position + length
        else:
            raise PackageError(f"graph file is not valid ONNX protobuf (wire type {wire})")
        if position > end:
            raise PackageError("graph file is not valid ONNX protobuf (truncated)")
        yield number, wire, value


def graph_facts(model_bytes: bytes) -> GraphFacts:
    """What this model's file declares: its external tensors (subgraphs and model-local functions
    included) and its interface; within the field budget in force (field_budget), or one of
    MAX_FIELDS for this graph."""
    if _budget.get() is None:
        with field_budget():
            return graph_facts(model_bytes)
    found: list[dict[str, str]] = []
    interface = _Interface([], [], set(), [])
    for number, wire, value in _fields(memoryview(model_bytes)):
        if number == _MODEL_GRAPH and wire == 2:
            _graph(value, found, 0, interface)
        elif number == _MODEL_FUNCTIONS and wire == 2:  # a Constant inside a function may name a file too
            for function_number, function_wire, node in _fields(value):
                if function_number == _FUNCTION_NODE and function_wire == 2 and _names_a_location(node):
                    _node(node, found, 0)
        elif number == _MODEL_TRAINING_INFO and wire == 2 and _names_a_location(value):  # its graphs' tensors too
            for info_number, info_wire, graph in _fields(value):
                if info_number in (1, 2) and info_wire == 2:
                    _graph(graph, found, 1)
    inputs = tuple(name for name in interface.inputs if name not in interface.initializers)
    return GraphFacts(tuple(found), inputs, tuple(interface.outputs), max(interface.positions, default=None))


def external_entries(model_bytes: bytes) -> list[dict[str, str]]:
    return list(graph_facts(model_bytes).external)


def external_locations(model_bytes: bytes) -> set[str]:
    return graph_facts(model_bytes).locations


def external_bytes(model_bytes: bytes) -> int:
    """Bytes of the external tensors this model reads (each (location, offset) once)."""
    seen: dict[tuple[str, str], int] = {}
    for entry in external_entries(model_bytes):
        length = entry.get("length", "0")
        seen[(entry.get("location", ""), entry.get("offset", "0"))] = int(length) if length.isdigit() else 0
    return sum(seen.values())


@dataclass(frozen=True)
class _Interface:
    """The top graph's declared inputs and outputs, collected during the walk."""
    inputs: list[str]
    outputs: list[tuple[str, tuple[Dim, ...]]]
    initializers: set[str]
    positions: list[int]


def _graph(data: memoryview, found: list[dict[str, str]], depth: int, interface: _Interface | None = None) -> None:
    if depth > MAX_DEPTH:
        raise PackageError("graph file nests subgraphs too deeply; refusing it")
    for number, wire, value in _fields(data):
        if wire != 2 or number not in _GRAPH:
            continue
        kind = _GRAPH[number]
        if kind == "node":
            if _names_a_location(value):
                _node(value, found, depth)
        elif kind in ("input", "output"):
            if interface is not None:
                name, shape = _value_info(value)
                if kind == "input":
                    interface.inputs.append(name)
                else:
                    interface.outputs.append((name, shape))
        else:
            name, dims = _tensor_or_sparse(kind, value, found)
            if interface is not None and name:
                interface.initializers.add(name)
                if name.endswith(_POSITION_TABLE) and len(dims) == 2:
                    interface.positions.append(dims[0])


def _names_a_location(node: memoryview) -> bool:
    """Whether a node's bytes could hold an external-data entry: onnxruntime and onnx follow only the key
    "location", so a node without those bytes anywhere (its attributes and subgraphs included) has
    nothing to check and is not walked. Exported graphs are mostly such nodes (SmolLM2's 134 graphs:
    495,000 fields walked before, a tenth of them after)."""
    return _LOCATION.search(node) is not None


def _text(data: memoryview) -> str:
    return bytes(data).decode("utf-8", errors="replace")


def _value_info(data: memoryview) -> tuple[str, tuple[Dim, ...]]:
    """A declared input or output: its name and, for a tensor, its shape."""
    name, shape = "", ()
    for number, wire, value in _fields(data):
        if number == 1 and wire == 2:
            name = _text(value)
        elif number == 2 and wire == 2:
            for type_number, type_wire, tensor in _fields(value):
                if type_number == 1 and type_wire == 2:
                    for tensor_number, tensor_wire, dims in _fields(tensor):
                        if tensor_number == 2 and tensor_wire == 2:
                            shape = tuple(_dim(dim) for number, wire, dim in _fields(dims) if number == 1 and wire == 2)
    return name, shape


def _dim(data: memoryview) -> Dim:
    for number, wire, value in _fields(data):
        if number == 1 and wire == 0:
            return value
        if number == 2 and wire == 2:
            return _text(value)
    return None


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


def _tensor_or_sparse(kind: str, data: memoryview, found: list[dict[str, str]]) -> tuple[str, tuple[int, ...]]:
    """The tensor's name and dims (a sparse tensor's: its values') after noting its external data."""
    if kind != "sparse":
        return _tensor(data, found)
    named: tuple[str, tuple[int, ...]] = ("", ())
    for number, wire, value in _fields(data):
        if wire == 2 and number in _SPARSE:
            tensor = _tensor(value, found)
            named = tensor if number == 1 else named
    return named


def _tensor(data: memoryview, found: list[dict[str, str]]) -> tuple[str, tuple[int, ...]]:
    """One dict per tensor: its external_data entries (each a key/value pair) together."""
    entry: dict[str, str] = {}
    name, dims = "", []
    for number, wire, value in _fields(data):
        if number == _TENSOR_EXTERNAL_DATA and wire == 2:
            entry.update(_entry(value))
        elif number == _TENSOR_NAME and wire == 2:
            name = _text(value)
        elif number == _TENSOR_DIMS and wire == 0:
            dims.append(value)
        elif number == _TENSOR_DIMS and wire == 2 and len(value) <= 80:  # packed (a real shape: a few dims)
            position = 0
            while position < len(value):
                dim, position = _varint(value, position)
                dims.append(dim)
    if entry:
        found.append(entry)
    return name, tuple(dims)


def _entry(data: memoryview):
    key = value = None
    for number, wire, item in _fields(data):
        if wire == 2 and number in (1, 2):
            text = _text(item)
            key, value = (text, value) if number == 1 else (key, text)
    if key is not None and value is not None:
        yield key, value
