"""Benchmark: edgekit's ONNX Runtime session vs raw onnxruntime-genai, and vs llama.cpp on GGUF.

    python benchmarks/onnx_runtime.py                     # the packaged demo model
    python benchmarks/onnx_runtime.py MODEL_DIR --threads 1 --repetitions 5 -o bench-out/onnx

The model is exported to ONNX (fp32, fp16, int4) and GGUF of the same precision class
(f32, f16, q4_0: 4-bit, blocks of 32 like MatMulNBits int4 at block 32; plus q4_k_m). Each
(artifact, runtime) pair is measured in a fresh child process, so its peak RSS (VmHWM)
is its own: pp = an N-token prompt from an empty context (time to first token), tg = M
tokens decoded one by one from a one-token prompt, end-of-generation ignored (llama-bench
style). The same ONNX files go through edgekit and through onnxruntime-genai directly,
with the same thread count and session options; the table shows medians and the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _results import save_results  # benchmarks/ sibling (scripts run from this folder)

from edgekit.bench.worker import vm_bytes

# ONNX quant -> GGUF quant(s) of the same precision class
PAIRS = {"fp32": ["f32"], "fp16": ["f16"], "int4": ["q4_0", "q4_k_m"]}


def _prompt_ids(tokenize: Any, n: int) -> list[int]:
    from edgekit.demo import heldout_path

    ids = list(tokenize(heldout_path().read_text(encoding="utf-8")[:20000]))
    return (ids * (n // max(len(ids), 1) + 1))[:n]


def child_edgekit(spec: dict[str, Any]) -> dict[str, Any]:
    import edgekit

    pp, tg = [], []
    with edgekit.load(spec["path"], n_ctx=spec["ctx"], n_threads=spec["threads"]) as s:
        ids = _prompt_ids(lambda t: s.tokenize(t, add_special=False), spec["pp"])
        for i in range(spec["reps"] + 1):  # the first round is a warm-up
            s.reset()
            a = s.generate(ids, max_tokens=1)
            b = s.generate(ids[:1], max_tokens=spec["tg"], ignore_eos=True)
            if i:
                pp.append(len(ids) / a.stats.time_to_first_token_s)
                tg.append(b.stats.generation_tokens_per_s)
    return {"pp": pp, "tg": tg, "peak_rss": vm_bytes("VmHWM")}


def child_raw_genai(spec: dict[str, Any]) -> dict[str, Any]:
    import numpy as np
    import onnxruntime_genai as og

    config = og.Config(spec["path"])
    config.clear_providers()
    config.overlay(json.dumps({"model": {"decoder": {"session_options": {
        "intra_op_num_threads": spec["threads"], "inter_op_num_threads": 1,
        "graph_optimization_level": "ORT_ENABLE_ALL"}}}}))
    model = og.Model(config)
    tok = og.Tokenizer(model)
    ids = _prompt_ids(lambda t: [int(x) for x in tok.encode(t)], spec["pp"])

    def generator(length: int) -> Any:
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=length, min_length=length, do_sample=False, top_k=1)
        return og.Generator(model, params)

    pp, tg = [], []
    for i in range(spec["reps"] + 1):
        g = generator(len(ids) + 1)
        t0 = time.perf_counter()
        g.append_tokens(np.asarray(ids, dtype=np.int32))
        g.generate_next_token()
        g.get_next_tokens()
        ttft = time.perf_counter() - t0
        del g
        g = generator(1 + spec["tg"])
        g.append_tokens(np.asarray(ids[:1], dtype=np.int32))
        g.generate_next_token()
        t1 = time.perf_counter()
        for _ in range(spec["tg"] - 1):
            g.generate_next_token()
            g.get_next_tokens()
        dt = time.perf_counter() - t1
        del g
        if i:
            pp.append(len(ids) / ttft)
            tg.append((spec["tg"] - 1) / dt)
    return {"pp": pp, "tg": tg, "peak_rss": vm_bytes("VmHWM")}


CHILDREN = {"edgekit": child_edgekit, "raw-genai": child_raw_genai}


def run_child(side: str, path: Path, args: argparse.Namespace) -> dict[str, Any]:
    spec = {"side": side, "path": str(path), "threads": args.threads, "ctx": args.ctx, "pp": args.prompt_tokens,
            "tg": args.gen_tokens, "reps": args.repetitions}
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                         check=False)
    line = next((x for x in reversed(out.stdout.splitlines()) if x.startswith("{")), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(f"{side} on {path.name} failed: {out.stderr.strip().splitlines()[-1:]}")
    result: dict[str, Any] = json.loads(line)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", type=Path, help="HF model dir (default: the demo model)")
    ap.add_argument("-o", "--out", type=Path, default=Path("bench-out/onnx"))
    ap.add_argument("--repetitions", type=int, default=5)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--gen-tokens", type=int, default=128)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(CHILDREN[spec["side"]](spec)))
        return 0

    import edgekit
    from edgekit.demo import demo_model_dir
    from edgekit.ui import format_table, human_bytes

    model = args.model or demo_model_dir()
    out = args.out / "artifacts"
    onnx = edgekit.convert(model, out, to="onnx", quants=",".join(PAIRS), name="m")
    gguf = edgekit.convert(model, out, to="gguf", quants=",".join(q for qs in PAIRS.values() for q in qs), name="m")
    gguf_by_quant = {a.quant: a for a in gguf.artifacts}
    rows, records = [], []
    med = statistics.median
    for art in onnx.artifacts:
        path = out / art.file
        print(f"measuring {art.file} ...", file=sys.stderr)
        ours, raw = run_child("edgekit", path, args), run_child("raw-genai", path, args)
        rec: dict[str, Any] = {"onnx": art.file, "quant": art.quant, "size_bytes": art.size_bytes,
                               "mean_kl": (art.verification or {}).get("mean_kl"), "edgekit": ours, "raw_genai": raw,
                               "gguf": []}
        rows.append([art.file, "edgekit onnx", human_bytes(art.size_bytes), rec["mean_kl"], med(ours["pp"]),
                     med(ours["tg"]), human_bytes(ours["peak_rss"]), 1.0])
        rows.append(["", "raw onnxruntime-genai", "", "", med(raw["pp"]), med(raw["tg"]), human_bytes(raw["peak_rss"]),
                     med(ours["tg"]) / med(raw["tg"])])
        for gq in PAIRS[art.quant]:
            g = gguf_by_quant[gq]
            lc = run_child("edgekit", out / g.file, args)
            rec["gguf"].append({"file": g.file, "quant": gq, "size_bytes": g.size_bytes,
                                "mean_kl": (g.verification or {}).get("mean_kl"), "llama_cpp": lc})
            rows.append([g.file, "edgekit llama.cpp", human_bytes(g.size_bytes), (g.verification or {}).get("mean_kl"),
                         med(lc["pp"]), med(lc["tg"]), human_bytes(lc["peak_rss"]), med(ours["tg"]) / med(lc["tg"])])
        rec["ratio_tg_edgekit_over_raw"] = med(ours["tg"]) / med(raw["tg"])
        rec["ratio_pp_edgekit_over_raw"] = med(ours["pp"]) / med(raw["pp"])
        records.append(rec)
    print(format_table(["artifact", "runtime", "size", "mean KL", f"pp{args.prompt_tokens} tok/s",
                        f"tg{args.gen_tokens} tok/s", "peak RSS", "onnx tg / this tg"], rows))
    results = {"edgekit_version": edgekit.__version__, "python": platform.python_version(), "cpus": os.cpu_count(),
               "load_avg": os.getloadavg(), "threads": args.threads, "repetitions": args.repetitions,
               "prompt_tokens": args.prompt_tokens, "gen_tokens": args.gen_tokens, "model": str(model),
               "artifacts": records}
    save_results(results, args.out / "results.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
