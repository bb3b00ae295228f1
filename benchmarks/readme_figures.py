"""The project's published figures: the demo model in every format, benchmarked and evaluated.

    python benchmarks/readme_figures.py                      # convert the demo model, measure, report
    python benchmarks/readme_figures.py --out bench-out/readme --repetitions 5 --threads 1

Steps, all in one run so every number shares the machine's state:
1. convert the packaged demo model to GGUF f16/q8_0/q4_k_m and ONNX int4 (skipped when
   ``--out`` already holds them);
2. ``edgekit bench`` on each (pp512/tg128, fresh process per artifact, conditions recorded);
3. the same GGUF files through raw llama-cpp-python (a child of this script:
   plain ``Llama.eval`` loops, no edgekit), so the Session API's overhead shows as a
   ratio (best repetition against best repetition);
4. ``edgekit eval`` of each artifact against the transformers source (KL, same top-1, PPL);
5. ``edgekit bench report``: PNG plots + summary.md; an aligned table here; all as JSON.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _results import save_results  # benchmarks/ sibling (scripts run from this folder)

HERE = Path(__file__).resolve().parent


def raw_llama_cpp(path: Path, ctx: int, prompt: int, gen: int, reps: int, threads: int) -> dict[str, float] | None:
    """Raw llama-cpp-python (plain ``Llama.eval`` loops, no edgekit), in its own fresh process."""
    child = subprocess.run([sys.executable, __file__, "--_child", str(path), str(ctx), str(prompt), str(gen),
                            str(reps), str(threads)], capture_output=True, text=True)
    if child.returncode != 0:
        print(f"  raw llama-cpp-python failed on {path.name}: {child.stderr[-400:]}", file=sys.stderr)
        return None
    return dict(json.loads(child.stdout.strip().splitlines()[-1]))


def measure_raw(path: str, ctx: int, prompt: int, gen: int, reps: int, threads: int) -> dict[str, float]:
    """The child: load, prompt eval, token-by-token decode; best of ``reps``; peak RSS (VmHWM)."""
    import llama_cpp

    from edgekit.bench.worker import vm_bytes
    from edgekit.runtimes.llama_env import llama_load_params

    with llama_load_params():  # the same load parameters (AMX guard) edgekit uses
        llm = llama_cpp.Llama(model_path=path, n_ctx=ctx, n_threads=threads, n_threads_batch=threads, verbose=False)
    n_vocab = llm.n_vocab()
    ids = [3 + (7 * i) % (n_vocab - 3) for i in range(prompt + gen)]  # any ids: speed does not depend on them
    best_prompt = best_gen = 0.0
    for _ in range(reps):
        llm.reset()
        t = time.perf_counter()
        llm.eval(ids[:prompt])
        best_prompt = max(best_prompt, prompt / (time.perf_counter() - t))
        t = time.perf_counter()
        for tok in ids[prompt:prompt + gen]:
            llm.eval([tok])
        best_gen = max(best_gen, gen / (time.perf_counter() - t))
    peak = vm_bytes("VmHWM")
    llm.close()
    return {"gen_tps": best_gen, "prompt_tps": best_prompt, "peak_rss_bytes": peak}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("bench-out/readme"))
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--gen-tokens", type=int, default=128)
    ap.add_argument("--repetitions", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="default: all cores")
    ap.add_argument("--eval-ctx", type=int, default=256, help="the demo model was trained on 256-token sequences")
    ap.add_argument("--eval-chunks", type=int, default=20)
    ap.add_argument("--label", default=None)
    ap.add_argument("--_child", nargs=6, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._child:
        path, *nums = args._child
        print(json.dumps(measure_raw(path, *map(int, nums))))
        return 0

    import edgekit
    from edgekit.bench import BenchSettings, run_bench
    from edgekit.bench.evaluate import evaluate
    from edgekit.bench.report import write_report
    from edgekit.demo import demo_model_dir, heldout_path
    from edgekit.profiles.detect import usable_cores
    from edgekit.ui import format_table, human_bytes

    artifacts = args.out / "artifacts"
    if not list(artifacts.glob("*.gguf")):
        print("- converting the demo model", file=sys.stderr)
        edgekit.convert(demo_model_dir(), artifacts, to="gguf", quants="f16,q8_0,q4_k_m")
        edgekit.convert(demo_model_dir(), artifacts, to="onnx", quants="int4")
    threads = args.threads or usable_cores()
    settings = BenchSettings(prompt_tokens=args.prompt_tokens, gen_tokens=args.gen_tokens,
                             repetitions=args.repetitions, threads=(threads,))
    results_path = args.out / "results.json"
    print("- edgekit bench", file=sys.stderr)
    runs = run_bench([artifacts], settings, output=results_path, label=args.label)
    pp, tg = settings.pp_name, settings.tg_name
    rows: list[list[Any]] = []
    extra: list[dict[str, Any]] = []
    for r in runs.results:
        path = Path(r.path)
        raw = None
        if r.kind == "gguf":
            print(f"- raw llama-cpp-python: {r.artifact}", file=sys.stderr)
            raw = raw_llama_cpp(path, settings.ctx, settings.prompt_tokens, settings.gen_tokens, args.repetitions,
                                threads)
        print(f"- eval: {r.artifact}", file=sys.stderr)
        ev = evaluate(path, heldout_path(), reference=demo_model_dir(), n_ctx=args.eval_ctx,
                      max_chunks=args.eval_chunks, n_threads=threads)
        best_pp, best_tg = r.metrics[pp]["max"], r.metrics[tg]["max"]
        rows.append([r.artifact, r.quant, r.backend, human_bytes(r.size_bytes),
                     f"{r.metrics[pp]['mean']:.0f} ± {r.metrics[pp]['std']:.0f}",
                     f"{r.metrics[tg]['mean']:.0f} ± {r.metrics[tg]['std']:.0f}",
                     round(best_tg / raw["gen_tps"], 2) if raw else None,
                     round(best_pp / raw["prompt_tps"], 2) if raw else None,
                     human_bytes(r.memory.get("peak_rss_bytes") or 0), ev.ppl, ev.kl.mean if ev.kl else None,
                     ev.kl.same_top1_pct if ev.kl else None])
        extra.append({"artifact": r.artifact, "raw_llama_cpp_best": raw, "edgekit_best": {pp: best_pp, tg: best_tg},
                      "eval_vs_source": ev.to_dict()})
    report_dir = args.out / "report"
    written = write_report([runs], report_dir)
    h = runs.host
    print(f"\n{h['label']}, power mode {h['power']['mode']}, {threads} threads, {settings.repetitions} reps; "
          f"eval: {args.eval_chunks} chunks x {args.eval_ctx} tokens of held-out text vs transformers fp32")
    print(format_table(["artifact", "quant", "runtime", "size", f"{pp} t/s", f"{tg} t/s", "tg ek/raw", "pp ek/raw",
                        "peak RSS", "PPL", "mean KL", "same top-1 %"], rows))
    print(f"\nbench results: {results_path}\nreport: {report_dir / 'summary.md'}")
    save_results({"results": str(results_path), "report": [str(p) for p in written], "artifacts": extra},
                 args.out / "figures.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
