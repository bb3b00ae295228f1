"""Mistral: Llama's layout (llama.cpp runs it as the LLAMA arch); sliding window unused at these contexts.

``Mistral3ForConditionalGeneration`` (Mistral Small 3.1): a Pixtral vision tower and projector
beside a Mistral language model, which is what is converted. Its newer Ministral 3 language
model (``ministral3``: YaRN with an attention temperature, llama.cpp's MISTRAL3) is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from edgekit.errors import InputError

from .base import ArchSpec

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
    text_prefixes=(("model.language_model.", "model."), ("lm_head.", "lm_head."),
                   ("language_model.model.", "model."), ("language_model.lm_head.", "lm_head.")),
    left_out=("model.vision_tower.", "model.multi_modal_projector.", "vision_tower.", "multi_modal_projector."),
    saved_prefixes=(("model.language_model.", "language_model.model."), ("lm_head.", "language_model.lm_head."),
                    ("model.vision_tower.", "vision_tower."), ("model.multi_modal_projector.", "multi_modal_projector.")),
    formats=("gguf",),
    why_not=(("onnx", "the language model of a multimodal checkpoint is converted to GGUF only"),
             ("gptq", "the language model of a multimodal checkpoint is converted to GGUF only")),
).__dict__)
