"""The hybrid families (issue 17): layers that are not attention.

LFM2: a tiny random ``Lfm2ForCausalLM`` built from its transformers config (hidden 256, MLP
768 derived by LFM2's own 2/3 rule from intermediate_size 1152, vocab 1024: multiples of 256
that differ; four layers alternating short convolution and attention), converted to GGUF f16
and q4_k_m and checked for token and logit parity against transformers; the metadata llama.cpp
reads the layer pattern from; and a conversion whose convolution kernels are written transposed
(shape kept, as a converter that forgot to squeeze-and-transpose would), which the check must
refuse.
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
from conftest import HEADS, HIDDEN, INIT_STD, KV_HEADS, VOCAB

from edgekit.converters.gguf.archs import TextConfig, lfm2, spec_for
from edgekit.converters.gguf.convert import convert_gguf
from edgekit.converters.gguf.inspect import read_gguf
from edgekit.converters.quality import EvalSettings, QualitySettings
from edgekit.errors import InputError, VerificationError

LFM2_TYPES = ["conv", "full_attention", "conv", "full_attention"]
LFM2_FF = 768  # int(2 * 1152 / 3) rounded up to block_multiple_of 256
L_CACHE = 3
FAST = QualitySettings(EvalSettings(tokens=512))  # quality is not what these tests check
NAME = "tiny"


def lfm2_config() -> Any:
    import transformers as T

    return T.Lfm2Config(hidden_size=HIDDEN, intermediate_size=1152, num_hidden_layers=len(LFM2_TYPES),
                        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, vocab_size=VOCAB,
                        max_position_embeddings=1024, initializer_range=INIT_STD, bos_token_id=None,
                        eos_token_id=None, pad_token_id=None, conv_L_cache=L_CACHE, layer_types=LFM2_TYPES)


def build_lfm2(tokenizer_dir: Path, out: Path, seed: int = 0) -> Path:
    import torch
    import transformers as T

    torch.manual_seed(seed)
    model = T.Lfm2ForCausalLM(lfm2_config()).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):  # norms start at exactly 1: perturb them so a lost one shows
                p.add_(torch.randn_like(p) * 0.1)
            elif name.endswith("conv.conv.weight"):  # kernels large enough that their layout decides the logits
                p.normal_(0, 0.5)
    return save_with_tokenizer(model, tokenizer_dir, out)


@pytest.fixture(scope="module")
def lfm2_model(tmp_path_factory: pytest.TempPathFactory, bpe_tok: Path) -> Path:
    return build_lfm2(bpe_tok, tmp_path_factory.mktemp("lfm2"))


@pytest.fixture(scope="module")
def lfm2_inputs(lfm2_model: Path) -> Any:
    return shared_inputs(lfm2_model, FAST)


def test_lfm2_gguf_matches_transformers(lfm2_model: Path, lfm2_inputs: Any, tmp_path: Path) -> None:
    res = convert_gguf(lfm2_model, tmp_path, "f16,q4_k_m", name=NAME, prepared=lfm2_inputs, quality=FAST)
    # as test_archs' f16 parity: f16 activation rounding alone (the same on every x86 CPU) gives
    # rel. error ~1e-3 and KL ~1e-6 (measured 0.0013, 5.3e-7); the transposed kernel gives 1.41 and 0.64
    by_quant = verified_by_quant(res)

    for art, _ in by_quant.values():
        summary = read_gguf(tmp_path / art.file)
        meta = summary.metadata
        assert summary.architecture == "lfm2"
        # the layer pattern: llama.cpp runs a layer as a short convolution where head_count_kv is 0
        assert list(meta["lfm2.attention.head_count_kv"]) == [KV_HEADS if t == "full_attention" else 0
                                                              for t in LFM2_TYPES]
        assert meta["lfm2.shortconv.l_cache"] == L_CACHE
        assert meta["lfm2.feed_forward_length"] == LFM2_FF
        tensors = {t.name: t for t in summary.tensors}
        for i, kind in enumerate(LFM2_TYPES):
            conv = tensors.get(f"blk.{i}.shortconv.conv.weight")
            if kind == "conv":
                assert conv is not None and list(conv.shape) == [L_CACHE, HIDDEN] and conv.type == "F32"
                assert f"blk.{i}.attn_q.weight" not in tensors
            else:
                assert conv is None and f"blk.{i}.attn_q_norm.weight" in tensors
        assert "token_embd_norm.weight" in tensors  # LFM2's final norm, by llama.cpp's name

    # the profiler's tensor list (derived from the spec) is the converted file's
    from edgekit.profiles.shapes import model_shapes

    f16_file = read_gguf(tmp_path / by_quant["f16"][0].file)
    predicted = {t.name: t.ne for t in model_shapes(json.loads((lfm2_model / "config.json").read_text())).tensors}
    assert predicted == {t.name: tuple(t.shape) for t in f16_file.tensors}


class _TransposedKernel(lfm2.Lfm2Spec):
    """Each [hidden, L] kernel's bytes written as its [L, hidden] transpose, the shape kept: llama.cpp
    loads it and convolves with the wrong taps. ``untransform`` undoes it, so the verifier's weights
    are the source's and only the runtime's logits can tell."""

    def transforms(self, hf_name: str, c: TextConfig) -> bool:
        return hf_name.endswith(".conv.conv.weight")

    def transform(self, hf_name: str, data: np.ndarray, c: TextConfig) -> np.ndarray:
        if not self.transforms(hf_name, c):
            return data
        return np.ascontiguousarray(data.reshape(data.shape[0], -1).T).reshape(data.shape)

    def untransform(self, hf_name: str, data: np.ndarray, c: TextConfig) -> np.ndarray:
        if not self.transforms(hf_name, c):
            return data
        return np.ascontiguousarray(data.reshape(-1, data.shape[0]).T).reshape(data.shape)

    def untransform_rowwise(self, hf_name: str) -> bool:
        return not hf_name.endswith(".conv.conv.weight")


def test_lfm2_transposed_conv_kernel_is_caught(lfm2_model: Path, lfm2_inputs: Any, tmp_path: Path) -> None:
    broken = _TransposedKernel(**{f.name: getattr(lfm2.SPEC, f.name) for f in dataclasses.fields(lfm2.SPEC)})
    with pytest.raises(VerificationError, match=r"logits: "):
        convert_gguf(lfm2_model, tmp_path, "f16", name=NAME, spec=broken, prepared=lfm2_inputs, quality=FAST)
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".edgekit-tmp*"))


def test_lfm2_layout_is_transformers_layout() -> None:
    """The profiler's tensor list comes from the spec's layout: exactly transformers' own tensors."""
    import torch
    import transformers as T

    cfg = lfm2_config()
    with torch.device("meta"):
        model = T.Lfm2ForCausalLM(cfg)
    raw = {**cfg.to_dict(), "architectures": ["Lfm2ForCausalLM"]}
    spec = spec_for(raw)
    c = TextConfig.from_hf(raw)
    real = {n: tuple(t.shape) for n, t in model.state_dict().items() if not spec.skip(n, c)}
    assert dict(spec.hf_tensors(c)) == real
    assert spec.recurrent_layers(c) == LFM2_TYPES.count("conv")  # type: ignore[attr-defined]


@pytest.mark.parametrize(("change", "match"), [
    ({"conv_bias": True}, "conv_bias"),
    ({"layer_types": None, "full_attn_idxs": None}, "layer_types"),
    ({"layer_types": ["conv", "full_attention", "mamba", "conv"]}, "layer_types"),
])
def test_lfm2_configs_llama_cpp_cannot_run_are_refused(lfm2_model: Path, tmp_path: Path, change: dict[str, Any],
                                                       match: str) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(lfm2_model, bad)
    cfg = {**json.loads((bad / "config.json").read_text()), **change}
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(InputError, match=match):
        convert_gguf(bad, tmp_path / "out", "f16", verify_artifacts=False)
    assert not list((tmp_path / "out").glob("*.gguf"))


HYBRID_CONFIGS = {"lfm2": lfm2_config}  # read by tests/test_archs.py's spec-layout test


# -- LFM2 through ONNX Runtime GenAI's builder ------------------------------------------------
# The builder writes LFM2's conv states as per-layer graph inputs/outputs (past.N.conv,
# [batch, hidden, L-1]) on the conv layers only, and KV caches on the attention layers only,
# with the decoder's layer_types in genai_config.json: the runtime feeds the states by it.


@pytest.fixture(scope="module")
def lfm2_onnx(lfm2_model: Path, lfm2_inputs: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    from edgekit.converters.onnx.convert import convert_onnx

    out = tmp_path_factory.mktemp("lfm2-onnx")
    return out, convert_onnx(lfm2_model, out, "fp32,int4", name=NAME, prepared=lfm2_inputs, quality=FAST)


def test_lfm2_onnx_matches_transformers(lfm2_model: Path, lfm2_onnx: tuple[Path, Any]) -> None:
    out, res = lfm2_onnx
    by_quant = {a.quant: (a, rep) for a, rep in zip(res.artifacts, res.reports, strict=True)}
    assert set(by_quant) == {"fp32", "int4"}
    for quant, (_, rep) in by_quant.items():
        assert rep.passed, (quant, rep.failures)
        assert rep.token_mismatches == []
    fp32 = by_quant["fp32"][1].metrics
    # fp32 graph vs fp32 PyTorch: only the order of float32 sums differs (measured KL 1.3e-12)
    assert fp32 is not None and fp32.mean_kl < 1e-6
    decoder = json.loads((out / by_quant["fp32"][0].file / "genai_config.json").read_text())["model"]["decoder"]
    assert decoder["layer_types"] == LFM2_TYPES
    assert decoder["conv_cache_size"] == L_CACHE - 1
    assert decoder["inputs"]["past_conv_names"] == "past.%d.conv"

    from edgekit.runtimes.onnx import OnnxSession
    from edgekit.runtimes.onnx_proto import graph_io

    graph_in, _ = graph_io(out / by_quant["fp32"][0].file / "model.onnx")
    for i, kind in enumerate(LFM2_TYPES):  # each layer's own state, no other
        assert (f"past.{i}.conv" in graph_in) == (kind == "conv")
        assert (f"past_key_values.{i}.key" in graph_in) == (kind == "full_attention")
    with OnnxSession(out / by_quant["int4"][0].file, n_ctx=0, device="cpu") as s:  # the runtime API runs it
        ids = s.tokenize("The quick brown fox")
        assert s.logits(ids).shape == (len(ids), VOCAB)


def test_lfm2_onnx_reversed_conv_kernel_is_caught(lfm2_model: Path, lfm2_onnx: tuple[Path, Any], tmp_path: Path) -> None:
    """The conv kernels' taps reversed in the built model's data (as a builder that flipped the
    causal convolution would): the projections still read back right, the logits do not."""
    import onnx

    from edgekit.converters.onnx.convert import check_onnx

    out, res = lfm2_onnx
    broken = tmp_path / f"{NAME}-onnx-fp32"
    shutil.copytree(out / res.artifacts[0].file, broken)
    graph = onnx.load(str(broken / "model.onnx"), load_external_data=False).graph
    data = broken / "model.onnx.data"
    for init in graph.initializer:
        if init.name.endswith("conv.conv.weight"):
            info = {e.key: e.value for e in init.external_data}
            kernel = np.memmap(data, dtype=np.float32, mode="r+", offset=int(info["offset"]),
                               shape=tuple(init.dims))
            kernel[:] = kernel[..., ::-1].copy()
            kernel.flush()
            del kernel
    with pytest.raises(VerificationError, match=r"logits"):
        check_onnx(lfm2_model, broken, quality=FAST)


def test_lfm2_onnx_layer_pattern_traps(lfm2_model: Path, lfm2_onnx: tuple[Path, Any], tmp_path: Path) -> None:
    from edgekit.converters.onnx.convert import check_onnx
    from edgekit.errors import CorruptFileError

    out, res = lfm2_onnx
    # a genai_config.json whose pattern is not the graph's: the runtime would feed states to the wrong layers
    swapped = tmp_path / "swapped"
    shutil.copytree(out / res.artifacts[0].file, swapped)
    cfg = json.loads((swapped / "genai_config.json").read_text())
    cfg["model"]["decoder"]["layer_types"] = ["full_attention", "conv", "full_attention", "conv"]
    (swapped / "genai_config.json").write_text(json.dumps(cfg))
    with pytest.raises(CorruptFileError, match=r"past_key_names.*past_key_values\.0\.key"):
        check_onnx(lfm2_model, swapped, quality=FAST)
    # a build whose (self-consistent) pattern is not the source's
    other = tmp_path / "other-source"
    shutil.copytree(lfm2_model, other)
    src_cfg = json.loads((other / "config.json").read_text())
    src_cfg["layer_types"] = ["full_attention", "conv", "full_attention", "conv"]
    (other / "config.json").write_text(json.dumps(src_cfg))
    with pytest.raises(VerificationError, match=r"state layers"):
        check_onnx(other, out / res.artifacts[0].file, quality=FAST)


def _state_graph(out: Path, inputs: list[str], decoder: dict[str, Any]) -> Path:
    """A GenAI model directory whose graph has exactly ``inputs`` (each passed through to an output
    named as ONNX Runtime GenAI's builders name the presents), and ``decoder`` as its config."""
    import onnx
    from onnx import TensorProto, helper

    def present(name: str) -> str:
        return name.replace("past_key_values.", "present.").replace("past.", "present.")

    graph = helper.make_graph(
        [helper.make_node("Identity", [n], [present(n)]) for n in inputs], "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in inputs],
        [helper.make_tensor_value_info(present(n), TensorProto.FLOAT, [1]) for n in inputs])
    out.mkdir()
    onnx.save(helper.make_model(graph), str(out / "model.onnx"))
    io = {"past_key_names": "past_key_values.%d.key", "past_value_names": "past_key_values.%d.value",
          "past_conv_names": "past.%d.conv", "past_recurrent_names": "past.%d.recurrent"}
    dec = {"filename": "model.onnx", "num_hidden_layers": 4, "head_size": 64, "hidden_size": 256,
           "num_attention_heads": 4, "num_key_value_heads": 2, "inputs": io,
           "outputs": {k.replace("past_", "present_"): v.replace("past_key_values.", "present.").replace("past.", "present.")
                       for k, v in io.items()}, **decoder}
    (out / "genai_config.json").write_text(json.dumps({"model": {"type": "qwen3_5_text", "vocab_size": 1024,
                                                                 "context_length": 1024, "decoder": dec}}))
    return out


def test_hybrid_state_bindings_without_layer_types(tmp_path: Path) -> None:
    """Qwen3.5's builder writes no layer_types: the graph says which layers carry the gated
    delta-net's conv and recurrent states, and every other layer must have its KV cache."""
    from edgekit.errors import CorruptFileError
    from edgekit.runtimes.onnx_check import _check_bindings

    states = ["past.0.conv", "past.0.recurrent", "past.2.conv", "past.2.recurrent"]
    kv = [f"past_key_values.{i}.{k}" for i in (1, 3) for k in ("key", "value")]
    ok = _state_graph(tmp_path / "ok", ["input_ids", *states, *kv], {})
    _check_bindings(json.loads((ok / "genai_config.json").read_text()), ok / "model.onnx")
    # layer 3 has neither a state nor its key: the runtime would fail mid-generation
    bad = _state_graph(tmp_path / "bad", ["input_ids", *states, *kv[:2], kv[3]], {})
    with pytest.raises(CorruptFileError, match=r"past_key_values\.3\.key"):
        _check_bindings(json.loads((bad / "genai_config.json").read_text()), bad / "model.onnx")
    # with layer_types, the types decide (here they contradict the graph)
    typed = _state_graph(tmp_path / "typed", ["input_ids", *states, *kv],
                         {"layer_types": ["full_attention", "linear_attention", "full_attention", "linear_attention"]})
    with pytest.raises(CorruptFileError, match=r"past\.1\.conv|past_key_values\.0\.key"):
        _check_bindings(json.loads((typed / "genai_config.json").read_text()), typed / "model.onnx")


def test_lfm2_gptq_quantizes_the_projections_and_verifies(lfm2_model: Path, tmp_path: Path) -> None:
    """llmcompressor's sequential pipeline on LFM2: every Linear of the conv and attention layers
    and the feed-forward is quantized, the convolution kernels stay float, and the checkpoint
    computes what its own dequantized weights say."""
    from edgekit.converters.gptq.checkpoint import GPTQCheckpoint
    from edgekit.converters.gptq.convert import convert_gptq

    config = json.loads((lfm2_model / "config.json").read_text())
    spec = spec_for(config, "gptq")
    out = tmp_path / "out"
    convert_gptq(lfm2_model, out, name=NAME, samples=8, seq_len=64, quality=QualitySettings(EvalSettings(tokens=256)))
    entry = next(a for a in json.loads((out / "edgekit.json").read_text())["artifacts"] if a["format"] == "gptq")
    assert entry["verification"]["passed"], entry["verification"]
    ckpt = GPTQCheckpoint(out / entry["file"])
    c = TextConfig.from_hf(config)
    projections = {n.removesuffix(".weight") for n, shape in spec.hf_tensors(c)
                   if ".layers." in n and len(shape) == 2 and not n.endswith("norm.weight")}
    assert set(ckpt.quantized) == projections
    kernels = [n for n, shape in spec.hf_tensors(c) if n.endswith("conv.conv.weight")]
    assert kernels and all(k in ckpt.float_tensors for k in kernels)
