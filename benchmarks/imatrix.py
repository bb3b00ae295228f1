"""What an importance matrix buys: stock GGUF types with and without one, and the i-quants, in one run.

    python benchmarks/imatrix.py                         # the packaged demo model
    python benchmarks/imatrix.py MODEL_DIR --eval-tokens 8192
    python benchmarks/imatrix.py --iquants all           # every i-quant (correctness of each)
    python benchmarks/imatrix.py --gemma --eval-tokens 2048 --threads 1   # Gemma 3 270M (prepare_gemma.py)

Fitted mixes (``--fit-size``, converters/gguf/fit.py) are made at three budgets, the file sizes
of the stock q2_k, q3_k_m and q4_k_m with the matrix (``--fit-at``), once with each pricing
method (kl: measured per class; error: imatrix-weighted quantization error), and each is set
against the stock types' KL-vs-size curve (log KL interpolated in bits per weight): a ratio
below 1 is a mix on or under the curve. Which pricing predicts measured KL better is judged
by the rank correlation of each method's predicted loss with the measured KL over every
artifact of the run (stock types included: their per-tensor types are read from the files).

The importance matrix is computed once from the source model on the packaged calibration mix
(``--calibration`` for other text; edgekit.converters.gguf.imatrix) and every quantized type is
made twice, plain and with it; the i-quants with it only (most need it). All artifacts share
one reference pass over the evaluation set: the demo model's held-out docstrings for the demo
(as ``edgekit convert --demo``), the packaged evaluation mix otherwise, so the figures compare:
size, bits per weight (file bits over source parameters), mean KL, top-1, perplexity change,
whether the correctness check passed, and the KL ratio with/without the matrix. llama.cpp's
own figures (Llama-3-8B, Wikitext-2): q4_k_s 0.0431 -> 0.0320, q3_k_m 0.1019 -> 0.0844,
q2_k 0.445 -> 0.332. Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

STOCK = "q4_k_m,q4_k_s,q3_k_m,q2_k"
FIT_AT = "q2_k,q3_k_m,q4_k_m"
IQUANTS = "iq4_xs,iq3_m,iq2_m"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", type=Path, default=None, help="HF model dir (default: the demo model)")
    ap.add_argument("-o", "--out", type=Path, default=Path("bench-out/imatrix"))
    ap.add_argument("--stock", default=STOCK, help="stock types made with and without the matrix")
    ap.add_argument("--iquants", default=IQUANTS, help="i-quants made with the matrix ('all': every one)")
    ap.add_argument("--fit-at", default=FIT_AT, help="stock types whose file sizes are the fit budgets ('': none)")
    ap.add_argument("--fit-methods", default="kl,error", help="pricing methods to fit with")
    ap.add_argument("--gemma", action="store_true", help="Gemma 3 270M (benchmarks/prepare_gemma.py) instead")
    ap.add_argument("--resume", action="store_true",
                    help="reuse the verified artifacts an earlier run left in OUT's folders instead of making them again")
    ap.add_argument("--calibration", type=Path, default=None, help="calibration text (default: the packaged mix)")
    ap.add_argument("--eval-tokens", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--json", type=Path, default=None, help="where to write results (default OUT/results.json)")
    args = ap.parse_args(argv)

    from _results import quality_run, save_results

    from edgekit.converters.gguf.convert import convert_gguf
    from edgekit.converters.gguf.fit import size_label
    from edgekit.converters.gguf.imatrix import IMATRIX_FILE
    from edgekit.converters.gguf.quants import QUANTS
    from edgekit.ui import format_table, human_bytes

    iquants = ",".join(q.name for q in QUANTS if q.name.startswith("iq")) if args.iquants == "all" else args.iquants
    from edgekit.demo import heldout_path

    # the demo model knows Python docstrings only: measured on its own held-out docstrings
    run = quality_run(args.model, args.gemma, args.out, args.eval_tokens, args.threads, "q",
                      eval_text=None if (args.model or args.gemma) else heldout_path())
    model, out, n_params, common, timer = run.model, run.out, run.n_params, run.common, run.timer
    t0 = time.perf_counter()

    def convert(sub: str, quants: str, names: list[str], **kw: Any) -> Any:
        return (args.resume and _made(out / sub, names)) or convert_gguf(model, out / sub, quants, **kw, **common)

    stock_im = [n for n in ",".join(filter(None, [args.stock, iquants])).split(",") if n]
    with_im = convert("imatrix", ",".join(stock_im), stock_im, imatrix=True, calibration=args.calibration)
    plain = convert("plain", args.stock, args.stock.split(",")) if args.stock else None
    sizes = {a.quant: a.size_bytes for a in with_im.artifacts}
    fits = []
    for method in filter(None, args.fit_methods.split(",")):
        for at in filter(None, args.fit_at.split(",")):
            if at in sizes:
                # one folder per method: the second and third budget reuse its pricing (fit-pricing.json)
                fits.append((method, at, convert(f"fit-{method}", "", [f"fit-{size_label(sizes[at])}"],
                                                 imatrix=out / "imatrix" / IMATRIX_FILE, calibration=args.calibration,
                                                 fit_size=sizes[at], fit_method=method)))

    rows: list[dict[str, Any]] = []
    kl_plain = {a.quant: (a.verification or {}).get("mean_kl") for a in (plain.artifacts if plain else [])}
    variants = [("imatrix", with_im), ("plain", plain)] + [(f"fit {m} @{at}", c) for m, at, c in fits]
    for variant, conv in variants:
        for a in conv.artifacts if conv else []:
            v = a.verification or {}
            ratio = v.get("mean_kl") / kl_plain[a.quant] if variant == "imatrix" and kl_plain.get(a.quant) else None
            label = f"{a.quant} {variant}" if not variant.startswith("fit") else f"{variant} ({a.quant})"
            rows.append({"artifact": label, "quant": a.quant, "imatrix": variant != "plain",
                         "variant": variant.split(" @")[0],
                         "file": str(Path(conv.out_dir) / a.file), "fit": a.extra.get("fit"),
                         "size_bytes": a.size_bytes, "bits_per_weight": a.size_bytes * 8 / n_params,
                         "mean_kl": v.get("mean_kl"), "top1": v.get("top1"), "ppl_delta_pct": v.get("ppl_delta_pct"),
                         "ppl_delta_ci95_pct": v.get("ppl_delta_ci95_pct"),
                         "correct": bool(v.get("correctness", {}).get("passed")), "kl_vs_plain": ratio,
                         "tensor_types": a.extra.get("tensor_types")})
    rows.sort(key=lambda r: (-r["bits_per_weight"], r["artifact"]))
    _against_curve(rows)
    methods = _method_agreement(rows)
    first = next((a.verification for a in with_im.artifacts if a.verification), {}) or {}
    im_info = next((a.extra.get("imatrix") for a in with_im.artifacts if a.extra.get("imatrix")), None)
    print(f"\n{model}: {n_params / 1e6:.1f}M parameters; evaluation set {first.get('eval_set')}; "
          f"source perplexity {first.get('ppl_ref')}; importance matrix {im_info}")
    print(format_table(
        ["artifact", "size", "bpw", "mean KL", "vs plain", "vs curve", "top-1", "ppl Δ", "95% CI", "correct"],
        [[r["artifact"], human_bytes(r["size_bytes"]), f"{r['bits_per_weight']:.2f}", _g(r["mean_kl"]),
          "-" if r["kl_vs_plain"] is None else f"{r['kl_vs_plain']:.3f}x",
          "-" if r.get("kl_vs_curve") is None else f"{r['kl_vs_curve']:.3f}x", f"{r['top1'] * 100:.1f}%",
          f"{r['ppl_delta_pct']:+.2f}%", f"{r['ppl_delta_ci95_pct'][0]:+.2f}..{r['ppl_delta_ci95_pct'][1]:+.2f}%",
          "yes" if r["correct"] else "NO"] for r in rows]))
    for m, v in methods.items():
        fitted = {r["artifact"].split(" (")[0]: r["kl_vs_curve"] for r in rows if r["variant"] == f"fit {m}"}
        print(f"pricing {m}: rank correlation of predicted loss with measured KL {v['spearman']:+.3f} over {v['n']} "
              f"artifacts; measured/predicted median {v['median_measured_over_predicted']}; its mixes vs the stock "
              f"curve: " + ", ".join(f"{k.split('@')[1]} {x:.3f}x" for k, x in fitted.items() if x is not None))
    png = _plot(rows, out / "kl_vs_bits.png", str(model))
    wall = time.perf_counter() - t0
    steps = timer.as_dict()
    im_s = sum(s["seconds"] for s in steps if s["step"] == "imatrix")
    print(f"\n{len(rows)} artifacts in {wall:.0f} s (importance matrix {im_s:.1f} s, {out / 'imatrix' / IMATRIX_FILE})")
    save_results({"model": str(model), "n_params": n_params, "eval_tokens": args.eval_tokens, "imatrix": im_info,
                  "imatrix_seconds": round(im_s, 1), "rows": rows, "pricing_methods": methods,
                  # every fit step of the run (pricing once per method, the other budgets reuse it)
                  "fit_seconds_total": round(sum(st["seconds"] for st in steps if st["step"] == "fit"), 1) or None,
                  "plot": str(png) if png else None, "seconds": round(wall, 1), "steps": steps},
                 args.json or out / "results.json")
    return 0


def _made(folder: Path, quants: list[str]) -> Any:
    """--resume: the verified artifacts of ``quants`` an earlier run recorded in ``folder``, or None."""
    from types import SimpleNamespace

    from edgekit.manifest import MANIFEST_NAME, load_manifest
    from edgekit.progress import StepTimer

    if not (folder / MANIFEST_NAME).is_file():
        return None
    made = {a.quant: a for a in load_manifest(folder / MANIFEST_NAME).artifacts
            if a.verification and (folder / a.file).is_file()}
    if not all(q in made for q in quants):
        return None
    print(f"reusing {', '.join(quants)} from {folder}")
    return SimpleNamespace(out_dir=folder, artifacts=[made[q] for q in quants], timer=StepTimer())


def _against_curve(rows: list[dict[str, Any]]) -> None:
    """kl_vs_curve: an artifact's KL over the stock types' (with the matrix) at its bits per weight,
    log KL interpolated linearly in bits between the neighbouring stock types."""
    curve = sorted((r["bits_per_weight"], math.log(r["mean_kl"])) for r in rows
                   if r["variant"] == "imatrix" and not r["quant"].startswith("iq") and r["mean_kl"])
    for r in rows:
        r["kl_vs_curve"] = None
        if not r["variant"].startswith("fit") or not r["mean_kl"] or len(curve) < 2:
            continue
        b = r["bits_per_weight"]
        lo = max((p for p in curve if p[0] <= b), default=curve[0])
        hi = min((p for p in curve if p[0] >= b), default=curve[-1])
        f = 0.0 if hi[0] == lo[0] else (b - lo[0]) / (hi[0] - lo[0])
        r["kl_vs_curve"] = r["mean_kl"] / math.exp(lo[1] + f * (hi[1] - lo[1]))


def _method_agreement(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each pricing method's predicted loss for every artifact (sum over tensor classes of the
    class's loss at each tensor's type, averaged over the class's tensors) against measured KL."""
    from edgekit.converters.gguf.inspect import read_gguf

    tables: dict[str, dict[str, dict[str, float]]] = {}
    for r in rows:
        fit = r.get("fit")
        if fit and fit["method"] not in tables:
            tables[fit["method"]] = {c: v["loss"] for c, v in fit["classes"].items()}
    out: dict[str, dict[str, Any]] = {}
    for method, loss in tables.items():
        pairs = []
        for r in rows:
            if not r["mean_kl"]:
                continue
            types = {t.name: t.type for t in read_gguf(Path(r["file"])).tensors}
            total, ok = 0.0, True
            for cls, per_type in loss.items():
                members = [t for n, t in types.items() if n == cls or n.endswith("." + cls)]
                if not members or any(t not in per_type for t in members):
                    ok = False  # a type the fit did not price (i-quants, fallbacks)
                    break
                total += sum(per_type[t] for t in members) / len(members)
            if ok:
                pairs.append((total, r["mean_kl"], r["artifact"]))
        ratios = sorted(p[1] / p[0] for p in pairs if p[0] > 0)
        out[method] = {"spearman": _spearman([p[0] for p in pairs], [p[1] for p in pairs]), "n": len(pairs),
                       "median_measured_over_predicted": round(ratios[len(ratios) // 2], 4) if ratios else None,
                       "predicted": {p[2]: round(p[0], 6) for p in pairs}}
    return out


def _spearman(x: list[float], y: list[float]) -> float:
    import numpy as np

    if len(x) < 3:
        return float("nan")
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
    return float(np.corrcoef(rx, ry)[0, 1])


def _plot(rows: list[dict[str, Any]], dest: Path, title: str) -> Path | None:
    """Mean KL vs bits per weight, as benchmarks/quality.py draws it, one series per variant."""
    from _results import kl_vs_bits_plot

    series = [(v, m, [(r["bits_per_weight"], r["mean_kl"], r["quant"]) for r in rows
                      if r["variant"] == v and r["mean_kl"]])
              for v, m in (("plain", "o"), ("imatrix", "s"), ("fit kl", "^"), ("fit error", "v"))]
    return kl_vs_bits_plot(series, dest, f"importance matrix and fitted mixes: {Path(title).name}")


def _g(v: float | None) -> str:
    return "-" if v is None else f"{v:.3g}"


if __name__ == "__main__":
    raise SystemExit(main())
