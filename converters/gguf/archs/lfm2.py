"""LFM2 (Liquid): gated short-convolution layers mixed with GQA attention layers.

What differs from Llama, and how llama.cpp's LFM2 expects it (its converter,
``conversion/lfm2.py``, and ``src/models/lfm2.cpp`` of the vendored llama.cpp):

- **The layer pattern** is not a key of its own: llama.cpp reads ``head_count_kv`` as one
  value per layer and runs a layer as a short convolution where it is 0
  (``is_recr = n_head_kv(il) == 0``). It is written from ``layer_types`` (or the older
  ``full_attn_idxs``).
- **The convolution kernel** is stored by transformers as a depthwise ``Conv1d`` weight
  ``[hidden, 1, L]``; llama.cpp wants ``shortconv.conv`` as ``[hidden, L]`` (ggml ``{L, hidden}``)
  and in float32 (``ggml_ssm_conv`` reads f32 only; its quantizer never touches the tensor).
  The bytes are the same, only the shape loses its middle 1. ``shortconv.l_cache`` is L.
- ``in_proj`` (B, C, x stacked) and ``out_proj`` map as stored; ``model.embedding_norm`` is
  applied after the last layer and llama.cpp names it ``token_embd_norm``.
- **The feed-forward width** is derived: with ``block_auto_adjust_ff_dim`` transformers uses
  ``2/3 * intermediate_size``, times ``block_ffn_dim_multiplier``, rounded up to
  ``block_multiple_of`` (what llama.cpp's converter writes too).
- Norm epsilon is ``norm_eps``; q/k are RMS-normed per head (``q_layernorm``/``k_layernorm``);
  RoPE is NEOX (no q/k permutation).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edgekit.errors import InputError

from .base import ArchSpec, TextConfig

if TYPE_CHECKING:
    import gguf

ATTENTION, CONV = "full_attention", "conv"
_CONV_KERNEL = ".conv.conv.weight"  # HF suffix of the depthwise kernel, [hidden, 1, L]


def layer_types(c: TextConfig) -> list[str]:
    """Each layer's type, ``full_attention`` or ``conv``, as transformers builds the model."""
    raw = c.raw
    types = raw.get("layer_types")
    if types is None and raw.get("full_attn_idxs") is not None:
        idxs = {int(i) for i in raw["full_attn_idxs"]}
        types = [ATTENTION if i in idxs else CONV for i in range(c.num_layers)]
    if types is None:
        raise InputError("LFM2 config.json has neither 'layer_types' nor 'full_attn_idxs'",
                         hint="pass the model's complete config.json (as saved by save_pretrained)")
    types = [str(t) for t in types]
    if len(types) != c.num_layers or set(types) - {ATTENTION, CONV}:
        raise InputError(f"LFM2 layer_types must name {c.num_layers} layers, each 'full_attention' or 'conv' "
                         f"(got {types})", hint="pass the model's own config.json")
    return types


def feed_forward_length(c: TextConfig) -> int:
    """The MLP width transformers' Lfm2MLP really builds (and llama.cpp's converter writes)."""
    raw = c.raw
    ff = int(raw.get("block_ff_dim") or c.intermediate_size)
    if raw.get("block_auto_adjust_ff_dim", True):
        ff = int(2 * ff / 3)
        multiplier = raw.get("block_ffn_dim_multiplier", 1.0)
        if multiplier is not None:
            ff = int(float(multiplier) * ff)
            multiple = int(raw.get("block_multiple_of", 256))
            ff = multiple * ((ff + multiple - 1) // multiple)
    return ff


def conv_kernel_length(c: TextConfig) -> int:
    return int(c.raw.get("conv_L_cache", 3))


@dataclass(frozen=True)
class Lfm2Spec(ArchSpec):
    def check_config(self, cfg: dict[str, Any]) -> None:
        super().check_config(cfg)
        if cfg.get("conv_bias"):
            raise InputError("LFM2 config sets conv_bias, which llama.cpp's LFM2 has no tensors for",
                             hint="this checkpoint cannot run in llama.cpp as is")
        layer_types(TextConfig.from_hf(cfg))  # a missing or unknown pattern, before anything is written

    def write_hparams(self, w: gguf.GGUFWriter, c: TextConfig) -> None:
        import gguf

        if c.num_heads * c.head_dim != c.hidden_size:  # llama.cpp's attn_output is {hidden, hidden}
            raise InputError(f"LFM2 heads x head_dim ({c.num_heads} x {c.head_dim}) differs from hidden_size "
                             f"{c.hidden_size}, which llama.cpp assumes")
        super().write_hparams(w, c)
        arch = w.arch
        for key in (gguf.Keys.LLM.FEED_FORWARD_LENGTH, gguf.Keys.Attention.HEAD_COUNT_KV,
                    gguf.Keys.Attention.LAYERNORM_RMS_EPS):
            del w.kv_data[0][key.format(arch=arch)]  # replaced below (no duplicate-key warning)
        w.add_feed_forward_length(feed_forward_length(c))
        w.add_head_count_kv([c.num_kv_heads if t == ATTENTION else 0 for t in layer_types(c)])
        w.add_layer_norm_rms_eps(float(c.raw.get("norm_eps", 1e-5)))
        w.add_shortconv_l_cache(conv_kernel_length(c))

    # -- shapes and types llama.cpp wants that differ from the checkpoint's -------------------
    def gguf_shape(self, hf_name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
        if hf_name.endswith(_CONV_KERNEL) and len(shape) == 3 and shape[1] == 1:
            return (shape[0], shape[2])
        return shape

    def hf_shape(self, hf_name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
        if hf_name.endswith(_CONV_KERNEL) and len(shape) == 2:
            return (shape[0], 1, shape[1])
        return shape

    def keeps_f32(self, gguf_name: str) -> bool:
        return gguf_name.endswith("shortconv.conv.weight")

    # -- the Hugging Face layout (the profiler's tensor list) ---------------------------------
    def hf_tensors(self, c: TextConfig) -> Iterator[tuple[str, tuple[int, ...]]]:
        h, q, kv, ff = c.hidden_size, c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim, feed_forward_length(c)
        yield "model.embed_tokens.weight", (c.vocab_size, h)
        for i, kind in enumerate(layer_types(c)):
            p = f"model.layers.{i}."
            yield p + "operator_norm.weight", (h,)
            yield p + "ffn_norm.weight", (h,)
            if kind == ATTENTION:
                yield p + "self_attn.q_proj.weight", (q, h)
                yield p + "self_attn.k_proj.weight", (kv, h)
                yield p + "self_attn.v_proj.weight", (kv, h)
                yield p + "self_attn.out_proj.weight", (h, q)
                yield p + "self_attn.q_layernorm.weight", (c.head_dim,)
                yield p + "self_attn.k_layernorm.weight", (c.head_dim,)
            else:
                yield p + "conv.conv.weight", (h, 1, conv_kernel_length(c))
                yield p + "conv.in_proj.weight", (3 * h, h)
                yield p + "conv.out_proj.weight", (h, h)
            yield p + "feed_forward.w1.weight", (ff, h)
            yield p + "feed_forward.w3.weight", (ff, h)
            yield p + "feed_forward.w2.weight", (h, ff)
        yield "model.embedding_norm.weight", (h,)
        if not (c.tie_word_embeddings or c.raw.get("tie_embedding")):  # LiquidAI's configs say tie_embedding
            yield "lm_head.weight", (c.vocab_size, h)

    def recurrent_layers(self, c: TextConfig) -> int:
        """Layers that keep a recurrent state per sequence instead of a KV cache per token."""
        return sum(1 for t in layer_types(c) if t == CONV)

    def recurrent_state(self, c: TextConfig) -> tuple[int, int]:
        """llama.cpp's n_embd_r for LFM2: the last L - 1 inputs of the short convolution (hidden
        wide); no recurrent state (n_embd_s = 0)."""
        return c.hidden_size * (conv_kernel_length(c) - 1), 0


SPEC = Lfm2Spec(
    name="lfm2",
    hf_architectures=("Lfm2ForCausalLM",),
    gguf_arch="LFM2",
    required=("conv_L_cache",),
    # GPTQ: llmcompressor's sequential pipeline quantizes the Linear projections (conv in/out,
    # attention, feed-forward); the short-convolution kernels are Conv1d and stay float
    formats=("gguf", "onnx", "gptq"),
    onnx_modules=(("attn.o_proj", "self_attn.out_proj"), ("conv.in_proj", "conv.in_proj"),
                  ("conv.out_proj", "conv.out_proj"), ("mlp.gate_proj", "feed_forward.w1"),
                  ("mlp.up_proj", "feed_forward.w3"), ("mlp.down_proj", "feed_forward.w2")),
)
