"""Stream a Hugging Face checkpoint into a float GGUF (f32 / f16 / bf16).

The tensor table is planned from the safetensors headers alone; the GGUF header (metadata,
vocabulary, tensor table) is packed here and written first, then each tensor's data, one
after the other. A tensor nobody changes is read in row blocks from a memory map of the
source (:meth:`..safetensors_io.SafetensorsFile.blocks`), each block cast straight into the
output and its pages released before the next, so peak memory is a few blocks whatever the
tensor's size; one stored in the output type already is copied file to file by the kernel
(``copy_file_range``) without entering this process at all. Only tensors that are changed
(merged with a LoRA delta, permuted or shifted for llama.cpp's layout: attention q/k and
norms, never the embedding) are read whole, in float32.

gguf-py's ``GGUFWriter`` is used as the metadata collector only (its ``add_*`` methods know
every key's name and type); its own writing path packs each array item through several Python
calls (seconds for a 262,144-token vocabulary) and expects each tensor as one array.
"""

from __future__ import annotations

import hashlib
import logging
import os
import struct
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from edgekit.errors import InputError
from edgekit.progress import ProgressFn, report

from ..lora import LoraAdapter
from ..safetensors_io import to_float32
from ..source import SourceModel
from .archs import ArchSpec, Piece, TextConfig
from .composite import plan_composites, source_shapes
from .vocab import write_vocab

if TYPE_CHECKING:
    import gguf

log = logging.getLogger(__name__)

# float output type -> (GGML type name, LlamaFileType member for general.file_type)
FLOAT_TYPES: dict[str, tuple[str, str]] = {
    "f32": ("F32", "ALL_F32"),
    "f16": ("F16", "MOSTLY_F16"),
    "bf16": ("BF16", "MOSTLY_BF16"),
}
# safetensors dtype tag that already is the GGML type (copied byte for byte)
_SAME_BYTES = {"F32": "F32", "F16": "F16", "BF16": "BF16"}
# Elements converted per step: enough that per-block Python overhead is noise (a few hundred
# blocks per GB), few enough that the block, its float32 widening and its cast stay a few tens
# of MiB whatever the tensor (16 MiB of a float32 source, 8 MiB of a bf16 one).
BLOCK_ELEMS = 1 << 22


@dataclass(frozen=True)
class _Planned:
    hf_name: str | None  # None for tensors edgekit synthesises (rope_freqs)
    gguf_name: str
    shape: tuple[int, ...]  # HF/numpy order (rows, cols)
    ggml_type: str
    data: np.ndarray | None = field(default=None, compare=False, repr=False)  # synthesised tensors' values
    pieces: tuple[Piece, ...] = ()  # a composite's parts (hf_name None): their rows, one after the other


def _f32_to_bf16(x: np.ndarray, t: np.ndarray | None = None, out: np.ndarray | None = None) -> np.ndarray:
    """float32 -> bf16 bits (uint16), bit for bit as ggml_compute_fp32_to_bf16 / gguf-py:
    round to nearest even, NaNs made quiet. ``t`` (uint32) and ``out`` (uint16), of x's size,
    are scratch to reuse; without them they are allocated."""
    n = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    t = np.right_shift(n, 16, out=t)
    t &= 1
    t += 0x7FFF
    t += n  # no wrap-around for any non-NaN value (the largest is -inf, 0xff800000)
    t >>= 16
    if out is None:
        out = np.empty(n.shape, dtype=np.uint16)
    np.copyto(out, t, casting="unsafe")
    nan = np.isnan(n.view(np.float32))
    if nan.any():
        out[nan] = ((n[nan] >> 16) | 0x40).astype(np.uint16)
    return out


def _cast(data: np.ndarray, ggml_type: str) -> np.ndarray:
    """A float32 array in ``ggml_type``'s bytes (bf16 has no numpy dtype: its bits as uint16)."""
    if ggml_type == "F32":
        return np.ascontiguousarray(data, dtype=np.float32)
    if ggml_type == "F16":
        return np.ascontiguousarray(data, dtype=np.float16)
    return _f32_to_bf16(data)


class _Scratch:
    """Buffers reused by every block: casting into fresh arrays cost more in page faults than
    in arithmetic (a 1B model's bf16 -> f16 took 1.6x as long)."""

    def __init__(self, max_elems: int) -> None:
        self.a = np.empty(max_elems, dtype=np.uint32)  # float32 widening, or bf16 rounding
        self.b = np.empty(max_elems, dtype=np.uint32)  # bf16 rounding of a widened f16 block
        self.out = np.empty(max_elems, dtype=np.uint16)  # 2-byte results (f16, bf16)

    def take(self, buf: np.ndarray, dtype: type, like: np.ndarray) -> np.ndarray:
        if like.size > buf.size:  # a single row longer than a block (3-D tensors): its own buffer
            return np.empty(like.shape, dtype=dtype)
        return buf[:like.size].view(dtype).reshape(like.shape)


def _convert(block: np.ndarray, tag: str, ggml_type: str, scratch: _Scratch) -> np.ndarray:
    """One block as stored (safetensors ``tag``) -> ``ggml_type``'s bytes, in ``scratch``."""
    if _SAME_BYTES.get(tag) == ggml_type:
        return block
    if tag == "F32":
        f32 = block
    elif tag == "BF16":  # the top half of a float32: widened by one shift
        f32 = scratch.take(scratch.a, np.float32, block)
        np.left_shift(block, 16, out=f32.view(np.uint32), dtype=np.uint32)
    elif tag == "F16":
        f32 = scratch.take(scratch.a, np.float32, block)
        np.copyto(f32, block)
    else:  # integer or f64 checkpoints: rare, allocated
        f32 = to_float32(block, tag)
    if ggml_type == "F32":
        return f32
    if ggml_type == "F16":
        out = scratch.take(scratch.out, np.float16, block)
        np.copyto(out, f32, casting="same_kind")
        return out
    return _f32_to_bf16(f32, scratch.take(scratch.b, np.uint32, block), scratch.take(scratch.out, np.uint16, block))


def _nbytes(shape: tuple[int, ...], ggml_type: str) -> int:
    n = int(np.prod(shape)) if shape else 1
    return n * (4 if ggml_type == "F32" else 2)


def plan_tensors(source: SourceModel, spec: ArchSpec, cfg: TextConfig, out_type: str) -> list[_Planned]:
    import gguf

    tmap = gguf.get_tensor_name_map(spec.model_arch, cfg.num_layers)
    float_type = FLOAT_TYPES[out_type][0]
    planned: list[_Planned] = []
    unmapped: list[str] = []
    # tensors assembled from parts (stacked experts, split fused matrices): each placed where its
    # first part's tensor is in the checkpoint; a tensor any part names is written only through them
    at_first: dict[str, list[_Planned]] = {}
    pieced: set[str] = set()
    for comp in plan_composites(spec, source_shapes(source, spec, cfg), cfg):
        ggml_type = "F32" if len(comp.shape) <= 1 or spec.keeps_f32(comp.gguf_name) else float_type
        at_first.setdefault(comp.pieces[0].hf_name, []).append(
            _Planned(None, comp.gguf_name, comp.shape, ggml_type, pieces=comp.pieces))
        pieced.update(p.hf_name for p in comp.pieces)
    for info in source.iter_infos():
        if spec.skip(info.name, cfg):
            continue
        planned += at_first.pop(info.name, [])
        if info.name in pieced:
            continue
        gname = spec.gguf_name(tmap, info.name)
        if gname is None:
            unmapped.append(info.name)
            continue
        # llama.cpp keeps 1-D tensors (norms, biases) in f32: they are tiny and precision-sensitive.
        shape = spec.gguf_shape(info.name, info.shape)  # the same bytes, llama.cpp's view of them
        ggml_type = "F32" if len(shape) <= 1 or spec.keeps_f32(gname) else float_type
        planned.append(_Planned(info.name, gname, shape, ggml_type))
    if unmapped:
        raise InputError(f"{len(unmapped)} tensor(s) have no llama.cpp name for {spec.name}, e.g. {unmapped[0]!r}",
                         hint="the checkpoint holds layers this architecture does not have (vision tower? "
                              "extra heads?); convert the text model alone")
    for gname, arr in spec.extra_tensors(cfg).items():
        planned.append(_Planned(None, gname, arr.shape, "F32", arr))
    return planned


# -- the GGUF header ---------------------------------------------------------------------------

_GGUF_MAGIC, _GGUF_VERSION = 0x46554747, 3  # "GGUF" little-endian, the version gguf-py and llama.cpp write
_U32, _U64 = struct.Struct("<I"), struct.Struct("<Q")


def _scalar_formats() -> dict[Any, str]:
    import gguf

    t = gguf.GGUFValueType
    return {t.UINT8: "<B", t.INT8: "<b", t.UINT16: "<H", t.INT16: "<h", t.UINT32: "<I", t.INT32: "<i",
            t.FLOAT32: "<f", t.BOOL: "<?", t.UINT64: "<Q", t.INT64: "<q", t.FLOAT64: "<d"}


def _pack_string(s: str | bytes) -> bytes:
    b = s.encode("utf-8") if isinstance(s, str) else bytes(s)
    return _U64.pack(len(b)) + b


def _pack_value(val: Any, vtype: Any, sub_type: Any, formats: dict[Any, str]) -> bytes:
    """One metadata value in GGUF's encoding (the same bytes gguf-py writes); arrays in one
    numpy call (numbers) or one join (strings) instead of a Python call per item."""
    import gguf

    t = gguf.GGUFValueType
    if vtype in formats:
        return struct.pack(formats[vtype], val)
    if vtype == t.STRING:
        return _pack_string(val)
    if vtype != t.ARRAY:
        raise ValueError(f"unsupported GGUF metadata type {vtype}")
    items: Sequence[Any] = val
    if not items:
        raise ValueError("empty GGUF metadata array")
    if sub_type is None:
        sub_type = t.UINT8 if isinstance(items, bytes) else t.get_type(items[0])
        if len({type(i) for i in items}) != 1:
            raise ValueError("all items of a GGUF array must have one type")
    head = _U32.pack(int(sub_type)) + _U64.pack(len(items))
    if sub_type in formats:
        return head + np.asarray(items, dtype=np.dtype(formats[sub_type])).tobytes()
    if sub_type == t.STRING:
        pack = _U64.pack
        encoded = [i.encode("utf-8") if isinstance(i, str) else bytes(i) for i in items]
        return head + b"".join([part for e in encoded for part in (pack(len(e)), e)])
    return head + b"".join(_pack_value(i, sub_type, None, formats) for i in items)  # arrays of arrays


def _header(kv: gguf.GGUFWriter, planned: Sequence[_Planned], alignment: int) -> bytes:
    """Magic, counts, metadata and tensor table, padded to where the first tensor's data starts."""
    import gguf

    formats = _scalar_formats()
    (values,) = kv.kv_data  # one file, never split
    parts = [_U32.pack(_GGUF_MAGIC), _U32.pack(_GGUF_VERSION), _U64.pack(len(planned)), _U64.pack(len(values))]
    for key, v in values.items():
        parts += [_pack_string(key), _U32.pack(int(v.type)), _pack_value(v.value, v.type, v.sub_type, formats)]
    offset = 0
    for p in planned:
        dims = p.shape[::-1] or (1,)  # GGML order: the row length first
        parts += [_pack_string(p.gguf_name), _U32.pack(len(dims)), *(_U64.pack(d) for d in dims),
                  _U32.pack(int(gguf.GGMLQuantizationType[p.ggml_type])), _U64.pack(offset)]
        offset += _padded(_nbytes(p.shape, p.ggml_type), alignment)
    out = b"".join(parts)
    return out + bytes(_padded(len(out), alignment) - len(out))


def _padded(n: int, alignment: int) -> int:
    return -(-n // alignment) * alignment


# -- tensor data -------------------------------------------------------------------------------

def _write_all(f: BinaryIO, data: Any) -> int:
    view = memoryview(data).cast("B")
    done = 0
    while done < len(view):
        done += f.write(view[done:]) or 0
    return done


class _Copier:
    """Kernel-side file-to-file copy (Linux ``copy_file_range``); off for good after one refusal."""

    def __init__(self) -> None:
        self.enabled = hasattr(os, "copy_file_range")

    def copy(self, src: Path, start: int, length: int, dst: BinaryIO) -> bool:
        if not self.enabled:
            return False
        pos = dst.tell()
        with open(src, "rb") as f:
            done = 0
            try:
                while done < length:
                    n = os.copy_file_range(f.fileno(), dst.fileno(), length - done, start + done)
                    if n == 0:
                        raise OSError("copy_file_range copied nothing")
                    done += n
            except OSError as e:  # EXDEV, ENOSYS, EINVAL on some filesystems: copy through memory instead
                log.debug("copy_file_range unavailable (%s); copying through memory", e)
                self.enabled = False
                dst.seek(pos)
                dst.truncate()
                return False
        return True


class _TrailingDigest:
    """The sha256 of a file being written, computed on a thread that reads just behind the writer.

    The manifest records each artifact's sha256; hashing once writing is done re-reads the whole
    file on the main thread (~9 s for a 7B in f16). Here the bytes are read back from the page
    cache and hashed while the next tensors are converted, on the other core."""

    _CHUNK = 1 << 20

    def __init__(self, path: Path) -> None:
        self._path, self._written, self._closed, self._abandoned = path, 0, False, False
        self._cond = threading.Condition()
        self._sha = hashlib.sha256()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="edgekit-artifact-sha256", daemon=True)
        self._thread.start()

    def advance(self, written: int) -> None:
        """Bytes ``[0, written)`` of the file are final."""
        with self._cond:
            self._written = written
            self._cond.notify()

    def abandon(self) -> None:
        """Stop hashing (the file is being given up)."""
        with self._cond:
            self._closed = self._abandoned = True
            self._cond.notify()
        self._thread.join()

    def close(self) -> str:
        """Wait for the hash of everything written; its hex digest."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._sha.hexdigest()

    def _run(self) -> None:
        try:
            buf = bytearray(self._CHUNK)  # one buffer, reused: no allocator churn beside the conversion
            view = memoryview(buf)
            with open(self._path, "rb", buffering=0) as f:
                pos = 0
                while True:
                    with self._cond:
                        while self._written <= pos and not self._closed:
                            self._cond.wait()
                        target, closed = self._written, self._closed
                    while pos < target and not self._abandoned:
                        n = f.readinto(view[:min(self._CHUNK, target - pos)])
                        if not n:
                            raise OSError(f"{self._path} is shorter than what was written")
                        self._sha.update(view[:n])
                        pos += n
                    if closed:
                        return
        except BaseException as e:  # re-raised by close()
            self._error = e


def _tensor_data(source: SourceModel, p: _Planned, spec: ArchSpec, cfg: TextConfig,
                 adapter: LoraAdapter | None, scratch: _Scratch) -> Iterator[np.ndarray]:
    """The tensor's bytes in ``p.ggml_type``, block by block (one block when read whole)."""
    if p.pieces:
        for piece in p.pieces:
            yield from _piece_data(source, piece, p.ggml_type, spec, cfg, adapter, scratch)
        return
    if p.hf_name is None:
        assert p.data is not None  # plan_tensors keeps what it synthesised
        yield _cast(p.data, p.ggml_type)
        return
    if (adapter is not None and p.hf_name in adapter.target_tensors) or spec.transforms(p.hf_name, cfg):
        data = source.float32(p.hf_name)
        if adapter is not None:
            data = adapter.merge(p.hf_name, data)
        yield _cast(spec.transform(p.hf_name, data, cfg), p.ggml_type)
        return
    tag = source.info(p.hf_name).dtype
    for block in source.blocks(p.hf_name, BLOCK_ELEMS * source.info(p.hf_name).storage_dtype.itemsize):
        yield _convert(block, tag, p.ggml_type, scratch)


def _piece_data(source: SourceModel, piece: Piece, ggml_type: str, spec: ArchSpec, cfg: TextConfig,
                adapter: LoraAdapter | None, scratch: _Scratch) -> Iterator[np.ndarray]:
    """One piece's rows in ``ggml_type``, streamed block by block from the file (an expert stack is
    never read whole); a tensor merged with a LoRA delta or transformed is read whole (as above)."""
    name = piece.hf_name
    info = source.info(name)
    if (adapter is not None and name in adapter.target_tensors) or spec.transforms(name, cfg):
        data = source.float32(name)
        if adapter is not None:
            data = adapter.merge(name, data)
        data = spec.transform(name, data, cfg)
        yield _cast(data.reshape(-1, data.shape[-1] if data.ndim else 1)[piece.lo:piece.hi], ggml_type)
        return
    for block in source.span_blocks(name, piece.lo, piece.hi, BLOCK_ELEMS * info.storage_dtype.itemsize):
        yield _convert(block, info.dtype, ggml_type, scratch)


def _copy_pieces(source: SourceModel, p: _Planned, spec: ArchSpec, cfg: TextConfig, adapter: LoraAdapter | None,
                 copier: _Copier, f: BinaryIO) -> int | None:
    """A composite whose parts are stored in its type already, copied file to file piece by piece
    (each piece's rows are one contiguous byte range); None where that does not apply."""
    infos = [source.info(piece.hf_name) for piece in p.pieces]
    if any(_SAME_BYTES.get(i.dtype) != p.ggml_type or spec.transforms(i.name, cfg)
           or (adapter is not None and i.name in adapter.target_tensors) for i in infos):
        return None
    start = f.tell()
    for piece, info in zip(p.pieces, infos, strict=True):
        row = (info.shape[-1] if info.shape else 1) * info.storage_dtype.itemsize
        if not copier.copy(source.file_of(info.name).path, info.start + piece.lo * row, (piece.hi - piece.lo) * row, f):
            f.seek(start)  # copier refused (and is off now): the pieces are streamed instead
            f.truncate()
            return None
    return f.tell() - start


def write_float_gguf(
    source: SourceModel,
    out_path: Path,
    *,
    spec: ArchSpec,
    out_type: str,
    adapter: LoraAdapter | None = None,
    name: str | None = None,
    pre_override: str | None = None,
    progress: ProgressFn | None = None,
    compare_tokenizer: bool = True,
) -> str:
    """Write ``source`` as a float GGUF; returns the file's sha256 (hashed while writing).

    ``compare_tokenizer``: also load the tokenizer with transformers and warn where it tokenizes
    differently from tokenizer.json (see :mod:`.vocab`); a conversion that is not verified skips
    it, as it costs a transformers import."""
    import gguf

    cfg = TextConfig.from_hf(source.config)
    planned = plan_tensors(source, spec, cfg, out_type)
    embed = next((p for p in planned if p.gguf_name == "token_embd.weight"), None)
    if embed is None:
        raise InputError("the checkpoint has no token embedding", hint="pass a complete causal-LM checkpoint")

    kv = gguf.GGUFWriter(None, gguf.MODEL_ARCH_NAMES[spec.model_arch])  # metadata only: written below
    kv.add_name(name or source.path.name)
    kv.add_type(gguf.GGUFType.MODEL)
    kv.add_file_type(int(gguf.LlamaFileType[FLOAT_TYPES[out_type][1]]))
    kv.add_quantization_version(gguf.GGML_QUANT_VERSION)
    spec.write_hparams(kv, cfg)
    write_vocab(kv, source.path, n_vocab=embed.shape[0], add_space_prefix=spec.add_space_prefix,
                pre_override=pre_override, compare_transformers=compare_tokenizer)
    alignment = kv.data_alignment
    header = _header(kv, planned, alignment)
    del kv  # the vocabulary's Python objects go before the tensors come

    with open(out_path, "wb", buffering=0) as f:
        digest = _TrailingDigest(out_path)
        try:
            _write_tensors(f, header, planned, source, spec, cfg, adapter, alignment, digest, out_type, progress)
        except BaseException:
            digest.abandon()
            raise
    return digest.close()


def _write_tensors(f: BinaryIO, header: bytes, planned: Sequence[_Planned], source: SourceModel, spec: ArchSpec,
                   cfg: TextConfig, adapter: LoraAdapter | None, alignment: int, digest: _TrailingDigest,
                   out_type: str, progress: ProgressFn | None) -> None:
    """Header, then each tensor's data padded to ``alignment``."""
    copier = _Copier()
    scratch = _Scratch(BLOCK_ELEMS)
    _write_all(f, header)
    for i, p in enumerate(planned, 1):
        want = _nbytes(p.shape, p.ggml_type)
        info = source.info(p.hf_name) if p.hf_name is not None else None
        copied = _copy_pieces(source, p, spec, cfg, adapter, copier, f) if p.pieces else None
        if copied is not None:
            written = copied
        elif (info is not None and _SAME_BYTES.get(info.dtype) == p.ggml_type and info.nbytes == want
                and not (adapter is not None and p.hf_name in adapter.target_tensors)
                and not spec.transforms(info.name, cfg)
                and copier.copy(source.file_of(info.name).path, info.start, info.nbytes, f)):
            written = info.nbytes
        else:
            written = sum(_write_all(f, block) for block in _tensor_data(source, p, spec, cfg, adapter, scratch))
        if written != want:
            raise AssertionError(f"{p.gguf_name}: wrote {written} bytes, planned {want}")
        _write_all(f, bytes(_padded(written, alignment) - written))
        digest.advance(f.tell())
        report(progress, f"write {out_type}", done=i, total=len(planned))
