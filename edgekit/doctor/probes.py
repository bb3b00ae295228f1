"""Doctor's first half: the native calls and files, read into a replayable :class:`Probes`
record of raw outputs (JSON-serialisable), and the parsers of those outputs. See :mod:`edgekit.doctor`."""

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


