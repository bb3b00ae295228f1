"""A GGUF's own weights, dequantized and mapped back to the Hugging Face names and layout.

Verification loads these into the source model (:mod:`..reference`) so that llama.cpp's logits
are compared with what the file's weights compute -- at q2_k as tightly as at f16. gguf-py's
numpy dequantizers cover every ggml type (k-quants and i-quants included); the mapping back
is the converter's own forward mapping (gguf-py's TensorNameMap over the source's names)
inverted, and each architecture's :meth:`~.archs.ArchSpec.untransform` undoes its fix-ups.
A tensor the writer assembled from parts (:mod:`.composite`: stacked experts, split fused
matrices) is mapped back row range by row range, so each source tensor is rebuilt from the file.
"""

from __future__ import annotations

import contextlib
import math
import mmap
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from edgekit.errors import VerificationError

from ..artifact_weights import ArtifactTensor, ArtifactWeights
from ..source import SourceModel
from .archs import ArchSpec, Composite, TextConfig
from .composite import Segment, plan_composites, rows_of, segments_by_source, source_shapes
from .inspect import TensorRow

BLOCK_ROWS = 4096  # rows dequantized at a time: 4096 x 4096 x 4 B = 64 MiB
BLOCK_ELEMS = BLOCK_ROWS * 4096  # the same bound for tensors rebuilt from parts (an expert stack: experts at a time)


def bits_per_weight(type_name: str) -> float:
    """Bits per weight of a ggml type, block scales included (Q4_K: 144 bytes per 256 weights = 4.5)."""
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[type_name]]
    return size * 8 / block


def dequantize_rows(buf: mmap.mmap, t: TensorRow, lo: int, hi: int) -> np.ndarray:
    """Float32 rows ``[lo, hi)`` (ggml rows: ne0 values each) of tensor ``t`` in a mapped GGUF, [rows, ne0]."""
    import gguf

    row_bytes = t.nbytes // (math.prod(t.shape[1:]) if len(t.shape) > 1 else 1)
    raw = np.frombuffer(buf, dtype=np.uint8, count=(hi - lo) * row_bytes,
                        offset=t.offset + lo * row_bytes).reshape(hi - lo, row_bytes)
    out = np.array(gguf.quants.dequantize(raw, gguf.GGMLQuantizationType[t.type]), dtype=np.float32)
    del raw
    return out.reshape(hi - lo, t.shape[0])


def hf_names(source: SourceModel, spec: ArchSpec, cfg: TextConfig) -> dict[str, str]:
    """GGUF tensor name -> HF tensor name, for every source tensor the converter writes one to one
    (those assembled into composites: :func:`composites_of`)."""
    import gguf

    tmap = gguf.get_tensor_name_map(spec.model_arch, cfg.num_layers)
    out: dict[str, str] = {}
    pieced = {p.hf_name for c in composites_of(source, spec, cfg) for p in c.pieces}
    for info in source.iter_infos():
        if spec.skip(info.name, cfg) or info.name in pieced:
            continue
        gname = spec.gguf_name(tmap, info.name)
        if gname is not None:
            out[gname] = info.name
    return out


def composites_of(source: SourceModel, spec: ArchSpec, cfg: TextConfig) -> list[Composite]:
    """The GGUF tensors the converter assembles from parts of this source's tensors."""
    return plan_composites(spec, source_shapes(source, spec, cfg), cfg)


@dataclass
class GGUFWeights:
    """A GGUF's tensors as :class:`ArtifactTensor` (one dequantized tensor at a time), by HF name.

    The tensor table comes from edgekit's own header reader (validated; gguf-py's reader
    would also build a numpy object per vocabulary entry: 600 MB for a 262k vocabulary) and
    the data from one read-only memory map, whose pages are dropped after each tensor."""

    path: Path
    source: SourceModel
    spec: ArchSpec
    label: str

    def __post_init__(self) -> None:
        from .inspect import read_gguf

        self.cfg = TextConfig.from_hf(self.source.config)
        self.tensors = read_gguf(self.path).tensors
        with open(self.path, "rb") as f:
            self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self.names = hf_names(self.source, self.spec, self.cfg)
        self.extra = self.spec.extra_tensors(self.cfg)
        comps = composites_of(self.source, self.spec, self.cfg)
        self.segments = segments_by_source(comps)
        in_file = {t.name: t for t in self.tensors}
        missing = sorted([hf for g, hf in self.names.items() if g not in in_file]
                         + [p.hf_name for c in comps if c.gguf_name not in in_file for p in c.pieces])
        if missing:
            raise VerificationError(self.label, "weights", f"{len(missing)} source tensor(s) are missing from the "
                                                            f"file, e.g. {missing[0]}")
        for c in comps:  # rows are mapped back by position: the file's tensor must be the planned shape
            if _hf_shape(in_file[c.gguf_name]) != tuple(c.shape):
                raise VerificationError(self.label, "weights", f"{c.gguf_name} has shape "
                                                                f"{list(_hf_shape(in_file[c.gguf_name]))}, the source's "
                                                                f"parts give {list(c.shape)}")
        unknown = sorted(set(in_file) - set(self.names) - set(self.extra) - {c.gguf_name for c in comps})
        if unknown:
            raise VerificationError(self.label, "weights", f"the file holds tensor(s) the source does not have, "
                                                            f"e.g. {unknown[0]}")

    def weights(self) -> ArtifactWeights:
        """The file's weights by HF name, each dequantized when asked for; the tensors the
        configuration implies (RoPE factors) are checked against it here."""
        by_hf: dict[str, TensorRow] = {}
        for t in self.tensors:
            if t.name in self.extra:
                want = self.extra[t.name]
                data = self._dequantize(t, 0, self._rows(t)).reshape(_hf_shape(t))
                if want.shape != data.shape or not np.allclose(data, want, rtol=1e-3, atol=1e-6):
                    raise VerificationError(self.label, "weights", f"{t.name} differs from what the configuration "
                                                                    f"implies")
            elif t.name in self.names:
                by_hf[self.names[t.name]] = t
        rows = {t.name: t for t in self.tensors}
        parts = {hf: [(rows[s.gguf_name], s) for s in segs] for hf, segs in self.segments.items()}

        def get(hf: str) -> ArtifactTensor:
            return self._tensor(by_hf[hf], hf) if hf in by_hf else self._assembled(hf, parts[hf])

        return ArtifactWeights((*by_hf, *parts), get)

    @staticmethod
    def _rows(t: TensorRow) -> int:
        return math.prod(t.shape[1:]) if len(t.shape) > 1 else 1

    def _dequantize(self, t: TensorRow, lo: int, hi: int) -> np.ndarray:
        return dequantize_rows(self._mm, t, lo, hi)

    def _release(self, t: TensorRow) -> None:
        """Drop a tensor's pages from this process's map of the file once dequantized: llama.cpp
        maps the same file, and pages left mapped here would count twice."""
        if not hasattr(mmap, "MADV_DONTNEED"):
            return
        lo = t.offset - t.offset % mmap.PAGESIZE
        with contextlib.suppress(OSError, ValueError):
            self._mm.madvise(mmap.MADV_DONTNEED, lo, t.offset + t.nbytes - lo)

    def _tensor(self, t: TensorRow, hf: str) -> ArtifactTensor:
        shape = self.spec.hf_shape(hf, _hf_shape(t))
        if self.spec.untransform_rowwise(hf):
            return ArtifactTensor(hf, shape, partial(self._blocks, t, shape, hf), t.type, bits_per_weight(t.type))
        # rows move between heads: the whole tensor at once (q/k projections, small)
        data = self._dequantize(t, 0, self._rows(t)).reshape(shape)
        self._release(t)
        return ArtifactTensor.whole(hf, self.spec.untransform(hf, data, self.cfg), t.type, bits_per_weight(t.type))

    def _blocks(self, t: TensorRow, shape: tuple[int, ...], hf: str) -> Iterator[np.ndarray]:
        """Dequantized HF rows, BLOCK_ROWS at a time (read from the map as needed)."""
        if len(shape) < 2:
            yield self.spec.untransform(hf, self._dequantize(t, 0, 1).reshape(shape), self.cfg)
        else:
            per = self._rows(t) // shape[0]  # ggml rows per HF row (1 for matrices)
            for i in range(0, shape[0], BLOCK_ROWS):
                n = min(BLOCK_ROWS, shape[0] - i)
                block = self._dequantize(t, i * per, (i + n) * per)
                yield self.spec.untransform(hf, block.reshape(n, *shape[1:]), self.cfg)
        self._release(t)


    def _assembled(self, hf: str, segs: list[tuple[TensorRow, Segment]]) -> ArtifactTensor:
        """A source tensor whose rows lie in composites: rebuilt from their row ranges, a bounded
        number of its leading-axis rows at a time (one expert of a stack at least)."""
        shape = self.source.info(hf).shape
        coarsest = min((t for t, _ in segs), key=lambda t: bits_per_weight(t.type))
        if not self.spec.untransform_rowwise(hf):
            data = self._gather(segs, 0, rows_of(shape)).reshape(shape)
            return ArtifactTensor.whole(hf, self.spec.untransform(hf, data, self.cfg), coarsest.type,
                                        bits_per_weight(coarsest.type))
        return ArtifactTensor(hf, shape, partial(self._assembled_blocks, hf, segs, shape), coarsest.type,
                              bits_per_weight(coarsest.type))

    def _assembled_blocks(self, hf: str, segs: list[tuple[TensorRow, Segment]],
                          shape: tuple[int, ...]) -> Iterator[np.ndarray]:
        if len(shape) < 2:
            yield self.spec.untransform(hf, self._gather(segs, 0, 1).reshape(shape), self.cfg)
        else:
            per = rows_of(shape) // shape[0]  # piece rows per leading-axis row (1 for a matrix)
            step = max(1, BLOCK_ELEMS // (per * shape[-1]))
            for i in range(0, shape[0], step):
                n = min(step, shape[0] - i)
                block = self._gather(segs, i * per, (i + n) * per)
                yield self.spec.untransform(hf, block.reshape(n, *shape[1:]), self.cfg)
        for t in {id(t): t for t, _ in segs}.values():
            self._release(t)

    def _gather(self, segs: list[tuple[TensorRow, Segment]], lo: int, hi: int) -> np.ndarray:
        """Rows ``[lo, hi)`` of a source tensor (piece rows), dequantized from the composites holding them."""
        out: np.ndarray | None = None
        for t, s in segs:
            a, b = max(lo, s.piece.lo), min(hi, s.piece.hi)
            if a >= b:
                continue
            rows = self._dequantize(t, s.at + a - s.piece.lo, s.at + b - s.piece.lo)
            if out is None:
                out = np.empty((hi - lo, rows.shape[1]), dtype=np.float32)
            out[a - lo:b - lo] = rows
        assert out is not None  # plan_composites checked that the pieces cover every row
        return out


def _hf_shape(t: TensorRow) -> tuple[int, ...]:
    return tuple(int(x) for x in reversed(t.shape))  # ggml lists the fastest dimension first
