"""GPTQ for mixtures of experts (Qwen3-MoE, Mixtral): a tiny random model of each (hidden 256,
expert width 512, 4 experts, top-2, one layer, vocab 1024) through llmcompressor's sequential
pipeline with its experts linearized (one Linear per expert matrix, every expert calibrated on
every token), written as a GPTQ checkpoint in the hub's per-expert layout (Mixtral's
``block_sparse_moe.experts.E.w1/w3/w2``), read back into transformers' fused experts and
verified against the source.

What it must show: every expert matrix of every expert is quantized (the router is not), each
one's codes moved off round-to-nearest (an expert that saw no calibration token would keep RTN's
codes: its Hessian would be the dampening alone), and the checkpoint computes what its own
dequantized weights say (edgekit's verifier, logits against transformers).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _family import save_with_tokenizer

from edgekit.converters.gguf.archs import spec_for
from edgekit.converters.gguf.archs.moe import MoeSpec
from edgekit.converters.gptq.checkpoint import GPTQCheckpoint
from edgekit.converters.gptq.convert import convert_gptq
from edgekit.converters.gptq.pack import unpack_linear
from edgekit.converters.gptq.rtn import rtn_quantize
from edgekit.converters.quality import EvalSettings, QualitySettings
from edgekit.converters.safetensors_io import SafetensorsFile

EXPERTS, ACTIVE, EXPERT_FF = 4, 2, 512
FAST = QualitySettings(EvalSettings(tokens=256))


def _config(family: str) -> Any:
    import transformers as T

    common = dict(hidden_size=256, num_experts_per_tok=ACTIVE, num_hidden_layers=1, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=64, vocab_size=1024, max_position_embeddings=1024,
                  tie_word_embeddings=False, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    if family == "qwen3_moe":
        return T.Qwen3MoeConfig(**common, intermediate_size=768, moe_intermediate_size=EXPERT_FF,
                                num_experts=EXPERTS, norm_topk_prob=True)
    return T.MixtralConfig(**common, intermediate_size=EXPERT_FF, num_local_experts=EXPERTS)


def build_moe(family: str, tokenizer_dir: Path, out: Path) -> Path:
    import torch
    import transformers as T

    torch.manual_seed(0)
    cls = {"qwen3_moe": T.Qwen3MoeForCausalLM, "mixtral": T.MixtralForCausalLM}[family]
    model = cls(_config(family)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.add_(torch.randn_like(p) * 0.1)
    return save_with_tokenizer(model, tokenizer_dir, out)  # the hub layout: one matrix per expert


@pytest.mark.parametrize("family", ["qwen3_moe", "mixtral"])
def test_moe_gptq_quantizes_every_expert_and_is_verified(family: str, bpe_tok: Path, tmp_path: Path) -> None:
    src = build_moe(family, bpe_tok, tmp_path / "src")
    spec = spec_for(json.loads((src / "config.json").read_text()), "gptq")  # the spec says llmcompressor runs it
    assert isinstance(spec, MoeSpec)
    out = tmp_path / "out"
    convert_gptq(src, out, name=family, samples=8, seq_len=64, quality=FAST)
    entry = next(a for a in json.loads((out / "edgekit.json").read_text())["artifacts"] if a["format"] == "gptq")
    assert entry["verification"]["passed"], entry["verification"]
    ckpt = GPTQCheckpoint(out / entry["file"])
    p = "model.layers.0."
    # every expert's three matrices, named as the hub checkpoint names them (what GPTQ loaders read)
    experts = {spec.hub_expert(p, e, which).removesuffix(".weight") for e in range(EXPERTS) for which in range(3)}
    attention = {f"{p}self_attn.{m}_proj" for m in "qkvo"}
    assert set(ckpt.quantized) == experts | attention
    assert f"{p}{spec.moe_block}.gate.weight" in ckpt.float_tensors  # the router stays float
    weights = SafetensorsFile(src / "model.safetensors")
    for name in sorted(experts | attention):
        codes = unpack_linear(ckpt.quantized[name]).codes
        assert not np.array_equal(codes, rtn_quantize(weights.float32(f"{name}.weight"), 4, 128).codes), name
    # the read-back model holds transformers' fused experts, assembled from the per-expert matrices
    fused = dict(ckpt.float_model().named_parameters())[f"{p}mlp.experts.gate_up_proj"]
    assert tuple(fused.shape) == (EXPERTS, 2 * EXPERT_FF, 256)
    want = np.concatenate([ckpt.dequantized_one(spec.hub_expert(p, 1, w).removesuffix(".weight")) for w in (0, 1)])
    assert np.array_equal(fused[1].detach().numpy(), want)
