"""Qwen2 / Qwen2.5: biases on q/k/v, NEOX rope (no permutation)."""

from .base import ArchSpec

SPEC = ArchSpec(
    name="qwen2",
    hf_architectures=("Qwen2ForCausalLM",),
    gguf_arch="QWEN2",
    qkv_bias=True,
)
