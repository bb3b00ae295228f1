"""Just enough of the protobuf wire format to list an ONNX model's tensors, without `onnx`.

Validating an untrusted model directory needs only each tensor's name, where its data lives
(inline, or an external file with offset and length) and how many inline bytes it carries.
The `onnx` package would parse the whole model into Python objects and costs about 22 MiB of
resident memory in every process that loads a model; this reader walks the file's fields in
place (memory-mapped, so weights stored inline are skipped, never read) and stops at the
first malformed one.

It visits every place a tensor can hide: graph initializers, sparse initializers, and node
attributes (a Constant's value, tensor lists, and the subgraphs of If/Loop/Scan, recursively)
-- the places ONNX Runtime would load external data from.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path


class Wire(IntEnum):
    """Protobuf wire types (3 and 4, the deprecated groups, never occur in ONNX files)."""

    VARINT = 0
    FIXED64 = 1
    LEN = 2
    FIXED32 = 5


# Field numbers from onnx/onnx.proto3, for the messages on the path to a tensor. Only these
# are followed; every other field is skipped by its wire type.
MODEL_GRAPH = 7  # ModelProto.graph
GRAPH_NODE, GRAPH_INITIALIZER, GRAPH_SPARSE_INITIALIZER = 1, 5, 15  # GraphProto
NODE_ATTRIBUTE = 5  # NodeProto.attribute
ATTR_T, ATTR_G, ATTR_TENSORS, ATTR_GRAPHS = 5, 6, 10, 11  # AttributeProto
ATTR_SPARSE_TENSOR, ATTR_SPARSE_TENSORS = 22, 23
SPARSE_VALUES, SPARSE_INDICES = 1, 2  # SparseTensorProto
TENSOR_NAME, TENSOR_RAW_DATA, TENSOR_EXTERNAL_DATA, TENSOR_DATA_LOCATION = 8, 9, 13, 14  # TensorProto
# TensorProto's typed payloads (float_data, int32_data, string_data, int64_data, double_data,
# uint64_data): counted as inline bytes like raw_data
TENSOR_INLINE_PAYLOADS = frozenset({4, 5, 6, 7, 10, 11})
ENTRY_KEY, ENTRY_VALUE = 1, 2  # StringStringEntryProto
DATA_LOCATION_EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL
MAX_DEPTH = 64  # nested subgraphs; deeper is hostile, not a model


class ProtoError(ValueError):
    """The bytes are not a well-formed protobuf message of the expected shape."""


@dataclass
class TensorRef:
    name: str = ""
    external: dict[str, str] = field(default_factory=dict)  # location, offset, length, checksum
    external_flag: bool = False  # data_location == EXTERNAL
    inline_bytes: int = 0

    @property
    def is_external(self) -> bool:
        return self.external_flag or bool(self.external)


def _varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise ProtoError("truncated or overlong varint")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7


def fields(buf: memoryview, start: int, end: int) -> Iterator[tuple[int, Wire, int, int]]:
    """(field number, wire type, value start, value end or the varint's value) for each field."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise ProtoError("field number 0")
        if wire == Wire.VARINT:
            value, pos = _varint(buf, pos, end)
            yield number, Wire.VARINT, value, value
        elif wire == Wire.LEN:
            length, pos = _varint(buf, pos, end)
            if length > end - pos:
                raise ProtoError(f"field {number} runs past the end of its message")
            yield number, Wire.LEN, pos, pos + length
            pos += length
        elif wire in (Wire.FIXED64, Wire.FIXED32):
            size = 8 if wire == Wire.FIXED64 else 4
            if size > end - pos:
                raise ProtoError(f"field {number} runs past the end of its message")
            yield number, Wire(wire), pos, pos + size
            pos += size
        else:
            raise ProtoError(f"invalid wire type {wire} for field {number}")


def _text(buf: memoryview, start: int, end: int) -> str:
    try:
        return bytes(buf[start:end]).decode("utf-8")
    except UnicodeDecodeError as e:
        raise ProtoError("a string field is not UTF-8") from e


def _tensor(buf: memoryview, start: int, end: int) -> TensorRef:
    t = TensorRef()
    for number, wire, a, b in fields(buf, start, end):
        if number == TENSOR_NAME and wire == Wire.LEN:
            t.name = _text(buf, a, b)
        elif number == TENSOR_DATA_LOCATION and wire == Wire.VARINT:
            t.external_flag = a == DATA_LOCATION_EXTERNAL
        elif number == TENSOR_EXTERNAL_DATA and wire == Wire.LEN:
            entry = {n: _text(buf, x, y) for n, w, x, y in fields(buf, a, b) if w == Wire.LEN}
            t.external[entry.get(ENTRY_KEY, "")] = entry.get(ENTRY_VALUE, "")
        elif (number == TENSOR_RAW_DATA or number in TENSOR_INLINE_PAYLOADS) and wire != Wire.VARINT:
            t.inline_bytes += b - a
    return t


def _sparse(buf: memoryview, start: int, end: int) -> Iterator[TensorRef]:
    for number, wire, a, b in fields(buf, start, end):
        if number in (SPARSE_VALUES, SPARSE_INDICES) and wire == Wire.LEN:
            yield _tensor(buf, a, b)


def _graph(buf: memoryview, start: int, end: int, depth: int) -> Iterator[TensorRef]:
    if depth > MAX_DEPTH:
        raise ProtoError(f"subgraphs nested deeper than {MAX_DEPTH}")
    for number, wire, a, b in fields(buf, start, end):
        if wire != Wire.LEN:
            continue
        if number == GRAPH_INITIALIZER:
            yield _tensor(buf, a, b)
        elif number == GRAPH_SPARSE_INITIALIZER:
            yield from _sparse(buf, a, b)
        elif number == GRAPH_NODE:
            for n2, w2, c, d in fields(buf, a, b):
                if n2 == NODE_ATTRIBUTE and w2 == Wire.LEN:
                    yield from _attribute(buf, c, d, depth)


def _attribute(buf: memoryview, start: int, end: int, depth: int) -> Iterator[TensorRef]:
    for number, wire, a, b in fields(buf, start, end):
        if wire != Wire.LEN:
            continue
        if number in (ATTR_T, ATTR_TENSORS):
            yield _tensor(buf, a, b)
        elif number in (ATTR_G, ATTR_GRAPHS):
            yield from _graph(buf, a, b, depth + 1)
        elif number in (ATTR_SPARSE_TENSOR, ATTR_SPARSE_TENSORS):
            yield from _sparse(buf, a, b)


GRAPH_INPUT, GRAPH_OUTPUT, VALUE_INFO_NAME = 11, 12, 1  # GraphProto.input/output, ValueInfoProto.name


def graph_io(path: Path) -> tuple[set[str], set[str]]:
    """The names of the main graph's inputs and outputs (what a GenAI config may bind)."""
    names: dict[int, set[str]] = {GRAPH_INPUT: set(), GRAPH_OUTPUT: set()}
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        buf = memoryview(m)
        try:
            for n, w, a, b in fields(buf, 0, len(buf)):
                if n != MODEL_GRAPH or w != Wire.LEN:
                    continue
                for n2, w2, c, d in fields(buf, a, b):
                    if n2 in names and w2 == Wire.LEN:
                        names[n2].update(_text(buf, x, y) for n3, w3, x, y in fields(buf, c, d)
                                         if n3 == VALUE_INFO_NAME and w3 == Wire.LEN)
        finally:
            buf.release()
    return names[GRAPH_INPUT], names[GRAPH_OUTPUT]


def model_tensors(path: Path) -> list[TensorRef]:
    """Every tensor of the ONNX model at ``path``; :class:`ProtoError` if it is malformed or has no graph."""
    with open(path, "rb") as f:
        size = Path(path).stat().st_size
        if size == 0:
            raise ProtoError("empty file")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            buf = memoryview(m)
            try:
                graphs = [(a, b) for n, w, a, b in fields(buf, 0, size) if n == MODEL_GRAPH and w == Wire.LEN]
                if not graphs:
                    raise ProtoError("no graph")
                return [t for a, b in graphs for t in _graph(buf, a, b, 0)]
            finally:
                buf.release()
