"""The verification reference runs the source model one decoder layer at a time (converters.layerwise).

It must compute what transformers' own forward computes, for every architecture (per-layer-type
masks and rotary tables on Gemma 3, soft-capping, tied heads, bf16), while holding one layer."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import ARCH_TOKENIZER, VOCAB

from edgekit.converters.artifact_weights import ArtifactTensor, ArtifactWeights
from edgekit.converters.reference import SourceReference
from edgekit.converters.source import open_source


def _full_forward(model_dir: Path, seqs: list[list[int]], dtype: str = "float32") -> list[np.ndarray]:
    """transformers' own forward over each sequence, the whole model in memory."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype)).eval()
    with torch.inference_mode():
        return [model(input_ids=torch.tensor([s])).logits[0].float().numpy() for s in seqs]


def _seqs(n: tuple[int, ...] = (200, 75)) -> list[list[int]]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, VOCAB, size=k).tolist() for k in n]


def _assert_close(got: list[np.ndarray], want: list[np.ndarray], tol: float) -> None:
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        scale = float(np.abs(w).max())
        assert float(np.abs(g - w).max()) <= tol * scale, float(np.abs(g - w).max()) / scale


@pytest.mark.parametrize("arch", sorted(ARCH_TOKENIZER))
def test_layer_by_layer_equals_the_whole_model(arch: str, model_factory: Callable[..., Path]) -> None:
    model_dir = model_factory(arch)
    ref = SourceReference(model_dir, open_source(model_dir))
    seqs = _seqs()
    check, got = ref.artifact_logits(ArtifactWeights((), lambda n: pytest.fail(n)), ref.source.float32, seqs)
    assert check.n_tensors == 0 and not check.unexpected
    _assert_close(got, _full_forward(model_dir, seqs), 1e-4)
    # afterwards nothing is held: every decoder layer and the resident tensors are back on disk
    assert all(ref.lm.param(n).device.type == "meta" for names in ref.lm.layer_names for n in names)
    assert all(ref.lm.param(n).device.type == "meta" for n in ref.lm.resident_names)


def test_gemma3_sliding_window_and_bf16(bpe_tok: Path, tmp_path: Path) -> None:
    """Sequences longer than Gemma 3's sliding window (its local layers see another mask than its
    global ones), a bf16 source (float32 head), soft-capped logits."""
    import torch
    import transformers as T
    from conftest import HEAD_DIM, HEADS, HIDDEN, INTERMEDIATE, KV_HEADS

    torch.manual_seed(0)
    cfg = T.Gemma3TextConfig(hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_hidden_layers=6,
                             num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, head_dim=HEAD_DIM,
                             vocab_size=VOCAB, max_position_embeddings=1024, query_pre_attn_scalar=HEAD_DIM,
                             sliding_window=32, final_logit_softcapping=30.0, bos_token_id=None, eos_token_id=None)
    model = T.Gemma3ForCausalLM(cfg).eval().to(torch.bfloat16)
    model.save_pretrained(tmp_path)
    for f in bpe_tok.iterdir():
        if f.is_file():
            shutil.copy(f, tmp_path / f.name)
    ref = SourceReference(tmp_path, open_source(tmp_path))
    assert str(ref.dtype) == "torch.bfloat16"
    seqs = _seqs((150, 40))
    _, got = ref.artifact_logits(ArtifactWeights((), lambda n: pytest.fail(n)), ref.source.float32, seqs)
    want = _full_forward(tmp_path, seqs, "bfloat16")
    # bf16 everywhere except the head, which edgekit multiplies in float32: bf16 logit rounding
    _assert_close(got, want, 2e-2)
    assert np.mean([np.mean(g.argmax(-1) == w.argmax(-1)) for g, w in zip(got, want, strict=True)]) > 0.95


def test_an_artifact_tensor_replaces_the_source_one_and_is_measured(llama_bpe: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    ref = SourceReference(llama_bpe, open_source(llama_bpe))
    name = "model.layers.1.mlp.down_proj.weight"
    src = ref.source.float32(name)
    halved = ArtifactTensor.whole(name, src * 0.5, "test", 16.0)
    check, got = ref.artifact_logits(ArtifactWeights.of([halved]), ref.source.float32, _seqs())
    assert check.errors[name][0] == pytest.approx(0.5, rel=1e-6)  # ||0.5 w - w|| / ||w||
    model = AutoModelForCausalLM.from_pretrained(llama_bpe, dtype=torch.float32).eval()
    with torch.no_grad():
        model.get_parameter(name).mul_(0.5)
        want = [model(input_ids=torch.tensor([s])).logits[0].numpy() for s in _seqs()]
    _assert_close(got, want, 1e-4)
    # the next pass is the source again
    _, again = ref.artifact_logits(ArtifactWeights((), lambda n: pytest.fail(n)), ref.source.float32, _seqs())
    _assert_close(again, _full_forward(llama_bpe, _seqs()), 1e-4)


def test_one_decoder_layer_in_memory_at_a_time(model_factory: Callable[..., Path]) -> None:
    model_dir = model_factory("qwen3")
    ref = SourceReference(model_dir, open_source(model_dir))
    held: list[int] = []

    def real_layers() -> int:
        return sum(any(ref.lm.param(n).device.type != "meta" for n in names) for names in ref.lm.layer_names)

    def load(i: int) -> None:
        ref._source_layer(i)
        held.append(real_layers())

    ref._unpark()
    ref.lm.run(_seqs(), load, ref._drop_layer)
    assert held == [1] * len(ref.lm.layers)
