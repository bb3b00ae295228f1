"""A small, validating safetensors reader on numpy.

Why not ``safetensors.safe_open``: its numpy backend cannot return bfloat16, and the torch
backend would make torch a dependency of conversion. Reading the format ourselves (8-byte
header length, JSON header, raw little-endian data) lets us validate every offset against
the file size *before* touching data, so a truncated download fails with a clear message
instead of a crash deep inside a converter, and lets us stream one tensor at a time.
"""

from __future__ import annotations

import json
import math
import struct
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
                if n > _MAX_HEADER or 8 + n > size:
                    raise CorruptFileError(path, f"header length {n} does not fit in a {size}-byte file")
                raw = f.read(n)
        except OSError as e:
            raise CorruptFileError(path, f"cannot read: {e.strerror}", hint="check the path and permissions") from e
        try:
            header = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CorruptFileError(path, f"header is not valid JSON ({e})") from e
        if not isinstance(header, dict):
            raise CorruptFileError(path, "header is not a JSON object")
        self.metadata: dict[str, str] = header.pop("__metadata__", None) or {}
        base = 8 + n
        self.tensors: dict[str, TensorInfo] = {}
        for name, spec in header.items():
            try:
                dtype = spec["dtype"]
                shape = tuple(int(d) for d in spec["shape"])
                lo, hi = (int(x) for x in spec["data_offsets"])
            except (KeyError, TypeError, ValueError) as e:
                raise CorruptFileError(path, f"tensor {name!r} has a malformed header entry") from e
            if dtype not in _DTYPES:
                raise CorruptFileError(path, f"tensor {name!r} has unsupported dtype {dtype}",
                                       hint=f"supported: {', '.join(_DTYPES)}")
            info = TensorInfo(name, dtype, shape, base + lo, base + hi)
            if lo > hi or info.end > size:
                raise CorruptFileError(path, f"tensor {name!r} data [{lo}, {hi}) lies past the end of the file "
                                             f"({size - base} data bytes)")
            if info.nbytes != info.numel * _DTYPES[dtype][1]:
                raise CorruptFileError(path, f"tensor {name!r}: {info.nbytes} bytes for shape {shape} {dtype}")
            self.tensors[name] = info

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


def to_float32(arr: np.ndarray, tag: str) -> np.ndarray:
    if tag == "BF16":
        # bf16 is the top half of an IEEE float32: shift into place.
        return (arr.astype(np.uint32) << 16).view(np.float32)
    return np.asarray(arr, dtype=np.float32)
