"""What every architecture shares: a typed view of config.json and the ArchSpec hooks.

An architecture file declares an :class:`ArchSpec` (data) and overrides a hook only where
the architecture really differs from Llama. Tensor names are mapped by gguf-py's
TensorNameMap (llama.cpp's own table), so no architecture repeats name lists.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekit.errors import InputError

if TYPE_CHECKING:
    import gguf


def _rope(cfg: dict[str, Any], layer_type: str | None = None) -> dict[str, Any]:
    """Rope settings from either the transformers-5 ``rope_parameters`` or the older keys."""
    params = cfg.get("rope_parameters")
    if isinstance(params, dict):
        if layer_type and isinstance(params.get(layer_type), dict):
            return dict(params[layer_type])
        if "rope_theta" in params or "rope_type" in params:
            return dict(params)
        # per-layer-type dict without the type we asked for: take the global one
        for key in ("full_attention", "default"):
            if isinstance(params.get(key), dict):
                return dict(params[key])
    out: dict[str, Any] = dict(cfg.get("rope_scaling") or {})
    if "type" in out and "rope_type" not in out:
        out["rope_type"] = out.pop("type")
    out.setdefault("rope_theta", cfg.get("rope_theta", 10000.0))
    return out


@dataclass(frozen=True)
class TextConfig:
    """The hyper-parameters a decoder-only transformer needs, read from config.json."""

    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    max_position: int
    rms_norm_eps: float
    rope: dict[str, Any]
    tie_word_embeddings: bool
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def from_hf(cls, cfg: dict[str, Any]) -> TextConfig:
        if isinstance(cfg.get("text_config"), dict):  # multimodal wrappers keep the LM here
            cfg = {**cfg["text_config"], "architectures": cfg.get("architectures")}
        try:
            hidden = int(cfg["hidden_size"])
            heads = int(cfg["num_attention_heads"])
            return cls(
                hidden_size=hidden,
                intermediate_size=int(cfg["intermediate_size"]),
                num_layers=int(cfg["num_hidden_layers"]),
                num_heads=heads,
                num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
                head_dim=int(cfg.get("head_dim") or hidden // heads),
                vocab_size=int(cfg["vocab_size"]),
                max_position=int(cfg.get("max_position_embeddings") or 4096),
                rms_norm_eps=float(cfg.get("rms_norm_eps") or 1e-6),
                rope=_rope(cfg),
                tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
                raw=cfg,
            )
        except KeyError as e:
            raise InputError(f"config.json lacks {e.args[0]!r}", hint="pass a complete Hugging Face config") from e


# The layout of transformers' ...ForConditionalGeneration checkpoints whose language model is a
# decoder edgekit converts (Gemma 3 4B+, Mistral 3): the language model under model.language_model
# (or language_model.model in older saves), a vision tower and projector beside it, left out.
VISION_LANGUAGE_LAYOUT: dict[str, Any] = {
    "text_prefixes": (("model.language_model.", "model."), ("lm_head.", "lm_head."),
                      ("language_model.model.", "model."), ("language_model.lm_head.", "lm_head.")),
    "left_out": ("model.vision_tower.", "model.multi_modal_projector.", "vision_tower.", "multi_modal_projector."),
    "saved_prefixes": (("model.language_model.", "language_model.model."), ("lm_head.", "language_model.lm_head."),
                       ("model.vision_tower.", "vision_tower."),
                       ("model.multi_modal_projector.", "multi_modal_projector.")),
    "formats": ("gguf",),
    "why_not": (("onnx", "the language model of a multimodal checkpoint is converted to GGUF only"),
                ("gptq", "the language model of a multimodal checkpoint is converted to GGUF only")),
}


@dataclass(frozen=True)
class Piece:
    """Rows ``[lo, hi)`` of one checkpoint tensor. A row is the last axis's values (ggml's ne0),
    the leading axes flattened: rows of an ``[E, 2*ff, hidden]`` tensor run ``0 .. E*2*ff``."""

    hf_name: str
    lo: int
    hi: int


@dataclass(frozen=True)
class Composite:
    """A GGUF tensor made of parts of checkpoint tensors, in order: Mixtral's or Qwen3-MoE's
    per-expert matrices stacked into ``ffn_*_exps``, a fused ``[E, 2*ff, h]`` gate/up split into
    ``ffn_gate_exps`` and ``ffn_up_exps``, Granite 4's ``input_linear`` split into gate and up.
    The writer streams the pieces' rows one after the other; verification maps them back."""

    gguf_name: str
    shape: tuple[int, ...]  # numpy order (slowest axis first), as GGUF's tensor reversed
    pieces: tuple[Piece, ...]


@dataclass(frozen=True)
class ExpertLayout:
    """A mixture-of-experts feed-forward, per MoE layer: what memory holds (all experts) and what
    one decoded token reads (the router's top-k of them plus the shared expert)."""

    n_experts: int
    n_active: int  # experts each token is routed to (num_experts_per_tok)
    expert_ff: int  # one expert's hidden width (moe_intermediate_size)
    shared_ff: int = 0  # the always-on shared expert's width (0: none)
    moe_layers: tuple[int, ...] = ()  # layers with experts (empty: every layer)


@dataclass(frozen=True)
class KvLayer:
    """One layer's KV cache as llama.cpp allocates it, per cell (cached token): the K and V row
    widths (``n_embd_k_gqa(il)``, ``n_embd_v_gqa(il)``: head size x KV heads) and the window of a
    sliding-window layer (None: it keeps the whole context)."""

    k: int
    v: int
    window: int | None = None


@dataclass(frozen=True)
class ArchSpec:
    """One supported architecture: data first, hooks for what differs."""

    name: str  # edgekit's name, shown to users
    hf_architectures: tuple[str, ...]  # config.json "architectures" values
    gguf_arch: str  # gguf.MODEL_ARCH member name
    # llama.cpp's LLAMA arch applies rope to interleaved pairs (rope type NORM), while HF
    # rotates halves: q/k rows must be permuted. NEOX-rope archs (qwen2/3, gemma3) need none.
    permute_qk: bool = False
    # Gemma's RMSNorm multiplies by (1 + w); llama.cpp expects the plain scale.
    norm_shift: float = 0.0
    # HF tensors that carry no weights llama.cpp wants (rotary caches).
    skip_suffixes: tuple[str, ...] = ("rotary_emb.inv_freq",)
    # Tokenizer quirks the GGUF needs stated (llama.cpp defaults differ per model family).
    add_space_prefix: bool | None = None
    # -- which formats convert it -----------------------------------------------------------
    # GGUF always (this table is llama.cpp's mapping); ONNX only for the classes ONNX Runtime
    # GenAI's builder dispatches on (tests/test_archs.py reads the installed builder's source);
    # GPTQ where llmcompressor's sequential pipeline runs the decoder layers.
    formats: tuple[str, ...] = ("gguf", "onnx", "gptq")
    why_not: tuple[tuple[str, str], ...] = ()  # (format, the reason a user reads) for formats left out
    # config.json fields the family needs beyond TextConfig's (a missing one is named in the error)
    required: tuple[str, ...] = ()
    # -- the Hugging Face layout (the profiler's tensor list is derived from it) ---------------
    qkv_bias: bool = False
    qk_norm: str | None = None  # "head": RMSNorm per head (Qwen3, Gemma); "full": over the projection (OLMo 2)
    layer_norms: tuple[str, ...] = ("input_layernorm", "post_attention_layernorm")
    fused_qkv: bool = False  # one qkv_proj (Phi-3)
    fused_gate_up: bool = False  # one gate_up_proj (Phi-3)
    # ONNX Runtime GenAI's builder names each projection after Llama's modules ("attn.o_proj",
    # "mlp.gate_proj"): (builder prefix, this family's HF module) where the family's own differs,
    # so verification reads the right matrix back (LFM2: ("attn.o_proj", "self_attn.out_proj")).
    onnx_modules: tuple[tuple[str, str], ...] = ()
    # -- multimodal checkpoints: only the language model is converted --------------------------
    # (checkpoint prefix, text-only prefix) pairs, the layout transformers holds in memory first
    # (then the hub's saved layouts): ("model.language_model.", "model.") ...
    text_prefixes: tuple[tuple[str, str], ...] = ()
    left_out: tuple[str, ...] = ()  # prefixes of the towers not converted (vision encoder, projector)
    # (prefix transformers holds in memory, prefix a saved checkpoint may use instead)
    saved_prefixes: tuple[tuple[str, str], ...] = ()

    @property
    def model_arch(self) -> gguf.MODEL_ARCH:
        import gguf

        return gguf.MODEL_ARCH[self.gguf_arch]

    def supports(self, fmt: str) -> bool:
        return fmt in self.formats

    def why_not_for(self, fmt: str) -> str:
        return dict(self.why_not).get(fmt, f"edgekit does not convert {self.name} to {fmt}")

    def for_config(self, cfg: dict[str, Any]) -> ArchSpec:
        """The spec that converts this config: itself, or (a class whose language model varies,
        as Mistral3ForConditionalGeneration's mistral or ministral3) the one for its language model."""
        return self

    def check_config(self, cfg: dict[str, Any]) -> None:
        """A config naming this family but lacking a field it needs: one error naming the field."""
        nested = cfg.get("text_config")
        text: dict[str, Any] = nested if isinstance(nested, dict) else cfg
        for key in self.required:
            if key not in text:
                raise InputError(f"config.json lacks {key!r}, which {self.name} needs",
                                 hint="pass the model's complete config.json (as saved by save_pretrained)")

    def hf_tensors(self, c: TextConfig) -> Iterator[tuple[str, tuple[int, ...]]]:
        """The checkpoint's tensors (HF names, numpy shapes) for this config, from the layout
        fields above: what the profiler maps through :meth:`gguf_name` (checked against
        transformers' own models in tests/test_archs.py)."""
        h, q, kv = c.hidden_size, c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
        yield self.hf_name("model.embed_tokens.weight"), (c.vocab_size, h)
        for i in range(c.num_layers):
            p = self.hf_name(f"model.layers.{i}.")
            for norm in self.layer_norms:
                yield p + norm + ".weight", (h,)
            if self.fused_qkv:
                yield p + "self_attn.qkv_proj.weight", (q + 2 * kv, h)
            else:
                for name, rows in (("q", q), ("k", kv), ("v", kv)):
                    yield p + f"self_attn.{name}_proj.weight", (rows, h)
                    if self.qkv_bias:
                        yield p + f"self_attn.{name}_proj.bias", (rows,)
            yield p + "self_attn.o_proj.weight", (h, q)
            if self.qk_norm is not None:
                full = self.qk_norm == "full"
                yield p + "self_attn.q_norm.weight", (q if full else c.head_dim,)
                yield p + "self_attn.k_norm.weight", (kv if full else c.head_dim,)
            yield from self.hf_ffn_tensors(p, c)
        yield self.hf_name("model.norm.weight"), (h,)
        if not c.tie_word_embeddings:
            yield "lm_head.weight", (c.vocab_size, h)

    def hf_ffn_tensors(self, prefix: str, c: TextConfig) -> Iterator[tuple[str, tuple[int, ...]]]:
        h, ff = c.hidden_size, c.intermediate_size
        if self.fused_gate_up:
            yield prefix + "mlp.gate_up_proj.weight", (2 * ff, h)
        else:
            yield prefix + "mlp.gate_proj.weight", (ff, h)
            yield prefix + "mlp.up_proj.weight", (ff, h)
        yield prefix + "mlp.down_proj.weight", (h, ff)

    def tensor_map(self, c: TextConfig) -> gguf.TensorNameMap:
        import gguf

        return gguf.get_tensor_name_map(self.model_arch, c.num_layers)

    def hf_name(self, text_name: str) -> str:
        """A language-model tensor's name as transformers holds it (``model.x`` in a text-only model)."""
        for ck, tx in self.text_prefixes:
            if text_name.startswith(tx):
                return ck + text_name[len(tx):]
        return text_name

    def text_name(self, hf_name: str) -> str:
        """A checkpoint tensor's name in the text-only layout (multimodal checkpoints' language model)."""
        for ck, tx in self.text_prefixes:
            if hf_name.startswith(ck):
                return tx + hf_name[len(ck):]
        return hf_name

    def checkpoint_names(self, model_name: str) -> list[str]:
        """The names a checkpoint may store a model parameter under (its in-memory name first)."""
        return [model_name] + [saved + model_name[len(mem):] for mem, saved in self.saved_prefixes
                               if model_name.startswith(mem)]

    def gguf_name(self, tmap: gguf.TensorNameMap, hf_name: str) -> str | None:
        """llama.cpp's name for an HF tensor (gguf-py's table), None where it has none."""
        return tmap.get_name(self.text_name(hf_name), try_suffixes=(".weight", ".bias"))

    def composites(self, shapes: dict[str, tuple[int, ...]], c: TextConfig) -> list[Composite]:
        """GGUF tensors assembled from parts of checkpoint tensors (``shapes``: every source
        tensor not skipped, HF name -> shape). A checkpoint tensor any piece names is written
        only through its composites, never one-to-one. None for dense Llama-like families."""
        return []

    def checkpoint_parts(self, model_name: str, has: Callable[[str], bool]) -> tuple[str, ...]:
        """The checkpoint tensors whose rows (last axis, leading axes flattened), one after the
        other, make a model parameter the checkpoint does not store whole: transformers 5 holds
        experts fused (``mlp.experts.gate_up_proj`` ``[E, 2*ff, h]``) where a hub checkpoint has
        one matrix per expert. ``has``: whether the checkpoint holds a name. () where it is stored."""
        return ()

    def experts(self, c: TextConfig) -> ExpertLayout | None:
        """The mixture-of-experts layout (None: a dense feed-forward). The profiler prices
        decoding from the active experts' bytes and memory from all of them."""
        return None

    def recurrent_layers(self, c: TextConfig) -> int:
        """Layers that keep a recurrent or convolution state per sequence instead of a KV cache
        per token (LFM2's short convolutions, Mamba-2, gated delta-net)."""
        return 0

    def recurrent_state(self, c: TextConfig) -> tuple[int, int]:
        """Floats each recurrent layer keeps per sequence, as llama.cpp allocates them (f32, one row
        per sequence in llama_memory_recurrent): (``n_embd_r``, the rolling convolution or
        token-shift history; ``n_embd_s``, the recurrent state). The profiler's memory model."""
        return 0, 0

    def swa_layers(self, c: TextConfig) -> tuple[int | None, int]:
        """(window, number of layers llama.cpp runs with it): its KV cache keeps only the window."""
        return None, 0

    def kv_layers(self, c: TextConfig) -> tuple[KvLayer, ...]:
        """The KV cache each layer holds in llama.cpp, one entry per layer that has one (a
        recurrent or convolution layer, or one reusing another layer's KV, has none): the
        profiler's memory model. Default: every non-recurrent layer alike, ``num_kv_heads x
        head_dim`` for K and V, the first :meth:`swa_layers` of them with the window (only the
        count matters to the sizes)."""
        window, local = self.swa_layers(c)
        kv = c.num_kv_heads * c.head_dim
        n = c.num_layers - self.recurrent_layers(c)
        return tuple(KvLayer(kv, kv, window if i < local else None) for i in range(n))

    # -- hooks ------------------------------------------------------------------------
    def write_hparams(self, w: gguf.GGUFWriter, c: TextConfig) -> None:
        """Hyper-parameters common to llama-like decoders; extend in an arch file."""
        w.add_context_length(c.max_position)
        w.add_embedding_length(c.hidden_size)
        w.add_block_count(c.num_layers)
        w.add_feed_forward_length(c.intermediate_size)
        w.add_head_count(c.num_heads)
        w.add_head_count_kv(c.num_kv_heads)
        w.add_layer_norm_rms_eps(c.rms_norm_eps)
        w.add_rope_freq_base(float(c.rope.get("rope_theta", 10000.0)))
        w.add_rope_dimension_count(self.rope_dims(c))
        w.add_key_length(c.head_dim)
        w.add_value_length(c.head_dim)
        w.add_vocab_size(c.vocab_size)
        self.write_rope_scaling(w, c)

    def rope_dims(self, c: TextConfig) -> int:
        """Dimensions of each head that RoPE rotates (all of them unless the family rotates a part)."""
        return c.head_dim

    def write_rope_scaling(self, w: gguf.GGUFWriter, c: TextConfig) -> None:
        import gguf

        kind = c.rope.get("rope_type", "default")
        if kind in (None, "default"):
            return
        factor = float(c.rope.get("factor", 1.0))
        if kind == "linear":
            w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            w.add_rope_scaling_factor(factor)
        elif kind == "yarn":
            w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
            w.add_rope_scaling_factor(factor)
            w.add_rope_scaling_orig_ctx_len(int(c.rope.get("original_max_position_embeddings", c.max_position)))
        elif kind == "llama3":
            pass  # expressed as the rope_freqs tensor, see extra_tensors
        else:
            raise InputError(f"rope scaling type {kind!r} is not supported",
                             hint="supported: default, linear, yarn, llama3")

    def extra_tensors(self, c: TextConfig) -> dict[str, np.ndarray]:
        """Tensors llama.cpp needs that HF does not store (llama3 rope frequency factors)."""
        if c.rope.get("rope_type") != "llama3":
            return {}
        # Same formula as transformers' _compute_llama3_parameters, as per-dimension divisors.
        base = float(c.rope.get("rope_theta", 10000.0))
        factor = float(c.rope.get("factor", 8.0))
        low = float(c.rope.get("low_freq_factor", 1.0))
        high = float(c.rope.get("high_freq_factor", 4.0))
        old_ctx = float(c.rope.get("original_max_position_embeddings", 8192))
        freqs = 1.0 / (base ** (np.arange(0, c.head_dim, 2, dtype=np.float32) / c.head_dim))
        factors = []
        for f in freqs:
            wavelen = 2 * np.pi / f
            if wavelen < old_ctx / high:
                factors.append(1.0)
            elif wavelen > old_ctx / low:
                factors.append(factor)
            else:
                smooth = (old_ctx / wavelen - low) / (high - low)
                factors.append(1.0 / ((1 - smooth) / factor + smooth))
        return {"rope_freqs.weight": np.asarray(factors, dtype=np.float32)}

    def transforms(self, hf_name: str, c: TextConfig) -> bool:
        """Whether :meth:`transform` changes this tensor. The writer streams every other tensor
        in blocks straight from the file, so an architecture overriding ``transform`` must
        override this too (until it does, every tensor of it is read whole and transformed)."""
        if type(self).transform is not ArchSpec.transform and type(self).transforms is ArchSpec.transforms:
            return True
        return ((self.permute_qk and hf_name.endswith(_PERMUTED_QK))
                or (bool(self.norm_shift) and hf_name.endswith("norm.weight")))

    def transform(self, hf_name: str, data: np.ndarray, c: TextConfig) -> np.ndarray:
        """Per-tensor fix-ups between HF's layout and llama.cpp's (:meth:`transforms` says which)."""
        if self.permute_qk:
            if hf_name.endswith("q_proj.weight") or hf_name.endswith("q_proj.bias"):
                data = permute_rope(data, c.num_heads)
            elif hf_name.endswith("k_proj.weight") or hf_name.endswith("k_proj.bias"):
                data = permute_rope(data, c.num_kv_heads)
        if self.norm_shift and hf_name.endswith("norm.weight"):
            data = data + np.float32(self.norm_shift)
        return data

    def untransform(self, hf_name: str, data: np.ndarray, c: TextConfig) -> np.ndarray:
        """The inverse of :meth:`transform`: an artifact's tensor back in HF's layout (for verification)."""
        if self.norm_shift and hf_name.endswith("norm.weight"):
            data = data - np.float32(self.norm_shift)
        if self.permute_qk:
            if hf_name.endswith("q_proj.weight") or hf_name.endswith("q_proj.bias"):
                data = unpermute_rope(data, c.num_heads)
            elif hf_name.endswith("k_proj.weight") or hf_name.endswith("k_proj.bias"):
                data = unpermute_rope(data, c.num_kv_heads)
        return data

    def untransform_rowwise(self, hf_name: str) -> bool:
        """Whether :meth:`untransform` maps each row to itself (it can then stream a block of rows at a time)."""
        return not (self.permute_qk and any(hf_name.endswith(f"{p}_proj.{k}") for p in "qk" for k in ("weight", "bias")))

    def gguf_shape(self, hf_name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The tensor's shape in the GGUF (numpy order) where llama.cpp wants another view of the
        same bytes (LFM2's depthwise conv kernel ``[hidden, 1, L]`` as ``[hidden, L]``)."""
        return shape

    def hf_shape(self, hf_name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The inverse of :meth:`gguf_shape`: a GGUF tensor's shape in the checkpoint (verification)."""
        return shape

    def keeps_f32(self, gguf_name: str) -> bool:
        """Matrices llama.cpp's kernels read in float32 only (``ggml_ssm_conv``'s kernel), kept so
        in every float GGUF (its quantizer leaves them alone too). 1-D tensors always are."""
        return False

    def skip(self, hf_name: str, c: TextConfig) -> bool:
        if any(hf_name.endswith(s) for s in self.skip_suffixes) or hf_name.startswith(self.left_out or ("\0",)):
            return True
        # A tied lm_head duplicates the embedding; llama.cpp reuses token_embd when output is absent.
        return c.tie_word_embeddings and self.text_name(hf_name) == "lm_head.weight"


# the tensors permute_qk reorders (q/k projections, weights and biases)
_PERMUTED_QK = ("q_proj.weight", "q_proj.bias", "k_proj.weight", "k_proj.bias")


def permute_rope(w: np.ndarray, n_head: int) -> np.ndarray:
    """Reorder each head's rows from HF's [first half | second half] to interleaved pairs."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_rope(w: np.ndarray, n_head: int) -> np.ndarray:
    """The inverse of :func:`permute_rope`: interleaved pairs back to [first half | second half]."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
