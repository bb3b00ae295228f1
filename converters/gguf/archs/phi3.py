"""Phi-3 / Phi-3.5 / Phi-4-mini: fused qkv_proj and gate_up_proj, partial rotary, LongRoPE.

llama.cpp keeps both fused matrices (``attn_qkv``; ``ffn_up`` holding gate then up) and splits
them in its graph, so the tensors are written as stored. LongRoPE's per-dimension divisors
become ``rope_factors_long`` / ``rope_factors_short`` (the short ones apply up to
``original_max_position_embeddings``, as in transformers), with the attention factor
transformers multiplies cos/sin by. llama.cpp's PHI3 graph runs without a sliding window
(it reads the key and, for now, ignores it), as transformers does up to the window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from edgekit.errors import InputError

from .base import ArchSpec, TextConfig

if TYPE_CHECKING:
    import gguf


def _orig_ctx(c: TextConfig) -> int:
    return int(c.rope.get("original_max_position_embeddings") or c.raw.get("original_max_position_embeddings")
               or c.max_position)


@dataclass(frozen=True)
class Phi3Spec(ArchSpec):
    def rope_dims(self, c: TextConfig) -> int:
        # llama.cpp's converter: int(partial_rotary_factor * hidden) // heads
        pct = float(c.rope.get("partial_rotary_factor", c.raw.get("partial_rotary_factor", 1.0)))
        return int(pct * c.hidden_size) // c.num_heads

    def write_hparams(self, w: gguf.GGUFWriter, c: TextConfig) -> None:
        super().write_hparams(w, c)
        w.add_rope_scaling_orig_ctx_len(_orig_ctx(c))
        w.add_sliding_window(int(c.raw.get("sliding_window") or 0))  # 0: no window (Phi-4-mini)

    def write_rope_scaling(self, w: gguf.GGUFWriter, c: TextConfig) -> None:
        kind = c.rope.get("rope_type", "default")
        if kind in (None, "default"):
            return
        if kind not in ("longrope", "su"):
            raise InputError(f"Phi-3 rope scaling type {kind!r} is not supported", hint="supported: default, longrope")
        w.add_rope_scaling_attn_factors(self._attn_factor(c))

    def _attn_factor(self, c: TextConfig) -> float:
        if c.rope.get("attention_factor") is not None:
            return float(c.rope["attention_factor"])
        scale = c.max_position / _orig_ctx(c)
        return math.sqrt(1 + math.log(scale) / math.log(_orig_ctx(c))) if scale > 1.0 else 1.0

    def extra_tensors(self, c: TextConfig) -> dict[str, np.ndarray]:
        if c.rope.get("rope_type") not in ("longrope", "su"):
            return {}
        half = self.rope_dims(c) // 2
        out = {}
        for key, name in (("long_factor", "rope_factors_long.weight"), ("short_factor", "rope_factors_short.weight")):
            factors = c.rope.get(key)
            if not factors or len(factors) != half:
                raise InputError(f"config.json's rope {key} has {len(factors or [])} values, LongRoPE needs {half}",
                                 hint="rotary dimensions / 2; pass the model's own config.json")
            out[name] = np.asarray(factors, dtype=np.float32)
        return out


SPEC = Phi3Spec(
    name="phi3",
    hf_architectures=("Phi3ForCausalLM",),
    gguf_arch="PHI3",
    fused_qkv=True,
    fused_gate_up=True,
)
