"""GGUF tensors assembled from parts of checkpoint tensors (:class:`~.archs.Composite`), checked.

One place asks the spec for its composites and checks them against the checkpoint, for the
writer (which streams each piece's rows into the composite) and for verification (which maps
a composite's rows back to the checkpoint tensors they came from): every piece names a source
tensor of the composite's row length, the pieces fill the composite's rows exactly, and each
source tensor a piece names is covered once, whole -- so nothing is written twice or lost, and
verification can rebuild every source tensor from the file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from edgekit.errors import InputError

from ..source import SourceModel
from .archs import ArchSpec, Composite, Piece, TextConfig


def source_shapes(source: SourceModel, spec: ArchSpec, cfg: TextConfig) -> dict[str, tuple[int, ...]]:
    """Every source tensor the converter reads (HF name -> shape), in file order."""
    return {i.name: i.shape for i in source.iter_infos() if not spec.skip(i.name, cfg)}


def rows_of(shape: tuple[int, ...]) -> int:
    """Rows of a tensor in a piece's sense: the leading axes flattened (a vector is one row)."""
    return math.prod(shape[:-1]) if len(shape) > 1 else 1


def plan_composites(spec: ArchSpec, shapes: dict[str, tuple[int, ...]], cfg: TextConfig) -> list[Composite]:
    """The spec's composites for this checkpoint, checked (a checkpoint whose expert matrices do
    not have the shapes its config implies is refused here, naming the tensor)."""
    comps = spec.composites(shapes, cfg)
    covered: dict[str, list[tuple[int, int]]] = {}
    for c in comps:
        row = c.shape[-1] if c.shape else 1
        total = 0
        for p in c.pieces:
            shape = shapes.get(p.hf_name)
            if shape is None:
                raise InputError(f"{c.gguf_name} needs {p.hf_name!r}, which the checkpoint lacks",
                                 hint="pass the complete checkpoint (every shard listed in its index)")
            if (shape[-1] if shape else 1) != row or not 0 <= p.lo < p.hi <= rows_of(shape):
                raise InputError(f"{p.hf_name} has shape {list(shape)}, which does not give rows [{p.lo}, {p.hi}) of "
                                 f"{row} values for {c.gguf_name} {list(c.shape)}",
                                 hint="the checkpoint's expert tensors do not match its config.json "
                                      "(num_experts / moe_intermediate_size / hidden_size)")
            covered.setdefault(p.hf_name, []).append((p.lo, p.hi))
            total += p.hi - p.lo
        if total != rows_of(c.shape):
            raise AssertionError(f"{spec.name}: the pieces of {c.gguf_name} give {total} rows, its shape "
                                 f"{list(c.shape)} has {rows_of(c.shape)}")  # a bug in the spec
    for name, spans in covered.items():
        pos = 0
        for lo, hi in sorted(spans):
            if lo != pos:
                raise AssertionError(f"{spec.name}: rows [{pos}, {lo}) of {name} are "
                                     f"{'written twice' if lo < pos else 'in no composite'}")
            pos = hi
        if pos != rows_of(shapes[name]):
            raise AssertionError(f"{spec.name}: rows [{pos}, {rows_of(shapes[name])}) of {name} are in no composite")
    return comps


@dataclass(frozen=True)
class Segment:
    """Where a piece of a source tensor lies in a composite: its rows ``[piece.lo, piece.hi)``
    are the composite's rows from ``at``."""

    gguf_name: str
    at: int
    piece: Piece


def segments_by_source(comps: list[Composite]) -> dict[str, list[Segment]]:
    """HF name -> the segments that hold its rows, in row order (what verification reads back)."""
    out: dict[str, list[Segment]] = {}
    for c in comps:
        at = 0
        for p in c.pieces:
            out.setdefault(p.hf_name, []).append(Segment(c.gguf_name, at, p))
            at += p.hi - p.lo
    for segs in out.values():
        segs.sort(key=lambda s: s.piece.lo)
    return out
