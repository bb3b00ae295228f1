"""Benchmark: the hybrid families (issue 17) -- GGUF conversion time and peak RSS, and llama.cpp's
prompt / generation speed of the q4_k_m, on a synthetic model of realistic width.

    python benchmarks/hybrid_convert.py [--runs 1] [--threads 2] [--json PATH]

LFM2: an LFM2-350M-shaped bf16 model (hidden 1024, 16 layers of which 6 attention at LFM2-350M's
positions, MLP 4608 from intermediate_size 6656 by LFM2's 2/3 rule, 16 heads, 8 KV heads, vocabulary
65,536, tied embedding) written tensor by tensor from the spec's Hugging Face layout (checked against
transformers' own model in tests/test_archs_hybrid.py), with a SentencePiece tokenizer. Each
conversion (``edgekit convert -q f16`` and ``-q q4_k_m``, ``--no-verify``) runs in a fresh child process
and reports its wall time and VmHWM (see convert_vs_llamacpp.py). llama.cpp's own converter is not
run beside it: its LFM2 class reads tokenizer.json and refuses a BPE pre-tokenizer it does not know
by hash, which a synthetic vocabulary is. The q4_k_m is then loaded through ``edgekit.load`` and
timed on a 512-token prompt and 128 generated tokens. Results: a table, and JSON (default
benchmarks/results/hybrid_convert.json).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
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


def write_model(cfg: dict[str, Any], out: Path, seed: int = 0) -> Path:
    """A random bf16 model of ``cfg``'s family from its spec's layout, one tensor at a time."""

    from edgekit.converters.gguf.archs import TextConfig, spec_for

    tensors = list(spec_for(cfg).hf_tensors(TextConfig.from_hf(cfg)))
    write_random_bf16(out / "model.safetensors", tensors, seed)
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    _spm_tokenizer(out)
    return out


def convert(model: Path, quant: str, out: Path) -> dict[str, Any]:
    args = ["convert", str(model), "-q", quant, "-o", str(out), "--name", "model", "--json", "--quiet", "--no-verify"]
    r = run_child("module", "edgekit", args)
    doc = json.loads(r.pop("stdout"))
    art = doc["manifest"]["artifacts"][0]
    r.update(size_bytes=art["size_bytes"], file=str(out / art["file"]))
    return r


def speed(gguf: Path, threads: int) -> dict[str, float]:
    import edgekit

    prompt = [10 + (i * 37) % 3000 for i in range(512)]  # token ids: exactly 512, whatever the tokenizer
    with edgekit.load(gguf, n_ctx=1024, n_threads=threads) as s:
        s.generate(prompt, max_tokens=128, temperature=0.0, ignore_eos=True)
        stats: dict[str, float] = s.last_stats.to_dict()
        return stats


def main(argv: list[str] | None = None) -> int:
    from edgekit.ui import format_table, human_bytes

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "hybrid_convert.json")
    args = ap.parse_args(argv)
    rows, results = [], []
    with tempfile.TemporaryDirectory(prefix="ek-hybrid-") as tmp:
        cfg = lfm2_config()
        model = write_model(cfg, Path(tmp) / "lfm2")
        weights = sum(p.stat().st_size for p in model.glob("*.safetensors"))
        warm_page_cache(model)
        for quant in ("f16", "q4_k_m"):
            runs = [convert(model, quant, Path(tmp) / f"out-{quant}-{i}") for i in range(args.runs)]
            s = statistics.median(r["wall_s"] for r in runs)
            rss = statistics.median(r["peak_rss_bytes"] for r in runs)
            entry: dict[str, Any] = {"family": "lfm2", "quant": quant, "weights_bytes": weights, "wall_s": s,
                                     "peak_rss_bytes": rss, "size_bytes": runs[0]["size_bytes"]}
            if quant == "q4_k_m":
                entry.update(speed(Path(runs[0]["file"]), args.threads))
            results.append(entry)
            rows.append(["lfm2", quant, human_bytes(weights), s, human_bytes(rss), human_bytes(entry["size_bytes"]),
                         entry.get("prompt_tokens_per_s"), entry.get("generation_tokens_per_s")])
            print(f"  lfm2 {quant}: {s:.2f} s, peak RSS {human_bytes(rss)}", flush=True)
    print(f"\n== GGUF --no-verify, synthetic bf16 LFM2-350M shape ({len(LFM2_350M_ATTENTION)} of 16 layers attention), "
          f"{args.threads} threads")
    print(format_table(["family", "quant", "weights", "convert s", "peak RSS", "file", "pp tok/s", "tg tok/s"], rows))
    save_results({"host": platform.node(), "cpu": platform.processor(), "shape": {**LFM2_350M,
                  "attention_layers": list(LFM2_350M_ATTENTION)}, "runs": args.runs, "threads": args.threads,
                  "results": results}, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
