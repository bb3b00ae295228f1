"""Qwen3-MoE (Qwen3-30B-A3B and smaller): Qwen3's attention, every layer a mixture of experts.

llama.cpp's QWEN3MOE (``src/models/qwen3moe.cpp``) runs every layer with experts (softmax router,
top-k, the k weights renormalized: ``norm_w = true``) and reads the expert width from
``expert_feed_forward_length``. A config it would run as another model is refused: routing
weights left unnormalized (``norm_topk_prob: false``), or dense layers among the sparse ones
(``mlp_only_layers``, ``decoder_sparse_step`` > 1). No shared expert (that is Qwen2-MoE).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgekit.errors import InputError

from .moe import MoeSpec


@dataclass(frozen=True)
class Qwen3MoeSpec(MoeSpec):
    def check_config(self, cfg: dict[str, Any]) -> None:
        super().check_config(cfg)
        text = cfg.get("text_config") if isinstance(cfg.get("text_config"), dict) else cfg
        assert isinstance(text, dict)
        if not text.get("norm_topk_prob", False):
            raise InputError("Qwen3-MoE config sets norm_topk_prob false; llama.cpp's qwen3moe always renormalizes "
                             "the top-k routing weights, so it would run another model",
                             hint="this checkpoint cannot run in llama.cpp as is")
        if text.get("mlp_only_layers") or int(text.get("decoder_sparse_step") or 1) != 1:
            raise InputError("Qwen3-MoE config has dense layers (mlp_only_layers / decoder_sparse_step), which "
                             "llama.cpp's qwen3moe does not run", hint="this checkpoint cannot run in llama.cpp as is")


SPEC = Qwen3MoeSpec(
    name="qwen3-moe",
    hf_architectures=("Qwen3MoeForCausalLM",),
    gguf_arch="QWEN3MOE",
    qk_norm="head",
    required=("num_experts_per_tok", "moe_intermediate_size"),
    formats=("gguf", "gptq"),
    why_not=(("onnx", "ONNX Runtime GenAI 0.18's builder has no Qwen3-MoE (Qwen3MoeForCausalLM)"),),
)
