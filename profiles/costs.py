"""Memory and speed of one (artifact, runtime, device) combination: a roofline model.

Generation reads the weights (all but the embedding lookup) plus the KV cache filled so far
for every token: tokens/s = bandwidth / bytes per token x efficiency. On CPUs with few cores
the dequantize-and-dot kernels are the tighter roof, so there the time per token is the
larger of the memory time and the kernel time (CPU_KERNELS). Prompt processing is
compute-bound: about 2 x matmul parameters FLOP per token. Every factor that is not
arithmetic lives in a commented table below, with where it comes from.
"""

from __future__ import annotations

import itertools
import math
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
_L, _O, _D, _M = Runtime.LLAMA_CPP, Runtime.ONNXRUNTIME, Basis.DATASHEET, Basis.MEASURED
EFFICIENCY: dict[tuple[Runtime, DeviceClass, Basis], Efficiency] = {
    (_L, DeviceClass.JETSON, _D): Efficiency(0.50, 0.30, "HARDWARE.md: llama.cpp on Jetson 0.45-0.55"),
    (_L, DeviceClass.DISCRETE_GPU, _D): Efficiency(0.80, 0.35, "HARDWARE.md: llama.cpp desktop CUDA 0.75-0.85"),
    (_L, DeviceClass.APPLE_SILICON, _D): Efficiency(0.80, 0.50, "HARDWARE.md: llama.cpp Metal 0.75-0.85"),
    (_L, DeviceClass.ARM_CPU, _D): Efficiency(0.55, 0.50, "HARDWARE.md: Raspberry Pi 5 CPU about 0.55"),
    (_L, DeviceClass.X86_CPU, _D): Efficiency(0.55, 0.40, "estimated: like the Pi 5 CPU figure"),
    # Against a calibrated (numpy read) bandwidth. Not observable on the dev host, where decode
    # is kernel-bound (CPU_KERNELS below; f16 reached 0.57 of the read rate while kernel-bound):
    # the fraction STREAM-like reads leave to a well-prefetched matvec, estimated.
    (_L, DeviceClass.X86_CPU, _M): Efficiency(0.75, 0.50, "estimated"),
    (_L, DeviceClass.ARM_CPU, _M): Efficiency(0.75, 0.50, "estimated: as x86 measured"),
    # ONNX Runtime (GenAI) decode is less tuned for single-stream batch-1 than llama.cpp.
    (_O, DeviceClass.JETSON, _D): Efficiency(0.40, 0.25, "estimated"),
    (_O, DeviceClass.DISCRETE_GPU, _D): Efficiency(0.65, 0.35, "estimated"),
    (_O, DeviceClass.APPLE_SILICON, _D): Efficiency(0.45, 0.40, "estimated (CPU EP)"),
    (_O, DeviceClass.ARM_CPU, _D): Efficiency(0.45, 0.40, "estimated"),
    (_O, DeviceClass.X86_CPU, _D): Efficiency(0.45, 0.40, "estimated"),
    # fp32 ONNX decode on the dev host is memory-bound (MLAS sgemv): 0.96 and 0.87 of the
    # calibrated read rate on 31M and 125M models (ONNX_CPU_KERNELS below); prefill there
    # comes from that table, the 0.40 applies to CPUs without one.
    (_O, DeviceClass.X86_CPU, _M): Efficiency(0.90, 0.40, "measured: dev host, fp32 31M/125M models"),
    (_O, DeviceClass.ARM_CPU, _M): Efficiency(0.60, 0.40, "estimated"),
}


class KernelFamily(StrEnum):
    X86_AVX512 = "x86-avx512"
    X86_AVX2 = "x86-avx2"


# llama.cpp's CPU kernels as fractions of the CPU's fp32 GEMM rate (the profile's cpu_gflops),
# per ggml type: (decode = batch-1 dequantize + dot, prompt = batched). On few cores decode is
# bound by these kernels, not by memory: on the dev host (2 vCPU Xeon, AVX-512 VNNI, extra
# buffers off) every quantized type stayed at 8-14 GB/s of a 32 GB/s read rate. AVX-512 values
# are a least-squares fit to benchmarks/profile_check.py runs there (7 model shapes, 2.2M-340M
# parameters, 1 and 2 threads; residuals within about +-30%); k-quant prompts beat fp32 GEMM
# thanks to int8 dot products. Q2_K decode: a q2_k file (Q2_K with Q3_K/Q4_K/Q6_K mixed in)
# ran at 0.67 of the time 0.10 predicted both out of cache (200M params, 1024 x 12 layers,
# 74 MiB a token) and in cache (the demo), so 0.15; its prompt figure is an estimate, as are
# F32, BF16, Q5_0, Q5_1, Q4_1 and IQ4_NL. AVX2: estimates, twice the fraction (half the fp32 width, similar
# integer throughput). No table for Arm: there the published bandwidth efficiency
# (HARDWARE.md) already folds the kernels in.
CPU_KERNELS: dict[KernelFamily, dict[str, tuple[float, float]]] = {
    KernelFamily.X86_AVX512: {
        "F16": (0.073, 0.69), "Q8_0": (0.095, 0.62), "Q6_K": (0.10, 1.13), "Q5_K": (0.075, 1.13),
        "Q4_K": (0.118, 1.36), "Q4_0": (0.103, 0.50), "Q3_K": (0.107, 0.57),
        "F32": (0.045, 0.6), "BF16": (0.073, 0.69), "Q5_0": (0.09, 0.5), "Q5_1": (0.09, 0.5), "Q4_1": (0.10, 0.5),
        "Q2_K": (0.15, 0.9), "IQ4_NL": (0.10, 0.5),
    },
}
CPU_KERNELS[KernelFamily.X86_AVX2] = {k: (2 * d, 2 * p) for k, (d, p) in CPU_KERNELS[KernelFamily.X86_AVX512].items()}
# Same fit: attention over the f16 KV cache (flash attention off) as a fraction of the GEMM
# rate, and a fixed cost per layer per token (norms, rope, softmax, graph and thread sync)
# that dominates models of a few million parameters.
CPU_ATTENTION = (0.105, 0.60)  # (decode, prompt)
CPU_LAYER_S = (14e-6, 10e-6)  # seconds per layer per token (decode, prompt)
# ONNX Runtime's CPU kernels (MLAS) per ONNX precision, as fractions of the GEMM rate:
# (decode, prompt). Fitted to benchmarks/profile_check.py on the dev host (2 vCPU Xeon,
# AVX-512 VNNI, 1 thread, calibrated 16.4-17.2 GB/s read, 157-162 GFLOP/s; load average
# 0.5-0.8 on 2 cores), edgekit's exports (int4 = MatMulNBits block 32, accuracy_level 4),
# random-weight Llamas plus the demo model; measured per-token decode time (tg64, best of 3):
#   model (params, layers)  fp32 us/token (GB/s, GFLOP/s)  int4 us/token (GB/s, GFLOP/s)
#   tiny  (0.1M, 1)         27.6  (14.9,   7.4)            31.1  ( 2.1,  6.6)
#   demo  (2.6M, 4)         486   (21.6,  10.8)            169   (10.0, 31.0)
#   s30   (31M, 8)          6547  (16.3,   8.1)            1027  (16.7, 51.9)
#   s125  (125M, 12)        28191 (14.2,   7.1)            6992  ( 9.2, 28.6)
# fp32 decode is memory-bound from 31M up (efficiency above). Weights that stay in cache
# run faster than the DRAM roofline says: a calibrated profile's read curve gives the rate
# for the bytes per token (read_bandwidth; this VM reports a 480 MiB L3, yet reads fall from
# 30 to 15-17 GB/s between 64 and 128 MiB). The demo's 10 MB fp32 ran at 0.073 of the GEMM
# rate, 23 GB/s, above the DRAM read rate and within 2% of this kernel roof once the curve
# lifts the memory roof to 30 GB/s; s30's 17 MB int4 ran at 0.33.
# int4 out of cache (s125) reached 0.18 of GEMM; 0.21 keeps s125 and the demo within 20%
# and leaves s30 about 35% low. Prompt (pp512, GFLOP/s): fp32 100-117, int4 80-93 on
# s30/s125; the tiny model shows a cost per layer per prompt token of about 6 us.
# fp16 is not run on CPUs by the profiles; its row copies fp32 (estimated).
ONNX_CPU_KERNELS: dict[KernelFamily, dict[OnnxPrecision, tuple[float, float]]] = {
    KernelFamily.X86_AVX512: {
        OnnxPrecision.FP32: (0.073, 0.70), OnnxPrecision.INT4: (0.21, 0.56), OnnxPrecision.FP16: (0.073, 0.70),
    },
}
# AVX2 (estimated): decode twice the fraction as in CPU_KERNELS (batch-1 kernels do not
# scale with the vector width, the GEMM rate does); prompt the same fraction (GEMM-like).
ONNX_CPU_KERNELS[KernelFamily.X86_AVX2] = {
    k: (2 * d, p) for k, (d, p) in ONNX_CPU_KERNELS[KernelFamily.X86_AVX512].items()}
# Per generated token: GenAI's generator step, logits processing and the Python stream
# (fixed), plus per layer; the tiny 1-layer model above spends 25-28 us a token in total.
ONNX_CPU_TOKEN_S, ONNX_CPU_LAYER_S = 20e-6, 5e-6
ONNX_CPU_PROMPT_LAYER_S = 6e-6  # per layer per prompt token
# Accelerators pay kernel launches per layer per generated token (llama.cpp batches them in
# CUDA graphs; small models still top out well below the bandwidth roof). Estimates; a
# Jetson's slower CPU issues them more slowly. Used where the CPU kernel table is not.
LAYER_OVERHEAD_S: dict[tuple[Backend, DeviceClass | None], float] = {
    (Backend.CPU, None): CPU_LAYER_S[0],
    (Backend.CUDA, None): 20e-6,
    (Backend.CUDA, DeviceClass.JETSON): 40e-6,
    (Backend.METAL, None): 20e-6,
}


def kernel_family(isa: tuple[str, ...]) -> KernelFamily | None:
    flags = set(isa)
    return KernelFamily.X86_AVX512 if "avx512f" in flags else KernelFamily.X86_AVX2 if "avx2" in flags else None


# Memory a runtime costs before any model tensor: process, libraries, device context (GiB).
RUNTIME_OVERHEAD_GIB: dict[tuple[Runtime, Backend], tuple[float, str]] = {
    (Runtime.LLAMA_CPP, Backend.CPU): (0.057, "measured: edgekit.load process minus the model, dev host (58 MiB)"),
    (Runtime.LLAMA_CPP, Backend.CUDA): (0.40, "estimated: CUDA context + cuBLAS workspace"),
    (Runtime.LLAMA_CPP, Backend.METAL): (0.10, "estimated"),
    (Runtime.ONNXRUNTIME, Backend.CPU): (0.10, "measured: edgekit.load process, 0.1M-param model, dev host (101 MiB)"),
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


def read_bandwidth(profile: Profile, working_set_bytes: float, mode: str | None = None,
                   backend: Backend = Backend.CPU) -> float:
    """Bytes/s at which the CPU reads a working set of this size, every token.

    The profile's bandwidth is the DRAM (streaming) rate. A calibrated profile also carries
    the measured read curve (schema.ReadCurve); a CPU reading a working set that fits a
    cache gets the curve's speed-up over its own largest (DRAM) point, interpolated in log
    size, applied to the mode's bandwidth (so a power mode keeps its own DRAM figure).
    Without a curve (the shipped datasheet profiles), or for an accelerator (the curve is the
    CPU's), every size streams at the mode's bandwidth: today's roofline."""
    base = profile.mode(mode).bandwidth_gbs.value * 1e9
    curve = profile.read_curve
    if curve is None or backend is not Backend.CPU:
        return base
    pts, mib = curve.points, working_set_bytes / 2**20
    if mib >= pts[-1][0]:
        return base
    rate = pts[0][1]
    for (m0, r0), (m1, r1) in itertools.pairwise(pts):
        if m0 < mib <= m1:
            f = math.log(mib / m0) / math.log(m1 / m0)
            rate = r0 + f * (r1 - r0)
    return base * max(1.0, rate / pts[-1][1])


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


def llamacpp_compute_buffer(shapes: ModelShapes, ctx: int, n_ubatch: int = 512, flash_attn: bool = False,
                            n_outputs: int | None = None) -> int:
    """ggml's graph-allocator peak for one ubatch, fitted to the `compute buffer size` llama.cpp
    logs (CPU, within 3% over vocab, n_ff, heads and ctx; up to 8% high for wide models).

    Without flash attention the largest of: attention scores (n_head + 1 mask row per query,
    x n_kv), FFN activations (3 x n_ff) and logits (vocab per output), plus the residual
    stream. With flash attention the scores are never materialised; only an f16 mask (n_kv per
    query) is. llama.cpp reserves logits for every token of the ubatch (``n_outputs=None``);
    on a CPU only touched pages cost memory, and generation asks for the last token's only."""
    c = shapes.config
    ub = min(n_ubatch, ctx)
    outputs = ub if n_outputs is None else min(n_outputs, ub)
    q_dim, kv_dim, h = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim, c.hidden_size
    if flash_attn:
        peak = max(outputs * c.vocab_size + ub * 2 * h, ub * (3 * c.intermediate_size + 4 * h + ctx // 2))
    else:
        base = 3 * h + 2 * q_dim + 2 * kv_dim
        peak = max(ub * (ctx * (c.num_heads + 1) + base), outputs * c.vocab_size + ub * 3 * h,
                   ub * (3 * c.intermediate_size + base))
    return 4 * peak + 4 * c.vocab_size  # + the output (logits) buffer


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
             ctx: int, mode: str | None = None, kv_fill: int | None = None, prompt_len: int = 512,
             onnx_precision: OnnxPrecision | None = None) -> Cost:
    """Memory and speed of one candidate. ``kv_fill`` is the context already in the cache while
    generating (default: half the context, the average over a conversation that fills it);
    prompt speed is for a prompt of ``prompt_len`` tokens (capped at ``ctx``)."""
    eff = efficiency(runtime, profile, mode)
    cpu = backend is Backend.CPU
    if runtime is Runtime.LLAMA_CPP:
        kv_dtype = 2  # f16 cache, llama.cpp's default
        cells = pad_ctx(ctx)
        # GPU builds enable flash attention by default (-fa auto) and commit the whole reserve;
        # llama-cpp-python's CPU default leaves it off, and only touched pages count there.
        buffers = llamacpp_compute_buffer(shapes, cells, flash_attn=not cpu, n_outputs=1 if cpu else None)
    else:
        kv_dtype = 2 if backend is Backend.CUDA or onnx_precision is OnnxPrecision.FP16 else 4
        cells = ctx
        buffers = onnx_buffers(shapes, ctx)
    kv = kv_cache_bytes(shapes, cells, kv_dtype)
    overhead = int(RUNTIME_OVERHEAD_GIB[(runtime, backend)][0] * GIB)
    fill = ctx // 2 if kv_fill is None else kv_fill
    per_token = weights.per_token_bytes + kv_cache_bytes(shapes, max(fill, 1), kv_dtype)
    gen_tps = read_bandwidth(profile, per_token, mode, backend) / per_token * eff.decode
    flops = compute_flops(profile, backend)
    prompt_tps = flops * eff.prefill / (2 * shapes.matmul_params())
    family = kernel_family(profile.compute.isa) if cpu else None
    n_layers = shapes.config.num_layers
    layer_s = LAYER_OVERHEAD_S.get((backend, profile.device_class), LAYER_OVERHEAD_S[(backend, None)])
    c, plen = shapes.config, min(ctx, prompt_len)
    attn = 4 * n_layers * c.num_heads * c.head_dim  # FLOP per token per cached position (CPU roofs)
    if family is not None and runtime is Runtime.ONNXRUNTIME:  # ONNX on an x86 CPU: MLAS kernel roof
        k_dec, k_pre = ONNX_CPU_KERNELS[family][onnx_precision or OnnxPrecision.FP32]
        matmul = 2 * shapes.matmul_params()
        decode_s = matmul / (flops * k_dec) + attn * fill / (flops * CPU_ATTENTION[0])
        gen_tps = 1 / (max(1 / gen_tps, decode_s) + ONNX_CPU_TOKEN_S + n_layers * ONNX_CPU_LAYER_S)
        prompt_tps = 1 / (matmul / (flops * k_pre) + attn * plen / 2 / (flops * CPU_ATTENTION[1])
                          + n_layers * ONNX_CPU_PROMPT_LAYER_S)
    elif family is None:  # a GPU, or a CPU with no kernel table (Arm): bandwidth roof plus per-layer overhead
        gen_tps = 1 / (1 / gen_tps + n_layers * layer_s)
    else:  # llama.cpp on a CPU: its kernel roof, summed over the matmuls plus attention and per-layer work
        kernels = CPU_KERNELS[family]
        read = [t for t in shapes.tensors if t.is_matrix and (t.name != "token_embd.weight" or not shapes.has_output)]
        decode_s = sum(2 * t.numel / kernels.get(weights.types[t.name], (0.05, 0.5))[0] for t in read) / flops
        decode_s += attn * fill / (flops * CPU_ATTENTION[0])
        prompt_s = sum(2 * t.numel / kernels.get(weights.types[t.name], (0.05, 0.5))[1] for t in read) / flops
        prompt_s += attn * plen / 2 / (flops * CPU_ATTENTION[1]) + n_layers * CPU_LAYER_S[1]
        gen_tps = 1 / (max(1 / gen_tps, decode_s) + n_layers * CPU_LAYER_S[0])
        prompt_tps = 1 / prompt_s
    peak = weights.total_bytes + kv + buffers + overhead
    if runtime is Runtime.LLAMA_CPP and cpu:
        peak += extra_buffer_bytes(shapes, weights.types, profile.compute.isa)
    return Cost(weights.total_bytes, kv, buffers, overhead, peak, gen_tps, prompt_tps, eff)
