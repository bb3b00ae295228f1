"""Qwen3.5 (text): gated delta-net linear attention mixed with gated full attention.

What differs from Llama, and how llama.cpp's ``qwen35`` expects it (its converter,
``conversion/qwen.py``: ``Qwen3_5TextModel`` over ``Qwen3NextModel``, and
``src/models/qwen35.cpp`` of the vendored llama.cpp):

- **The layer pattern**: ``layer_types`` (transformers fills it from ``full_attention_interval``,
  default every 4th layer full attention) is written as ``attention.recurrent_layers``, one bool
  per layer (true = gated delta-net), which llama.cpp reads before the interval; the interval is
  written too when the pattern is periodic.
- **Full-attention layers**: ``q_proj`` yields, per head, the query and then an output gate
  (``2 * head_dim`` rows a head), which llama.cpp views the same way (``attn_q`` of
  ``n_head * head_dim * 2``); the gate multiplies the attention output through a sigmoid.
  Norms (the layers' two, the final one and ``q_norm``/``k_norm``) are zero-centred
  (``1 + w``): llama.cpp wants ``w + 1``. RoPE is interleaved M-RoPE over the first
  ``partial_rotary_factor`` of each head (``rope.dimension_count``) with
  ``rope.dimension_sections`` (``mrope_section``, padded to 4, llama.cpp's default
  ``[11, 11, 10, 0]`` when the config has none: its loader requires the key); text positions are
  the same in every section, so it is the ordinary rotation there.
- **Delta-net layers**: ``in_proj_qkv`` -> ``attn_qkv``, ``in_proj_z`` -> ``attn_gate``,
  ``in_proj_b`` -> ``ssm_beta``, ``in_proj_a`` -> ``ssm_alpha``, ``out_proj`` -> ``ssm_out``, the
  gated RMSNorm ``norm`` -> ``ssm_norm`` (a plain scale: no shift), ``dt_bias`` -> ``ssm_dt.bias``,
  ``A_log`` -> ``ssm_a`` holding ``-exp(A_log)`` (llama.cpp multiplies softplus(alpha + dt) by it
  directly), the depthwise ``conv1d`` kernel ``[C, 1, K]`` -> ``ssm_conv1d`` ``[C, K]`` in float32
  (``ggml_ssm_conv`` reads f32 only; its quantizer leaves it alone).
- **Value heads are reordered** where there are more value heads than key heads: transformers
  pairs value head ``g * r + j`` with key head ``g`` (``repeat_interleave``); ggml broadcasts
  key heads tiled, so llama.cpp's converter moves value head ``g * r + j`` to ``j * K + g`` in
  every tensor indexed by value head (the V rows of ``in_proj_qkv`` and of the conv kernel,
  ``in_proj_z``, ``in_proj_a``/``b``, ``A_log``, ``dt_bias``, the columns of ``out_proj``). A
  row permutation: a transform / untransform pair, as :func:`.base.permute_rope`.
- Hyper-parameters: ``ssm.conv_kernel`` = ``linear_conv_kernel_dim``, ``ssm.state_size`` = the
  key head dim, ``ssm.group_count`` = key heads, ``ssm.time_step_rank`` = value heads,
  ``ssm.inner_size`` = value heads x value head dim. llama.cpp sizes the value heads by the key
  head dim, so the two must be equal (they are in every Qwen3.5).
- The multi-token-prediction block (``mtp.*``, which transformers does not load either) is not
  converted. ``Qwen3_5ForConditionalGeneration``: its language model is converted, the vision
  tower (``model.visual``) left out. The MoE variant (``qwen3_5_moe``) is refused (:data:`REFUSED`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekit.errors import InputError

from .base import VISION_LANGUAGE_LAYOUT, ArchSpec, TextConfig

if TYPE_CHECKING:
    import gguf

LINEAR, FULL = "linear_attention", "full_attention"
DEFAULT_MROPE_SECTION = (11, 11, 10, 0)  # transformers' and llama.cpp's when the config has none
_SKIPPED_PREFIXES = ("mtp.", "model.mtp.")  # the MTP draft block: not part of the causal LM
# delta-net tensors indexed by value head (reordered when there are more value than key heads)
_BY_VALUE_HEAD = (".linear_attn.in_proj_qkv.weight", ".linear_attn.in_proj_z.weight",
                  ".linear_attn.in_proj_a.weight", ".linear_attn.in_proj_b.weight", ".linear_attn.A_log",
                  ".linear_attn.dt_bias", ".linear_attn.conv1d.weight", ".linear_attn.out_proj.weight")
_A_LOG = ".linear_attn.A_log"
_CONV = ".linear_attn.conv1d.weight"
_GATED_NORM = ".linear_attn.norm.weight"  # Qwen3_5RMSNormGated: a plain scale, unlike the other norms

# classes of this family edgekit does not convert, with the reason (spec_for says it in one line)
REFUSED: tuple[tuple[str, str], ...] = tuple(
    (cls, "Qwen3.5's MoE variant (qwen3_5_moe: experts in the delta-net hybrid) is not converted yet; "
          "the dense Qwen3.5 (Qwen3_5ForCausalLM / Qwen3_5ForConditionalGeneration) is")
    for cls in ("Qwen3_5MoeForCausalLM", "Qwen3_5MoeForConditionalGeneration"))


def layer_types(c: TextConfig) -> list[str]:
    """Each layer's type, ``linear_attention`` or ``full_attention``, as transformers builds the model."""
    raw = c.raw
    types = raw.get("layer_types")
    if types is None:
        interval = int(raw.get("full_attention_interval") or 4)
        types = [LINEAR if (i + 1) % interval else FULL for i in range(c.num_layers)]
    types = [str(t) for t in types]
    if len(types) != c.num_layers or set(types) - {LINEAR, FULL}:
        raise InputError(f"Qwen3.5 layer_types must name {c.num_layers} layers, each 'linear_attention' or "
                         f"'full_attention' (got {types})", hint="pass the model's own config.json")
    return types


def full_attention_interval(types: list[str]) -> int | None:
    """The period of a pattern 'every n-th layer is full attention' (None when it is not one)."""
    if FULL not in types:
        return None
    n = types.index(FULL) + 1
    return n if types == [LINEAR if (i + 1) % n else FULL for i in range(len(types))] else None


@dataclass(frozen=True)
class LinearDims:
    """The gated delta-net's sizes."""

    k_heads: int
    v_heads: int
    head_dim: int  # key and value heads alike (llama.cpp assumes they are equal)
    kernel: int

    @property
    def key_dim(self) -> int:
        return self.k_heads * self.head_dim

    @property
    def value_dim(self) -> int:
        return self.v_heads * self.head_dim

    @property
    def conv_dim(self) -> int:
        return 2 * self.key_dim + self.value_dim

    @property
    def per_k(self) -> int:
        return self.v_heads // self.k_heads


def linear_dims(c: TextConfig) -> LinearDims:
    raw = c.raw
    return LinearDims(int(raw["linear_num_key_heads"]), int(raw["linear_num_value_heads"]),
                      int(raw["linear_key_head_dim"]), int(raw.get("linear_conv_kernel_dim") or 4))


def mrope_sections(c: TextConfig) -> list[int]:
    sections = [int(s) for s in c.rope.get("mrope_section") or DEFAULT_MROPE_SECTION][:4]
    return sections + [0] * (4 - len(sections))


def _heads_moved(x: np.ndarray, d: LinearDims, rows: int, inverse: bool, axis: int = 0) -> np.ndarray:
    """Value heads grouped by key head -> tiled (``g * r + j`` -> ``j * K + g``) along ``axis``
    (``inverse``: back), ``rows`` values per head: one copy, written into a new array."""
    src = (d.per_k, d.k_heads) if inverse else (d.k_heads, d.per_k)
    lead = x.shape[:axis]
    out = np.empty_like(x)
    out.reshape(*lead, src[1], src[0], rows, -1)[...] = x.reshape(*lead, *src, rows, -1).swapaxes(axis, axis + 1)
    return out


def _reorder(hf_name: str, data: np.ndarray, d: LinearDims, inverse: bool) -> np.ndarray:
    if hf_name.endswith((".in_proj_qkv.weight", _CONV)):  # q and k rows stay, the v rows move
        qk = 2 * d.key_dim
        out = np.empty_like(data)
        out[:qk] = data[:qk]
        out[qk:] = _heads_moved(data[qk:], d, d.head_dim, inverse)
        return out
    if hf_name.endswith(".in_proj_z.weight"):
        return _heads_moved(data, d, d.head_dim, inverse)
    if hf_name.endswith(".out_proj.weight"):  # its columns are the value heads
        return _heads_moved(data, d, d.head_dim, inverse, axis=1)
    return _heads_moved(data, d, 1, inverse)  # in_proj_a / in_proj_b rows, A_log, dt_bias: one value per head


@dataclass(frozen=True)
class Qwen35Spec(ArchSpec):
    # a multimodal config's own tie_word_embeddings where its text_config says otherwise (Qwen3.5's
    # small checkpoints tie at the top level only, and save no lm_head): None, the text config's
    tied: bool | None = None

    def for_config(self, cfg: dict[str, Any]) -> ArchSpec:
        text = cfg.get("text_config")
        if isinstance(text, dict) and "tie_word_embeddings" in cfg \
                and bool(cfg["tie_word_embeddings"]) != bool(text.get("tie_word_embeddings", False)):
            return replace(self, tied=bool(cfg["tie_word_embeddings"]))
        return self

    def _tied(self, c: TextConfig) -> bool:
        return c.tie_word_embeddings if self.tied is None else self.tied

    def check_config(self, cfg: dict[str, Any]) -> None:
        super().check_config(cfg)
        c = TextConfig.from_hf(cfg)
        raw = c.raw
        layer_types(c)  # a wrong pattern, before anything is written
        d = linear_dims(c)
        if int(raw["linear_value_head_dim"]) != d.head_dim:
            raise InputError(f"Qwen3.5 linear_value_head_dim {raw['linear_value_head_dim']} differs from "
                             f"linear_key_head_dim {d.head_dim}; llama.cpp's qwen35 sizes both by the key head dim",
                             hint="this checkpoint cannot run in llama.cpp as is")
        if d.v_heads % d.k_heads:
            raise InputError(f"Qwen3.5 linear_num_value_heads {d.v_heads} is not a multiple of "
                             f"linear_num_key_heads {d.k_heads}", hint="pass the model's own config.json")
        if raw.get("attention_bias"):
            raise InputError("Qwen3.5 config sets attention_bias, which llama.cpp's qwen35 has no tensors for",
                             hint="this checkpoint cannot run in llama.cpp as is")
        if raw.get("hidden_act", "silu") != "silu":
            raise InputError(f"Qwen3.5 hidden_act {raw['hidden_act']!r}: llama.cpp's qwen35 runs silu only",
                             hint="this checkpoint cannot run in llama.cpp as is")

    def write_hparams(self, w: gguf.GGUFWriter, c: TextConfig) -> None:
        import gguf

        super().write_hparams(w, c)
        d = linear_dims(c)
        types = layer_types(c)
        w.add_rope_dimension_sections(mrope_sections(c))
        w.add_ssm_conv_kernel(d.kernel)
        w.add_ssm_state_size(d.head_dim)
        w.add_ssm_group_count(d.k_heads)
        w.add_ssm_time_step_rank(d.v_heads)
        w.add_ssm_inner_size(d.value_dim)
        # gguf-py 0.19 predates the key (and add_recurrent_layers); llama.cpp reads this name
        key = getattr(gguf.Keys.Attention, "RECURRENT_LAYERS", "{arch}.attention.recurrent_layers")
        w.add_array(key.format(arch=w.arch), [t == LINEAR for t in types])
        if (interval := full_attention_interval(types)) is not None:
            w.add_full_attention_interval(interval)

    def rope_dims(self, c: TextConfig) -> int:
        return int(c.head_dim * float(c.rope.get("partial_rotary_factor", c.raw.get("partial_rotary_factor", 0.25))))

    # -- names, shapes, types ---------------------------------------------------------------
    def gguf_name(self, tmap: gguf.TensorNameMap, hf_name: str) -> str | None:
        name = self.text_name(hf_name)
        if name.endswith(".linear_attn.dt_bias"):  # gguf-py's table has Qwen3-Next's dt_proj only
            return f"blk.{int(name.split('.')[2])}.ssm_dt.bias"
        return super().gguf_name(tmap, hf_name)

    def gguf_shape(self, hf_name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
        if hf_name.endswith(_CONV) and len(shape) == 3 and shape[1] == 1:
            return (shape[0], shape[2])
        return shape

    def hf_shape(self, hf_name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
        if hf_name.endswith(_CONV) and len(shape) == 2:
            return (shape[0], 1, shape[1])
        return shape

    def keeps_f32(self, gguf_name: str) -> bool:
        return gguf_name.endswith("ssm_conv1d.weight")

    def skip(self, hf_name: str, c: TextConfig) -> bool:
        if self._tied(c) and self.text_name(hf_name) == "lm_head.weight":
            return True
        return hf_name.startswith(_SKIPPED_PREFIXES) or super().skip(hf_name, c)

    # -- values: llama.cpp's layout <-> transformers' ----------------------------------------------
    def _shifted(self, hf_name: str) -> bool:
        return hf_name.endswith("norm.weight") and not hf_name.endswith(_GATED_NORM)

    def _reordered(self, hf_name: str, c: TextConfig) -> bool:
        return hf_name.endswith(_BY_VALUE_HEAD) and linear_dims(c).per_k > 1

    def transforms(self, hf_name: str, c: TextConfig) -> bool:
        return self._shifted(hf_name) or hf_name.endswith(_A_LOG) or self._reordered(hf_name, c)

    def transform(self, hf_name: str, data: np.ndarray, c: TextConfig) -> np.ndarray:
        if self._shifted(hf_name):
            return data + np.float32(1.0)
        if hf_name.endswith(_A_LOG):
            data = -np.exp(data.astype(np.float32))
        if self._reordered(hf_name, c):
            data = _reorder(hf_name, data, linear_dims(c), inverse=False)
        return data

    def untransform(self, hf_name: str, data: np.ndarray, c: TextConfig) -> np.ndarray:
        if self._shifted(hf_name):
            return data - np.float32(1.0)
        if self._reordered(hf_name, c):
            data = _reorder(hf_name, data, linear_dims(c), inverse=True)
        if hf_name.endswith(_A_LOG):
            data = np.log(-data.astype(np.float32))
        return data

    def untransform_rowwise(self, hf_name: str) -> bool:
        # rows move between value heads (out_proj's columns move within each row: rowwise)
        return not hf_name.endswith(_BY_VALUE_HEAD) or hf_name.endswith(".out_proj.weight")

    # -- the Hugging Face layout (the profiler's tensor list) ---------------------------------
    def hf_tensors(self, c: TextConfig) -> Iterator[tuple[str, tuple[int, ...]]]:
        h, hd = c.hidden_size, c.head_dim
        d = linear_dims(c)
        yield self.hf_name("model.embed_tokens.weight"), (c.vocab_size, h)
        for i, kind in enumerate(layer_types(c)):
            p = self.hf_name(f"model.layers.{i}.")
            yield p + "input_layernorm.weight", (h,)
            yield p + "post_attention_layernorm.weight", (h,)
            if kind == FULL:
                yield p + "self_attn.q_proj.weight", (2 * c.num_heads * hd, h)  # query and gate, per head
                yield p + "self_attn.k_proj.weight", (c.num_kv_heads * hd, h)
                yield p + "self_attn.v_proj.weight", (c.num_kv_heads * hd, h)
                yield p + "self_attn.o_proj.weight", (h, c.num_heads * hd)
                yield p + "self_attn.q_norm.weight", (hd,)
                yield p + "self_attn.k_norm.weight", (hd,)
            else:
                la = p + "linear_attn."
                yield la + "in_proj_qkv.weight", (d.conv_dim, h)
                yield la + "in_proj_z.weight", (d.value_dim, h)
                yield la + "in_proj_b.weight", (d.v_heads, h)
                yield la + "in_proj_a.weight", (d.v_heads, h)
                yield la + "conv1d.weight", (d.conv_dim, 1, d.kernel)
                yield la + "dt_bias", (d.v_heads,)
                yield la + "A_log", (d.v_heads,)
                yield la + "norm.weight", (d.head_dim,)
                yield la + "out_proj.weight", (h, d.value_dim)
            yield from self.hf_ffn_tensors(p, c)
        yield self.hf_name("model.norm.weight"), (h,)
        if not self._tied(c):
            yield "lm_head.weight", (c.vocab_size, h)

    def recurrent_layers(self, c: TextConfig) -> int:
        """Delta-net layers: a conv state and a head_dim x head_dim state per value head per sequence."""
        return sum(1 for t in layer_types(c) if t == LINEAR)

    def recurrent_state(self, c: TextConfig) -> tuple[int, int]:
        """llama.cpp's n_embd_r: the conv history, (K - 1) x the conv channels; n_embd_s: the
        delta-net state, head_dim x head_dim per value head."""
        d = linear_dims(c)
        return (d.kernel - 1) * d.conv_dim, d.head_dim * d.value_dim


SPEC = Qwen35Spec(
    name="qwen35",
    hf_architectures=("Qwen3_5ForCausalLM",),
    gguf_arch="QWEN35",
    required=("linear_num_key_heads", "linear_num_value_heads", "linear_key_head_dim", "linear_value_head_dim"),
    formats=("gguf", "gptq"),
    why_not=(("onnx", "ONNX Runtime GenAI 0.18's builder takes Qwen3_5ForConditionalGeneration only, and the CPU graph "
                      "it built for a tiny one disagreed with transformers from the first token (logits off by up "
                      "to 4.1 of 3.1): edgekit's verification would refuse it"),),
)

# Qwen3_5ForConditionalGeneration (every Qwen3.5 on the hub): the language model under
# model.language_model, a vision tower under model.visual, left out. transformers' causal-LM auto
# class builds Qwen3_5ForCausalLM from this config, whose parameters are model.* -- the reference
# finds them under model.language_model.* (the last saved_prefixes pair).
_VL = VISION_LANGUAGE_LAYOUT
VL_SPEC = replace(
    SPEC,
    name="qwen35-vl",
    hf_architectures=("Qwen3_5ForConditionalGeneration",),
    text_prefixes=_VL["text_prefixes"],
    left_out=("model.visual.", "visual."),
    saved_prefixes=(*_VL["saved_prefixes"], ("model.", "model.language_model.")),
    formats=_VL["formats"],
    why_not=_VL["why_not"],
)
