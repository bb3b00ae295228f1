"""Benchmark: the hybrid families (issue 17) -- conversion time and peak RSS (GGUF f16, q4_k_m and ONNX
int4), prompt / generation speed of the GGUF q4_k_m beside the ONNX int4, and the profiler's
predicted tg and memory beside the measured ones, per family on a synthetic model of realistic width.

    python benchmarks/hybrid_convert.py [--families lfm2,...] [--runs 1] [--threads 2] [--json PATH]

Each family's shape is a real small checkpoint's (FAMILIES below): a random bf16 model written tensor
by tensor from the spec's Hugging Face layout (checked against transformers' own model in the tests),
with a SentencePiece tokenizer. Each conversion (``edgekit convert -q f16``, ``-q q4_k_m``, ``--to onnx
-q int4``, all ``--no-verify``) runs in a fresh child process and reports its wall time and VmHWM (see
convert_vs_llamacpp.py). llama.cpp's own converter is not run beside it: its hybrid classes read
tokenizer.json and refuse a BPE pre-tokenizer they do not know by hash, which a synthetic vocabulary is.
Then benchmarks/profile_check.py runs on the q4_k_m and the int4 (``edgekit bench`` in fresh child
processes, 256-token prompt, 64 generated tokens, the host calibrated right before): measured pp/tg and
peak RSS beside the profiler's prediction for this host. Results: tables, and JSON (default
benchmarks/results/hybrid_convert.json; profile_check's own report beside it).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _results import save_results
from _synthetic import write_random_bf16  # benchmarks/ sibling (scripts run from this folder)
from convert_vs_llamacpp import _spm_tokenizer, run_child, warm_page_cache

LFM2_350M = dict(hidden_size=1024, intermediate_size=6656, num_hidden_layers=16, num_attention_heads=16,
                 num_key_value_heads=8, vocab_size=65536, max_position_embeddings=128000, conv_L_cache=3,
                 tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=0)
LFM2_350M_ATTENTION = (2, 5, 8, 10, 12, 14)


def lfm2_config() -> dict[str, Any]:
    import transformers as T

    types = ["full_attention" if i in LFM2_350M_ATTENTION else "conv" for i in range(16)]
    cfg: dict[str, Any] = T.Lfm2Config(**LFM2_350M, layer_types=types).to_dict()
    cfg.update(architectures=["Lfm2ForCausalLM"], torch_dtype="bfloat16")
    return cfg


# Granite 4 H 350M's dimensions (dense: no experts; Mamba-2 with 48 heads of 32, state 128)
GRANITE4_H_350M = dict(hidden_size=768, intermediate_size=2048, shared_intermediate_size=2048, num_hidden_layers=32,
                       num_attention_heads=12, num_key_value_heads=4, vocab_size=100352, max_position_embeddings=32768,
                       mamba_n_heads=48, mamba_d_head=32, mamba_d_state=128, mamba_n_groups=1, mamba_d_conv=4,
                       mamba_expand=2, num_local_experts=0, tie_word_embeddings=True, embedding_multiplier=12.0,
                       residual_multiplier=0.246, attention_multiplier=0.0078125, logits_scaling=3.0, bos_token_id=1,
                       eos_token_id=2, pad_token_id=0)
GRANITE4_ATTENTION = (10, 13, 17, 27)


def granite4_config() -> dict[str, Any]:
    import transformers as T

    types = ["attention" if i in GRANITE4_ATTENTION else "mamba" for i in range(32)]
    cfg: dict[str, Any] = T.GraniteMoeHybridConfig(**GRANITE4_H_350M, layer_types=types).to_dict()
    cfg.update(architectures=["GraniteMoeHybridForCausalLM"], torch_dtype="bfloat16")
    return cfg


# Qwen3.5-0.8B's text stack (from memory of its config.json: the linear-attention head counts and the
# MLP width are the least certain): gated delta-net with 16 key and 16 value heads of 128, a full
# attention layer every 4th (8 heads of 256, 2 KV heads), vocabulary 248320, embeddings tied
QWEN35_0_8B = dict(hidden_size=1024, intermediate_size=3584, num_hidden_layers=24, num_attention_heads=8,
                   num_key_value_heads=2, head_dim=256, vocab_size=248320, max_position_embeddings=262144,
                   linear_num_key_heads=16, linear_num_value_heads=16, linear_key_head_dim=128,
                   linear_value_head_dim=128, linear_conv_kernel_dim=4, tie_word_embeddings=True, bos_token_id=1,
                   eos_token_id=2, pad_token_id=0)


def qwen35_config() -> dict[str, Any]:
    import transformers as T

    n = int(QWEN35_0_8B["num_hidden_layers"])
    types = ["full_attention" if (i + 1) % 4 == 0 else "linear_attention" for i in range(n)]
    cfg: dict[str, Any] = T.Qwen3_5TextConfig(**QWEN35_0_8B, layer_types=types).to_dict()
    cfg.update(architectures=["Qwen3_5ForCausalLM"], torch_dtype="bfloat16")
    return cfg


# Gemma 4 E2B's text stack (from memory: the full layers' head size 512 and the MLP width are the least
# certain): hidden 1536, 8 heads, 1 KV head of 256 on the sliding layers (window 512), a full layer every
# 5th, per-layer embeddings of 256, the MLP double wide on the KV-sharing layers, vocabulary 262144.
# E2B has 35 layers, the last 20 sharing KV; its per-layer embedding table (vocab x layers x 256) alone is
# 2.3B parameters, so the benchmark keeps the first 10 layers (2 full) with the last 5 sharing KV
GEMMA4_E2B_LAYERS, GEMMA4_E2B_SHARED = 10, 5
GEMMA4_E2B = dict(hidden_size=1536, intermediate_size=6144, num_hidden_layers=GEMMA4_E2B_LAYERS, num_attention_heads=8,
                  num_key_value_heads=1, head_dim=256, global_head_dim=512, attention_k_eq_v=False,
                  vocab_size=262144, vocab_size_per_layer_input=262144, hidden_size_per_layer_input=256,
                  num_kv_shared_layers=GEMMA4_E2B_SHARED, use_double_wide_mlp=True, sliding_window=512,
                  max_position_embeddings=131072, final_logit_softcapping=30.0, tie_word_embeddings=True,
                  bos_token_id=2, eos_token_id=1, pad_token_id=0)


def gemma4_config() -> dict[str, Any]:
    import transformers as T

    types = ["full_attention" if (i + 1) % 5 == 0 else "sliding_attention" for i in range(GEMMA4_E2B_LAYERS)]
    cfg: dict[str, Any] = T.Gemma4TextConfig(**GEMMA4_E2B, layer_types=types).to_dict()
    cfg.update(architectures=["Gemma4ForCausalLM"], torch_dtype="bfloat16")
    return cfg


# family -> (the real checkpoint whose shape it has, its config.json as transformers writes it)
FAMILIES: dict[str, tuple[str, Callable[[], dict[str, Any]]]] = {
    "lfm2": (f"LFM2-350M ({len(LFM2_350M_ATTENTION)} of 16 layers attention)", lfm2_config),
    "granite4": (f"Granite-4.0-H-350M-sized ({len(GRANITE4_ATTENTION)} of 32 layers attention, the rest Mamba-2)",
                 granite4_config),
    "qwen35": ("Qwen3.5-0.8B-sized text stack (6 of 24 layers full attention, the rest gated delta-net)",
               qwen35_config),
    "gemma4": (f"Gemma-4-E2B-sized text stack, {GEMMA4_E2B_LAYERS} of its 35 layers (2 full, the last "
               f"{GEMMA4_E2B_SHARED} sharing KV)", gemma4_config),
}
# what each family is converted to: (label, edgekit convert arguments)
CONVERSIONS = (("gguf f16", ["-q", "f16"]), ("gguf q4_k_m", ["-q", "q4_k_m"]), ("onnx int4", ["--to", "onnx", "-q", "int4"]))


def write_model(cfg: dict[str, Any], out: Path, seed: int = 0) -> Path:
    """A random bf16 model of ``cfg``'s family from its spec's layout, one tensor at a time."""

    from edgekit.converters.gguf.archs import TextConfig, spec_for

    tensors = list(spec_for(cfg).hf_tensors(TextConfig.from_hf(cfg)))
    write_random_bf16(out / "model.safetensors", tensors, seed)
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    _spm_tokenizer(out)
    return out


def convert(model: Path, args: list[str], out: Path) -> dict[str, Any]:
    """One ``edgekit convert`` in a child process; its artifact lands in ``out`` (one manifest per family)."""
    cli = ["convert", str(model), *args, "-o", str(out), "--name", "model", "--json", "--quiet", "--no-verify"]
    r = run_child("module", "edgekit", cli)
    doc = json.loads(r.pop("stdout"))
    art = doc["manifest"]["artifacts"][-1]
    r.update(size_bytes=art["size_bytes"], file=art["file"])
    return r


def profile_check(out: Path, threads: int, report: Path) -> list[dict[str, Any]]:
    """benchmarks/profile_check.py on a family's output directory (q4_k_m and int4 only)."""
    import subprocess
    import sys

    cmd = [sys.executable, "-u", str(Path(__file__).parent / "profile_check.py"), str(out), "--threads", str(threads),
           "--prompt", "256", "--gen", "64", "--reps", "2", "-o", str(report)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    results: list[dict[str, Any]] = json.loads(report.read_text())["results"]
    return results


def main(argv: list[str] | None = None) -> int:
    from edgekit.ui import format_table, human_bytes

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--families", default=",".join(FAMILIES), help=f"comma-separated, of {', '.join(FAMILIES)}")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "hybrid_convert.json")
    args = ap.parse_args(argv)
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown:
        ap.error(f"unknown families {unknown}: choose from {', '.join(FAMILIES)}")
    conv_rows, speed_rows, results = [], [], []
    with tempfile.TemporaryDirectory(prefix="ek-hybrid-") as tmp:
        for family in families:
            shape, config = FAMILIES[family]
            cfg = config()
            model = write_model(cfg, Path(tmp) / family)
            weights = sum(p.stat().st_size for p in model.glob("*.safetensors"))
            warm_page_cache(model)
            out = Path(tmp) / f"{family}-out"
            entry: dict[str, Any] = {"family": family, "shape": shape, "config": cfg, "weights_bytes": weights,
                                     "conversions": []}
            from edgekit.converters.gguf.archs import spec_for

            onnx = spec_for(cfg).supports("onnx")  # a family edgekit converts to GGUF only: no int4 row
            for label, conv_args in [c for c in CONVERSIONS if onnx or "onnx" not in c[1]]:
                # repeated runs convert into their own directory; the first one's q4_k_m and int4 are kept in `out`
                # f16's speed is not what is compared: it converts beside, not into `out`
                keep = Path(tmp) / f"{family}-f16" if conv_args == ["-q", "f16"] else out
                runs = [convert(model, conv_args, keep if i == 0 else Path(tmp) / f"{family}-rerun-{i}")
                        for i in range(args.runs)]
                wall = statistics.median(r["wall_s"] for r in runs)
                rss = statistics.median(r["peak_rss_bytes"] for r in runs)
                entry["conversions"].append({"what": label, "wall_s": wall, "peak_rss_bytes": rss,
                                             "size_bytes": runs[0]["size_bytes"], "runs": args.runs})
                conv_rows.append([family, label, human_bytes(weights), wall, human_bytes(rss),
                                  human_bytes(runs[0]["size_bytes"])])
                print(f"  {family} {label}: {wall:.2f} s, peak RSS {human_bytes(rss)}", flush=True)
            checked = profile_check(out, args.threads, args.json.with_name(f"hybrid_convert-{family}-profile.json"))
            entry["speed"] = checked
            for r in checked:
                if "measured" not in r:
                    speed_rows.append([family, r.get("format"), r.get("quant"), None, None, None, None, None, None,
                                       r.get("error") or r.get("skipped")])
                    continue
                m, p = r["measured"], r["predicted"]
                speed_rows.append([family, r["format"], r["quant"], m["prompt_tps"], m["gen_tps"], p["gen_tps"],
                                   p["gen_tps"] / m["gen_tps"], human_bytes(m["peak_rss_bytes"]),
                                   human_bytes(p["peak_rss_bytes"]), f"{p['peak_rss_bytes'] / m['peak_rss_bytes']:.2f}x"])
            results.append(entry)
    print(f"\n== conversion (--no-verify), synthetic bf16 models of real shapes: "
          f"{'; '.join(f'{f}: {FAMILIES[f][0]}' for f in families)}")
    print(format_table(["family", "to", "weights", "convert s", "peak RSS", "file"], conv_rows))
    print(f"\n== speed and memory on this host, {args.threads} threads (pp256, tg64): measured vs the profiler")
    print(format_table(["family", "format", "quant", "pp tok/s", "tg tok/s", "tg pred", "pred/meas", "peak RSS",
                        "RSS pred", "pred/meas RSS"], speed_rows))
    save_results({"host": platform.node(), "cpu": platform.processor(), "runs": args.runs, "threads": args.threads,
                  "results": results}, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
