"""Hardware profiles and the profiler: schema, detection, memory arithmetic, recommendations."""

from __future__ import annotations

import ctypes
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgekit import cli
from edgekit._compat import tomllib
from edgekit.errors import EdgekitError, ModelNotFoundError
from edgekit.manifest import ArtifactEntry, Manifest
from edgekit.profiles import calibrate, cost_tables, costs, detect, planner, quality, schema, shapes, store

# The tiny model of tests/conftest.py: dimensions that differ from each other.
TINY = {"architectures": ["LlamaForCausalLM"], "hidden_size": 256, "intermediate_size": 768, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64, "vocab_size": 1024,
        "max_position_embeddings": 1024, "tie_word_embeddings": False}
REQUIRED_DEVICES = ("jetson-orin-nano-4gb", "jetson-orin-nano-4gb-super", "jetson-orin-nano-8gb",
                    "jetson-orin-nano-8gb-super", "jetson-orin-nx-8gb", "jetson-orin-nx-16gb", "jetson-agx-orin-32gb",
                    "jetson-agx-orin-64gb", "jetson-thor", "jetson-xavier-nx", "rtx-4090", "rtx-3060-12gb", "apple-m2",
                    "apple-m3", "raspberry-pi-5-8gb", "x86-laptop-ddr5")


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Calibrated profiles go to a temp EDGEKIT_HOME, never the user's."""
    home = tmp_path / "edgekit-home"
    monkeypatch.setenv("EDGEKIT_HOME", str(home))
    return home


@pytest.fixture
def run_cli(monkeypatch: pytest.MonkeyPatch):
    # Register the commands even before edgekit/cli.py lists them (a no-op once it does).
    monkeypatch.setitem(cli.COMMANDS, "profile", ("profile", "profile", "Hardware profiles."))
    monkeypatch.setitem(cli.COMMANDS, "recommend", ("recommend", "recommend", "Recommend a format."))

    def run(*args: str) -> tuple[int, str]:
        r = CliRunner().invoke(cli.main, list(args))
        return r.exit_code, r.output

    return run


def model_dir(tmp_path: Path, **overrides: object) -> Path:
    d = tmp_path / "model"
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps({**TINY, **overrides}))
    return d


# -- schema -------------------------------------------------------------------------------

def test_every_shipped_profile_validates_and_round_trips() -> None:
    profiles = store.shipped_profiles()
    assert set(REQUIRED_DEVICES) <= set(profiles)
    for name, p in profiles.items():
        assert p.power_modes and p.runtimes, name
        assert all(isinstance(m.bandwidth_gbs.source, schema.SourceKind) for m in p.power_modes)
        assert p.usable_memory_gb.value <= p.memory_gb.value
        again = schema.parse_profile(tomllib.loads(store.dump_toml(p)), "roundtrip")
        assert store.profile_to_dict(again) == store.profile_to_dict(p), name
    nano = profiles["jetson-orin-nano-8gb-super"]
    assert nano.mode("15W").bandwidth_gbs.value < nano.mode("MAXN_SUPER").bandwidth_gbs.value  # EMC cap


@pytest.mark.parametrize(("edit", "field", "problem"), [
    (lambda d: d["power_modes"][0]["bandwidth_gbs"].update(value="fast"), "power_modes[0].bandwidth_gbs.value",
     "expected a number"),
    (lambda d: d["memory"].update(usable_gbb=1), "memory.usable_gbb", "unknown key"),
    (lambda d: d["power_modes"][0]["bandwidth_gbs"].update(source="wikipedia"), "power_modes[0].bandwidth_gbs.source",
     "is not one of"),
    (lambda d: d.update(default_mode="MAXN_TURBO"), "default_mode", "is not one of the power modes"),
    (lambda d: d["runtimes"][1].update(onnx=["int3"]), "runtimes[1].onnx[0]", "is not one of"),
    (lambda d: d["memory"].pop("usable_gb"), "memory.usable_gb", "missing"),
    (lambda d: d["memory"].update(read_curve={"points": [[4, 30.0], [2, 50.0]], "source": "measured"}),
     "memory.read_curve.points[1]", "sizes must increase"),
    (lambda d: d["memory"].update(read_curve={"points": [[4, 30.0]], "source": "measured"}),
     "memory.read_curve.points", "at least two"),
])
def test_malformed_profile_names_file_field_and_problem(tmp_path: Path, edit, field: str, problem: str) -> None:
    data = tomllib.loads((store.DATA_DIR / "jetson-orin-nano-8gb.toml").read_text())
    edit(data)
    path = tmp_path / "jetson-orin-nano-8gb.toml"
    path.write_text(store.dict_to_toml(data))
    with pytest.raises(schema.ProfileFormatError) as e:
        store.load_profile_file(path)
    assert e.value.file == str(path) and e.value.field == field and problem in e.value.problem
    assert str(path) in str(e.value) and field in str(e.value)


def test_malformed_user_profile_fails_the_cli_with_one_line(run_cli, isolated_home: Path) -> None:
    bad = isolated_home / "profiles" / "broken.toml"
    bad.parent.mkdir(parents=True)
    bad.write_text('name = "broken"\nmemory = 8\n')
    code, out = run_cli("profile", "list")
    assert code == 1
    assert f"error: {bad}: memory: expected a table, got int" in out
    assert out.count("error:") == 1


def test_not_toml_is_reported(tmp_path: Path) -> None:
    p = tmp_path / "x.toml"
    p.write_text("name = [unclosed\n")
    with pytest.raises(schema.ProfileFormatError, match="not valid TOML"):
        store.load_profile_file(p)


# -- CLI bad input ------------------------------------------------------------------------

def test_unknown_profile_lists_known_and_suggests_closest(run_cli, tmp_path: Path) -> None:
    code, out = run_cli("recommend", str(model_dir(tmp_path)), "--profile", "jetson-orin-nano-8g")
    assert code == 1
    assert "unknown hardware profile 'jetson-orin-nano-8g'" in out
    assert "did you mean 'jetson-orin-nano-8gb'?" in out and "raspberry-pi-5-8gb" in out
    code, out = run_cli("profile", "show", "rpi5")
    assert code == 1 and "known profiles:" in out


def test_model_dir_without_config(run_cli, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    code, out = run_cli("recommend", str(tmp_path / "empty"), "--profile", "rtx-4090")
    assert code == 1 and "no config.json" in out and out.count("\n") == 1
    with pytest.raises(ModelNotFoundError):
        planner.plan(tmp_path / "empty", store.get_profile("rtx-4090"))


# -- recommend ----------------------------------------------------------------------------

def test_recommend_nothing_fits_is_an_answer_not_a_crash(run_cli, tmp_path: Path) -> None:
    llama_8b = {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
                "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 128256, "max_position_embeddings": 131072}
    code, out = run_cli("recommend", str(model_dir(tmp_path / "big", **llama_8b)), "--profile", "jetson-orin-nano-4gb")
    assert code == 0, out
    assert "no pick: Nothing fits: the smallest candidate, gguf iq1_s, needs" in out and "<- pick" not in out
    d = model_dir(tmp_path)
    code, out = run_cli("recommend", str(d), "--profile", "raspberry-pi-5-8gb", "--max-memory", "0.01")
    assert code == 0, out
    assert "Nothing fits" in out and "too big" in out and "<- pick" not in out
    code, out = run_cli("recommend", str(d), "--profile", "raspberry-pi-5-8gb", "--max-memory", "0.01", "--json")
    data = json.loads(out)
    assert code == 0 and data["pick"] is None and not any(c["fits"] for c in data["candidates"])


def test_recommend_speed_floor_nobody_meets(tmp_path: Path) -> None:
    p = planner.plan(model_dir(tmp_path), store.get_profile("raspberry-pi-5-8gb"), min_tps=1e9)
    assert p.pick is None and p.reason.startswith("Nothing reaches")


def test_recommend_ranks_picks_and_marks_pareto(run_cli, tmp_path: Path) -> None:
    code, out = run_cli("recommend", str(model_dir(tmp_path)), "--profile", "jetson-orin-nano-8gb", "--ctx", "1024")
    assert code == 0, out
    assert "<- pick" in out and "*" in out and "pick: " in out
    p = planner.plan(model_dir(tmp_path), store.get_profile("jetson-orin-nano-8gb"), ctx=1024)
    assert p.pick is not None and p.pick.fits and p.pick.pareto and p.candidates[0] is p.pick
    labels = {c.label for c in p.candidates}
    assert {f"gguf {q}" for q in planner.GGUF_CANDIDATES} <= labels and {"onnx fp16", "onnx int4"} <= labels
    # more bits never predicts faster generation
    gguf = {c.quant: c for c in p.candidates if c.format is planner.Format.GGUF}
    assert gguf["f16"].cost.gen_tps < gguf["q8_0"].cost.gen_tps < gguf["q4_k_m"].cost.gen_tps


def test_recommend_uses_measured_quality_from_manifest(tmp_path: Path) -> None:
    d = model_dir(tmp_path)
    Manifest(source={}, artifacts=[ArtifactEntry(
        file="m-q4_k_m.gguf", format="gguf", quant="q4_k_m", precision="int4", size_bytes=1, sha256="0" * 64,
        verification={"mean_kl": 0.0001, "top1": 1.0, "ppl_delta_pct": 0.1})]).save(d)
    p = planner.plan(d, store.get_profile("x86-laptop-ddr5"), ctx=1024)
    q4 = next(c for c in p.candidates if c.quant == "q4_k_m")
    assert q4.quality.source is planner.QualitySource.MEASURED and q4.quality.mean_kl == 0.0001
    assert q4.artifact == "m-q4_k_m.gguf"


def measured_manifest(d: Path, figures: dict[str, tuple[float, float, float, float]]) -> None:
    """An edgekit.json whose GGUF entries carry quality figures: quant -> (mean KL, its stderr, top-1, ppl %)."""
    Manifest(source={}, artifacts=[ArtifactEntry(
        file=f"m-{q}.gguf", format="gguf", quant=q, precision="x", size_bytes=1, sha256="0" * 64,
        verification={"passed": True, "mean_kl": kl, "kl_stderr": se, "p99_kl": 8 * kl, "top1": top1,
                      "ppl_delta_pct": ppl, "n_positions": 8192, "kl_method": "full", "warning": None})
        for q, (kl, se, top1, ppl) in figures.items()]).save(d)


def floor_between_f16_and_q8_0(d: Path, profile: schema.Profile) -> float:
    """A speed floor that f16 misses and q8_0 meets: the pick is then between quantized types."""
    tps = {c.label: c.cost.gen_tps for c in planner.plan(d, profile, ctx=1024).candidates}
    assert tps["gguf f16"] < tps["gguf q8_0"] < tps["gguf q6_k"]
    return (tps["gguf f16"] + tps["gguf q8_0"]) / 2


# A small, quantization-sensitive model: it loses several times more than Llama-3-8B at each
# type, by a factor that differs per type (test input, not a copied result).
SENSITIVE = {"f16": (3e-6, 1e-7, 0.999, 0.0), "q8_0": (0.008, 2e-4, 0.97, 0.4),
             "q4_k_m": (0.12, 3e-3, 0.85, 18.0), "q2_k": (1.1, 2e-2, 0.55, 160.0)}


def test_unmeasured_types_are_scaled_to_the_measured_ones(tmp_path: Path) -> None:
    d = model_dir(tmp_path)
    measured_manifest(d, SENSITIVE)
    table = quality.QUALITY_TABLE
    # the published figure alone would rank q6_k above this model's measured q8_0
    assert table[(planner.Format.GGUF, "q6_k")].quality.mean_kl < SENSITIVE["q8_0"][0]
    profile = store.get_profile("raspberry-pi-5-8gb")
    p = planner.plan(d, profile, ctx=1024, min_tps=floor_between_f16_and_q8_0(d, profile))
    gguf = {c.quant: c for c in p.candidates if c.format is planner.Format.GGUF}
    q8, q6, q4 = gguf["q8_0"].quality, gguf["q6_k"].quality, gguf["q4_k_m"].quality
    assert q8.source is planner.QualitySource.MEASURED and q8.kl_stderr == SENSITIVE["q8_0"][1]
    assert q6.basis == "estimated (scaled to 3 measured types)"  # f16 is rounding, not a scale
    assert q8.mean_kl < q6.mean_kl < q4.mean_kl and q8.top1 > q6.top1 > q4.top1
    # no unmeasured type looks better than a measured one with more bits and a better published figure
    measured = [c for c in p.candidates if c.quality.source is planner.QualitySource.MEASURED]
    for u in p.candidates:
        if u.quality.source is planner.QualitySource.ESTIMATED:
            row = quality.table_row((u.format, u.quant))
            assert row is not None
            for m in measured:
                mrow = quality.table_row((m.format, m.quant))
                assert mrow is not None
                if m.format is u.format and mrow.bpw >= row.bpw and mrow.quality.mean_kl <= row.quality.mean_kl:
                    assert u.quality.mean_kl >= m.quality.mean_kl, (u.label, m.label)
    # the pick is as accurate as the most accurate candidate that qualifies: q6_k is picked over
    # the measured q8_0 only if the two are tied
    pick, fast = p.pick, [c for c in p.candidates if c.fits and c.meets_speed]
    assert pick is not None and gguf["q8_0"] in fast and gguf["q6_k"] in fast
    best = min(fast, key=lambda c: c.quality.mean_kl)
    assert pick.quality.mean_kl - best.quality.mean_kl <= quality.tie_kl(pick.quality, best.quality)
    if pick is gguf["q6_k"]:
        assert q6.mean_kl - q8.mean_kl <= quality.tie_kl(q6, q8)
    # without measurements every GGUF type is the table's, unscaled
    bare = planner.plan(model_dir(tmp_path / "bare"), profile, ctx=1024)
    for c in bare.candidates:  # top-1 goes through 1 - (1 - top1): equal to rounding
        q = table[(c.format, c.quant)].quality
        assert (c.quality.mean_kl, c.quality.ppl_delta_pct, c.quality.scaled_to) == (q.mean_kl, q.ppl_delta_pct, 0)
        assert c.quality.top1 == pytest.approx(q.top1, abs=1e-12)


@pytest.mark.parametrize(("stderr", "pick"), [(0.008, "q6_k"), (0.0005, "q8_0")])
def test_measured_candidates_tie_within_two_standard_errors(run_cli, tmp_path: Path, stderr: float,
                                                            pick: str) -> None:
    """q6_k measured 0.01 nats worse than q8_0: a tie (the faster q6_k wins) only when that is
    within 2 standard errors of the difference."""
    d = model_dir(tmp_path)
    measured_manifest(d, {"q8_0": (0.010, stderr, 0.96, 1.0), "q6_k": (0.020, stderr, 0.94, 2.0)})
    profile = store.get_profile("raspberry-pi-5-8gb")
    p = planner.plan(d, profile, ctx=1024, min_tps=floor_between_f16_and_q8_0(d, profile))
    assert p.pick is not None and p.pick.quant == pick, p.reason
    tie = quality.tie_kl(*(c.quality for c in p.candidates if c.quant in ("q8_0", "q6_k")))
    assert (tie >= 0.010) is (pick == "q6_k")
    code, out = run_cli("recommend", str(d), "--profile", profile.name, "--ctx", "1024",
                        "--min-tokens-per-s", str(p.min_tps))
    assert code == 0, out
    row = next(line for line in out.splitlines() if "gguf q5_k_m" in line)
    assert "estimated (scaled to 2 measured types)" in row


def test_kv_cache_and_gemma_sliding_window() -> None:
    s = shapes.model_shapes(TINY)
    assert shapes.kv_cache_bytes(s, 4096) == 2 * 2 * 64 * 2 * 4096 * 2  # layers x kv x hd x (K,V) x ctx x f16
    g = shapes.model_shapes({**TINY, "architectures": ["Gemma3ForCausalLM"], "num_hidden_layers": 6,
                             "sliding_window": 512})
    assert shapes.kv_cache_bytes(g, 8192) == 2 * 64 * 2 * 2 * (5 * 512 + 1 * 8192)


# -- detect / calibrate -------------------------------------------------------------------

def test_detect_runs_here_and_yields_a_valid_profile() -> None:
    p = detect.detect_host()
    assert p.origin is schema.Origin.DETECTED and p.memory_gb.value > 0 and p.compute.cpu_cores.value >= 1
    assert 0 < p.usable_memory_gb.value <= p.memory_gb.value
    again = schema.parse_profile(tomllib.loads(store.dump_toml(p)), "detected")
    assert again.device_class is p.device_class and again.runtimes


def test_detect_recognises_a_jetson_from_its_files(tmp_path: Path) -> None:
    (tmp_path / "proc/device-tree").mkdir(parents=True)
    (tmp_path / "etc").mkdir()
    (tmp_path / "proc/device-tree/model").write_text("NVIDIA Jetson Orin Nano Engineering Reference Developer Kit\x00")
    (tmp_path / "proc/meminfo").write_text("MemTotal:        7802492 kB\nMemFree: 1000 kB\nMemAvailable:    5452000 kB\n")
    (tmp_path / "proc/cpuinfo").write_text("processor\t: 0\nFeatures\t: fp asimd asimddp asimdhp\nCPU part\t: 0xd42\n"
                                           "processor\t: 1\n")
    (tmp_path / "etc/nv_tegra_release").write_text("# R36 (release), REVISION: 4.3, GCID: 1, BOARD: generic\n")
    p = detect.detect_host(tmp_path, use_nvml=False)
    assert p.device_class is schema.DeviceClass.JETSON and p.software["l4t"] == "36.4.3"
    assert p.memory_gb.value == pytest.approx(7.44, abs=0.01) and p.usable_memory_gb.value == pytest.approx(5.2, abs=0.01)
    assert "neon" in p.compute.isa and p.mode().bandwidth_gbs.source is not schema.SourceKind.DETECTED


def test_detect_reads_an_nvidia_gpu_through_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    """NVML is optional: a fake pynvml stands in for a driver here."""
    import sys
    import types

    fake = types.SimpleNamespace(
        NVML_CLOCK_MEM=2, nvmlInit=lambda: None, nvmlShutdown=lambda: None, nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetName=lambda h: b"NVIDIA GeForce RTX 4090",
        nvmlDeviceGetMemoryInfo=lambda h: types.SimpleNamespace(total=24 * 2**30, free=22 * 2**30),
        nvmlDeviceGetCudaComputeCapability=lambda h: (8, 9), nvmlDeviceGetMemoryBusWidth=lambda h: 384,
        nvmlDeviceGetMaxClockInfo=lambda h, clock: 10501)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.setattr(detect, "find_spec", lambda name: object())
    p = detect.detect_host()
    assert p.device_class is schema.DeviceClass.DISCRETE_GPU and p.compute.cuda_cc == "8.9"
    assert p.mode().bandwidth_gbs.value == pytest.approx(1008, rel=0.01)  # the datasheet's 1008 GB/s
    assert p.usable_memory_gb.value == 22


def test_calibrated_profile_is_saved_listed_and_usable(run_cli, tmp_path: Path, monkeypatch) -> None:
    fake = calibrate.Calibration(read_gbs=12.5, read_1t_gbs=9.0, copy_gbs=10.0, matmul_gflops=150.0, threads=2,
                                 array_mib=64, seconds=0.1)
    monkeypatch.setattr(calibrate, "measure", lambda *a, **k: fake)
    code, out = run_cli("profile", "calibrate", "--name", "bench-host", "--no-kernels")
    assert code == 0, out
    assert "saved profile 'bench-host'" in out
    p = store.get_profile("bench-host")
    assert p.origin is schema.Origin.CALIBRATED and p.compute.cpu_gflops.value == 150.0
    if p.device_class in (schema.DeviceClass.X86_CPU, schema.DeviceClass.ARM_CPU):
        assert p.mode().bandwidth_gbs.value == 12.5 and p.mode().bandwidth_gbs.source is schema.SourceKind.MEASURED
    code, out = run_cli("profile", "list")
    assert code == 0 and "bench-host" in out and "calibrated" in out
    code, out = run_cli("recommend", str(model_dir(tmp_path)), "--profile", "bench-host", "--json")
    assert code == 0 and json.loads(out)["pick"] is not None


def test_measure_is_quick_and_positive() -> None:
    cal = calibrate.measure(budget_s=1.0, available_bytes=64 * 2**20 * 8)
    assert cal.read_gbs > 0 and cal.copy_gbs > 0 and cal.matmul_gflops > 0
    # the read curve: working sets from 1 MiB up to half the (64 MiB) array, each rate positive
    sizes = [mib for mib, _ in cal.read_curve]
    assert sizes == [m for m in calibrate.CURVE_MIB if m <= 32] and all(gbs > 0 for _, gbs in cal.read_curve)
    # ... stored in the calibrated profile, and it survives the TOML file
    p = calibrate.calibrated_profile(detect.detect_host(name="curve-host"), cal)
    assert p.read_curve is not None and p.read_curve.source is schema.SourceKind.MEASURED
    again = store.load_profile_file(store.save_profile(p), schema.Origin.CALIBRATED)
    assert again.read_curve == p.read_curve and [m for m, _ in again.read_curve.points] == sizes


def _host_with_curve(curve: tuple[tuple[float, float], ...] | None) -> schema.Profile:
    """A calibrated CPU host: 15 GB/s DRAM, 150 GFLOP/s, and (optionally) a read curve."""
    cal = calibrate.Calibration(read_gbs=15.0, read_1t_gbs=15.0, copy_gbs=20.0, matmul_gflops=150.0, threads=1,
                                array_mib=512, seconds=1.0, read_curve=curve or ())
    base = store.get_profile("x86-laptop-ddr5")
    return calibrate.calibrated_profile(dataclasses.replace(base, name="h"), cal)


def test_cost_model_reads_small_models_from_cache_and_large_ones_from_dram() -> None:
    # L2 to 1 MiB at 90 GB/s, a 30 GB/s level to 64 MiB, DRAM (15 GB/s) from 128 MiB on
    curve = ((1.0, 90.0), (4.0, 30.0), (64.0, 30.0), (128.0, 15.0), (256.0, 15.0))
    host, flat = _host_with_curve(curve), _host_with_curve(None)
    dram = host.mode().bandwidth_gbs.value * 1e9
    assert costs.read_bandwidth(host, 512 * 2**10) == pytest.approx(dram * 6)  # below the first point: L2
    assert costs.read_bandwidth(host, 16 * 2**20) == pytest.approx(dram * 2)
    assert dram * 2 > costs.read_bandwidth(host, 96 * 2**20) > dram  # between levels: interpolated in log size
    assert costs.read_bandwidth(host, 2 * 2**30) == dram  # past the curve: the mode's DRAM figure
    assert costs.read_bandwidth(flat, 512 * 2**10) == dram  # no curve: today's single bandwidth
    assert costs.read_bandwidth(host, 512 * 2**10, backend=schema.Backend.CUDA) == dram  # the curve is the CPU's

    def gen(profile: schema.Profile, config: dict) -> float:
        sh = shapes.model_shapes(config)
        w = shapes.onnx_weights(sh, schema.OnnxPrecision.FP32, schema.Backend.CPU)
        return costs.estimate(sh, w, schema.Runtime.ONNXRUNTIME, schema.Backend.CPU, profile, ctx=256, kv_fill=32,
                              onnx_precision=schema.OnnxPrecision.FP32).gen_tps

    small = dict(TINY, num_hidden_layers=8)  # 25 MiB fp32 a token: in the 30 GB/s level
    large = dict(TINY, hidden_size=2048, intermediate_size=5632, num_attention_heads=16, num_key_value_heads=4,
                 head_dim=128, num_hidden_layers=8, vocab_size=32000)  # 1.6 GiB a token: DRAM
    assert gen(host, small) > 1.2 * gen(flat, small)
    assert gen(host, large) == pytest.approx(gen(flat, large))


# -- memory arithmetic against real GGUF files -----------------------------------------------

def make_gguf(path: Path, config: dict, quant: str) -> Path:
    """A GGUF of ``config`` with random weights: f16 via GGUFWriter, other types through
    llama.cpp's own quantizer. (To be replaced by edgekit.converters.gguf once it lands.)"""
    import gguf
    import llama_cpp

    h, ff, n, v = (config[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "vocab_size"))
    heads, kv, hd = config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]
    f16 = path.with_name(path.stem + "-f16.gguf")
    w = gguf.GGUFWriter(str(f16), "llama")
    for add, val in ((w.add_context_length, 1024), (w.add_embedding_length, h), (w.add_block_count, n),
                     (w.add_feed_forward_length, ff), (w.add_head_count, heads), (w.add_head_count_kv, kv),
                     (w.add_rope_dimension_count, hd), (w.add_vocab_size, v), (w.add_file_type, 1)):
        add(val)
    w.add_layer_norm_rms_eps(1e-5)
    rng = np.random.default_rng(0)
    for t in shapes.model_shapes(config).tensors:  # ggml ne is reversed numpy shape
        a = rng.standard_normal(tuple(reversed(t.ne)), dtype=np.float32) * 0.02
        w.add_tensor(t.name, a.astype(np.float16) if t.is_matrix else a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    if quant == "f16":
        return f16.rename(path)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, "LLAMA_FTYPE_MOSTLY_" + quant.upper())
    assert llama_cpp.llama_model_quantize(str(f16).encode(), str(path).encode(), ctypes.byref(params)) == 0
    return path


SHAPE_CASES = {
    "untied": {},
    "tied": {"tie_word_embeddings": True},  # token_embd doubles as the LM head: it gets the output's type
    "odd-ffn": {"intermediate_size": 800, "num_hidden_layers": 9, "num_key_value_heads": 1},  # k-quant fallbacks
}


@pytest.mark.parametrize("case", list(SHAPE_CASES))
@pytest.mark.parametrize("quant", ["f16", "q8_0", "q4_k_m", "q2_k"])
def test_predicted_gguf_weights_match_a_real_file(tmp_path: Path, quant: str, case: str) -> None:
    import gguf

    config = {**TINY, **SHAPE_CASES[case]}
    path = make_gguf(tmp_path / f"tiny-{quant}.gguf", config, quant)
    s = shapes.model_shapes(config)
    predicted = shapes.gguf_weights(s, quant)
    reader = gguf.GGUFReader(str(path))
    real_types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert real_types == predicted.types  # llama.cpp's per-tensor choices, mirrored exactly
    assert sum(int(t.n_bytes) for t in reader.tensors) == predicted.total_bytes
    on_disk = path.stat().st_size
    assert abs(predicted.total_bytes - on_disk) / on_disk < 0.01
    assert abs(shapes.gguf_file_bytes(s, quant) - on_disk) / on_disk < 0.01


def test_mixed_types_follow_llama_cpp_rules() -> None:
    s = shapes.model_shapes({**TINY, "num_hidden_layers": 16, "num_key_value_heads": 1})
    t = shapes.gguf_tensor_types(s, "q4_k_m")
    more_bits = [i for i in range(16) if t[f"blk.{i}.ffn_down.weight"] == "Q6_K"]
    assert more_bits == [0, 1, 4, 7, 10, 13, 14, 15]  # first/last eighth and every third between
    assert t["output.weight"] == "Q6_K" and t["blk.3.ffn_up.weight"] == "Q4_K" and t["blk.0.attn_norm.weight"] == "F32"
    q2 = shapes.gguf_tensor_types(s, "q2_k")
    assert q2["blk.5.attn_v.weight"] == "Q4_K" and q2["blk.5.ffn_down.weight"] == "Q3_K"  # GQA 4: attn_v Q4_K
    odd = shapes.gguf_tensor_types(shapes.model_shapes({**TINY, "intermediate_size": 800}), "q4_k_m")
    assert odd["blk.0.ffn_down.weight"] == "Q5_0" and odd["blk.1.ffn_down.weight"] == "Q8_0"  # rows of 800: fallbacks
    assert odd["blk.0.ffn_gate.weight"] == "Q4_K"


def test_errors_are_edgekit_errors() -> None:
    with pytest.raises(EdgekitError):
        store.get_profile("nope")
    with pytest.raises(EdgekitError):
        store.get_profile("rtx-4090").mode("turbo")


def test_predictions_match_the_real_converter_on_the_demo_model(tmp_path: Path) -> None:
    """The same arithmetic against edgekit's own converter (tokenizer metadata included)."""
    import gguf

    import edgekit.converters.gguf.convert as convert
    from edgekit.demo import demo_model_dir

    src = demo_model_dir()
    out = tmp_path / "out"
    convert.convert_gguf(src, out, "f16,q8_0,q4_k_m", verify_artifacts=False)
    config = json.loads((src / "config.json").read_text())
    s = shapes.model_shapes(config)
    tok = shapes.tokenizer_metadata_bytes(src, config["vocab_size"])
    for quant in ("f16", "q8_0", "q4_k_m"):
        path = next(out.glob(f"*-{quant}.gguf"))
        reader = gguf.GGUFReader(str(path))
        predicted = shapes.gguf_weights(s, quant)
        assert {t.name: t.tensor_type.name for t in reader.tensors} == predicted.types
        assert sum(int(t.n_bytes) for t in reader.tensors) == predicted.total_bytes
        assert abs(shapes.gguf_file_bytes(s, quant, tok) - path.stat().st_size) / path.stat().st_size < 0.01
    # an output directory (manifest, no config.json) plans from its source's config
    p = planner.plan(out, store.get_profile("raspberry-pi-5-8gb"), ctx=1024)
    assert p.pick is not None and p.params == s.params


@pytest.fixture(scope="module")
def demo_onnx_int4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo model exported to ONNX int4 and verified (about 10 s): a real manifest entry."""
    from edgekit.converters.onnx.convert import convert_onnx
    from edgekit.demo import demo_model_dir

    out = tmp_path_factory.mktemp("demo-onnx-int4")
    convert_onnx(demo_model_dir(), out, "int4", name="demo")
    return out


def test_recommend_uses_measured_onnx_quality_from_an_output_dir(run_cli, demo_onnx_int4: Path) -> None:
    entry = next(a for a in json.loads((demo_onnx_int4 / "edgekit.json").read_text())["artifacts"]
                 if a["format"] == "onnx" and a["quant"] == "int4")
    v = entry["verification"]
    p = planner.plan(demo_onnx_int4, store.get_profile("x86-laptop-ddr5"), ctx=1024)
    onnx = {c.quant: c for c in p.candidates if c.format is planner.Format.ONNX}
    int4 = onnx["int4"]
    assert int4.quality.source is planner.QualitySource.MEASURED and int4.artifact == entry["file"]
    assert (int4.quality.mean_kl, int4.quality.top1) == (v["mean_kl"], v["top1"])
    from edgekit.converters.quality import DEFAULT_EVAL_TOKENS  # the run's evaluation size

    assert int4.quality.kl_stderr == v["kl_stderr"] and int4.quality.n_positions == v["n_positions"]
    assert v["n_positions"] >= DEFAULT_EVAL_TOKENS
    assert int4.quality != quality.QUALITY_TABLE[(planner.Format.ONNX, "int4")].quality
    assert onnx["fp32"].quality.source is planner.QualitySource.ESTIMATED  # not built: from the table
    # GGUF candidates stay estimated (the manifest has no GGUF entry), scaled to the one measured type
    gguf = {c.quant: c.quality for c in p.candidates if c.format is planner.Format.GGUF}
    assert all(q.source is planner.QualitySource.ESTIMATED for q in gguf.values())
    assert gguf["q4_k_m"].scaled_to == 1 and gguf["f16"].scaled_to == 0
    code, out = run_cli("recommend", str(demo_onnx_int4), "--profile", "x86-laptop-ddr5", "--ctx", "1024", "--json")
    assert code == 0, out
    row = next(c for c in json.loads(out)["candidates"] if c["format"] == "onnx" and c["quant"] == "int4")
    assert row["quality"]["source"] == "measured" and row["artifact"] == entry["file"]
    assert row["quality"]["mean_kl"] == v["mean_kl"]


# -- benchmarks/profile_fit.py: refitting the CPU kernel table ------------------------------

def _load_profile_fit():  # type: ignore[no-untyped-def]
    import importlib.util

    path = Path(__file__).parent.parent / "benchmarks" / "profile_fit.py"
    spec = importlib.util.spec_from_file_location("profile_fit", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_profile_fit_recovers_runs_the_cost_model_made_and_restores_the_table(tmp_path: Path, capsys) -> None:
    # "measurements" made by the cost model itself with a known table, at 1 and 2 threads, from
    # models in cache and out of it: a working fit reproduces them closely, whatever it starts from
    curve = ((1.0, 80.0), (4.0, 32.0), (64.0, 30.0), (128.0, 16.0), (512.0, 16.0))
    runs = []
    for threads in (1, 2):
        cal = calibrate.Calibration(read_gbs=16.0 * threads, read_1t_gbs=16.0, copy_gbs=20.0,
                                    matmul_gflops=150.0 * threads, threads=threads, array_mib=512, seconds=1.0,
                                    read_curve=curve)
        profile = calibrate.calibrated_profile(detect.detect_host(), cal)
        settings = {"ctx": 577, "prompt": 512, "gen": 64, "reps": 3, "threads": threads}
        results = []
        for hidden, layers, ff, vocab in ((256, 4, 512, 1024), (512, 8, 1536, 8000), (1024, 12, 2816, 32000)):
            config = dict(TINY, hidden_size=hidden, num_hidden_layers=layers, intermediate_size=ff, vocab_size=vocab,
                          num_attention_heads=hidden // 64, num_key_value_heads=2, head_dim=64)
            sh = shapes.model_shapes(config)
            for quant in ("f16", "q8_0", "q4_k_m"):
                cost = costs.estimate(sh, shapes.gguf_weights(sh, quant), schema.Runtime.LLAMA_CPP, schema.Backend.CPU,
                                      profile, ctx=577, kv_fill=32, prompt_len=512, threads=threads)
                results.append({"artifact": f"m{hidden}-{quant}.gguf", "format": "gguf", "quant": quant,
                                "config": config, "measured": {"gen_tps": cost.gen_tps,
                                                               "prompt_tps": cost.prompt_tps}})
        path = tmp_path / f"t{threads}.json"
        path.write_text(json.dumps({"calibration": cal.to_dict(), "settings": settings, "results": results}))
        runs.append(str(path))
    (tmp_path / "t1.bench.json").write_text("[]")  # profile_check's raw file beside it: skipped
    before = (dict(cost_tables.CPU_KERNELS[cost_tables.KernelFamily.X86_AVX512]), dict(costs.CPU_OVERHEADS), costs.CACHE_FOOTPRINT)

    assert _load_profile_fit().main([*runs, str(tmp_path / "t1.bench.json")]) == 0
    out = capsys.readouterr().out
    rms = float(out.split("rms ")[1].split("%")[0])
    assert rms < 3.0, out
    assert "'Q4_K': CpuKernel(" in out and "barrier" in out  # pasteable rows; 2-thread runs fit the barrier
    assert (dict(cost_tables.CPU_KERNELS[cost_tables.KernelFamily.X86_AVX512]), dict(costs.CPU_OVERHEADS), costs.CACHE_FOOTPRINT) == before
    assert _load_profile_fit().main([*runs, "--metric", "prompt"]) == 0
    out = capsys.readouterr().out
    assert float(out.split("rms ")[1].split("%")[0]) < 3.0, out
    assert (dict(cost_tables.CPU_KERNELS[cost_tables.KernelFamily.X86_AVX512]), dict(costs.CPU_OVERHEADS), costs.CACHE_FOOTPRINT) == before


def test_profile_fit_without_usable_runs_says_so(tmp_path: Path) -> None:
    cal = calibrate.Calibration(read_gbs=16.0, read_1t_gbs=16.0, copy_gbs=20.0, matmul_gflops=150.0, threads=1,
                                array_mib=512, seconds=1.0)
    empty = tmp_path / "r.json"
    empty.write_text(json.dumps({"calibration": cal.to_dict(), "settings": {}, "results": []}))
    with pytest.raises(SystemExit, match=r"no measured llama\.cpp rows with a config"):
        _load_profile_fit().main([str(empty)])
    empty.write_text(json.dumps({"calibration": {"read_gbs": 1.0}, "settings": {}, "results": []}))
    with pytest.raises(SystemExit, match="the calibration is not profile_check's"):
        _load_profile_fit().main([str(empty)])
