"""Gemma 4's text stack (issue 17): sliding and full layers of different head sizes, proportional
RoPE, shared KV, per-layer embeddings.

A tiny random ``Gemma4ForCausalLM`` built from its transformers config (hidden 256, MLP 768 --
1536 on the KV-sharing layers, double wide -- vocab 1024: multiples of 256 that differ; six
layers, sliding and full alternating; the last two share the KV of earlier layers; full
layers with head 128, one KV head, keys as values; sliding layers with head 64, two KV heads;
per-layer embeddings of 64), converted to GGUF f16 and q4_k_m and checked for token and logit
parity against transformers; the metadata llama.cpp reads the pattern and the per-type sizes
from; the profiler's tensor list; the language model of a ``Gemma4ForConditionalGeneration`` (vision
tower left out); and a conversion whose per-layer embedding table is packed in
the wrong order (with the matching inverse, so the weights read back as the source's), which only
the runtime's logits can tell and the check must refuse.
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

from edgekit.converters.gguf.archs import TextConfig, gemma4, spec_for
from edgekit.converters.gguf.convert import convert_gguf
from edgekit.converters.gguf.inspect import read_gguf
from edgekit.converters.quality import EvalSettings, QualitySettings
from edgekit.errors import InputError, VerificationError

TYPES = ["sliding_attention", "full_attention"] * 3
SHARED = 2  # the last two layers reuse layer 2's (sliding) and layer 3's (full) KV, as llama.cpp assumes
HEADS, KV_HEADS, HEAD_DIM, FULL_KV_HEADS, FULL_HEAD_DIM, PLE = 4, 2, 64, 1, 128, 64
WINDOW = 128  # shorter than the probes: the window matters
FAST = QualitySettings(EvalSettings(tokens=512))  # quality is not what these tests check
NAME = "tiny"


def gemma4_config() -> Any:
    import transformers as T

    return T.Gemma4TextConfig(
        hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_hidden_layers=len(TYPES), num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS, head_dim=HEAD_DIM, global_head_dim=FULL_HEAD_DIM,
        num_global_key_value_heads=FULL_KV_HEADS, attention_k_eq_v=True, vocab_size=VOCAB,
        vocab_size_per_layer_input=VOCAB, hidden_size_per_layer_input=PLE, num_kv_shared_layers=SHARED,
        use_double_wide_mlp=True, max_position_embeddings=1024, sliding_window=WINDOW, layer_types=TYPES,
        final_logit_softcapping=30.0, initializer_range=INIT_STD, bos_token_id=None, eos_token_id=None,
        pad_token_id=None, tie_word_embeddings=True)


def gemma4_vl_config() -> Any:
    import transformers as T

    # a vision tower of another depth than the decoder (the reference finds the decoder's layer list by
    # length); the multimodal forward reads the pad token's embedding, so there is one
    return T.Gemma4Config(text_config={**gemma4_config().to_dict(), "pad_token_id": 0}, audio_config=None,
                          vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                             num_attention_heads=2, num_key_value_heads=2, head_dim=32))


def build_gemma4(tokenizer_dir: Path, out: Path, seed: int = 0, cls: str = "Gemma4ForCausalLM") -> Path:
    import torch
    import transformers as T

    torch.manual_seed(seed)
    model = getattr(T, cls)(gemma4_config() if cls == "Gemma4ForCausalLM" else gemma4_vl_config()).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):  # norms start at exactly 1: perturb them so a lost one shows
                p.add_(torch.randn_like(p) * 0.1)
            if name.endswith(("q_norm.weight", "k_norm.weight")):
                # Gemma 4 does not scale q.k (scaling = 1): unit-RMS q and k over 128 dims give logits of
                # std ~11, attention close to an argmax that f16 rounding flips; trained models learn
                # small q/k norms, the random one gets them here (logits of std ~1)
                p.mul_(0.3)
        for name, b in model.named_buffers():
            if name.endswith("layer_scalar"):  # a checkpoint's own scale, not the constructed 1
                b.copy_(torch.empty_like(b).uniform_(0.5, 1.5))
    return save_with_tokenizer(model, tokenizer_dir, out)


@pytest.fixture(scope="module")
def gemma4_model(tmp_path_factory: pytest.TempPathFactory, bpe_tok: Path) -> Path:
    return build_gemma4(bpe_tok, tmp_path_factory.mktemp("gemma4"))


@pytest.fixture(scope="module")
def gemma4_inputs(gemma4_model: Path) -> Any:
    return shared_inputs(gemma4_model, FAST)


def test_gemma4_gguf_matches_transformers(gemma4_model: Path, gemma4_inputs: Any, tmp_path: Path) -> None:
    res = convert_gguf(gemma4_model, tmp_path, "f16,q4_k_m", name=NAME, prepared=gemma4_inputs, quality=FAST)
    # f16 activation rounding alone (the same on every x86 CPU) gives rel. error ~1e-3 and KL ~1e-6
    # (measured 0.0012, 4.3e-7; q4_k_m against its own weights 0.037)
    by_quant = verified_by_quant(res)

    for art, _ in by_quant.values():
        summary = read_gguf(tmp_path / art.file)
        meta = summary.metadata
        assert summary.architecture == "gemma4"
        assert list(meta["gemma4.attention.sliding_window_pattern"]) == [t == "sliding_attention" for t in TYPES]
        assert meta["gemma4.attention.sliding_window"] == WINDOW
        assert list(meta["gemma4.attention.head_count_kv"]) == [KV_HEADS if t == "sliding_attention" else FULL_KV_HEADS
                                                                for t in TYPES]
        assert (meta["gemma4.attention.key_length"], meta["gemma4.attention.key_length_swa"]) == (FULL_HEAD_DIM, HEAD_DIM)
        assert (meta["gemma4.rope.dimension_count"], meta["gemma4.rope.dimension_count_swa"]) == (FULL_HEAD_DIM, HEAD_DIM)
        assert meta["gemma4.attention.shared_kv_layers"] == SHARED
        assert meta["gemma4.embedding_length_per_layer_input"] == PLE
        assert list(meta["gemma4.feed_forward_length"]) == [INTERMEDIATE] * 4 + [2 * INTERMEDIATE] * 2
        assert meta["gemma4.final_logit_softcapping"] == 30.0
        tensors = {t.name: t for t in summary.tensors}
        assert "blk.1.attn_v.weight" not in tensors and "blk.1.attn_k.weight" in tensors  # keys as values
        assert "blk.0.attn_v.weight" in tensors  # a sliding layer keeps its own
        assert "blk.4.attn_k.weight" not in tensors and "blk.5.attn_k_norm.weight" not in tensors  # shared KV
        assert list(tensors["per_layer_token_embd.weight"].shape) == [len(TYPES) * PLE, VOCAB]
        assert "blk.0.layer_output_scale.weight" in tensors and "output.weight" not in tensors  # tied head

    # rope_freqs: the first quarter of the full head's pairs rotate, the rest are held by 1e30
    import gguf

    freqs = next(np.asarray(t.data) for t in gguf.GGUFReader(tmp_path / by_quant["f16"][0].file).tensors
                 if t.name == "rope_freqs.weight")
    want = [1.0] * (FULL_HEAD_DIM // 8) + [1e30] * (FULL_HEAD_DIM // 2 - FULL_HEAD_DIM // 8)
    np.testing.assert_array_equal(freqs, np.asarray(want, dtype=np.float32))

    # the profiler's tensor list (derived from the spec) is the converted file's
    from edgekit.profiles.shapes import model_shapes

    f16_file = read_gguf(tmp_path / by_quant["f16"][0].file)
    predicted = {t.name: t.ne for t in model_shapes(json.loads((gemma4_model / "config.json").read_text())).tensors}
    assert predicted == {t.name: tuple(t.shape) for t in f16_file.tensors}


class _PleTransposed(gemma4.Gemma4Spec):
    """The per-layer embedding table packed dimension-major (``j * layers + layer``) instead of
    layer-major (``layer * 64 + j``, what transformers' reshape and llama.cpp's view both read):
    each layer gets other layers' inputs. ``untransform`` undoes it, so the verifier's weights are
    the source's and only the runtime's logits can tell."""

    def transforms(self, hf_name: str, c: TextConfig) -> bool:
        return hf_name.endswith("embed_tokens_per_layer.weight") or super().transforms(hf_name, c)

    def transform(self, hf_name: str, data: np.ndarray, c: TextConfig) -> np.ndarray:
        if not hf_name.endswith("embed_tokens_per_layer.weight"):
            return super().transform(hf_name, data, c)
        return np.ascontiguousarray(data.reshape(-1, c.num_layers, PLE).transpose(0, 2, 1)).reshape(data.shape)

    def untransform(self, hf_name: str, data: np.ndarray, c: TextConfig) -> np.ndarray:
        if not hf_name.endswith("embed_tokens_per_layer.weight"):
            return super().untransform(hf_name, data, c)
        return np.ascontiguousarray(data.reshape(-1, PLE, c.num_layers).transpose(0, 2, 1)).reshape(data.shape)


def test_gemma4_per_layer_embeddings_packed_wrong_are_caught(gemma4_model: Path, gemma4_inputs: Any,
                                                             tmp_path: Path) -> None:
    broken = _PleTransposed(**{f.name: getattr(gemma4.SPEC, f.name) for f in dataclasses.fields(gemma4.SPEC)})
    with pytest.raises(VerificationError, match=r"logits: "):
        convert_gguf(gemma4_model, tmp_path, "f16", name=NAME, spec=broken, prepared=gemma4_inputs, quality=FAST)
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".edgekit-tmp*"))


def test_gemma4_multimodal_checkpoint_converts_its_language_model(bpe_tok: Path, tmp_path: Path) -> None:
    model = build_gemma4(bpe_tok, tmp_path / "vl", cls="Gemma4ForConditionalGeneration")
    events: list[Any] = []
    res = convert_gguf(model, tmp_path / "out", "f16", name=NAME, progress=events.append,
                       quality=QualitySettings(EvalSettings(tokens=256, ctx=256)))  # parity, not quality
    (rep,) = res.reports
    assert rep.passed and rep.token_mismatches == [], rep.failures
    assert rep.metrics is not None and rep.metrics.rel_err < 0.05
    notes = [e.message for e in events if e.step == "note"]
    assert len(notes) == 1 and "vision tower" in notes[0] and "left out" in notes[0]
    names = {t.name for t in read_gguf(tmp_path / "out" / res.artifacts[0].file).tensors}
    assert "per_layer_token_embd.weight" in names and "blk.5.inp_gate.weight" in names
    assert all(n.startswith(("blk.", "per_layer_")) or n in ("token_embd.weight", "output_norm.weight",
                                                             "rope_freqs.weight") for n in names)


@pytest.mark.parametrize("cls", ["Gemma4ForCausalLM", "Gemma4ForConditionalGeneration"])
def test_gemma4_layout_is_transformers_layout(cls: str) -> None:
    """The profiler's tensor list comes from the spec's layout: exactly transformers' own tensors
    (layer_scalar, a persistent buffer, included)."""
    import torch
    import transformers as T

    cfg = gemma4_config() if cls == "Gemma4ForCausalLM" else gemma4_vl_config()
    with torch.device("meta"):
        model = getattr(T, cls)(cfg)
    raw = {**cfg.to_dict(), "architectures": [cls]}
    spec = spec_for(raw)
    c = TextConfig.from_hf(raw)
    real = {n: tuple(t.shape) for n, t in model.state_dict().items() if not spec.skip(n, c)}
    assert dict(spec.hf_tensors(c)) == real
    assert spec.swa_layers(c) == (WINDOW, TYPES.count("sliding_attention"))


@pytest.mark.parametrize(("change", "match"), [
    ({"enable_moe_block": True, "num_experts": 4, "top_k_experts": 2, "moe_intermediate_size": 256}, "MoE block"),
    ({"use_bidirectional_attention": "all"}, "bidirectional"),
    ({"layer_types": ["sliding_attention", "mamba"] * 3}, "layer_types"),
    ({"vocab_size_per_layer_input": 512}, "vocab_size_per_layer_input"),
    ({"num_kv_shared_layers": 3}, "num_kv_shared_layers"),  # layer 2 (sliding) would lend the full layers KV
])
def test_gemma4_configs_llama_cpp_cannot_run_are_refused(gemma4_model: Path, tmp_path: Path, change: dict[str, Any],
                                                         match: str) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(gemma4_model, bad)
    cfg = {**json.loads((bad / "config.json").read_text()), **change}
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(InputError, match=match):
        convert_gguf(bad, tmp_path / "out", "f16", verify_artifacts=False)
    assert not list((tmp_path / "out").glob("*.gguf"))


GEMMA4_CONFIGS = {"gemma4": gemma4_config, "gemma4-vl": gemma4_vl_config}  # read by tests/conftest.py's _config
