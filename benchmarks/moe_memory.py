"""Benchmark: peak RSS of a mixture-of-experts GGUF conversion against the size of one expert stack.

    python benchmarks/moe_memory.py [--experts 64] [--expert-ff 1408] [--json PATH]

A synthetic bf16 Qwen3-MoE of one layer (hidden 2048, ``--experts`` experts of width
``--expert-ff``, vocabulary 4096) is written in both checkpoint layouts -- the hub's one matrix
per expert and transformers 5's fused ``gate_up_proj`` / ``down_proj`` -- so that each expert
stack (``ffn_*_exps``, 352 MiB of bf16 at the defaults) is by far the largest thing in the model.
``edgekit convert -q f16 --no-verify`` runs in a fresh child (wall time, VmHWM; see
convert_vs_llamacpp.py). Stacking the experts in memory would cost at least one stack (twice
that as float32); streaming them piece by piece costs a few blocks. Results: a table, and JSON
(default benchmarks/results/moe_memory.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
from pathlib import Path

from _results import save_results
from _synthetic import write_random_bf16  # benchmarks/ sibling (scripts run from this folder)
from convert_vs_llamacpp import _spm_tokenizer, run_edgekit, warm_page_cache

HIDDEN, VOCAB = 2048, 4096


def main(argv: list[str] | None = None) -> int:
    import transformers as T

    from edgekit.converters.gguf.archs import TextConfig, qwen3_moe
    from edgekit.ui import format_table, human_bytes

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--experts", type=int, default=64)
    ap.add_argument("--expert-ff", type=int, default=1408)
    ap.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "moe_memory.json")
    args = ap.parse_args(argv)
    cfg = T.Qwen3MoeConfig(hidden_size=HIDDEN, intermediate_size=768, moe_intermediate_size=args.expert_ff,
                           num_experts=args.experts, num_experts_per_tok=8, norm_topk_prob=True, num_hidden_layers=1,
                           num_attention_heads=16, num_key_value_heads=4, head_dim=128, vocab_size=VOCAB,
                           max_position_embeddings=4096).to_dict()
    cfg["architectures"] = ["Qwen3MoeForCausalLM"]
    c = TextConfig.from_hf(cfg)
    stack = args.experts * args.expert_ff * HIDDEN * 2  # one ffn_*_exps tensor, bf16
    rows, results = [], []
    with tempfile.TemporaryDirectory(prefix="ek-moe-") as tmp:
        for layout in ("hub", "fused"):
            model = Path(tmp) / layout
            spec = qwen3_moe.SPEC
            write_random_bf16(model / "model.safetensors", list(spec.hub_tensors(c) if layout == "hub"
                                                                   else spec.hf_tensors(c)))
            (model / "config.json").write_text(json.dumps(cfg, indent=2))
            _spm_tokenizer(model)
            weights = (model / "model.safetensors").stat().st_size
            warm_page_cache(model)
            r = run_edgekit(model, "f16", Path(tmp) / "out", verify=False, extra=[])
            shutil.rmtree(model)
            results.append({"layout": layout, "weights_bytes": weights, "stack_bytes": stack,
                            "wall_s": r["wall_s"], "peak_rss_bytes": r["peak_rss_bytes"]})
            rows.append([layout, human_bytes(weights), human_bytes(stack), human_bytes(r["peak_rss_bytes"]),
                         r["peak_rss_bytes"] / stack, r["wall_s"]])
    print(f"\n== GGUF f16 --no-verify, synthetic bf16 Qwen3-MoE: 1 layer, hidden {HIDDEN}, {args.experts} experts "
          f"of {args.expert_ff}")
    print(format_table(["layout", "weights", "one stack", "peak RSS", "RSS / stack", "s"], rows))
    save_results({"host": platform.node(), "cpu": platform.processor(), "load_avg_1min": os.getloadavg()[0],
                  "experts": args.experts, "expert_ff": args.expert_ff, "hidden": HIDDEN, "runs": results}, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
