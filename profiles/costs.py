"""Memory and speed of one (artifact, runtime, device) combination: a roofline model.

Generation reads the weights (all but the embedding lookup; of a mixture of experts only the
router's top-k experts, while memory holds them all) plus the KV cache filled so far (attention
layers only) and a hybrid's per-sequence recurrent state for every token: tokens/s = bandwidth / bytes per token x efficiency. On x86 CPUs each weight
type's kernel has its own streaming rate and arithmetic roof (CPU_KERNELS): the time per token
sums, per type, the slower of the two, at the read rate of the cache level the model fits in
(a calibrated profile's read curve), plus fixed costs per layer and per token. Prompt processing is
compute-bound: about 2 x matmul parameters FLOP per token. Every factor that is not
arithmetic lives in a commented table below, with where it comes from.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

from edgekit._compat import StrEnum

from .schema import Backend, DeviceClass, KernelRate, OnnxPrecision, Profile, Runtime, SourceKind
from .shapes import ModelShapes, WeightPlan, kv_cache_bytes, recurrent_state_bytes, tensor_bytes

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
    # Against a calibrated (numpy read) bandwidth: f16 weights streamed at 0.69 of it on the dev
    # host (the CPU_KERNELS fit; other types stream at a share of this, CpuKernel.stream).
    (_L, DeviceClass.X86_CPU, _M): Efficiency(0.69, 0.50, "measured: dev host, f16, 2.6M-200M params"),
    (_L, DeviceClass.ARM_CPU, _M): Efficiency(0.75, 0.50, "estimated: as x86 measured"),
    # ONNX Runtime (GenAI) decode is less tuned for single-stream batch-1 than llama.cpp.
    (_O, DeviceClass.JETSON, _D): Efficiency(0.40, 0.25, "estimated"),
    (_O, DeviceClass.DISCRETE_GPU, _D): Efficiency(0.65, 0.35, "estimated"),
    (_O, DeviceClass.APPLE_SILICON, _D): Efficiency(0.45, 0.40, "estimated (CPU EP)"),
    (_O, DeviceClass.ARM_CPU, _D): Efficiency(0.45, 0.40, "estimated"),
    (_O, DeviceClass.X86_CPU, _D): Efficiency(0.45, 0.40, "estimated"),
    # fp32 ONNX decode on the dev host streams at 0.85 of the calibrated read rate
    # (ONNX_CPU_KERNELS' fit); prefill there comes from that table, the 0.40 applies to CPUs without one.
    (_O, DeviceClass.X86_CPU, _M): Efficiency(0.85, 0.40, "measured: dev host, fp32, 2.6M-125M params"),
    (_O, DeviceClass.ARM_CPU, _M): Efficiency(0.60, 0.40, "estimated"),
}


class KernelFamily(StrEnum):
    X86_AVX512 = "x86-avx512"
    X86_AVX2 = "x86-avx2"


@dataclass(frozen=True)
class CpuKernel:
    """One weight type's matmul kernels on a CPU family, as fractions of the host's own rates.

    A batch-1 (decode) matmul takes the longer of two times: streaming the weights at
    ``stream`` x the runtime's decode efficiency x the read rate for the model's working set
    (DRAM, or a cache level when it fits), and the dequantize-and-dot arithmetic at ``decode``
    x the fp32 GEMM rate. Out of cache the first binds for every type; once the weights fit a
    cache, the second does (measured: the same q4_k_m kernel ran 2x faster in this VM's
    30 GB/s level than from DRAM, f16 only 1.2x)."""

    decode: float  # batch-1 dequantize + dot: fraction of the fp32 GEMM rate
    prompt: float  # batched prompt kernel: fraction of the fp32 GEMM rate
    stream: float  # weight streaming rate relative to the runtime's decode efficiency (F16 = 1)


# llama.cpp's CPU kernels per ggml type. AVX-512 values: benchmarks/profile_fit.py over the
# profile_check runs in benchmarks/fits/dev-host-avx512/ (2 vCPU Xeon, AVX-512 VNNI, extra
# buffers off, 1 thread, edgekit's bench loop): 8 model shapes from 2.6M to 200M parameters
# (1 to 321 MiB read a token), f16 and 6 quant mixes; 62 runs, residuals rms 8.5%, worst 26%
# (q2_k from DRAM). Q2_K/Q3_K/Q6_K are fitted through the mixes that carry them; Q4_0 and
# Q5_K rest on one model each (their first run, held out, had missed by +34% and +31% with
# guessed figures). The f16 arithmetic figure never bound and stays at the fit's prior. Q4_1,
# Q5_0, Q5_1, BF16, F32 and IQ4_NL copy their closest fitted neighbour (estimates). Prompt
# fractions: `profile_fit.py --metric prompt` over the same runs (pp512 from an empty context;
# rms 4.6%, worst 14%, where the previous figures gave rms 18%, worst 43%); k-quant prompts
# beat fp32 GEMM thanks to int8 dot products.
CPU_KERNELS: dict[KernelFamily, dict[str, CpuKernel]] = {
    KernelFamily.X86_AVX512: {
        "F32": CpuKernel(0.15, 0.60, 1.00), "F16": CpuKernel(0.20, 0.78, 1.00), "BF16": CpuKernel(0.20, 0.78, 1.00),
        "Q8_0": CpuKernel(0.20, 0.73, 0.69), "Q6_K": CpuKernel(0.25, 1.73, 0.65), "Q5_K": CpuKernel(0.20, 1.95, 0.36),
        "Q5_0": CpuKernel(0.20, 0.68, 0.36), "Q5_1": CpuKernel(0.20, 0.68, 0.36), "Q4_K": CpuKernel(0.23, 1.46, 0.42),
        "Q4_0": CpuKernel(0.10, 0.68, 0.69), "Q4_1": CpuKernel(0.10, 0.68, 0.69), "IQ4_NL": CpuKernel(0.10, 0.68, 0.69),
        "Q3_K": CpuKernel(0.22, 2.13, 0.69), "Q2_K": CpuKernel(0.25, 1.04, 0.69),
    },
}
# AVX2 (estimates): twice the fractions of the AVX-512 GEMM rate (half the fp32 width,
# similar integer throughput); streaming is a property of the memory system, unchanged.
CPU_KERNELS[KernelFamily.X86_AVX2] = {
    k: CpuKernel(2 * v.decode, 2 * v.prompt, v.stream) for k, v in CPU_KERNELS[KernelFamily.X86_AVX512].items()}
# Unknown types (a future ggml type) fall back to a slow, conservative kernel.
CPU_KERNEL_FALLBACK = CpuKernel(0.10, 0.50, 0.50)
# A model's weights share the caches with the KV cache, activations, code and the OS, while the
# calibrated curve reads one lone array: a model of B bytes a token reads at the curve's rate
# for CACHE_FOOTPRINT x B (same fit; 1.5, 2.5 and 3 fit worse: rms 13%, 9%, 10%).
CACHE_FOOTPRINT = 2.0
# Same fit: attention over the f16 KV cache (flash attention off) as a fraction of the GEMM
# rate (prompt: the prompt fit), and fixed costs per layer (norms, rope, softmax, graph and
# thread sync) and per token (sampling, detokenizing and edgekit's stream loop in Python),
# which dominate models of a few million parameters.
CPU_ATTENTION = (0.40, 0.14)  # (decode, prompt); ONNX Runtime shares these


@dataclass(frozen=True)
class CpuOverheads:
    """A runtime's fixed CPU costs, in seconds, beside its kernels."""

    token_s: float  # per generated token
    layer_s: float  # per layer per generated token
    prompt_layer_s: float  # per layer per prompt token
    # With more than one thread every graph node ends at a barrier: a cost per layer per
    # token x log2(threads). Zero until measured: on the 2-core dev host, 2-thread runs varied
    # by up to 2.5x between neighbouring quant types (the runtime's threads spin at barriers,
    # so any other process on the machine stalls them), too noisy to fit; profile_fit.py fits
    # it from runs with more threads on a quiet host.
    sync_s: float = 0.0


# llama.cpp: the fits above. ONNX Runtime: GenAI's generator step, logits processing and the
# Python stream per token, plus per layer (the ONNX fits below: prompt rms 5%, worst 11%).
CPU_OVERHEADS: dict[Runtime, CpuOverheads] = {
    Runtime.LLAMA_CPP: CpuOverheads(token_s=50e-6, layer_s=20e-6, prompt_layer_s=8e-6),
    Runtime.ONNXRUNTIME: CpuOverheads(token_s=41e-6, layer_s=11e-6, prompt_layer_s=1.7e-6),
}
# ONNX Runtime's CPU kernels (MLAS) per ONNX precision, edgekit's exports (int4 = MatMulNBits
# block 32, accuracy_level 4): benchmarks/profile_fit.py --runtime onnxruntime over the same
# runs (the demo model and random-weight Llamas of 32M and 125M parameters, fp32 and int4;
# 18 runs, rms 7%, worst 18%; CACHE_FOOTPRINT as fitted with llama.cpp). fp32 streams at
# 0.85 of the read rate (EFFICIENCY) and its arithmetic never bound (the prior); int4 streams
# at 0.65 of that and its arithmetic binds once the weights fit a cache (the demo: 6,000
# tokens/s). Prompt figures: `--metric prompt` (attention shared with llama.cpp's fit).
# fp16 is not run on CPUs by the profiles; its row copies fp32 (estimated).
ONNX_CPU_KERNELS: dict[KernelFamily, dict[str, CpuKernel]] = {  # keyed by OnnxPrecision
    KernelFamily.X86_AVX512: {
        OnnxPrecision.FP32: CpuKernel(0.20, 1.03, 1.0), OnnxPrecision.INT4: CpuKernel(0.45, 0.71, 0.65),
        OnnxPrecision.FP16: CpuKernel(0.20, 1.03, 1.0),
    },
}
# AVX2 (estimated): decode twice the fraction as in CPU_KERNELS (batch-1 kernels do not
# scale with the vector width, the GEMM rate does); prompt the same fraction (GEMM-like).
ONNX_CPU_KERNELS[KernelFamily.X86_AVX2] = {
    k: CpuKernel(2 * v.decode, v.prompt, v.stream) for k, v in ONNX_CPU_KERNELS[KernelFamily.X86_AVX512].items()}
# Each runtime's kernel table: ggml type names, or ONNX precisions (a StrEnum, so a precision's
# name looks it up too).
CPU_KERNEL_TABLES: dict[Runtime, dict[KernelFamily, dict[str, CpuKernel]]] = {
    Runtime.LLAMA_CPP: CPU_KERNELS,
    Runtime.ONNXRUNTIME: ONNX_CPU_KERNELS,
}
# Accelerators pay kernel launches per layer per generated token (llama.cpp batches them in
# CUDA graphs; small models still top out well below the bandwidth roof). Estimates; a
# Jetson's slower CPU issues them more slowly. Used where the CPU kernel table is not.
LAYER_OVERHEAD_S: dict[tuple[Backend, DeviceClass | None], float] = {
    (Backend.CPU, None): CPU_OVERHEADS[Runtime.LLAMA_CPP].layer_s,
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
    (Runtime.ONNXRUNTIME, Backend.CPU): (0.070, "measured: bench worker process, 0.1M-param model, dev host (79 MiB peak)"),
    (Runtime.ONNXRUNTIME, Backend.CUDA): (0.50, "estimated: CUDA context + cuDNN/cuBLAS"),
    (Runtime.ONNXRUNTIME, Backend.METAL): (0.10, "estimated"),
}

# llama.cpp's CPU "extra buffer" types copy matmul weights into a repacked layout at load
# time; the mmapped original pages stay resident (reclaimable page cache, but counted in
# RSS), so peak RSS holds those tensors twice. Types per ISA from ggml-cpu's repack.cpp
# (x86 AVX2 kernels; Arm dotprod kernels, Q4_K needs i8mm). On AMX hosts edgekit turns
# extra buffers off altogether (runtimes/llama_env.py: the AMX kernels crash in VMs).
_REPACK_AVX512 = {"Q4_0", "Q4_K", "Q2_K", "IQ4_NL"}  # Q2_K's repacked kernel needs AVX-512
_REPACK_AVX2 = {"Q4_0", "Q4_K", "IQ4_NL"}
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
    state_bytes: int = 0  # recurrent/convolution state of a hybrid's non-attention layers, one sequence

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_bytes + self.state_bytes + self.buffer_bytes + self.overhead_bytes


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


def kernel_read_rate(rate: KernelRate, working_set_bytes: float) -> float:
    """Bytes/s a measured kernel reads its weights at, for a model reading this many bytes a token:
    the measured point's rate, interpolated in log size between points, held past the ends."""
    pts, mib = rate.decode, working_set_bytes / 2**20
    if mib <= pts[0][0] or len(pts) == 1:
        return pts[0][1] * 1e9
    for (m0, r0), (m1, r1) in itertools.pairwise(pts):
        if m0 < mib <= m1:
            return (r0 + math.log(mib / m0) / math.log(m1 / m0) * (r1 - r0)) * 1e9
    return pts[-1][1] * 1e9


def measured_kernels(profile: Profile, runtime: Runtime, backend: Backend) -> dict[str, KernelRate]:
    """The host-measured kernel rates that apply: llama.cpp on the CPU of a calibrated profile."""
    if profile.kernels is None or runtime is not Runtime.LLAMA_CPP or backend is not Backend.CPU:
        return {}
    return dict(profile.kernels.types)


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


def ffn_width(shapes: ModelShapes) -> int:
    """Feed-forward activations per token: a MoE computes its routed experts (``ggml_mul_mat_id``:
    top-k x expert width) plus a shared expert, not the config's dense ``intermediate_size``."""
    e = shapes.experts
    return shapes.config.intermediate_size if e is None else e.n_active * e.expert_ff + e.shared_ff


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
    ff = ffn_width(shapes)
    if flash_attn:
        peak = max(outputs * c.vocab_size + ub * 2 * h, ub * (3 * ff + 4 * h + ctx // 2))
    else:
        base = 3 * h + 2 * q_dim + 2 * kv_dim
        peak = max(ub * (ctx * (c.num_heads + 1) + base), outputs * c.vocab_size + ub * 3 * h,
                   ub * (3 * ff + base))
    return 4 * peak + 4 * c.vocab_size  # + the output (logits) buffer


def onnx_buffers(shapes: ModelShapes, ctx: int, prompt: int = 1024) -> int:
    """ONNX Runtime runs the whole prompt at once: logits for every prompt position, FFN
    activations and per-head attention scores for a prompt of up to ``prompt`` tokens."""
    c = shapes.config
    p = min(ctx, prompt)
    return 4 * p * (c.vocab_size + 3 * ffn_width(shapes) + c.num_heads * p)


def pad_ctx(ctx: int) -> int:
    return -(-ctx // KV_PAD) * KV_PAD


def extra_buffer_bytes(shapes: ModelShapes, types: dict[str, str], isa: tuple[str, ...]) -> int:
    """Bytes llama.cpp's CPU backend copies into repacked buffers for this ISA."""
    flags = set(isa)
    if "amx_int8" in flags:
        return 0
    repack = (_REPACK_AVX512 if "avx512f" in flags else _REPACK_AVX2 if "avx2" in flags
              else _REPACK_ARM if {"asimddp", "dotprod"} & flags else set())
    # ggml repacks a matrix in blocks of 8 rows (4 for IQ4_NL on Arm): others stay in place
    return sum(tensor_bytes(t.ne, types[t.name]) for t in shapes.tensors
               if t.is_matrix and t.name != "token_embd.weight" and not shapes.is_lookup(t.name) and types[t.name] in repack
               and len(t.ne) >= 2 and t.ne[1] % 8 == 0)


def prompt_once_numel(shapes: ModelShapes, weights: WeightPlan) -> dict[str, int]:
    """Parameters per type that llama.cpp's prompt pass multiplies for the last token only.

    It asks for the last token's logits alone, and its graph keeps only that token after the
    last layer's attention (``inp_out_ids``, src/models/llama.cpp): the LM head and the last
    layer's FFN are one row of the prompt. (Used with measured kernels; the fitted shares were
    fitted with every row counted.)"""
    last = f"blk.{shapes.config.num_layers - 1}.ffn_"
    head = "output.weight" if shapes.has_output else "token_embd.weight"
    out: dict[str, int] = {}
    for t in shapes.decode_matrices():
        if t.name == head or t.name.startswith(last):
            kind = weights.types[t.name]
            out[kind] = out.get(kind, 0) + round(t.numel * shapes.read_fraction(t))
    return out


def _matmul_groups(shapes: ModelShapes, weights: WeightPlan, runtime: Runtime,
                   precision: OnnxPrecision | None) -> dict[str, tuple[int, int]]:
    """Weights a generated token multiplies by, per kernel type: type -> (parameters, bytes).

    llama.cpp: every matrix but a separate embedding lookup, in its GGUF type; of an expert
    tensor the active experts' share (``ggml_mul_mat_id`` reads only the experts routed to). ONNX:
    the export's matmuls run in its precision (int4 weight-only MatMulNBits, fp32 activations);
    all bytes read a token go with them."""
    read = shapes.decode_matrices()
    if runtime is Runtime.ONNXRUNTIME:
        label = (precision or OnnxPrecision.FP32).value
        return {label: (round(sum(t.numel * shapes.read_fraction(t) for t in read)), weights.per_token_bytes)}
    groups: dict[str, tuple[int, int]] = {}
    for t in read:
        kind, f = weights.types[t.name], shapes.read_fraction(t)
        n, b = groups.get(kind, (0, 0))
        groups[kind] = (n + round(t.numel * f), b + round(tensor_bytes(t.ne, kind) * f))
    return groups


def estimate(shapes: ModelShapes, weights: WeightPlan, runtime: Runtime, backend: Backend, profile: Profile, *,
             ctx: int, mode: str | None = None, kv_fill: int | None = None, prompt_len: int = 512,
             onnx_precision: OnnxPrecision | None = None, threads: int | None = None) -> Cost:
    """Memory and speed of one candidate. ``kv_fill`` is the context already in the cache while
    generating (default: half the context, the average over a conversation that fills it);
    prompt speed is for a prompt of ``prompt_len`` tokens (capped at ``ctx``). ``threads`` is
    the CPU threads decoding (default: the profile's cores); the profile's bandwidth and GEMM
    rate must be for as many (`edgekit profile calibrate` measures with all cores)."""
    eff = efficiency(runtime, profile, mode)
    cpu = backend is Backend.CPU
    if runtime is Runtime.LLAMA_CPP:
        kv_dtype = 2  # f16 cache, llama.cpp's default
        cells = pad_ctx(ctx)
        # GPU builds enable flash attention by default (-fa auto) and commit the whole reserve;
        # llama-cpp-python's CPU default leaves it off, and only touched pages count there.
        buffers = llamacpp_compute_buffer(shapes, cells, flash_attn=not cpu, n_outputs=1 if cpu else None)
        v_trans = cpu  # no flash attention: V stored transposed, padded to the widest layer's
        # edgekit's runtime keeps llama.cpp's default swa_full = true (llama-cpp-python passes it on):
        # sliding layers cache the whole context, and attention runs over every used cell under a
        # mask. Not false: llama-cpp-python reuses a cached prefix by truncating the cache, which a
        # window-sized cache cannot give back (llama.cpp's server re-processes the prompt instead).
        swa_full = True
    else:
        kv_dtype = 2 if backend is Backend.CUDA or onnx_precision is OnnxPrecision.FP16 else 4
        cells = ctx
        buffers = onnx_buffers(shapes, ctx)
        v_trans = False
        swa_full = False  # ONNX Runtime GenAI's sliding window keeps the window
    kv = kv_cache_bytes(shapes, cells, kv_dtype, v_trans=v_trans, swa_full=swa_full)
    state = recurrent_state_bytes(shapes)  # f32 in llama.cpp, one sequence; read and rewritten each token
    overhead = int(RUNTIME_OVERHEAD_GIB[(runtime, backend)][0] * GIB)
    fill = ctx // 2 if kv_fill is None else kv_fill
    per_token = (weights.per_token_bytes + kv_cache_bytes(shapes, max(fill, 1), kv_dtype, v_trans=v_trans,
                                                          swa_full=swa_full) + state)
    # the cache sees every weight tokens cycle through: a MoE's experts change from token to token,
    # so its working set is all of them although one token reads only the routed ones
    working = per_token + weights.cycled_bytes
    gen_tps = read_bandwidth(profile, working, mode, backend) / per_token * eff.decode
    flops = compute_flops(profile, backend)
    prompt_tps = flops * eff.prefill / (2 * shapes.matmul_params())
    family = kernel_family(profile.compute.isa) if cpu else None
    n_layers = shapes.config.num_layers
    layer_s = LAYER_OVERHEAD_S.get((backend, profile.device_class), LAYER_OVERHEAD_S[(backend, None)])
    c, plen = shapes.config, min(ctx, prompt_len)
    attn = 4 * shapes.attention_layers * c.num_heads * c.head_dim  # FLOP per token per cached position (CPU roofs)
    host = measured_kernels(profile, runtime, backend)
    if family is None and not host:  # a GPU, or a CPU with no kernel table (Arm): bandwidth roof plus overhead
        gen_tps = 1 / (1 / gen_tps + n_layers * layer_s)
    else:  # a CPU with a kernel table: per weight type the slower of streaming and arithmetic
        read_rate = read_bandwidth(profile, CACHE_FOOTPRINT * working, mode) * eff.decode
        kv_s = max((per_token - weights.per_token_bytes) / read_rate, attn * fill / (flops * CPU_ATTENTION[0]))
        table = CPU_KERNEL_TABLES[runtime].get(family) if family is not None else None
        # The streaming shares were fitted against a calibrated read rate with the runs' thread
        # count; a datasheet profile's efficiency comes from published results over all types,
        # which already fold them in (and with many cores no one type's kernel holds memory back).
        measured = bandwidth_basis(profile, mode) is Basis.MEASURED
        decode_s = kv_s
        prompt_s = attn * plen / 2 / (flops * CPU_ATTENTION[1])
        once = prompt_once_numel(shapes, weights) if host else {}
        for t, (n, b) in _matmul_groups(shapes, weights, runtime, onnx_precision).items():
            k = (table or {}).get(t, CPU_KERNEL_FALLBACK)
            if t in host:  # measured on this host: the type's own rate at this working set
                decode_s += b / kernel_read_rate(host[t], working)
            else:
                decode_s += max(b / (read_rate * (k.stream if measured else 1.0)), 2 * n / (flops * k.decode))
            n -= once.get(t, 0) * (plen - 1) // plen if once else 0
            gflops = host[t].prompt_gflops if t in host else 0.0
            prompt_s += 2 * n / (gflops * 1e9) if gflops > 0 else 2 * n / (flops * k.prompt)
        fixed = CPU_OVERHEADS[runtime]
        layer_fixed = fixed.layer_s
        if host and profile.kernels is not None and profile.kernels.layer_us is not None:
            layer_fixed = profile.kernels.layer_us * 1e-6  # measured on the host with the kernels
        per_layer_s = layer_fixed + fixed.sync_s * math.log2(max(1, threads or profile.compute.cpu_cores.value))
        gen_tps = 1 / (decode_s + fixed.token_s + n_layers * per_layer_s)
        prompt_tps = 1 / (prompt_s + n_layers * fixed.prompt_layer_s)
    peak = weights.total_bytes + kv + state + buffers + overhead
    if runtime is Runtime.LLAMA_CPP and cpu:
        peak += extra_buffer_bytes(shapes, weights.types, profile.compute.isa)
    return Cost(weights.total_bytes, kv, buffers, overhead, peak, gen_tps, prompt_tps, eff, state)
