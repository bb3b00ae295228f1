"""Qwen3 (dense): per-head RMSNorm on q and k, no biases, NEOX rope."""

from .base import ArchSpec

SPEC = ArchSpec(
    name="qwen3",
    hf_architectures=("Qwen3ForCausalLM",),
    gguf_arch="QWEN3",
    qk_norm="head",
)
