"""OLMo 2: norms after attention and after the feed-forward block (none before), RMSNorm on
q and k over the whole projection (not per head), NEOX rope."""

from .base import ArchSpec

SPEC = ArchSpec(
    name="olmo2",
    hf_architectures=("Olmo2ForCausalLM",),
    gguf_arch="OLMO2",
    qk_norm="full",
    layer_norms=("post_attention_layernorm", "post_feedforward_layernorm"),
    formats=("gguf", "gptq"),
    why_not=(("onnx", "ONNX Runtime GenAI 0.18's builder has no OLMo 2 (Olmo2ForCausalLM)"),),
)
