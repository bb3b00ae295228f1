"""Mistral: Llama's layout (llama.cpp runs it as the LLAMA arch); sliding window unused at these contexts."""

from .base import ArchSpec

SPEC = ArchSpec(
    name="mistral",
    hf_architectures=("MistralForCausalLM",),
    gguf_arch="LLAMA",
    permute_qk=True,
)
