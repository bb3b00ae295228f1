"""Benchmark: GGUF conversion (time, peak RSS per step) and edgekit's llama.cpp session vs raw llama-cpp-python.

    python benchmarks/gguf_convert.py                       # the packaged demo model
    python benchmarks/gguf_convert.py MODEL_DIR [...] --quants f16,q8_0,q4_k_m -o bench-out

Both runtimes load the same GGUF with the same settings (greedy, same n_ctx, threads) and
alternate repetitions in one process, so machine noise hits both; the table reports
medians and the edgekit/raw ratio. Results are also written as JSON.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from _results import save_results  # benchmarks/ sibling (scripts run from this folder)

PROMPT = "The following function returns the number of items in a list, and it raises an error when"


def bench_edgekit(path: Path, n_ctx: int, threads: int, max_tokens: int) -> dict[str, float]:
    import edgekit

    with edgekit.load(path, n_ctx=n_ctx, n_threads=threads) as s:
        t0 = time.perf_counter()
        r = s.generate(PROMPT, max_tokens=max_tokens)
        total = time.perf_counter() - t0
    st = r.stats
    return {"tokens": st.completion_tokens, "total_s": total, "ttft_s": st.time_to_first_token_s,
            "tok_per_s": st.completion_tokens / total, "gen_tok_per_s": st.generation_tokens_per_s}


def bench_raw(path: Path, n_ctx: int, threads: int, max_tokens: int) -> dict[str, float]:
    import llama_cpp

    from edgekit.runtimes.llama_env import llama_load_params

    # Same model-load parameters as edgekit (see llama_env: AMX guard), else raw would crash here.
    with llama_load_params():
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                              verbose=False)
    try:
        t0 = time.perf_counter()
        ttft, n = 0.0, 0
        for chunk in llm.create_completion(PROMPT, max_tokens=max_tokens, temperature=0.0, top_k=1, top_p=1.0,
                                           min_p=0.0, repeat_penalty=1.0, stream=True):
            # one chunk per token, plus a closing chunk (finish_reason set) that may carry no text
            choice = chunk["choices"][0]  # type: ignore[index]
            if choice["finish_reason"] is not None and not choice["text"]:
                continue
            n += 1
            if n == 1:
                ttft = time.perf_counter() - t0
        total = time.perf_counter() - t0
    finally:
        llm.close()
    return {"tokens": n, "total_s": total, "ttft_s": ttft, "tok_per_s": n / total,
            "gen_tok_per_s": (n - 1) / (total - ttft) if n > 1 else 0.0}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="*", type=Path, help="HF model dirs (default: the demo model)")
    ap.add_argument("--quants", default="f16,q8_0,q4_k_m")
    ap.add_argument("-o", "--out", type=Path, default=Path("bench-out/gguf"))
    ap.add_argument("--repetitions", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--json", type=Path, default=None, help="where to write results (default OUT/results.json)")
    args = ap.parse_args(argv)

    from edgekit import __version__
    from edgekit.converters.gguf.convert import convert_gguf
    from edgekit.demo import demo_model_dir
    from edgekit.progress import StepTimer
    from edgekit.ui import format_table, human_bytes

    models = args.models or [demo_model_dir()]
    results: dict[str, Any] = {"edgekit_version": __version__, "python": platform.python_version(),
                               "machine": platform.machine(), "cpus": os.cpu_count(), "threads": args.threads,
                               "repetitions": args.repetitions, "max_tokens": args.max_tokens, "models": []}
    for model in models:
        out = args.out / model.resolve().name
        timer = StepTimer()
        t0 = time.perf_counter()
        conv = convert_gguf(model, out, args.quants, timer=timer, threads=args.threads)
        wall = time.perf_counter() - t0
        print(f"\n== {model} -> {out}  (conversion {wall:.2f} s)")
        print(format_table(["step", "seconds", "peak RSS"],
                           [[s.name, s.seconds, human_bytes(s.peak_rss_bytes)] for s in timer.steps]))
        rows, runs = [], []
        for art in conv.artifacts:
            path = out / art.file
            ours, raw = [], []
            bench_edgekit(path, args.ctx, args.threads, 8)  # warm-up: page cache, CPU clocks
            bench_raw(path, args.ctx, args.threads, 8)
            for _ in range(args.repetitions):  # alternate so drift hits both sides
                ours.append(bench_edgekit(path, args.ctx, args.threads, args.max_tokens))
                raw.append(bench_raw(path, args.ctx, args.threads, args.max_tokens))
            med = {k: {m: statistics.median(r[m] for r in runs_) for m in runs_[0]}
                   for k, runs_ in (("edgekit", ours), ("raw", raw))}
            ratio = med["edgekit"]["gen_tok_per_s"] / med["raw"]["gen_tok_per_s"]
            rows.append([art.quant, human_bytes(art.size_bytes), med["edgekit"]["tokens"], med["raw"]["tokens"],
                         med["edgekit"]["gen_tok_per_s"], med["raw"]["gen_tok_per_s"], ratio,
                         med["edgekit"]["ttft_s"] * 1000, med["raw"]["ttft_s"] * 1000])
            runs.append({"artifact": art.file, "quant": art.quant, "size_bytes": art.size_bytes,
                         "verification": art.verification, "edgekit": ours, "raw": raw, "median": med,
                         "gen_ratio_edgekit_over_raw": ratio})
        print(format_table(["quant", "size", "tok (ek)", "tok (raw)", "gen tok/s edgekit", "gen tok/s raw",
                            "ratio", "TTFT ms ek", "TTFT ms raw"], rows))
        results["models"].append({"model": str(model), "conversion_wall_s": wall, "steps": timer.as_dict(),
                                  "artifacts": runs})
    save_results(results, args.json or args.out / "results.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
