"""Benchmark: GGUF conversion time and peak RSS per architecture family, edgekit vs llama.cpp.

    python benchmarks/arch_convert.py --llamacpp-dir LLAMA_CPP [--families phi3,gemma2] [--runs 1]

For each family a synthetic bf16 model of realistic width (hidden 2048, 4 layers, intermediate
5632, 16 heads of 128, 8 KV heads, vocabulary 32,000) is written tensor by tensor from the
family's architecture spec (its Hugging Face layout, checked against transformers' own models
in tests/test_archs.py) with the family's transformers config, plus a SentencePiece tokenizer.
Each conversion (``edgekit convert -q f16 --no-verify`` and llama.cpp's ``convert_hf_to_gguf.py
--outtype f16``) runs in a fresh child process, alternating, and reports its wall time and
VmHWM; see convert_vs_llamacpp.py for the measurement. Results: a table, and JSON (default
benchmarks/results/arch_convert.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
from pathlib import Path
from typing import Any

from _results import save_results
from _synthetic import write_random_bf16  # benchmarks/ sibling (scripts run from this folder)
from convert_vs_llamacpp import _spm_tokenizer, find_llamacpp, run_child, run_edgekit, warm_page_cache

HIDDEN, LAYERS, INTER, VOCAB, HEADS, KV_HEADS, HEAD_DIM = 2048, 4, 5632, 32000, 16, 8, 128


def family_config(family: str) -> dict[str, Any]:
    """config.json of a synthetic model of the family (transformers fills in its defaults)."""
    import transformers as T

    common = dict(hidden_size=HIDDEN, intermediate_size=INTER, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                  num_key_value_heads=KV_HEADS, vocab_size=VOCAB, max_position_embeddings=4096, bos_token_id=1,
                  eos_token_id=2, pad_token_id=None)
    with_dim = {**common, "head_dim": HEAD_DIM}
    made = family_configs(T, common, with_dim)
    cfg = made[family]().to_dict()
    cfg["torch_dtype"] = "bfloat16"
    return cfg


def family_configs(T: Any, common: dict[str, Any], with_dim: dict[str, Any]) -> dict[str, Any]:
    """family -> its transformers config at the benchmark's shape (text families)."""
    return {
        "llama": lambda: T.LlamaConfig(**with_dim),
        "mistral": lambda: T.MistralConfig(**with_dim, sliding_window=None),
        "qwen2": lambda: T.Qwen2Config(**common),
        "qwen3": lambda: T.Qwen3Config(**with_dim),
        "gemma3": lambda: T.Gemma3TextConfig(**with_dim, query_pre_attn_scalar=HEAD_DIM, num_hidden_layers=6),
        "phi3": lambda: T.Phi3Config(**common),
        "gemma2": lambda: T.Gemma2Config(**with_dim, query_pre_attn_scalar=HEAD_DIM),
        "granite": lambda: T.GraniteConfig(**common),
        "smollm3": lambda: T.SmolLM3Config(**with_dim),
        "olmo2": lambda: T.Olmo2Config(**common),
        "ministral3": lambda: T.Ministral3Config(**with_dim),
        # mixtures of experts: 8 experts, top-2 (Qwen3-30B-A3B's expert width 768; Mixtral's scaled to 1408)
        "qwen3-moe": lambda: T.Qwen3MoeConfig(**with_dim, moe_intermediate_size=768, num_experts=8,
                                              num_experts_per_tok=2, norm_topk_prob=True),
        "mixtral": lambda: T.MixtralConfig(**{**with_dim, "intermediate_size": 1408}, num_local_experts=8,
                                           num_experts_per_tok=2, sliding_window=None),
        # hybrids: Qwen3.5-9B's delta-net (16 key / 32 value heads of 128), every 4th layer full attention;
        # Gemma 4 with its default full-layer head (512), per-layer embeddings of 256, three sliding + one full
        "qwen35": lambda: T.Qwen3_5TextConfig(**with_dim),
        "gemma4": lambda: T.Gemma4TextConfig(**with_dim, vocab_size_per_layer_input=VOCAB,
                                             layer_types=["sliding_attention"] * 3 + ["full_attention"]),
    }


def write_family(family: str, out: Path, seed: int = 0) -> Path:
    """A random bf16 model of ``family`` from its spec's layout, one tensor at a time."""

    from edgekit.converters.gguf.archs import ARCHS, TextConfig
    from edgekit.converters.gguf.archs.moe import MoeSpec

    spec = next(s for s in ARCHS if s.name == family)
    cfg = {**family_config(family), "architectures": [spec.hf_architectures[0]]}
    c = TextConfig.from_hf(cfg)  # a mixture of experts as published: one matrix per expert
    tensors = list(spec.hub_tensors(c) if isinstance(spec, MoeSpec) else spec.hf_tensors(c))
    write_random_bf16(out / "model.safetensors", tensors, seed)
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    _spm_tokenizer(out)
    return out


def run_llamacpp(lc: Path, model: Path, out: Path) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    try:
        r = run_child("path", str(lc / "convert_hf_to_gguf.py"),
                      [str(model), "--outtype", "f16", "--outfile", str(out / "model.gguf")],
                      env={"PYTHONPATH": str(lc / "gguf-py")})
    except RuntimeError as e:  # the reference refusing a synthetic model is a result too
        return {"error": str(e).splitlines()[-1][:200]}
    finally:
        shutil.rmtree(out, ignore_errors=True)
    r.pop("stdout")
    return r


def main(argv: list[str] | None = None) -> int:
    from edgekit.converters.gguf.archs import ARCHS
    from edgekit.ui import format_table, human_bytes

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    import transformers as T

    text = [s.name for s in ARCHS if s.name in family_configs(T, {}, {})]
    ap.add_argument("--families", default=",".join(text), help=f"comma-separated (default: {','.join(text)})")
    ap.add_argument("--llamacpp-dir", type=Path, default=None)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "arch_convert.json")
    args = ap.parse_args(argv)
    lc = find_llamacpp(args.llamacpp_dir)
    rows, results = [], []
    with tempfile.TemporaryDirectory(prefix="ek-arch-") as tmp:
        for family in args.families.split(","):
            model = write_family(family, Path(tmp) / family)
            weights = sum(p.stat().st_size for p in model.glob("*.safetensors"))
            warm_page_cache(model)
            ek, ref = [], []
            for _ in range(args.runs):
                ek.append(run_edgekit(model, "f16", Path(tmp) / "out-ek", verify=False, extra=[]))
                if lc is not None:
                    ref.append(run_llamacpp(lc, model, Path(tmp) / "out-lc"))
            shutil.rmtree(model)
            ek_s = statistics.median(r["wall_s"] for r in ek)
            ek_rss = statistics.median(r["peak_rss_bytes"] for r in ek)
            ok = [r for r in ref if "error" not in r]
            lc_s = statistics.median(r["wall_s"] for r in ok) if ok else None
            lc_rss = statistics.median(r["peak_rss_bytes"] for r in ok) if ok else None
            results.append({"family": family, "weights_bytes": weights, "edgekit_s": ek_s, "edgekit_peak_rss": ek_rss,
                            "llamacpp_s": lc_s, "llamacpp_peak_rss": lc_rss,
                            "llamacpp_error": next((r["error"] for r in ref if "error" in r), None)})
            rows.append([family, human_bytes(weights), ek_s, lc_s, ek_s / lc_s if lc_s else None,
                         human_bytes(ek_rss), human_bytes(lc_rss) if lc_rss else None,
                         ek_rss / lc_rss if lc_rss else None])
            print(f"  {family}: edgekit {ek_s:.2f} s {human_bytes(ek_rss)}"
                  + (f", llama.cpp {lc_s:.2f} s {human_bytes(lc_rss)}" if lc_s and lc_rss else ""), flush=True)
            save_results(_doc(args.runs, results), args.json)  # after each family: a long run keeps what it measured
    print(f"\n== GGUF f16 --no-verify, synthetic bf16 hidden {HIDDEN}, {LAYERS} layers (gemma3: 6), vocab {VOCAB}")
    print(format_table(["family", "weights", "edgekit s", "llama.cpp s", "x llama.cpp", "edgekit RSS",
                        "llama.cpp RSS", "RSS x llama.cpp"], rows))
    save_results(_doc(args.runs, results), args.json)
    return 0


def _doc(runs: int, results: list[dict[str, Any]]) -> dict[str, Any]:
    return {"host": platform.node(), "cpu": platform.processor(), "load_avg_1min": os.getloadavg()[0],
            "shape": {"hidden": HIDDEN, "layers": LAYERS, "intermediate": INTER, "vocab": VOCAB, "heads": HEADS,
                      "kv_heads": KV_HEADS}, "runs": runs, "families": results}


if __name__ == "__main__":
    raise SystemExit(main())
