"""The profiler's commented data tables: every factor of the cost model that is not arithmetic.

Runtime efficiencies per device class and bandwidth basis, x86 CPU kernel rates per weight type
(llama.cpp and ONNX Runtime), fixed costs per layer and per token, the memory a runtime costs
before any tensor, and llama.cpp's repacked weight types per ISA -- each with where it comes from.
:mod:`.costs` reads them; a host calibrated with ``edgekit profile calibrate`` brings its own
kernel table instead (:mod:`.kernels`).
"""

from __future__ import annotations

from dataclasses import dataclass

from edgekit._compat import StrEnum

from .schema import Backend, DeviceClass, OnnxPrecision, Runtime

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
