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

from pathlib import Path
from typing import Any

from .diagnose import Gpu, diagnose, gpus_of, llama_rebuild_command, nvcc_cannot_build
from .probes import (
    Finding,
    Probes,
    Report,
    _safe,
    compiled_archs,
    cuda_arch,
    elf_needed,
    find_in_wheels,
    gather,
    jetson_cc,
    ort_cuda_libraries,
    parse_nvpmodel,
    parse_system_info,
    parse_tegra_release,
    probe_genai,
    probe_libraries,
    probe_llama,
    probe_nvcc,
    probe_nvml,
    probe_ort,
)

__all__ = ["Finding", "Gpu", "Probes", "Report", "_safe", "build_facts", "compiled_archs", "cuda_arch", "diagnose",
           "elf_needed", "find_in_wheels", "gather", "gpus_of", "jetson_cc", "llama_rebuild_command",
           "nvcc_cannot_build", "ort_cuda_libraries", "parse_nvpmodel", "parse_system_info",
           "parse_tegra_release", "probe_genai", "probe_libraries", "probe_llama", "probe_nvcc", "probe_nvml",
           "probe_ort", "run_doctor"]


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
