"""Read and validate GGUF files before anything hands them to llama.cpp.

GGUF files from outside are untrusted: llama.cpp's loader has had memory-safety bugs on
crafted headers. We check the magic, version, counts and that every tensor's data lies
inside the file before loading, and report a one-line error otherwise.
"""

from __future__ import annotations

import itertools
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
        raise CorruptFileError(path, "not a GGUF file (bad magic at byte 0)",
                               hint="pass a .gguf file written by llama.cpp tools or edgekit")
    version, n_tensors, n_kv = struct.unpack("<IQQ", head[4:24])
    if version not in SUPPORTED_VERSIONS:
        raise CorruptFileError(path, f"GGUF version {version} (byte 4) is not supported (supported: {SUPPORTED_VERSIONS})")
    # every table entry takes a minimum number of bytes: a count the file cannot hold is refused
    # here, before anything is sized by it
    if n_tensors > min(MAX_TENSORS, size // _MIN_TENSOR_INFO):
        raise CorruptFileError(path, f"tensor count {n_tensors} (byte 8) is impossible for a {size}-byte file")
    if n_kv > min(MAX_KV, size // _MIN_KV):
        raise CorruptFileError(path, f"metadata key count {n_kv} (byte 16) is impossible for a {size}-byte file")
    return version, size


# GGUF value type id -> struct format of one scalar (8 is a string, 9 an array)
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY, _UINT32 = 8, 9, 4
_INTS = frozenset({0, 1, 2, 3, 4, 5, 10, 11})
_FLOATS = frozenset({6, 12})
ARRAY_SHOWN = 16  # longer arrays (vocabularies) are summarised as "[N items]", never materialised
_MAX_DEPTH = 8  # arrays of arrays: deeper nesting is refused rather than recursed into
_MAX_DIMS = 4  # GGML_MAX_DIMS
_MAX_NAME = 64  # GGML_MAX_NAME: ggml refuses a tensor name of 64 bytes or more
_MIN_TENSOR_INFO = 8 + 4 + 4 + 8  # name length, n_dims, type, offset
_MIN_KV = 8 + 4  # key length, value type
_INT64_MAX = 2**63 - 1


class _Malformed(Exception):
    """The header says something impossible; read_gguf turns it into a CorruptFileError."""


@dataclass(frozen=True)
class _Array:
    """What the scanner keeps of a long array: its element type, length and where it starts."""

    itype: int
    count: int
    offset: int


class _HeaderScanner:
    """Walks a GGUF header in place (a read-only memory map) without building per-item objects.

    gguf-py's GGUFReader makes several numpy objects per array item: for a 262,144-token
    vocabulary (Gemma 3) that was ~700 MiB and half a minute before llama.cpp even opened the
    file. Here an array longer than :data:`ARRAY_SHOWN` is only skipped over (its string
    lengths walked, its numbers stepped past), each bound checked against the file size, so
    nothing is ever allocated in proportion to a length the file claims."""

    def __init__(self, buf: Any, size: int) -> None:
        self.buf, self.size, self.off = buf, size, 0

    def take(self, n: int, what: str) -> int:
        """Advance past ``n`` bytes of ``what``; the offset where they start."""
        start = self.off
        if n < 0 or start + n > self.size:
            raise _Malformed(f"{what} at byte {start} claims {n} bytes, past the end of the {self.size}-byte file")
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
            raise _Malformed(f"{what} at byte {self.off - 4} has unknown value type {vtype}")
        if depth >= _MAX_DEPTH:
            raise _Malformed(f"{what} at byte {self.off} nests arrays deeper than {_MAX_DEPTH}")
        at = self.off
        itype, count = self.unpack("<I", what), self.unpack("<Q", what)
        if itype not in _SCALARS and itype not in (_STRING, _ARRAY):
            raise _Malformed(f"{what} at byte {at} is an array of unknown value type {itype}")
        if count <= ARRAY_SHOWN:
            return [self.value(itype, what, depth + 1) for _ in range(count)]
        if itype in _SCALARS:
            self.take(count * struct.calcsize(_SCALARS[itype]), what)
        elif itype == _STRING:
            unpack_from, buf, off, size = struct.unpack_from, self.buf, self.off, self.size
            for _ in range(count):  # ends within size / 8 steps: each string takes 8 bytes or more
                if off + 8 > size:  # also where the string before this one overran
                    raise _Malformed(f"{what} at byte {at} ({count} strings) runs past the end of the "
                                     f"{size}-byte file at byte {off}")
                off += 8 + unpack_from("<Q", buf, off)[0]
            self.take(off - self.off, what)
        else:
            for _ in range(count):  # each nested array takes 12 bytes or more: bounded by the file
                self.value(itype, what, depth + 1)
        return _Array(itype, count, at)


@dataclass
class _Header:
    meta: dict[str, Any]
    types: dict[str, int]  # key -> GGUF value type
    offsets: dict[str, int]  # key -> byte offset of its value
    rows: list[TensorRow]
    table: dict[str, int]  # tensor name -> byte offset of its entry in the tensor table
    data_start: int
    alignment: int


def _scan(path: Path, buf: Any, size: int) -> _Header:
    """Metadata and tensor table of a GGUF whose fixed header :func:`check_header` accepted."""
    import gguf

    sc = _HeaderScanner(buf, size)
    sc.off = 8
    n_tensors, n_kv = sc.unpack("<Q", "header"), sc.unpack("<Q", "header")
    meta: dict[str, Any] = {}
    types: dict[str, int] = {}
    offsets: dict[str, int] = {}
    for i in range(n_kv):
        at = sc.off
        key = sc.string(f"metadata key {i}")
        if not key:
            raise _Malformed(f"metadata key {i} at byte {at} is empty")
        if key in meta:
            raise _Malformed(f"duplicate metadata key {key} at byte {at}")
        types[key] = sc.unpack("<I", f"metadata {key}")
        offsets[key] = sc.off
        meta[key] = sc.value(types[key], f"metadata {key}")
    alignment = meta.get("general.alignment", gguf.GGUF_DEFAULT_ALIGNMENT)
    if "general.alignment" in meta and (types["general.alignment"] != _UINT32 or alignment <= 0
                                        or alignment & (alignment - 1)):
        raise _Malformed(f"general.alignment {alignment!r} at byte {offsets['general.alignment']} is not a "
                         f"power-of-two uint32")
    infos: list[tuple[str, list[int], Any, int, int]] = []
    table: dict[str, int] = {}
    for i in range(n_tensors):
        at = sc.off
        name = sc.string(f"tensor {i} name")
        if len(name.encode("utf-8", errors="replace")) >= _MAX_NAME or not name:
            raise _Malformed(f"tensor {i} at byte {at}: name of {len(name)} characters (1 to {_MAX_NAME - 1} allowed)")
        if name in table:
            raise _Malformed(f"duplicate tensor {name} at byte {at}")
        table[name] = at
        n_dims = sc.unpack("<I", f"tensor {name}")
        if n_dims > _MAX_DIMS:
            raise _Malformed(f"tensor {name} at byte {at} has {n_dims} dimensions (at most {_MAX_DIMS})")
        dims = [sc.unpack("<Q", f"tensor {name}") for _ in range(n_dims)]
        type_at = sc.off
        raw_type = sc.unpack("<I", f"tensor {name}")
        try:
            qtype = gguf.GGMLQuantizationType(raw_type)
        except ValueError:
            qtype = None
        if qtype is None or qtype not in gguf.GGML_QUANT_SIZES:
            raise _Malformed(f"tensor {name}: unknown type {raw_type} at byte {type_at}")
        infos.append((name, dims, qtype, sc.unpack("<Q", f"tensor {name}"), at))
    data_start = -(-sc.off // alignment) * alignment
    if infos and data_start > size:  # a vocabulary-only file has no data section, nor its padding
        raise _Malformed(f"the data section starts at byte {data_start}, past the end of the {size}-byte file")
    rows: list[TensorRow] = []
    for name, dims, qtype, offset, at in infos:
        block, type_size = gguf.GGML_QUANT_SIZES[qtype]
        n_elem = math.prod(dims)
        if any(d > _INT64_MAX for d in dims) or n_elem > _INT64_MAX:
            raise _Malformed(f"tensor {name} at byte {at}: shape {dims} overflows 64-bit element counts")
        if dims and dims[0] % block:
            raise _Malformed(f"tensor {name} at byte {at}: rows of {dims[0]} are not a multiple of "
                             f"{qtype.name}'s block of {block}")
        if offset % alignment:
            raise _Malformed(f"tensor {name} at byte {at}: data offset {offset} is not aligned to {alignment}")
        nbytes = n_elem * type_size // block
        end = data_start + offset + nbytes
        if end > size:
            raise _Malformed(f"tensor {name} at byte {at}: data [{data_start + offset}, {end}) lies past the end of "
                             f"the {size}-byte file")
        rows.append(TensorRow(name, qtype.name, dims, nbytes, data_start + offset))
    by_start = sorted((r for r in rows if r.nbytes), key=lambda r: r.offset)
    for a, b in itertools.pairwise(by_start):
        if b.offset < a.offset + a.nbytes:
            raise _Malformed(f"tensors {a.name} and {b.name} (table entries at bytes {table[a.name]} and "
                             f"{table[b.name]}) overlap at byte {b.offset}")
    return _Header(meta, types, offsets, rows, table, data_start, alignment)


def _is_int(types: dict[str, int], key: str) -> bool:
    return types[key] in _INTS


# Metadata llama.cpp trusts to size buffers and divide by: {arch}.<suffix> -> (smallest, largest
# allowed value, whether llama.cpp also takes a per-layer array). The bounds are llama.cpp's own
# (LLAMA_MAX_LAYERS, LLAMA_MAX_EXPERTS, uint32 fields) or far above any real model.
_HPARAMS: dict[str, tuple[int, int, bool]] = {
    "context_length": (1, 1 << 24, False),
    "embedding_length": (1, 1 << 20, False),
    "block_count": (1, 512, False),
    "feed_forward_length": (0, 1 << 22, True),
    "attention.head_count": (0, 1 << 14, True),
    "attention.head_count_kv": (0, 1 << 14, True),
    "attention.key_length": (1, 1 << 16, False),
    "attention.value_length": (1, 1 << 16, False),
    "rope.dimension_count": (0, 1 << 16, False),
    "vocab_size": (1, 1 << 24, False),
    "expert_count": (0, 1024, False),
    "expert_used_count": (0, 1024, True),
    "attention.sliding_window": (0, 1 << 24, False),
}
_ROPE_SCALING = frozenset({"none", "linear", "yarn", "longrope"})
# tokenizer arrays that llama.cpp indexes by token id: each as long as tokenizer.ggml.tokens
_PER_TOKEN = {"tokenizer.ggml.scores": _FLOATS, "tokenizer.ggml.token_type": _INTS}
_TOKEN_IDS = ("bos", "eos", "unknown", "separator", "padding", "eot", "eom", "mask", "prefix", "suffix", "middle")
_STRINGS = ("general.architecture", "general.name", "tokenizer.ggml.model", "tokenizer.ggml.pre",
            "tokenizer.chat_template")


def _array_len(value: Any) -> int:
    return value.count if isinstance(value, _Array) else len(value)


def _array_type(value: Any, types: dict[str, int], key: str) -> int | None:
    """The element type of an array value (a short array's is inferred from its Python items)."""
    if isinstance(value, _Array):
        return value.itype
    if not value:
        return None
    first = value[0]
    return _STRING if isinstance(first, str) else 6 if isinstance(first, float) else 7 if isinstance(first, bool) \
        else 4 if isinstance(first, int) else _ARRAY


def _check_metadata(h: _Header) -> None:
    """Values llama.cpp's model loader trusts (divides by, sizes by, indexes with) in sane ranges."""
    meta, types, at = h.meta, h.types, h.offsets
    for key in _STRINGS:
        if key in meta and types[key] != _STRING:
            raise _Malformed(f"{key} at byte {at[key]} must be a string, not value type {types[key]}")
    arch = str(meta.get("general.architecture", ""))
    layers = meta.get(f"{arch}.block_count")
    for suffix, (lo, hi, per_layer) in _HPARAMS.items():
        key = f"{arch}.{suffix}"
        if key not in meta:
            continue
        value = meta[key]
        if types[key] == _ARRAY and per_layer:
            n, itype = _array_len(value), _array_type(value, types, key)
            if isinstance(layers, int) and n != layers:
                raise _Malformed(f"{key} at byte {at[key]} has {n} entries for {layers} layers")
            if itype is not None and itype not in _INTS and itype != 4:
                raise _Malformed(f"{key} at byte {at[key]} must hold integers")
            if isinstance(value, list) and any(not lo <= v <= hi for v in value):
                raise _Malformed(f"{key} at byte {at[key]}: {value} outside [{lo}, {hi}]")
            continue
        if not _is_int(types, key):
            raise _Malformed(f"{key} at byte {at[key]} must be an integer, not value type {types[key]}")
        if not lo <= value <= hi:
            raise _Malformed(f"{key} = {value} at byte {at[key]} is outside the sane range [{lo}, {hi}]")
    heads, kv, embd = (meta.get(f"{arch}.{k}") for k in ("attention.head_count", "attention.head_count_kv",
                                                         "embedding_length"))
    if isinstance(heads, int) and isinstance(embd, int) and heads > 0:
        key = f"{arch}.attention.head_count"
        if embd % heads and f"{arch}.attention.key_length" not in meta:
            raise _Malformed(f"{key} = {heads} at byte {at[key]} does not divide embedding_length {embd}")
        if isinstance(kv, int) and (kv == 0 or heads % kv):
            raise _Malformed(f"{arch}.attention.head_count_kv = {kv} at byte {at[arch + '.attention.head_count_kv']} "
                             f"does not divide head_count {heads}")
    experts, used = meta.get(f"{arch}.expert_count", 0), meta.get(f"{arch}.expert_used_count", 0)
    if isinstance(experts, int) and isinstance(used, int) and (used > experts or (experts > 0 and used == 0)):
        raise _Malformed(f"{arch}.expert_used_count = {used} does not fit expert_count {experts}")
    rope = meta.get(f"{arch}.rope.scaling.type")
    if rope is not None and rope not in _ROPE_SCALING:
        raise _Malformed(f"{arch}.rope.scaling.type {rope!r} at byte {at[arch + '.rope.scaling.type']} is not one of "
                         f"{sorted(_ROPE_SCALING)}")
    _check_vocab(h, arch)


def _check_vocab(h: _Header, arch: str) -> None:
    meta, types, at = h.meta, h.types, h.offsets
    if "tokenizer.ggml.tokens" not in meta:
        return
    key = "tokenizer.ggml.tokens"
    tokens = meta[key]
    if types[key] != _ARRAY or _array_type(tokens, types, key) not in (_STRING, None):
        raise _Malformed(f"{key} at byte {at[key]} must be an array of strings")
    n = _array_len(tokens)
    if n == 0:
        raise _Malformed(f"{key} at byte {at[key]} is empty")
    for other, allowed in _PER_TOKEN.items():
        if other in meta:
            v = meta[other]
            if types[other] != _ARRAY or _array_len(v) != n or _array_type(v, types, other) not in (*allowed, None):
                raise _Malformed(f"{other} at byte {at[other]} must be an array of {n} "
                                 f"{'floats' if allowed is _FLOATS else 'integers'} (one per token)")
    if "tokenizer.ggml.merges" in meta:
        m = "tokenizer.ggml.merges"
        if types[m] != _ARRAY or _array_type(meta[m], types, m) not in (_STRING, None):
            raise _Malformed(f"{m} at byte {at[m]} must be an array of strings")
    vocab = meta.get(f"{arch}.vocab_size")
    if isinstance(vocab, int) and vocab != n:
        raise _Malformed(f"{arch}.vocab_size = {vocab} at byte {at[f'{arch}.vocab_size']} differs from the "
                         f"{n} entries of {key}")
    for name in _TOKEN_IDS:
        k = f"tokenizer.ggml.{name}_token_id"
        if k in meta:
            v = meta[k]
            if not _is_int(types, k) or not 0 <= v < n:
                raise _Malformed(f"{k} = {v!r} at byte {at[k]} is not a token id (the vocabulary has {n} tokens)")
    emb = next((r for r in h.rows if r.name == "token_embd.weight"), None)
    if emb is not None and len(emb.shape) >= 2 and emb.shape[1] != n:
        raise _Malformed(f"token_embd.weight (table entry at byte {h.table[emb.name]}) has {emb.shape[1]} rows for "
                         f"{n} tokens")


def read_gguf(path: Path) -> GGUFSummary:
    """Validate and summarise a GGUF file (metadata + tensor table), reading only its header."""
    import mmap

    version, size = check_header(path)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        try:
            header = _scan(Path(path), mm, size)
            _check_metadata(header)
        except _Malformed as e:
            raise CorruptFileError(path, f"GGUF header refused: {e}",
                                   hint="the file is corrupt, truncated or crafted; re-download or re-convert it") from None
    meta = {k: f"[{v.count} items]" if isinstance(v, _Array) else v for k, v in header.meta.items()}
    return GGUFSummary(Path(path), version, size, meta, header.rows)
