"""GPTQ for the hybrid families of issue 17 (Granite 4: Mamba-2 + attention; Qwen3.5: gated delta-net +
gated attention): llmcompressor's sequential pipeline on each family's tiny random model (its test
file's config, cut to one layer of each kind), the checkpoint read back and verified against
transformers.

What each run must show: the Linear projections of the spec's layout are quantized -- Granite 4's
Mamba ``in_proj``/``out_proj``, its attention and shared MLP; Qwen3.5's gated attention and MLPs,
its delta-net left in float as llmcompressor's own Qwen3.5 recipes leave it
(converters/gptq/engine.py FLOAT_LINEARS) -- while the state tensors (conv kernels, ``A_log``,
``D``, ``dt_bias``, norms) stay float; the checkpoint computes what its own dequantized weights
say (edgekit's verifier); and GPTQ's error compensation moved codes off round-to-nearest in every
quantized matrix. Calibration 8 windows of 64 tokens. Granite 4 with experts is refused in one line
before anything is written (its fused experts have no GPTQ checkpoint layout yet). Gemma 4 is not
here: llmcompressor's sequential pipeline cannot run it (its spec's why_not says why).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from edgekit.converters.gguf.archs import TextConfig, spec_for
from edgekit.converters.gptq.checkpoint import GPTQCheckpoint
from edgekit.converters.gptq.convert import convert_gptq
from edgekit.converters.gptq.engine import FLOAT_LINEARS
from edgekit.converters.gptq.pack import unpack_linear
from edgekit.converters.gptq.rtn import rtn_quantize
from edgekit.converters.quality import EvalSettings, QualitySettings
from edgekit.converters.safetensors_io import SafetensorsFile

FAST = QualitySettings(EvalSettings(tokens=256))  # quality is reported, not what these tests check
# what stays float in each family besides norms: its state tensors
STATE = {"granite4": ("mamba.conv1d.weight", "mamba.conv1d.bias", "mamba.A_log", "mamba.D", "mamba.dt_bias"),
         "qwen35": ("linear_attn.conv1d.weight", "linear_attn.A_log", "linear_attn.dt_bias")}


def _build(family: str, tok: Path, out: Path) -> Path:
    if family == "granite4":
        from test_archs_granite4 import build_granite4

        return build_granite4(tok, out, types=["mamba", "attention"])
    import test_archs_qwen35 as q

    cfg = q.qwen35_config()
    cfg.layer_types, cfg.num_hidden_layers = ["linear_attention", "full_attention"], 2
    return q.build("Qwen3_5ForCausalLM", cfg, tok, out)


@pytest.mark.parametrize("family", ["granite4", "qwen35"])
def test_hybrid_gptq_quantizes_the_projections_and_verifies(family: str, bpe_tok: Path, qwen_tok: Path,
                                                            tmp_path: Path) -> None:
    src = _build(family, qwen_tok if family == "qwen35" else bpe_tok, tmp_path / "src")
    config = json.loads((src / "config.json").read_text())
    spec = spec_for(config, "gptq")  # the spec says llmcompressor runs it
    out = tmp_path / "out"
    convert_gptq(src, out, name=family, samples=8, seq_len=64, quality=FAST)
    entry = next(a for a in json.loads((out / "edgekit.json").read_text())["artifacts"] if a["format"] == "gptq")
    assert entry["verification"]["passed"], entry["verification"]
    ckpt = GPTQCheckpoint(out / entry["file"])
    c = TextConfig.from_hf(config)
    layout = dict(spec.hf_tensors(c))
    matrices = {n.removesuffix(".weight") for n, shape in layout.items()
                if ".layers." in n and n.endswith(".weight") and len(shape) == 2 and not n.endswith("norm.weight")}
    keep = FLOAT_LINEARS.get(family, ())
    float_linears = {m for m in matrices if any(re.fullmatch(p, m) for p in keep)}
    assert set(ckpt.quantized) == matrices - float_linears
    assert any(".self_attn." in m for m in ckpt.quantized) and any("mlp." in m for m in ckpt.quantized)
    # the state tensors, the norms and the family's float Linears: in the checkpoint as float, unchanged
    weights = SafetensorsFile(src / "model.safetensors")
    state = [n for n in layout if n.endswith(STATE[family]) or n.endswith("norm.weight")]
    assert {f"{m}.weight" for m in float_linears} | set(state) <= set(ckpt.float_tensors)
    assert len([n for n in state if n.endswith(STATE[family])]) == len(STATE[family])
    for n in sorted(state):  # stored as float16: equal to the source rounded to float16
        want = weights.float32(n).astype(np.float16)
        assert np.array_equal(ckpt.float_tensors[n].astype(np.float16), want), n
    if family == "qwen35":  # the whole delta-net is float, its attention layer quantized
        assert float_linears and all(".linear_attn." in m for m in float_linears)
        assert not any(".linear_attn." in m for m in ckpt.quantized)
        qc = json.loads((out / entry["file"] / "config.json").read_text())["quantization_config"]
        assert qc["dynamic"] == {f"-:{p}": {} for p in keep}  # GPTQModel's "leave these modules float"
    else:
        assert {"model.layers.0.mamba.in_proj", "model.layers.0.mamba.out_proj"} <= set(ckpt.quantized)
    for name, t in ckpt.quantized.items():
        codes = unpack_linear(t).codes
        assert not np.array_equal(codes, rtn_quantize(weights.float32(f"{name}.weight"), 4, 128).codes), name


def test_granite4_with_experts_is_refused_before_anything_is_written(bpe_tok: Path, tmp_path: Path) -> None:
    """llmcompressor would quantize Granite 4's linearized experts, but the GPTQ checkpoint has no layout for
    its fused experts yet: one line, before the model is loaded, nothing written."""
    from test_archs_granite4 import build_granite4

    from edgekit.errors import UnsupportedArchitectureError

    src = build_granite4(bpe_tok, tmp_path / "src", types=["mamba", "attention"], experts=4)
    out = tmp_path / "out"
    with pytest.raises(UnsupportedArchitectureError, match="Granite 4 with experts") as e:
        convert_gptq(src, out, name="moe", samples=8, seq_len=64, quality=FAST)
    assert "\n" not in e.value.one_line() and "--to gguf" in e.value.one_line()
    assert not out.exists() or not any(out.iterdir())
