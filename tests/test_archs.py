"""Architecture families: one spec per family drives GGUF, ONNX, GPTQ and the profiler.

Each family is a tiny random model built from its transformers config (hidden 256,
intermediate 768, vocab 1024: multiples of 256 that differ; layers enough for the
alternating patterns), converted and checked for token and logit parity against
transformers, plus one deliberately broken conversion the check must catch.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _family import save_with_tokenizer
from conftest import HEAD_DIM, HEADS, HIDDEN, INIT_STD, INTERMEDIATE, KV_HEADS, VOCAB

from edgekit.converters.gguf.archs import (
    ARCHS,
    FORMATS,
    ArchSpec,
    TextConfig,
    gemma2,
    granite,
    ministral3,
    olmo2,
    phi3,
    smollm3,
    spec_for,
    support_markdown,
)
from edgekit.converters.gguf.convert import convert_gguf
from edgekit.converters.gguf.inspect import read_gguf
from edgekit.errors import InputError, UnsupportedArchitectureError, VerificationError

ROOT = Path(__file__).resolve().parents[1]
COMMON = dict(hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_attention_heads=HEADS,
              num_key_value_heads=KV_HEADS, vocab_size=VOCAB, initializer_range=INIT_STD,
              bos_token_id=None, eos_token_id=None, pad_token_id=None)
ROT = int(0.75 * HIDDEN) // HEADS  # Phi-4-mini style partial rotary: 48 of 64 dimensions
_rng = np.random.default_rng(7)


def _config(family: str) -> Any:
    import transformers as T

    if family == "phi3":  # partial rotary + LongRoPE (short factors apply below 1024 tokens, as in the tests)
        short, long = (np.round(_rng.uniform(1.0, 4.0, ROT // 2), 3).tolist() for _ in range(2))
        return T.Phi3Config(**COMMON, num_hidden_layers=2, max_position_embeddings=4096,
                            original_max_position_embeddings=1024, tie_word_embeddings=False,
                            rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0,
                                             "partial_rotary_factor": 0.75, "short_factor": short,
                                             "long_factor": long, "original_max_position_embeddings": 1024})
    if family == "gemma2":  # caps small enough to bite on random logits; window shorter than the probes
        return T.Gemma2Config(**COMMON, head_dim=HEAD_DIM, num_hidden_layers=4, max_position_embeddings=1024,
                              query_pre_attn_scalar=HEAD_DIM, sliding_window=128, attn_logit_softcapping=2.0,
                              final_logit_softcapping=1.5)
    if family == "granite":
        return T.GraniteConfig(**COMMON, num_hidden_layers=2, max_position_embeddings=1024,
                               embedding_multiplier=6.0, residual_multiplier=0.3, attention_multiplier=0.02,
                               logits_scaling=4.0, tie_word_embeddings=True)
    if family == "smollm3":  # layer 3 of 4 runs without RoPE
        return T.SmolLM3Config(**COMMON, head_dim=HEAD_DIM, num_hidden_layers=4, max_position_embeddings=1024,
                               tie_word_embeddings=True)
    if family == "gemma3-vl":  # Gemma 3 4B's layout: SigLIP tower + projector beside the language model
        return T.Gemma3Config(
            text_config={**COMMON, "head_dim": HEAD_DIM, "num_hidden_layers": 2, "max_position_embeddings": 1024,
                         "query_pre_attn_scalar": HEAD_DIM, "sliding_window": 512},
            vision_config={"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 1,
                           "num_attention_heads": 2, "image_size": 64, "patch_size": 16},
            mm_tokens_per_image=16, image_token_index=VOCAB - 24, boi_token_index=VOCAB - 23,
            eoi_token_index=VOCAB - 22)
    if family == "mistral3-vl":  # Mistral Small 3.1's layout: Pixtral tower + projector beside a Mistral
        return T.Mistral3Config(
            text_config={**COMMON, "model_type": "mistral", "head_dim": HEAD_DIM, "num_hidden_layers": 2,
                         "max_position_embeddings": 1024, "sliding_window": None},
            vision_config={"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 1,
                           "num_attention_heads": 2, "image_size": 64, "patch_size": 16, "head_dim": 128},
            image_token_index=VOCAB - 24)
    if family == "olmo2":
        return T.Olmo2Config(**COMMON, num_hidden_layers=2, max_position_embeddings=1024, tie_word_embeddings=False)
    if family == "ministral3":  # YaRN, and a temperature period short enough to change within the probes
        return T.Ministral3Config(**COMMON, head_dim=HEAD_DIM, num_hidden_layers=2, max_position_embeddings=1024,
                                  tie_word_embeddings=False, rope_parameters=MINISTRAL3_ROPE)
    if family == "ministral3-vl":  # Ministral 3's layout: Pixtral tower + projector beside a ministral3
        return T.Mistral3Config(
            text_config={**COMMON, "model_type": "ministral3", "head_dim": HEAD_DIM, "num_hidden_layers": 2,
                         "max_position_embeddings": 1024, "rope_parameters": MINISTRAL3_ROPE},
            vision_config={"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 1,
                           "num_attention_heads": 2, "image_size": 64, "patch_size": 16, "head_dim": 128},
            image_token_index=VOCAB - 24)
    raise ValueError(family)


MINISTRAL3_ROPE = {"rope_type": "yarn", "rope_theta": 1e6, "factor": 16.0, "original_max_position_embeddings": 64,
                   "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0,
                   "llama_4_scaling_beta": 1.0}


# Random q/k make near-uniform attention, under which a layer with or without RoPE computes
# almost the same: SmolLM3's q/k are scaled so that positions matter and a lost no-RoPE
# layer shows in the logits.
SHARP_ATTENTION = {"smollm3": 4.0, "ministral3": 4.0}  # Ministral 3: so that the attention temperature shows
_CLASSES = {"phi3": "Phi3ForCausalLM", "gemma2": "Gemma2ForCausalLM", "granite": "GraniteForCausalLM",
            "smollm3": "SmolLM3ForCausalLM", "olmo2": "Olmo2ForCausalLM", "ministral3": "Ministral3ForCausalLM",
            "gemma3-vl": "Gemma3ForConditionalGeneration", "mistral3-vl": "Mistral3ForConditionalGeneration",
            "ministral3-vl": "Mistral3ForConditionalGeneration"}
MULTIMODAL = ["gemma3-vl", "mistral3-vl", "ministral3-vl"]
FAMILIES = [f for f in _CLASSES if f not in MULTIMODAL]  # the dense text families


def build_family(family: str, tokenizer_dir: Path, out: Path, seed: int = 0) -> Path:
    import torch
    import transformers as T

    torch.manual_seed(seed)
    model = getattr(T, _CLASSES[family])(_config(family)).eval()
    with torch.no_grad():  # norms start at exactly 1 (0 for Gemma): perturb them so a wrong offset shows
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.add_(torch.randn_like(p) * 0.1)
            elif family in SHARP_ATTENTION and name.endswith(("q_proj.weight", "k_proj.weight")):
                p.mul_(SHARP_ATTENTION[family])
    return save_with_tokenizer(model, tokenizer_dir, out)


@pytest.fixture(scope="module")
def family_model(tmp_path_factory: pytest.TempPathFactory, bpe_tok: Path) -> Callable[[str], Path]:
    cache: dict[str, Path] = {}

    def make(family: str) -> Path:
        if family not in cache:
            cache[family] = build_family(family, bpe_tok, tmp_path_factory.mktemp(family))
        return cache[family]

    return make


def _respec(base: ArchSpec, cls: type[ArchSpec]) -> ArchSpec:
    """``base``'s data under a subclass that overrides a hook (a deliberately broken spec)."""
    return cls(**{f.name: getattr(base, f.name) for f in dataclasses.fields(base)})


def _drop_key(key: str, value: float | None = None) -> Callable[[Any, Any, TextConfig], None]:
    """A write_hparams that leaves ``key`` out (or, with ``value``, writes that instead)."""
    def write_hparams(self: Any, w: Any, c: TextConfig) -> None:
        import gguf

        type(self).__mro__[1].write_hparams(self, w, c)
        name = key.format(arch=w.arch)
        if value is None:
            del w.kv_data[0][name]
        else:
            w.kv_data[0][name] = gguf.GGUFValue(value=value, type=gguf.GGUFValueType.FLOAT32)
    return write_hparams


class _SwappedGateUp(phi3.Phi3Spec):
    """gate_up_proj split in the wrong order (up first): the runtime computes another model."""

    def transforms(self, hf_name: str, c: TextConfig) -> bool:
        return hf_name.endswith("gate_up_proj.weight")

    def transform(self, hf_name: str, data: np.ndarray, c: TextConfig) -> np.ndarray:
        if hf_name.endswith("gate_up_proj.weight"):
            gate, up = np.split(data, 2)
            return np.concatenate([up, gate])
        return data

    untransform = transform  # its own inverse: the verifier's weights are the source's, only the graph differs


class _NoFinalCap(gemma2.Gemma2Spec):
    write_hparams = _drop_key("{arch}.final_logit_softcapping")


class _NoLogitScale(granite.GraniteSpec):
    """logits_scaling ignored (llama.cpp refuses a Granite file without the key: 1.0 instead)."""

    write_hparams = _drop_key("{arch}.logit_scale", 1.0)


class _NoTemperature(ministral3.Ministral3Spec):
    """Llama 4's attention temperature left out (0 turns it off in llama.cpp)."""

    write_hparams = _drop_key("{arch}.attention.temperature_scale", 0.0)


class _DroppedPostNorm(ArchSpec):
    """OLMo 2's post-feed-forward norm written as ones (a converter that forgot it)."""

    def transforms(self, hf_name: str, c: TextConfig) -> bool:
        return hf_name.endswith("post_feedforward_layernorm.weight")

    def transform(self, hf_name: str, data: np.ndarray, c: TextConfig) -> np.ndarray:
        return np.ones_like(data) if self.transforms(hf_name, c) else data


BROKEN: dict[str, Callable[[], ArchSpec]] = {
    "phi3": lambda: _respec(phi3.SPEC, _SwappedGateUp),
    "gemma2": lambda: _respec(gemma2.SPEC, _NoFinalCap),
    "granite": lambda: _respec(granite.SPEC, _NoLogitScale),
    "smollm3": lambda: dataclasses.replace(smollm3.SPEC, gguf_arch="LLAMA"),  # RoPE on every layer
    "olmo2": lambda: _respec(olmo2.SPEC, _DroppedPostNorm),
    "ministral3": lambda: _respec(ministral3.SPEC, _NoTemperature),
}
ONNX_FAMILIES = [f for f in FAMILIES if next(s for s in ARCHS if _CLASSES[f] in s.hf_architectures).supports("onnx")]


@pytest.fixture(scope="module")
def family_inputs(family_model: Callable[[str], Path]) -> Callable[[str], Any]:
    """Each family's opened inputs, shared by its conversions: one transformers reference each."""
    from edgekit.converters.pipeline import open_inputs
    from edgekit.converters.quality import EvalSettings, QualitySettings
    from edgekit.progress import StepTimer

    # parity is what these tests check: quality is measured on one short window (still longer
    # than Gemma 2's 128-token sliding window)
    quality = QualitySettings(EvalSettings(tokens=256, ctx=256))
    cache: dict[str, Any] = {}

    def get(family: str) -> Any:
        if family not in cache:
            cache[family] = open_inputs(family_model(family), None, StepTimer(), quality=quality)
        return cache[family]

    return get


# general.name is given: llama.cpp applies Phi-3 token attributes to any model whose name holds
# "phi3" and aborts when the vocabulary lacks Phi-3's own tokens (these tests train their own).
NAME = "tiny"


@pytest.mark.parametrize("family", FAMILIES)
def test_gguf_f16_matches_transformers(family: str, family_model: Callable[[str], Path],
                                       family_inputs: Callable[[str], Any], tmp_path: Path) -> None:
    model = family_model(family)
    res = convert_gguf(model, tmp_path, "f16", name=NAME, prepared=family_inputs(family))
    (rep,) = res.reports
    assert rep.passed, rep.failures
    assert rep.token_mismatches == []
    # f16 parity, tighter than the verifier's generic bounds: the reference carries the file's own
    # f16 weights, so what is left is llama.cpp rounding activations and the KV cache to f16
    # (2^-11 relative, the same rounding on AMX, AVX-512 and AVX2; only float32 accumulation order
    # differs between CPUs): a few 1e-3 relative error and KL ~1e-6 (LFM2 here: 0.0013 and 5e-7).
    # A conversion error (missing soft-cap, wrong rope, dropped norm) is >= 0.1 and >= 1e-2.
    assert rep.metrics is not None and rep.metrics.rel_err < 0.05 and rep.metrics.mean_kl < 1e-3
    summary = read_gguf(tmp_path / res.artifacts[0].file)
    assert summary.architecture == spec_for(json.loads((model / "config.json").read_text())).gguf_arch.lower()


@pytest.mark.parametrize("family", FAMILIES)
def test_broken_conversion_is_caught(family: str, family_model: Callable[[str], Path],
                                     family_inputs: Callable[[str], Any], tmp_path: Path) -> None:
    with pytest.raises(VerificationError):
        convert_gguf(family_model(family), tmp_path, "f16", name=NAME, spec=BROKEN[family](),
                     prepared=family_inputs(family))
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".edgekit-tmp*"))


@pytest.mark.parametrize("family", ONNX_FAMILIES)
def test_onnx_fp32_matches_transformers(family: str, family_model: Callable[[str], Path],
                                        family_inputs: Callable[[str], Any], tmp_path: Path) -> None:
    from edgekit.converters.onnx.convert import convert_onnx

    res = convert_onnx(family_model(family), tmp_path, "fp32", name=NAME, prepared=family_inputs(family))
    (rep,) = res.reports
    assert rep.passed, rep.failures
    assert rep.token_mismatches == []
    assert rep.metrics is not None and rep.metrics.rel_err < 0.01


def test_onnx_refuses_olmo2_before_writing(family_model: Callable[[str], Path], tmp_path: Path) -> None:
    from edgekit.converters.onnx.convert import convert_onnx

    with pytest.raises(UnsupportedArchitectureError, match="builder has no OLMo 2"):
        convert_onnx(family_model("olmo2"), tmp_path / "out", "fp32")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


@pytest.mark.parametrize("family", MULTIMODAL)
def test_multimodal_checkpoint_converts_its_language_model(family: str, family_model: Callable[[str], Path],
                                                           tmp_path: Path) -> None:
    """Gemma 3 4B+ / Mistral Small 3.1 layouts: the language model to GGUF (verified against
    transformers' model on the text path), one line saying the vision tower is left out."""
    events: list[Any] = []
    model = family_model(family)
    from edgekit.converters.quality import EvalSettings, QualitySettings

    res = convert_gguf(model, tmp_path, "f16", name=NAME, progress=events.append,
                       quality=QualitySettings(EvalSettings(tokens=256, ctx=256)))  # parity, not quality
    (rep,) = res.reports
    assert rep.passed and rep.token_mismatches == [], rep.failures
    assert rep.metrics is not None and rep.metrics.rel_err < 0.05
    notes = [e.message for e in events if e.step == "note"]
    assert len(notes) == 1 and "vision tower" in notes[0] and "left out" in notes[0]
    names = {t.name for t in read_gguf(tmp_path / res.artifacts[0].file).tensors}
    assert "blk.1.ffn_down.weight" in names  # the language model only: no vision or projector tensor
    assert all(n.startswith("blk.") or n in ("token_embd.weight", "output_norm.weight") for n in names)


def test_multimodal_checkpoint_refused_for_onnx(family_model: Callable[[str], Path], tmp_path: Path) -> None:
    from edgekit.converters.onnx.convert import convert_onnx

    with pytest.raises(UnsupportedArchitectureError, match="gemma3-vl cannot be converted to onnx"):
        convert_onnx(family_model("gemma3-vl"), tmp_path / "out", "fp32")


def test_multimodal_checkpoint_with_an_unsupported_language_model_says_so() -> None:
    cfg = {"architectures": ["Mistral3ForConditionalGeneration"], "text_config": {"model_type": "ministral"}}
    with pytest.raises(InputError, match="language model is 'ministral', which edgekit does not convert"):
        spec_for(cfg)


def test_soft_capped_references_run_eager_attention(family_model: Callable[[str], Path]) -> None:
    """transformers' SDPA kernel skips Gemma 2's attention soft-capping: every transformers model
    edgekit builds as a reference (verification, GPTQ) must run the eager kernel for it (with SDPA
    the GGUF was 'off' by a relative logit error of 0.095, GPTQ int4 by 0.097 and still passed)."""
    from transformers import AutoConfig

    from edgekit.converters.layerwise import empty_model, reference_attention

    model = family_model("gemma2")
    assert empty_model(model, None).config._attn_implementation == "eager"
    assert reference_attention(AutoConfig.from_pretrained(family_model("granite"))) == {}


# -- the specs themselves ----------------------------------------------------------------------

def _hf_config(spec: ArchSpec) -> Any:
    """A transformers config of the spec's family (the test families' own, or the shared fixtures')."""
    from conftest import _config as fixture_config

    family = next((f for f, cls in _CLASSES.items() if cls in spec.hf_architectures), None)
    return _config(family) if family else fixture_config(spec.name, VOCAB, 2)


@pytest.mark.parametrize("spec", ARCHS, ids=lambda s: s.name)
def test_spec_layout_is_transformers_layout(spec: ArchSpec) -> None:
    """The profiler's tensor list comes from the spec's layout: it must be exactly the tensors
    (names and shapes) transformers' own model of that config holds."""
    import torch
    import transformers as T

    cfg = _hf_config(spec)
    with torch.device("meta"):
        model = getattr(T, spec.hf_architectures[0])(cfg)
    real = {n: tuple(t.shape) for n, t in model.state_dict().items() if not spec.skip(n, TextConfig.from_hf(cfg.to_dict()))}
    raw = {**cfg.to_dict(), "architectures": list(spec.hf_architectures)}
    assert dict(spec.hf_tensors(TextConfig.from_hf(raw))) == real


@pytest.mark.parametrize("family", FAMILIES)
def test_profiler_shapes_are_the_converted_file(family: str, family_model: Callable[[str], Path],
                                                tmp_path: Path) -> None:
    from edgekit.profiles.shapes import model_shapes

    model = family_model(family)
    res = convert_gguf(model, tmp_path, "f16", name=NAME, verify_artifacts=False)
    in_file = {t.name: tuple(t.shape) for t in read_gguf(tmp_path / res.artifacts[0].file).tensors}
    predicted = {t.name: t.ne for t in model_shapes(json.loads((model / "config.json").read_text())).tensors}
    assert predicted == in_file


def test_sliding_window_layers_come_from_the_spec() -> None:
    from edgekit.profiles.shapes import kv_cache_bytes, model_shapes

    cfg = {**_config("gemma2").to_dict(), "architectures": ["Gemma2ForCausalLM"]}
    s = model_shapes(cfg)
    assert (s.sliding_window, s.local_layers) == (128, 2)  # layers 0 and 2 of 4 are local
    assert kv_cache_bytes(s, 1024) == KV_HEADS * HEAD_DIM * 2 * 2 * (2 * 128 + 2 * 1024)


def test_onnx_support_is_what_the_installed_builder_dispatches_on() -> None:
    """A spec claims ONNX exactly when onnxruntime-genai's builder names all its classes."""
    import onnxruntime_genai.models.builder as builder

    source = Path(builder.__file__).read_text(encoding="utf-8")
    known = set(re.findall(r'config\.architectures\[0\] == "(\w+)"', source))
    for spec in ARCHS:
        if spec.supports("onnx"):
            assert set(spec.hf_architectures) <= known, spec.name
        else:  # left out although the builder may know the class: the reason is stated
            assert set(spec.hf_architectures) - known or "onnx" in dict(spec.why_not), spec.name


# -- what users see ----------------------------------------------------------------------------

def run_cli(*args: str) -> tuple[int, str]:
    from click.testing import CliRunner

    from edgekit import cli

    r = CliRunner().invoke(cli.main, list(args))
    return r.exit_code, r.output


def test_support_command_and_readme_table() -> None:
    code, out = run_cli("support", "--json")
    assert code == 0, out
    rows = json.loads(out)
    assert [r["arch"] for r in rows] == [s.name for s in ARCHS]
    assert {r["arch"]: r["onnx"] for r in rows}["olmo2"] is False
    assert all(set(r) >= {"arch", "hf_classes", *FORMATS} for r in rows)
    code, table = run_cli("support")
    assert code == 0 and "Olmo2ForCausalLM" in table and "Phi3ForCausalLM" in table
    assert support_markdown() in (ROOT / "README.md").read_text(encoding="utf-8"), \
        "README's support table is stale: paste support_markdown()'s output"


def test_unsupported_class_lists_supported_ones_per_format() -> None:
    with pytest.raises(UnsupportedArchitectureError) as e:
        spec_for({"architectures": ["FalconForCausalLM"]})
    line = e.value.one_line()
    assert "\n" not in line and "'FalconForCausalLM'" in line
    for fmt in FORMATS:
        assert f"{fmt}: " in line
    assert "olmo2" in line.split("onnx: ")[0] and "olmo2" not in line.split("onnx: ")[1].split(";")[0]


@pytest.mark.parametrize(("family", "field"), [("granite", "logits_scaling"), ("gemma2", "final_logit_softcapping"),
                                               ("smollm3", "no_rope_layers")])
def test_config_lacking_a_family_field_names_it(family: str, field: str) -> None:
    cfg = {**_config(family).to_dict(), "architectures": [_CLASSES[family]]}
    del cfg[field]
    with pytest.raises(InputError, match=f"lacks '{field}', which {family} needs"):
        spec_for(cfg)


def test_configs_llama_cpp_would_run_differently_are_refused(family_model: Callable[[str], Path],
                                                              tmp_path: Path) -> None:
    """llama.cpp hard-codes SmolLM3's no-RoPE pattern: another pattern is an error, not a wrong file."""
    src = family_model("smollm3")
    bad = tmp_path / "bad"
    shutil.copytree(src, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["no_rope_layers"] = [1, 0, 1, 1]
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(InputError, match="no_rope_layers"):
        convert_gguf(bad, tmp_path / "out", "f16", verify_artifacts=False)
    assert not list((tmp_path / "out").glob("*.gguf"))
