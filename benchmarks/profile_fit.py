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

from edgekit.profiles.costs import KernelFamily
from edgekit.profiles.schema import Runtime

FOOTPRINTS = (1.5, 2.0, 2.5, 3.0)
# The runs cannot always tell a slow stream from a slow kernel (a type bound by one in every
# run leaves the other free), so a weak prior pulls each figure toward a typical value: a few
# percent of error buys it back, and unidentified figures stay plausible instead of drifting
# to a bound.
PRIOR_WEIGHT = 0.05
_SCALARS = ("CPU_ATTENTION", "CPU_LAYER_S", "CPU_TOKEN_S", "CPU_SYNC_S", "ONNX_CPU_LAYER_S", "ONNX_CPU_TOKEN_S",
            "ONNX_CPU_SYNC_S", "CACHE_FOOTPRINT")


def load_runs(paths: list[Path]) -> list[dict[str, Any]]:
    """(profile, shapes, weights, runtime, precision, settings, measured) for every measured row."""
    from edgekit.profiles.calibrate import Calibration, calibrated_profile
    from edgekit.profiles.detect import detect_host
    from edgekit.profiles.schema import Backend, OnnxPrecision
    from edgekit.profiles.shapes import gguf_weights, model_shapes, onnx_weights

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
            weights = gguf_weights(shapes, r["quant"]) if precision is None else \
                onnx_weights(shapes, precision, Backend.CPU)
            rows.append({"name": f"{path.stem}/{r['artifact']}", "profile": profile, "shapes": shapes,
                         "weights": weights, "runtime": runtime, "precision": precision, "settings": s,
                         "gen_tps": r["measured"]["gen_tps"], "prompt_tps": r["measured"]["prompt_tps"]})
    return rows


@contextmanager
def scratch_tables() -> Iterator[None]:
    """The fit rewrites the cost model's module tables; put every one back afterwards."""
    from edgekit.profiles import costs

    scalars = {name: getattr(costs, name) for name in _SCALARS}
    kernels = {f: dict(t) for f, t in costs.CPU_KERNELS.items()}
    onnx = {f: dict(t) for f, t in costs.ONNX_CPU_KERNELS.items()}
    eff = dict(costs.EFFICIENCY)
    try:
        yield
    finally:
        for name, value in scalars.items():
            setattr(costs, name, value)
        for f, t in kernels.items():
            costs.CPU_KERNELS[f] = t
        for f, o in onnx.items():
            costs.ONNX_CPU_KERNELS[f] = o
        costs.EFFICIENCY.clear()
        costs.EFFICIENCY.update(eff)


def predict(rows: list[dict[str, Any]], runtime: Runtime) -> list[Any]:
    """The cost model's estimate for every run, with the module tables as they are now."""
    from edgekit.profiles import costs
    from edgekit.profiles.schema import Backend

    out = []
    for r in rows:
        s = r["settings"]
        out.append(costs.estimate(r["shapes"], r["weights"], runtime, Backend.CPU, r["profile"], ctx=s["ctx"],
                                  kv_fill=max(1, s["gen"] // 2), prompt_len=s["prompt"],
                                  onnx_precision=r["precision"], threads=s["threads"]))
    return out


def _report(rows: list[dict[str, Any]], metric: str, res: np.ndarray) -> None:
    for r, e in zip(rows, res, strict=True):
        print(f"  {r['name']:48} measured {r[metric]:9.1f} tok/s  fitted {100 * float(np.expm1(e)):+4.0f}%")


def fit_prompt(rows: list[dict[str, Any]], runtime: Runtime, family: KernelFamily) -> int:
    """Fit the prompt (batched) figures: per type the kernel's fraction of the GEMM rate, the
    attention fraction (llama.cpp only; ONNX Runtime shares it) and the cost per layer."""
    from scipy.optimize import least_squares

    from edgekit.profiles import costs

    llama = runtime is Runtime.LLAMA_CPP
    table = costs.CPU_KERNELS if llama else costs.ONNX_CPU_KERNELS
    types = sorted({k for r in rows for k in costs._matmul_groups(r["shapes"], r["weights"], runtime, r["precision"])})
    keys = [t if llama else costs.OnnxPrecision(t) for t in types]
    saved = dict(table[family])
    n = len(types)

    def apply(p: np.ndarray) -> None:
        for i, key in enumerate(keys):
            table[family][key] = replace(saved.get(key, costs.CPU_KERNEL_FALLBACK),  # type: ignore[call-overload]
                                         prompt=float(p[i]))
        if llama:
            costs.CPU_ATTENTION = (costs.CPU_ATTENTION[0], float(p[n]))
            costs.CPU_LAYER_S = (costs.CPU_LAYER_S[0], float(p[-1]))
        else:
            costs.ONNX_CPU_PROMPT_LAYER_S = float(p[-1])

    def residuals(p: np.ndarray) -> np.ndarray:
        apply(p)
        got = [np.log(c.prompt_tps / r["prompt_tps"]) for c, r in zip(predict(rows, runtime), rows, strict=True)]
        return np.concatenate([got, PRIOR_WEIGHT * np.log(p / p0)])

    attn = ([0.5], [0.02], [3.0]) if llama else ([], [], [])
    p0 = np.array([0.7] * n + attn[0] + [10e-6])
    sol = least_squares(residuals, p0, bounds=([0.05] * n + attn[1] + [1e-7], [5.0] * n + attn[2] + [2e-4]),
                        diff_step=1e-3)
    p, res = sol.x, residuals(sol.x)[:len(rows)]
    print(f"{runtime.value} prompt on {family.value}: {len(rows)} runs, rms {100 * float(np.sqrt(np.mean(res ** 2))):.1f}%, "
          f"worst {100 * float(np.max(np.abs(np.expm1(res)))):.0f}%")
    attention = f"attention {p[n]:.3f}; " if llama else ""
    print(f"{attention}per layer per prompt token {1e6 * p[-1]:.1f} us")
    for i, (t, key) in enumerate(zip(types, keys, strict=True)):
        k = saved.get(key, costs.CPU_KERNEL_FALLBACK)  # type: ignore[call-overload]
        spelled = repr(t) if llama else f"OnnxPrecision.{key.name}"  # type: ignore[union-attr]
        print(f"  {t:7} prompt {p[i]:.3f}   -> {spelled}: CpuKernel({k.decode:.2f}, {p[i]:.2f}, {k.stream:.2f})")
    _report(rows, "prompt_tps", res)
    return 0


def fit(rows: list[dict[str, Any]], runtime: Runtime, family: KernelFamily) -> int:
    """Fit ``rows`` (one runtime, one kernel family), print the figures and the residuals."""
    from scipy.optimize import least_squares

    from edgekit.profiles import costs
    from edgekit.profiles.schema import DeviceClass

    llama = runtime is Runtime.LLAMA_CPP
    sync = any(r["settings"]["threads"] > 1 for r in rows)
    table = costs.CPU_KERNELS if llama else costs.ONNX_CPU_KERNELS
    types = sorted({k for r in rows for k in costs._matmul_groups(r["shapes"], r["weights"], runtime, r["precision"])})
    eff_key = (runtime, DeviceClass.X86_CPU, costs.Basis.MEASURED)
    saved = (dict(table[family]), costs.EFFICIENCY[eff_key], costs.CPU_ATTENTION, costs.CPU_LAYER_S)

    def apply(p: np.ndarray, footprint: float) -> None:
        n = len(types)
        # stream is fitted as an absolute fraction of the read rate; the best type's becomes the
        # runtime's efficiency and the others are shares of it (CpuKernel.stream)
        best = float(max(p[n:2 * n]))
        for i, t in enumerate(types):
            key = t if llama else costs.OnnxPrecision(t)
            table[family][key] = replace(saved[0][key] if key in saved[0] else costs.CPU_KERNEL_FALLBACK,
                                         decode=float(p[i]), stream=float(p[n + i]) / best)
        costs.EFFICIENCY[eff_key] = replace(saved[1], decode=best)
        if llama:  # ONNX Runtime shares llama.cpp's attention figure: fitted with llama.cpp only
            costs.CPU_ATTENTION = (float(p[2 * n]), saved[2][1])
            costs.CPU_LAYER_S, costs.CPU_TOKEN_S = (float(p[2 * n + 1]), saved[3][1]), float(p[2 * n + 2])
        else:
            costs.ONNX_CPU_LAYER_S, costs.ONNX_CPU_TOKEN_S = float(p[2 * n]), float(p[2 * n + 1])
        if sync and llama:
            costs.CPU_SYNC_S = float(p[-1])
        elif sync:
            costs.ONNX_CPU_SYNC_S = float(p[-1])
        costs.CACHE_FOOTPRINT = footprint

    def residuals(p: np.ndarray, footprint: float) -> np.ndarray:
        apply(p, footprint)
        got = [np.log(c.gen_tps / r["gen_tps"]) for c, r in zip(predict(rows, runtime), rows, strict=True)]
        return np.concatenate([got, PRIOR_WEIGHT * np.log(p / p0)])

    n = len(types)
    attn = ([0.2], [0.01], [2.0]) if llama else ([], [], [])
    # runs with several threads also fit the barrier cost (CPU_SYNC_S, ONNX_CPU_SYNC_S)
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
    rms, fp, p = min(fits, key=lambda f: f[0])
    res = residuals(p, fp)[:len(rows)]
    best = float(max(p[n:2 * n]))
    print(f"{runtime.value} on {family.value}: {len(rows)} runs, rms {100 * rms:.1f}%, "
          f"worst {100 * float(np.max(np.abs(np.expm1(res)))):.0f}%")
    attention = f"attention {p[2 * n]:.3f}; " if llama else ""
    barrier = f"; barrier {1e6 * p[-1]:.1f} us per layer x log2(threads)" if sync else ""
    print(f"CACHE_FOOTPRINT = {fp}; decode efficiency {best:.2f}; {attention}"
          f"per layer {1e6 * p[2 * n + len(attn[0])]:.1f} us; per token {1e6 * p[2 * n + len(attn[0]) + 1]:.1f} us{barrier}")
    for i, t in enumerate(types):  # the table's own spelling, to paste
        key = t if llama else costs.OnnxPrecision(t)
        prompt = saved[0].get(key, costs.CPU_KERNEL_FALLBACK).prompt  # type: ignore[call-overload]
        spelled = repr(t) if llama else f"OnnxPrecision.{costs.OnnxPrecision(t).name}"
        print(f"  {t:7} decode {p[i]:.3f}  stream {p[n + i] / best:.2f}   "
              f"-> {spelled}: CpuKernel({p[i]:.2f}, {prompt:.2f}, {p[n + i] / best:.2f})")
    _report(rows, "gen_tps", res)
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
