"""Gemma 4 (text): Gemma4ForCausalLM, the dense text stack.

What differs from Gemma 3, and how llama.cpp's ``gemma4`` expects it (its converter,
``conversion/gemma.py``: ``Gemma4Model``, and ``src/models/gemma4.cpp`` of the vendored llama.cpp):

- **Two kinds of layer**, from ``layer_types``: sliding-window layers (``head_dim``,
  ``num_key_value_heads``, rope ``sliding_attention``) and full-attention layers with their own
  head size and KV heads (``per_layer_config`` / ``global_head_dim`` /
  ``num_global_key_value_heads``). Written as ``attention.sliding_window_pattern`` (one bool per
  layer), ``head_count_kv`` per layer, ``key_length``/``value_length`` (full) and their ``_swa``
  twins, ``rope.dimension_count`` (full: the whole head) and ``_swa``, ``rope.freq_base`` (full)
  and ``rope.freq_base_swa``.
- **Proportional RoPE** on the full layers: transformers rotates the first
  ``partial_rotary_factor`` of each head's frequency pairs with exponents over the whole head and
  leaves the rest unrotated (inverse frequency 0); llama.cpp rotates the whole head with the
  ``rope_freqs`` tensor dividing each pair's frequency: 1 for the rotated pairs, 1e30 for the rest
  (synthesised here, checked back against the configuration by the verifier).
- **Shared KV**: the last ``num_kv_shared_layers`` layers have no k/v projections or norms and
  reuse the KV of the last earlier layer of their type (``attention.shared_kv_layers``; llama.cpp
  takes those to be the two layers just before, sliding then full, and other patterns are refused); with
  ``use_double_wide_mlp`` their MLP is twice as wide (``feed_forward_length`` per layer).
  ``attention_k_eq_v``: full layers without ``v_proj`` use the key projection as values, which
  llama.cpp does when ``attn_v`` is absent. Values are RMS-normed without a weight (``v_norm``).
- **Per-layer embeddings** (``hidden_size_per_layer_input``): ``embed_tokens_per_layer``
  -> ``per_layer_token_embd``, ``per_layer_model_projection`` -> ``per_layer_model_proj``,
  ``per_layer_projection_norm`` -> ``per_layer_proj_norm``, and per layer ``per_layer_input_gate``
  -> ``inp_gate``, ``per_layer_projection`` -> ``proj``, ``post_per_layer_input_norm`` -> ``post_norm``
  (``embedding_length_per_layer_input``).
- ``layer_scalar`` (a persistent buffer multiplying each layer's output) -> ``layer_output_scale.weight``.
- Norms are plain scales (Gemma 4's RMSNorm multiplies by ``w``, not ``1 + w``: no shift);
  sandwich norms as Gemma 3; attention is unscaled (``scaling = 1.0``, llama.cpp's fixed
  ``f_attention_scale``); ``final_logit_softcapping`` as Gemma 2/3.
- ``Gemma4ForConditionalGeneration``: its language model is converted, the vision and audio towers
  and their embedders left out.
- Refused before anything is written: the MoE block (``enable_moe_block``, Gemma 4 26B-A4B),
  bidirectional attention on all tokens, attention biases, a per-layer vocabulary that is not the
  vocabulary, rope types llama.cpp's loader does not express.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekit.errors import InputError

from .base import VISION_LANGUAGE_LAYOUT, ArchSpec, KvLayer, TextConfig
from .gemma3 import GEMMA_NORMS

if TYPE_CHECKING:
    import gguf

SLIDING, FULL = "sliding_attention", "full_attention"
_UNROTATED = 1e30  # llama.cpp's frequency divisor for the pairs proportional RoPE leaves alone
_PER_LAYER_KEYS = {"head_dim", "num_key_value_heads"}


@dataclass(frozen=True)
class Gemma4Layout:
    """The per-layer shapes of a Gemma 4 text stack."""

    types: tuple[str, ...]
    head_dim: tuple[int, ...]
    kv_heads: tuple[int, ...]
    has_kv: tuple[bool, ...]
    has_v: tuple[bool, ...]
    ff: tuple[int, ...]
    ple: int  # hidden_size_per_layer_input (0: no per-layer embeddings)

    @property
    def full_head_dim(self) -> int:
        return next((d for d, t in zip(self.head_dim, self.types, strict=True) if t == FULL), self.head_dim[0])


def layout(c: TextConfig) -> Gemma4Layout:
    raw = c.raw
    types = raw.get("layer_types")
    if types is None:  # transformers' default: 5 sliding, 1 full, the last forced full
        types = [SLIDING if (i + 1) % 6 else FULL for i in range(c.num_layers)]
        types[-1] = FULL
    types = [str(t) for t in types]
    if len(types) != c.num_layers or set(types) - {SLIDING, FULL}:
        raise InputError(f"Gemma 4 layer_types must name {c.num_layers} layers, each 'sliding_attention' or "
                         f"'full_attention' (got {types})", hint="pass the model's own config.json")
    per_layer = {int(k): dict(v) for k, v in (raw.get("per_layer_config") or {}).items()}
    unknown = {k for v in per_layer.values() for k in v} - _PER_LAYER_KEYS
    if unknown:
        raise InputError(f"Gemma 4 per_layer_config sets {sorted(unknown)}, which edgekit does not map",
                         hint=f"edgekit maps per-layer {', '.join(sorted(_PER_LAYER_KEYS))} only")
    full_hd = raw.get("global_head_dim")
    full_kv = raw.get("num_global_key_value_heads") if raw.get("attention_k_eq_v", True) else None
    head_dim, kv_heads = [], []
    for i, t in enumerate(types):
        own = per_layer.get(i, {})
        default_hd = full_hd if t == FULL and full_hd else c.head_dim
        default_kv = full_kv if t == FULL and full_kv else c.num_kv_heads
        head_dim.append(int(own.get("head_dim", default_hd)))
        kv_heads.append(int(own.get("num_key_value_heads", default_kv)))
    shared = int(raw.get("num_kv_shared_layers") or 0)
    first_shared = c.num_layers - shared
    # transformers: a shared layer reuses the KV of the last earlier layer of its type; llama.cpp
    # hard-codes that layer as first_shared - 1 (full) or first_shared - 2 (sliding)
    if shared and (first_shared < 2 or types[first_shared - 1] != FULL or types[first_shared - 2] != SLIDING):
        raise InputError(f"Gemma 4 num_kv_shared_layers {shared}: the two layers before the shared ones must be "
                         f"sliding then full, as llama.cpp assumes (got {types[max(0, first_shared - 2):first_shared]})",
                         hint="this checkpoint cannot run in llama.cpp as is")
    has_kv = tuple(i < first_shared for i in range(c.num_layers))
    has_v = tuple(kv and not (raw.get("attention_k_eq_v") and t == FULL) for kv, t in zip(has_kv, types, strict=True))
    wide = bool(raw.get("use_double_wide_mlp")) and shared > 0
    ff = tuple(c.intermediate_size * (2 if wide and i >= first_shared else 1) for i in range(c.num_layers))
    return Gemma4Layout(tuple(types), tuple(head_dim), tuple(kv_heads), has_kv, has_v, ff,
                        int(raw.get("hidden_size_per_layer_input") or 0))


def _rope_of(c: TextConfig, kind: str) -> dict[str, Any]:
    params = c.raw.get("rope_parameters") or {}
    if isinstance(params.get(kind), dict):
        return dict(params[kind])
    if kind == FULL:
        return {"rope_type": "proportional", "partial_rotary_factor": 0.25, "rope_theta": 1_000_000.0}
    return {"rope_type": "default", "rope_theta": 10_000.0}


def rotated_pairs(c: TextConfig) -> tuple[int, int]:
    """(rotated, total) frequency pairs of a full-attention head."""
    hd = layout(c).full_head_dim
    rope = _rope_of(c, FULL)
    factor = float(rope.get("partial_rotary_factor", 1.0)) if rope.get("rope_type") == "proportional" else 1.0
    return int(factor * hd // 2), hd // 2


@dataclass(frozen=True)
class Gemma4Spec(ArchSpec):
    def check_config(self, cfg: dict[str, Any]) -> None:
        super().check_config(cfg)
        c = TextConfig.from_hf(cfg)
        raw = c.raw
        refusals = (
            (raw.get("enable_moe_block"), "enable_moe_block: Gemma 4's MoE block (26B-A4B) is not converted yet; "
                                          "the dense Gemma 4 text stack is"),
            (raw.get("use_bidirectional_attention") == "all",
             "use_bidirectional_attention 'all': llama.cpp's gemma4 attends causally on its full layers"),
            (raw.get("attention_bias"), "attention_bias, which llama.cpp's gemma4 has no tensors for"),
            (raw.get("hidden_size_per_layer_input") and int(raw.get("vocab_size_per_layer_input") or c.vocab_size)
             != c.vocab_size, "vocab_size_per_layer_input different from vocab_size, which llama.cpp assumes"),
        )
        for bad, why in refusals:
            if bad:
                raise InputError(f"Gemma 4 config sets {why}", hint="this checkpoint cannot run in llama.cpp as is")
        for kind, allowed in ((FULL, ("proportional", "default")), (SLIDING, ("default",))):
            rope = _rope_of(c, kind)
            if rope.get("rope_type", "default") not in allowed or float(rope.get("factor", 1.0)) != 1.0:
                raise InputError(f"Gemma 4 {kind} rope {rope} is not one llama.cpp's gemma4 expresses",
                                 hint=f"supported: rope_type {' or '.join(allowed)} without a factor")
        layout(c)  # a wrong pattern or per-layer override, before anything is written

    def write_hparams(self, w: gguf.GGUFWriter, c: TextConfig) -> None:
        import gguf

        lay = layout(c)
        super().write_hparams(w, c)
        arch = w.arch
        for key in (gguf.Keys.LLM.FEED_FORWARD_LENGTH, gguf.Keys.Attention.HEAD_COUNT_KV,
                    gguf.Keys.Attention.KEY_LENGTH, gguf.Keys.Attention.VALUE_LENGTH, gguf.Keys.Rope.FREQ_BASE):
            del w.kv_data[0][key.format(arch=arch)]  # per-layer or per-type values below
        swa_hd = next((d for d, t in zip(lay.head_dim, lay.types, strict=True) if t == SLIDING), c.head_dim)
        w.add_feed_forward_length(list(lay.ff) if len(set(lay.ff)) > 1 else lay.ff[0])
        w.add_head_count_kv(list(lay.kv_heads))
        w.add_key_length(lay.full_head_dim)
        w.add_value_length(lay.full_head_dim)
        w.add_key_length_swa(swa_hd)
        w.add_value_length_swa(swa_hd)
        w.add_rope_dimension_count_swa(swa_hd)  # transformers rotates the whole sliding head
        w.add_rope_freq_base(float(_rope_of(c, FULL)["rope_theta"]))
        w.add_rope_freq_base_swa(float(_rope_of(c, SLIDING)["rope_theta"]))
        w.add_sliding_window(int(c.raw.get("sliding_window") or 512))
        w.add_sliding_window_pattern([t == SLIDING for t in lay.types])
        w.add_shared_kv_layers(sum(1 for kv in lay.has_kv if not kv))
        w.add_embedding_length_per_layer_input(lay.ple)
        if (cap := c.raw.get("final_logit_softcapping")) is not None:
            w.add_final_logit_softcapping(float(cap))

    def rope_dims(self, c: TextConfig) -> int:
        return layout(c).full_head_dim  # the rest is left unrotated by rope_freqs

    def write_rope_scaling(self, w: gguf.GGUFWriter, c: TextConfig) -> None:
        return  # checked in check_config: no scaling llama.cpp would need to know of

    def extra_tensors(self, c: TextConfig) -> dict[str, np.ndarray]:
        rotated, total = rotated_pairs(c)
        return {"rope_freqs.weight": np.asarray([1.0] * rotated + [_UNROTATED] * (total - rotated), dtype=np.float32)}

    def swa_layers(self, c: TextConfig) -> tuple[int | None, int]:
        return int(c.raw.get("sliding_window") or 512), sum(1 for t in layout(c).types if t == SLIDING)

    def kv_layers(self, c: TextConfig) -> tuple[KvLayer, ...]:
        """What llama.cpp's gemma4 caches (``llama_kv_cache_iswa``, src/llama-kv-cache.cpp): the layers
        before the shared ones only (``has_kv``: ``n_layer_kv_from_start``); per layer its type's head
        size (``key_length`` / ``key_length_swa``) x its own KV heads; a full layer whose keys are its
        values (no ``attn_v``) still gets a V row of the same width (the cache always allocates V,
        the graph stores K there); sliding layers keep the window."""
        lay, window = layout(c), self.swa_layers(c)[0]
        swa_hd = next((d for d, t in zip(lay.head_dim, lay.types, strict=True) if t == SLIDING), c.head_dim)
        out = []
        for t, kv_heads, has_kv in zip(lay.types, lay.kv_heads, lay.has_kv, strict=True):
            if has_kv:
                width = kv_heads * (swa_hd if t == SLIDING else lay.full_head_dim)
                out.append(KvLayer(width, width, window if t == SLIDING else None))
        return tuple(out)

    def gguf_name(self, tmap: gguf.TensorNameMap, hf_name: str) -> str | None:
        name = super().gguf_name(tmap, hf_name)
        if name is not None and name.endswith(".layer_output_scale"):  # llama.cpp's loader asks for .weight
            return name + ".weight"
        return name

    # -- the Hugging Face layout (the profiler's tensor list) ---------------------------------
    def hf_tensors(self, c: TextConfig) -> Iterator[tuple[str, tuple[int, ...]]]:
        h, lay, m = c.hidden_size, layout(c), self.hf_name("model.")
        yield m + "embed_tokens.weight", (c.vocab_size, h)
        if lay.ple:
            yield m + "embed_tokens_per_layer.weight", (c.vocab_size, c.num_layers * lay.ple)
            yield m + "per_layer_model_projection.weight", (c.num_layers * lay.ple, h)
            yield m + "per_layer_projection_norm.weight", (lay.ple,)
        for i in range(c.num_layers):
            p, hd = f"{m}layers.{i}.", lay.head_dim[i]
            for norm in self.layer_norms:
                yield p + norm + ".weight", (h,)
            yield p + "layer_scalar", (1,)
            yield p + "self_attn.q_proj.weight", (c.num_heads * hd, h)
            yield p + "self_attn.q_norm.weight", (hd,)
            if lay.has_kv[i]:
                yield p + "self_attn.k_proj.weight", (lay.kv_heads[i] * hd, h)
                yield p + "self_attn.k_norm.weight", (hd,)
                if lay.has_v[i]:
                    yield p + "self_attn.v_proj.weight", (lay.kv_heads[i] * hd, h)
            yield p + "self_attn.o_proj.weight", (h, c.num_heads * hd)
            yield p + "mlp.gate_proj.weight", (lay.ff[i], h)
            yield p + "mlp.up_proj.weight", (lay.ff[i], h)
            yield p + "mlp.down_proj.weight", (h, lay.ff[i])
            if lay.ple:
                yield p + "per_layer_input_gate.weight", (lay.ple, h)
                yield p + "per_layer_projection.weight", (h, lay.ple)
                yield p + "post_per_layer_input_norm.weight", (h,)
        yield m + "norm.weight", (h,)
        if not c.tie_word_embeddings:
            yield "lm_head.weight", (c.vocab_size, h)


SPEC = Gemma4Spec(
    name="gemma4",
    hf_architectures=("Gemma4ForCausalLM",),
    gguf_arch="GEMMA4",
    add_space_prefix=False,
    layer_norms=GEMMA_NORMS,
    formats=("gguf",),
    why_not=(("onnx", "ONNX Runtime GenAI 0.18's builder takes Gemma4ForConditionalGeneration only, and fails on "
                      "it under transformers 5.17: it reads num_key_value_heads globally, a per-layer attribute of "
                      "Gemma 4's config (AmbiguousGlobalPerLayerAttributeError)"),
             ("gptq", "llmcompressor 0.14's sequential pipeline cannot run Gemma 4: its model-level per-layer "
                      "input projection gets no weight statistics ('No statistics available'), and the KV-sharing "
                      "layers lose the keys/values they reuse between pipeline stages (KeyError in shared_kv_states)")),
)

# Gemma4ForConditionalGeneration (the hub's Gemma 4 checkpoints): the language model under
# model.language_model, a vision tower (and an audio tower on E2B/E4B) with their embedders
# beside it, left out; the reference runs the checkpoint's own class on the text path.
_VL = VISION_LANGUAGE_LAYOUT
VL_SPEC = replace(
    SPEC,
    name="gemma4-vl",
    hf_architectures=("Gemma4ForConditionalGeneration",),
    text_prefixes=_VL["text_prefixes"],
    left_out=(*_VL["left_out"], "model.embed_vision.", "model.audio_tower.", "model.embed_audio."),
    saved_prefixes=_VL["saved_prefixes"],
    formats=_VL["formats"],
    why_not=_VL["why_not"],
)
