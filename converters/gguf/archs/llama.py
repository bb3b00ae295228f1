"""Llama (Llama 2/3, SmolLM, TinyLlama, most fine-tunes): the reference layout."""

from .base import ArchSpec

SPEC = ArchSpec(
    name="llama",
    hf_architectures=("LlamaForCausalLM",),
    gguf_arch="LLAMA",
    permute_qk=True,
)
