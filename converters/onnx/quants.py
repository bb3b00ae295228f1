"""ONNX variants, targets and int4 options: one table, read by the converter, CLI and profiler.

``builder_ep`` says which execution-provider graph the builder emits for each target. The
builder's graphs differ by EP (attention kernel, I/O dtype); every graph listed here also
runs on ONNX Runtime's CPU EP, which is where edgekit verifies it when no GPU is present.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgekit._compat import StrEnum
from edgekit.errors import UnknownChoiceError

from ..gguf.quants import Precision


class Target(StrEnum):
    """Where the artifact will run: decides the graph the builder emits."""

    CPU = "cpu"
    CUDA = "cuda"
    JETSON = "jetson"  # CUDA graph; Orin/Thor run it with NVIDIA's JetPack onnxruntime-gpu builds


class Int4Algo(StrEnum):
    """Weight-only quantization algorithms the builder offers (its ``algo_config``).

    k_quant is edgekit's default: on the demo model (int4, block 32, int8 LM head, 4k evaluation
    tokens) it measured mean KL 0.037 / top-1 85.2% against RTN's 0.050 / 82.5%, same size
    (benchmarks/results/onnx_int4_study-demo.json).
    """

    RTN = "rtn"  # round to nearest, per block of block_size weights
    K_QUANT = "k_quant"  # llama.cpp-style k-quant search for scales/zero points
    K_QUANT_MIXED = "k_quant_mixed"  # k_quant + int8 for llama.cpp's most sensitive layers (qkv/v/down)


# MatMulNBits block sizes the builder accepts (weights per scale).
BLOCK_SIZES: tuple[int, ...] = (16, 32, 64, 128, 256)
DEFAULT_BLOCK_SIZE = 32


@dataclass(frozen=True)
class OnnxQuant:
    name: str  # what users type
    builder_precision: str  # the builder's -p
    precision: Precision  # verification threshold class
    weight_bits: float  # bits per matmul weight, scales included at block 32 (fp16 scale + 4-bit zero-point)
    builder_ep: dict[Target, str]
    note: str
    weight_only: bool = False  # MatMulNBits: takes --block-size / --int4-algo
    # the builder's matmul_mixed_precision for this type: MatMuls kept at more bits than the body
    mixed_precision: str = ""


_GPU = {Target.CPU: "cuda", Target.CUDA: "cuda", Target.JETSON: "cuda"}
_BY_TARGET = {Target.CPU: "cpu", Target.CUDA: "cuda", Target.JETSON: "cuda"}

QUANTS: tuple[OnnxQuant, ...] = (
    OnnxQuant("fp32", "fp32", Precision.FP32, 32.0, _BY_TARGET, "float32, the reference-grade export"),
    # The builder's fp16 CPU graph (MultiHeadAttention + inserted casts) fails at the first
    # decode step on ORT 1.32 ("Shape mismatch attempting to re-use buffer"); its CUDA graph
    # (fp16 GroupQueryAttention) runs on the CPU EP as well, so fp16 always uses that graph.
    OnnxQuant("fp16", "fp16", Precision.FP16, 16.0, _GPU, "float16 weights and activations (GPU graph)"),
    OnnxQuant("int8", "int8", Precision.INT8, 8.5, _BY_TARGET, "MatMulNBits 8-bit weights", weight_only=True),
    # The LM head stays int8, as llama.cpp's q4_k_m keeps its output tensor at q6_k (q8_0 where rows
    # are not a multiple of 256): the head's error lands straight on the logits and, with tied
    # embeddings, the same shared matrix is also the token lookup (GatherBlockQuantized takes
    # int8). An int4 head is what made ONNX int4 lose several times q4_k_m's KL on tied models
    # (#13); benchmarks/onnx_int4_study.py measures the variants (benchmarks/results/).
    OnnxQuant("int4", "int4", Precision.INT4, 4.625, _BY_TARGET, "MatMulNBits 4-bit weights (block-wise), int8 LM head",
              weight_only=True, mixed_precision="last_matmul:int8"),
)
_BY_NAME = {q.name: q for q in QUANTS}


def parse_onnx_quants(value: str | list[str]) -> list[OnnxQuant]:
    names = [n.strip().lower() for n in (value.split(",") if isinstance(value, str) else value) if n.strip()]
    out: list[OnnxQuant] = []
    for n in names:
        if n not in _BY_NAME:
            raise UnknownChoiceError("ONNX quant type", n, list(_BY_NAME))
        if _BY_NAME[n] not in out:
            out.append(_BY_NAME[n])
    if not out:
        raise UnknownChoiceError("ONNX quant type", str(value), list(_BY_NAME))
    return out


def parse_target(value: str | Target) -> Target:
    try:
        return Target(str(value).lower())
    except ValueError:
        raise UnknownChoiceError("target", str(value), [t.value for t in Target]) from None


def parse_algo(value: str | Int4Algo) -> Int4Algo:
    try:
        return Int4Algo(str(value).lower())
    except ValueError:
        raise UnknownChoiceError("int4 algorithm", str(value), [a.value for a in Int4Algo]) from None


def check_block_size(value: int) -> int:
    if value not in BLOCK_SIZES:
        raise UnknownChoiceError("int4 block size", str(value), [str(b) for b in BLOCK_SIZES])
    return value
