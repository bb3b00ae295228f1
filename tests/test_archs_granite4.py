"""Granite 4 (issue 17): Mamba-2 layers mixed with attention layers (``GraniteMoeHybridForCausalLM``).

A tiny random dense Granite 4 built from its transformers config (hidden 256, shared MLP 768,
vocab 1024: multiples of 256 that differ; the experts' ``intermediate_size`` 512 left unused as
in granite-4.0-h-micro, so a converter writing it as the feed-forward width shows; Mamba-2 with
8 heads of 64 and a 32-wide state; four layers alternating Mamba and attention; Granite's four
multipliers away from 1), converted to GGUF f16 and q4_k_m and checked for token and logit
parity against transformers; the metadata llama.cpp reads the layer pattern and the mixer from;
the profiler's tensor list against the file's; and a conversion whose A has its sign flipped
(``ssm_a = +exp(A_log)``, its inverse in the verifier's mapping back), which only the runtime's
logits can tell and the check must refuse.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _family import (
    assert_moe_parity,
    kv_caches,
    llama_allocations,
    position_errors,
    recurrent_state,
    save_with_tokenizer,
    shared_inputs,
    verified_by_quant,
)
from conftest import HEADS, HIDDEN, INIT_STD, KV_HEADS, VOCAB

from edgekit.converters.gguf.archs import TextConfig, granitehybrid, spec_for
from edgekit.converters.gguf.convert import convert_gguf
from edgekit.converters.gguf.inspect import read_gguf
from edgekit.converters.quality import EvalSettings, QualitySettings
from edgekit.errors import InputError, VerificationError

TYPES = ["mamba", "attention", "mamba", "attention"]
SHARED_FF, EXPERT_FF = 768, 512  # the dense FFN's width; the experts' (unused without experts)
M_HEADS, M_HEAD_DIM, D_STATE, D_CONV = 8, 64, 32, 4
D_INNER = 2 * HIDDEN  # mamba_expand 2
CONV_DIM = D_INNER + 2 * D_STATE  # x, B, C (one group)
MULTIPLIERS = {"embedding_multiplier": 2.0, "residual_multiplier": 0.5, "attention_multiplier": 0.0625,
               "logits_scaling": 4.0}
FAST = QualitySettings(EvalSettings(tokens=512))  # quality is not what these tests check
NAME = "tiny"


def granite4_config(experts: int = 0, types: list[str] | None = None, rope: bool = False) -> Any:
    import transformers as T

    types = types or TYPES
    return T.GraniteMoeHybridConfig(
        hidden_size=HIDDEN, intermediate_size=EXPERT_FF, shared_intermediate_size=SHARED_FF,
        num_hidden_layers=len(types), num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, vocab_size=VOCAB,
        max_position_embeddings=1024, initializer_range=INIT_STD, bos_token_id=None, eos_token_id=None,
        pad_token_id=None, tie_word_embeddings=True, num_local_experts=experts, num_experts_per_tok=2,
        layer_types=types,
        mamba_n_heads=M_HEADS, mamba_d_head=M_HEAD_DIM, mamba_n_groups=1, mamba_d_state=D_STATE,
        mamba_d_conv=D_CONV, mamba_expand=2, mamba_chunk_size=64, position_embedding_type="rope" if rope else None,
        **MULTIPLIERS)


def build_granite4(tokenizer_dir: Path, out: Path, seed: int = 0, **config: Any) -> Path:
    import torch
    import transformers as T

    torch.manual_seed(seed)
    model = T.GraniteMoeHybridForCausalLM(granite4_config(**config)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):  # norms start at exactly 1: perturb them so a lost one shows
                p.add_(torch.randn_like(p) * 0.1)
            elif name.endswith("A_log"):  # log(1..H) at init: spread so each head decays at its own rate
                p.copy_(torch.randn_like(p) * 0.5 - 1.0)
            elif name.endswith(("mamba.D", "dt_bias")):
                p.add_(torch.randn_like(p) * 0.3)
            elif name.endswith("conv1d.weight"):  # kernels large enough that their layout decides the logits
                p.normal_(0, 0.3)
    return save_with_tokenizer(model, tokenizer_dir, out)


@pytest.fixture(scope="module")
def granite4_model(tmp_path_factory: pytest.TempPathFactory, bpe_tok: Path) -> Path:
    return build_granite4(bpe_tok, tmp_path_factory.mktemp("granite4"))


@pytest.fixture(scope="module")
def granite4_inputs(granite4_model: Path) -> Any:
    return shared_inputs(granite4_model, FAST)


def test_granite4_gguf_matches_transformers(granite4_model: Path, granite4_inputs: Any, tmp_path: Path) -> None:
    res = convert_gguf(granite4_model, tmp_path, "f16,q4_k_m", name=NAME, prepared=granite4_inputs, quality=FAST)
    # as test_archs' f16 parity: f16 activation rounding alone gives rel. error ~1e-3 and KL ~1e-6;
    # the sign-flipped A below gives O(1)
    by_quant = verified_by_quant(res)

    for art, _ in by_quant.values():
        summary = read_gguf(tmp_path / art.file)
        meta = summary.metadata
        assert summary.architecture == "granitehybrid"
        # the layer pattern: llama.cpp runs a layer as Mamba-2 where head_count_kv is 0
        assert list(meta["granitehybrid.attention.head_count_kv"]) == [KV_HEADS if t == "attention" else 0
                                                                       for t in TYPES]
        assert meta["granitehybrid.feed_forward_length"] == SHARED_FF
        assert (meta["granitehybrid.ssm.conv_kernel"], meta["granitehybrid.ssm.state_size"],
                meta["granitehybrid.ssm.group_count"], meta["granitehybrid.ssm.inner_size"],
                meta["granitehybrid.ssm.time_step_rank"]) == (D_CONV, D_STATE, 1, D_INNER, M_HEADS)
        assert meta["granitehybrid.rope.scaling.finetuned"] is False  # no RoPE (position_embedding_type unset)
        for key, field in (("embedding_scale", "embedding_multiplier"), ("residual_scale", "residual_multiplier"),
                           ("attention.scale", "attention_multiplier"), ("logit_scale", "logits_scaling")):
            assert meta[f"granitehybrid.{key}"] == pytest.approx(MULTIPLIERS[field])
        tensors = {t.name: t for t in summary.tensors}
        for i, kind in enumerate(TYPES):
            conv = tensors.get(f"blk.{i}.ssm_conv1d.weight")
            assert list(tensors[f"blk.{i}.ffn_gate.weight"].shape) == [HIDDEN, SHARED_FF]
            assert list(tensors[f"blk.{i}.ffn_up.weight"].shape) == [HIDDEN, SHARED_FF]
            if kind == "mamba":
                assert conv is not None and list(conv.shape) == [D_CONV, CONV_DIM] and conv.type == "F32"
                for name, shape in (("ssm_a", [1, M_HEADS]), ("ssm_d", [1, M_HEADS]),
                                    ("ssm_norm.weight", [D_INNER, 1]), ("ssm_conv1d.bias", [CONV_DIM])):
                    t = tensors[f"blk.{i}.{name}"]
                    # llama.cpp's quantizer writes ggml_n_dims' dimensions: trailing 1s dropped
                    assert (_trim(list(t.shape)), t.type) == (_trim(shape), "F32"), name
                assert f"blk.{i}.attn_q.weight" not in tensors
            else:
                assert conv is None and f"blk.{i}.attn_q.weight" in tensors


def _trim(shape: list[int]) -> list[int]:
    while len(shape) > 1 and shape[-1] == 1:
        shape = shape[:-1]
    return shape


@pytest.fixture(scope="module")
def granite4_f16(granite4_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An unverified f16 conversion, for the checks of the file itself."""
    out = tmp_path_factory.mktemp("granite4-f16")
    res = convert_gguf(granite4_model, out, "f16", name=NAME, verify_artifacts=False)
    return out / res.artifacts[0].file


def test_granite4_profiler_shapes_are_the_converted_file(granite4_model: Path, granite4_f16: Path) -> None:
    """The profiler's tensor list (derived from the spec, composites included) is the file's."""
    from edgekit.profiles.shapes import model_shapes

    predicted = {t.name: t.ne for t in model_shapes(json.loads((granite4_model / "config.json").read_text())).tensors}
    assert predicted == {t.name: tuple(t.shape) for t in read_gguf(granite4_f16).tensors}


def test_granite4_a_is_minus_exp_a_log(granite4_model: Path, granite4_f16: Path) -> None:
    """The file's A is -exp(A_log) of the checkpoint, head by head (llama.cpp reads A itself)."""
    import mmap

    from safetensors.numpy import load_file

    from edgekit.converters.gguf.dequant import dequantize_rows

    path = granite4_f16
    tensors = {t.name: t for t in read_gguf(path).tensors}
    source = load_file(str(granite4_model / "model.safetensors"))
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        a = dequantize_rows(buf, tensors["blk.0.ssm_a"], 0, M_HEADS).reshape(-1)
    want = -np.exp(source["model.layers.0.mamba.A_log"].astype(np.float32))
    np.testing.assert_allclose(a, want, rtol=1e-6)


class _PositiveA(granitehybrid.GraniteHybridSpec):
    """A written as +exp(A_log) (a converter that forgot the minus): every Mamba state grows instead
    of decaying. ``untransform`` undoes it, so the verifier's weights are the source's and only the
    runtime's logits can tell."""

    def transform(self, hf_name: str, data: np.ndarray, c: TextConfig) -> np.ndarray:
        if hf_name.endswith(".mamba.A_log"):
            return np.exp(data.astype(np.float32))
        return super().transform(hf_name, data, c)

    def untransform(self, hf_name: str, data: np.ndarray, c: TextConfig) -> np.ndarray:
        if hf_name.endswith(".mamba.A_log"):
            return np.log(data.astype(np.float32))
        return super().untransform(hf_name, data, c)


def test_granite4_sign_flipped_a_is_caught(granite4_model: Path, granite4_inputs: Any, tmp_path: Path) -> None:
    spec = granitehybrid.SPEC
    broken = _PositiveA(**{f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)})
    with pytest.raises(VerificationError, match=r"logits: "):
        convert_gguf(granite4_model, tmp_path, "f16", name=NAME, spec=broken, prepared=granite4_inputs, quality=FAST)
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".edgekit-tmp*"))


def test_granite4_layout_is_transformers_layout() -> None:
    """The profiler's tensor list comes from the spec's layout: exactly transformers' own tensors."""
    import torch
    import transformers as T

    cfg = granite4_config()
    with torch.device("meta"):
        model = T.GraniteMoeHybridForCausalLM(cfg)
    raw = {**cfg.to_dict(), "architectures": ["GraniteMoeHybridForCausalLM"]}
    spec = spec_for(raw)
    c = TextConfig.from_hf(raw)
    real = {n: tuple(t.shape) for n, t in model.state_dict().items() if not spec.skip(n, c)}
    assert dict(spec.hf_tensors(c)) == real
    assert spec.recurrent_layers(c) == TYPES.count("mamba")
    # llama.cpp's n_embd_r (conv window of x, B, C) and n_embd_s (the SSM state) per Mamba layer
    assert spec.recurrent_state(c) == ((D_CONV - 1) * CONV_DIM, D_STATE * D_INNER)


def test_granite4_hub_layer_type_names_are_read() -> None:
    """Hub configs say mamba/attention (``layers_block_type`` in older ones), transformers 5 re-saves
    linear_attention/full_attention: the same pattern either way."""
    base = {**granite4_config().to_dict(), "architectures": ["GraniteMoeHybridForCausalLM"]}
    saved = granitehybrid.layer_types(TextConfig.from_hf(base))
    hub = {**base, "layer_types": None, "layers_block_type": TYPES}
    assert saved == granitehybrid.layer_types(TextConfig.from_hf(hub)) == TYPES


@pytest.mark.parametrize(("change", "match"), [
    ({"layer_types": None}, "layer_types"),
    ({"layer_types": ["mamba", "attention", "conv", "attention"]}, "layer_types"),
    ({"layer_types": ["attention"] * 4, "num_local_experts": 4}, "experts and no Mamba layers"),
    ({"mamba_proj_bias": True}, "mamba_proj_bias"),
    ({"mamba_n_groups": 2}, "mamba_n_groups"),
    ({"time_step_limit": [0.0, 0.1]}, "time_step_limit"),
    ({"num_local_experts": 4, "num_experts_per_tok": 6}, "num_experts_per_tok"),
    ({"logits_scaling": None}, "logits_scaling"),
])
def test_granite4_configs_llama_cpp_cannot_run_are_refused(granite4_model: Path, tmp_path: Path,
                                                           change: dict[str, Any], match: str) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(granite4_model, bad)
    cfg = {k: v for k, v in {**json.loads((bad / "config.json").read_text()), **change}.items() if v is not None}
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(InputError, match=match):
        convert_gguf(bad, tmp_path / "out", "f16", verify_artifacts=False)
    assert not list((tmp_path / "out").glob("*.gguf"))


# -- the mixture-of-experts variant (granite-4.0-h-tiny/small): experts beside the shared MLP --------

EXPERTS = 4


@pytest.fixture(scope="module")
def granite4_moe_model(tmp_path_factory: pytest.TempPathFactory, bpe_tok: Path) -> Path:
    return build_granite4(bpe_tok, tmp_path_factory.mktemp("granite4-moe"), experts=EXPERTS)


def test_granite4_moe_gguf_matches_transformers(granite4_moe_model: Path, tmp_path: Path) -> None:
    """Experts [E, 2*ff, h] split into ffn_gate_exps/ffn_up_exps, the shared MLP as the shared expert."""
    # f16 only: the quantized path of 3-D expert stacks is the MoE families' (tests/test_archs_moe.py)
    res = convert_gguf(granite4_moe_model, tmp_path, "f16", name=NAME, quality=FAST)
    (art,), (rep,) = res.artifacts, res.reports
    assert rep.passed, rep.failures
    assert rep.token_mismatches == []
    # routed experts: parity per position (an aggregate is not CPU-independent, see assert_moe_parity)
    assert_moe_parity(position_errors(granite4_moe_model, tmp_path / art.file))

    summary = read_gguf(tmp_path / art.file)
    meta = summary.metadata
    assert (meta["granitehybrid.expert_count"], meta["granitehybrid.expert_used_count"],
            meta["granitehybrid.feed_forward_length"],
            meta["granitehybrid.expert_shared_feed_forward_length"]) == (EXPERTS, 2, EXPERT_FF, SHARED_FF)
    tensors = {t.name: t for t in summary.tensors}
    for i in range(len(TYPES)):
        for name, shape in (("ffn_gate_exps", [HIDDEN, EXPERT_FF, EXPERTS]), ("ffn_up_exps", [HIDDEN, EXPERT_FF, EXPERTS]),
                            ("ffn_down_exps", [EXPERT_FF, HIDDEN, EXPERTS]), ("ffn_gate_shexp", [HIDDEN, SHARED_FF]),
                            ("ffn_up_shexp", [HIDDEN, SHARED_FF]), ("ffn_down_shexp", [SHARED_FF, HIDDEN])):
            assert list(tensors[f"blk.{i}.{name}.weight"].shape) == shape, name
        assert tensors[f"blk.{i}.ffn_gate_inp.weight"].type == "F32"  # the router, as llama.cpp's converter keeps it
        assert f"blk.{i}.ffn_gate.weight" not in tensors

    from edgekit.profiles.shapes import model_shapes

    config = json.loads((granite4_moe_model / "config.json").read_text())
    assert {t.name: t.ne for t in model_shapes(config).tensors} == {t.name: tuple(t.shape) for t in summary.tensors}


def test_granite4_moe_layout_is_transformers_layout() -> None:
    import torch
    import transformers as T

    cfg = granite4_config(EXPERTS)
    with torch.device("meta"):
        model = T.GraniteMoeHybridForCausalLM(cfg)
    raw = {**cfg.to_dict(), "architectures": ["GraniteMoeHybridForCausalLM"]}
    spec = spec_for(raw)
    c = TextConfig.from_hf(raw)
    real = {n: tuple(t.shape) for n, t in model.state_dict().items() if not spec.skip(n, c)}
    assert dict(spec.hf_tensors(c)) == real
    layout = spec.experts(c)
    assert layout is not None and (layout.n_experts, layout.n_active, layout.expert_ff, layout.shared_ff) == \
        (EXPERTS, 2, EXPERT_FF, SHARED_FF)


def test_granite4_memory_matches_llama_cpp(granite4_model: Path, granite4_f16: Path,
                                           caplog: pytest.LogCaptureFixture) -> None:
    """llama.cpp's own account of what it allocated (``llama_kv_cache: size = ...`` and
    ``llama_memory_recurrent: ... R (f32): X MiB, S (f32): Y MiB``, 2 decimals) against the
    profiler's: KV for the attention layers only, the Mamba conv window and SSM state per sequence
    for the others (32 sequences: 0.42 MiB of conv window, 4 MiB of SSM state, so a conv window
    of d_conv instead of d_conv - 1 or a state without its d_state factor shows)."""

    from edgekit.profiles import shapes

    s = shapes.model_shapes(json.loads((granite4_model / "config.json").read_text()))
    assert (s.attention_layers, s.recurrent_layers) == (TYPES.count("attention"), TYPES.count("mamba"))
    n_seq, n_ctx = 32, 4096
    # one KV stream of n_ctx cells for all sequences
    text = llama_allocations(granite4_f16, caplog, n_ctx=n_ctx, n_seq_max=n_seq, kv_unified=True)
    (kv,), (r_mib, s_mib) = kv_caches(text), recurrent_state(text)
    assert kv[2] == s.attention_layers and kv[1] == n_ctx
    assert abs(shapes.kv_cache_bytes(s, n_ctx) / 2**20 - kv[0]) <= 0.005
    conv, ssm = (x * s.recurrent_layers * 4 * n_seq / 2**20 for x in ((D_CONV - 1) * CONV_DIM, D_STATE * D_INNER))
    assert abs(conv - r_mib) <= 0.005 and abs(ssm - s_mib) <= 0.005
    assert abs(shapes.recurrent_state_bytes(s, n_seq) / 2**20 - r_mib - s_mib) <= 0.01


def test_all_attention_granite4_is_llama_cpp_granite(bpe_tok: Path, tmp_path: Path) -> None:
    """granite-4.0-micro / -1b / -350m: the same class, every layer attention, RoPE on. llama.cpp runs
    them as its plain ``granite`` (its converter switches the architecture the same way)."""
    model = build_granite4(bpe_tok, tmp_path / "src", types=["attention", "attention"], rope=True)
    res = convert_gguf(model, tmp_path / "out", "f16", name=NAME, quality=FAST)
    (art,), (rep,) = res.artifacts, res.reports
    assert rep.passed, rep.failures
    # dense: f16 rounding alone, bounded on every x86 CPU (see tests/_family.py::verified_by_quant)
    assert rep.metrics is not None and rep.metrics.rel_err < 0.05 and rep.metrics.mean_kl < 1e-3
    summary = read_gguf(tmp_path / "out" / art.file)
    meta = summary.metadata
    assert summary.architecture == "granite"
    assert meta["granite.rope.scaling.finetuned"] is True  # llama.cpp's RoPE switch for Granite: on
    assert meta["granite.attention.head_count_kv"] == KV_HEADS and meta["granite.feed_forward_length"] == SHARED_FF
    assert not [k for k in meta if ".ssm." in k]
    from edgekit.profiles.shapes import model_shapes

    shapes = model_shapes(json.loads((model / "config.json").read_text()))
    assert {t.name: t.ne for t in shapes.tensors} == {t.name: tuple(t.shape) for t in summary.tensors}
    assert shapes.recurrent_layers == 0
