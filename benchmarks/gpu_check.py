"""The GPU paths on a real NVIDIA GPU, against the CPU in the same run.

    python benchmarks/gpu_check.py --dry-run                     # on a CPU host: every step, CUDA replaced by CPU
    python benchmarks/gpu_check.py -o benchmarks/results/gpu_check_h200.json   # on the GPU machine

Steps (each recorded; one failing does not stop the others):

1. ``doctor``: `edgekit doctor`'s facts, findings and raw probes (a recorded fixture for tests);
   on a GPU the llama.cpp build must have a CUDA backend and see the GPU.
2. models: the packaged demo model (trained) and a synthetic 1B-shaped Llama (random weights,
   hidden 2048, 16 layers, intermediate 8192, 32/8 heads), each as GGUF f16 and q4_k_m.
3. ``greedy``: greedy text on the GPU (all layers offloaded) equals the CPU's, per artifact
   (the demo must be equal; a random model's flat logits may split on a near-tie: recorded with
   the first differing character).
4. ``bench``: `edgekit bench` tg/pp on the GPU vs the CPU, same artifacts, one run: ratios.
5. ``partial``: n_gpu_layers 0, half, all: decode speed and text (equal to the full offload's).
6. ``profiler``: the profiler's prediction (profile ``h200``, CUDA backend) against step 4's GPU
   measurement.

``--dry-run`` runs the same code on the CPU: device "cpu" where "cuda" would be, the detected
host profile instead of ``h200``, a small synthetic shape, one repetition; the partial-offload
step checks that a CPU build refuses n_gpu_layers != 0 instead of running it on the CPU.

The GPU machine has no package index (Python 3.12, torch with CUDA 13, transformers; no
llama-cpp-python, gguf, click...). Prepare a wheel folder here, under the ignored bench-out/
so the device tool can carry it (64 MiB in all):

    scripts/build-llama-cuda.sh /tmp/lcpp/llama_cpp_python-0.3.36.tar.gz 90 bench-out/gpu_wheels
    pip download --only-binary :all: --python-version 3.12 --platform manylinux_2_28_x86_64 --platform any \
        --no-deps -d bench-out/gpu_wheels click 'gguf>=0.17,<0.20' psutil sentencepiece 'peft>=0.17' starlette uvicorn diskcache
    pip wheel --no-deps --no-build-isolation -w bench-out/gpu_wheels . && rm -rf build    # edgekit itself (~6 MB)

(the sm_90 wheel is 255 MiB and the 0.3.36 sdist 73 MiB, both over the 64 MiB the device tool
carries: `scripts/trim-llama-sdist.sh SDIST bench-out/gpu_wheels/llama-src.tar.gz` writes a 48 MiB
sdist without llama.cpp's test vocabularies and docs -- checked to configure with CUDA and to list
the same 144 CUDA objects -- to build there with `CMAKE_BUILD_PARALLEL_LEVEL=16
scripts/build-llama-cuda.sh bench-out/gpu_wheels/llama-src.tar.gz 90 bench-out/gpu_wheels`),
then on the GPU machine, from the repository root, with carry ["bench-out/gpu_wheels"]:

    pip install --no-index --no-deps bench-out/gpu_wheels/*.whl && python benchmarks/gpu_check.py

The preflight lists any module still missing. The CUDA runtime libraries of pip's ``nvidia-*``
wheels (torch's cuBLAS and cudart) are put on LD_LIBRARY_PATH by re-executing this script.
A failed step can be rerun alone: ``--steps bench,profiler`` (models are cached in --work).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _results import save_results  # benchmarks/ sibling (scripts run from this folder)

SYNTH_1B = "2048,16,8192,32,8,32000"  # hidden,layers,intermediate,heads,kv_heads,vocab (~1.1B parameters)
SYNTH_DRY = "512,4,1536,8,2,2048"
PROMPT = "The function returns"
STEPS = ("doctor", "models", "greedy", "bench", "partial", "profiler")
NEEDED = ("click", "numpy", "gguf", "transformers", "safetensors", "psutil", "llama_cpp", "jinja2", "tokenizers")


def _cuda_lib_dirs() -> list[str]:
    """lib/ folders of pip's nvidia-* wheels (cu13/cu12 layouts), where libcudart/libcublas live."""
    spec = importlib.util.find_spec("nvidia")
    dirs = []
    for root in (spec.submodule_search_locations or []) if spec else []:
        dirs += [str(p) for p in sorted(Path(root).glob("*/lib")) if any(p.glob("libcu*.so*"))]
    return dirs


def _reexec_with_cuda_libs() -> None:
    dirs = [d for d in _cuda_lib_dirs() if d not in os.environ.get("LD_LIBRARY_PATH", "").split(":")]
    if dirs and not os.environ.get("GPU_CHECK_REEXEC"):
        env = {**os.environ, "GPU_CHECK_REEXEC": "1",
               "LD_LIBRARY_PATH": ":".join([*dirs, *filter(None, [os.environ.get("LD_LIBRARY_PATH")])])}
        os.execve(sys.executable, [sys.executable, *sys.argv], env)


class Steps:
    """Runs each step, records its result or its error and its wall time."""

    def __init__(self) -> None:
        self.results: dict[str, Any] = {}

    def run(self, name: str, fn: Callable[[], Any]) -> Any:
        print(f"- {name}", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        try:
            out = fn()
            self.results[name] = {"ok": True, "seconds": round(time.perf_counter() - t0, 2), "result": out}
            return out
        except Exception as e:  # recorded, and the next step runs: one GPU session must return everything it can
            self.results[name] = {"ok": False, "seconds": round(time.perf_counter() - t0, 2),
                                  "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(limit=6)}
            print(f"  FAILED: {type(e).__name__}: {e}", file=sys.stderr)
            return None


def step_doctor(dry: bool) -> dict[str, Any]:
    from edgekit.doctor import diagnose, gather

    report = diagnose(gather())
    data = report.to_dict()
    if not dry:
        llama = report.facts.get("llama_cpp", {})
        if "CUDA" not in (llama.get("backends") or "") or not llama.get("gpu_devices"):
            raise RuntimeError(f"llama.cpp has no usable CUDA backend: {llama} {[f.line() for f in report.findings]}")
    return data


def step_models(work: Path, shape: str) -> dict[str, list[str]]:
    from profile_check import make_synthetic  # benchmarks/ sibling

    from edgekit.converters.gguf.convert import convert_gguf
    from edgekit.demo import demo_model_dir

    demo = work / "demo"
    if not (demo / "demo-q4_k_m.gguf").exists():
        convert_gguf(demo_model_dir(), demo, "f16,q4_k_m", name="demo", verify_artifacts=False)  # not under test here
    synth = work / "synthetic"
    if not (synth / "synthetic-q4_k_m.gguf").exists():
        hidden, layers, ff, heads, kv, vocab = (int(x) for x in shape.split(","))
        make_synthetic(synth, ["f16", "q4_k_m"], hidden, layers, ff, heads, kv, vocab)
    return {"demo": sorted(str(p) for p in demo.glob("*.gguf")),
            "synthetic": sorted(str(p) for p in synth.glob("synthetic-*.gguf"))}


def _generate(path: str, max_tokens: int, **load: Any) -> dict[str, Any]:
    import edgekit

    with edgekit.load(path, n_ctx=512, **load) as s:
        s.generate(PROMPT, max_tokens=4)  # warm-up: CUDA graphs and kernels load on first use
        r = s.generate(PROMPT, max_tokens=max_tokens)
    return {"text": r.text, "tokens": r.stats.completion_tokens, "gen_tps": r.stats.generation_tokens_per_s,
            "prompt_tps": r.stats.prompt_tokens_per_s}


def _first_difference(a: str, b: str) -> int | None:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), None if len(a) == len(b) else min(len(a), len(b)))


def step_greedy(models: dict[str, list[str]], gpu_device: str, max_tokens: int) -> list[dict[str, Any]]:
    rows = []
    for kind, paths in models.items():
        for path in paths:
            cpu = _generate(path, max_tokens, device="cpu")
            gpu = _generate(path, max_tokens, device=gpu_device)
            rows.append({"model": kind, "artifact": Path(path).name, "equal": cpu["text"] == gpu["text"],
                         "first_difference": _first_difference(cpu["text"], gpu["text"]),
                         "cpu_text": cpu["text"], "gpu_text": gpu["text"]})
    demo_diff = [r for r in rows if r["model"] == "demo" and not r["equal"]]
    if demo_diff:
        raise RuntimeError(f"the trained demo's greedy text differs between CPU and GPU: {demo_diff}")
    return rows


def step_bench(models: dict[str, list[str]], gpu_device: str, prompt: int, gen: int, reps: int, out: Path) -> dict[str, Any]:
    from edgekit.bench import BenchSettings, run_bench

    paths = [Path(p) for ps in models.values() for p in ps]
    runs: dict[str, Any] = {}
    for role, device in (("cpu", "cpu"), ("gpu", gpu_device)):  # "gpu" runs on the CPU in --dry-run
        settings = BenchSettings(prompt_tokens=prompt, gen_tokens=gen, repetitions=reps, warmup=1, device=device)
        res = run_bench(paths, settings, output=out.with_suffix(f".bench-{role}.json"))
        runs[role] = {r.artifact: {"status": r.status, "error": r.error,
                                     "tg": (r.metrics.get(settings.tg_name) or {}).get("max"),
                                     "pp": (r.metrics.get(settings.pp_name) or {}).get("max"),
                                     "peak_rss_bytes": r.memory.get("peak_rss_bytes"),
                                     "gpu_memory_bytes": r.memory.get("gpu_memory_bytes")} for r in res.results}
    ratios = {}
    for art, c in runs["cpu"].items():
        g = runs["gpu"].get(art, {})
        ratios[art] = {k: round(g[k] / c[k], 2) if g.get(k) and c.get(k) else None for k in ("tg", "pp")}
    return {"settings": {"prompt": prompt, "gen": gen, "reps": reps, "gpu_device": gpu_device}, "runs": runs,
            "gpu_over_cpu": ratios}


def step_partial(path: str, n_layers: int, dry: bool, max_tokens: int) -> list[dict[str, Any]]:
    from edgekit.errors import RuntimeLoadError

    rows = []
    for layers in (0, n_layers // 2, n_layers, -1):
        try:
            r = _generate(path, max_tokens, n_gpu_layers=layers)
            rows.append({"n_gpu_layers": layers, **r})
        except RuntimeLoadError as e:
            if not (dry and layers != 0):
                raise
            rows.append({"n_gpu_layers": layers, "refused": e.one_line()})  # a CPU build must refuse, not run on the CPU
    if dry:
        if any("refused" not in r for r in rows if r["n_gpu_layers"] != 0):
            raise RuntimeError("a CPU-only build accepted n_gpu_layers != 0")
    else:
        full = next(r["text"] for r in rows if r["n_gpu_layers"] == -1)
        for r in rows:
            r["text_equals_full_offload"] = r["text"] == full
    return rows


def step_profiler(models: dict[str, list[str]], bench: dict[str, Any], gpu_device: str, profile_name: str | None,
                  prompt: int, gen: int) -> list[dict[str, Any]]:
    from profile_check import _config_for  # benchmarks/ sibling

    from edgekit.profiles.costs import estimate
    from edgekit.profiles.detect import detect_host, usable_cores
    from edgekit.profiles.schema import Backend, Runtime
    from edgekit.profiles.shapes import model_shapes, weight_plan
    from edgekit.profiles.store import get_profile

    profile = get_profile(profile_name) if profile_name else detect_host()
    backend = Backend.CUDA if gpu_device == "cuda" else Backend.CPU
    rows = []
    for paths in models.values():
        for path in paths:
            p = Path(path)
            quant = p.stem.rsplit("-", 1)[-1]
            shapes = model_shapes(_config_for(p.parent, p, "gguf"))
            weights = weight_plan(shapes, quant, None, backend)
            pred = estimate(shapes, weights, Runtime.LLAMA_CPP, backend, profile, ctx=prompt + gen + 1,
                            kv_fill=max(1, gen // 2), prompt_len=prompt, threads=usable_cores())
            meas = bench["runs"]["gpu"].get(p.name, {})
            row: dict[str, Any] = {"artifact": p.name, "profile": profile.name, "backend": backend.value,
                                   "pred_tg": round(pred.gen_tps, 1), "meas_tg": meas.get("tg"),
                                   "pred_pp": round(pred.prompt_tps, 1), "meas_pp": meas.get("pp")}
            for k in ("tg", "pp"):
                m = row[f"meas_{k}"]
                row[f"err_{k}"] = round((row[f"pred_{k}"] - m) / m, 3) if m else None
            rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="the same steps on the CPU (no GPU needed)")
    ap.add_argument("--work", type=Path, default=Path("bench-out/gpu_check"), help="models and raw bench files")
    ap.add_argument("--shape", default=None, help=f"synthetic shape (default {SYNTH_1B}; --dry-run {SYNTH_DRY})")
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--gen", type=int, default=128)
    ap.add_argument("--reps", type=int, default=None, help="bench repetitions (default 2; --dry-run 1)")
    ap.add_argument("--max-tokens", type=int, default=48, help="greedy / partial-offload text length")
    ap.add_argument("--steps", default=",".join(STEPS),
                    help="steps to run (a rerun after a failure: only the failed ones; models are cached in --work)")
    ap.add_argument("-o", "--output", type=Path, default=None,
                    help="JSON (default benchmarks/results/gpu_check.json; --dry-run: under --work)")
    args = ap.parse_args(argv)
    dry = args.dry_run
    if not dry:
        _reexec_with_cuda_libs()
    missing = [m for m in NEEDED if importlib.util.find_spec(m) is None]
    if missing:
        print(f"missing modules: {', '.join(missing)} -- pip install --no-index --find-links WHEELS_DIR <them> "
              "(llama_cpp: the wheel from scripts/build-llama-cuda.sh)", file=sys.stderr)
        return 2
    gpu = "cpu" if dry else "cuda"
    shape = args.shape or (SYNTH_DRY if dry else SYNTH_1B)
    reps = args.reps or (1 if dry else 2)
    prompt, gen = (64, 16) if dry else (args.prompt, args.gen)
    out = args.output or (args.work / "gpu_check-dry-run.json" if dry else Path("benchmarks/results/gpu_check.json"))
    args.work.mkdir(parents=True, exist_ok=True)

    wanted = {s.strip() for s in args.steps.split(",") if s.strip()}
    if wanted - set(STEPS):
        ap.error(f"unknown steps {sorted(wanted - set(STEPS))}: valid {', '.join(STEPS)}")
    if wanted & {"greedy", "bench", "partial", "profiler"}:
        wanted |= {"models"}  # cached: a rerun only finds the files
    if "profiler" in wanted:
        wanted |= {"bench"}
    steps = Steps()
    t0 = time.perf_counter()
    if "doctor" in wanted:
        steps.run("doctor", lambda: step_doctor(dry))
    models = steps.run("models", lambda: step_models(args.work, shape)) if "models" in wanted else None
    if models:
        if "greedy" in wanted:
            steps.run("greedy", lambda: step_greedy(models, gpu, args.max_tokens))
        bench = steps.run("bench", lambda: step_bench(models, gpu, prompt, gen, reps, args.work / "bench")) \
            if "bench" in wanted else None
        q4 = next(p for p in models["synthetic"] if p.endswith("q4_k_m.gguf"))
        if "partial" in wanted:
            steps.run("partial", lambda: step_partial(q4, int(shape.split(",")[1]), dry, args.max_tokens))
        if bench and "profiler" in wanted:
            steps.run("profiler", lambda: step_profiler(models, bench, gpu, None if dry else "h200", prompt, gen))

    from edgekit.ui import format_table

    status = [[name, "ok" if r["ok"] else "FAILED", r["seconds"], r.get("error", "")] for name, r in steps.results.items()]
    print(format_table(["step", "status", "seconds", "error"], status))
    bench_res = (steps.results.get("bench") or {}).get("result")
    if bench_res:
        rows = [[art, c.get("tg"), bench_res["runs"]["gpu"].get(art, {}).get("tg"), r["tg"],
                 c.get("pp"), bench_res["runs"]["gpu"].get(art, {}).get("pp"), r["pp"]]
                for art, r in bench_res["gpu_over_cpu"].items() for c in [bench_res["runs"]["cpu"][art]]]
        print(format_table(["artifact", "tg cpu", f"tg {gpu}", "x", "pp cpu", f"pp {gpu}", "x"], rows))
    prof = (steps.results.get("profiler") or {}).get("result")
    if prof:
        print(format_table(["artifact", "tg pred", "tg meas", "err", "pp pred", "pp meas", "err"],
                           [[r["artifact"], r["pred_tg"], r["meas_tg"], r["err_tg"], r["pred_pp"], r["meas_pp"], r["err_pp"]]
                            for r in prof]))
    report = {"dry_run": dry, "host": platform.node(), "machine": platform.machine(), "device": gpu, "shape": shape,
              "seconds": round(time.perf_counter() - t0, 1), "steps": steps.results}
    save_results(json.loads(json.dumps(report, default=str)), out)
    return 0 if all(r["ok"] for r in steps.results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
