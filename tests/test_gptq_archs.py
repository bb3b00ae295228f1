"""GPTQ for the dense families of issue 16 (phi3, gemma2, granite, smollm3, olmo2, ministral3): llmcompressor's
sequential pipeline on each family's tiny random model (tests/test_archs.py's config: hidden 256,
intermediate 768, vocab 1024), the checkpoint read back and verified against transformers.

What each run must show: every projection of the family's decoder layers (its spec's layout:
Phi-3's fused ``qkv_proj``/``gate_up_proj``, OLMo 2's full-width q/k norms left in float) is
quantized and packed, the checkpoint computes what its own dequantized weights say (edgekit's
verifier: same tokens, logits within bounds; Gemma 2's soft-capping in the reference), and GPTQ's
error compensation changed codes against round-to-nearest on the same scales. Not that GPTQ beats
RTN on held-out text: on random weights the two are indistinguishable (tests/test_gptq.py checks
that on the trained demo model). One layer per model, calibration 8 windows of 64 tokens
(most of each run is llmcompressor's per-column loop).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from _family import save_with_tokenizer
from test_archs import _CLASSES, _config

from edgekit.converters.gguf.archs import TextConfig, spec_for
from edgekit.converters.gptq.checkpoint import GPTQCheckpoint
from edgekit.converters.gptq.convert import convert_gptq
from edgekit.converters.gptq.pack import unpack_linear
from edgekit.converters.gptq.rtn import rtn_quantize
from edgekit.converters.quality import EvalSettings, QualitySettings
from edgekit.converters.safetensors_io import SafetensorsFile

FAST = QualitySettings(EvalSettings(tokens=256))  # quality is reported, not what these tests check
GPTQ_FAMILIES = ["phi3", "gemma2", "granite", "smollm3", "olmo2", "ministral3"]
LAYERS = 1  # GPTQ costs per layer (llmcompressor's column loop); one runs each family's decoder layer


def build_two_layer(family: str, tokenizer_dir: Path, out: Path) -> Path:
    """tests/test_archs.py's tiny random model of the family (its config, norms perturbed from 1),
    cut to LAYERS layers (per-layer lists too)."""

    import torch
    import transformers as T

    cfg = _config(family)
    for key, value in list(vars(cfg).items()):
        if isinstance(value, list) and len(value) == cfg.num_hidden_layers:  # layer_types, no_rope_layers
            setattr(cfg, key, value[:LAYERS])
    cfg.num_hidden_layers = LAYERS
    torch.manual_seed(0)
    model = getattr(T, _CLASSES[family])(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.add_(torch.randn_like(p) * 0.1)
    return save_with_tokenizer(model, tokenizer_dir, out)


@pytest.mark.parametrize("family", GPTQ_FAMILIES)
def test_gptq_family_is_quantized_and_verified(family: str, bpe_tok: Path, tmp_path: Path) -> None:
    src = build_two_layer(family, bpe_tok, tmp_path / "src")
    config = json.loads((src / "config.json").read_text())
    spec = spec_for(config, "gptq")  # the spec says llmcompressor runs it
    out = tmp_path / "out"
    convert_gptq(src, out, name=family, samples=8, seq_len=64, quality=FAST)
    m = json.loads((out / "edgekit.json").read_text())
    entry = next(a for a in m["artifacts"] if a["format"] == "gptq")
    assert entry["verification"]["passed"], entry["verification"]
    ckpt = GPTQCheckpoint(out / entry["file"])
    # the decoder layers' projections from the spec's own layout: all quantized, nothing else
    c = TextConfig.from_hf(config)
    projections = {n.removesuffix(".weight") for n, shape in spec.hf_tensors(c)
                   if ".layers." in n and len(shape) == 2 and not n.endswith("norm.weight")}
    assert set(ckpt.quantized) == projections
    assert not any(k.removesuffix(".weight") in projections for k in ckpt.float_tensors)
    weights = SafetensorsFile(src / "model.safetensors")
    changed = 0
    for name, t in ckpt.quantized.items():
        u = unpack_linear(t)
        rtn = rtn_quantize(weights.float32(f"{name}.weight"), 4, 128)
        assert u.codes.shape == rtn.codes.shape
        changed += int(not np.array_equal(u.codes, rtn.codes))
    assert changed == len(ckpt.quantized)  # GPTQ's updates move codes off round-to-nearest in every matrix
