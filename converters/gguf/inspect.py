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


def _value(field_: Any) -> Any:
    import gguf

    t = field_.types[0] if field_.types else None
    if t == gguf.GGUFValueType.ARRAY:
        if len(field_.data) > 16:  # vocabularies: summarise, don't dump 150k tokens
            return f"[{len(field_.data)} items]"
        return [_scalar(field_.parts[i], field_.types[-1]) for i in field_.data]
    return _scalar(field_.parts[field_.data[0]], t) if field_.data else None


def _scalar(part: Any, t: Any) -> Any:
    import gguf

    if t == gguf.GGUFValueType.STRING:
        return bytes(part).decode("utf-8", errors="replace")
    v = part.tolist()
    return v[0] if isinstance(v, list) and len(v) == 1 else v


def read_gguf(path: Path) -> GGUFSummary:
    """Validate and summarise a GGUF file (metadata + tensor table)."""
    import gguf

    version, size = check_header(path)
    try:
        reader = gguf.GGUFReader(path)
    except Exception as e:  # gguf-py raises ValueError/struct.error/IndexError on damage
        raise CorruptFileError(path, f"GGUF header cannot be parsed ({type(e).__name__}: {e})") from e
    meta: dict[str, Any] = {}
    for name, f in reader.fields.items():
        if name.startswith("GGUF."):
            continue
        try:
            meta[name] = _value(f)
        except Exception:  # a single odd field should not hide the rest
            meta[name] = "<unreadable>"
    rows: list[TensorRow] = []
    for t in reader.tensors:
        end = int(t.data_offset) + int(t.n_bytes)
        if end > size:
            raise CorruptFileError(path, f"tensor {t.name} ends at byte {end}, past the end of the {size}-byte file")
        rows.append(TensorRow(t.name, t.tensor_type.name, [int(x) for x in t.shape], int(t.n_bytes)))
    return GGUFSummary(Path(path), version, size, meta, rows)
