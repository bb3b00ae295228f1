"""A profile of the machine we are running on, from /proc, NVML and Jetson's release files.

Nothing here needs a GPU library: NVML is used when ``pynvml`` (nvidia-ml-py) imports, and
Jetson boards are recognised from ``/etc/nv_tegra_release`` and the device-tree model. A
recognised board starts from its shipped profile (datasheet bandwidth per power mode) and
takes the live figures (MemAvailable, the nvpmodel mode) from the host. Paths are relative
to ``root`` so tests can point the detector at a fake filesystem.
"""

from __future__ import annotations

import logging
import os
import platform
import re
import shutil
import subprocess
from dataclasses import dataclass, replace
from importlib.util import find_spec
from pathlib import Path

from .schema import (
    Backend,
    Compute,
    DeviceClass,
    Figure,
    MemoryKind,
    OnnxPrecision,
    Origin,
    PowerMode,
    Profile,
    Runtime,
    RuntimeSupport,
    SourceKind,
)

log = logging.getLogger(__name__)

# ISA extensions that change which kernels llama.cpp / ONNX Runtime use; the rest of
# /proc/cpuinfo's flags are noise for this purpose.
KNOWN_ISA = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512bw", "avx512_vnni",
             "avx512_bf16", "amx_int8", "amx_bf16", "neon", "asimddp", "asimdhp", "i8mm", "sve", "sve2", "bf16")
# Not measured until `edgekit profile calibrate`: a CPU host's bandwidth cannot be read from
# /proc; this placeholder (one DDR4-2666 channel pair at ~60%) keeps the profile usable.
PLACEHOLDER_BANDWIDTH_GBS = 20.0
HOST_NAME = "host"


@dataclass(frozen=True)
class GpuFacts:
    """GPU 0 as NVML reports it."""

    name: str
    total_gib: float
    free_gib: float
    bus_bits: int
    mem_clock_mhz: int
    cuda_cc: str

    @property
    def bandwidth_gbs(self) -> float:
        return self.bus_bits / 8 * self.mem_clock_mhz * 2 / 1000  # DDR: two transfers per clock


@dataclass(frozen=True)
class HostFacts:
    cpu_model: str
    cores: int
    isa: tuple[str, ...]
    mem_total_gib: float
    mem_available_gib: float
    machine: str
    device_model: str = ""  # /proc/device-tree/model (Jetson, Raspberry Pi)
    l4t: str = ""
    nvpmodel_mode: str = ""
    gpu: GpuFacts | None = None


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity (a container's or taskset's limit), not the machine's."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def read_cpuinfo(root: Path) -> tuple[str, int, tuple[str, ...]]:
    text = _read(root / "proc/cpuinfo")
    names: dict[str, str] = {}
    flags: set[str] = set()
    processors = 0
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip().lower(), value.strip()
        if key == "processor":
            processors += 1
        elif key in ("model name", "hardware", "model") and value and not value.isdigit():
            names.setdefault(key, value)  # x86 "model" is a number; Arm boards put the board name there
        elif key in ("flags", "features"):
            flags |= set(value.split())
    model = names.get("model name") or names.get("hardware") or names.get("model", "")
    if "asimd" in flags:
        flags.add("neon")
    isa = tuple(f for f in KNOWN_ISA if f in flags)
    return model, processors, isa


def read_meminfo(root: Path) -> tuple[float, float]:
    """(MemTotal, MemAvailable) in GiB. MemAvailable, not MemFree: page cache is reclaimable
    (on Jetson, cuMemGetInfo reports MemFree and so undercounts)."""
    values: dict[str, int] = {}
    for line in _read(root / "proc/meminfo").splitlines():
        m = re.match(r"(\w+):\s+(\d+)\s*kB", line)
        if m:
            values[m.group(1)] = int(m.group(2))
    if "MemTotal" in values:
        return values["MemTotal"] / 2**20, values.get("MemAvailable", values.get("MemFree", 0)) / 2**20
    import psutil  # no /proc (macOS): psutil knows

    vm = psutil.virtual_memory()
    return vm.total / 2**30, vm.available / 2**30


def read_l4t(root: Path) -> str:
    m = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", _read(root / "etc/nv_tegra_release"))
    return f"{m.group(1)}.{m.group(2)}" if m else ""


def read_nvpmodel(root: Path) -> str:
    """The current power mode name from `nvpmodel -q` (only on the real root)."""
    if root != Path("/") or not shutil.which("nvpmodel"):
        return ""
    try:
        out = subprocess.run(["nvpmodel", "-q"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError) as e:
        log.info("nvpmodel -q failed: %s", e)
        return ""
    m = re.search(r"NV Power Mode:\s*(\S+)", out)
    return m.group(1) if m else ""


def read_nvml() -> GpuFacts | None:
    """GPU 0 through NVML, if nvidia-ml-py is installed and a driver answers."""
    if find_spec("pynvml") is None:
        return None
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            h = pynvml.nvmlDeviceGetHandleByIndex(0)
            name = pynvml.nvmlDeviceGetName(h)
            mem = pynvml.nvmlDeviceGetMemoryInfo(h)
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(h)
            return GpuFacts(name=name.decode() if isinstance(name, bytes) else str(name),
                            total_gib=mem.total / 2**30, free_gib=mem.free / 2**30,
                            bus_bits=int(pynvml.nvmlDeviceGetMemoryBusWidth(h)),
                            mem_clock_mhz=int(pynvml.nvmlDeviceGetMaxClockInfo(h, pynvml.NVML_CLOCK_MEM)),
                            cuda_cc=f"{major}.{minor}")
        finally:
            pynvml.nvmlShutdown()
    except Exception as e:  # any NVML failure means "no usable GPU", never a crash
        log.info("NVML not usable: %s", e)
        return None


def host_facts(root: Path = Path("/"), *, use_nvml: bool = True) -> HostFacts:
    model, processors, isa = read_cpuinfo(root)
    total, available = read_meminfo(root)
    cores = processors or usable_cores()
    return HostFacts(
        cpu_model=model or platform.processor() or platform.machine(), cores=cores, isa=isa,
        mem_total_gib=total, mem_available_gib=available, machine=platform.machine(),
        device_model=_read(root / "proc/device-tree/model").strip("\x00 \n"), l4t=read_l4t(root),
        nvpmodel_mode=read_nvpmodel(root), gpu=read_nvml() if use_nvml else None,
    )


def match_shipped(facts: HostFacts, shipped: dict[str, Profile]) -> Profile | None:
    """The shipped profile of this board (Jetson, Raspberry Pi), by device-tree model and memory."""
    if not facts.device_model:
        return None
    found = [p for p in shipped.values()
             if p.detect_model and all(s.lower() in facts.device_model.lower() for s in p.detect_model)]
    if not found:
        return None

    def score(p: Profile) -> tuple[float, int, int]:
        mode_known = any(m.name == facts.nvpmodel_mode for m in p.power_modes)
        return (abs(p.memory_gb.value - facts.mem_total_gib), 0 if mode_known else 1, len(p.name))

    return min(found, key=score)


def detect_host(root: Path = Path("/"), *, use_nvml: bool = True, name: str = HOST_NAME,
                facts: HostFacts | None = None) -> Profile:
    """This host's profile; ``facts`` already collected by the caller are used instead of reading them again."""
    from .store import shipped_profiles

    if facts is None:
        facts = host_facts(root, use_nvml=use_nvml)
    detected = SourceKind.DETECTED
    usable = Figure(round(facts.mem_available_gib, 2), detected, "MemAvailable at detection time")
    total = Figure(round(facts.mem_total_gib, 2), detected, "MemTotal")
    isa = facts.isa
    base = match_shipped(facts, shipped_profiles())
    if base is not None:
        software = dict(base.software)
        if facts.l4t:
            software["l4t"] = facts.l4t
        mode = facts.nvpmodel_mode if any(m.name == facts.nvpmodel_mode for m in base.power_modes) else base.default_mode
        return replace(base, name=name, display_name=f"This host: {facts.device_model} (from {base.name})",
                       memory_gb=total, usable_memory_gb=replace(usable, value=min(usable.value, total.value)),
                       compute=replace(base.compute, isa=isa or base.compute.isa),
                       default_mode=mode, software=software, origin=Origin.DETECTED, path="",
                       notes=f"Detected; figures per mode from the shipped profile {base.name}.")
    arm = facts.machine.lower() in ("aarch64", "arm64")
    cores = Figure(facts.cores, detected)
    runtimes = [RuntimeSupport(Runtime.LLAMA_CPP, Backend.CPU)]
    if find_spec("onnxruntime") is not None:
        runtimes.append(RuntimeSupport(Runtime.ONNXRUNTIME, Backend.CPU, (OnnxPrecision.FP32, OnnxPrecision.INT4)))
    if facts.gpu:
        g = facts.gpu
        bw = Figure(round(g.bandwidth_gbs, 1), detected, f"NVML: {g.bus_bits}-bit bus x {g.mem_clock_mhz} MHz x 2")
        return Profile(
            name=name, display_name=f"This host: {g.name}", device_class=DeviceClass.DISCRETE_GPU,
            memory_kind=MemoryKind.DISCRETE, memory_gb=Figure(round(g.total_gib, 2), detected, "NVML total"),
            usable_memory_gb=Figure(round(g.free_gib, 2), detected, "NVML free"),
            compute=Compute(facts.cpu_model, cores, isa, gpu_name=g.name, cuda_cc=g.cuda_cc),
            power_modes=(PowerMode("default", bw),), default_mode="default",
            runtimes=(RuntimeSupport(Runtime.LLAMA_CPP, Backend.CUDA),), origin=Origin.DETECTED,
            notes="Detected through NVML; GPU compute rate unknown (prompt speed uses the CPU figure).",
        )
    apple = platform.system() == "Darwin" and arm
    bw = Figure(PLACEHOLDER_BANDWIDTH_GBS, SourceKind.ESTIMATED, "not measured: run `edgekit profile calibrate`")
    if apple:
        runtimes[0] = RuntimeSupport(Runtime.LLAMA_CPP, Backend.METAL)
    return Profile(
        name=name, display_name=f"This host: {facts.cpu_model} ({facts.cores} cores)",
        device_class=DeviceClass.APPLE_SILICON if apple else DeviceClass.ARM_CPU if arm else DeviceClass.X86_CPU,
        memory_kind=MemoryKind.UNIFIED, memory_gb=total, usable_memory_gb=usable,
        compute=Compute(facts.cpu_model, cores, isa), power_modes=(PowerMode("default", bw),),
        default_mode="default", runtimes=tuple(runtimes), origin=Origin.DETECTED,
        notes="Detected; bandwidth and compute are placeholders until `edgekit profile calibrate`.",
    )
