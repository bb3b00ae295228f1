"""Granite 4 (``GraniteMoeHybridForCausalLM``): Mamba-2 layers mixed with attention layers.

What differs from Llama, and how llama.cpp's ``granitehybrid`` expects it (its converter,
``conversion/granite.py`` GraniteHybridModel over ``conversion/mamba.py`` Mamba2Model, and
``src/models/granite-hybrid.cpp`` of the vendored llama.cpp):

- **The layer pattern** is ``layer_types`` (``layers_block_type`` in older configs): ``mamba``
  / ``attention`` on the hub, ``linear_attention`` / ``full_attention`` once transformers 5 has
  re-saved the config (both spellings are read here; llama.cpp's own converter only knows
  ``attention``). llama.cpp has no key of its own for it: ``head_count_kv`` is written as one
  value per layer and a layer with 0 runs as Mamba-2 (``is_recr = n_head_kv(il) == 0``).
- **The Mamba-2 mixer**: ``in_proj`` (z, xBC, dt stacked, the order llama.cpp splits in),
  ``conv1d`` (a depthwise ``[conv_dim, 1, d_conv]`` kernel written as ``[conv_dim, d_conv]``:
  the same bytes, and in float32 as ``ggml_ssm_conv`` reads it; its bias as stored),
  ``dt_bias`` as ``ssm_dt.bias``, ``ssm_a = -exp(A_log)`` (transformers keeps the log of -A),
  ``D`` as ``ssm_d``, both as ``[n_heads, 1]``, the gated norm ``[d_inner]`` as
  ``[n_groups, d_inner / n_groups]``, ``out_proj`` as ``ssm_out``. The mixer's hyper-parameters
  are ``ssm.*`` keys; llama.cpp reads the head count from ``ssm.time_step_rank``.
- **Granite's four multipliers** as Granite 3's (embedding, residual, attention scales and
  the logit divisor), all required.
- **The feed-forward**: ``shared_mlp.input_linear`` holds gate and up stacked (``[2*ff, h]``,
  gate first: transformers' ``chunk(2)`` applies the activation to the first half, llama.cpp's
  converter splits it the same way); it is written as ``ffn_gate`` + ``ffn_up`` through the
  composite-tensor writer, and ``output_linear`` as ``ffn_down``. Its width is
  ``shared_intermediate_size`` (``intermediate_size`` is the experts' width, unused by a dense
  model), so that is the ``feed_forward_length`` written.
- **Experts** (granite-4.0-h-tiny/small, ``num_local_experts`` > 0): the router
  (``router.layer``) is ``ffn_gate_inp`` (float32, as llama.cpp's converter keeps it), the
  experts' ``input_linear`` ``[E, 2*ff, h]`` is split expert by expert into ``ffn_gate_exps`` and
  ``ffn_up_exps`` ``[E, ff, h]``, ``output_linear`` is ``ffn_down_exps``; the shared MLP becomes
  the shared expert (``ffn_*_shexp``, its width ``expert_shared_feed_forward_length``) and
  ``feed_forward_length`` is the experts' ``intermediate_size``. transformers 5 renames the three
  in memory (``router.weight``, ``experts.gate_up_proj``, ``experts.down_proj``); both spellings
  are read. llama.cpp's softmax over all experts, top-k, renormalized, is transformers' softmax
  over the top-k logits.
- **All attention** (granite-4.0-micro, -1b, -350m: the same class, no Mamba layers, RoPE on)
  is llama.cpp's plain ``granite`` (one KV head count, no ``ssm.*`` keys), as its converter
  switches it; :meth:`GraniteHybridSpec.for_config` picks the architecture.
- **Positions**: Granite 4 hybrids use no RoPE (``position_embedding_type`` unset); llama.cpp
  reads ``rope.scaling.finetuned`` as the switch (true: RoPE on every attention layer).
  q/k rows are still permuted to llama.cpp's interleaved layout, as its converter does: with
  RoPE off the same permutation of q and k leaves every attention score unchanged.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekit.errors import InputError

from .base import ArchSpec, Composite, ExpertLayout, Piece, TextConfig

if TYPE_CHECKING:
    import gguf

MAMBA, ATTENTION = "mamba", "attention"
# every spelling of a layer type transformers or the hub uses -> edgekit's
_LAYER_TYPES = {"mamba": MAMBA, "linear_attention": MAMBA, "attention": ATTENTION, "full_attention": ATTENTION}
_HINT = "pass the model's complete config.json (as saved by save_pretrained)"

# HF suffixes of the Mamba-2 tensors whose GGUF view or values differ from the checkpoint's
_CONV = ".mamba.conv1d.weight"
_A_LOG, _D, _NORM = ".mamba.A_log", ".mamba.D", ".mamba.norm.weight"
_DT_BIAS = ".mamba.dt_bias"
_GATE_UP = ".shared_mlp.input_linear.weight"
_DOWN = ".shared_mlp.output_linear.weight"
# the experts (granite-4.0-h-tiny/small): transformers 5's in-memory names -> the hub's (what
# save_pretrained writes back and gguf-py's table knows); gate_up is [E, 2*ff, h], each expert's
# gate rows then its up rows, as transformers' chunk(2) reads them
_MOE_RENAMES = ((".block_sparse_moe.router.weight", ".block_sparse_moe.router.layer.weight"),
                (".block_sparse_moe.experts.gate_up_proj", ".block_sparse_moe.input_linear.weight"),
                (".block_sparse_moe.experts.down_proj", ".block_sparse_moe.output_linear.weight"))
_EXPERTS_GATE_UP = (".block_sparse_moe.input_linear.weight", ".block_sparse_moe.experts.gate_up_proj")


@dataclass(frozen=True)
class MambaConfig:
    """The Mamba-2 mixer's hyper-parameters, with transformers' defaults for absent keys."""

    n_heads: int
    n_groups: int
    d_state: int
    d_head: int
    d_conv: int
    expand: int
    conv_bias: bool
    proj_bias: bool
    d_inner: int  # expand x hidden: the SSM's channels

    @property
    def conv_dim(self) -> int:
        """Channels the convolution runs over: x, B and C."""
        return self.d_inner + 2 * self.n_groups * self.d_state

    @property
    def in_proj_rows(self) -> int:
        """z (d_inner), xBC (conv_dim) and dt (one per head), stacked."""
        return self.d_inner + self.conv_dim + self.n_heads

    @classmethod
    def from_text(cls, c: TextConfig) -> MambaConfig:
        raw = c.raw
        expand = int(raw.get("mamba_expand") or 2)
        d_inner = expand * c.hidden_size
        n_heads = int(raw.get("mamba_n_heads") or 128)
        d_head = raw.get("mamba_d_head", "auto")
        d_head = d_inner // n_heads if d_head in (None, "auto") else int(d_head)
        return cls(n_heads=n_heads, n_groups=int(raw.get("mamba_n_groups") or 1),
                   d_state=int(raw.get("mamba_d_state") or 256), d_head=d_head,
                   d_conv=int(raw.get("mamba_d_conv") or 4), expand=expand,
                   conv_bias=bool(raw.get("mamba_conv_bias", True)),
                   proj_bias=bool(raw.get("mamba_proj_bias", False)), d_inner=d_inner)


def layer_types(c: TextConfig) -> list[str]:
    """Each layer's type, ``mamba`` or ``attention``, as transformers builds the model."""
    raw = c.raw
    types = raw.get("layer_types") or raw.get("layers_block_type")
    if types is None:
        raise InputError("Granite 4 config.json has neither 'layer_types' nor 'layers_block_type'", hint=_HINT)
    unknown = sorted({str(t) for t in types} - set(_LAYER_TYPES))
    if len(types) != c.num_layers or unknown:
        raise InputError(f"Granite 4 layer_types must name {c.num_layers} layers, each 'mamba' or 'attention' "
                         f"(got {list(types)})", hint="pass the model's own config.json")
    return [_LAYER_TYPES[str(t)] for t in types]


def n_experts(c: TextConfig) -> int:
    return int(c.raw.get("num_local_experts") or 0)


def experts_used(c: TextConfig) -> int:
    return int(c.raw.get("num_experts_per_tok") or 0)


def expert_ff(c: TextConfig) -> int:
    """One expert's width (``intermediate_size``; a dense Granite 4 leaves it unused)."""
    return c.intermediate_size


def shared_ff(c: TextConfig) -> int:
    """The shared MLP's width (the whole feed-forward of a dense Granite 4)."""
    return int(c.raw.get("shared_intermediate_size") or 1024)


def _clamps_dt(limit: Any) -> bool:
    """Whether a time_step_limit changes softplus(dt) (always > 0): a lower bound above 0 or a finite upper one."""
    if limit is None:
        return False
    # transformers 5 writes infinity as {"__float__": "Infinity"} (JSON has none)
    lo, hi = (float(x["__float__"] if isinstance(x, dict) else x) for x in limit)
    return lo > 0 or math.isfinite(hi)


def uses_rope(c: TextConfig) -> bool:
    return c.raw.get("position_embedding_type") == "rope"


@dataclass(frozen=True)
class GraniteHybridSpec(ArchSpec):
    # experts in the feed-forward (granite-4.0-h-tiny/small): the shared MLP is then the shared
    # expert (ffn_*_shexp); dense (granite-4.0-h-micro): it is the feed-forward (ffn_*)
    moe: bool = False

    def for_config(self, cfg: dict[str, Any]) -> ArchSpec:
        """Experts or not; and an all-attention Granite 4 (granite-4.0-micro, -1b, -350m: the
        same class without Mamba layers) is llama.cpp's plain ``granite``, as its converter writes it."""
        hybrid = MAMBA in layer_types(TextConfig.from_hf(cfg))
        return dataclasses.replace(self, moe=bool(cfg.get("num_local_experts")),
                                   gguf_arch="GRANITE_HYBRID" if hybrid else "GRANITE")

    @property
    def hybrid(self) -> bool:
        return self.gguf_arch == "GRANITE_HYBRID"

    def check_config(self, cfg: dict[str, Any]) -> None:
        """Configs llama.cpp's granitehybrid cannot run as transformers does: refused before
        anything is written, each with the field that decides it."""
        super().check_config(cfg)
        c = TextConfig.from_hf(cfg)
        mamba = MAMBA in layer_types(c)
        m = MambaConfig.from_text(c)
        refusals = (
            (not mamba and n_experts(c) > 0, "has experts and no Mamba layers (llama.cpp's granitemoe)",
             "edgekit converts dense all-attention Granite 4 and hybrid ones with or without experts"),
            (n_experts(c) > 0 and not 0 < experts_used(c) <= n_experts(c),
             f"routes each token to {experts_used(c)} of its {n_experts(c)} experts (num_experts_per_tok)",
             "pass the model's own config.json"),
            (mamba and m.expand != 2, f"sets mamba_expand {m.expand}; llama.cpp's granitehybrid asserts d_inner = 2 x hidden",
             "this checkpoint cannot run in llama.cpp as is"),
            (mamba and m.proj_bias, "sets mamba_proj_bias, which llama.cpp's granitehybrid has no tensors for",
             "this checkpoint cannot run in llama.cpp as is"),
            (mamba and m.d_head * m.n_heads != m.d_inner, f"mamba_d_head x mamba_n_heads ({m.d_head} x {m.n_heads}) is not "
                                               f"mamba_expand x hidden_size ({m.d_inner})", _HINT),
            # transformers' gated norm (RMSNormGated) normalizes over all d_inner channels, llama.cpp's over
            # each group: with groups they are two models (every Granite 4 release has one group)
            (mamba and m.n_groups != 1, f"sets mamba_n_groups {m.n_groups}; transformers normalizes the gated SSM output over "
                              "all channels and llama.cpp per group, so the GGUF would be another model",
             "edgekit converts Granite 4 with mamba_n_groups 1 (every released checkpoint)"),
            # transformers clamps each time step to time_step_limit; llama.cpp's ssm_scan does not
            (mamba and _clamps_dt(cfg.get("time_step_limit")),
             f"sets time_step_limit {cfg.get('time_step_limit')}; llama.cpp's Mamba-2 does not clamp the time step",
             "this checkpoint cannot run in llama.cpp as is (transformers' default (0, inf) can)"),
            (str(cfg.get("hidden_act", "silu")) != "silu", f"uses hidden_act {cfg.get('hidden_act')!r}; llama.cpp's "
                                                          "granitehybrid runs SiLU only",
             "this checkpoint cannot run in llama.cpp as is"),
            (cfg.get("position_embedding_type") not in (None, "nope", "rope"),
             f"sets position_embedding_type {cfg.get('position_embedding_type')!r}", "supported: none or 'rope'"),
        )
        for refused, why, hint in refusals:
            if refused:
                raise InputError(f"this Granite 4 config {why}", hint=hint)
        if c.head_dim != c.hidden_size // c.num_heads:  # llama.cpp's attention derives it
            raise InputError(f"Granite 4 head_dim {c.head_dim} differs from hidden_size / num_attention_heads, "
                             "which llama.cpp assumes")

    def write_hparams(self, w: gguf.GGUFWriter, c: TextConfig) -> None:
        import gguf

        super().write_hparams(w, c)
        arch = w.arch
        for key in (gguf.Keys.LLM.FEED_FORWARD_LENGTH, gguf.Keys.Attention.HEAD_COUNT_KV):
            del w.kv_data[0][key.format(arch=arch)]  # replaced below (no duplicate-key warning)
        raw = c.raw
        w.add_attention_scale(float(raw["attention_multiplier"]))
        w.add_embedding_scale(float(raw["embedding_multiplier"]))
        w.add_residual_scale(float(raw["residual_multiplier"]))
        w.add_logit_scale(float(raw["logits_scaling"]))
        w.add_rope_scaling_finetuned(uses_rope(c))  # Granite's RoPE switch in llama.cpp
        if not self.hybrid:  # llama.cpp's plain granite: one KV head count, no mixer
            w.add_feed_forward_length(shared_ff(c))
            w.add_head_count_kv(c.num_kv_heads)
            return
        if n_experts(c):  # llama.cpp: n_ff is the experts' width, the shared expert's its own key
            w.add_feed_forward_length(expert_ff(c))
            w.add_expert_count(n_experts(c))
            w.add_expert_used_count(experts_used(c))
            w.add_expert_shared_feed_forward_length(shared_ff(c))
        else:
            w.add_feed_forward_length(shared_ff(c))
        w.add_head_count_kv([c.num_kv_heads if t == ATTENTION else 0 for t in layer_types(c)])
        m = MambaConfig.from_text(c)
        w.add_ssm_conv_kernel(m.d_conv)
        w.add_ssm_state_size(m.d_state)
        w.add_ssm_group_count(m.n_groups)
        w.add_ssm_inner_size(m.d_inner)
        w.add_ssm_time_step_rank(m.n_heads)  # llama.cpp's name for the SSM head count

    # -- names llama.cpp's table lacks or gives another meaning ------------------------------
    def gguf_name(self, tmap: gguf.TensorNameMap, hf_name: str) -> str | None:
        name = self.text_name(hf_name)
        if name.endswith(_DT_BIAS):  # llama.cpp's converter renames it to dt_proj.bias first
            name = name[:-len(_DT_BIAS)] + ".mamba.dt_proj.bias"
        elif name.endswith(_DOWN) and not self.moe:  # gguf-py's is the shared expert's; dense: the FFN itself
            return f"blk.{name.split('.')[2]}.ffn_down.weight"
        for memory, hub in _MOE_RENAMES:
            if name.endswith(memory):
                name = name[:-len(memory)] + hub
        return tmap.get_name(name, try_suffixes=(".weight", ".bias"))

    def checkpoint_names(self, model_name: str) -> list[str]:
        """transformers 5 renames the experts' tensors in memory; checkpoints keep the hub's names."""
        names = super().checkpoint_names(model_name)
        names += [model_name[:-len(memory)] + hub for memory, hub in _MOE_RENAMES if model_name.endswith(memory)]
        return names

    def composites(self, shapes: dict[str, tuple[int, ...]], c: TextConfig) -> list[Composite]:
        """``shared_mlp.input_linear`` ``[2*ff, h]`` -> ``ffn_gate`` (rows 0..ff) and ``ffn_up``
        (ff..2ff), the shared expert's ``ffn_gate_shexp``/``ffn_up_shexp`` beside experts; the
        experts' ``[E, 2*ff, h]`` -> ``ffn_gate_exps``/``ffn_up_exps`` ``[E, ff, h]``, expert by expert."""
        out: list[Composite] = []
        shexp = "_shexp" if n_experts(c) else ""
        for name, shape in shapes.items():
            layer = self.text_name(name).split(".")[2] if name.startswith(("model.layers.", "layers.")) else ""
            if name.endswith(_GATE_UP):
                ff, h = shape[0] // 2, shape[-1]
                if len(shape) != 2 or shape[0] != 2 * shared_ff(c):
                    raise InputError(f"{name} has shape {list(shape)} where [2 x shared_intermediate_size, hidden] is "
                                     f"{[2 * shared_ff(c), c.hidden_size]}", hint="pass the model's own config.json")
                out += [Composite(f"blk.{layer}.ffn_gate{shexp}.weight", (ff, h), (Piece(name, 0, ff),)),
                        Composite(f"blk.{layer}.ffn_up{shexp}.weight", (ff, h), (Piece(name, ff, 2 * ff),))]
            elif name.endswith(_EXPERTS_GATE_UP):
                e, ff, h = n_experts(c), expert_ff(c), c.hidden_size
                if tuple(shape) != (e, 2 * ff, h):
                    raise InputError(f"{name} has shape {list(shape)} where [num_local_experts, 2 x intermediate_size, "
                                     f"hidden] is {[e, 2 * ff, h]}", hint="pass the model's own config.json")
                out += [Composite(f"blk.{layer}.ffn_{kind}_exps.weight", (e, ff, h),
                                  tuple(Piece(name, i * 2 * ff + off, i * 2 * ff + off + ff) for i in range(e)))
                        for kind, off in (("gate", 0), ("up", ff))]
        return out

    def experts(self, c: TextConfig) -> ExpertLayout | None:
        if not n_experts(c):
            return None
        return ExpertLayout(n_experts=n_experts(c), n_active=experts_used(c), expert_ff=expert_ff(c),
                            shared_ff=shared_ff(c))

    # -- values and views that differ from the checkpoint's ------------------------------------
    def transforms(self, hf_name: str, c: TextConfig) -> bool:
        return hf_name.endswith(_A_LOG) or super().transforms(hf_name, c)

    def transform(self, hf_name: str, data: np.ndarray, c: TextConfig) -> np.ndarray:
        if hf_name.endswith(_A_LOG):
            return -np.exp(data.astype(np.float32))
        return super().transform(hf_name, data, c)

    def untransform(self, hf_name: str, data: np.ndarray, c: TextConfig) -> np.ndarray:
        if hf_name.endswith(_A_LOG):
            return np.log(-data.astype(np.float32))
        return super().untransform(hf_name, data, c)

    def untransform_rowwise(self, hf_name: str) -> bool:
        # 1-D in the checkpoint but several ggml rows in the file: read whole
        return not hf_name.endswith((_A_LOG, _D, _NORM)) and super().untransform_rowwise(hf_name)

    def gguf_shape(self, hf_name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
        if hf_name.endswith(_CONV) and len(shape) == 3 and shape[1] == 1:
            return (shape[0], shape[2])
        if hf_name.endswith((_A_LOG, _D)) and len(shape) == 1:
            return (shape[0], 1)
        if hf_name.endswith(_NORM) and len(shape) == 1:  # [n_groups, d_inner / n_groups], one group
            return (1, shape[0])
        return shape

    def hf_shape(self, hf_name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
        if hf_name.endswith(_CONV) and len(shape) == 2:
            return (shape[0], 1, shape[1])
        if hf_name.endswith((_A_LOG, _D, _NORM)) and len(shape) == 2:
            return (shape[0] * shape[1],)
        return shape

    def keeps_f32(self, gguf_name: str) -> bool:
        # what llama.cpp's converter keeps in float32 (its quantizer leaves them too): the conv
        # kernel (ggml_ssm_conv reads f32), A and D (no .weight suffix), the grouped norm; the
        # router, as for every MoE llama.cpp converts
        return gguf_name.endswith(("ssm_conv1d.weight", "ssm_a", "ssm_d", "ssm_norm.weight", "ffn_gate_inp.weight"))

    # -- the Hugging Face layout (the profiler's tensor list) ---------------------------------
    def hf_tensors(self, c: TextConfig) -> Iterator[tuple[str, tuple[int, ...]]]:
        h, q, kv, ff = c.hidden_size, c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim, shared_ff(c)
        m = MambaConfig.from_text(c)
        bias = bool(c.raw.get("attention_bias"))
        yield "model.embed_tokens.weight", (c.vocab_size, h)
        for i, kind in enumerate(layer_types(c)):
            p = f"model.layers.{i}."
            yield p + "input_layernorm.weight", (h,)
            yield p + "post_attention_layernorm.weight", (h,)
            if kind == MAMBA:
                yield p + "mamba.in_proj.weight", (m.in_proj_rows, h)
                yield p + "mamba.conv1d.weight", (m.conv_dim, 1, m.d_conv)
                if m.conv_bias:
                    yield p + "mamba.conv1d.bias", (m.conv_dim,)
                yield p + "mamba.dt_bias", (m.n_heads,)
                yield p + "mamba.A_log", (m.n_heads,)
                yield p + "mamba.D", (m.n_heads,)
                yield p + "mamba.norm.weight", (m.d_inner,)
                yield p + "mamba.out_proj.weight", (h, m.d_inner)
            else:
                for name, rows in (("q", q), ("k", kv), ("v", kv), ("o", h)):
                    yield p + f"self_attn.{name}_proj.weight", (rows, q if name == "o" else h)
                    if bias:
                        yield p + f"self_attn.{name}_proj.bias", (rows,)
            if n_experts(c):  # transformers 5's in-memory names (checkpoint_names gives the hub's)
                e, eff = n_experts(c), expert_ff(c)
                yield p + "block_sparse_moe.router.weight", (e, h)
                yield p + "block_sparse_moe.experts.gate_up_proj", (e, 2 * eff, h)
                yield p + "block_sparse_moe.experts.down_proj", (e, h, eff)
            yield p + "shared_mlp.input_linear.weight", (2 * ff, h)
            yield p + "shared_mlp.output_linear.weight", (h, ff)
        yield "model.norm.weight", (h,)
        if not c.tie_word_embeddings:
            yield "lm_head.weight", (c.vocab_size, h)

    def recurrent_layers(self, c: TextConfig) -> int:
        """Mamba-2 layers: a conv and an SSM state per sequence instead of a KV cache per token."""
        return sum(1 for t in layer_types(c) if t == MAMBA)

    def recurrent_state(self, c: TextConfig) -> tuple[int, int]:
        """Floats one Mamba-2 layer keeps per sequence, as llama.cpp sizes them (``n_embd_r``,
        ``n_embd_s``): the conv window's last d_conv - 1 inputs of x, B and C; the SSM state."""
        if not self.recurrent_layers(c):
            return 0, 0
        m = MambaConfig.from_text(c)
        return (m.d_conv - 1) * m.conv_dim, m.d_state * m.d_inner


SPEC = GraniteHybridSpec(
    name="granite4",
    hf_architectures=("GraniteMoeHybridForCausalLM",),
    gguf_arch="GRANITE_HYBRID",
    permute_qk=True,
    required=("embedding_multiplier", "residual_multiplier", "attention_multiplier", "logits_scaling"),
    formats=("gguf", "gptq"),
    why_not=(("onnx", "ONNX Runtime GenAI 0.18's builder has no Mamba-2 layers (it builds a GraniteMoeHybrid's "
                      "attention layers only, and fails on a hybrid's first Mamba layer)"),),
)
