"""What a benchmark number depends on, recorded next to it.

Published edge numbers are often unreproducible because the board, power mode, engine
build or thread count went unrecorded. Host facts come from the profiler's detector
(:mod:`edgekit.profiles.detect`); the engines' GPU builds, the driver and the execution
providers from :mod:`edgekit.doctor` (as ``edgekit doctor`` prints them); versions from package metadata;
the power mode from ``nvpmodel -q`` on Jetson, else the CPU frequency governor and the
ACPI platform profile (what a laptop's "power saver / performance" switch sets).
"""

from __future__ import annotations

import datetime
import logging
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

from edgekit import __version__

log = logging.getLogger(__name__)

# distribution name -> key in the conditions; absent ones are left out
LIBRARIES = (
    ("llama-cpp-python", "llama_cpp_python"),
    ("onnxruntime", "onnxruntime"),
    ("onnxruntime-gpu", "onnxruntime_gpu"),
    ("onnxruntime-genai", "onnxruntime_genai"),
    ("onnxruntime-genai-cuda", "onnxruntime_genai_cuda"),
    ("numpy", "numpy"),
    ("torch", "torch"),
    ("transformers", "transformers"),
    ("nvidia-ml-py", "nvidia_ml_py"),
)

# Linux power-setting files (relative to root): key -> path
_POWER_FILES = {
    "cpu_governor": "sys/devices/system/cpu/cpu0/cpufreq/scaling_governor",
    "platform_profile": "sys/firmware/acpi/platform_profile",
    "energy_performance_preference": "sys/devices/system/cpu/cpu0/cpufreq/energy_performance_preference",
}


def now_utc() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "edgekit": __version__}
    for dist, key in LIBRARIES:
        try:
            out[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


def power_settings(root: Path = Path("/"), nvpmodel_mode: str = "") -> dict[str, str]:
    """The power mode: Jetson's nvpmodel name when there is one, plus the Linux CPU policy."""
    out: dict[str, str] = {}
    if nvpmodel_mode:
        out["nvpmodel"] = nvpmodel_mode
    for key, rel in _POWER_FILES.items():
        try:
            value = (root / rel).read_text().strip()
        except OSError:
            continue
        if value:
            out[key] = value
    out["mode"] = out.get("nvpmodel") or out.get("platform_profile") or out.get("cpu_governor") or "unknown"
    return out


def llama_cpp_build() -> dict[str, Any]:
    """llama.cpp's compiled CPU features and edgekit's load settings (the AMX guard)."""
    try:
        import llama_cpp

        from edgekit.runtimes.llama_env import use_extra_buffer_types

        info = llama_cpp.llama_print_system_info().decode(errors="replace").strip()
        return {"system_info": info, "gpu_offload": bool(llama_cpp.llama_supports_gpu_offload()),
                "extra_buffer_types": use_extra_buffer_types()}
    except Exception as e:  # not installed or not loadable: the GGUF runs will say so themselves
        log.info("llama.cpp build info unavailable: %s", e)
        return {}


def host_conditions(profile_name: str | None = None, label: str | None = None, *, use_nvml: bool = True) -> dict[str, Any]:
    """The machine: detected always; a named profile (e.g. a Jetson's shipped one) when given."""
    from edgekit.profiles.detect import detect_host, host_facts, match_shipped, usable_cores
    from edgekit.profiles.store import get_profile, shipped_profiles

    facts = host_facts(use_nvml=use_nvml)
    profile = get_profile(profile_name) if profile_name else detect_host(facts=facts)
    matched = match_shipped(facts, shipped_profiles())
    device = facts.device_model or (facts.gpu.name if facts.gpu else "") or facts.cpu_model
    cores = usable_cores()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {
        "label": label or (f"{device} ({cores} cores)" if not facts.device_model else device),
        "profile": profile.name, "profile_origin": profile.origin.value,
        "shipped_profile": matched.name if matched else None,
        "device_class": profile.device_class.value, "device_model": facts.device_model,
        "cpu_model": facts.cpu_model, "cores": cores, "machine": facts.machine, "isa": list(facts.isa),
        "memory_gib": round(facts.mem_total_gib, 2), "memory_available_gib": round(facts.mem_available_gib, 2),
        "gpu": None if facts.gpu is None else {"name": facts.gpu.name, "memory_gib": round(facts.gpu.total_gib, 2),
                                               "cuda_cc": facts.gpu.cuda_cc},
        "l4t": facts.l4t or None, "os": f"{platform.system()} {platform.release()}",
        "power": power_settings(nvpmodel_mode=facts.nvpmodel_mode),
        "load_average_1m": round(load, 2) if load is not None else None,
        "libraries": library_versions(), "llama_cpp_build": llama_cpp_build(), "doctor": doctor_facts(),
    }


def doctor_facts() -> dict[str, Any]:
    """`edgekit doctor`'s facts and findings: the engines' GPU builds, the driver, the providers."""
    try:
        from edgekit.doctor import build_facts

        return build_facts()
    except Exception as e:  # a conditions record never fails a benchmark
        log.warning("doctor facts unavailable: %s", e)
        return {}


def result_conditions(host: dict[str, Any], *, backend: str, threads: int, n_ctx: int, device: str, sha256: str,
                      date: str, prompt_tokens: int, gen_tokens: int) -> dict[str, Any]:
    """The conditions one result carries: the host's plus the run's own."""
    return {"date": date, "edgekit_version": __version__, "device_label": host.get("label"),
            "profile": host.get("profile"), "device_model": host.get("device_model"), "cpu_model": host.get("cpu_model"),
            "gpu": (host.get("gpu") or {}).get("name"), "cores": host.get("cores"),
            "power_mode": (host.get("power") or {}).get("mode"), "runtime": backend,
            "libraries": host.get("libraries", {}), "threads": threads, "n_ctx": n_ctx, "device": device,
            "prompt_tokens": prompt_tokens, "gen_tokens": gen_tokens, "artifact_sha256": sha256,
            "load_average_1m": host.get("load_average_1m")}
