"""Memory and speed of one (artifact, runtime, device) combination: the roofline model.

Generation is memory-bound: every token reads the weights (all but the embedding lookup)
plus the KV cache filled so far, so tokens/s = bandwidth / bytes per token x efficiency.
Prompt processing is compute-bound: about 2 x matmul parameters FLOP per token, so
tokens/s = compute rate / (2 x params) x efficiency. The efficiencies are the only fudge
factors and live in one table below, each with where it comes from.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from .schema import Backend, DeviceClass, OnnxPrecision, Profile, Runtime, SourceKind
from .shapes import ModelShapes, WeightPlan, kv_cache_bytes, tensor_bytes

GIB = 1024**3


class Basis(StrEnum):
    """What the profile's bandwidth figure is: a datasheet peak or an achieved (measured) rate."""

    DATASHEET = "datasheet"
    MEASURED = "measured"


@dataclass(frozen=True)
class Efficiency:
    decode: float  # achieved generation tok/s / (bandwidth / bytes per token)
    prefill: float  # achieved prompt tok/s / (compute rate / FLOP per token)
    ref: str


# (runtime, device class, bandwidth basis) -> efficiency. Decode fractions against the
# datasheet bandwidth are HARDWARE.md's single-stream roofline fractions (mid-range of each
# reported span); MEASURED rows apply when the bandwidth was measured by `edgekit profile
# calibrate` (numpy streaming read), which already sits below the datasheet peak, so the
# runtime reaches a larger fraction of it. Prefill fractions are estimates (llama.cpp's
# prompt kernels reach roughly a third of the tensor-core peak on CUDA, half of a CPU's
# BLAS rate) until a benchmark on the device says otherwise.
EFFICIENCY: dict[tuple[Runtime, DeviceClass, Basis], Efficiency] = {
    (Runtime.LLAMA_CPP, DeviceClass.JETSON, Basis.DATASHEET): Efficiency(0.50, 0.30, "HARDWARE.md: llama.cpp on Jetson 0.45-0.55"),
    (Runtime.LLAMA_CPP, DeviceClass.DISCRETE_GPU, Basis.DATASHEET): Efficiency(0.80, 0.35, "HARDWARE.md: llama.cpp desktop CUDA 0.75-0.85"),
    (Runtime.LLAMA_CPP, DeviceClass.APPLE_SILICON, Basis.DATASHEET): Efficiency(0.80, 0.50, "HARDWARE.md: llama.cpp Metal 0.75-0.85"),
    (Runtime.LLAMA_CPP, DeviceClass.ARM_CPU, Basis.DATASHEET): Efficiency(0.55, 0.50, "HARDWARE.md: Raspberry Pi 5 CPU about 0.55"),
    (Runtime.LLAMA_CPP, DeviceClass.X86_CPU, Basis.DATASHEET): Efficiency(0.55, 0.40, "estimated: like the Pi 5 CPU figure"),
    # Measured on the project's dev host (2 vCPU Xeon, AVX-512/AMX) with benchmarks/profile_check.py
    # against the calibrated numpy read bandwidth; see that script's output for the spread.
    (Runtime.LLAMA_CPP, DeviceClass.X86_CPU, Basis.MEASURED): Efficiency(0.75, 0.50, "measured: benchmarks/profile_check.py"),
    (Runtime.LLAMA_CPP, DeviceClass.ARM_CPU, Basis.MEASURED): Efficiency(0.75, 0.50, "estimated: as x86 measured"),
    # ONNX Runtime (GenAI) decode is less tuned for single-stream batch-1 than llama.cpp.
    (Runtime.ONNXRUNTIME, DeviceClass.JETSON, Basis.DATASHEET): Efficiency(0.40, 0.25, "estimated"),
    (Runtime.ONNXRUNTIME, DeviceClass.DISCRETE_GPU, Basis.DATASHEET): Efficiency(0.65, 0.35, "estimated"),
    (Runtime.ONNXRUNTIME, DeviceClass.APPLE_SILICON, Basis.DATASHEET): Efficiency(0.45, 0.40, "estimated (CPU EP)"),
    (Runtime.ONNXRUNTIME, DeviceClass.ARM_CPU, Basis.DATASHEET): Efficiency(0.45, 0.40, "estimated"),
    (Runtime.ONNXRUNTIME, DeviceClass.X86_CPU, Basis.DATASHEET): Efficiency(0.45, 0.40, "estimated"),
    (Runtime.ONNXRUNTIME, DeviceClass.X86_CPU, Basis.MEASURED): Efficiency(0.60, 0.40, "estimated"),
    (Runtime.ONNXRUNTIME, DeviceClass.ARM_CPU, Basis.MEASURED): Efficiency(0.60, 0.40, "estimated"),
}

# Memory a runtime costs before any model tensor: process, libraries, device context (GiB).
RUNTIME_OVERHEAD_GIB: dict[tuple[Runtime, Backend], tuple[float, str]] = {
    (Runtime.LLAMA_CPP, Backend.CPU): (0.045, "measured: Python + llama_cpp import RSS, dev host (42 MiB)"),
    (Runtime.LLAMA_CPP, Backend.CUDA): (0.40, "estimated: CUDA context + cuBLAS workspace"),
    (Runtime.LLAMA_CPP, Backend.METAL): (0.10, "estimated"),
    (Runtime.ONNXRUNTIME, Backend.CPU): (0.10, "estimated: Python + onnxruntime-genai"),
    (Runtime.ONNXRUNTIME, Backend.CUDA): (0.50, "estimated: CUDA context + cuDNN/cuBLAS"),
    (Runtime.ONNXRUNTIME, Backend.METAL): (0.10, "estimated"),
}

# llama.cpp's CPU "extra buffer" types copy matmul weights into a repacked layout at load
# time; the mmapped original pages stay resident (reclaimable page cache, but counted in
# RSS), so peak RSS holds those tensors twice. Types per ISA from ggml-cpu's repack.cpp
# (x86 AVX2 kernels; Arm dotprod kernels, Q4_K needs i8mm). On AMX hosts edgekit turns
# extra buffers off altogether (runtimes/llama_env.py: the AMX kernels crash in VMs).
_REPACK_X86 = {"Q4_0", "Q4_K", "Q2_K", "IQ4_NL"}
_REPACK_ARM = {"Q4_0", "IQ4_NL"}
KV_PAD = 256  # llama.cpp rounds the KV cache up to a multiple of 256 cells


@dataclass(frozen=True)
class Cost:
    weights_bytes: int
    kv_bytes: int
    buffer_bytes: int  # runtime compute/scratch buffers for this context
    overhead_bytes: int
    peak_rss_bytes: int  # what `ps` would show on a CPU host (duplicated repacked pages)
    gen_tps: float
    prompt_tps: float
    efficiency: Efficiency

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_bytes + self.buffer_bytes + self.overhead_bytes


def bandwidth_basis(profile: Profile, mode: str | None = None) -> Basis:
    return Basis.MEASURED if profile.mode(mode).bandwidth_gbs.source is SourceKind.MEASURED else Basis.DATASHEET


def efficiency(runtime: Runtime, profile: Profile, mode: str | None = None) -> Efficiency:
    basis = bandwidth_basis(profile, mode)
    key = (runtime, profile.device_class, basis)
    return EFFICIENCY.get(key) or EFFICIENCY[(runtime, profile.device_class, Basis.DATASHEET)]


def compute_flops(profile: Profile, backend: Backend) -> float:
    """Compute rate (FLOP/s) the prompt phase runs at: the GPU's fp16 rate, else the CPU's."""
    c = profile.compute
    if backend is not Backend.CPU and c.gpu_fp16_tflops is not None:
        return c.gpu_fp16_tflops.value * 1e12
    if c.cpu_gflops is not None:
        return c.cpu_gflops.value * 1e9
    # No figure: cores x 2.5 GHz x fp32 FLOP/cycle of the widest vector FMA the ISA has.
    isa = set(c.isa)
    per_cycle = 64 if "avx512f" in isa else 32 if {"avx2", "fma"} & isa else 16
    return c.cpu_cores.value * 2.5e9 * per_cycle


def llamacpp_compute_buffer(shapes: ModelShapes, ctx: int, n_ubatch: int = 512, flash_attn: bool = False) -> int:
    """ggml's graph-allocator peak for one ubatch, fitted to the `compute buffer size` llama.cpp
    logs (CPU, within 3% over vocab, n_ff, heads and ctx; up to 8% high for wide models).

    Without flash attention the largest of: attention scores (n_head + 1 mask row per query,
    x n_kv), logits (vocab), FFN activations (3 x n_ff), plus the residual stream. With flash
    attention the scores are never materialised; only an f16 mask (n_kv per query) is."""
    c = shapes.config
    ub = min(n_ubatch, ctx)
    q_dim, kv_dim, h = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim, c.hidden_size
    if flash_attn:
        per_token = max(c.vocab_size + 2 * h, 3 * c.intermediate_size + 4 * h + ctx // 2)
    else:
        base = 3 * h + 2 * q_dim + 2 * kv_dim
        per_token = max(ctx * (c.num_heads + 1) + base, c.vocab_size + 3 * h, 3 * c.intermediate_size + base)
    return 4 * ub * per_token + 4 * c.vocab_size  # + the output (logits) buffer


def onnx_buffers(shapes: ModelShapes, ctx: int, prompt: int = 1024) -> int:
    """ONNX Runtime runs the whole prompt at once: logits for every prompt position, FFN
    activations and per-head attention scores for a prompt of up to ``prompt`` tokens."""
    c = shapes.config
    p = min(ctx, prompt)
    return 4 * p * (c.vocab_size + 3 * c.intermediate_size + c.num_heads * p)


def pad_ctx(ctx: int) -> int:
    return -(-ctx // KV_PAD) * KV_PAD


def extra_buffer_bytes(shapes: ModelShapes, types: dict[str, str], isa: tuple[str, ...]) -> int:
    """Bytes llama.cpp's CPU backend copies into repacked buffers for this ISA."""
    flags = set(isa)
    if "amx_int8" in flags:
        return 0
    repack = _REPACK_X86 if "avx2" in flags else _REPACK_ARM if {"asimddp", "dotprod"} & flags else set()
    return sum(tensor_bytes(t.ne, types[t.name]) for t in shapes.tensors
               if t.is_matrix and t.name != "token_embd.weight" and types[t.name] in repack)


def estimate(shapes: ModelShapes, weights: WeightPlan, runtime: Runtime, backend: Backend, profile: Profile, *,
             ctx: int, mode: str | None = None, kv_fill: int | None = None,
             onnx_precision: OnnxPrecision | None = None) -> Cost:
    """Memory and speed of one candidate. ``kv_fill`` is the context already in the cache while
    generating (default: half the context, the average over a conversation that fills it)."""
    eff = efficiency(runtime, profile, mode)
    bandwidth = profile.mode(mode).bandwidth_gbs.value * 1e9
    if runtime is Runtime.LLAMA_CPP:
        kv_dtype = 2  # f16 cache, llama.cpp's default
        cells = pad_ctx(ctx)
        # GPU builds enable flash attention by default (-fa auto); llama-cpp-python's CPU
        # default leaves it off, and that is what benchmarks/profile_check.py measures.
        buffers = llamacpp_compute_buffer(shapes, cells, flash_attn=backend is not Backend.CPU)
    else:
        kv_dtype = 2 if backend is Backend.CUDA or onnx_precision is OnnxPrecision.FP16 else 4
        cells = ctx
        buffers = onnx_buffers(shapes, ctx)
    kv = kv_cache_bytes(shapes, cells, kv_dtype)
    overhead = int(RUNTIME_OVERHEAD_GIB[(runtime, backend)][0] * GIB)
    fill = ctx // 2 if kv_fill is None else kv_fill
    per_token = weights.per_token_bytes + kv_cache_bytes(shapes, max(fill, 1), kv_dtype)
    gen_tps = bandwidth / per_token * eff.decode
    prompt_tps = compute_flops(profile, backend) * eff.prefill / (2 * shapes.matmul_params())
    peak = weights.total_bytes + kv + buffers + overhead
    if runtime is Runtime.LLAMA_CPP and backend is Backend.CPU:
        peak += extra_buffer_bytes(shapes, weights.types, profile.compute.isa)
        if shapes.has_output:  # the mmapped embedding table is touched only row by row
            emb = next(t for t in shapes.tensors if t.name == "token_embd.weight")
            peak -= tensor_bytes(emb.ne, weights.types[emb.name])
    return Cost(weights.total_bytes, kv, buffers, overhead, peak, gen_tps, prompt_tps, eff)
