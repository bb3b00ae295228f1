"""Doctor's second half: a :class:`~.probes.Probes` record -> facts and one-line findings, each
with its fix. Pure: it touches nothing, so recorded outputs of other hosts' native calls test it."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .probes import (
    CPU_UPGRADES,
    CUDA_FAMILIES,
    GPU_BACKENDS,
    MODULE_CLASHES,
    NVCC_RANGE,
    Finding,
    Probes,
    Report,
    compiled_archs,
    cuda_arch,
    jetson_cc,
    parse_nvpmodel,
    parse_system_info,
    parse_tegra_release,
)


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


