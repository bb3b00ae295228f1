"""Qwen3.5 (issue 17): gated delta-net linear attention mixed with gated full attention.

A tiny random ``Qwen3_5ForCausalLM`` built from its transformers config (hidden 256, MLP 768,
vocab 1024: multiples of 256 that differ; four layers, delta-net / full attention alternating;
two key heads and four value heads of 128 in the delta-net, so llama.cpp's value-head
reordering is exercised), converted to GGUF f16 and q4_k_m and checked for token and logit
parity against transformers; the metadata llama.cpp reads the layer pattern, the delta-net
sizes and the M-RoPE sections from; the profiler's tensor list; the language model of a
``Qwen3_5ForConditionalGeneration`` (vision tower left out); and two broken conversions the
check must refuse although their weights read back as the source's (each with the matching
inverse): ``ssm_a`` with the wrong sign (``+exp(A_log)``), and the value heads left in
transformers' grouped order.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _family import save_with_tokenizer, shared_inputs, verified_by_quant
from conftest import HIDDEN, INIT_STD, INTERMEDIATE, VOCAB

from edgekit.converters.gguf.archs import TextConfig, qwen35, spec_for
from edgekit.converters.gguf.convert import convert_gguf
from edgekit.converters.gguf.inspect import read_gguf
from edgekit.converters.quality import EvalSettings, QualitySettings
from edgekit.errors import InputError, UnsupportedArchitectureError, VerificationError

TYPES = ["linear_attention", "full_attention", "linear_attention", "full_attention"]
HEADS, KV_HEADS, HEAD_DIM = 2, 1, 256  # Qwen3.5's head_dim: a quarter (64) rotates, sections 11/11/10
K_HEADS, V_HEADS, LIN_DIM, KERNEL = 2, 4, 128, 4
CONV_DIM = 2 * K_HEADS * LIN_DIM + V_HEADS * LIN_DIM
FAST = QualitySettings(EvalSettings(tokens=512))  # quality is not what these tests check
NAME = "tiny"


def text_kwargs() -> dict[str, Any]:
    return dict(hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_hidden_layers=len(TYPES),
                num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, head_dim=HEAD_DIM, vocab_size=VOCAB,
                max_position_embeddings=1024, initializer_range=INIT_STD, bos_token_id=None, eos_token_id=None,
                pad_token_id=None, linear_num_key_heads=K_HEADS, linear_num_value_heads=V_HEADS,
                linear_key_head_dim=LIN_DIM, linear_value_head_dim=LIN_DIM, linear_conv_kernel_dim=KERNEL,
                layer_types=TYPES, tie_word_embeddings=False)


def qwen35_config() -> Any:
    import transformers as T

    return T.Qwen3_5TextConfig(**text_kwargs())


def qwen35_vl_config() -> Any:
    import transformers as T

    # a vision tower of another depth than the decoder (the reference finds the decoder's layer list by
    # length); the embedding tied at the top level only, as Qwen3.5's small checkpoints do: the checkpoint
    # has no lm_head, and the causal LM the reference builds from text_config must tie it too
    return T.Qwen3_5Config(text_config=text_kwargs(), tie_word_embeddings=True,
                           vision_config=dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=2,
                                              out_hidden_size=HIDDEN, num_position_embeddings=64))


def _perturb(model: Any) -> None:
    """Random weights that exercise every mapping: norms away from their init, A spread out, the
    conv kernels and dt bias large enough that their layout decides the logits."""
    import torch

    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.add_(torch.randn_like(p) * 0.1)
            elif name.endswith("A_log"):
                p.copy_(torch.randn_like(p))
            elif name.endswith("dt_bias"):
                p.copy_(torch.randn_like(p))
            elif name.endswith("conv1d.weight"):
                p.normal_(0, 0.5)


def build(cls: str, config: Any, tokenizer_dir: Path, out: Path, seed: int = 0) -> Path:
    import torch
    import transformers as T

    torch.manual_seed(seed)
    model = getattr(T, cls)(config).eval()
    _perturb(model)
    return save_with_tokenizer(model, tokenizer_dir, out)


@pytest.fixture(scope="module")
def qwen35_model(tmp_path_factory: pytest.TempPathFactory, qwen_tok: Path) -> Path:
    return build("Qwen3_5ForCausalLM", qwen35_config(), qwen_tok, tmp_path_factory.mktemp("qwen35"))


@pytest.fixture(scope="module")
def qwen35_inputs(qwen35_model: Path) -> Any:
    return shared_inputs(qwen35_model, FAST)


def test_qwen35_gguf_matches_transformers(qwen35_model: Path, qwen35_inputs: Any, tmp_path: Path) -> None:
    res = convert_gguf(qwen35_model, tmp_path, "f16,q4_k_m", name=NAME, prepared=qwen35_inputs, quality=FAST)
    # as test_archs' f16 parity: f16 activation rounding alone (the same on every x86 CPU) gives
    # rel. error ~1e-3 and KL ~1e-6; the sign-flipped A of the broken test gives O(1)
    by_quant = verified_by_quant(res)

    for art, _ in by_quant.values():
        summary = read_gguf(tmp_path / art.file)
        meta = summary.metadata
        assert summary.architecture == "qwen35"
        # the layer pattern as llama.cpp reads it: recurrent_layers first, the interval besides
        assert list(meta["qwen35.attention.recurrent_layers"]) == [t == "linear_attention" for t in TYPES]
        assert meta["qwen35.full_attention_interval"] == 2
        assert meta["qwen35.ssm.conv_kernel"] == KERNEL
        assert meta["qwen35.ssm.state_size"] == LIN_DIM
        assert meta["qwen35.ssm.group_count"] == K_HEADS
        assert meta["qwen35.ssm.time_step_rank"] == V_HEADS
        assert meta["qwen35.ssm.inner_size"] == V_HEADS * LIN_DIM
        assert meta["qwen35.rope.dimension_count"] == HEAD_DIM // 4  # partial_rotary_factor 0.25
        assert list(meta["qwen35.rope.dimension_sections"]) == [11, 11, 10, 0]
        tensors = {t.name: t for t in summary.tensors}
        for i, kind in enumerate(TYPES):
            if kind == "linear_attention":
                conv = tensors[f"blk.{i}.ssm_conv1d.weight"]
                assert list(conv.shape) == [KERNEL, CONV_DIM] and conv.type == "F32"
                assert tensors[f"blk.{i}.ssm_a"].type == "F32" and list(tensors[f"blk.{i}.ssm_a"].shape) == [V_HEADS]
                assert f"blk.{i}.ssm_dt.bias" in tensors and f"blk.{i}.attn_q.weight" not in tensors
            else:
                assert list(tensors[f"blk.{i}.attn_q.weight"].shape) == [HIDDEN, 2 * HEADS * HEAD_DIM]  # query + gate
                assert f"blk.{i}.ssm_a" not in tensors

    # the profiler's tensor list (derived from the spec) is the converted file's
    from edgekit.profiles.shapes import model_shapes

    f16_file = read_gguf(tmp_path / by_quant["f16"][0].file)
    predicted = {t.name: t.ne for t in model_shapes(json.loads((qwen35_model / "config.json").read_text())).tensors}
    assert predicted == {t.name: tuple(t.shape) for t in f16_file.tensors}


def test_qwen35_values_are_llama_cpps(qwen35_model: Path, tmp_path: Path) -> None:
    """ssm_a is -exp(A_log) and the value heads are tiled, as llama.cpp's converter writes them."""
    from safetensors.numpy import load_file

    res = convert_gguf(qwen35_model, tmp_path, "f32", name=NAME, verify_artifacts=False)
    import gguf

    reader = gguf.GGUFReader(tmp_path / res.artifacts[0].file)
    got = {t.name: np.asarray(t.data) for t in reader.tensors}
    src = load_file(qwen35_model / "model.safetensors")
    a_log = src["model.layers.0.linear_attn.A_log"].astype(np.float32)
    tiled = [j * K_HEADS + g for g in range(K_HEADS) for j in range(V_HEADS // K_HEADS)]  # new index of head g*r+j
    want = np.empty_like(a_log)
    want[tiled] = -np.exp(a_log)
    np.testing.assert_allclose(got["blk.0.ssm_a"], want, rtol=1e-6)
    assert np.all(got["blk.0.ssm_a"] < 0)
    norm = src["model.layers.1.self_attn.q_norm.weight"].astype(np.float32)
    np.testing.assert_allclose(got["blk.1.attn_q_norm.weight"], norm + 1, rtol=1e-6)
    gated = src["model.layers.0.linear_attn.norm.weight"].astype(np.float32)  # the gated norm: no shift
    np.testing.assert_allclose(got["blk.0.ssm_norm.weight"], gated, rtol=1e-6)


@pytest.mark.parametrize(("suffix", "axis"), [("in_proj_qkv.weight", 0), ("conv1d.weight", 0), ("in_proj_z.weight", 0),
                                           ("out_proj.weight", 1), ("in_proj_b.weight", 0), ("dt_bias", 0)])
def test_qwen35_value_heads_are_tiled(suffix: str, axis: int) -> None:
    """Value head g * r + j (grouped by key head g) lands at j * K + g, rows or columns of a head moving
    together; q and k rows stay; the inverse gives the tensor back."""
    d = qwen35.LinearDims(k_heads=2, v_heads=6, head_dim=4, kernel=3)
    per_head = 1 if suffix in ("in_proj_b.weight", "dt_bias") else d.head_dim
    n = d.v_heads * per_head
    lead = 2 * d.key_dim if suffix in ("in_proj_qkv.weight", "conv1d.weight") else 0
    shape = {"conv1d.weight": (lead + n, 1, 3), "out_proj.weight": (5, n), "dt_bias": (n,)}.get(suffix, (lead + n, 5))
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    got = qwen35._reorder(f"model.layers.0.linear_attn.{suffix}", x, d, inverse=False)
    want = x.copy()
    r = d.v_heads // d.k_heads
    for g in range(d.k_heads):
        for j in range(r):
            old, new = (g * r + j) * per_head + lead, (j * d.k_heads + g) * per_head + lead
            src = np.take(x, range(old, old + per_head), axis=axis)
            idx = [slice(None)] * x.ndim
            idx[axis] = slice(new, new + per_head)
            want[tuple(idx)] = src
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(qwen35._reorder(f"model.layers.0.linear_attn.{suffix}", got, d, inverse=True), x)


class _PositiveA(qwen35.Qwen35Spec):
    """ssm_a written as +exp(A_log): the delta-net's decay becomes growth. ``untransform`` undoes it,
    so the verifier's weights are the source's and only the runtime's logits can tell."""

    def transform(self, hf_name: str, data: np.ndarray, c: TextConfig) -> np.ndarray:
        out = super().transform(hf_name, data, c)
        return -out if hf_name.endswith(".A_log") else out

    def untransform(self, hf_name: str, data: np.ndarray, c: TextConfig) -> np.ndarray:
        return super().untransform(hf_name, -data if hf_name.endswith(".A_log") else data, c)


class _GroupedValueHeads(qwen35.Qwen35Spec):
    """The value heads left in transformers' grouped order (the converter forgot the reordering, and
    the verifier's inverse with it): each value head meets the wrong key head in llama.cpp."""

    def _reordered(self, hf_name: str, c: TextConfig) -> bool:
        return False


# measured: the sign flip overflows the state (logits not finite), the grouped heads give a
# relative logit error of 0.97 (the correct f16: 0.0013)
@pytest.mark.parametrize("broken_cls", [_PositiveA, _GroupedValueHeads], ids=["sign-flipped-A", "grouped-v-heads"])
def test_qwen35_broken_conversion_is_caught(qwen35_model: Path, qwen35_inputs: Any, tmp_path: Path,
                                            broken_cls: type[qwen35.Qwen35Spec]) -> None:
    broken = broken_cls(**{f.name: getattr(qwen35.SPEC, f.name) for f in dataclasses.fields(qwen35.SPEC)})
    with pytest.raises(VerificationError, match=r"logits: "):
        convert_gguf(qwen35_model, tmp_path, "f16", name=NAME, spec=broken, prepared=qwen35_inputs, quality=FAST)
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".edgekit-tmp*"))


def test_qwen35_multimodal_checkpoint_converts_its_language_model(qwen_tok: Path, tmp_path: Path) -> None:
    model = build("Qwen3_5ForConditionalGeneration", qwen35_vl_config(), qwen_tok, tmp_path / "vl")
    events: list[Any] = []
    res = convert_gguf(model, tmp_path / "out", "f16", name=NAME, progress=events.append,
                       quality=QualitySettings(EvalSettings(tokens=256, ctx=256)))  # parity, not quality
    (rep,) = res.reports
    assert rep.passed and rep.token_mismatches == [], rep.failures
    assert rep.metrics is not None and rep.metrics.rel_err < 0.05
    notes = [e.message for e in events if e.step == "note"]
    assert len(notes) == 1 and "vision tower" in notes[0] and "left out" in notes[0]
    names = {t.name for t in read_gguf(tmp_path / "out" / res.artifacts[0].file).tensors}
    assert "blk.0.ssm_a" in names and "blk.1.attn_q.weight" in names
    assert all(n.startswith("blk.") or n in ("token_embd.weight", "output_norm.weight") for n in names)  # tied
    from edgekit.profiles.shapes import model_shapes  # the profiler knows the head is tied too

    predicted = {t.name for t in model_shapes(json.loads((model / "config.json").read_text())).tensors}
    assert predicted == names


@pytest.mark.parametrize("family", ["qwen35", "qwen35-vl"])
def test_qwen35_layout_is_transformers_layout(family: str) -> None:
    """The profiler's tensor list comes from the spec's layout: exactly transformers' own tensors."""
    import torch
    import transformers as T

    cfg = QWEN35_CONFIGS[family]()
    cls = "Qwen3_5ForCausalLM" if family == "qwen35" else "Qwen3_5ForConditionalGeneration"
    with torch.device("meta"):
        model = getattr(T, cls)(cfg)
    raw = {**cfg.to_dict(), "architectures": [cls]}
    spec = spec_for(raw)
    c = TextConfig.from_hf(raw)
    real = {n: tuple(t.shape) for n, t in model.state_dict().items() if not spec.skip(n, c)}
    assert dict(spec.hf_tensors(c)) == real
    assert spec.recurrent_layers(c) == TYPES.count("linear_attention")
    assert spec.recurrent_state(c) == ((KERNEL - 1) * CONV_DIM, LIN_DIM * V_HEADS * LIN_DIM)


def test_qwen35_layer_pattern_from_the_interval() -> None:
    """A config without layer_types: transformers' rule (every full_attention_interval-th layer full)."""
    raw = {**qwen35_config().to_dict(), "architectures": ["Qwen3_5ForCausalLM"], "num_hidden_layers": 8,
           "full_attention_interval": 4}
    del raw["layer_types"]
    types = qwen35.layer_types(TextConfig.from_hf(raw))
    assert types == ["linear_attention"] * 3 + ["full_attention"] + ["linear_attention"] * 3 + ["full_attention"]
    assert qwen35.full_attention_interval(types) == 4
    assert qwen35.full_attention_interval(["full_attention", "linear_attention", "linear_attention"]) is None


@pytest.mark.parametrize(("change", "match"), [
    ({"linear_value_head_dim": 64}, "linear_value_head_dim"),
    ({"layer_types": ["linear_attention", "full_attention", "mamba", "full_attention"]}, "layer_types"),
    ({"attention_bias": True}, "attention_bias"),
])
def test_qwen35_configs_llama_cpp_cannot_run_are_refused(qwen35_model: Path, tmp_path: Path, change: dict[str, Any],
                                                         match: str) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(qwen35_model, bad)
    cfg = {**json.loads((bad / "config.json").read_text()), **change}
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(InputError, match=match):
        convert_gguf(bad, tmp_path / "out", "f16", verify_artifacts=False)
    assert not list((tmp_path / "out").glob("*.gguf"))


@pytest.mark.parametrize("cls", ["Qwen3_5MoeForCausalLM", "Qwen3_5MoeForConditionalGeneration"])
def test_qwen35_moe_is_refused_in_one_line(cls: str) -> None:
    with pytest.raises(UnsupportedArchitectureError, match="MoE variant") as e:
        spec_for({"architectures": [cls], "model_type": "qwen3_5_moe"})
    assert "\n" not in e.value.one_line()


@pytest.mark.parametrize("fmt", ["onnx"])  # GPTQ runs it: tests/test_gptq_hybrid.py
def test_qwen35_other_formats_say_what_is_missing(fmt: str) -> None:
    raw = {**qwen35_config().to_dict(), "architectures": ["Qwen3_5ForCausalLM"]}
    with pytest.raises(UnsupportedArchitectureError, match=f"qwen35 cannot be converted to {fmt}: .*builder"):
        spec_for(raw, fmt)


QWEN35_CONFIGS = {"qwen35": qwen35_config, "qwen35-vl": qwen35_vl_config}  # read by tests/conftest.py's _config
