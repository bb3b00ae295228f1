"""A GGUF's own weights, dequantized and mapped back to the Hugging Face names and layout.

Verification loads these into the source model (:mod:`..reference`) so that llama.cpp's logits
are compared with what the file's weights compute -- at q2_k as tightly as at f16. gguf-py's
numpy dequantizers cover every ggml type (k-quants and i-quants included); the mapping back
is the converter's own forward mapping (gguf-py's TensorNameMap over the source's names)
inverted, and each architecture's :meth:`~.archs.ArchSpec.untransform` undoes its fix-ups.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import VerificationError

from ..reference import ArtifactTensor
from ..source import SourceModel
from .archs import ArchSpec, TextConfig

BLOCK_ROWS = 4096  # rows dequantized at a time: 4096 x 4096 x 4 B = 64 MiB


def bits_per_weight(type_name: str) -> float:
    """Bits per weight of a ggml type, block scales included (Q4_K: 144 bytes per 256 weights = 4.5)."""
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[type_name]]
    return size * 8 / block


def hf_names(source: SourceModel, spec: ArchSpec, cfg: TextConfig) -> dict[str, str]:
    """GGUF tensor name -> HF tensor name, for every source tensor the converter writes."""
    import gguf

    tmap = gguf.get_tensor_name_map(spec.model_arch, cfg.num_layers)
    out: dict[str, str] = {}
    for info in source.iter_infos():
        if spec.skip(info.name, cfg):
            continue
        gname = tmap.get_name(info.name, try_suffixes=(".weight", ".bias"))
        if gname is not None:
            out[gname] = info.name
    return out


@dataclass
class GGUFWeights:
    """Iterates a GGUF's tensors as :class:`ArtifactTensor` (one dequantized tensor at a time)."""

    path: Path
    source: SourceModel
    spec: ArchSpec
    label: str

    def __post_init__(self) -> None:
        import gguf

        self.cfg = TextConfig.from_hf(self.source.config)
        self.reader = gguf.GGUFReader(self.path)  # memory-mapped: tensors are read when dequantized
        self.names = hf_names(self.source, self.spec, self.cfg)
        self.extra = self.spec.extra_tensors(self.cfg)
        in_file = {t.name for t in self.reader.tensors}
        missing = sorted(hf for g, hf in self.names.items() if g not in in_file)
        if missing:
            raise VerificationError(self.label, "weights", f"{len(missing)} source tensor(s) are missing from the "
                                                            f"file, e.g. {missing[0]}")
        unknown = sorted(in_file - set(self.names) - set(self.extra))
        if unknown:
            raise VerificationError(self.label, "weights", f"the file holds tensor(s) the source does not have, "
                                                            f"e.g. {unknown[0]}")

    def type_counts(self) -> dict[str, int]:
        return dict(Counter(t.tensor_type.name for t in self.reader.tensors))

    def __iter__(self) -> Iterator[ArtifactTensor]:
        import gguf

        for t in self.reader.tensors:
            kind = t.tensor_type.name
            shape = tuple(int(x) for x in reversed(t.shape.tolist()))  # ggml lists the fastest dimension first
            if t.name in self.extra:
                want = self.extra[t.name]
                data = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(shape)
                if want.shape != data.shape or not np.allclose(data, want, rtol=1e-3, atol=1e-6):
                    raise VerificationError(self.label, "weights", f"{t.name} differs from what the configuration "
                                                                    f"implies")
                continue
            hf = self.names[t.name]
            if self.spec.untransform_rowwise(hf):
                yield ArtifactTensor(hf, shape, partial(self._blocks, t, shape, hf), kind, bits_per_weight(kind))
            else:  # rows move between heads: the whole tensor at once (q/k projections, small)
                data = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(shape)
                yield ArtifactTensor.whole(hf, self.spec.untransform(hf, data, self.cfg), kind, bits_per_weight(kind))

    def _blocks(self, t: Any, shape: tuple[int, ...], hf: str) -> Iterator[np.ndarray]:
        """Dequantized rows, BLOCK_ROWS at a time (the raw data is a memory map: pages are read as needed)."""
        import gguf

        raw = t.data
        if len(shape) < 2:
            yield self.spec.untransform(hf, np.asarray(gguf.quants.dequantize(raw, t.tensor_type),
                                                       dtype=np.float32).reshape(shape), self.cfg)
            return
        raw = raw.reshape(shape[0], -1)
        for i in range(0, shape[0], BLOCK_ROWS):
            block = np.asarray(gguf.quants.dequantize(raw[i:i + BLOCK_ROWS], t.tensor_type), dtype=np.float32)
            yield self.spec.untransform(hf, block.reshape(-1, *shape[1:]), self.cfg)
