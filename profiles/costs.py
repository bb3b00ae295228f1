"""Memory and speed of one (artifact, runtime, device) combination: a roofline model.

Generation reads the weights (all but the embedding lookup; of a mixture of experts only the
router's top-k experts, while memory holds them all) plus the KV cache filled so far (attention
layers only) and a hybrid's per-sequence recurrent state for every token: tokens/s = bandwidth / bytes per token x efficiency. On x86 CPUs each weight
type's kernel has its own streaming rate and arithmetic roof (CPU_KERNELS): the time per token
sums, per type, the slower of the two, at the read rate of the cache level the model fits in
(a calibrated profile's read curve), plus fixed costs per layer and per token. Prompt processing is
compute-bound: about 2 x matmul parameters FLOP per token. Every factor that is not
arithmetic lives in a commented table in :mod:`.cost_tables`, with where it comes from.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

from .cost_tables import (
    _REPACK_ARM,
    _REPACK_AVX2,
    _REPACK_AVX512,
    CACHE_FOOTPRINT,
    CPU_ATTENTION,
    CPU_KERNEL_FALLBACK,
    CPU_KERNEL_TABLES,
    CPU_OVERHEADS,
    EFFICIENCY,
    GIB,
    KV_PAD,
    LAYER_OVERHEAD_S,
    RUNTIME_OVERHEAD_GIB,
    Basis,
    Efficiency,
    kernel_family,
)
from .schema import Backend, KernelRate, OnnxPrecision, Profile, Runtime, SourceKind
from .shapes import ModelShapes, WeightPlan, kv_cache_bytes, recurrent_state_bytes, tensor_bytes


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
