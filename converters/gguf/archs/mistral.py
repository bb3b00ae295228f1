"""Mistral: Llama's layout (llama.cpp runs it as the LLAMA arch); sliding window unused at these contexts.

``Mistral3ForConditionalGeneration`` (Mistral Small 3.1): a Pixtral vision tower and projector
beside a Mistral language model, which is what is converted. Its newer Ministral 3 language
model (``ministral3``: YaRN with an attention temperature, llama.cpp's MISTRAL3) is refused.
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

_VL_LANGUAGE_MODELS = ("mistral",)


@dataclass(frozen=True)
class Mistral3Spec(ArchSpec):
    def check_config(self, cfg: dict[str, Any]) -> None:
        super().check_config(cfg)
        kind = (cfg.get("text_config") or {}).get("model_type", "mistral")
        if kind not in _VL_LANGUAGE_MODELS:
            raise InputError(f"{self.hf_architectures[0]}'s language model is {kind!r}, which edgekit does not convert",
                             hint=f"supported language models of this class: {', '.join(_VL_LANGUAGE_MODELS)}")


VL_SPEC = Mistral3Spec(**replace(
    SPEC,
    name="mistral3-vl",
    hf_architectures=("Mistral3ForConditionalGeneration",),
    **VISION_LANGUAGE_LAYOUT,
).__dict__)
