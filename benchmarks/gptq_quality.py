"""GPTQ benchmark: quantization time / peak RSS, and held-out quality of every 4-bit route side by side.

For one model (default: the packaged demo model) this runs, in one process and on the same
held-out windows (``edgekit/data/heldout.txt``, disjoint from the calibration corpus):

* ``edgekit convert --to gptq`` (llmcompressor GPTQ, int4, group 128) -- wall time and peak
  RSS per step; it also records round-to-nearest int4 with the same scales;
* GGUF q4_k_m (llama.cpp's quantizer, run through llama.cpp);
* ONNX int4 from the float source (the builder's own int4) and ONNX int4 built from the
  GPTQ checkpoint (run through ONNX Runtime);

and prints perplexity, mean KL and top-1 vs the float32 source in one table (JSON too).

    python benchmarks/gptq_quality.py [MODEL_DIR] [--samples 128 --seq-len 512 --no-act-order]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from _results import save_results  # benchmarks/ sibling (scripts run from this folder)

from edgekit.converters.gptq.engine import DEFAULT_ACT_ORDER


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", type=Path, default=None, help="HF model dir (default: the demo model)")
    ap.add_argument("-o", "--out", type=Path, default=Path("bench-out/gptq"))
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--group-size", type=int, default=128)
    ap.add_argument("--act-order", action=argparse.BooleanOptionalAction, default=DEFAULT_ACT_ORDER)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--json", type=Path, default=None, help="where to write results (default OUT/results.json)")
    args = ap.parse_args()

    from edgekit.converters.gguf.convert import convert_gguf
    from edgekit.converters.gptq.convert import convert_gptq
    from edgekit.converters.gptq.evaluate import Reference, heldout_metrics, heldout_windows
    from edgekit.converters.onnx.convert import convert_onnx
    from edgekit.demo import demo_model_dir
    from edgekit.runtimes.llamacpp import LlamaCppSession
    from edgekit.runtimes.onnx import OnnxSession
    from edgekit.ui import format_table, human_bytes

    model = args.model or demo_model_dir()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    gptq = convert_gptq(model, out, name="bench", samples=args.samples, seq_len=args.seq_len,
                        group_size=args.group_size, act_order=args.act_order, threads=args.threads)
    gptq_wall = time.perf_counter() - t0
    steps = gptq.timer.as_dict()
    print(format_table(["gptq step", "seconds", "peak RSS"],
                       [[s["step"], s["seconds"], human_bytes(float(s["peak_rss_bytes"]))] for s in steps]))
    entry = gptq.artifacts[0]
    print(f"GPTQ end to end {gptq_wall:.1f} s (GPTQ itself {next(s['seconds'] for s in steps if s['step'] == 'gptq')} s,"
          f" {args.samples} x {args.seq_len} calibration tokens)\n")

    gguf = convert_gguf(model, out, "q4_k_m", name="bench", threads=args.threads, verify_artifacts=False)
    onnx = convert_onnx(model, out, "int4", name="bench", threads=args.threads, verify_artifacts=False)
    onnx_g = convert_onnx(model, out, "int4", name=f"bench-gptq-{entry.quant}", threads=args.threads,
                          verify_artifacts=False, source_override=out / entry.file)

    reference = Reference(model)
    windows = heldout_windows(reference)
    n_ctx = max(len(w) for w in windows) + 8
    rows: list[dict[str, Any]] = []

    def add(label: str, fmt: str, size: int, m: dict[str, Any]) -> None:
        rows.append({"variant": label, "format": fmt, "size_bytes": size, **m})

    ex = entry.extra
    add("fp32 (source)", "safetensors", sum(p.stat().st_size for p in Path(model).glob("*.safetensors")), ex["fp32"])
    add(f"GPTQ {ex['scheme']}", "gptq", entry.size_bytes, ex["gptq"])
    add(f"RTN {ex['scheme']} (same scales)", "-", 0, ex["rtn"])
    g = gguf.artifacts[0]
    with LlamaCppSession(out / g.file, n_ctx=n_ctx, n_batch=n_ctx, n_threads=args.threads, logits_all=True) as s:
        add("GGUF q4_k_m", "gguf", g.size_bytes, heldout_metrics(reference, windows, s.logits).to_dict())
    for label, res in (("ONNX int4 (builder k_quant)", onnx), (f"ONNX int4 from GPTQ {ex['scheme']}", onnx_g)):
        a = res.artifacts[0]
        with OnnxSession(out / a.file, n_ctx=0, n_threads=args.threads, device="cpu") as s:
            add(label, "onnx", a.size_bytes, heldout_metrics(reference, windows, s.logits).to_dict())

    print(format_table(["variant", "format", "size", "ppl", "mean KL", "top-1", "tokens"],
                       [[r["variant"], r["format"], human_bytes(r["size_bytes"]) if r["size_bytes"] else "-",
                         r["ppl"], r["mean_kl"], r["top1"], r["n_tokens"]] for r in rows]))
    print(f"\nGPTQ vs RTN: mean KL {ex['gain']['kl_reduction_pct']:.1f}% lower, "
          f"ppl {ex['gptq']['ppl']:.3f} vs {ex['rtn']['ppl']:.3f}")
    save_results({"model": str(model), "samples": args.samples, "seq_len": args.seq_len,
                  "act_order": args.act_order, "gptq_wall_s": round(gptq_wall, 3),
                  "gptq_steps": steps, "rows": rows}, args.json or out / "results.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
