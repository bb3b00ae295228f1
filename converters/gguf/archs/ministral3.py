"""Ministral 3 (``ministral3``; the language model of Ministral 3's ``Mistral3ForConditionalGeneration``):
Llama's layout with YaRN RoPE and Llama 4's attention temperature. llama.cpp's MISTRAL3 arch.

What differs from Mistral, and how llama.cpp expects it (its converter, ``conversion/mistral3.py``,
and ``src/models/mistral3.cpp``):

- **Attention temperature.** transformers scales the queries by
  ``1 + beta * log(1 + floor(pos / original_max_position_embeddings))`` (``llama_4_scaling_beta``);
  llama.cpp does the same from ``attention.temperature_scale`` = beta, with the floor's period
  taken from the YaRN original context (``rope.scaling.original_context_length``), which it
  therefore requires.
- **YaRN** with ``mscale_all_dim`` as llama.cpp's ``rope.scaling.yarn_log_mul`` and the
  ``beta_fast``/``beta_slow`` ramp, beside the factor and original context every YaRN model writes.
- q/k are permuted for llama.cpp's interleaved RoPE as for Llama (MISTRAL3 runs rope type NORM).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from edgekit.errors import InputError

from .base import VISION_LANGUAGE_LAYOUT, ArchSpec, TextConfig

if TYPE_CHECKING:
    import gguf


@dataclass(frozen=True)
class Ministral3Spec(ArchSpec):
    def check_config(self, cfg: dict[str, Any]) -> None:
        super().check_config(cfg)
        rope = TextConfig.from_hf(cfg).rope
        if rope.get("rope_type") not in ("yarn", None, "default"):
            raise InputError(f"Ministral 3 rope type {rope.get('rope_type')!r} is not supported",
                             hint="llama.cpp's MISTRAL3 runs YaRN (or no scaling)")
        if rope.get("llama_4_scaling_beta") and not rope.get("original_max_position_embeddings"):
            raise InputError("Ministral 3 config sets llama_4_scaling_beta without original_max_position_embeddings",
                             hint="the attention temperature's period is the original context; pass the model's "
                                  "complete config.json")

    def write_rope_scaling(self, w: gguf.GGUFWriter, c: TextConfig) -> None:
        super().write_rope_scaling(w, c)  # YaRN: type, factor, original context
        rope = c.rope
        if rope.get("rope_type") != "yarn":
            return
        for key, add in (("mscale_all_dim", w.add_rope_scaling_yarn_log_mul),
                         ("beta_fast", w.add_rope_scaling_yarn_beta_fast),
                         ("beta_slow", w.add_rope_scaling_yarn_beta_slow),
                         ("llama_4_scaling_beta", w.add_attn_temperature_scale)):
            if rope.get(key) is not None:
                add(float(rope[key]))


SPEC = Ministral3Spec(
    name="ministral3",
    hf_architectures=("Ministral3ForCausalLM",),
    gguf_arch="MISTRAL3",
    permute_qk=True,
    formats=("gguf", "gptq"),
    why_not=(("onnx", "ONNX Runtime GenAI's builder has no Ministral3ForCausalLM"),),
)

# Mistral3ForConditionalGeneration whose text_config is ministral3 (Ministral 3 3B/8B/14B): the
# language model converted, the Pixtral tower and projector left out (mistral.py dispatches here).
VL_SPEC = Ministral3Spec(**replace(
    SPEC,
    name="ministral3-vl",
    hf_architectures=("Mistral3ForConditionalGeneration",),
    **VISION_LANGUAGE_LAYOUT,
).__dict__)
