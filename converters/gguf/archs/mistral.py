"""Mistral: Llama's layout (llama.cpp runs it as the LLAMA arch); sliding window unused at these contexts.

``Mistral3ForConditionalGeneration`` (Mistral Small 3.1): a Pixtral vision tower and projector
beside a Mistral language model, which is what is converted. Ministral 3's checkpoints use the
same class with a ``ministral3`` language model (YaRN with an attention temperature, llama.cpp's
MISTRAL3): :meth:`Mistral3Spec.for_config` hands those to :mod:`.ministral3`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from edgekit.errors import InputError

from .base import VISION_LANGUAGE_LAYOUT, ArchSpec

SPEC = ArchSpec(
    name="mistral",
    hf_architectures=("MistralForCausalLM",),
    gguf_arch="LLAMA",
    permute_qk=True,
)

def _vl_language_models() -> dict[str, ArchSpec]:
    """text_config.model_type -> the spec of Mistral3ForConditionalGeneration with that language model."""
    from . import ministral3

    return {"mistral": VL_SPEC, "ministral3": ministral3.VL_SPEC}


@dataclass(frozen=True)
class Mistral3Spec(ArchSpec):
    def for_config(self, cfg: dict[str, Any]) -> ArchSpec:
        kind = (cfg.get("text_config") or {}).get("model_type", "mistral")
        specs = _vl_language_models()
        if kind not in specs:
            raise InputError(f"{self.hf_architectures[0]}'s language model is {kind!r}, which edgekit does not convert",
                             hint=f"supported language models of this class: {', '.join(specs)}")
        return specs[kind]


VL_SPEC = Mistral3Spec(**replace(
    SPEC,
    name="mistral3-vl",
    hf_architectures=("Mistral3ForConditionalGeneration",),
    **VISION_LANGUAGE_LAYOUT,
).__dict__)
