"""llama.cpp's per-tensor type choice, as data: what ``llama_model_quantize`` stores each tensor as.

A port of ``llama_tensor_get_type_impl`` and ``tensor_type_fallback`` (src/llama-quant.cpp of the
llama.cpp that llama-cpp-python 0.3.36 vendors) for decoder models, dense or mixture-of-experts
(not Falcon, not the 70B attn_v bump), every ftype edgekit offers (converters/gguf/quants.py QUANTS):

* the output head (``output.weight``, or the tied ``token_embd.weight``) -> Q8_0 when its rows do
  not split into the main type's blocks, Q5_K for the 1-2 bit i-quants, else Q6_K (Q8_0 stays);
* an untied ``token_embd`` -> Q2_K (iq2_xxs/iq2_xs/iq1_*) or IQ3_S (iq2_s/iq2_m/iq3_xxs);
* per tensor class and layer, the ``_S``/``_M``/``_L`` and i-quant mixes (``_RULES``);
* last, a type whose block does not divide the row length falls back (``_FALLBACK``; then F16).

Experts (``hparams.n_expert`` > 1): the stacked ``ffn_*_exps`` tensors follow the ffn_* rules with
the layer read from the tensor's name; the router (``ffn_gate_inp``) is never quantized; with
exactly 8 experts (Mixtral) attn_v and attn_k go to Q8_0, attn_output to Q5_K for most mixes, and
iq3_m's ffn_down takes the "more bits" layers too; 4+ experts count as GQA >= 4 for the 1-2 bit
i-quants' attn_v (``_EXPERT_RULES``).

Some choices depend on whether an importance matrix was given (``has_imatrix`` in llama.cpp):
iq3_xxs's attn_v and ffn_down, iq4_nl/iq4_xs's first ffn_down layers, q4_0/q5_0's. Checked tensor
by tensor against real llama_model_quantize output in tests/test_profiles.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .shapes import ModelShapes


@dataclass(frozen=True)
class At:
    """Where a tensor sits: its layer counter, the layer count, GQA ratio, the imatrix flag and
    the expert count (``hparams.n_expert``; 0 for a dense model)."""

    i: int
    n: int
    gqa: int
    imatrix: bool
    n_expert: int = 0


def more_bits(i: int, n: int) -> bool:
    """llama.cpp's use_more_bits: the first and last eighth of the layers and every third between."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


_Rule = Callable[[At], str | None]  # the tensor's type, or None to keep the ftype's default


def _first(n_div: int, hi: str) -> _Rule:
    return lambda a: hi if a.i < a.n // n_div else None


def _gqa4(hi: str, lo: str | None = None) -> _Rule:
    return lambda a: hi if a.gqa >= 4 else lo


_MORE_BITS_Q6: _Rule = lambda a: "Q6_K" if more_bits(a.i, a.n) else None  # noqa: E731
_IQ2_FAMILY = ("IQ2_XXS", "IQ2_XS", "IQ1_S", "IQ2_S", "IQ2_M", "IQ1_M")
_IQ2_HI = {"IQ2_S": "IQ3_S", "IQ2_M": "IQ3_S"}  # their "a bit more" type; the others' is Q2_K


def _iq2_attn_v(ftype: str) -> _Rule:
    return lambda a: "Q4_K" if a.gqa >= 4 or a.n_expert >= 4 else _IQ2_HI.get(ftype, "Q2_K")


def _iq2_ffn_down(ftype: str) -> _Rule:
    return lambda a: _IQ2_HI.get(ftype, "Q2_K") if a.i < a.n // 8 else None


_MID_IQ3_XXS: _Rule = lambda a: "IQ3_XXS" if a.n // 8 <= a.i < 7 * a.n // 8 else None  # noqa: E731

# tensor class -> ftype -> rule: llama_tensor_get_type_impl's branches, one entry per ftype
# (each ftype appears in one branch of each else-if chain, so a table keeps the order's meaning).
_RULES: dict[str, dict[str, _Rule]] = {
    "attn_v": {
        **{f: _iq2_attn_v(f) for f in _IQ2_FAMILY},
        "Q2_K": _gqa4("Q4_K", "Q3_K"),
        "Q2_K_S": _gqa4("Q4_K"),
        "IQ3_XXS": lambda a: "Q4_K" if a.gqa >= 4 else "IQ3_XXS" if a.imatrix else "IQ3_S",
        "IQ3_XS": _gqa4("Q4_K"), "IQ3_S": _gqa4("Q4_K"),
        "IQ3_M": lambda a: "Q4_K",
        "Q3_K_M": lambda a: "Q5_K" if a.i < 2 else "Q4_K",
        "Q3_K_L": lambda a: "Q5_K",
        "IQ4_NL": _gqa4("Q5_K"), "IQ4_XS": _gqa4("Q5_K"),
        "Q4_K_M": _MORE_BITS_Q6, "Q5_K_M": _MORE_BITS_Q6,
        "Q4_K_S": lambda a: "Q5_K" if a.i < 4 else None,
    },
    "attn_k": {"IQ3_XS": lambda a: "IQ3_XXS", "IQ3_XXS": lambda a: "IQ2_S"},
    "attn_q": {"IQ3_XS": lambda a: "IQ3_XXS", "IQ3_XXS": lambda a: "IQ2_S"},
    "ffn_down": {
        **{f: _iq2_ffn_down(f) for f in _IQ2_FAMILY},
        "Q2_K": lambda a: "Q3_K",
        "Q2_K_S": _first(8, "Q4_K"),
        "IQ3_XXS": lambda a: None if a.imatrix else "Q4_K" if a.i < a.n // 8 else "Q3_K",
        "Q3_K_M": lambda a: "Q5_K" if a.i < a.n // 16 else "Q4_K",
        "IQ3_M": _first(8, "Q4_K"),
        "Q3_K_L": lambda a: "Q5_K",
        "Q4_K_M": _MORE_BITS_Q6, "Q5_K_M": _MORE_BITS_Q6,
        "IQ4_NL": lambda a: None if a.imatrix else _first(8, "Q5_K")(a),
        "IQ4_XS": lambda a: None if a.imatrix else _first(8, "Q5_K")(a),
        "Q4_K_S": _first(8, "Q5_K"),
        "Q4_0": lambda a: _first(8, "Q4_1")(a) if a.imatrix else None,
        "Q5_0": lambda a: _first(8, "Q5_1")(a) if a.imatrix else None,
    },
    "attn_output": {
        "IQ1_S": lambda a: "IQ2_XXS", "IQ1_M": lambda a: "IQ2_XXS",
        "IQ2_S": lambda a: "IQ3_S", "IQ2_M": lambda a: "IQ3_S",
        "Q2_K": lambda a: "Q3_K", "IQ3_XXS": lambda a: "IQ3_S", "Q3_K_M": lambda a: "Q4_K",
        "Q3_K_L": lambda a: "Q5_K", "IQ3_M": lambda a: "Q4_K",
    },
    "ffn_gate": {"IQ3_XS": _MID_IQ3_XXS},
    "ffn_up": {"IQ3_XS": _MID_IQ3_XXS},
}
# With exactly 8 experts llama.cpp replaces some of the rules above (its ``n_expert == 8`` branches):
# class -> ftype (None: every ftype of that branch) -> the type; checked before ``_RULES``.
_ATTN_OUT_8 = ("Q2_K", "IQ3_XS", "IQ3_XXS", "Q3_K_S", "Q3_K_M", "IQ4_NL", "Q4_K_S", "Q4_K_M", "IQ3_S", "IQ3_M",
               "IQ4_XS")
_EXPERT_RULES: dict[str, dict[str | None, _Rule]] = {
    # attn_v: Q8_0 after any mix's own choice ("bumping this to Q8_0 trades just ~128MB")
    "attn_v": {**{f: _iq2_attn_v(f) for f in _IQ2_FAMILY}, None: lambda a: "Q8_0"},
    "attn_k": {**{f: (lambda a: "Q4_K") for f in _IQ2_FAMILY}, None: lambda a: "Q8_0"},
    "attn_output": {**{f: (lambda a: "Q5_K") for f in (*_IQ2_FAMILY, *_ATTN_OUT_8)}, None: lambda a: None},
    "ffn_down": {"IQ3_M": lambda a: "Q4_K" if a.i < a.n // 8 or more_bits(a.i, a.n) else None},
}
# llama.cpp never quantizes these matrices (tensor_allows_quantization): the router, convolution kernels
_NOT_QUANTIZED = ("ffn_gate_inp.weight", "ssm_conv1d", "shortconv.conv.weight")

# The output head for the 1-2 bit i-quants (and iq3_xxs); every other quantized ftype: Q6_K.
_OUTPUT_Q5_K = frozenset({"IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ2_S", "IQ2_M", "IQ1_M"})
# An untied token embedding (read by lookup, never multiplied) for the lowest types.
_TOKEN_EMBD = {"IQ2_XXS": "Q2_K", "IQ2_XS": "Q2_K", "IQ1_S": "Q2_K", "IQ1_M": "Q2_K",
               "IQ2_S": "IQ3_S", "IQ2_M": "IQ3_S", "IQ3_XXS": "IQ3_S"}

# tensor_type_fallback: a type whose block (256) does not divide the row length -> a 32-block
# type; one that still does not fit (or a 32-block type that does not) -> F16.
_FALLBACK = {**dict.fromkeys(("IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ4_XS"), "IQ4_NL"),
             "Q2_K": "Q4_0", "Q3_K": "Q4_0", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}
# tensor_requires_imatrix: types llama.cpp will not make without an importance matrix (outside
# the embedding and the output head); Q2_K only inside a q2_k_s file.
IMATRIX_TYPES = frozenset({"IQ3_XXS", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ1_M", "IQ1_S"})
FLOAT_TYPES = frozenset({"F32", "F16", "BF16"})


def block_size(type_name: str) -> int:
    import gguf

    return int(gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[type_name]][0])


def tensor_class(name: str) -> str:
    """llama.cpp's tensor_get_category, by substring as it does (``blk.3.ffn_up.weight`` -> ffn_up)."""
    if name == "output.weight":
        return "output"
    if name in ("token_embd.weight", "per_layer_token_embd.weight"):
        return "token_embd"
    for key in ("attn_qkv.weight", "attn_kv_b.weight", "attn_v.weight", "attn_k.weight", "attn_q.weight",
                "attn_output.weight", "ffn_up", "ffn_gate", "ffn_down"):
        if key in name:
            kind = key.removesuffix(".weight")
            # fused QKV (Phi-3) and MLA's kv_b are attn_v-like: the attn_v rules and counter
            # (llama.cpp's separate ATTENTION_QKV branch is never reached for them)
            return "attn_v" if kind in ("attn_qkv", "attn_kv_b") else kind
    return "other"


def fallback(row: int, type_name: str) -> str:
    """tensor_type_fallback: the type a row of ``row`` weights can really be stored in."""
    if row % block_size(type_name) == 0:
        return type_name
    new = _FALLBACK.get(type_name, type_name)
    return new if row % block_size(new) == 0 else "F16"


def choose_types(shapes: ModelShapes, ftype: str, main_type: str, *, imatrix: bool = False,
                 base_type: str = "F16") -> dict[str, str]:
    """GGUF type name per tensor for a quantized llama.cpp ftype (``Q4_K_M``, ``IQ3_XS``), whose
    default tensor type is ``main_type``; ``imatrix``: an importance matrix is given;
    ``base_type``: the float type of the file quantized (what the tensors it leaves alone keep)."""
    c = shapes.config
    gqa = c.num_heads // max(c.num_kv_heads, 1)
    tied = not shapes.has_output
    n_expert = shapes.experts.n_experts if shapes.experts is not None else 0
    # llama.cpp counts attn_v-like tensors in the file (a hybrid has fewer than layers) and takes
    # n_layer for the ffn_* classes; each counter advances as it meets that class's tensors
    n_of = {"attn_v": sum(1 for t in shapes.tensors if tensor_class(t.name) == "attn_v")}
    counters: dict[str, int] = {}
    out: dict[str, str] = {}
    for t in shapes.tensors:
        if not t.is_matrix:
            out[t.name] = "F32"
            continue
        if t.name in shapes.f32_tensors or any(k in t.name for k in _NOT_QUANTIZED):
            out[t.name] = "F32" if t.name in shapes.f32_tensors else base_type  # left as the source file has it
            continue
        cls = tensor_class(t.name)
        new = main_type
        i = counters.get(cls, 0)
        if n_expert > 1 and cls in ("ffn_down", "ffn_gate", "ffn_up"):
            i = t.layer  # experts "sprinkled in the model": llama.cpp parses the layer from the name
        at = At(i, n_of.get(cls, c.num_layers), gqa, imatrix, n_expert)
        expert_rules = _EXPERT_RULES.get(cls, {}) if n_expert == 8 else {}
        if cls == "output" or (tied and cls == "token_embd"):
            if t.ne[0] % block_size(main_type) != 0:
                new = "Q8_0"
            elif ftype in _OUTPUT_Q5_K:
                new = "Q5_K"
            elif main_type != "Q8_0":
                new = "Q6_K"
        elif cls == "token_embd":
            new = _TOKEN_EMBD.get(ftype, main_type)
        elif expert_rules and (rule := expert_rules.get(ftype, expert_rules.get(None))) is not None:
            new = rule(at) or main_type
        elif (rule := _RULES.get(cls, {}).get(ftype)) is not None:
            new = rule(at) or main_type
        if cls in ("attn_v", "ffn_down", "ffn_gate", "ffn_up"):
            counters[cls] = counters.get(cls, 0) + 1
        out[t.name] = fallback(t.ne[0], new)
    return out


def requires_imatrix(types: dict[str, str], ftype: str) -> bool:
    """Whether llama.cpp refuses these types without an importance matrix (tensor_requires_imatrix).

    Decided on the types after fallback: a model whose rows do not split into 256-blocks may
    need none even at iq2_xxs, and iq3_xs needs one for its IQ3_XXS tensors."""
    for name, kind in types.items():
        if tensor_class(name) in ("token_embd", "output"):
            continue
        if kind in IMATRIX_TYPES or (kind == "Q2_K" and ftype == "Q2_K_S"):
            return True
    return False
