"""Gemma 3 (text): (1 + w) norms, sandwich norms, q/k norms, sliding-window layers."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from edgekit.errors import InputError

from .base import VISION_LANGUAGE_LAYOUT, ArchSpec, TextConfig, _rope

if TYPE_CHECKING:
    import gguf

# llama.cpp hard-codes Gemma 3's layer pattern (every 6th layer global) and the local rope
# base; a config that disagrees would convert "fine" and then run differently.
LLAMA_CPP_SWA_PATTERN = 6
_LLAMA_CPP_LOCAL_ROPE_BASE = 10000.0
# sandwich norms: before and after both attention and the feed-forward block
GEMMA_NORMS = ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
               "post_feedforward_layernorm")


@dataclass(frozen=True)
class Gemma3Spec(ArchSpec):
    def write_hparams(self, w: gguf.GGUFWriter, c: TextConfig) -> None:
        super().write_hparams(w, c)
        raw = c.raw
        if raw.get("attn_logit_softcapping") is not None:
            raise InputError("Gemma 3 config sets attn_logit_softcapping, which llama.cpp does not implement")
        if (cap := raw.get("final_logit_softcapping")) is not None:
            w.add_final_logit_softcapping(float(cap))
        if raw.get("sliding_window") is not None:
            w.add_sliding_window(int(raw["sliding_window"]))
        local = _rope(raw, "sliding_attention").get("rope_theta", raw.get("rope_local_base_freq"))
        if local is not None and float(local) != _LLAMA_CPP_LOCAL_ROPE_BASE:
            raise InputError(f"Gemma 3 local rope base {local} differs from llama.cpp's fixed {_LLAMA_CPP_LOCAL_ROPE_BASE}")
        types = raw.get("layer_types")
        if types:
            expected = ["full_attention" if (i + 1) % LLAMA_CPP_SWA_PATTERN == 0 else "sliding_attention"
                        for i in range(c.num_layers)]
            if list(types) != expected:
                raise InputError("Gemma 3 layer_types do not follow the 5-local/1-global pattern llama.cpp assumes")

    def swa_layers(self, c: TextConfig) -> tuple[int | None, int]:
        if not c.raw.get("sliding_window"):
            return None, 0
        return int(c.raw["sliding_window"]), sum(1 for i in range(c.num_layers) if (i + 1) % LLAMA_CPP_SWA_PATTERN)

    def write_rope_scaling(self, w: gguf.GGUFWriter, c: TextConfig) -> None:
        # Global layers carry the scaling in transformers 5's per-layer-type rope_parameters.
        super().write_rope_scaling(w, TextConfig(**{**c.__dict__, "rope": _rope(c.raw, "full_attention")}))


SPEC = Gemma3Spec(
    name="gemma3",
    hf_architectures=("Gemma3ForCausalLM",),
    gguf_arch="GEMMA3",
    norm_shift=1.0,
    add_space_prefix=False,
    qk_norm="head",
    layer_norms=GEMMA_NORMS,
)

# Gemma 3 4B and up: a SigLIP vision tower and projector beside the language model, which is
# what is converted (llama.cpp's converter does the same; the tower would be a separate mmproj).
VL_SPEC = replace(
    SPEC,
    name="gemma3-vl",
    hf_architectures=("Gemma3ForConditionalGeneration",),
    **VISION_LANGUAGE_LAYOUT,
)
