"""Granite 3.x (dense): Llama's layout with four multipliers, written as llama.cpp's scales.

transformers scales the embeddings by ``embedding_multiplier``, each residual branch by
``residual_multiplier``, attention scores by ``attention_multiplier`` (instead of
1/sqrt(head_dim)) and divides the logits by ``logits_scaling``. All four are required:
transformers would default a missing one to 1.0, a different model from the checkpoint's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from edgekit.errors import InputError

from .base import ArchSpec, TextConfig

if TYPE_CHECKING:
    import gguf


@dataclass(frozen=True)
class GraniteSpec(ArchSpec):
    def write_hparams(self, w: gguf.GGUFWriter, c: TextConfig) -> None:
        if c.head_dim != c.hidden_size // c.num_heads:  # llama.cpp's GRANITE derives it
            raise InputError(f"Granite head_dim {c.head_dim} differs from hidden_size / num_attention_heads, "
                             "which llama.cpp assumes")
        super().write_hparams(w, c)
        raw = c.raw
        w.add_attention_scale(float(raw["attention_multiplier"]))
        w.add_embedding_scale(float(raw["embedding_multiplier"]))
        w.add_residual_scale(float(raw["residual_multiplier"]))
        w.add_logit_scale(float(raw["logits_scaling"]))


SPEC = GraniteSpec(
    name="granite",
    hf_architectures=("GraniteForCausalLM",),
    gguf_arch="GRANITE",
    permute_qk=True,
    required=("embedding_multiplier", "residual_multiplier", "attention_multiplier", "logits_scaling"),
)
