"""Check the profiler's predictions against measurements on this host.

    python benchmarks/profile_check.py OUT_DIR --threads 1       # an `edgekit convert` output dir
    python benchmarks/profile_check.py --synthetic /tmp/synth    # build a random ~220M model first
    python benchmarks/profile_check.py DIR --profile host --prompt 256 --gen 64 -o out.json

For each artifact the profile can run -- GGUF files on llama.cpp, ONNX directories on ONNX
Runtime GenAI (the precisions the profile lists for its CPU) -- predict (edgekit.profiles)
generation and prompt tokens/s and peak RSS on the CPU, then measure them the way
``edgekit bench`` does (edgekit.bench: one fresh child process per artifact, so peaks do
not accumulate; ``ppN`` from an empty context, ``tgM`` decoded from a one-token prompt,
through the public Session API; best of ``--reps`` after one warm-up). The context is
prompt + gen + 1, as in ``edgekit bench``. Shapes come from ``config.json`` in the
directory or in the manifest's source, else from a GGUF's own metadata. Without
``--profile`` the host is calibrated first (a few seconds), right before the runs, so both
see the same machine load; the load average before and after is printed with the table.
Targets (issue 15): generation and prompt tokens/s and peak memory within 15%.

Predictions use the artifact's real per-tensor types (read from the GGUF header) and, with
``--profile`` naming a profile calibrated with ``edgekit profile calibrate --threads 1``, the
host's own kernel table. With ``--threads 1`` every GGUF is also timed in CPU time (this
process, edgekit's llama.cpp load settings, the same prompt and generation lengths): llama.cpp
computes in the calling thread then, so its CPU time is what the run costs on an idle core,
while the wall-clock figures of a host shared with other work run long by the load's share.
Both are reported; the load average before and after is printed with the table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import sys
from pathlib import Path
from typing import Any

from _results import save_results  # benchmarks/ sibling (scripts run from this folder)

GEN_TARGET, MEM_TARGET = 0.15, 0.15
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


def make_synthetic(out: Path, quants: list[str], hidden: int = 1024, layers: int = 12, ff: int = 2816,
                   heads: int = 16, kv_heads: int = 4, vocab: int = 32000, tied: bool = False,
                   experts: tuple[int, int, int] | None = None, lfm2: bool = False) -> list[Path]:
    """A random-weight Llama (``experts`` = (experts, active, expert width): a Qwen3-MoE, every layer
    a mixture of experts) with a byte-fallback token list, as f16 plus quantized copies (types that
    need an importance matrix get one of ones: the weights are random, quality is moot). The
    metadata is the architecture spec's own (what edgekit's converter writes), the tensors the
    profiler's list for the config. ``lfm2``: an LFM2 instead (every third layer attention, the
    others gated short convolutions; its MLP ``ff`` wide)."""
    import gguf
    import numpy as np

    from edgekit.converters.gguf.archs import TextConfig, spec_for
    from edgekit.converters.gguf.quantize import quantize_file
    from edgekit.converters.gguf.quants import quant
    from edgekit.profiles.shapes import model_shapes

    out.mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM"], "hidden_size": hidden, "intermediate_size": ff,
        "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv_heads,
        "head_dim": hidden // heads, "vocab_size": vocab, "max_position_embeddings": 4096,
        "tie_word_embeddings": tied, "rms_norm_eps": 1e-5, "dtype": "float16"}
    if experts is not None:
        n_experts, active, expert_ff = experts
        config.update(architectures=["Qwen3MoeForCausalLM"], num_experts=n_experts, num_experts_per_tok=active,
                      moe_intermediate_size=expert_ff, norm_topk_prob=True)
    if lfm2:  # LFM2-1.2B's mix: a third of the layers attention (its pattern: 2, 5, 8, 10, 12, 14 of 16)
        config.update(architectures=["Lfm2ForCausalLM"], conv_L_cache=3, norm_eps=1e-5,
                      block_auto_adjust_ff_dim=False,
                      layer_types=["full_attention" if i % 3 == 2 else "conv" for i in range(layers)])
    (out / "config.json").write_text(json.dumps(config, indent=2))
    spec, c = spec_for(config), TextConfig.from_hf(config)
    f16 = out / "synthetic-f16.gguf"
    w = gguf.GGUFWriter(str(f16), gguf.MODEL_ARCH_NAMES[spec.model_arch])
    spec.write_hparams(w, c)
    w.add_file_type(1), w.add_tokenizer_model("llama")
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    tokens += [f"t{i}" for i in range(vocab - len(tokens))]
    w.add_token_list(tokens), w.add_token_scores([0.0] * vocab)
    w.add_token_types([2, 3, 3] + [6] * 256 + [1] * (vocab - 259)), w.add_bos_token_id(1), w.add_eos_token_id(2)
    rng = np.random.default_rng(0)
    shapes = model_shapes(config)
    # one tensor in memory at a time (a MoE's expert stacks are the big ones)
    for t in shapes.tensors:
        dtype = np.float16 if t.is_matrix and t.name not in shapes.f32_tensors else np.float32
        w.add_tensor_info(t.name, tuple(reversed(t.ne)), np.dtype(dtype), math.prod(t.ne) * np.dtype(dtype).itemsize)
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_ti_data_to_file()
    for t in shapes.tensors:
        a = rng.standard_normal(tuple(reversed(t.ne)), dtype=np.float32) * 0.02
        dtype = np.float16 if t.is_matrix and t.name not in shapes.f32_tensors else np.float32
        w.write_tensor_data(a.astype(dtype))
        del a
    w.close()
    paths = [f16] if "f16" in quants else []
    for q in quants:
        if q == "f16":
            continue
        dst = out / f"synthetic-{q}.gguf"
        ones = None
        if quant(q).needs_imatrix:  # an expert stack's matrix has a row of weights per expert
            ones = {t.name: np.ones(t.ne[0] * (t.ne[2] if len(t.ne) == 3 else 1), np.float32)
                    for t in shapes.tensors if t.is_matrix and t.name != "token_embd.weight"}
        quantize_file(f16, dst, quant(q), imatrix=ones)
        paths.append(dst)
    if "f16" not in quants:
        f16.unlink()
    return paths


def _config_for(directory: Path, artifact: Path, kind: str) -> dict[str, Any]:
    from edgekit.profiles.planner import source_config_dir

    cfg = source_config_dir(directory) / "config.json"
    if cfg.is_file():
        return dict(json.loads(cfg.read_text(encoding="utf-8")))
    if kind == "gguf":
        return config_from_gguf(artifact)
    raise SystemExit(f"no config.json for {artifact}: put one in {directory} (or convert with edgekit)")


def cpu_time_rates(path: Path, prompt: int, gen: int, reps: int) -> dict[str, float]:
    """Best-of-``reps`` prompt and generation tokens/s of a GGUF in this thread's CPU time (1 thread).

    As edgekit's bench runs them: the prompt from an empty context, then ``gen`` tokens decoded
    one at a time from a one-token prompt (greedy: the argmax of each step's logits)."""
    import time

    import llama_cpp
    import numpy as np

    from edgekit.runtimes.llama_env import llama_load_params, route_llama_logs

    route_llama_logs()
    with llama_load_params():
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=prompt + gen + 1, n_batch=512, n_threads=1,
                              n_threads_batch=1, verbose=False)
    try:
        n_vocab = llm.n_vocab()
        ids = [int(x) for x in np.random.default_rng(0).integers(3, n_vocab, prompt)]
        pp, tg = 0.0, 0.0
        for _ in range(reps + 1):  # the first is the warm-up
            llm.reset()
            t = time.thread_time()
            llm.eval(ids)
            pp_rep = prompt / (time.thread_time() - t)
            llm.reset()
            tok, spent = 1, 0.0
            for _ in range(gen):
                t = time.thread_time()
                llm.eval([tok])
                tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
                spent += time.thread_time() - t
            pp, tg = max(pp, pp_rep), max(tg, gen / spent)
        return {"gen_tps": tg, "prompt_tps": pp}
    finally:
        llm.close()


def repredict(report_path: Path, directory: Path, profile_name: str, output: Path) -> int:
    """Predict again, with ``profile_name``, the measurements of an earlier run (its JSON): the
    measurements do not depend on the profile, so a recalibrated host is checked without rerunning."""
    from edgekit.profiles.costs import estimate
    from edgekit.profiles.planner import file_weights
    from edgekit.profiles.schema import Backend, Runtime
    from edgekit.profiles.shapes import model_shapes, weight_plan
    from edgekit.profiles.store import get_profile
    from edgekit.ui import format_table

    report = json.loads(report_path.read_text(encoding="utf-8"))
    st, profile = report["settings"], get_profile(profile_name)
    rows = []
    for res in report["results"]:
        if "measured" not in res or res["format"] != "gguf":
            continue
        shapes = model_shapes(res["config"])
        weights = file_weights(shapes, directory / res["artifact"]) or weight_plan(shapes, res["quant"], None,
                                                                                  Backend.CPU)
        pred = estimate(shapes, weights, Runtime.LLAMA_CPP, Backend.CPU, profile, ctx=st["ctx"],
                        kv_fill=max(1, st["gen"] // 2), prompt_len=st["prompt"], threads=st["threads"])
        predicted = {"gen_tps": pred.gen_tps, "prompt_tps": pred.prompt_tps, "peak_rss_bytes": pred.peak_rss_bytes,
                     "weights_bytes": weights.total_bytes}
        meas, cpu = res["measured"], res.get("measured_cpu_time") or {}
        err = {k: (predicted[k] - meas[k]) / meas[k] for k in ("gen_tps", "prompt_tps", "peak_rss_bytes")}
        cpu_err = {k: (predicted[k] - v) / v for k, v in cpu.items()}
        speed = cpu_err or err
        ok = all(abs(speed[k]) <= GEN_TARGET for k in ("gen_tps", "prompt_tps")) and \
            abs(err["peak_rss_bytes"]) <= MEM_TARGET
        res.update(predicted=predicted, error=err, error_cpu_time=cpu_err or None, within_target=ok)
        rows.append([res["artifact"], res["quant"], round(pred.gen_tps, 1), round(meas["gen_tps"], 1),
                     f"{100 * err['gen_tps']:+.0f}%", round(cpu["gen_tps"], 1) if cpu else None,
                     f"{100 * cpu_err['gen_tps']:+.0f}%" if cpu else "-", round(pred.prompt_tps),
                     round(meas["prompt_tps"]), f"{100 * err['prompt_tps']:+.0f}%",
                     round(cpu["prompt_tps"]) if cpu else None, f"{100 * cpu_err['prompt_tps']:+.0f}%" if cpu else "-",
                     round(pred.peak_rss_bytes / 2**20), round(meas["peak_rss_bytes"] / 2**20),
                     f"{100 * err['peak_rss_bytes']:+.0f}%", "ok" if ok else "MISS"])
    la = report["load_average"]
    print(f"re-predicted with profile {profile.name} (measured: prompt {st['prompt']}, gen {st['gen']}, "
          f"{st['threads']} thread(s), load average {la['before'][0]:.2f} before, {la['after'][0]:.2f} after)")
    print(format_table(["artifact", "quant", "gen pred", "gen wall", "err", "gen cpu", "err", "pp pred", "pp wall",
                        "err", "pp cpu", "err", "peak MiB pred", "peak MiB meas", "err", f"±{GEN_TARGET:.0%}"], rows))
    if profile.kernels is not None:
        print(f"kernel table: {profile.kernels.ref}")
        report["kernels"] = profile.kernels.to_dict()
    report["profile"], report["repredicted_from"] = profile.name, str(report_path)
    save_results(report, output)
    return 0


def _measured_gen(res: dict[str, Any]) -> float:
    """Generation tokens/s as judged: CPU time where it was measured, else the wall clock."""
    return float((res.get("measured_cpu_time") or res["measured"])["gen_tps"])


def _err(res: dict[str, Any], key: str) -> float:
    return float(res["predicted"][key]) / _measured_gen(res) - 1


def _stderr_progress(event: Any) -> None:
    if event.step == "bench" and event.total:
        print(f"- measuring {event.message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("artifacts", nargs="?", type=Path,
                    help="an edgekit output directory (its manifest lists GGUF and ONNX artifacts) or a directory "
                         "of *.gguf (and config.json)")
    ap.add_argument("--synthetic", type=Path, help="build a random model into this directory and check it")
    ap.add_argument("--shape", default="1024,12,2816,16,4,32000",
                    help="--synthetic shape: hidden,layers,intermediate,heads,kv_heads,vocab")
    ap.add_argument("--tied", action="store_true", help="--synthetic: tie the embeddings (SmolLM2 does)")
    ap.add_argument("--experts", help="--synthetic: a Qwen3-MoE instead, EXPERTS,ACTIVE,EXPERT_FF experts per layer "
                                      "(e.g. 16,2,768: Qwen3-30B-A3B's expert width)")
    ap.add_argument("--lfm2", action="store_true", help="--synthetic: an LFM2 hybrid instead (every third layer "
                                                          "attention, the others short convolutions)")
    ap.add_argument("--no-cpu-time", action="store_true", help="skip the CPU-time runs (with --threads 1)")
    ap.add_argument("--repredict", type=Path, metavar="RESULTS_JSON",
                    help="predict an earlier run's measurements again with --profile (ARTIFACTS: its directory)")
    ap.add_argument("--quants", default="f16,q8_0,q6_k,q5_k_m,q4_k_m,q4_0,q3_k_m,q2_k", help="quants for --synthetic")
    ap.add_argument("--profile", help="profile to predict with (default: calibrate this host now)")
    ap.add_argument("--prompt", type=int, default=512, help="a full ubatch: the worst-case compute buffer")
    ap.add_argument("--gen", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="default: all cores")
    ap.add_argument("-o", "--output", type=Path, default=Path("bench-out/profile_check/results.json"))
    args = ap.parse_args(argv)
    if args.repredict:
        if not (args.profile and args.artifacts):
            ap.error("--repredict needs --profile and the run's artifact directory")
        return repredict(args.repredict, args.artifacts, args.profile, args.output)

    if args.threads:  # numpy's BLAS (the matmul calibration) must use the same thread count
        os.environ.setdefault("OPENBLAS_NUM_THREADS", str(args.threads))
        os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    from edgekit.bench import BenchSettings, run_bench
    from edgekit.bench.run import resolve_artifacts
    from edgekit.manifest import MANIFEST_NAME
    from edgekit.profiles.costs import GIB, estimate
    from edgekit.profiles.detect import usable_cores
    from edgekit.profiles.planner import file_weights
    from edgekit.profiles.schema import Backend, OnnxPrecision, Runtime
    from edgekit.profiles.shapes import model_shapes, plan_for_types, weight_plan
    from edgekit.ui import format_table

    if args.synthetic:
        print(f"- building a synthetic model in {args.synthetic}", file=sys.stderr)
        hidden, layers, ff, heads, kv_heads, vocab = (int(x) for x in args.shape.split(","))
        moe = tuple(int(x) for x in args.experts.split(",")) if args.experts else None
        if moe is not None and len(moe) != 3:
            ap.error("--experts takes EXPERTS,ACTIVE,EXPERT_FF")
        make_synthetic(args.synthetic, [q.strip() for q in args.quants.split(",") if q.strip()], hidden, layers, ff,
                       heads, kv_heads, vocab, args.tied, moe, args.lfm2)  # type: ignore[arg-type]
        args.artifacts = args.synthetic
    if args.artifacts is None:
        ap.error("give an edgekit output directory or a directory of GGUF files (or --synthetic DIR)")
    directory: Path = args.artifacts
    paths = [directory] if (directory / MANIFEST_NAME).is_file() else sorted(directory.glob("*.gguf"))
    if not paths:
        ap.error(f"no {MANIFEST_NAME} and no *.gguf in {directory}")
    cores = usable_cores()
    threads = args.threads or cores
    load_before = os.getloadavg()
    if load_before[0] > 0.5 * cores:
        print(f"warning: load average {load_before[0]:.1f} on {cores} cores: other work shares the CPU; "
              f"measurements will be low (try --threads 1)", file=sys.stderr)
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
    runtime_of = {"gguf": Runtime.LLAMA_CPP, "onnx": Runtime.ONNXRUNTIME}  # artifact kind -> runtime
    # What the profile runs on its CPU: llama.cpp, and ONNX Runtime at the precisions it lists.
    cpu_runtimes = {rt.runtime: rt for rt in profile.runtimes if rt.backend is Backend.CPU}
    artifacts, skipped = resolve_artifacts(paths)
    results: list[dict[str, Any]] = [{"artifact": s["artifact"], "skipped": s["reason"]} for s in skipped]
    keep = []
    for a in artifacts:
        support = cpu_runtimes.get(runtime_of[a.kind])
        # compared as strings: OnnxPrecision(a.quant) raises for ONNX quants the profiler has no figure for (int8)
        if support is None or (a.kind == "onnx" and a.quant not in support.onnx):
            why = f"{profile.name} lists no {runtime_of[a.kind].value} {a.quant} on its CPU"
            print(f"- skipping {a.path.name}: {why}", file=sys.stderr)
            results.append({"artifact": a.path.name, "skipped": why})
        else:
            keep.append(a.path)
    settings = BenchSettings(prompt_tokens=args.prompt, gen_tokens=args.gen, repetitions=args.reps, warmup=1,
                             threads=(threads,))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    bench = run_bench(keep, settings, output=args.output.with_suffix(".bench.json"), progress=_stderr_progress)
    load_after = os.getloadavg()
    ctx = settings.ctx
    rows: list[list[Any]] = []
    for r in bench.results:
        runtime = runtime_of[r.kind]
        precision = OnnxPrecision(r.quant) if runtime is Runtime.ONNXRUNTIME else None
        config = _config_for(directory, Path(r.path), r.kind)
        shapes = model_shapes(config)
        # the file's own tensor types (an i-quant made with an importance matrix, a fitted mix)
        real = file_weights(shapes, Path(r.path)) if r.kind == "gguf" else None
        weights = real or weight_plan(shapes, r.quant, precision, Backend.CPU)
        # tg decodes from a one-token prompt: on average gen/2 positions are cached
        pred = estimate(shapes, weights, runtime, Backend.CPU, profile, ctx=ctx, kv_fill=max(1, args.gen // 2),
                        prompt_len=args.prompt, onnx_precision=precision, threads=threads)
        predicted = {"gen_tps": pred.gen_tps, "prompt_tps": pred.prompt_tps, "peak_rss_bytes": pred.peak_rss_bytes,
                     "weights_bytes": weights.total_bytes, "per_token_bytes": weights.per_token_bytes}
        if shapes.experts is not None:  # beside it, what a profiler reading every expert would predict
            every = dataclasses.replace(shapes, experts=dataclasses.replace(shapes.experts,
                                                                            n_active=shapes.experts.n_experts))
            dense = estimate(every, plan_for_types(every, weights.types), runtime, Backend.CPU, profile, ctx=ctx,
                             kv_fill=max(1, args.gen // 2), prompt_len=args.prompt, onnx_precision=precision,
                             threads=threads)
            predicted.update(gen_tps_all_experts=dense.gen_tps, experts=dataclasses.asdict(shapes.experts))
        label = [r.artifact, r.kind, r.quant]
        if r.status != "complete":  # e.g. a runtime crash on one quant type: report it, check the rest
            results.append({"artifact": r.artifact, "format": r.kind, "quant": r.quant, "config": config,
                            "predicted": predicted, "error": r.error or r.status})
            rows.append([*label, round(pred.gen_tps, 1), None, "-", None, "-", round(pred.prompt_tps), None, "-",
                         None, "-", round(pred.peak_rss_bytes / 2**20), None, "-", "FAILED"])
            continue
        meas = {"gen_tps": r.metrics[settings.tg_name]["max"], "prompt_tps": r.metrics[settings.pp_name]["max"],
                "peak_rss_bytes": r.memory["peak_rss_bytes"], "baseline_rss_bytes": r.memory["baseline_rss_bytes"]}
        err = {k: (predicted[k] - meas[k]) / meas[k] for k in ("gen_tps", "prompt_tps", "peak_rss_bytes")}
        cpu: dict[str, float] = {}
        if r.kind == "gguf" and threads == 1 and not args.no_cpu_time:
            print(f"- CPU-time run of {r.artifact}", file=sys.stderr)
            cpu = cpu_time_rates(Path(r.path), args.prompt, args.gen, args.reps)
        cpu_err = {k: (predicted[k] - v) / v for k, v in cpu.items()}
        speed = cpu_err or err  # judged in CPU time where measured: the wall clock carries the host's load
        ok = all(abs(speed[k]) <= GEN_TARGET for k in ("gen_tps", "prompt_tps")) and \
            abs(err["peak_rss_bytes"]) <= MEM_TARGET
        results.append({"artifact": r.artifact, "format": r.kind, "quant": r.quant, "params": shapes.params,
                        "config": config,  # benchmarks/profile_fit.py re-predicts from it
                        "types_from": "file" if real else "predicted",
                        "predicted": predicted, "measured": meas, "error": err, "measured_cpu_time": cpu or None,
                        "error_cpu_time": cpu_err or None, "within_target": ok})

        def pct(d: dict[str, float], k: str) -> str:
            return f"{100 * d[k]:+.0f}%" if k in d else "-"

        rows.append([*label, round(pred.gen_tps, 1), round(meas["gen_tps"], 1), pct(err, "gen_tps"),
                     round(cpu["gen_tps"], 1) if cpu else None, pct(cpu_err, "gen_tps"),
                     round(pred.prompt_tps), round(meas["prompt_tps"]), pct(err, "prompt_tps"),
                     round(cpu["prompt_tps"]) if cpu else None, pct(cpu_err, "prompt_tps"),
                     round(pred.peak_rss_bytes / 2**20), round(meas["peak_rss_bytes"] / 2**20),
                     pct(err, "peak_rss_bytes"), "ok" if ok else "MISS"])
    mode = profile.mode()
    print(f"profile {profile.name}: {mode.bandwidth_gbs.value:g} GB/s ({mode.bandwidth_gbs.source.value}), "
          f"ctx {ctx}, prompt {args.prompt}, gen {args.gen}, {threads} threads, best of {args.reps}; "
          f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after ({cores} cores)")
    print(format_table(["artifact", "format", "quant", "gen pred", "gen wall", "err", "gen cpu", "err", "pp pred",
                        "pp wall", "err", "pp cpu", "err", "peak MiB pred", "peak MiB meas", "err",
                        f"target ±{GEN_TARGET:.0%}"], rows))
    moe_rows = [x for x in results if "measured" in x and "gen_tps_all_experts" in x["predicted"]]
    if moe_rows:  # decode speed from the routed experts' bytes vs from all of them, against the measurement
        print("mixture of experts: a token reads the router's top-k experts; memory holds all of them")
        print(format_table(["artifact", "read/token MiB", "weights MiB", "gen pred", "err", "pred all experts",
                            "err", "gen meas"], [
            [x["artifact"], round(x["predicted"]["per_token_bytes"] / 2**20), round(x["predicted"]["weights_bytes"] / 2**20),
             round(x["predicted"]["gen_tps"], 1), f"{100 * _err(x, 'gen_tps'):+.0f}%",
             round(x["predicted"]["gen_tps_all_experts"], 1), f"{100 * _err(x, 'gen_tps_all_experts'):+.0f}%",
             round(_measured_gen(x), 1)] for x in moe_rows]))
    if profile.kernels is not None:
        print(f"kernel table: {profile.kernels.ref}")
    report = {"host": platform.node(), "machine": platform.machine(), "profile": profile.name,
              "bandwidth_gbs": mode.bandwidth_gbs.value, "calibration": calibration.to_dict() if calibration else None,
              "settings": {"ctx": ctx, "prompt": args.prompt, "gen": args.gen, "reps": args.reps, "threads": threads},
              "kernels": profile.kernels.to_dict() if profile.kernels is not None else None,
              "load_average": {"before": load_before, "after": load_after, "cores": cores},
              "targets": {"gen": GEN_TARGET, "peak": MEM_TARGET}, "results": results, "gib": GIB}
    print(f"raw measurements: {args.output.with_suffix('.bench.json')}")
    save_results(report, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
