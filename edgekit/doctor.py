"""``edgekit doctor``: what this host can run, and the fix for each mismatch.

The most common GPU failure is silent: llama-cpp-python built without CUDA (``CUDACXX`` unset
at build time, or pip reusing a cached CPU wheel) runs on the CPU, ten times slower, and says
nothing. Doctor reads what the engines were built with and what hardware the host has, and
prints one line with the fix for every mismatch.

Two halves, so tests can feed recorded outputs of the native calls for hardware this machine
does not have:

* :func:`gather` makes the native calls and reads the files (llama.cpp's system-info string
  and backend devices, NVML through ``pynvml`` or ``libnvidia-ml`` via ctypes, Jetson's
  ``/etc/nv_tegra_release`` and ``nvpmodel -q``, ONNX Runtime's providers, the loaded CUDA
  libraries) into a :class:`Probes` record of raw outputs, JSON-serialisable;
* :func:`diagnose` turns a :class:`Probes` into facts and findings and touches nothing.

A missing library, driver or GPU is a fact ("no NVML"), never an error.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import logging
import os
import platform
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# compute capability -> architecture family (CMAKE_CUDA_ARCHITECTURES is major*10+minor).
CUDA_FAMILIES: dict[str, str] = {
    "5.3": "Maxwell (Jetson Nano)", "6.1": "Pascal (GTX 10)", "6.2": "Pascal (Jetson TX2)",
    "7.0": "Volta (V100)", "7.2": "Volta (Jetson Xavier)", "7.5": "Turing (T4, RTX 20)",
    "8.0": "Ampere (A100)", "8.6": "Ampere (RTX 30, A10, A40)", "8.7": "Ampere (Jetson Orin)",
    "8.9": "Ada (RTX 40, L4, L40)", "9.0": "Hopper (H100, H200, GH200)", "10.0": "Blackwell (B200, GB200)",
    "10.3": "Blackwell (B300)", "11.0": "Blackwell (Jetson Thor)", "12.0": "Blackwell (RTX 50, RTX PRO)",
    "12.1": "Blackwell (DGX Spark)",
}
# Jetson boards NVML cannot see: device-tree model substring -> compute capability, first match wins
# ("Orin Nano" is an Orin, so Orin comes before the original Nano). CUDA 13 numbers Thor 11.0 (was 10.1).
JETSON_CC: tuple[tuple[str, str], ...] = (
    ("thor", "11.0"), ("orin", "8.7"), ("xavier", "7.2"), ("tx2", "6.2"), ("nano", "5.3"),
)
# Which nvcc can build for an architecture: (lowest arch, highest arch) -> (first CUDA, last CUDA major).
# CUDA 13 dropped everything below Turing (sm_75); Thor needs CUDA 13 (sm_110), Blackwell 12.8.
NVCC_RANGE: tuple[tuple[int, int, str, int], ...] = (
    (110, 119, "13.0", 99), (100, 109, "12.8", 99), (120, 129, "12.8", 99), (89, 90, "11.8", 99),
    (75, 88, "10.0", 99), (50, 72, "9.0", 12),
)
# CPU features a portable (GGML_NATIVE=OFF) build leaves unused on a CPU that has them:
# /proc/cpuinfo flag -> llama.cpp system-info feature
CPU_UPGRADES = (("avx512f", "AVX512"), ("avx512_vnni", "AVX512_VNNI"), ("avx512_bf16", "AVX512_BF16"),
                ("avx_vnni", "AVX_VNNI"), ("amx_int8", "AMX_INT8"), ("i8mm", "MATMUL_INT8"), ("asimddp", "DOTPROD"))
# Shared libraries whose presence in this process tells which CUDA runtime an engine loaded.
NATIVE_LIB_PATTERN = re.compile(r"lib(cudart|cublas|cublasLt|cudnn|ggml-cuda|ggml-metal|ggml-vulkan|"
                                r"onnxruntime_providers_cuda|nvidia-ml)[.-][^/]*$")
# The CUDA runtime libraries a CUDA build of ONNX Runtime dlopens (cuDNN 9 for ORT >= 1.19).
ORT_CUDA_LIBS = ("libcudart.so.{cuda}", "libcublas.so.{cuda}", "libcublasLt.so.{cuda}", "libcudnn.so.9")
# Distributions that each install the importable ``onnxruntime`` (or ``onnxruntime_genai``) module:
# two of one group in one environment overwrite each other's files.
MODULE_CLASHES: dict[str, tuple[str, ...]] = {
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino",
                    "onnxruntime-qnn"),
    "onnxruntime_genai": ("onnxruntime-genai", "onnxruntime-genai-cuda", "onnxruntime-genai-directml"),
}
DISTRIBUTIONS = ("llama-cpp-python", *MODULE_CLASHES["onnxruntime"], *MODULE_CLASHES["onnxruntime_genai"],
                 "nvidia-ml-py", "pynvml", "torch")
# /proc/cpuinfo flags that decide which llama.cpp CPU kernels can run (the rest is noise here)
CPU_FLAGS = frozenset({"avx", "avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16",
                       "amx_int8", "amx_bf16", "asimd", "asimddp", "asimdhp", "i8mm", "sve", "sve2", "bf16"})
# llama.cpp system-info backends that offload to a GPU
GPU_BACKENDS = ("CUDA", "Metal", "Vulkan", "HIP", "ROCm", "SYCL", "OpenCL", "MUSA", "CANN")


@dataclass
class Probes:
    """Raw outputs of the native calls and files doctor reads; each None/"" when absent.

    Recorded as JSON (``edgekit doctor --json`` prints it under ``probes``) and replayed by
    ``edgekit doctor --probes FILE`` and the tests."""

    machine: str = ""
    cpu_flags: list[str] = field(default_factory=list)
    distributions: dict[str, str] = field(default_factory=dict)
    llama: dict[str, Any] | None = None  # version, system_info, gpu_offload, backends, devices
    llama_error: str = ""
    nvml: dict[str, Any] | None = None  # source, driver_version, cuda_driver_version, devices
    nvml_error: str = ""
    tegra_release: str = ""  # /etc/nv_tegra_release
    device_model: str = ""  # /proc/device-tree/model
    nvpmodel: str = ""  # `nvpmodel -q` stdout
    ort: dict[str, Any] | None = None  # version, providers, device, package_name, cuda_version
    ort_error: str = ""
    genai: dict[str, Any] | None = None  # version, cuda_available
    genai_error: str = ""
    nvcc: dict[str, str] | None = None  # path, version
    libraries: dict[str, str | None] = field(default_factory=dict)  # soname -> path (None: not loadable)
    wheel_libraries: dict[str, str] = field(default_factory=dict)  # not loadable, but in a pip nvidia-* wheel
    loaded_libraries: list[str] = field(default_factory=list)  # CUDA/GPU libraries mapped into this process

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Probes:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class Finding:
    level: str  # "error": it will not work / run slowly without saying; "warning": it may; "info": a fact to act on
    topic: str
    problem: str
    fix: str

    def line(self) -> str:
        return f"{self.level}: {self.topic}: {self.problem} -- {self.fix}"


@dataclass
class Report:
    facts: dict[str, dict[str, Any]]
    findings: list[Finding]
    probes: Probes

    def to_dict(self) -> dict[str, Any]:
        return {"facts": self.facts, "findings": [dataclasses.asdict(f) for f in self.findings],
                "probes": dataclasses.asdict(self.probes)}


# --- parsing the raw outputs ------------------------------------------------------------------

def parse_system_info(text: str) -> dict[str, dict[str, str]]:
    """llama_print_system_info(): ``NAME : KEY = VALUE | KEY = VALUE | NAME2 : ...`` -> {NAME: {KEY: VALUE}}.

    The string is built per registered backend that exports ggml_backend_get_features
    (llama.cpp src/llama.cpp); a backend without features (e.g. BLAS) is not in it."""
    out: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for part in (p.strip() for p in text.split("|")):
        if not part:
            continue
        m = re.match(r"^([A-Za-z][\w-]*)\s*:\s*(.*)$", part)
        if m and " = " not in m.group(1):  # "CUDA : ARCHS = 900" starts a backend
            current = out.setdefault(m.group(1), {})
            part = m.group(2)
        if current is None:
            continue
        key, sep, value = part.partition("=")
        if sep:
            current[key.strip()] = value.strip()
    return out


def parse_tegra_release(text: str) -> str:
    """``# R36 (release), REVISION: 4.3, ...`` -> "36.4.3" (the L4T version)."""
    m = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text)
    return f"{m.group(1)}.{m.group(2)}" if m else ""


def parse_nvpmodel(text: str) -> tuple[str, str]:
    """`nvpmodel -q` -> (mode name, mode id): ``NV Power Mode: MAXN`` and the id on the next line."""
    m = re.search(r"NV Power Mode:\s*(\S+)\s*\n\s*(\d+)?", text)
    return (m.group(1), m.group(2) or "") if m else ("", "")


def compiled_archs(cuda_features: dict[str, str]) -> list[int]:
    """ggml-cuda's ARCHS feature (nvcc's __CUDA_ARCH_LIST__, e.g. "750,800,860") -> [75, 80, 86]."""
    return [int(a) // 10 for a in re.findall(r"\d+", cuda_features.get("ARCHS", ""))]


def cuda_arch(cc: str) -> int:
    major, _, minor = cc.partition(".")
    return int(major) * 10 + int(minor or 0)


def jetson_cc(device_model: str) -> str:
    low = device_model.lower()
    return next((cc for key, cc in JETSON_CC if key in low), "")


# --- gathering (the native calls) -------------------------------------------------------------

def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _distributions() -> dict[str, str]:
    out = {}
    for dist in DISTRIBUTIONS:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


def probe_llama(device_memory: bool = True) -> dict[str, Any]:
    """llama.cpp's build: its system-info string, GPU offload support and the ggml backend devices.

    ``device_memory`` asks each device for its memory, which creates a CUDA context (hundreds of
    MB of GPU memory, of RAM on a Jetson): the bench parent process, which measures memory, skips it."""
    import llama_cpp

    info = llama_cpp.llama_print_system_info().decode(errors="replace").strip()
    out: dict[str, Any] = {"version": getattr(llama_cpp, "__version__", ""), "system_info": info,
                           "gpu_offload": bool(llama_cpp.llama_supports_gpu_offload())}
    try:
        out.update(_ggml_devices(Path(llama_cpp.__file__).parent / "lib", device_memory))
    except (OSError, AttributeError) as e:  # an older layout: the system-info string is enough
        log.info("ggml backend registry not readable: %s", e)
    return out


def _ggml_devices(libdir: Path, device_memory: bool) -> dict[str, Any]:
    """Registered ggml backends and devices, from libggml (already loaded by llama_cpp: same handle)."""
    candidates = sorted(libdir.glob("libggml.so*")) + sorted(libdir.glob("libggml.dylib")) + sorted(libdir.glob("ggml.dll"))
    if not candidates:
        raise OSError(f"no libggml in {libdir}")
    lib = ctypes.CDLL(str(candidates[0]))
    vp, sz, cs = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p
    for name, res, args in (("ggml_backend_reg_count", sz, []), ("ggml_backend_reg_get", vp, [sz]),
                            ("ggml_backend_reg_name", cs, [vp]), ("ggml_backend_dev_count", sz, []),
                            ("ggml_backend_dev_get", vp, [sz]), ("ggml_backend_dev_name", cs, [vp]),
                            ("ggml_backend_dev_description", cs, [vp]), ("ggml_backend_dev_type", ctypes.c_int, [vp]),
                            ("ggml_backend_dev_memory", None, [vp, ctypes.POINTER(sz), ctypes.POINTER(sz)])):
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = res, args
    dev_types = {0: "cpu", 1: "gpu", 2: "igpu", 3: "accel"}  # enum ggml_backend_dev_type
    backends = [lib.ggml_backend_reg_name(lib.ggml_backend_reg_get(i)).decode() for i in range(lib.ggml_backend_reg_count())]
    devices = []
    for i in range(lib.ggml_backend_dev_count()):
        dev = lib.ggml_backend_dev_get(i)
        free, total = sz(0), sz(0)
        if device_memory:
            lib.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        devices.append({"name": lib.ggml_backend_dev_name(dev).decode(),
                        "description": lib.ggml_backend_dev_description(dev).decode(errors="replace"),
                        "type": dev_types.get(lib.ggml_backend_dev_type(dev), "unknown"),
                        "memory_total_bytes": total.value if device_memory else None})
    return {"backends": backends, "devices": devices}


def probe_nvml() -> dict[str, Any]:
    """The driver and every GPU NVML sees: through pynvml (nvidia-ml-py) when installed, else libnvidia-ml."""
    try:
        import pynvml
    except ImportError:
        return _nvml_ctypes()
    pynvml.nvmlInit()
    try:
        def s(v: Any) -> str:
            return v.decode() if isinstance(v, bytes) else str(v)

        devices = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(h)
            mem = pynvml.nvmlDeviceGetMemoryInfo(h)
            devices.append({"index": i, "name": s(pynvml.nvmlDeviceGetName(h)), "cuda_cc": f"{major}.{minor}",
                            "memory_total_bytes": int(mem.total), "memory_free_bytes": int(mem.free)})
        return {"source": "pynvml", "driver_version": s(pynvml.nvmlSystemGetDriverVersion()),
                "cuda_driver_version": int(pynvml.nvmlSystemGetCudaDriverVersion()), "devices": devices}
    finally:
        pynvml.nvmlShutdown()


class _NvmlMemory(ctypes.Structure):
    _fields_ = [("total", ctypes.c_ulonglong), ("free", ctypes.c_ulonglong), ("used", ctypes.c_ulonglong)]


def _nvml_ctypes() -> dict[str, Any]:
    name = ctypes.util.find_library("nvidia-ml") or "libnvidia-ml.so.1"
    lib = ctypes.CDLL(name)  # OSError when there is no driver: the caller records it

    def check(rc: int, call: str) -> None:
        if rc != 0:
            raise OSError(f"{call} returned NVML error {rc}")

    check(lib.nvmlInit_v2(), "nvmlInit_v2")
    try:
        buf = ctypes.create_string_buffer(96)
        check(lib.nvmlSystemGetDriverVersion(buf, 96), "nvmlSystemGetDriverVersion")
        cuda = ctypes.c_int(0)
        check(lib.nvmlSystemGetCudaDriverVersion(ctypes.byref(cuda)), "nvmlSystemGetCudaDriverVersion")
        n = ctypes.c_uint(0)
        check(lib.nvmlDeviceGetCount_v2(ctypes.byref(n)), "nvmlDeviceGetCount_v2")
        devices = []
        for i in range(n.value):
            h = ctypes.c_void_p()
            check(lib.nvmlDeviceGetHandleByIndex_v2(i, ctypes.byref(h)), "nvmlDeviceGetHandleByIndex_v2")
            dname = ctypes.create_string_buffer(96)
            check(lib.nvmlDeviceGetName(h, dname, 96), "nvmlDeviceGetName")
            major, minor = ctypes.c_int(0), ctypes.c_int(0)
            check(lib.nvmlDeviceGetCudaComputeCapability(h, ctypes.byref(major), ctypes.byref(minor)),
                  "nvmlDeviceGetCudaComputeCapability")
            mem = _NvmlMemory()
            check(lib.nvmlDeviceGetMemoryInfo(h, ctypes.byref(mem)), "nvmlDeviceGetMemoryInfo")
            devices.append({"index": i, "name": dname.value.decode(errors="replace"),
                            "cuda_cc": f"{major.value}.{minor.value}", "memory_total_bytes": mem.total,
                            "memory_free_bytes": mem.free})
        return {"source": "libnvidia-ml", "driver_version": buf.value.decode(), "cuda_driver_version": cuda.value,
                "devices": devices}
    finally:
        lib.nvmlShutdown()


def elf_needed(path: Path) -> list[str]:
    """DT_NEEDED entries of a 64-bit little-endian ELF shared library (x86-64, aarch64), read from
    its section headers without loading it ([] for anything else). The 300 MB CUDA provider of
    ONNX Runtime is read a few hundred bytes at a time."""
    import struct

    with open(path, "rb") as f:
        ident = f.read(64)
        if ident[:4] != b"\x7fELF" or ident[4] != 2 or ident[5] != 1:
            return []
        shoff, = struct.unpack_from("<Q", ident, 0x28)
        shentsize, shnum = struct.unpack_from("<HH", ident, 0x3A)
        f.seek(shoff)
        sections = [struct.unpack_from("<IIQQQQIIQQ", f.read(shentsize)) for _ in range(shnum)]
        dynamic = next((sh for sh in sections if sh[1] == 6), None)  # SHT_DYNAMIC
        if dynamic is None:
            return []
        strtab = sections[dynamic[6]]  # sh_link: its string table (.dynstr)
        f.seek(dynamic[4])
        raw = f.read(dynamic[5])
        f.seek(strtab[4])
        strings = f.read(strtab[5])
    out = []
    for tag, value in struct.iter_unpack("<qQ", raw[: len(raw) // 16 * 16]):
        if tag == 0:  # DT_NULL
            break
        if tag == 1:  # DT_NEEDED
            out.append(strings[value:strings.index(b"\0", value)].decode())
    return out


def probe_ort() -> dict[str, Any]:
    import onnxruntime as ort

    info: dict[str, Any] = {"version": ort.__version__, "providers": list(ort.get_available_providers()),
                            "device": ort.get_device()}
    provider = Path(ort.__file__).parent / "capi" / "libonnxruntime_providers_cuda.so"
    if provider.is_file():  # the CUDA libraries it is linked against (cuDNN is dlopened later, not listed)
        info["cuda_provider_needs"] = [n for n in elf_needed(provider) if re.match(r"lib(cu|nv)", n) and n != "libcuda.so.1"]
    try:  # GPU packages record the CUDA/cuDNN they were built with
        from onnxruntime.capi import build_and_package_info as b

        info.update({k: getattr(b, k) for k in ("package_name", "cuda_version", "cudnn_version") if hasattr(b, k)})
    except ImportError:
        pass
    return info


def probe_genai() -> dict[str, Any]:
    import onnxruntime_genai as og

    return {"version": getattr(og, "__version__", ""),
            "cuda_available": bool(og.is_cuda_available()) if hasattr(og, "is_cuda_available") else None}


def probe_nvcc() -> dict[str, str] | None:
    """nvcc on PATH, else the toolkit's usual place (JetPack does not put it on PATH)."""
    path = shutil.which("nvcc") or next((p for p in ("/usr/local/cuda/bin/nvcc",) if os.access(p, os.X_OK)), None)
    if not path:
        return None
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError) as e:
        log.info("nvcc --version failed: %s", e)
        return {"path": path, "version": ""}
    m = re.search(r"release (\d+\.\d+)", out)
    return {"path": path, "version": m.group(1) if m else ""}


def ort_cuda_libraries(ort: dict[str, Any]) -> list[str]:
    """What a CUDA ONNX Runtime loads: its provider's linked CUDA libraries, plus cuDNN 9 (dlopened);
    from the CUDA version it was built for when the provider library was not found."""
    needs = list(ort.get("cuda_provider_needs") or [])
    if not needs:
        cuda = str(ort.get("cuda_version") or "12").split(".")[0]
        needs = [s.format(cuda=cuda) for s in ORT_CUDA_LIBS]
    return needs + [so for so in ("libcudnn.so.9",) if so not in needs]


def probe_libraries(sonames: list[str]) -> dict[str, str | None]:
    """Whether the dynamic loader finds each library (as ONNX Runtime's dlopen would)."""
    out: dict[str, str | None] = {}
    for soname in sonames:
        try:
            ctypes.CDLL(soname)
            out[soname] = _mapped_path(soname) or soname
        except OSError:
            out[soname] = None
    return out


def find_in_wheels(sonames: list[str]) -> dict[str, str]:
    """Where pip's nvidia-* wheels (torch's, onnxruntime-gpu[cuda,cudnn]'s) keep these libraries:
    site-packages/nvidia/*/lib, which the loader does not search by itself."""
    from importlib.util import find_spec

    spec = find_spec("nvidia")
    roots = [Path(r) for r in (spec.submodule_search_locations or [])] if spec else []
    out = {}
    for so in sonames:
        hit = next((f for r in roots for f in sorted(r.glob(f"*/lib/{so}"))), None)
        if hit is not None:
            out[so] = str(hit)
    return out


def _mapped_path(soname: str) -> str | None:
    return next((p for p in _loaded() if Path(p).name.startswith(soname)), None)


def _loaded() -> list[str]:
    paths = {line.split()[-1] for line in _read(Path("/proc/self/maps")).splitlines() if "/" in line}
    return sorted(paths)


def _safe(call: Any) -> tuple[Any, str]:
    try:
        return call(), ""
    except Exception as e:  # a missing or broken engine is a fact for the report, not a crash
        log.info("%s: %s", getattr(call, "__name__", call), e)
        return None, f"{type(e).__name__}: {e}".strip()


def gather(root: Path = Path("/"), *, device_memory: bool = True) -> Probes:
    """Make the native calls. ``root`` relocates the files read (Jetson's), as in profiles.detect;
    ``device_memory=False`` leaves llama.cpp's device memory out (no CUDA context is created)."""
    p = Probes(machine=platform.machine(), distributions=_distributions())
    flags = re.search(r"^(?:flags|Features)\s*:\s*(.*)$", _read(root / "proc/cpuinfo"), re.M)
    p.cpu_flags = sorted(set(flags.group(1).split()) & CPU_FLAGS) if flags else []
    p.llama, p.llama_error = _safe(lambda: probe_llama(device_memory))
    p.nvml, p.nvml_error = _safe(probe_nvml)
    p.tegra_release = _read(root / "etc/nv_tegra_release").strip()
    p.device_model = _read(root / "proc/device-tree/model").strip("\x00 \n")
    if p.tegra_release and root == Path("/") and shutil.which("nvpmodel"):
        try:
            p.nvpmodel = subprocess.run(["nvpmodel", "-q"], capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError) as e:
            log.info("nvpmodel -q failed: %s", e)
    p.ort, p.ort_error = _safe(probe_ort)
    p.genai, p.genai_error = _safe(probe_genai)
    p.nvcc = probe_nvcc()
    if {"CUDAExecutionProvider", "TensorrtExecutionProvider"} & set((p.ort or {}).get("providers") or []):
        p.libraries = probe_libraries(ort_cuda_libraries(p.ort or {}))
        p.wheel_libraries = find_in_wheels([so for so, path in p.libraries.items() if path is None])
    p.loaded_libraries = [x for x in _loaded() if NATIVE_LIB_PATTERN.search(x)]
    return p


# --- diagnosis (pure) -------------------------------------------------------------------------

@dataclass(frozen=True)
class Gpu:
    name: str
    cuda_cc: str
    memory_total_bytes: int | None
    source: str  # "nvml" | "jetson"

    @property
    def arch(self) -> int:
        return cuda_arch(self.cuda_cc)

    @property
    def family(self) -> str:
        return CUDA_FAMILIES.get(self.cuda_cc, f"compute capability {self.cuda_cc}")

    @property
    def label(self) -> str:
        """"NVIDIA H200 (Hopper, sm_90)": for one-line findings."""
        return f"{self.name} ({self.family.split(' (')[0]}, sm_{self.arch})"


def gpus_of(p: Probes) -> list[Gpu]:
    if p.nvml and p.nvml.get("devices"):
        return [Gpu(d["name"], d["cuda_cc"], d.get("memory_total_bytes"), "nvml") for d in p.nvml["devices"]]
    if p.tegra_release:  # Jetson: NVML sees no integrated GPU
        cc = jetson_cc(p.device_model)
        if cc:
            return [Gpu(p.device_model or "Jetson", cc, None, "jetson")]
    return []


def llama_rebuild_command(p: Probes, archs: list[int]) -> str:
    """The exact reinstall for this host: CUDACXX named (unset is the silent-CPU-build cause),
    the GPU's architecture, no pip cache (pip would reuse the CPU wheel it built before) and no
    dependencies (--force-reinstall would otherwise reinstall numpy and the rest too)."""
    nvcc = (p.nvcc or {}).get("path") or "/usr/local/cuda/bin/nvcc"
    version = (p.llama or {}).get("version") or p.distributions.get("llama-cpp-python", "")
    pin = f"=={version}" if version else ""
    arch = ";".join(str(a) for a in sorted(set(archs)))
    return (f'CUDACXX={nvcc} CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES={arch}" '
            f"pip install --force-reinstall --no-deps --no-cache-dir --no-binary llama-cpp-python llama-cpp-python{pin}")


def nvcc_cannot_build(p: Probes, archs: list[int]) -> str:
    """Why this host's nvcc cannot build for these architectures ("" when it can or is unknown)."""
    version = (p.nvcc or {}).get("version", "")
    if not version:
        return ""
    have = tuple(int(x) for x in version.split(".")[:2])
    for arch in archs:
        for lo, hi, first, last_major in NVCC_RANGE:
            if lo <= arch <= hi:
                need = tuple(int(x) for x in first.split("."))
                if have < need:
                    return f"nvcc {version} cannot build sm_{arch}: install CUDA {first} or newer first"
                if have[0] > last_major:
                    return f"nvcc {version} dropped sm_{arch}: use a CUDA {last_major}.x toolkit"
    return ""


def diagnose(p: Probes) -> Report:
    gpus = gpus_of(p)
    jetson = bool(p.tegra_release)
    aarch64 = p.machine.lower() in ("aarch64", "arm64")
    findings: list[Finding] = []
    facts: dict[str, dict[str, Any]] = {}

    # host and GPU
    facts["host"] = {"machine": p.machine, "jetson": jetson,
                     "nvcc": f"{p.nvcc['path']} (CUDA {p.nvcc['version']})" if p.nvcc else None}
    if p.nvml:
        cuda_drv = int(p.nvml.get("cuda_driver_version") or 0)
        facts["nvidia_driver"] = {"source": p.nvml.get("source"), "driver_version": p.nvml.get("driver_version"),
                                  "cuda_driver_version": f"{cuda_drv // 1000}.{cuda_drv % 1000 // 10}" if cuda_drv else None,
                                  "gpus": len(p.nvml.get("devices") or [])}
    else:
        facts["nvidia_driver"] = {"source": None, "nvml": p.nvml_error or "not available"}
    for i, g in enumerate(gpus):
        facts[f"gpu{i}"] = {"name": g.name, "cuda_cc": g.cuda_cc, "cuda_arch": g.arch, "family": g.family,
                            "memory_gib": round(g.memory_total_bytes / 2**30, 1) if g.memory_total_bytes else None,
                            "seen_by": g.source}
    if jetson:
        mode, mode_id = parse_nvpmodel(p.nvpmodel)
        facts["jetson"] = {"model": p.device_model, "l4t": parse_tegra_release(p.tegra_release),
                           "power_mode": mode or None, "power_mode_id": mode_id or None}
        if not p.nvpmodel:
            findings.append(Finding("info", "jetson", "power mode unknown (nvpmodel -q gave nothing)",
                                    "run as a user allowed to call `nvpmodel -q`; speed depends on the mode"))
        elif mode and "MAXN" not in mode.upper():
            findings.append(Finding("info", "jetson", f"power mode {mode} is not MAXN: speed is capped",
                                    "for full speed: sudo nvpmodel -m 0 (MAXN on most boards; `nvpmodel -p --verbose` lists them)"))

    _diagnose_llama(p, gpus, facts, findings)
    _diagnose_ort(p, gpus, aarch64, jetson, facts, findings)
    return Report(facts=facts, findings=findings, probes=p)


def _diagnose_llama(p: Probes, gpus: list[Gpu], facts: dict[str, dict[str, Any]], findings: list[Finding]) -> None:
    if p.llama is None:
        facts["llama_cpp"] = {"installed": "llama-cpp-python" in p.distributions, "error": p.llama_error or None}
        # a CUDA build whose CUDA libraries the loader cannot find fails at import, not at load
        m = re.search(r"(lib[\w.+-]+\.so[\d.]*): cannot open shared object file", p.llama_error)
        if m:
            findings.append(Finding("error", "llama.cpp", f"llama-cpp-python does not load: {m.group(1)} not found by the loader",
                                    "put its folder on LD_LIBRARY_PATH (pip's nvidia-* wheels: site-packages/nvidia/cu13/lib "
                                    "or nvidia/*/lib; the toolkit: /usr/local/cuda/lib64)"))
        return
    sysinfo = parse_system_info(p.llama.get("system_info", ""))
    backends = list(p.llama.get("backends") or sysinfo)
    gpu_backends = [b for b in backends if any(b.upper().startswith(g.upper()) for g in GPU_BACKENDS)]
    cpu = sysinfo.get("CPU", {})
    cuda = next((v for k, v in sysinfo.items() if k.upper() == "CUDA"), None)
    archs = compiled_archs(cuda or {})
    gpu_devices = [d for d in p.llama.get("devices") or [] if d.get("type") in ("gpu", "igpu")]
    facts["llama_cpp"] = {
        "version": p.llama.get("version"), "backends": ", ".join(backends) or None,
        "gpu_backends": ", ".join(gpu_backends) or None,
        "gpu_offload": bool(p.llama.get("gpu_offload")),
        "cpu_features": " ".join(k for k, v in cpu.items() if v == "1") or None,
        "cuda_archs": ", ".join(map(str, archs)) or None,
        "gpu_devices": ", ".join(f"{d['name']} ({d['description']})" for d in gpu_devices) or None,
    }
    want = [g.arch for g in gpus]
    unused = [feat for flag, feat in CPU_UPGRADES if flag in p.cpu_flags and cpu and feat not in cpu]
    if unused:
        findings.append(Finding("info", "llama.cpp", f"this CPU has {', '.join(unused)} but llama.cpp's CPU backend was "
                                "built without (a portable build): CPU speed is below what the host can do",
                                "rebuild with CMAKE_ARGS=\"-DGGML_NATIVE=on\" for CPU runs on this host"))
    if gpus and cuda is None:
        rebuild = llama_rebuild_command(p, want)
        nvcc_note = "" if p.nvcc else " (install the CUDA toolkit first: no nvcc found)"
        too_old = nvcc_cannot_build(p, want)
        if too_old:
            nvcc_note = f" ({too_old})"
        # another GPU backend (Vulkan) offloads, slower than CUDA on NVIDIA; none at all is the silent CPU run
        findings.append(Finding("warning" if gpu_backends else "error", "llama.cpp",
                                f"{gpus[0].label} present but llama-cpp-python has no CUDA backend"
                                f" (backends: {', '.join(backends) or 'none'})"
                                + ("" if gpu_backends else ": GGUF runs on the CPU"),
                                f"rebuild{nvcc_note}: {rebuild}"))
    elif cuda is not None:
        for g in gpus:
            if archs and g.arch not in archs:
                below = [a for a in archs if a <= g.arch]
                level = "warning" if below else "error"
                why = (f"runs only through PTX JIT from sm_{max(below)} if that was built as virtual (slow first load)"
                       if below else "no compiled kernel can run on it")
                findings.append(Finding(level, "llama.cpp",
                                        f"CUDA build for sm_{', sm_'.join(map(str, archs))} but {g.name} is sm_{g.arch}: {why}",
                                        f"rebuild for it: {llama_rebuild_command(p, [*archs, g.arch])}"))
        if not gpus and not gpu_devices:
            findings.append(Finding("warning", "llama.cpp", "CUDA build but no NVIDIA GPU visible (NVML and llama.cpp see none)",
                                    "check the driver (nvidia-smi) and CUDA_VISIBLE_DEVICES; until then --n-gpu-layers fails"))
        elif gpus and not p.llama.get("gpu_offload"):
            findings.append(Finding("error", "llama.cpp", "CUDA build but llama.cpp reports no GPU offload (driver not usable?)",
                                    "check nvidia-smi and that libcuda.so.1 / libcudart are on the loader path"))
    if p.nvml and cuda is not None:
        runtime = _loaded_major(p.loaded_libraries, "libcudart")
        drv = int(p.nvml.get("cuda_driver_version") or 0) // 1000
        if runtime and drv and drv < runtime:
            findings.append(Finding("error", "llama.cpp", f"llama.cpp loaded CUDA {runtime} runtime but the driver supports CUDA {drv}",
                                    f"update the NVIDIA driver to one for CUDA {runtime}, or rebuild with CUDA {drv}'s nvcc"))


def _loaded_major(paths: list[str], stem: str) -> int:
    for path in paths:
        m = re.search(rf"{stem}\.so\.(\d+)", Path(path).name)
        if m:
            return int(m.group(1))
    return 0


def _diagnose_ort(p: Probes, gpus: list[Gpu], aarch64: bool, jetson: bool, facts: dict[str, dict[str, Any]],
                  findings: list[Finding]) -> None:
    for module, dists in MODULE_CLASHES.items():
        both = [d for d in dists if d in p.distributions]
        if len(both) > 1:
            keep = next((d for d in both if d != dists[0]), both[-1]) if gpus else dists[0]
            findings.append(Finding("error", module,
                                    f"{' and '.join(both)} are both installed: each writes the `{module}` module, "
                                    "the last one installed wins file by file",
                                    f"pip uninstall -y {' '.join(both)} && pip install {keep}"))
    if p.ort is None:
        facts["onnxruntime"] = {"installed": False, "error": p.ort_error or None}
    else:
        providers = p.ort.get("providers") or []
        facts["onnxruntime"] = {"version": p.ort.get("version"), "package": p.ort.get("package_name"),
                                "providers": ", ".join(providers), "cuda_version": p.ort.get("cuda_version"),
                                "cudnn_version": p.ort.get("cudnn_version")}
        cuda_ep = "CUDAExecutionProvider" in providers or "TensorrtExecutionProvider" in providers
        if cuda_ep:
            missing = [so for so, path in p.libraries.items() if path is None]
            if missing:
                cuda_major = str(p.ort.get("cuda_version") or "12").split(".")[0]
                in_wheels = sorted({str(Path(p.wheel_libraries[so]).parent) for so in missing if so in p.wheel_libraries})
                if in_wheels and all(so in p.wheel_libraries for so in missing):
                    fix = f"installed by pip but not on the loader's path: export LD_LIBRARY_PATH={':'.join(in_wheels)}"
                elif jetson:
                    fix = "use JetPack's CUDA/cuDNN (sudo apt install nvidia-jetpack) and put /usr/local/cuda/lib64 on LD_LIBRARY_PATH"
                else:
                    fix = (f"pip install 'onnxruntime-gpu[cuda,cudnn]' (CUDA {cuda_major} runtime wheels) and put their "
                           "site-packages/nvidia/*/lib folders on LD_LIBRARY_PATH, or the toolkit's lib64")
                findings.append(Finding("error", "onnxruntime",
                                        f"CUDA build of ONNX Runtime but the CUDA runtime is missing ({', '.join(missing)}): "
                                        "the CUDA provider falls back to the CPU", fix))
            if not gpus:
                findings.append(Finding("warning", "onnxruntime", "CUDA build of ONNX Runtime but no NVIDIA GPU visible",
                                        "on a CPU-only host: pip uninstall -y onnxruntime-gpu && pip install onnxruntime"))
        elif gpus:
            fix = ("PyPI has no CUDA onnxruntime for aarch64: install the onnxruntime-gpu wheel built for your JetPack"
                   if aarch64 else "pip uninstall -y onnxruntime && pip install onnxruntime-gpu  (edgekit[onnx-gpu])")
            findings.append(Finding("info", "onnxruntime", f"{gpus[0].name} present but ONNX Runtime has no CUDA provider "
                                    f"({', '.join(providers)}): ONNX artifacts run on the CPU", fix))
    if p.genai is None:
        facts["onnxruntime_genai"] = {"installed": False, "error": p.genai_error or None}
        return
    facts["onnxruntime_genai"] = {"version": p.genai.get("version"), "cuda": p.genai.get("cuda_available"),
                                  "package": next((d for d in MODULE_CLASHES["onnxruntime_genai"] if d in p.distributions), None)}
    if gpus and p.genai.get("cuda_available") is False:
        fix = ("PyPI has no CUDA onnxruntime-genai for aarch64 (onnxruntime-genai #2283): build it from source "
               "with --use_cuda against JetPack's CUDA" if aarch64
               else "pip uninstall -y onnxruntime-genai && pip install onnxruntime-genai-cuda")
        findings.append(Finding("info", "onnxruntime-genai", f"{gpus[0].name} present but onnxruntime-genai is a CPU build", fix))
    ort_cuda = "CUDAExecutionProvider" in ((p.ort or {}).get("providers") or [])
    if p.genai.get("cuda_available") and p.ort is not None and not ort_cuda:
        # onnxruntime-genai-cuda requires onnxruntime-gpu: over a CPU onnxruntime its CUDA graphs cannot run
        findings.append(Finding("error", "onnxruntime-genai",
                                "CUDA build of onnxruntime-genai over an ONNX Runtime without the CUDA provider",
                                "pip uninstall -y onnxruntime && pip install onnxruntime-gpu (what onnxruntime-genai-cuda requires)"))


def run_doctor(root: Path = Path("/"), *, device_memory: bool = True) -> Report:
    return diagnose(gather(root, device_memory=device_memory))


def build_facts() -> dict[str, Any]:
    """The facts `edgekit bench` records in its conditions: the llama.cpp build, GPUs and driver,
    the ONNX Runtime providers and the findings' one-liners."""
    r = run_doctor(device_memory=False)  # the bench parent must not hold a CUDA context while workers measure
    keep = ("llama_cpp", "nvidia_driver", "onnxruntime", "onnxruntime_genai", "jetson")
    out: dict[str, Any] = {k: v for k, v in r.facts.items() if k in keep or k.startswith("gpu")}
    out["findings"] = [f.line() for f in r.findings]
    return out
