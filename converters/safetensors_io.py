"""A small, validating safetensors reader on numpy.

Why not ``safetensors.safe_open``: its numpy backend cannot return bfloat16, and the torch
backend would make torch a dependency of conversion. Reading the format ourselves (8-byte
header length, JSON header, raw little-endian data) lets us validate every offset against
the file size *before* touching data, so a truncated download fails with a clear message
instead of a crash deep inside a converter, and lets us stream one tensor at a time.
"""

from __future__ import annotations

import itertools
import json
import math
import mmap
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit.errors import CorruptFileError

# safetensors dtype tag -> (numpy dtype used to read the raw bytes, bytes per element).
# BF16 is read as uint16 and widened in :func:`to_float32`.
_DTYPES: dict[str, tuple[str, int]] = {
    "F64": ("<f8", 8),
    "F32": ("<f4", 4),
    "F16": ("<f2", 2),
    "BF16": ("<u2", 2),
    "I64": ("<i8", 8),
    "I32": ("<i4", 4),
    "I16": ("<i2", 2),
    "I8": ("i1", 1),
    "U8": ("u1", 1),
    "BOOL": ("?", 1),
}
_MAX_HEADER = 100 * 1024 * 1024  # the reference implementation refuses larger headers too


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str  # safetensors tag, e.g. "BF16"
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start

    @property
    def storage_dtype(self) -> np.dtype:
        """The numpy dtype of the stored bytes (BF16: uint16, see :func:`to_float32`)."""
        return np.dtype(_DTYPES[self.dtype][0])

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


class SafetensorsFile:
    """One ``.safetensors`` file: header parsed and validated at construction."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            size = path.stat().st_size
            with open(path, "rb") as f:
                head = f.read(8)
                if len(head) < 8:
                    raise CorruptFileError(path, "file is shorter than a safetensors header")
                (n,) = struct.unpack("<Q", head)
                # refused before anything is read or allocated by it
                if n == 0 or n > _MAX_HEADER or 8 + n > size:
                    raise CorruptFileError(path, f"header length {n} (byte 0) does not fit in a {size}-byte file")
                raw = f.read(n)
        except OSError as e:
            raise CorruptFileError(path, f"cannot read: {e.strerror}", hint="check the path and permissions") from e
        try:
            header = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise CorruptFileError(path, f"header is not UTF-8 (byte {8 + e.start})") from e
        except json.JSONDecodeError as e:
            raise CorruptFileError(path, f"header is not valid JSON ({e.msg} at byte {8 + e.pos})") from e
        except RecursionError as e:
            raise CorruptFileError(path, "header JSON is nested deeper than any real header") from e
        if not isinstance(header, dict):
            raise CorruptFileError(path, "header (byte 8) is not a JSON object")
        meta = header.pop("__metadata__", None) or {}
        if not isinstance(meta, dict) or any(not isinstance(v, str) for v in meta.values()):
            raise CorruptFileError(path, "__metadata__ must map strings to strings")
        self.metadata: dict[str, str] = meta
        base = 8 + n
        self.tensors: dict[str, TensorInfo] = {}
        for name, spec in header.items():
            self.tensors[name] = _tensor_info(path, name, spec, base, size)
        spans = sorted((t for t in self.tensors.values() if t.nbytes), key=lambda t: t.start)
        for a, b in itertools.pairwise(spans):
            if b.start < a.end:
                raise CorruptFileError(path, f"tensors {a.name!r} [{a.start}, {a.end}) and {b.name!r} "
                                             f"[{b.start}, {b.end}) overlap at byte {b.start}")

    def raw(self, name: str) -> np.ndarray:
        """The tensor's data as stored, read into its own buffer.

        Not a memmap on purpose: mapped pages stay resident (and counted in RSS) after use,
        so a converter reading every tensor through one mapping ends up "holding" the
        whole file; a plain read keeps memory at the tensor being converted.
        """
        info = self.tensors[name]
        np_dtype, _ = _DTYPES[info.dtype]
        buf = np.empty(info.nbytes, dtype=np.uint8)
        with open(self.path, "rb") as f:
            f.seek(info.start)
            if f.readinto(buf.data) != info.nbytes:
                raise CorruptFileError(self.path, f"tensor {name!r} is cut short (file changed while reading?)")
        return buf.view(np_dtype).reshape(info.shape)

    def float32(self, name: str) -> np.ndarray:
        return to_float32(self.raw(name), self.tensors[name].dtype)

    def rows(self, name: str, lo: int, hi: int) -> np.ndarray:
        """Rows ``[lo, hi)`` (first axis) as float32, read into their own buffer (as :meth:`raw`)."""
        info = self.tensors[name]
        np_dtype, size = _DTYPES[info.dtype]
        row = math.prod(info.shape[1:]) if info.shape else 1
        n = max(0, min(hi, info.shape[0] if info.shape else 1) - lo)
        buf = np.empty(n * row * size, dtype=np.uint8)
        with open(self.path, "rb") as f:
            f.seek(info.start + lo * row * size)
            if f.readinto(buf.data) != buf.size:
                raise CorruptFileError(self.path, f"tensor {name!r} is cut short (file changed while reading?)")
        return to_float32(buf.view(np_dtype).reshape(n, *info.shape[1:]), info.dtype)

    def span_blocks(self, name: str, lo: int, hi: int, max_bytes: int) -> Iterator[np.ndarray]:
        """Rows ``[lo, hi)`` of the tensor as stored, ``[n, last axis]`` views in blocks of about
        ``max_bytes``, a row being the last axis's values (the leading axes flattened: one expert's
        gate half of a fused ``[E, 2*ff, h]`` stack is one span). Memory as :meth:`blocks`."""
        info = self.tensors[name]
        row = info.shape[-1] if info.shape else 1
        if hi > lo:
            yield from self._mapped_rows(info, lo, hi, row, (row,), max_bytes)

    def blocks(self, name: str, max_bytes: int) -> Iterator[np.ndarray]:
        """The tensor as stored, in blocks of whole rows (first axis) of about ``max_bytes``.

        Each block is a read-only view of a memory map of the file: nothing is copied. When the
        caller asks for the next block, the previous block's pages are dropped from this process
        (``madvise(MADV_DONTNEED)``; the kernel's page cache keeps them), so reading a tensor of
        any size keeps the resident set near one block -- unlike :meth:`raw`, which holds the
        whole tensor, or a plain memmap, whose pages all stay mapped once touched. A view must not
        be used after the next block is requested.
        """
        info = self.tensors[name]
        if info.nbytes == 0:
            yield np.empty(info.shape, dtype=np.dtype(_DTYPES[info.dtype][0]))
            return
        rows = info.shape[0] if info.shape else 1
        row_elems = math.prod(info.shape[1:]) if info.shape else 1
        yield from self._mapped_rows(info, 0, rows, row_elems, tuple(info.shape[1:]), max_bytes)

    def _mapped_rows(self, info: TensorInfo, lo: int, hi: int, row_elems: int, row_shape: tuple[int, ...],
                     max_bytes: int) -> Iterator[np.ndarray]:
        """Rows ``[lo, hi)`` of ``row_elems`` values each as read-only views of a memory map, about
        ``max_bytes`` at a time, each block's pages dropped when the next is asked for."""
        dtype = np.dtype(_DTYPES[info.dtype][0])
        per_block = max(1, max_bytes // max(1, row_elems * dtype.itemsize))
        with open(self.path, "rb") as f:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            for r0 in range(lo, hi, per_block):
                n = min(per_block, hi - r0)
                start = info.start + r0 * row_elems * dtype.itemsize
                yield np.frombuffer(mm, dtype=dtype, count=n * row_elems, offset=start).reshape(n, *row_shape)
                _release(mm, start, n * row_elems * dtype.itemsize)
        finally:
            try:
                mm.close()
            except BufferError:  # the caller still holds the last view: the map closes when it is dropped
                pass


def _tensor_info(path: Path, name: str, spec: object, base: int, size: int) -> TensorInfo:
    """One header entry, checked: known dtype, whole non-negative shape, data inside the file and of
    exactly the shape's size (byte offsets are absolute in the messages)."""
    try:
        assert isinstance(spec, dict)
        dtype = spec["dtype"]
        raw_shape, raw_offsets = spec["shape"], spec["data_offsets"]
        assert isinstance(raw_shape, list) and isinstance(raw_offsets, list) and len(raw_offsets) == 2
        assert all(isinstance(d, int) and not isinstance(d, bool) for d in [*raw_shape, *raw_offsets])
    except (AssertionError, KeyError, TypeError) as e:
        raise CorruptFileError(path, f"tensor {name!r} has a malformed header entry "
                                     f"(needs dtype, an integer shape list and two integer data_offsets)") from e
    if not isinstance(dtype, str) or dtype not in _DTYPES:
        raise CorruptFileError(path, f"tensor {name!r} has unsupported dtype {dtype!r}",
                               hint=f"supported: {', '.join(_DTYPES)}")
    shape = tuple(raw_shape)
    lo, hi = raw_offsets
    if any(d < 0 for d in shape):
        raise CorruptFileError(path, f"tensor {name!r} has a negative dimension in shape {list(shape)}")
    if base + hi > size:
        raise CorruptFileError(path, f"tensor {name!r} data [{base + lo}, {base + hi}) runs past the end of the "
                                     f"{size}-byte file")
    if lo < 0 or lo > hi:
        raise CorruptFileError(path, f"tensor {name!r} data [{base + lo}, {base + hi}) lies outside the data section "
                                     f"[{base}, {size}) of the file")
    info = TensorInfo(name, dtype, shape, base + lo, base + hi)
    if info.nbytes != info.numel * _DTYPES[dtype][1]:
        raise CorruptFileError(path, f"tensor {name!r}: {info.nbytes} bytes at byte {info.start} for shape "
                                     f"{list(shape)} {dtype} ({info.numel * _DTYPES[dtype][1]} expected)")
    return info


def _release(mm: mmap.mmap, start: int, length: int) -> None:
    """Drop the pages of ``[start, start + length)`` from this process's resident set."""
    if not hasattr(mmap, "MADV_DONTNEED"):  # Windows: pages stay until the map closes
        return
    lo = start - start % mmap.PAGESIZE
    mm.madvise(mmap.MADV_DONTNEED, lo, start + length - lo)


def to_float32(arr: np.ndarray, tag: str) -> np.ndarray:
    if tag == "BF16":
        # bf16 is the top half of an IEEE float32: shift into place.
        return (arr.astype(np.uint32) << 16).view(np.float32)
    return np.asarray(arr, dtype=np.float32)
