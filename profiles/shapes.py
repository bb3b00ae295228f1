"""Tensor shapes from config.json, and what each quant type makes of them.

Sizes come from the real tensor list of the architecture (what the GGUF converter writes)
and ggml's block sizes (``gguf.GGML_QUANT_SIZES``), not from a bytes-per-parameter guess.
The per-tensor type of each llama.cpp quant type is llama.cpp's own choice, ported in
:mod:`.llama_types` (every mix, the i-quants and the fallbacks); in short:

* ``output.weight`` (or ``token_embd.weight`` when the embeddings are tied and no output
  tensor exists) becomes Q6_K unless the type is Q8_0 (or its rows do not split into blocks: Q8_0);
* ``attn_v.weight``: Q2_K -> Q4_K with GQA >= 4 else Q3_K; Q3_K_M -> Q5_K for the first two
  layers, then Q4_K; Q3_K_L -> Q5_K; Q4_K_M/Q5_K_M -> Q6_K on the "more bits" layers
  (first 1/8, last 1/8, and every third in between); Q4_K_S -> Q5_K for the first 4 layers;
* ``ffn_down``: Q2_K -> Q3_K; Q3_K_M -> Q5_K for the first 1/16 of layers, else Q4_K;
  Q3_K_L -> Q5_K; Q4_K_M/Q5_K_M -> Q6_K on the "more bits" layers; Q4_K_S -> Q5_K on the
  first 1/8;
* ``attn_output``: Q2_K -> Q3_K, Q3_K_M -> Q4_K, Q3_K_L -> Q5_K;
* 1-D tensors and norms stay F32; a type whose block does not divide the row length falls
  back (Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0, Q2_K/Q3_K -> Q4_0, then F16).

Checked tensor by tensor against llama_model_quantize output in tests/test_profiles.py (and, for
the mixture-of-experts rules, tests/test_profiles_moe.py).

Mixtures of experts: memory holds every expert, a decoded token reads only the router's top-k of
each ``*_exps`` tensor (``ne[2]`` = experts) plus everything else (:meth:`ModelShapes.read_fraction`).
Hybrid families: only attention layers keep a KV cache; recurrent and convolution layers keep a
fixed state per sequence instead (:func:`recurrent_state_bytes`). The KV cache is summed layer by
layer as llama.cpp allocates it (:meth:`ArchSpec.kv_layers`: Gemma 4's full and sliding layers of
different widths, its shared-KV layers without a cache), checked in tests/test_profiles_hybrid.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgekit.converters.gguf.quants import FLOAT_QUANTS, quant

from .llama_types import choose_types
from .schema import Backend, OnnxPrecision

if TYPE_CHECKING:
    from edgekit.converters.gguf.archs import ArchSpec, ExpertLayout, TextConfig
    from edgekit.converters.gguf.archs.base import KvLayer


@dataclass(frozen=True)
class TensorShape:
    name: str  # GGUF name: blk.0.attn_q.weight
    ne: tuple[int, ...]  # ggml order: ne[0] is the row length (input features)
    layer: int = -1  # block index, -1 outside the blocks

    @property
    def numel(self) -> int:
        return math.prod(self.ne)

    @property
    def is_matrix(self) -> bool:
        return len(self.ne) >= 2 and not self.name.endswith("_norm.weight")


@dataclass(frozen=True)
class ModelShapes:
    arch: str
    config: TextConfig
    tensors: tuple[TensorShape, ...]
    sliding_window: int | None = None  # tokens of KV kept on the local layers (Gemma 2/3)
    local_layers: int = 0
    experts: ExpertLayout | None = None  # a mixture-of-experts feed-forward (None: dense)
    recurrent_layers: int = 0  # layers with a per-sequence state instead of a KV cache
    # floats one recurrent layer keeps per sequence (llama.cpp's n_embd_r + n_embd_s, f32)
    recurrent_state_floats: int = 0
    f32_tensors: frozenset[str] = frozenset()  # matrices written and kept in float32 (ArchSpec.keeps_f32)
    # the float type the converter writes as the quantizer's input (what tensors llama.cpp does not
    # quantize, such as a router, keep): the source's dtype (converters/gguf/convert.py _base_type)
    base_type: str = "F16"
    # each cached layer's K/V widths and window, as llama.cpp holds them (ArchSpec.kv_layers);
    # empty: derived from the config and the fields above (every attention layer alike)
    kv_layers: tuple[KvLayer, ...] = ()

    @property
    def params(self) -> int:
        return sum(t.numel for t in self.tensors)

    @property
    def has_output(self) -> bool:
        return any(t.name == "output.weight" for t in self.tensors)

    @property
    def attention_layers(self) -> int:
        """Layers that keep a KV cache (all but the recurrent/convolution ones)."""
        return self.config.num_layers - self.recurrent_layers

    def is_lookup(self, name: str) -> bool:
        """A table a token reads one row of (``ggml_get_rows``), not a matrix it multiplies by: a
        separate embedding (a tied one is the LM head too) and Gemma 4's per-layer embeddings."""
        return name in LOOKUP_TABLES or (name == "token_embd.weight" and self.has_output)

    def read_fraction(self, t: TensorShape) -> float:
        """The share of a tensor one decoded token reads: an expert tensor (``ffn_*_exps``,
        ``ne[2]`` = experts) is read for the router's top-k experts only; everything else whole."""
        e = self.experts
        if e is None or len(t.ne) != 3 or "_exps" not in t.name or t.ne[2] != e.n_experts:
            return 1.0
        return e.n_active / e.n_experts

    def matmul_params(self) -> int:
        """Parameters multiplied per generated token (everything but the embedding lookup; of
        each expert tensor only the active experts)."""
        return round(sum(t.numel * self.read_fraction(t) for t in self.tensors if not self.is_lookup(t.name)))

    def decode_matrices(self) -> list[TensorShape]:
        """The weight matrices a generated token multiplies by: all but a separate embedding
        (a tied one is the LM head too)."""
        return [t for t in self.tensors if t.is_matrix and not self.is_lookup(t.name)]


def model_shapes(config: dict[str, Any]) -> ModelShapes:
    """The GGUF tensor list the converter writes for this config (names as llama.cpp expects).

    Derived from the architecture's spec, never listed here: its Hugging Face layout
    (:meth:`ArchSpec.hf_tensors`) mapped through the same llama.cpp names, skips and
    synthesised tensors (RoPE factors) as the converter's tensor plan."""
    from edgekit.converters.gguf.archs import TextConfig, spec_for  # imports numpy

    spec = spec_for(config)  # raises UnsupportedArchitectureError with the supported list
    c = TextConfig.from_hf(config)
    t: list[TensorShape] = []
    for _, name, shape in _gguf_tensors(spec, c):
        layer = int(name.split(".")[1]) if name.startswith("blk.") else -1
        t.append(TensorShape(name, tuple(reversed(shape)), layer))  # the file's view (ggml order)
    t += [TensorShape(name, tuple(reversed(arr.shape))) for name, arr in spec.extra_tensors(c).items()]
    window, local = spec.swa_layers(c)
    r, s = spec.recurrent_state(c)
    return ModelShapes(spec.name, c, tuple(t), window, local, experts=spec.experts(c),
                       recurrent_layers=spec.recurrent_layers(c), recurrent_state_floats=r + s,
                       f32_tensors=frozenset(x.name for x in t if len(x.ne) >= 2 and spec.keeps_f32(x.name)),
                       base_type=_BASE_TYPES.get(str(c.raw.get("dtype") or c.raw.get("torch_dtype")), "F16"),
                       kv_layers=spec.kv_layers(c))


# tables read a row per token besides the embedding (llama.cpp's gemma4 loads this one TENSOR_READ_LAZY)
LOOKUP_TABLES = frozenset({"per_layer_token_embd.weight"})
_BASE_TYPES = {"bfloat16": "BF16", "float16": "F16", "float32": "F32"}  # config.json's dtype -> GGUF type


def _gguf_tensors(spec: ArchSpec, c: TextConfig) -> list[tuple[str | None, str, tuple[int, ...]]]:
    """(HF name or None, GGUF name, numpy shape) of what the converter writes, in its order:
    one-to-one tensors mapped by llama.cpp's table, composites (stacked experts) in place of the
    checkpoint tensors their pieces name."""
    tmap = spec.tensor_map(c)
    hf = [(n, shape) for n, shape in spec.hf_tensors(c) if not spec.skip(n, c)]
    composites = spec.composites(dict(hf), c)
    pieced = {p.hf_name for comp in composites for p in comp.pieces}
    out: list[tuple[str | None, str, tuple[int, ...]]] = []
    for hf_name, shape in hf:
        if hf_name in pieced:
            continue
        name = spec.gguf_name(tmap, hf_name)
        if name is None:  # a spec whose layout llama.cpp's table does not cover: a bug in the spec
            raise AssertionError(f"{spec.name}: no llama.cpp name for {hf_name}")
        out.append((hf_name, name, spec.gguf_shape(hf_name, shape)))
    out += [(None, comp.gguf_name, comp.shape) for comp in composites]
    return out

def tensor_bytes(ne: tuple[int, ...], type_name: str) -> int:
    import gguf

    blk, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[type_name]]
    rows = 1
    for d in ne[1:]:
        rows *= d
    return rows * (ne[0] // blk) * size


def gguf_tensor_types(shapes: ModelShapes, quant_name: str, *, imatrix: bool = False) -> dict[str, str]:
    """GGUF type name per tensor for an edgekit quant name (f16, q8_0, q4_k_m, iq3_m, ...):
    llama.cpp's own choice (:mod:`.llama_types`); ``imatrix``: quantized with an importance matrix."""
    q = quant(quant_name)
    if q.name in FLOAT_QUANTS:
        return {t.name: q.main_type if t.is_matrix and t.name not in shapes.f32_tensors else "F32"
                for t in shapes.tensors}
    return choose_types(shapes, q.name.upper(), q.main_type, imatrix=imatrix, base_type=shapes.base_type)


@dataclass(frozen=True)
class WeightPlan:
    """Bytes of one artifact's weights, split the way the speed model needs them."""

    total_bytes: int  # all tensor data
    per_token_bytes: int  # read for every generated token (all but the embedding lookup; active experts)
    types: dict[str, str]  # tensor -> type (GGUF type names; ONNX: a precision label)
    cycled_bytes: int = 0  # expert bytes one token skips and later tokens read (the cache's working set)


def plan_for_types(shapes: ModelShapes, types: dict[str, str]) -> WeightPlan:
    """The bytes of a GGUF holding these tensor types: memory holds all of them; a generated token
    reads all but the lookup tables (:meth:`ModelShapes.is_lookup`), and of each expert tensor
    only the active experts' share."""
    total = per_token = skipped = 0.0
    for t in shapes.tensors:
        size = tensor_bytes(t.ne, types[t.name])
        total += size
        if not shapes.is_lookup(t.name):
            per_token += size * shapes.read_fraction(t)
            skipped += size * (1 - shapes.read_fraction(t))
    return WeightPlan(int(total), round(per_token), types, round(skipped))


def gguf_weights(shapes: ModelShapes, quant_name: str, *, imatrix: bool = False) -> WeightPlan:
    return plan_for_types(shapes, gguf_tensor_types(shapes, quant_name, imatrix=imatrix))


def gguf_file_bytes(shapes: ModelShapes, quant_name: str, tokenizer_bytes: int = 0) -> int:
    """Expected file size: tensor data padded to 32-byte alignment, tensor infos, metadata."""
    types = gguf_tensor_types(shapes, quant_name)
    data = sum(-(-tensor_bytes(t.ne, types[t.name]) // 32) * 32 for t in shapes.tensors)
    infos = sum(8 + len(t.name) + 4 + 8 * len(t.ne) + 4 + 8 for t in shapes.tensors)
    return 24 + 1024 + tokenizer_bytes + infos + 32 + data  # header + ~1 KiB of hparams + alignment


def tokenizer_metadata_bytes(model_dir: Path | None, vocab_size: int) -> int:
    """GGUF bytes of the tokenizer: per token an 8-byte length, the UTF-8 text and a 4-byte type
    (plus a 4-byte score for SentencePiece), per BPE merge a length and its text, and the chat
    template. Read from tokenizer.json when the directory has one, else ~24 bytes a token."""
    import json

    tj = model_dir / "tokenizer.json" if model_dir is not None else None
    if tj is None or not tj.is_file():
        return vocab_size * 24
    try:
        data = json.loads(tj.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return vocab_size * 24
    model = data.get("model") or {}
    vocab, merges = model.get("vocab") or {}, model.get("merges") or []
    tokens = [str(t[0]) for t in vocab] if isinstance(vocab, list) else list(vocab)
    tokens += [str(t.get("content", "")) for t in data.get("added_tokens", []) if t.get("content") not in vocab]
    per_token = 12 if isinstance(vocab, dict) else 16  # + score for Unigram/SentencePiece
    size = sum(per_token + len(t.encode()) for t in tokens) + max(0, vocab_size - len(tokens)) * (per_token + 8)
    size += sum(8 + len((m if isinstance(m, str) else " ".join(m)).encode()) for m in merges)
    for name in ("chat_template.jinja", "tokenizer_config.json"):
        f = model_dir / name  # type: ignore[operator]
        if f.is_file():
            text = f.read_text(encoding="utf-8", errors="replace")
            size += len(text.encode()) if name.endswith(".jinja") else len(str(json.loads(text).get("chat_template") or ""))
            break
    return size


def onnx_weights(shapes: ModelShapes, precision: OnnxPrecision, backend: Backend) -> WeightPlan:
    """The layout edgekit's ONNX export writes (ONNX Runtime GenAI builder, checked against the
    demo model's files): int4 = MatMulNBits, block 32, k_quant (asymmetric: a 4-bit zero point
    per block) with scales in the I/O dtype (fp32 on CPU, fp16 on CUDA), the LM head at int8
    (an 8-bit zero point per block); a tied embedding is that int8 matrix, shared by the lookup
    and the LM head (``shared_embeddings``), an untied one stays in the I/O dtype; fp32/fp16
    exports also store a tied matrix once; the RoPE cos/sin caches (max positions x head_dim)
    are stored too."""
    io_bytes = 2 if backend is Backend.CUDA or precision is OnnxPrecision.FP16 else 4
    tied = not shapes.has_output
    head = "token_embd.weight" if tied else "output.weight"

    def nbits(numel: int, bits: int) -> int:  # codes + a scale and a zero point per block of 32
        return numel * bits // 8 + (numel // 32) * io_bytes + numel // 32 * bits // 8

    total = per_token = 0.0
    types: dict[str, str] = {}
    for t in shapes.tensors:
        is_embd = t.name == "token_embd.weight"
        quantized = precision is OnnxPrecision.INT4 and t.is_matrix and (not is_embd or tied)
        bits = 8 if t.name == head else 4
        if quantized:
            size = nbits(t.numel, bits)
        elif not t.is_matrix or precision is OnnxPrecision.FP32:
            size = t.numel * 4
        else:
            size = t.numel * io_bytes
        types[t.name] = f"int{bits}" if quantized else (precision.value if t.is_matrix else "fp32")
        total += size
        if not is_embd or tied:  # a tied embedding is the LM head, read in full every token
            per_token += size * shapes.read_fraction(t)
    rope = shapes.config.max_position * shapes.config.head_dim * (4 if precision is OnnxPrecision.FP32 else io_bytes)
    return WeightPlan(int(total) + rope, round(per_token), types)


def weight_plan(shapes: ModelShapes, quant_name: str, precision: OnnxPrecision | None,
                backend: Backend) -> WeightPlan:
    """An artifact's weights: a GGUF quant type, or (``precision`` given) an ONNX export."""
    return gguf_weights(shapes, quant_name) if precision is None else onnx_weights(shapes, precision, backend)


def kv_cache_bytes(shapes: ModelShapes, ctx: int, dtype_bytes: int = 2, *, v_trans: bool = False,
                   swa_full: bool = False) -> int:
    """K and V of every layer that holds a cache (:meth:`ArchSpec.kv_layers`): per layer
    (K width + V width) x cells x dtype bytes, a sliding-window layer's cells capped at its window.

    The recurrent and convolution layers of a hybrid keep none (llama_memory_hybrid's attention
    filter: ``!is_recr(il)``), nor do Gemma 4's shared-KV layers. ``v_trans``: llama.cpp without flash
    attention stores V transposed, each layer's V row padded to the widest layer's
    (``n_embd_v_gqa_max``, [TAG_V_CACHE_VARIABLE] in src/llama-kv-cache.cpp): Gemma 4's sliding
    layers then take its full layers' V width. ``swa_full``: the sliding layers' cache sized for
    the whole context, as llama_context_default_params' ``swa_full = true`` (which llama-cpp-python
    keeps) allocates it; without it the window, what a context of ``ctx`` needs."""
    layers = shapes.kv_layers or _default_kv_layers(shapes)
    v_max = max((x.v for x in layers), default=0)
    return dtype_bytes * sum((x.k + (v_max if v_trans else x.v))
                             * (min(ctx, x.window) if x.window and not swa_full else ctx) for x in layers)


def _default_kv_layers(shapes: ModelShapes) -> tuple[KvLayer, ...]:
    """A ModelShapes built without the spec's list: every attention layer alike (num_kv_heads x head_dim)."""
    from edgekit.converters.gguf.archs.base import KvLayer

    c = shapes.config
    kv, window = c.num_kv_heads * c.head_dim, shapes.sliding_window
    return tuple(KvLayer(kv, kv, window if window and i < shapes.local_layers else None)
                 for i in range(shapes.attention_layers))


def recurrent_state_bytes(shapes: ModelShapes, n_seq: int = 1) -> int:
    """The state the recurrent/convolution layers keep, per sequence and independent of the context:
    llama_memory_recurrent's f32 ``r`` and ``s`` rows (``n_embd_r``/``n_embd_s``: LFM2's conv
    history is hidden x (L - 1) floats, a Mamba layer's also its SSM state) for each of them."""
    return shapes.recurrent_layers * shapes.recurrent_state_floats * 4 * max(1, n_seq)
