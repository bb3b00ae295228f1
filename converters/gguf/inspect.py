"""Read and validate GGUF files before anything hands them to llama.cpp.

GGUF files from outside are untrusted: llama.cpp's loader has had memory-safety bugs on
crafted headers. We check the magic, version, counts and that every tensor's data lies
inside the file before loading, and report a one-line error otherwise.
"""

from __future__ import annotations

import math
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit.errors import CorruptFileError, ModelNotFoundError

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
# Far above any real model, far below what would make a parser allocate absurd amounts.
MAX_TENSORS = 1_000_000
MAX_KV = 100_000


@dataclass
class TensorRow:
    name: str
    type: str  # gguf.GGMLQuantizationType member name: Q4_K, F32
    shape: list[int]  # ggml order: shape[0] is the row length (ne0)
    nbytes: int
    offset: int = 0  # of its data, from the start of the file

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)


def ggml_type_name(member: str) -> str:
    """GGMLQuantizationType member -> the name llama.cpp prints (ggml_type_name): Q4_K -> q4_K, F32 -> f32."""
    low = member.lower()
    return low[:-2] + "_K" if low.endswith("_k") else low


@dataclass(frozen=True)
class WeightTypes:
    """What a GGUF file's tensor data is stored as, read from the file itself."""

    tensor_types: dict[str, int]  # ggml type name -> number of tensors, most tensors first
    n_weights: int
    data_bytes: int

    @property
    def bits_per_weight(self) -> float:
        """All tensor data in bits over all weights: block scales and the float tensors included."""
        return 8 * self.data_bytes / self.n_weights if self.n_weights else 0.0

    def to_extra(self) -> dict[str, Any]:
        """The manifest entry's record (``ArtifactEntry.extra``)."""
        return {"tensor_types": self.tensor_types, "bits_per_weight": round(self.bits_per_weight, 4)}


def weight_types(tensors: list[TensorRow]) -> WeightTypes:
    counts = Counter(ggml_type_name(t.type) for t in tensors)
    return WeightTypes(dict(counts.most_common()), sum(t.n_elements for t in tensors), sum(t.nbytes for t in tensors))


@dataclass
class GGUFSummary:
    path: Path
    version: int
    size_bytes: int
    metadata: dict[str, Any]
    tensors: list[TensorRow] = field(default_factory=list)

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", "?"))

    def weight_types(self) -> WeightTypes:
        return weight_types(self.tensors)

    def to_dict(self, with_tensors: bool = True) -> dict[str, Any]:
        d: dict[str, Any] = {"path": str(self.path), "version": self.version, "size_bytes": self.size_bytes,
                             "architecture": self.architecture, "metadata": self.metadata,
                             "n_tensors": len(self.tensors), **self.weight_types().to_extra()}
        if with_tensors:
            d["tensors"] = [t.__dict__ for t in self.tensors]
        return d


def check_header(path: Path) -> tuple[int, int]:
    """Cheap structural check of the fixed header; returns (version, file size)."""
    path = Path(path)
    if not path.is_file():
        raise ModelNotFoundError(f"{path} does not exist", hint="pass the path of a .gguf file or an output directory")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(24)
    if len(head) < 24 or head[:4] != GGUF_MAGIC:
        raise CorruptFileError(path, "not a GGUF file (bad magic)", hint="pass a .gguf file written by llama.cpp tools or edgekit")
    version, n_tensors, n_kv = struct.unpack("<IQQ", head[4:24])
    if version not in SUPPORTED_VERSIONS:
        raise CorruptFileError(path, f"GGUF version {version} is not supported (supported: {SUPPORTED_VERSIONS})")
    if n_tensors > MAX_TENSORS or n_kv > MAX_KV:
        raise CorruptFileError(path, f"implausible header counts ({n_tensors} tensors, {n_kv} keys)")
    return version, size


# GGUF value type id -> struct format of one scalar (8 is a string, 9 an array)
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY, _UINT32 = 8, 9, 4
ARRAY_SHOWN = 16  # longer arrays (vocabularies) are summarised as "[N items]", never materialised
_MAX_DEPTH = 8  # arrays of arrays: deeper nesting is refused rather than recursed into
_MAX_DIMS = 4  # GGML_MAX_DIMS


class _Malformed(Exception):
    """The header says something impossible; read_gguf turns it into a CorruptFileError."""


class _HeaderScanner:
    """Walks a GGUF header in place (a read-only memory map) without building per-item objects.

    gguf-py's GGUFReader makes several numpy objects per array item: for a 262,144-token
    vocabulary (Gemma 3) that was ~700 MiB and half a minute before llama.cpp even opened the
    file. Here an array longer than :data:`ARRAY_SHOWN` is only skipped over (its string
    lengths walked, its numbers stepped past), each bound checked against the file size."""

    def __init__(self, buf: Any, size: int) -> None:
        self.buf, self.size, self.off = buf, size, 0

    def take(self, n: int, what: str) -> int:
        """Advance past ``n`` bytes of ``what``; the offset where they start."""
        start = self.off
        if n < 0 or start + n > self.size:
            raise _Malformed(f"{what} runs past the end of the {self.size}-byte file")
        self.off = start + n
        return start

    def unpack(self, fmt: str, what: str) -> Any:
        return struct.unpack_from(fmt, self.buf, self.take(struct.calcsize(fmt), what))[0]

    def string(self, what: str) -> str:
        n = self.unpack("<Q", what)
        start = self.take(n, what)
        return bytes(self.buf[start:start + n]).decode("utf-8", errors="replace")

    def value(self, vtype: int, what: str, depth: int = 0) -> Any:
        if vtype == _STRING:
            return self.string(what)
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype], what)
        if vtype != _ARRAY:
            raise _Malformed(f"{what} has unknown value type {vtype}")
        if depth >= _MAX_DEPTH:
            raise _Malformed(f"{what} nests arrays deeper than {_MAX_DEPTH}")
        itype, count = self.unpack("<I", what), self.unpack("<Q", what)
        if count <= ARRAY_SHOWN:
            return [self.value(itype, what, depth + 1) for _ in range(count)]
        if itype in _SCALARS:
            self.take(count * struct.calcsize(_SCALARS[itype]), what)
        elif itype == _STRING:
            unpack_from, buf, off, size = struct.unpack_from, self.buf, self.off, self.size
            for _ in range(count):
                if off + 8 > size:  # also where the string before this one overran
                    raise _Malformed(f"{what} ({count} strings) runs past the end of the {size}-byte file")
                off += 8 + unpack_from("<Q", buf, off)[0]
            self.take(off - self.off, what)
        else:
            for _ in range(count):
                self.value(itype, what, depth + 1)
        return f"[{count} items]"


def _scan(path: Path, buf: Any, size: int) -> tuple[dict[str, Any], list[TensorRow]]:
    """Metadata and tensor table of a GGUF whose fixed header :func:`check_header` accepted."""
    import gguf

    sc = _HeaderScanner(buf, size)
    sc.off = 8
    n_tensors, n_kv = sc.unpack("<Q", "header"), sc.unpack("<Q", "header")
    meta: dict[str, Any] = {}
    types: dict[str, int] = {}
    for i in range(n_kv):
        key = sc.string(f"metadata key {i}")
        if key in meta:
            raise _Malformed(f"duplicate metadata key {key}")
        types[key] = sc.unpack("<I", f"metadata {key}")
        meta[key] = sc.value(types[key], f"metadata {key}")
    alignment = meta.get("general.alignment", gguf.GGUF_DEFAULT_ALIGNMENT)
    if "general.alignment" in meta and (types["general.alignment"] != _UINT32 or alignment <= 0
                                        or alignment & (alignment - 1)):
        raise _Malformed(f"general.alignment {alignment!r} is not a power-of-two uint32")
    infos: list[tuple[str, list[int], Any, int]] = []
    for i in range(n_tensors):
        name = sc.string(f"tensor {i} name")
        n_dims = sc.unpack("<I", f"tensor {name}")
        if n_dims > _MAX_DIMS:
            raise _Malformed(f"tensor {name} has {n_dims} dimensions (at most {_MAX_DIMS})")
        dims = [sc.unpack("<Q", f"tensor {name}") for _ in range(n_dims)]
        raw_type = sc.unpack("<I", f"tensor {name}")
        try:
            qtype = gguf.GGMLQuantizationType(raw_type)
        except ValueError:
            raise _Malformed(f"tensor {name} has unknown type {raw_type}") from None
        infos.append((name, dims, qtype, sc.unpack("<Q", f"tensor {name}")))
    data_start = -(-sc.off // alignment) * alignment
    rows: list[TensorRow] = []
    seen: set[str] = set()
    for name, dims, qtype, offset in infos:
        if name in seen:
            raise _Malformed(f"duplicate tensor {name}")
        seen.add(name)
        block, type_size = gguf.GGML_QUANT_SIZES[qtype]
        if dims and dims[0] % block:
            raise _Malformed(f"tensor {name}: rows of {dims[0]} are not a multiple of {qtype.name}'s block of {block}")
        nbytes = math.prod(dims) * type_size // block
        end = data_start + offset + nbytes
        if end > size:
            raise CorruptFileError(path, f"tensor {name} ends at byte {end}, past the end of the {size}-byte file")
        rows.append(TensorRow(name, qtype.name, dims, nbytes, data_start + offset))
    return meta, rows


def read_gguf(path: Path) -> GGUFSummary:
    """Validate and summarise a GGUF file (metadata + tensor table), reading only its header."""
    import mmap

    version, size = check_header(path)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        try:
            meta, rows = _scan(Path(path), mm, size)
        except _Malformed as e:
            raise CorruptFileError(path, f"GGUF header cannot be parsed: {e}") from None
    return GGUFSummary(Path(path), version, size, meta, rows)
