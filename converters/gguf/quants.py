"""GGUF output types: one table, read by the converter, the CLI and the profiler.

``ftype`` names llama.cpp's LLAMA_FTYPE_* constant (resolved lazily from llama_cpp, so
validating a name costs no import). ``bpw`` is the nominal bits per weight of the main
matmul type, block scales included (from ggml's block sizes: e.g. Q4_K stores 256 weights
in 144 bytes = 4.5 bpw); "mixed" types (the _M/_S variants) keep some tensors at a higher
type, which :func:`effective_bpw` in the profiler accounts for from real shapes.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from edgekit._compat import StrEnum
from edgekit.errors import UnknownChoiceError


class Precision(StrEnum):
    """Precision classes shared by every format, keying the verification thresholds."""

    FP32 = "fp32"
    FP16 = "fp16"  # f16 and bf16
    INT8 = "int8"
    INT6 = "int6"
    INT5 = "int5"
    INT4 = "int4"
    INT3 = "int3"
    INT2 = "int2"
    INT1 = "int1"


@dataclass(frozen=True)
class GGUFQuant:
    name: str  # what users type: q4_k_m
    ftype: str  # llama_cpp.LLAMA_FTYPE_* member
    main_type: str  # gguf.GGMLQuantizationType member of the large matrices
    bpw: float  # nominal bits per weight of main_type
    precision: Precision
    note: str
    needs_imatrix: bool = False  # llama.cpp refuses it without an importance matrix (its main type does)


# The i-quants' main type is llama.cpp's llama_ftype_get_default_type (iq2_s is mostly IQ2_XS,
# iq3_m/iq3_xs mostly IQ3_S); needs_imatrix marks those whose main type llama.cpp will not make
# without one (tensor_requires_imatrix: IQ3_XXS, IQ2_*, IQ1_*). The others use one when given.
QUANTS: tuple[GGUFQuant, ...] = (
    GGUFQuant("f32", "LLAMA_FTYPE_ALL_F32", "F32", 32.0, Precision.FP32, "lossless, 4 bytes/weight"),
    GGUFQuant("f16", "LLAMA_FTYPE_MOSTLY_F16", "F16", 16.0, Precision.FP16, "half precision"),
    GGUFQuant("bf16", "LLAMA_FTYPE_MOSTLY_BF16", "BF16", 16.0, Precision.FP16, "bfloat16, lossless for bf16 sources"),
    GGUFQuant("q8_0", "LLAMA_FTYPE_MOSTLY_Q8_0", "Q8_0", 8.5, Precision.INT8, "8-bit, blocks of 32"),
    GGUFQuant("q6_k", "LLAMA_FTYPE_MOSTLY_Q6_K", "Q6_K", 6.5625, Precision.INT6, "6-bit k-quant"),
    GGUFQuant("q5_k_m", "LLAMA_FTYPE_MOSTLY_Q5_K_M", "Q5_K", 5.5, Precision.INT5, "5-bit k-quant, some tensors q6_k"),
    GGUFQuant("q5_k_s", "LLAMA_FTYPE_MOSTLY_Q5_K_S", "Q5_K", 5.5, Precision.INT5, "5-bit k-quant"),
    GGUFQuant("q5_1", "LLAMA_FTYPE_MOSTLY_Q5_1", "Q5_1", 6.0, Precision.INT5, "legacy 5-bit with min"),
    GGUFQuant("q5_0", "LLAMA_FTYPE_MOSTLY_Q5_0", "Q5_0", 5.5, Precision.INT5, "legacy 5-bit"),
    GGUFQuant("q4_k_m", "LLAMA_FTYPE_MOSTLY_Q4_K_M", "Q4_K", 4.5, Precision.INT4, "4-bit k-quant, some tensors q6_k"),
    GGUFQuant("q4_k_s", "LLAMA_FTYPE_MOSTLY_Q4_K_S", "Q4_K", 4.5, Precision.INT4, "4-bit k-quant"),
    GGUFQuant("q4_1", "LLAMA_FTYPE_MOSTLY_Q4_1", "Q4_1", 5.0, Precision.INT4, "legacy 4-bit with min"),
    GGUFQuant("q4_0", "LLAMA_FTYPE_MOSTLY_Q4_0", "Q4_0", 4.5, Precision.INT4, "legacy 4-bit"),
    GGUFQuant("q3_k_l", "LLAMA_FTYPE_MOSTLY_Q3_K_L", "Q3_K", 3.4375, Precision.INT3, "3-bit k-quant, more q5_k"),
    GGUFQuant("q3_k_m", "LLAMA_FTYPE_MOSTLY_Q3_K_M", "Q3_K", 3.4375, Precision.INT3, "3-bit k-quant"),
    GGUFQuant("q3_k_s", "LLAMA_FTYPE_MOSTLY_Q3_K_S", "Q3_K", 3.4375, Precision.INT3, "3-bit k-quant, smallest"),
    GGUFQuant("q2_k", "LLAMA_FTYPE_MOSTLY_Q2_K", "Q2_K", 2.625, Precision.INT2, "2-bit k-quant, large quality loss"),
    GGUFQuant("iq4_nl", "LLAMA_FTYPE_MOSTLY_IQ4_NL", "IQ4_NL", 4.5, Precision.INT4, "4-bit non-linear, blocks of 32"),
    GGUFQuant("iq4_xs", "LLAMA_FTYPE_MOSTLY_IQ4_XS", "IQ4_XS", 4.25, Precision.INT4, "4-bit non-linear i-quant"),
    GGUFQuant("iq3_m", "LLAMA_FTYPE_MOSTLY_IQ3_M", "IQ3_S", 3.4375, Precision.INT3, "3-bit i-quant, some tensors higher"),
    GGUFQuant("iq3_s", "LLAMA_FTYPE_MOSTLY_IQ3_S", "IQ3_S", 3.4375, Precision.INT3, "3-bit i-quant"),
    GGUFQuant("iq3_xs", "LLAMA_FTYPE_MOSTLY_IQ3_XS", "IQ3_S", 3.4375, Precision.INT3, "3-bit i-quant, some iq3_xxs"),
    GGUFQuant("iq3_xxs", "LLAMA_FTYPE_MOSTLY_IQ3_XXS", "IQ3_XXS", 3.0625, Precision.INT3, "3-bit i-quant, smallest",
              needs_imatrix=True),
    GGUFQuant("iq2_m", "LLAMA_FTYPE_MOSTLY_IQ2_M", "IQ2_S", 2.5625, Precision.INT2, "2-bit i-quant, some tensors higher",
              needs_imatrix=True),
    GGUFQuant("iq2_s", "LLAMA_FTYPE_MOSTLY_IQ2_S", "IQ2_XS", 2.3125, Precision.INT2, "2-bit i-quant",
              needs_imatrix=True),
    GGUFQuant("iq2_xs", "LLAMA_FTYPE_MOSTLY_IQ2_XS", "IQ2_XS", 2.3125, Precision.INT2, "2-bit i-quant",
              needs_imatrix=True),
    GGUFQuant("iq2_xxs", "LLAMA_FTYPE_MOSTLY_IQ2_XXS", "IQ2_XXS", 2.0625, Precision.INT2, "2-bit i-quant, smallest",
              needs_imatrix=True),
    GGUFQuant("iq1_m", "LLAMA_FTYPE_MOSTLY_IQ1_M", "IQ1_M", 1.75, Precision.INT1, "1.75-bit i-quant, very large loss",
              needs_imatrix=True),
    GGUFQuant("iq1_s", "LLAMA_FTYPE_MOSTLY_IQ1_S", "IQ1_S", 1.5625, Precision.INT1, "1.5-bit i-quant, very large loss",
              needs_imatrix=True),
)
_BY_NAME = {q.name: q for q in QUANTS}
# ggml types a tensor can be given with --tensor-type (gguf.GGMLQuantizationType names), and those
# llama.cpp will not make without an importance matrix (llama-quant.cpp tensor_requires_imatrix)
TENSOR_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q6_K", "Q5_K", "Q5_1", "Q5_0", "Q4_K", "Q4_1", "Q4_0", "Q3_K", "Q2_K",
                "IQ4_XS", "IQ4_NL", "IQ3_S", "IQ3_XXS", "IQ2_S", "IQ2_XS", "IQ2_XXS", "IQ1_M", "IQ1_S")
IMATRIX_TYPES = frozenset({"IQ3_XXS", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ1_M", "IQ1_S"})
FLOAT_QUANTS = frozenset({"f32", "f16", "bf16"})


@functools.cache
def names_by_file_type() -> dict[int, str]:
    """llama.cpp file type number (a GGUF's ``general.file_type``) -> quant name.

    Built from the table through gguf-py's copy of the LLAMA_FTYPE_* numbers, so naming a
    file's quant needs neither llama_cpp nor a list of its own."""
    import gguf

    return {int(gguf.LlamaFileType[q.ftype.removeprefix("LLAMA_FTYPE_")]): q.name for q in QUANTS}


def quant(name: str) -> GGUFQuant:
    key = name.strip().lower()
    if key not in _BY_NAME:
        raise UnknownChoiceError("GGUF quant type", name, [q.name for q in QUANTS])
    return _BY_NAME[key]


def parse_quants(spec: str | list[str] | tuple[str, ...]) -> list[GGUFQuant]:
    """``"f16,q8_0"`` or a list -> validated, de-duplicated, in the order given."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[GGUFQuant] = []
    for item in items:
        if item.strip() and quant(item) not in out:
            out.append(quant(item))
    if not out:
        raise UnknownChoiceError("GGUF quant type", str(spec), [q.name for q in QUANTS])
    return out
