"""What an importance matrix buys: stock GGUF types with and without one, and the i-quants, in one run.

    python benchmarks/imatrix.py                         # the packaged demo model
    python benchmarks/imatrix.py MODEL_DIR --eval-tokens 8192
    python benchmarks/imatrix.py --iquants all           # every i-quant (correctness of each)

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

STOCK = "q4_k_s,q3_k_m,q2_k"
IQUANTS = "iq4_xs,iq3_m,iq2_m"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", type=Path, default=None, help="HF model dir (default: the demo model)")
    ap.add_argument("-o", "--out", type=Path, default=Path("bench-out/imatrix"))
    ap.add_argument("--stock", default=STOCK, help="stock types made with and without the matrix")
    ap.add_argument("--iquants", default=IQUANTS, help="i-quants made with the matrix ('all': every one)")
    ap.add_argument("--calibration", type=Path, default=None, help="calibration text (default: the packaged mix)")
    ap.add_argument("--eval-tokens", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--json", type=Path, default=None, help="where to write results (default OUT/results.json)")
    args = ap.parse_args(argv)

    from _results import save_results

    from edgekit.converters.gguf.convert import convert_gguf
    from edgekit.converters.gguf.imatrix import IMATRIX_FILE
    from edgekit.converters.gguf.quants import QUANTS
    from edgekit.converters.pipeline import open_inputs
    from edgekit.converters.quality import EvalSettings, QualitySettings
    from edgekit.demo import demo_model_dir, heldout_path
    from edgekit.progress import StepTimer
    from edgekit.ui import format_table, human_bytes

    model = Path(args.model or demo_model_dir())
    iquants = ",".join(q.name for q in QUANTS if q.name.startswith("iq")) if args.iquants == "all" else args.iquants
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    text = heldout_path() if args.model is None else None
    settings = EvalSettings(tokens=args.eval_tokens, **({"text": text.read_text(encoding="utf-8"),
                                                         "source": str(text)} if text else {}))
    timer = StepTimer()
    inputs = open_inputs(model, None, timer, quality=QualitySettings(settings))
    n_params = sum(math.prod(i.shape) for i in inputs.source.iter_infos())
    common: dict[str, Any] = {"name": "q", "threads": args.threads, "prepared": inputs, "timer": timer}
    t0 = time.perf_counter()
    with_im = convert_gguf(model, out / "imatrix", ",".join(filter(None, [args.stock, iquants])), imatrix=True,
                           calibration=args.calibration, **common)
    plain = convert_gguf(model, out / "plain", args.stock, **common) if args.stock else None

    rows: list[dict[str, Any]] = []
    kl_plain = {a.quant: (a.verification or {}).get("mean_kl") for a in (plain.artifacts if plain else [])}
    for variant, conv in (("imatrix", with_im), ("plain", plain)):
        for a in conv.artifacts if conv else []:
            v = a.verification or {}
            ratio = v.get("mean_kl") / kl_plain[a.quant] if variant == "imatrix" and kl_plain.get(a.quant) else None
            rows.append({"artifact": f"{a.quant} {variant}", "quant": a.quant, "imatrix": variant == "imatrix",
                         "size_bytes": a.size_bytes, "bits_per_weight": a.size_bytes * 8 / n_params,
                         "mean_kl": v.get("mean_kl"), "top1": v.get("top1"), "ppl_delta_pct": v.get("ppl_delta_pct"),
                         "ppl_delta_ci95_pct": v.get("ppl_delta_ci95_pct"),
                         "correct": bool(v.get("correctness", {}).get("passed")), "kl_vs_plain": ratio,
                         "tensor_types": a.extra.get("tensor_types")})
    rows.sort(key=lambda r: (-r["bits_per_weight"], r["artifact"]))
    first = next((a.verification for a in with_im.artifacts if a.verification), {}) or {}
    im_info = next((a.extra.get("imatrix") for a in with_im.artifacts if a.extra.get("imatrix")), None)
    print(f"\n{model}: {n_params / 1e6:.1f}M parameters; evaluation set {first.get('eval_set')}; "
          f"source perplexity {first.get('ppl_ref')}; importance matrix {im_info}")
    print(format_table(
        ["artifact", "size", "bpw", "mean KL", "vs plain", "top-1", "ppl Δ", "95% CI", "correct"],
        [[r["artifact"], human_bytes(r["size_bytes"]), f"{r['bits_per_weight']:.2f}", _g(r["mean_kl"]),
          "-" if r["kl_vs_plain"] is None else f"{r['kl_vs_plain']:.3f}x", f"{r['top1'] * 100:.1f}%",
          f"{r['ppl_delta_pct']:+.2f}%", f"{r['ppl_delta_ci95_pct'][0]:+.2f}..{r['ppl_delta_ci95_pct'][1]:+.2f}%",
          "yes" if r["correct"] else "NO"] for r in rows]))
    wall = time.perf_counter() - t0
    steps = timer.as_dict()
    im_s = sum(s["seconds"] for s in steps if s["step"] == "imatrix")
    print(f"\n{len(rows)} artifacts in {wall:.0f} s (importance matrix {im_s:.1f} s, {out / 'imatrix' / IMATRIX_FILE})")
    save_results({"model": str(model), "n_params": n_params, "eval_tokens": args.eval_tokens, "imatrix": im_info,
                  "imatrix_seconds": round(im_s, 1), "rows": rows, "seconds": round(wall, 1), "steps": steps},
                 args.json or out / "results.json")
    return 0


def _g(v: float | None) -> str:
    return "-" if v is None else f"{v:.3g}"


if __name__ == "__main__":
    raise SystemExit(main())
