"""edgekit doctor: this machine's real facts, and recorded native-call outputs for GPU hosts.

The GPU cases start from this host's real probes (gather()) and replace only what a GPU host's
native calls would have returned (NVML, llama.cpp's system-info string, Jetson's files), so
the diagnosis code runs on real data plus a recorded record of the hardware part."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from edgekit import doctor
from edgekit.cli import main
from edgekit.errors import RuntimeLoadError

NATIVE = json.loads((Path(__file__).parent / "data/doctor/native_outputs.json").read_text())


@pytest.fixture(scope="module")
def host() -> doctor.Probes:
    return doctor.gather()


def _with(base: doctor.Probes, **changes: Any) -> doctor.Probes:
    return dataclasses.replace(base, **changes)


def _jetson(base: doctor.Probes, board: str, llama: dict[str, Any] | None = None) -> doctor.Probes:
    return _with(base, nvml=None, nvml_error="NVMLError_LibraryNotFound", llama=llama or NATIVE["llama_cpu_aarch64"],
                 ort=None, ort_error="ModuleNotFoundError", genai=None, **NATIVE[board])


def _errors(report: doctor.Report, topic: str) -> list[doctor.Finding]:
    return [f for f in report.findings if f.topic == topic and f.level == "error"]


# --- this machine -----------------------------------------------------------------------------

def test_this_host_facts_are_the_engines_own(host: doctor.Probes) -> None:
    import llama_cpp
    import onnxruntime

    report = doctor.diagnose(host)
    facts = report.facts
    assert facts["llama_cpp"]["gpu_offload"] == bool(llama_cpp.llama_supports_gpu_offload())
    assert facts["llama_cpp"]["version"] == llama_cpp.__version__
    sysinfo = doctor.parse_system_info(llama_cpp.llama_print_system_info().decode())
    assert "CPU" in sysinfo and set(facts["llama_cpp"]["cpu_features"].split()) <= set(sysinfo["CPU"])
    assert "CPU" in (host.llama or {})["backends"]  # the ggml registry read through ctypes
    assert any(d["type"] == "cpu" for d in (host.llama or {})["devices"])
    assert facts["onnxruntime"]["providers"].split(", ") == onnxruntime.get_available_providers()
    assert facts["onnxruntime"]["version"] == onnxruntime.__version__
    # what this host has decides what must be said: a GPU NVML sees and no CUDA backend is an error
    gpus = doctor.gpus_of(host)
    silent_cpu = bool(gpus) and "CUDA" not in sysinfo
    assert bool(_errors(report, "llama.cpp")) == silent_cpu
    if host.nvml is None:  # no driver: a fact with the reason, never an exception or a finding
        assert facts["nvidia_driver"]["source"] is None and facts["nvidia_driver"]["nvml"]
        assert not gpus or host.tegra_release  # only a Jetson is seen without NVML
        assert not any("present" in f.problem for f in report.findings) or host.tegra_release
    json.dumps(report.to_dict())  # the record is JSON as it is


def test_bench_gathering_leaves_device_memory_alone(host: doctor.Probes) -> None:
    """Asking a CUDA device its memory creates a context; the bench parent must not hold one."""
    light = doctor.gather(device_memory=False)
    assert [d["memory_total_bytes"] for d in (light.llama or {})["devices"]] == [None] * len((host.llama or {})["devices"])
    assert [d["name"] for d in (light.llama or {})["devices"]] == [d["name"] for d in (host.llama or {})["devices"]]
    assert all(d["memory_total_bytes"] > 0 for d in (host.llama or {})["devices"] if d["type"] == "cpu")


def test_nvml_falls_back_to_libnvidia_ml(host: doctor.Probes, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without pynvml the ctypes path runs; where there is no driver that is a recorded fact."""
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError
    try:
        record = doctor.probe_nvml()
    except OSError as e:  # no libnvidia-ml here: what gather() records
        nvml, error = doctor._safe(doctor.probe_nvml)
        assert nvml is None and "OSError" in error and str(e) in error
    else:  # a host with a driver: the ctypes reader returns the same shape as pynvml's
        assert record["source"] == "libnvidia-ml" and all("cuda_cc" in d for d in record["devices"])


def test_cli_table_and_json(host: doctor.Probes) -> None:
    r = CliRunner().invoke(main, ["doctor", "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert set(data) == {"facts", "findings", "probes"}
    assert data["facts"]["llama_cpp"]["version"] == (host.llama or {})["version"]
    r = CliRunner().invoke(main, ["doctor"])
    assert r.exit_code == 0, r.output
    header = r.output.splitlines()[0].split()
    assert header == ["section", "fact", "value"]
    assert any(line.startswith("llama_cpp") and "backends" in line for line in r.output.splitlines())


def test_cli_replays_recorded_probes(host: doctor.Probes, tmp_path: Path) -> None:
    h200 = doctor.diagnose(_with(host, nvml=NATIVE["nvml_h200"], llama={**(host.llama or {}), "system_info": "CPU : AVX2 = 1 | "}))
    f = tmp_path / "h200.json"
    f.write_text(json.dumps(h200.to_dict()))
    r = CliRunner().invoke(main, ["doctor", "--probes", str(f)])
    assert r.exit_code == 0, r.output
    assert "error: llama.cpp: NVIDIA H200 (Hopper, sm_90) present" in r.output and "-DCMAKE_CUDA_ARCHITECTURES=90" in r.output
    assert any(line.split() == ["gpu0", "memory_gib", "140.4"] for line in r.output.splitlines())  # as recorded, not 140.40
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    r = CliRunner().invoke(main, ["doctor", "--probes", str(bad)])
    assert r.exit_code == 1 and r.output.count("\n") == 1 and "not a JSON probes record" in r.output
    bad.write_text(json.dumps({"probes": {"llama": 5, "nvml": "x"}}))
    r = CliRunner().invoke(main, ["doctor", "--probes", str(bad)])
    assert r.exit_code == 1 and r.output.count("\n") == 1 and "not a probes record" in r.output


# --- recorded GPU hosts -----------------------------------------------------------------------

def test_h200_with_cpu_only_llama_gets_the_rebuild_command(host: doctor.Probes) -> None:
    cpu_only = {**(host.llama or {}), "system_info": "CPU : SSE3 = 1 | AVX2 = 1 | ", "gpu_offload": False, "backends": ["CPU"]}
    report = doctor.diagnose(_with(host, nvml=NATIVE["nvml_h200"], llama=cpu_only))
    assert report.facts["gpu0"] == {"name": "NVIDIA H200", "cuda_cc": "9.0", "cuda_arch": 90,
                                    "family": "Hopper (H100, H200, GH200)", "memory_gib": 140.4, "seen_by": "nvml"}
    assert report.facts["nvidia_driver"]["cuda_driver_version"] == "13.0"
    (err,) = _errors(report, "llama.cpp")
    assert "no CUDA backend" in err.problem and "runs on the CPU" in err.problem
    nvcc = (host.nvcc or {}).get("path") or "/usr/local/cuda/bin/nvcc"
    assert err.fix.startswith(f'rebuild{"" if host.nvcc else " (install the CUDA toolkit first: no nvcc found)"}: CUDACXX={nvcc} ')
    assert 'CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90"' in err.fix
    # no pip cache: pip would otherwise reinstall the CPU wheel it built before
    assert "--no-cache-dir" in err.fix and "--no-deps" in err.fix and err.fix.endswith(f"llama-cpp-python=={cpu_only['version']}")
    assert "\n" not in err.line()


def test_h200_with_cuda_build_is_clean_and_parsed() -> None:
    report = doctor.diagnose(doctor.Probes(machine="x86_64", llama=NATIVE["llama_cuda_sm90"], nvml=NATIVE["nvml_h200"]))
    facts = report.facts["llama_cpp"]
    assert facts["backends"] == "CUDA, CPU" and facts["gpu_backends"] == "CUDA" and facts["cuda_archs"] == "90"
    assert facts["gpu_devices"] == "CUDA0 (NVIDIA H200)" and facts["gpu_offload"] is True
    assert not [f for f in report.findings if f.topic == "llama.cpp"]
    parsed = doctor.parse_system_info(NATIVE["llama_cuda_sm90"]["system_info"])
    assert parsed["CUDA"] == {"ARCHS": "900", "USE_GRAPHS": "1", "PEER_MAX_BATCH_SIZE": "128"}
    assert parsed["CPU"]["AMX_INT8"] == "1" and list(parsed) == ["CUDA", "CPU"]
    # that host's Xeon has AVX-512 and AMX, and so does its build: nothing left on the table
    xeon = doctor.Probes(machine="x86_64", cpu_flags=["avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8"],
                         llama=NATIVE["llama_cuda_sm90"], nvml=NATIVE["nvml_h200"])
    assert not doctor.diagnose(xeon).findings


def test_cuda_build_for_other_architectures() -> None:
    ada = NATIVE["nvml_rtx4090"]
    hopper_only = doctor.diagnose(doctor.Probes(machine="x86_64", llama=NATIVE["llama_cuda_sm90"], nvml=ada))
    (err,) = _errors(hopper_only, "llama.cpp")
    assert "sm_90" in err.problem and "sm_89" in err.problem and "-DCMAKE_CUDA_ARCHITECTURES=89;90" in err.fix
    older = doctor.diagnose(doctor.Probes(machine="x86_64", llama=NATIVE["llama_cuda_sm80_86"], nvml=ada))
    (warn,) = [f for f in older.findings if f.topic == "llama.cpp"]
    assert warn.level == "warning" and "PTX JIT from sm_86" in warn.problem and "=80;86;89" in warn.fix


def test_cuda_build_without_a_gpu_warns() -> None:
    llama = {**NATIVE["llama_cuda_sm90"], "devices": [], "gpu_offload": False}
    report = doctor.diagnose(doctor.Probes(machine="x86_64", llama=llama, nvml_error="NVMLError_LibraryNotFound"))
    (warn,) = [f for f in report.findings if f.topic == "llama.cpp"]
    assert warn.level == "warning" and "no NVIDIA GPU visible" in warn.problem


@pytest.mark.parametrize(("board", "arch", "mode"), [("jetson_agx_orin", 87, "MAXN"), ("jetson_thor", 110, "MAXN"),
                                                     ("jetson_orin_nano_15w", 87, "15W")])
def test_jetson_without_nvml(host: doctor.Probes, board: str, arch: int, mode: str) -> None:
    report = doctor.diagnose(_jetson(host, board))
    assert report.facts["gpu0"]["cuda_arch"] == arch and report.facts["gpu0"]["seen_by"] == "jetson"
    assert report.facts["jetson"]["power_mode"] == mode and report.facts["jetson"]["l4t"].startswith(("36.4", "38.2"))
    (err,) = _errors(report, "llama.cpp")
    assert f"-DCMAKE_CUDA_ARCHITECTURES={arch}\"" in err.fix and "CUDACXX=" in err.fix
    capped = [f for f in report.findings if f.topic == "jetson"]
    assert bool(capped) == (mode != "MAXN")
    if capped:
        assert "nvpmodel -m 0" in capped[0].fix


def test_jetson_genai_has_no_pypi_cuda_wheel(host: doctor.Probes) -> None:
    p = _jetson(host, "jetson_agx_orin", NATIVE["llama_cuda_sm90"] | {"system_info": "CUDA : ARCHS = 870 | " + "CPU : NEON = 1 | "})
    p.genai = {"version": "0.18.0", "cuda_available": False}
    report = doctor.diagnose(p)
    assert not _errors(report, "llama.cpp")  # a CUDA build for sm_87 on an Orin
    (info,) = [f for f in report.findings if f.topic == "onnxruntime-genai"]
    assert "aarch64" in info.fix and "#2283" in info.fix


def test_both_onnxruntime_distributions(host: doctor.Probes) -> None:
    dists = {**host.distributions, "onnxruntime": "1.32.0", "onnxruntime-gpu": "1.23.2"}
    with_gpu = doctor.diagnose(_with(host, distributions=dists, nvml=NATIVE["nvml_h200"]))
    (err,) = _errors(with_gpu, "onnxruntime")
    assert "onnxruntime and onnxruntime-gpu are both installed" in err.problem
    assert err.fix == "pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu"
    cpu_host = doctor.diagnose(_with(host, distributions=dists, nvml=None))
    assert _errors(cpu_host, "onnxruntime")[0].fix.endswith("&& pip install onnxruntime")


def test_cuda_onnxruntime_without_cuda_runtime(host: doctor.Probes) -> None:
    ort = NATIVE["ort_gpu_cuda13"]
    needs = doctor.ort_cuda_libraries(ort)
    assert needs == [*ort["cuda_provider_needs"], "libcudnn.so.9"]  # cuDNN is dlopened, not linked
    # this machine's loader really answers whether onnxruntime-gpu 1.31's CUDA 13 libraries load
    libs = doctor.probe_libraries(needs)
    report = doctor.diagnose(_with(host, ort=ort, libraries=libs, wheel_libraries={}, nvml=NATIVE["nvml_h200"]))
    missing = [so for so, path in libs.items() if path is None]
    errs = _errors(report, "onnxruntime")
    assert bool(errs) == bool(missing)
    if errs:
        assert all(so in errs[0].problem for so in missing) and "onnxruntime-gpu[cuda,cudnn]" in errs[0].fix
    present = {so: f"/opt/cuda/{so}" for so in libs}
    assert not _errors(doctor.diagnose(_with(host, ort=ort, libraries=present, nvml=NATIVE["nvml_h200"])), "onnxruntime")
    # without the provider library's list: the CUDA version it was built for decides the names
    assert doctor.ort_cuda_libraries({"cuda_version": "12.8"})[:2] == ["libcudart.so.12", "libcublas.so.12"]


def test_cuda_libraries_in_pip_wheels_need_the_loader_path(host: doctor.Probes, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    lib = tmp_path / "nvidia" / "cu13" / "lib"  # the layout of pip's nvidia-cublas / nvidia-cudnn-cu13 wheels
    lib.mkdir(parents=True)
    for so in ("libcublas.so.13", "libcublasLt.so.13"):
        (lib / so).write_bytes(b"")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "nvidia", raising=False)  # an earlier import would hide the new path
    found = doctor.find_in_wheels(["libcublas.so.13", "libcublasLt.so.13", "libcudnn.so.9"])
    assert found == {"libcublas.so.13": str(lib / "libcublas.so.13"), "libcublasLt.so.13": str(lib / "libcublasLt.so.13")}
    libs = {"libcublas.so.13": None, "libcublasLt.so.13": None}
    report = doctor.diagnose(_with(host, ort=NATIVE["ort_gpu_cuda13"], libraries=libs, wheel_libraries=found,
                                   nvml=NATIVE["nvml_h200"]))
    (err,) = _errors(report, "onnxruntime")
    assert err.fix == f"installed by pip but not on the loader's path: export LD_LIBRARY_PATH={lib}"


def test_elf_needed_reads_the_libraries_a_library_links() -> None:
    import llama_cpp

    libllama = Path(llama_cpp.__file__).parent / "lib" / "libllama.so"
    needed = doctor.elf_needed(libllama)
    assert "libggml.so.0" in needed and "libggml-base.so.0" in needed and any(n.startswith("libc.so") for n in needed)
    assert doctor.elf_needed(Path(__file__)) == []  # not an ELF file


def test_genai_cuda_needs_the_cuda_onnxruntime(host: doctor.Probes) -> None:
    cpu_ort = {"version": "1.32.0", "providers": ["CPUExecutionProvider"], "device": "CPU", "package_name": "onnxruntime"}
    report = doctor.diagnose(_with(host, genai=NATIVE["genai_cuda"], ort=cpu_ort, nvml=NATIVE["nvml_h200"]))
    (err,) = _errors(report, "onnxruntime-genai")
    assert "without the CUDA provider" in err.problem and "pip install onnxruntime-gpu" in err.fix
    assert report.facts["onnxruntime_genai"]["cuda"] is True
    gpu_ort = _with(host, genai=NATIVE["genai_cuda"], ort=NATIVE["ort_gpu_cuda13"], nvml=NATIVE["nvml_h200"],
                    libraries={so: f"/opt/{so}" for so in doctor.ort_cuda_libraries(NATIVE["ort_gpu_cuda13"])})
    assert not [f for f in doctor.diagnose(gpu_ort).findings if f.topic in ("onnxruntime-genai", "onnxruntime")
                and f.level == "error" and "both installed" not in f.problem]


def test_gpu_with_cpu_onnxruntime_suggests_the_gpu_package(host: doctor.Probes) -> None:
    ort = {"version": "1.32.0", "providers": ["CPUExecutionProvider"], "device": "CPU", "package_name": "onnxruntime"}
    report = doctor.diagnose(_with(host, ort=ort, nvml=NATIVE["nvml_h200"], machine="x86_64"))
    (info,) = [f for f in report.findings if f.topic == "onnxruntime"]
    assert info.level == "info" and "pip install onnxruntime-gpu" in info.fix


def test_driver_older_than_the_loaded_cuda_runtime() -> None:
    nvml = {**NATIVE["nvml_rtx4090"], "cuda_driver_version": 12080}
    llama = {**NATIVE["llama_cuda_sm90"], "system_info": "CUDA : ARCHS = 890 | CPU : AVX2 = 1 | "}
    report = doctor.diagnose(doctor.Probes(machine="x86_64", llama=llama, nvml=nvml,
                                           loaded_libraries=["/opt/venv/nvidia/cu13/lib/libcudart.so.13"]))
    (err,) = _errors(report, "llama.cpp")
    assert "CUDA 13 runtime" in err.problem and "CUDA 12" in err.problem


def test_cuda_build_missing_its_cuda_libraries() -> None:
    # llama_cpp/_ctypes_extensions.py's message around the loader's OSError
    error = ("RuntimeError: Failed to load shared library '/venv/llama_cpp/lib/libggml-cuda.so': "
             "libcublas.so.13: cannot open shared object file: No such file or directory")
    report = doctor.diagnose(doctor.Probes(machine="x86_64", llama_error=error, nvml=NATIVE["nvml_h200"],
                                           distributions={"llama-cpp-python": "0.3.36"}))
    (err,) = _errors(report, "llama.cpp")
    assert "libcublas.so.13 not found" in err.problem and "LD_LIBRARY_PATH" in err.fix
    assert report.facts["llama_cpp"]["installed"] is True


def test_nvcc_too_old_for_the_gpu_and_unused_cpu_features(host: doctor.Probes) -> None:
    p = _jetson(host, "jetson_thor")
    p.nvcc = {"path": "/usr/local/cuda/bin/nvcc", "version": "12.6"}
    (err,) = _errors(doctor.diagnose(p), "llama.cpp")
    assert "nvcc 12.6 cannot build sm_110: install CUDA 13.0 or newer first" in err.fix
    p.nvcc = {"path": "/usr/local/cuda/bin/nvcc", "version": "13.0"}
    assert "cannot build" not in _errors(doctor.diagnose(p), "llama.cpp")[0].fix
    xavier = dataclasses.replace(p, device_model="NVIDIA Jetson Xavier NX Developer Kit")
    assert "nvcc 13.0 dropped sm_72" in _errors(doctor.diagnose(xavier), "llama.cpp")[0].fix
    # a portable x86 build (AVX2 kernels) on an AVX-512 CPU: CPU figures understate the host
    portable = {**NATIVE["llama_cuda_sm90"], "system_info": "CUDA : ARCHS = 900 | CPU : AVX = 1 | AVX2 = 1 | FMA = 1 | "}
    avx512 = doctor.Probes(machine="x86_64", cpu_flags=["avx2", "avx512f", "avx512_vnni"], llama=portable,
                           nvml=NATIVE["nvml_h200"])
    (info,) = [f for f in doctor.diagnose(avx512).findings if f.topic == "llama.cpp"]
    assert info.level == "info" and "AVX512, AVX512_VNNI" in info.problem and "GGML_NATIVE=on" in info.fix


def test_parsers_on_recorded_formats() -> None:
    assert doctor.parse_tegra_release(NATIVE["jetson_agx_orin"]["tegra_release"]) == "36.4.3"
    assert doctor.parse_nvpmodel("NV Power Mode: MAXN_SUPER\n2\n") == ("MAXN_SUPER", "2")
    assert doctor.parse_nvpmodel("") == ("", "")
    assert doctor.compiled_archs({"ARCHS": "750,800,860,890"}) == [75, 80, 86, 89]
    assert doctor.jetson_cc("NVIDIA Jetson Orin Nano Developer Kit") == "8.7"  # an Orin, not the Maxwell Nano
    assert doctor.jetson_cc("NVIDIA Jetson Nano Developer Kit") == "5.3"
    assert doctor.parse_system_info("") == {}


def test_probes_round_trip(host: doctor.Probes) -> None:
    data = json.loads(json.dumps(dataclasses.asdict(host)))
    assert doctor.Probes.from_dict({**data, "unknown_future_key": 1}) == host


# --- the runtime refuses a GPU request a CPU build would ignore -------------------------------

def test_n_gpu_layers_on_a_cpu_build_is_refused(tmp_path: Path) -> None:
    import llama_cpp

    from edgekit.runtimes.llamacpp import _gpu_layers

    if llama_cpp.llama_supports_gpu_offload():  # a GPU build offloads as asked
        assert _gpu_layers("cpu", 4) == 4 and _gpu_layers("cuda", 0) == -1
        return
    assert _gpu_layers("cpu", 0) == 0
    for device, layers, named in (("cpu", 4, "--n-gpu-layers / n_gpu_layers=4"), ("cpu", -1, "n_gpu_layers=-1"),
                                  ("cuda", 0, "--device / device=cuda")):
        with pytest.raises(RuntimeLoadError, match="no GPU offload") as e:
            _gpu_layers(device, layers)
        assert named in e.value.one_line() and "edgekit doctor" in e.value.one_line()
    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF")  # refused before the file is read
    r = CliRunner().invoke(main, ["run", str(f), "-p", "hi", "--n-gpu-layers", "8"])
    assert r.exit_code == 1 and r.output.count("\n") == 1
    assert r.output.startswith("error: this llama-cpp-python build has no GPU offload for --n-gpu-layers")
    r = CliRunner().invoke(main, ["serve", str(f), "--n-gpu-layers", "-1", "--port", "0"])
    assert r.exit_code == 1, r.output
    assert r.output.splitlines()[-1].startswith("error: this llama-cpp-python build has no GPU offload for --n-gpu-layers")


def test_bench_conditions_record_doctor_facts(host: doctor.Probes) -> None:
    from edgekit.bench.conditions import host_conditions

    facts = json.loads(json.dumps(host_conditions()))["doctor"]  # as a results file stores it
    expected = doctor.diagnose(host)
    assert facts["llama_cpp"] == expected.facts["llama_cpp"]
    assert facts["onnxruntime"] == expected.facts["onnxruntime"]
    assert facts["findings"] == [f.line() for f in expected.findings]
