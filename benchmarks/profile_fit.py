"""Refit the CPU decode figures of the cost model (profiles/costs.py) to profile_check runs.

    python benchmarks/profile_check.py --synthetic /tmp/s1 --shape 512,8,1536,8,2,8000 --threads 1 -o runs/s1.json
    python benchmarks/profile_check.py OUT_DIR --threads 1 -o runs/demo.json
    python benchmarks/profile_fit.py runs/*.json                 # prints the fitted table and residuals
    python benchmarks/profile_fit.py runs/*.json --runtime onnxruntime
    python benchmarks/profile_fit.py runs/*.json --metric prompt     # the prompt (batched) figures

Every run stores the host's calibration (bandwidth, read curve, GEMM rate) and each model's
config, so a run is re-predicted exactly as profile_check predicted it, with the table's
figures replaced by the fit's. The fit minimises the log error of generation tokens/s over
all runs (scipy least squares): per weight type the kernel's arithmetic fraction of the GEMM
rate and its streaming share, the attention fraction, and the fixed costs per layer and per
token; the cache footprint factor is chosen from a short grid (llama.cpp runs; ONNX Runtime
fits keep the table's). It fits the host it ran on:
paste the figures into the AVX-512 or AVX2 row that matches that host, and keep the runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.profiles.cost_tables import KernelFamily
from edgekit.profiles.schema import Runtime

FOOTPRINTS = (1.5, 2.0, 2.5, 3.0)
# The runs cannot always tell a slow stream from a slow kernel (a type bound by one in every
# run leaves the other free), so a weak prior pulls each figure toward a typical value: a few
# percent of error buys it back, and unidentified figures stay plausible instead of drifting
# to a bound.
PRIOR_WEIGHT = 0.05



def load_runs(paths: list[Path]) -> list[dict[str, Any]]:
    """(profile, shapes, weights, runtime, precision, settings, measured) for every measured row."""
    from edgekit.profiles.calibrate import Calibration, calibrated_profile
    from edgekit.profiles.detect import detect_host
    from edgekit.profiles.schema import Backend, OnnxPrecision
    from edgekit.profiles.shapes import model_shapes, weight_plan

    host, rows = detect_host(), []
    for path in paths:
        report = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(report, dict) or "calibration" not in report:  # e.g. profile_check's raw X.bench.json
            print(f"- skipping {path}: not a profile_check result", file=sys.stderr)
            continue
        cal = dict(report["calibration"] or {})
        if not cal:
            raise SystemExit(f"{path}: no calibration (run profile_check without --profile)")
        cal["read_curve"] = tuple(tuple(p) for p in cal.get("read_curve") or ())
        try:
            profile = calibrated_profile(host, Calibration(**cal))
        except TypeError as e:  # a hand-edited or foreign file
            raise SystemExit(f"{path}: the calibration is not profile_check's ({e})") from e
        s = report["settings"]
        for r in report["results"]:
            if "measured" not in r or "config" not in r:
                continue
            runtime = Runtime.LLAMA_CPP if r["format"] == "gguf" else Runtime.ONNXRUNTIME
            precision = OnnxPrecision(r["quant"]) if runtime is Runtime.ONNXRUNTIME else None
            shapes = model_shapes(r["config"])
            weights = weight_plan(shapes, r["quant"], precision, Backend.CPU)
            rows.append({"name": f"{path.stem}/{r['artifact']}", "profile": profile, "shapes": shapes,
                         "weights": weights, "runtime": runtime, "precision": precision, "settings": s,
                         "gen_tps": r["measured"]["gen_tps"], "prompt_tps": r["measured"]["prompt_tps"]})
    return rows


@contextmanager
def scratch_tables() -> Iterator[None]:
    """The fit rewrites the cost model's tables in place; put every one back afterwards."""
    from edgekit.profiles import costs

    kernels = {rt: {f: dict(t) for f, t in fams.items()} for rt, fams in costs.CPU_KERNEL_TABLES.items()}
    overheads, eff = dict(costs.CPU_OVERHEADS), dict(costs.EFFICIENCY)
    attention, footprint = costs.CPU_ATTENTION, costs.CACHE_FOOTPRINT
    try:
        yield
    finally:
        for rt, fams in kernels.items():
            for f, t in fams.items():
                costs.CPU_KERNEL_TABLES[rt][f].clear()
                costs.CPU_KERNEL_TABLES[rt][f].update(t)
        costs.CPU_OVERHEADS.update(overheads)
        costs.EFFICIENCY.clear()
        costs.EFFICIENCY.update(eff)
        costs.CPU_ATTENTION, costs.CACHE_FOOTPRINT = attention, footprint


def predict(rows: list[dict[str, Any]], runtime: Runtime) -> list[Any]:
    """The cost model's estimate for every run, with the tables as they are now."""
    from edgekit.profiles import costs
    from edgekit.profiles.schema import Backend

    out = []
    for r in rows:
        s = r["settings"]
        out.append(costs.estimate(r["shapes"], r["weights"], runtime, Backend.CPU, r["profile"], ctx=s["ctx"],
                                  kv_fill=max(1, s["gen"] // 2), prompt_len=s["prompt"],
                                  onnx_precision=r["precision"], threads=s["threads"]))
    return out


def _types(rows: list[dict[str, Any]], runtime: Runtime) -> list[str]:
    from edgekit.profiles import costs

    return sorted({k for r in rows for k in costs._matmul_groups(r["shapes"], r["weights"], runtime, r["precision"])})


def _report(title: str, rows: list[dict[str, Any]], metric: str, res: np.ndarray, lines: list[str]) -> None:
    """The fit's summary, its figures (``lines``) and every run's residual."""
    print(f"{title}: {len(rows)} runs, rms {100 * float(np.sqrt(np.mean(res ** 2))):.1f}%, "
          f"worst {100 * float(np.max(np.abs(np.expm1(res)))):.0f}%")
    for line in lines:
        print(line)
    for r, e in zip(rows, res, strict=True):
        print(f"  {r['name']:48} measured {r[metric]:9.1f} tok/s  fitted {100 * float(np.expm1(e)):+4.0f}%")


def _row(t: str, runtime: Runtime, k: Any) -> str:
    """One kernel table row in the table's own spelling, to paste."""
    from edgekit.profiles.schema import OnnxPrecision

    key = repr(t) if runtime is Runtime.LLAMA_CPP else f"OnnxPrecision.{OnnxPrecision(t).name}"
    return f"{key}: CpuKernel({k.decode:.2f}, {k.prompt:.2f}, {k.stream:.2f})"


def fit_prompt(rows: list[dict[str, Any]], runtime: Runtime, family: KernelFamily) -> int:
    """Fit the prompt (batched) figures: per type the kernel's fraction of the GEMM rate, the
    attention fraction (llama.cpp only; ONNX Runtime shares it) and the cost per layer."""
    from scipy.optimize import least_squares

    from edgekit.profiles import costs

    llama = runtime is Runtime.LLAMA_CPP
    table = costs.CPU_KERNEL_TABLES[runtime][family]
    types, saved, fixed = _types(rows, runtime), dict(table), costs.CPU_OVERHEADS[runtime]
    n = len(types)

    def apply(p: np.ndarray) -> None:
        for i, t in enumerate(types):
            table[t] = replace(saved.get(t, costs.CPU_KERNEL_FALLBACK), prompt=float(p[i]))
        if llama:
            costs.CPU_ATTENTION = (costs.CPU_ATTENTION[0], float(p[n]))
        costs.CPU_OVERHEADS[runtime] = replace(fixed, prompt_layer_s=float(p[-1]))

    def residuals(p: np.ndarray) -> np.ndarray:
        apply(p)
        got = [np.log(c.prompt_tps / r["prompt_tps"]) for c, r in zip(predict(rows, runtime), rows, strict=True)]
        return np.concatenate([got, PRIOR_WEIGHT * np.log(p / p0)])

    attn = ([0.5], [0.02], [3.0]) if llama else ([], [], [])
    p0 = np.array([0.7] * n + attn[0] + [10e-6])
    sol = least_squares(residuals, p0, bounds=([0.05] * n + attn[1] + [1e-7], [5.0] * n + attn[2] + [2e-4]),
                        diff_step=1e-3)
    p, res = sol.x, residuals(sol.x)[:len(rows)]
    attention = f"attention {p[n]:.3f}; " if llama else ""
    _report(f"{runtime.value} prompt on {family.value}", rows, "prompt_tps", res,
            [f"{attention}per layer per prompt token {1e6 * p[-1]:.1f} us"]
            + [f"  {t:7} prompt {p[i]:.3f}   -> {_row(t, runtime, table[t])}" for i, t in enumerate(types)])
    return 0


def fit(rows: list[dict[str, Any]], runtime: Runtime, family: KernelFamily) -> int:
    """Fit the generation figures of ``rows`` (one runtime, one kernel family): per type the
    kernel's arithmetic fraction and streaming share, the attention fraction (llama.cpp only),
    the costs per layer and per token, and the barrier cost when runs used several threads."""
    from scipy.optimize import least_squares

    from edgekit.profiles import costs
    from edgekit.profiles.schema import DeviceClass

    llama = runtime is Runtime.LLAMA_CPP
    sync = any(r["settings"]["threads"] > 1 for r in rows)
    table = costs.CPU_KERNEL_TABLES[runtime][family]
    types = _types(rows, runtime)
    eff_key = (runtime, DeviceClass.X86_CPU, costs.Basis.MEASURED)
    saved, saved_eff, fixed = dict(table), costs.EFFICIENCY[eff_key], costs.CPU_OVERHEADS[runtime]
    n = len(types)
    n_attn = 1 if llama else 0

    def apply(p: np.ndarray, footprint: float) -> None:
        # stream is fitted as an absolute fraction of the read rate; the best type's becomes the
        # runtime's efficiency and the others are shares of it (CpuKernel.stream)
        best = float(max(p[n:2 * n]))
        for i, t in enumerate(types):
            table[t] = replace(saved.get(t, costs.CPU_KERNEL_FALLBACK), decode=float(p[i]), stream=float(p[n + i]) / best)
        costs.EFFICIENCY[eff_key] = replace(saved_eff, decode=best)
        if llama:  # ONNX Runtime shares llama.cpp's attention figure: fitted with llama.cpp only
            costs.CPU_ATTENTION = (float(p[2 * n]), costs.CPU_ATTENTION[1])
        layer_s, token_s = (float(x) for x in p[2 * n + n_attn:2 * n + n_attn + 2])
        costs.CPU_OVERHEADS[runtime] = replace(fixed, layer_s=layer_s, token_s=token_s,
                                               sync_s=float(p[-1]) if sync else fixed.sync_s)
        costs.CACHE_FOOTPRINT = footprint

    def residuals(p: np.ndarray, footprint: float) -> np.ndarray:
        apply(p, footprint)
        got = [np.log(c.gen_tps / r["gen_tps"]) for c, r in zip(predict(rows, runtime), rows, strict=True)]
        return np.concatenate([got, PRIOR_WEIGHT * np.log(p / p0)])

    attn = ([0.2], [0.01], [2.0]) if llama else ([], [], [])
    sync_p = ([20e-6], [1e-7], [2e-4]) if sync else ([], [], [])
    p0 = np.array([0.2] * n + [0.5] * n + attn[0] + [20e-6, 20e-6] + sync_p[0])
    lo = [0.02] * n + [0.05] * n + attn[1] + [1e-7, 1e-7] + sync_p[1]
    hi = [1.0] * n + [1.0] * n + attn[2] + [2e-4, 2e-4] + sync_p[2]
    fits = []
    # the footprint is the host's (caches shared with the rest of the process): fitted with
    # llama.cpp, which has the broader runs; ONNX Runtime keeps the table's
    for fp in FOOTPRINTS if llama else (costs.CACHE_FOOTPRINT,):
        sol = least_squares(residuals, p0, bounds=(lo, hi), args=(fp,), diff_step=1e-3)
        fits.append((float(np.sqrt(np.mean(sol.fun[:len(rows)] ** 2))), fp, sol.x))
        print(f"- cache footprint {fp}: rms log error {fits[-1][0]:.3f}", file=sys.stderr)
    _, fp, p = min(fits, key=lambda f: f[0])
    res = residuals(p, fp)[:len(rows)]  # leaves the tables at the fit, for the rows printed below
    over = costs.CPU_OVERHEADS[runtime]
    attention = f"attention {costs.CPU_ATTENTION[0]:.3f}; " if llama else ""
    barrier = f"; barrier {1e6 * over.sync_s:.1f} us per layer x log2(threads)" if sync else ""
    _report(f"{runtime.value} on {family.value}", rows, "gen_tps", res,
            [f"CACHE_FOOTPRINT = {fp}; decode efficiency {costs.EFFICIENCY[eff_key].decode:.2f}; {attention}"
             f"per layer {1e6 * over.layer_s:.1f} us; per token {1e6 * over.token_s:.1f} us{barrier}"]
            + [f"  {t:7} decode {table[t].decode:.3f}  stream {table[t].stream:.2f}   -> {_row(t, runtime, table[t])}"
               for t in types])
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path, help="profile_check results (JSON)")
    ap.add_argument("--runtime", choices=["llama.cpp", "onnxruntime"], default="llama.cpp")
    ap.add_argument("--metric", choices=["gen", "prompt"], default="gen",
                    help="fit generation (decode) figures, or the prompt (batched) ones")
    args = ap.parse_args(argv)

    from edgekit.profiles import costs

    runtime = Runtime(args.runtime)
    rows = [r for r in load_runs(args.runs) if r["runtime"] is runtime]
    if not rows:
        raise SystemExit(f"no measured {runtime.value} rows with a config in {', '.join(map(str, args.runs))}")
    family = costs.kernel_family(rows[0]["profile"].compute.isa)
    if family is None:
        raise SystemExit("this host has no CPU kernel table family (x86 AVX2/AVX-512 only)")
    with scratch_tables():
        return (fit_prompt if args.metric == "prompt" else fit)(rows, runtime, family)


if __name__ == "__main__":
    sys.exit(main())
