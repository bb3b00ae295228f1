"""Check the profiler's predictions against measurements on this host.

    python benchmarks/profile_check.py ARTIFACT_DIR            # every *.gguf in the directory
    python benchmarks/profile_check.py --synthetic /tmp/synth  # build a random ~220M model first
    python benchmarks/profile_check.py DIR --profile host --ctx 1024 --prompt 256 --gen 64 -o out.json

For each GGUF: predict (edgekit.profiles) generation and prompt tokens/s and peak RSS with
llama.cpp on the CPU, then measure them in a fresh child process (so peaks do not
accumulate): prompt eval of ``--prompt`` tokens, then ``--gen`` single-token decode steps,
best of ``--reps``. Shapes come from ``config.json`` in the directory when present, else
from the GGUF's own metadata. Without ``--profile`` the host is calibrated first (a few
seconds), right before the runs, so both see the same machine load. Targets from the
issue: generation tokens/s within 25%, peak memory within 15%.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

GEN_TARGET, MEM_TARGET = 0.25, 0.15
_HF_ARCH = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM",
            "gemma3": "Gemma3ForCausalLM"}


def config_from_gguf(path: Path) -> dict[str, Any]:
    """An HF-style config.json rebuilt from GGUF metadata (planning needs only the shapes)."""
    import gguf

    r = gguf.GGUFReader(str(path))

    def get(key: str, default: Any = None) -> Any:
        f = r.get_field(key)
        return f.contents() if f is not None else default

    arch = get("general.architecture")
    hidden, heads = int(get(f"{arch}.embedding_length")), int(get(f"{arch}.attention.head_count"))
    vocab = get(f"{arch}.vocab_size") or len(get("tokenizer.ggml.tokens", []))
    return {"architectures": [_HF_ARCH.get(arch, arch)], "hidden_size": hidden,
            "intermediate_size": int(get(f"{arch}.feed_forward_length")),
            "num_hidden_layers": int(get(f"{arch}.block_count")), "num_attention_heads": heads,
            "num_key_value_heads": int(get(f"{arch}.attention.head_count_kv", heads)),
            "head_dim": int(get(f"{arch}.attention.key_length", hidden // heads)), "vocab_size": int(vocab),
            "max_position_embeddings": int(get(f"{arch}.context_length", 4096)),
            "tie_word_embeddings": not any(t.name == "output.weight" for t in r.tensors)}


def quant_of(path: Path) -> str:
    import gguf
    import llama_cpp

    from edgekit.converters.gguf.quants import QUANTS

    by_ftype = {getattr(llama_cpp, q.ftype): q.name for q in QUANTS if hasattr(llama_cpp, q.ftype)}
    f = gguf.GGUFReader(str(path)).get_field("general.file_type")
    if f is not None and int(f.contents()) in by_ftype:
        return by_ftype[int(f.contents())]
    for q in sorted((q.name for q in QUANTS), key=len, reverse=True):
        if path.stem.lower().endswith(q):
            return q
    raise SystemExit(f"cannot tell the quant type of {path}")


def _vm_kib(field: str) -> int:
    """VmRSS / VmHWM of this process. Not ru_maxrss: that survives exec, so a child would
    inherit the high-water mark of the parent it was forked from."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _load_settings() -> Any:
    """edgekit's llama.cpp load settings (extra buffers off on AMX hosts), so the runs match
    what `edgekit run` does; plain llama-cpp-python defaults if that module is not there."""
    try:
        from edgekit.runtimes.llama_env import llama_load_params

        return llama_load_params()
    except ImportError:
        import contextlib

        return contextlib.nullcontext()


def measure_child(path: str, ctx: int, prompt: int, gen: int, reps: int, threads: int) -> dict[str, float]:
    """Runs in a fresh process: load, prompt eval, decode; best of ``reps``; peak RSS."""
    import llama_cpp

    base_rss = _vm_kib("VmRSS") * 1024
    with _load_settings():
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
    peak = _vm_kib("VmHWM") * 1024
    llm.close()
    return {"gen_tps": best_gen, "prompt_tps": best_prompt, "peak_rss_bytes": peak, "baseline_rss_bytes": base_rss}


def make_synthetic(out: Path, quants: list[str], hidden: int = 1024, layers: int = 12, ff: int = 2816,
                   heads: int = 16, kv_heads: int = 4, vocab: int = 32000) -> list[Path]:
    """A random-weight Llama with a byte-fallback token list, as f16 plus quantized copies."""
    import gguf
    import llama_cpp
    import numpy as np

    from edgekit.profiles.shapes import model_shapes

    out.mkdir(parents=True, exist_ok=True)
    config = {"architectures": ["LlamaForCausalLM"], "hidden_size": hidden, "intermediate_size": ff,
              "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv_heads,
              "head_dim": hidden // heads, "vocab_size": vocab, "max_position_embeddings": 4096,
              "tie_word_embeddings": False}
    (out / "config.json").write_text(json.dumps(config, indent=2))
    f16 = out / "synthetic-f16.gguf"
    w = gguf.GGUFWriter(str(f16), "llama")
    w.add_context_length(4096), w.add_embedding_length(hidden), w.add_block_count(layers)
    w.add_feed_forward_length(ff), w.add_head_count(heads), w.add_head_count_kv(kv_heads)
    w.add_layer_norm_rms_eps(1e-5), w.add_rope_dimension_count(hidden // heads), w.add_vocab_size(vocab)
    w.add_file_type(1), w.add_tokenizer_model("llama")
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    tokens += [f"t{i}" for i in range(vocab - len(tokens))]
    w.add_token_list(tokens), w.add_token_scores([0.0] * vocab)
    w.add_token_types([2, 3, 3] + [6] * 256 + [1] * (vocab - 259)), w.add_bos_token_id(1), w.add_eos_token_id(2)
    rng = np.random.default_rng(0)
    for t in model_shapes(config).tensors:
        a = rng.standard_normal(tuple(reversed(t.ne)), dtype=np.float32) * 0.02
        w.add_tensor(t.name, a.astype(np.float16) if t.is_matrix else a)
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    paths = [f16] if "f16" in quants else []
    for q in quants:
        if q == "f16":
            continue
        dst = out / f"synthetic-{q}.gguf"
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = getattr(llama_cpp, "LLAMA_FTYPE_MOSTLY_" + q.upper())
        if llama_cpp.llama_model_quantize(str(f16).encode(), str(dst).encode(), ctypes.byref(params)) != 0:
            raise SystemExit(f"quantizing to {q} failed")
        paths.append(dst)
    if "f16" not in quants:
        f16.unlink()
    return paths


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("artifacts", nargs="?", type=Path, help="directory holding *.gguf (and config.json)")
    ap.add_argument("--synthetic", type=Path, help="build a random model into this directory and check it")
    # q2_k is left out: llama-cpp-python 0.3.36 segfaults on multi-token batches of it on AVX-512/AMX hosts
    ap.add_argument("--shape", default="1024,12,2816,16,4,32000",
                    help="--synthetic shape: hidden,layers,intermediate,heads,kv_heads,vocab")
    ap.add_argument("--quants", default="f16,q8_0,q6_k,q5_k_m,q4_k_m,q4_0,q3_k_m", help="quants for --synthetic")
    ap.add_argument("--profile", help="profile to predict with (default: calibrate this host now)")
    ap.add_argument("--ctx", type=int, default=1024)
    ap.add_argument("--prompt", type=int, default=512, help="a full ubatch: the worst-case compute buffer")
    ap.add_argument("--gen", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="default: all cores")
    ap.add_argument("-o", "--output", type=Path, default=Path("profile_check.json"))
    ap.add_argument("--_child", nargs=6, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._child:
        path, *nums = args._child
        print(json.dumps(measure_child(path, *map(int, nums))))
        return 0

    import os

    if args.threads:  # numpy's BLAS (the matmul calibration) must use the same thread count
        os.environ.setdefault("OPENBLAS_NUM_THREADS", str(args.threads))
        os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    from edgekit.profiles.costs import GIB, estimate
    from edgekit.profiles.schema import Backend, Runtime
    from edgekit.profiles.shapes import gguf_weights, model_shapes
    from edgekit.ui import format_table

    if args.synthetic:
        print(f"- building a synthetic model in {args.synthetic}", file=sys.stderr)
        hidden, layers, ff, heads, kv_heads, vocab = (int(x) for x in args.shape.split(","))
        make_synthetic(args.synthetic, [q.strip() for q in args.quants.split(",") if q.strip()], hidden, layers, ff,
                       heads, kv_heads, vocab)
        args.artifacts = args.synthetic
    if args.artifacts is None:
        ap.error("give a directory of GGUF artifacts (or --synthetic DIR)")
    files = sorted(args.artifacts.glob("*.gguf"))
    if not files:
        ap.error(f"no *.gguf in {args.artifacts}")
    cores = len(os.sched_getaffinity(0))
    threads = args.threads or cores
    busy = os.getloadavg()[0]
    if busy > 0.5 * cores:
        print(f"warning: load average {busy:.1f} on {cores} cores: other work shares the CPU, llama.cpp's thread "
              f"barriers stall when oversubscribed; measurements will be low (try --threads 1)", file=sys.stderr)
    calibration = None
    if args.profile:
        from edgekit.profiles.store import get_profile

        profile = get_profile(args.profile)
    else:
        from edgekit.profiles.calibrate import calibrated_profile, measure
        from edgekit.profiles.detect import detect_host

        print("- calibrating this host", file=sys.stderr)
        calibration = measure(threads=threads)
        profile = calibrated_profile(detect_host(), calibration)
    cfg_path = args.artifacts / "config.json"
    results, rows = [], []
    for f in files:
        config = json.loads(cfg_path.read_text()) if cfg_path.is_file() else config_from_gguf(f)
        shapes, quant = model_shapes(config), quant_of(f)
        weights = gguf_weights(shapes, quant)
        pred = estimate(shapes, weights, Runtime.LLAMA_CPP, Backend.CPU, profile, ctx=args.ctx,
                        kv_fill=args.prompt + args.gen // 2, prompt_len=args.prompt)
        print(f"- measuring {f.name}", file=sys.stderr)
        child = subprocess.run([sys.executable, __file__, "--_child", str(f), str(args.ctx), str(args.prompt),
                                str(args.gen), str(args.reps), str(threads)], capture_output=True, text=True)
        if child.returncode != 0:  # e.g. a runtime crash on one quant type: report it, check the rest
            why = f"child exited with {child.returncode}" + (" (segfault)" if child.returncode in (-11, 139) else "")
            print(f"  {why}\n{child.stderr[-1000:]}", file=sys.stderr)
            results.append({"file": f.name, "quant": quant, "error": why})
            rows.append([f.name, quant, round(pred.gen_tps, 1), None, "-", round(pred.prompt_tps), None, "-",
                         round(pred.peak_rss_bytes / 2**20), None, "-", "FAILED"])
            continue
        meas = json.loads(child.stdout.strip().splitlines()[-1])
        err = {k: (p - meas[m]) / meas[m] for k, p, m in (("gen", pred.gen_tps, "gen_tps"),
                                                         ("prompt", pred.prompt_tps, "prompt_tps"),
                                                         ("peak", pred.peak_rss_bytes, "peak_rss_bytes"))}
        results.append({"file": f.name, "quant": quant, "params": shapes.params,
                        "predicted": {"gen_tps": pred.gen_tps, "prompt_tps": pred.prompt_tps,
                                      "peak_rss_bytes": pred.peak_rss_bytes, "weights_bytes": weights.total_bytes},
                        "measured": meas, "error": err,
                        "within_target": {"gen": abs(err["gen"]) <= GEN_TARGET, "peak": abs(err["peak"]) <= MEM_TARGET}})
        rows.append([f.name, quant, round(pred.gen_tps, 1), round(meas["gen_tps"], 1), f"{100 * err['gen']:+.0f}%",
                     round(pred.prompt_tps), round(meas["prompt_tps"]), f"{100 * err['prompt']:+.0f}%",
                     round(pred.peak_rss_bytes / 2**20), round(meas["peak_rss_bytes"] / 2**20),
                     f"{100 * err['peak']:+.0f}%",
                     "ok" if abs(err["gen"]) <= GEN_TARGET and abs(err["peak"]) <= MEM_TARGET else "MISS"])
    mode = profile.mode()
    print(f"profile {profile.name}: {mode.bandwidth_gbs.value:g} GB/s ({mode.bandwidth_gbs.source.value}), "
          f"ctx {args.ctx}, prompt {args.prompt}, gen {args.gen}, {threads} threads, best of {args.reps}")
    print(format_table(["artifact", "quant", "gen pred", "gen meas", "err", "pp pred", "pp meas", "err",
                        "peak MiB pred", "peak MiB meas", "err", f"target ±{GEN_TARGET:.0%}/±{MEM_TARGET:.0%}"], rows))
    report = {"host": platform.node(), "machine": platform.machine(), "profile": profile.name,
              "bandwidth_gbs": mode.bandwidth_gbs.value, "calibration": calibration.to_dict() if calibration else None,
              "settings": {"ctx": args.ctx, "prompt": args.prompt, "gen": args.gen, "reps": args.reps,
                           "threads": threads}, "targets": {"gen": GEN_TARGET, "peak": MEM_TARGET},
              "results": results, "gib": GIB}
    args.output.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
