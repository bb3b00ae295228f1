"""Mixtral (Mixtral-8x7B and its fine-tunes): Mistral's attention, every layer a mixture of experts.

llama.cpp runs it as its LLAMA arch with ``expert_count`` set (``src/models/llama.cpp``): q/k
permuted for its rope as Llama's, ``feed_forward_length`` is one expert's width, softmax router
with the top-k weights renormalized (as transformers' MixtralTopKRouter always does). Hub
checkpoints name the block ``block_sparse_moe`` and each expert's matrices ``w1`` (gate), ``w3``
(up), ``w2`` (down).
"""

from __future__ import annotations

from .moe import MoeSpec

SPEC = MoeSpec(
    name="mixtral",
    hf_architectures=("MixtralForCausalLM",),
    gguf_arch="LLAMA",
    permute_qk=True,
    moe_block="block_sparse_moe",
    expert_names=("w1", "w3", "w2"),
    n_experts_keys=("num_local_experts",),
    expert_ff_key="intermediate_size",
    write_expert_ff=False,
    required=("num_experts_per_tok",),
    formats=("gguf", "gptq"),
    why_not=(("onnx", "ONNX Runtime GenAI 0.18's builder has no Mixtral (MixtralForCausalLM)"),),
)
