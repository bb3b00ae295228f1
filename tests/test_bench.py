"""`edgekit bench` on the demo model: real llama.cpp runs in real child processes, results
files, plots and the markdown report; tegrastats parsing; bad input and Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgekit.bench import BenchSettings, load_results, run_bench
from edgekit.bench.power import TOTAL_RAILS, parse_line
from edgekit.bench.results import SCHEMA_VERSION, csv_text
from edgekit.cli import main
from edgekit.errors import EdgekitError
from edgekit.fsutil import sha256_file

SAMPLES = Path(__file__).parent / "data" / "tegrastats_samples.txt"
SMALL = dict(prompt_tokens=48, gen_tokens=12, repetitions=2, warmup=1, threads=(1,))


@pytest.fixture(scope="module")
def results_file(demo_out: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench-results") / "results.json"
    run_bench([demo_out], BenchSettings(**SMALL), output=out, label="board-a")
    return out


def samples() -> dict[str, str]:
    boards, name = {}, ""
    for line in SAMPLES.read_text().splitlines():
        if line.startswith("## "):
            name = line[3:].split()[0]
        elif line and not line.startswith("#"):
            boards[name] = line
    return boards


# -- measurement -------------------------------------------------------------------------

def test_results_are_well_formed_with_conditions(demo_out: Path, results_file: Path) -> None:
    runs = load_results(results_file)
    assert runs.status == "complete" and runs.schema == SCHEMA_VERSION
    assert {r.quant for r in runs.results} == {"f16", "q8_0", "q4_k_m"}
    for r in runs.results:
        assert r.status == "complete" and r.error is None and r.backend == "llama.cpp" and r.kind == "gguf"
        assert r.sha256 == sha256_file(demo_out / r.artifact)
        assert len(r.repetitions) == 2
        for name in ("pp48", "tg12", "ttft_ms"):
            m = r.metrics[name]
            assert m["n"] == 2 and m["mean"] > 0 and m["std"] >= 0 and m["min"] <= m["mean"] <= m["max"]
        # pp tokens/s is the prompt over its own time: consistent with TTFT
        assert r.metrics["pp48"]["max"] == pytest.approx(48 / (r.metrics["ttft_ms"]["min"] / 1000), rel=1e-6)
        mem = r.memory
        assert 0 < mem["baseline_rss_bytes"] < mem["loaded_rss_bytes"] <= mem["peak_rss_bytes"]
        assert mem["gpu_memory_bytes"] is None and r.power is None  # no GPU, no tegrastats here
        c = r.conditions
        for key in ("date", "edgekit_version", "device_label", "cpu_model", "power_mode", "runtime", "threads",
                    "n_ctx", "artifact_sha256", "libraries"):
            assert c[key] not in (None, ""), key
        assert c["threads"] == 1 and c["n_ctx"] == 48 + 12 + 1 and c["artifact_sha256"] == r.sha256
        assert c["libraries"]["llama_cpp_python"] and c["device_label"] == "board-a"
        assert r.quality is not None and r.quality["mean_kl"] >= 0  # from the manifest's verification
    kls = {r.quant: r.quality["mean_kl"] for r in runs.results if r.quality}
    assert kls["f16"] < kls["q8_0"] < kls["q4_k_m"]
    assert runs.host["libraries"]["edgekit"] and runs.host["llama_cpp_build"]["system_info"]


def test_generation_ignores_eos_and_reset_drops_the_cache(demo_out: Path) -> None:
    """tgN needs N tokens even where the model ends its text; ppN must not be served from cache."""
    import edgekit

    with edgekit.load(demo_out / "demo-q8_0.gguf", n_ctx=1024, n_threads=1) as s:
        # near-uniform sampling reaches an end-of-generation token within a few hundred tokens
        hot = {"temperature": 100.0, "max_tokens": 900}
        seed = next(k for k in range(50) if s.generate("Return", seed=k, **hot).finish_reason == "stop")
        stopped = s.last_stats.completion_tokens
        assert stopped < 900
        s.generate("Return", seed=seed, ignore_eos=True, **hot)
        assert s.last_finish_reason == "length" and s.last_stats.completion_tokens == 900
        import llama_cpp

        def prompt_tokens_evaluated() -> int:
            return int(llama_cpp.llama_perf_context(s.llm._ctx.ctx).n_p_eval)

        prompt = s.tokenize("Return the number of items in a list.")
        s.generate(prompt, max_tokens=1)
        before = prompt_tokens_evaluated()
        s.generate(prompt, max_tokens=1)  # llama-cpp-python serves a repeated prompt from its KV cache
        assert prompt_tokens_evaluated() == before
        s.reset()
        s.generate(prompt, max_tokens=1)
        assert prompt_tokens_evaluated() == before + len(prompt)  # evaluated in full again


def test_csv_has_one_row_per_result(results_file: Path) -> None:
    import csv
    import io

    rows = list(csv.DictReader(io.StringIO(csv_text([load_results(results_file)]))))
    assert len(rows) == 3 and all(float(r["tg12_tok_s"]) > 0 for r in rows)
    assert all(r["cond.libraries.llama_cpp_python"] for r in rows)


def test_onnx_artifact_benches_and_evaluates(demo_out: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """The second artifact kind: an ONNX (int4, ONNX Runtime GenAI) export of the demo model."""
    import edgekit
    from edgekit.bench.evaluate import evaluate
    from edgekit.demo import demo_model_dir, heldout_path
    from edgekit.manifest import load_manifest

    out = tmp_path_factory.mktemp("bench-onnx")
    edgekit.convert(demo_model_dir(), out, to="onnx", quants="int4")
    runs = run_bench([out], BenchSettings(**SMALL))
    (r,) = runs.results
    assert r.kind == "onnx" and r.backend == "onnxruntime-genai" and r.status == "complete", r.error
    assert r.metrics["tg12"]["n"] == 2 and r.metrics["pp48"]["mean"] > 0
    (entry,) = load_manifest(out).artifacts  # bench and manifest digest a directory the same way
    assert r.sha256 == entry.sha256 and r.size_bytes == entry.size_bytes > 1_000_000
    assert r.conditions["libraries"]["onnxruntime_genai"] and r.conditions["runtime"] == "onnxruntime-genai"
    assert r.quality is not None and r.quality["mean_kl"] > 0
    ev = evaluate(out / r.artifact, heldout_path(), reference=demo_out / "demo-f16.gguf", n_ctx=256, max_chunks=2)
    assert ev.kl is not None and 0 < ev.kl.mean < 0.2 and 50 < ev.kl.same_top1_pct < 100


# -- report ------------------------------------------------------------------------------

def _assert_real_png(path: Path) -> None:
    import matplotlib.image as mpimg
    import numpy as np

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = mpimg.imread(path)
    h, w = img.shape[:2]
    assert h >= 300 and w >= 400
    colors = np.unique((img[..., :3] * 255).astype(np.uint8).reshape(-1, 3), axis=0)
    assert len(colors) > 20 and img[..., :3].std() > 0.05  # drawn, not blank


def test_cli_bench_and_report_compare_two_devices(demo_out: Path, results_file: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    second = tmp_path / "board-b.json"
    res = runner.invoke(main, ["bench", str(demo_out / "demo-q4_k_m.gguf"), "-p", "32", "-n", "8", "-r", "2",
                               "-t", "1", "--label", "board-b", "-o", str(second), "--csv", str(tmp_path / "b.csv")])
    assert res.exit_code == 0, res.output
    assert "demo-q4_k_m.gguf" in res.output and "pp32 t/s" in res.output and "tg8 t/s" in res.output
    assert (tmp_path / "b.csv").read_text().count("\n") == 2
    rep = tmp_path / "report"
    res = runner.invoke(main, ["bench", "report", str(results_file), str(second), "-o", str(rep)])
    assert res.exit_code == 0, res.output
    for png in ("tokens_per_s.png", "memory_vs_quality.png"):
        _assert_real_png(rep / png)
    md = (rep / "summary.md").read_text()
    assert "board-a" in md and "board-b" in md and "tg ratio vs" in md
    assert "demo-q4_k_m.gguf" in md and "](tokens_per_s.png)" in md
    q4 = next(line for line in md.splitlines() if line.startswith("| demo-q4_k_m.gguf |"))
    assert q4.count("±") == 4 and "x |" in q4  # both series measured it; ratio filled
    f16 = next(line for line in md.splitlines() if line.startswith("| demo-f16.gguf |"))
    assert " - " in f16  # only board-a measured f16


def test_bench_run_is_the_default_subcommand(demo_out: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(main, ["bench", "--help"])
    assert res.exit_code == 0 and "report" in res.output and "run" in res.output
    out = tmp_path / "r.json"
    res = runner.invoke(main, ["bench", "run", str(demo_out / "demo-q8_0.gguf"), "-p", "16", "-n", "4", "-r", "1",
                               "-t", "1", "-o", str(out), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["results"][0]["metrics"]["tg4"]["n"] == 1 and json.loads(out.read_text()) == data


# -- power (tegrastats) ------------------------------------------------------------------

def test_tegrastats_lines_of_each_board_parse() -> None:
    b = samples()
    orin = parse_line(b["orin-nano"])
    assert orin is not None and orin.rails_mw == {"VDD_IN": 4868, "VDD_CPU_GPU_CV": 521, "VDD_SOC": 1433}
    assert orin.total_mw == 4868 and orin.total_source == "VDD_IN"
    assert (orin.ram_used_mb, orin.ram_total_mb, orin.gpu_util_pct) == (3162, 7620, 17)
    assert orin.cpu_util_pct == pytest.approx(3 / 4)  # "off" cores are not counted
    assert orin.temps_c["tj"] == pytest.approx(47.781)
    agx = parse_line(b["agx-orin"])
    assert agx is not None and agx.total_source == "sum of rails" and agx.total_mw == 3065 + 766 + 3623 + 403
    assert agx.gpu_util_pct == 43 and "RAM" not in agx.rails_mw and "SWAP" not in agx.rails_mw
    xavier = parse_line(b["agx-xavier"])  # JetPack 4: no mW unit
    assert xavier is not None and xavier.rails_mw == {"GPU": 0, "CPU": 313, "SOC": 1100, "CV": 0, "VDDRQ": 313,
                                                      "SYS5V": 1566}
    nano = parse_line(b["nano"])
    assert nano is not None and nano.total_mw == 2013 and nano.total_source == "POM_5V_IN"
    assert "IRAM" not in nano.rails_mw and nano.ram_total_mb == 3964
    thor = parse_line(b["thor"])
    assert thor is not None and thor.total_source == "VIN" and thor.total_mw == 21457 and thor.gpu_util_pct == 0
    assert set(TOTAL_RAILS) & set(thor.rails_mw) == {"VIN"}
    assert parse_line("tegrastats: unknown option") is None


def test_power_and_energy_per_token_from_tegrastats(demo_out: Path, tmp_path: Path) -> None:
    """A replay of recorded Orin lines stands in for tegrastats (no Jetson here): the whole
    path -- subprocess, parsing, phase windows, J/token -- is the one a board runs."""
    line = samples()["orin-nano"]
    script = tmp_path / "tegrastats"
    script.write_text(f"#!{sys.executable}\nimport sys, time\nms = int(sys.argv[sys.argv.index('--interval') + 1])\n"
                      f"while True:\n    print({line!r}, flush=True)\n    time.sleep(ms / 1000)\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    runs = run_bench([demo_out / "demo-q8_0.gguf"], BenchSettings(**SMALL), tegrastats=str(script))
    p = runs.results[0].power
    assert p is not None and p["source"] == "tegrastats" and p["total_rail"] == "VDD_IN" and p["samples"] >= 1
    assert p["gen_w"] == pytest.approx(4.868)
    gen_s = sum(rep["gen_s"] for rep in runs.results[0].repetitions)
    assert p["gen_j_per_token"] == pytest.approx(4.868 * gen_s / (12 * 2), rel=1e-3)


# -- bad input ---------------------------------------------------------------------------

def test_bad_artifacts_are_clear_errors_before_anything_runs(demo_out: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(main, ["bench", str(demo_out / "demo-q8_0.gguf"), str(tmp_path / "nope.gguf"),
                               "-o", str(tmp_path / "r.json")])
    assert res.exit_code == 1 and "nope.gguf does not exist" in res.output
    assert not (tmp_path / "r.json").exists()  # nothing measured, nothing written
    junk = tmp_path / "weights.bin"
    junk.write_bytes(b"PK\x03\x04" + bytes(64))
    res = runner.invoke(main, ["bench", str(junk)])
    assert res.exit_code == 1 and "not an artifact edgekit can run" in res.output
    with pytest.raises(EdgekitError, match="no artifact given"):
        run_bench([], BenchSettings(**SMALL))


def test_results_from_another_version_or_malformed_are_refused(results_file: Path, tmp_path: Path) -> None:
    data = json.loads(results_file.read_text())
    newer = tmp_path / "newer.json"
    newer.write_text(json.dumps({**data, "schema": SCHEMA_VERSION + 1, "edgekit_version": "9.9.9"}))
    res = CliRunner().invoke(main, ["bench", "report", str(newer), "-o", str(tmp_path / "rep")])
    assert res.exit_code == 1 and "written by edgekit 9.9.9" in res.output and "schema" in res.output
    truncated = tmp_path / "truncated.json"
    truncated.write_text(results_file.read_text()[:200])
    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps({"results": []}))
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({**data, "results": [{"artifact": "x"}]}))
    for f, msg in ((truncated, "not JSON"), (foreign, "not an edgekit bench results file"),
                   (broken, "malformed results")):
        res = CliRunner().invoke(main, ["bench", "report", str(f), "-o", str(tmp_path / "rep")])
        assert res.exit_code == 1 and msg in res.output, res.output
        assert res.output.count("\n") == 1  # one line
    assert not (tmp_path / "rep").exists()


def _terminal_sigint() -> None:
    """In the bench's child before exec: SIGINT as a terminal's foreground job has it.

    A suite started in the background of a non-interactive shell (``pytest &``, CI scripts)
    runs with SIGINT ignored, and a child inherits that: the simulated Ctrl-C was then a
    no-op and the bench ran on to the timeout, whatever the load."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")  # a zombie has ended; its parent (init, here) reaps it


def _ended(pid: int, within_s: float = 30) -> bool:
    """Whether ``pid`` has ended (SIGKILLed processes die when next scheduled: a moment under load)."""
    deadline = time.monotonic() + within_s
    while _running(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not _running(pid)


def _start_long_bench(demo_out: Path, tmp_path: Path) -> tuple[subprocess.Popen[str], Path, int, int]:
    """`edgekit bench` of 100000 repetitions with a tegrastats stand-in, started as a terminal
    would start it and measuring; (process, results file, worker pid, the worker's tegrastats pid)."""
    out = tmp_path / "r.json"
    pid_file = tmp_path / "tegrastats.pid"  # its pid and its parent's, the worker's
    script = tmp_path / "tegrastats"
    script.write_text(f"#!{sys.executable}\nimport os, sys, time\n"
                      f"open({str(pid_file)!r}, 'w').write(f'{{os.getpid()}} {{os.getppid()}}')\n"
                      f"while True:\n    print({samples()['orin-nano']!r}, flush=True)\n    time.sleep(0.1)\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    proc = subprocess.Popen([sys.executable, "-m", "edgekit", "bench", str(demo_out / "demo-f16.gguf"),
                             str(demo_out / "demo-q8_0.gguf"), "-p", "64", "-n", "32", "-r", "100000", "-t", "1",
                             "-o", str(out), "--tegrastats", str(script)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, preexec_fn=_terminal_sigint)
    deadline = time.monotonic() + 120
    reps = 0
    while time.monotonic() < deadline and reps < 3:
        time.sleep(0.2)
        try:
            reps = len(json.loads(out.read_text())["results"][0]["repetitions"])
        except (OSError, ValueError, IndexError, KeyError):
            continue
    assert reps >= 3, "the run never got going"
    tegrastats, worker = map(int, pid_file.read_text().split())
    assert _running(tegrastats) and _running(worker) and worker != proc.pid
    return proc, out, worker, tegrastats


def test_ctrl_c_keeps_the_repetitions_already_measured(demo_out: Path, tmp_path: Path) -> None:
    proc, out, worker, tegrastats = _start_long_bench(demo_out, tmp_path)
    reps = len(json.loads(out.read_text())["results"][0]["repetitions"])
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the terminal signals its foreground process group
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted: the repetitions measured so far are in" in err
    data = load_results(out)
    assert data.status == "interrupted" and len(data.results) == 1
    r = data.results[0]
    assert r.status == "interrupted" and len(r.repetitions) >= reps
    assert r.metrics["tg32"]["n"] == len(r.repetitions) and r.metrics["tg32"]["mean"] > 0
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".edgekit-tmp")]
    assert _ended(worker) and _ended(tegrastats), "the worker or its child outlived the interrupted bench"


def test_a_killed_bench_takes_its_worker_with_it(demo_out: Path, tmp_path: Path) -> None:
    """SIGKILL (or SIGTERM, a closed terminal) gives the parent no chance to clean up: the
    worker, in a process group of its own, ends itself and its child when its parent's pipe closes."""
    proc, out, worker, tegrastats = _start_long_bench(demo_out, tmp_path)
    proc.kill()
    proc.communicate(timeout=60)
    assert _ended(worker) and _ended(tegrastats), "the worker or its child outlived the killed bench"
    assert load_results(out).results[0].repetitions  # what was measured is on disk
