"""An artifact's own weights as verification reads them, and how they compare with the source's.

Each format's reader (GGUF: :mod:`.gguf.dequant`, ONNX: :mod:`.onnx.dequant`, GPTQ) gives an
:class:`ArtifactWeights`: which Hugging Face tensors the artifact carries, each dequantized on
demand a block of rows at a time. :class:`WeightCheck` holds each tensor's relative error against
the source, which is O(1) for a permuted, transposed or missing tensor at every precision.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class ArtifactTensor:
    """One weight of an artifact, dequantized to float32 in the Hugging Face layout and name.

    ``blocks()`` yields its rows in order, a block of rows at a time, so that a large tensor
    (a 262k x 640 embedding) is never held in float32 whole beside its source copy."""

    hf_name: str
    shape: tuple[int, ...]
    blocks: Callable[[], Iterator[np.ndarray]]
    stored_as: str  # the artifact's type for it: "Q4_K", "F16", "int4/32"...
    bits: float  # bits per weight of that type, block scales included

    @classmethod
    def whole(cls, hf_name: str, data: np.ndarray, stored_as: str, bits: float) -> ArtifactTensor:
        return cls(hf_name, tuple(data.shape), lambda: iter([data]), stored_as, bits)


@dataclass(frozen=True)
class ArtifactWeights:
    """An artifact's weights by Hugging Face name: which it carries (known without reading any
    data) and each one on demand, so verification reads them in the model's layer order."""

    names: tuple[str, ...]
    get: Callable[[str], ArtifactTensor]

    def __iter__(self) -> Iterator[ArtifactTensor]:
        for name in self.names:
            yield self.get(name)

    @classmethod
    def of(cls, tensors: Iterable[ArtifactTensor]) -> ArtifactWeights:
        """From tensors already in memory (tests, small artifacts)."""
        by_name = {t.hf_name: t for t in tensors}
        return cls(tuple(by_name), by_name.__getitem__)


def rel_err(got: np.ndarray, want: np.ndarray, rows: int = 4096) -> float:
    """||got - want|| / ||want||, in float64, a slice of rows at a time (no model-sized temporaries)."""
    n = got.shape[0] if got.ndim else 1
    g, w = got.reshape(n, -1), want.reshape(n, -1)
    num = den = 0.0
    for i in range(0, g.shape[0], rows):
        a, b = g[i:i + rows].astype(np.float64), w[i:i + rows].astype(np.float64)
        num += float(np.square(a - b).sum())
        den += float(np.square(b).sum())
    return math.sqrt(num / den) if den > 0 else (0.0 if num == 0 else float("inf"))


@dataclass
class WeightCheck:
    """Per-tensor relative error (||dequantized - source|| / ||source||) of an artifact's weights."""

    errors: dict[str, tuple[float, str, float]] = field(default_factory=dict)  # name -> (error, type, bits)
    unexpected: list[str] = field(default_factory=list)
    n_tensors: int = 0

    def failures(self, bound: Callable[[float], float]) -> list[str]:
        out = [f"weights: {self.unexpected[0]!r} has no place in the source model"
               f"{f' (+{len(self.unexpected) - 1} more)' if len(self.unexpected) > 1 else ''}"] if self.unexpected else []
        bad = [(n, e, s, b) for n, (e, s, b) in self.errors.items() if e > bound(b)]
        if bad:
            n, e, s, b = max(bad, key=lambda x: x[1] / bound(x[3]))
            out.append(f"weights: {len(bad)} tensor(s) differ from the source beyond {s}'s rounding, worst "
                       f"{n} (relative error {e:.3g} > {bound(b):g}: permuted, transposed or wrong tensor)")
        return out

    def summary(self) -> dict[str, Any]:
        if not self.errors:
            return {"tensors": 0}
        name, (err, stored, _) = max(self.errors.items(), key=lambda kv: kv[1][0])
        return {"tensors": len(self.errors), "max_rel_err": float(f"{err:.4g}"), "max_rel_err_tensor": name,
                "max_rel_err_type": stored}
