"""Gemma 2: (1 + w) norms, sandwich norms, attention and final logit soft-capping, every
other layer local (sliding window). llama.cpp scales the embeddings by sqrt(hidden) itself."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from edgekit.errors import InputError

from .base import ArchSpec, TextConfig
from .gemma3 import GEMMA_NORMS

if TYPE_CHECKING:
    import gguf

# llama.cpp's GEMMA2: layers alternate local/global starting with a local one (pattern 2),
# and queries are scaled by 1/sqrt(head_dim) except on the 27B (46 layers: hidden/heads).
LLAMA_CPP_SWA_PATTERN = 2
_LLAMA_CPP_27B_LAYERS = 46


def _is_local(i: int) -> bool:
    return (i + 1) % LLAMA_CPP_SWA_PATTERN != 0


@dataclass(frozen=True)
class Gemma2Spec(ArchSpec):
    def write_hparams(self, w: gguf.GGUFWriter, c: TextConfig) -> None:
        super().write_hparams(w, c)
        raw = c.raw
        if raw.get("attn_logit_softcapping") is not None:
            w.add_attn_logit_softcapping(float(raw["attn_logit_softcapping"]))
        if raw.get("final_logit_softcapping") is not None:
            w.add_final_logit_softcapping(float(raw["final_logit_softcapping"]))
        w.add_sliding_window(int(raw["sliding_window"]))
        scalar = float(raw["query_pre_attn_scalar"])
        llama_cpp = c.hidden_size / c.num_heads if c.num_layers == _LLAMA_CPP_27B_LAYERS else c.head_dim
        if scalar != llama_cpp:
            raise InputError(f"Gemma 2 query_pre_attn_scalar {scalar:g} differs from the {llama_cpp:g} llama.cpp "
                             f"assumes for {c.num_layers} layers", hint="this checkpoint cannot run in llama.cpp as is")
        types = raw.get("layer_types")
        if types and list(types) != ["sliding_attention" if _is_local(i) else "full_attention"
                                     for i in range(c.num_layers)]:
            raise InputError("Gemma 2 layer_types do not alternate local/global as llama.cpp assumes")

    def swa_layers(self, c: TextConfig) -> tuple[int | None, int]:
        return int(c.raw["sliding_window"]), sum(1 for i in range(c.num_layers) if _is_local(i))


SPEC = Gemma2Spec(
    name="gemma2",
    hf_architectures=("Gemma2ForCausalLM",),
    gguf_arch="GEMMA2",
    norm_shift=1.0,
    add_space_prefix=False,
    layer_norms=GEMMA_NORMS,
    required=("sliding_window", "query_pre_attn_scalar", "final_logit_softcapping", "attn_logit_softcapping"),
)
