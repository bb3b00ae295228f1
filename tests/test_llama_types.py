"""The profiler's prediction of llama.cpp's per-tensor types, checked against real quantized files.

Every file is quantized by llama.cpp itself (llama_model_quantize through edgekit's quantizer);
an importance matrix of ones stands in for a real one where a type needs it (the type choice
does not depend on its values, only on whether there is one).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_profiles import TINY, make_gguf

from edgekit.converters.gguf.inspect import read_gguf
from edgekit.converters.gguf.quantize import quantize_file
from edgekit.converters.gguf.quants import FLOAT_QUANTS, QUANTS, quant
from edgekit.errors import EdgekitError
from edgekit.profiles import llama_types, shapes

# Rows of 320 split into 32-blocks but not 256-blocks (SmolLM2's hidden 576 does the same): every
# k- and i-quant falls back on the attention and FFN inputs; ffn_down (rows of 512) keeps its type.
# Tied embeddings: the token matrix is the output head. GQA 5: the attn_v rules' "GQA >= 4" branch.
FALLBACK = {**TINY, "hidden_size": 320, "num_attention_heads": 5, "num_key_value_heads": 1, "head_dim": 64,
            "intermediate_size": 512, "num_hidden_layers": 2, "vocab_size": 768, "tie_word_embeddings": True}
# Eight layers: the per-layer mixes (first 1/8, "more bits" layers, first two / four attn_v),
# untied, GQA 2 (the other attn_v branch).
LAYERS = {**TINY, "num_hidden_layers": 8, "intermediate_size": 512, "vocab_size": 768}
I_QUANTS = [q.name for q in QUANTS if q.name.startswith("iq")]
# The k-quant mixes and the legacy types whose ffn_down changes with an importance matrix.
MIXES = ["q5_k_s", "q5_k_m", "q4_k_s", "q3_k_s", "q3_k_l", "q4_0", "q5_0"]


def _ones(s: shapes.ModelShapes) -> dict[str, np.ndarray]:
    return {t.name: np.ones(t.ne[0], np.float32) for t in s.tensors if t.is_matrix and t.name != "token_embd.weight"}


def _check(tmp: Path, config: dict, name: str, with_imatrix: bool) -> None:
    f16 = tmp / "model.gguf"
    if not f16.exists():
        make_gguf(f16, config, "f16")
    s = shapes.model_shapes(config)
    dst = tmp / f"{name}-{int(with_imatrix)}.gguf"
    quantize_file(f16, dst, quant(name), threads=2, imatrix=_ones(s) if with_imatrix else None)
    real = {t.name: t.type for t in read_gguf(dst).tensors}
    predicted = shapes.gguf_tensor_types(s, name, imatrix=with_imatrix)
    assert real == predicted, {k: (predicted.get(k), v) for k, v in real.items() if predicted.get(k) != v}
    assert sum(t.nbytes for t in read_gguf(dst).tensors) == sum(shapes.tensor_bytes(t.ne, predicted[t.name])
                                                                for t in s.tensors)
    assert not llama_types.requires_imatrix(predicted, name.upper()) or with_imatrix
    dst.unlink()


@pytest.fixture(scope="module")
def fallback_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fallback")


@pytest.fixture(scope="module")
def layers_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("layers")


@pytest.mark.parametrize("name", I_QUANTS)
def test_i_quant_types_match_llama_cpp_with_fallbacks(fallback_dir: Path, name: str) -> None:
    q = quant(name)
    # with an importance matrix always; without one as well where llama.cpp makes the type without
    for with_imatrix in (True,) if q.needs_imatrix else (False, True):
        _check(fallback_dir, FALLBACK, name, with_imatrix)


@pytest.mark.parametrize("name", MIXES)
def test_layer_mixes_match_llama_cpp(layers_dir: Path, name: str) -> None:
    for with_imatrix in (False, True):
        _check(layers_dir, LAYERS, name, with_imatrix)


def test_rules_pick_the_types_llama_cpp_documents() -> None:
    """The per-layer rules on a 16-layer GQA-4 model (no files: the arithmetic of the rules)."""
    s = shapes.model_shapes({**TINY, "num_hidden_layers": 16, "num_key_value_heads": 1})
    t = {q: shapes.gguf_tensor_types(s, q) for q in ("iq3_xs", "iq2_m", "iq4_xs", "iq1_s", "q3_k_m")}
    assert [i for i in range(16) if t["iq3_xs"][f"blk.{i}.ffn_up.weight"] == "IQ3_XXS"] == list(range(2, 14))
    assert t["iq3_xs"]["blk.0.attn_q.weight"] == "IQ3_XXS" and t["iq3_xs"]["blk.0.attn_v.weight"] == "Q4_K"
    assert [i for i in range(16) if t["iq2_m"][f"blk.{i}.ffn_down.weight"] == "IQ3_S"] == [0, 1]
    assert t["iq2_m"]["token_embd.weight"] == "IQ3_S" and t["iq2_m"]["output.weight"] == "Q5_K"
    assert [i for i in range(16) if t["iq4_xs"][f"blk.{i}.ffn_down.weight"] == "Q5_K"] == [0, 1]
    with_im = shapes.gguf_tensor_types(s, "iq4_xs", imatrix=True)
    assert all(with_im[f"blk.{i}.ffn_down.weight"] == "IQ4_XS" for i in range(16))
    assert t["iq1_s"]["blk.3.attn_output.weight"] == "IQ2_XXS" and t["iq1_s"]["token_embd.weight"] == "Q2_K"
    assert t["q3_k_m"]["blk.0.ffn_down.weight"] == "Q5_K" and t["q3_k_m"]["blk.1.ffn_down.weight"] == "Q4_K"
    # SmolLM2-135M's rows of 576: q2_k's matrices fall back to q4_0, the output head to q8_0
    smol = shapes.model_shapes({**TINY, "hidden_size": 576, "num_attention_heads": 9, "num_key_value_heads": 3,
                                "intermediate_size": 1536, "vocab_size": 49152, "tie_word_embeddings": True})
    q2 = shapes.gguf_tensor_types(smol, "q2_k")
    assert q2["blk.0.attn_q.weight"] == "Q4_0" and q2["blk.0.ffn_down.weight"] == "Q3_K"
    assert q2["token_embd.weight"] == "Q8_0"
    iq2 = shapes.gguf_tensor_types(smol, "iq2_xxs", imatrix=True)
    assert iq2["blk.0.ffn_up.weight"] == "IQ4_NL" and iq2["blk.1.ffn_down.weight"] == "IQ2_XXS"


def test_requires_imatrix_predicts_llama_cpp_refusing(tmp_path: Path) -> None:
    """iq3_xs puts IQ3_XXS on attn_q/attn_k: llama.cpp refuses it without an importance matrix when
    those rows split into 256-blocks, and makes it when they fall back (rows of 320)."""
    name = "iq3_xs"
    one = {**TINY, "num_hidden_layers": 1, "intermediate_size": 512, "vocab_size": 768}
    for config, refused in ((one, True), ({**FALLBACK, "num_hidden_layers": 1}, False)):
        d = tmp_path / str(refused)
        d.mkdir()
        f16 = make_gguf(d / "m.gguf", config, "f16")
        types = shapes.gguf_tensor_types(shapes.model_shapes(config), name)
        assert llama_types.requires_imatrix(types, name.upper()) is refused
        if refused:
            with pytest.raises(EdgekitError):
                quantize_file(f16, d / "q.gguf", quant(name), threads=2)
        else:
            quantize_file(f16, d / "q.gguf", quant(name), threads=2)
            assert {t.name: t.type for t in read_gguf(d / "q.gguf").tensors} == types


def test_float_types_need_no_rules() -> None:
    s = shapes.model_shapes(TINY)
    for name in FLOAT_QUANTS:
        t = shapes.gguf_tensor_types(s, name)
        assert {v for k, v in t.items() if k.endswith("norm.weight")} == {"F32"}
        assert t["blk.0.attn_q.weight"] == quant(name).main_type
