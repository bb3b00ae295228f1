"""GPTQ: packing, a real llmcompressor run on the trained demo model, GPTQ vs RTN, ONNX builder read-back, bad input.

The quality comparison uses the packaged demo model (trained; hidden 256, intermediate 512):
a model trained here for seconds would be far noisier, and random weights make GPTQ and
RTN indistinguishable. Calibration is kept small (16 windows of 128 tokens) for CI time.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgekit.cli import main
from edgekit.converters.gptq.checkpoint import GPTQCheckpoint
from edgekit.converters.gptq.convert import convert_gptq
from edgekit.converters.gptq.pack import dequantize, pack_linear, pack_rows, unpack_linear, unpack_rows
from edgekit.converters.gptq.rtn import minmax_scales, rtn_quantize, trivial_g_idx
from edgekit.converters.safetensors_io import SafetensorsFile
from edgekit.demo import demo_model_dir
from edgekit.errors import InputError

SMALL = {"samples": 16, "seq_len": 128}


@pytest.mark.parametrize("bits", [4, 8])
def test_pack_roundtrip_exact(bits: int) -> None:
    rng = np.random.default_rng(bits)
    out_f, in_f, gs = 64, 256, 64
    codes = rng.integers(0, 1 << bits, size=(out_f, in_f)).astype(np.uint8)
    zeros = rng.integers(1, 1 << bits, size=(out_f, in_f // gs))
    scales = rng.random((out_f, in_f // gs)).astype(np.float16)
    t = pack_linear(codes, zeros, scales, trivial_g_idx(in_f, gs), bits)
    per = 32 // bits
    assert (t.qweight.shape, t.qweight.dtype) == ((in_f // per, out_f), np.int32)
    assert (t.qzeros.shape, t.qzeros.dtype) == ((in_f // gs, out_f // per), np.int32)
    assert (t.scales.shape, t.scales.dtype) == ((in_f // gs, out_f), np.float16)
    assert (t.g_idx.shape, t.g_idx.dtype) == ((in_f,), np.int32)
    u = unpack_linear(t)
    assert np.array_equal(u.codes, codes) and np.array_equal(u.zeros, zeros) and np.array_equal(u.scales, scales)
    # first input column's code is the lowest bits of word 0 (AutoGPTQ order), zero stored minus one
    assert int(t.qweight.view(np.uint32)[0, 0]) & ((1 << bits) - 1) == codes[0, 0]
    assert int(t.qzeros.view(np.uint32)[0, 0]) & ((1 << bits) - 1) == zeros[0, 0] - 1
    want = (codes.astype(np.float32) - np.repeat(zeros, gs, 1)) * np.repeat(scales.astype(np.float32), gs, 1)
    assert np.array_equal(dequantize(t), want)
    assert np.array_equal(unpack_rows(pack_rows(codes.T, bits), bits), codes.T)


def test_symmetric_int4_zero_word_is_classic() -> None:
    w = np.random.default_rng(0).standard_normal((32, 128)).astype(np.float32)
    q = rtn_quantize(w, 4, 128)
    t = pack_linear(q.codes, q.zeros, q.scales, q.g_idx, 4)
    assert set(t.qzeros.view(np.uint32).ravel().tolist()) == {0x77777777}  # what AutoGPTQ writes for sym=True


@pytest.fixture(scope="module")
def gptq_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gptq")
    convert_gptq(demo_model_dir(), out, name="demo", act_order=True, compressed_tensors=True, **SMALL)
    return out


def test_gptq_beats_rtn_and_is_recorded(gptq_out: Path) -> None:
    m = json.loads((gptq_out / "edgekit.json").read_text())
    entry = next(a for a in m["artifacts"] if a["format"] == "gptq")
    assert entry["file"] == "demo-gptq-int4-g128" and entry["precision"] == "int4"
    assert entry["verification"]["passed"]
    g, r, f = entry["extra"]["gptq"], entry["extra"]["rtn"], entry["extra"]["fp32"]
    assert g["n_tokens"] == r["n_tokens"] == f["n_tokens"] == entry["verification"]["n_positions"] > 0
    # What the method guarantees: int4 changes the model (KL > 0), calibration brings it closer to
    # the source than rounding to nearest on the same scales, and the source against itself is
    # exact. Not that the source's perplexity is lower: on one text a quantized model may score
    # a hair lower (21.1247 vs fp32 21.1617 on an AMD EPYC host), with no bug anywhere.
    assert 0 < g["mean_kl"] < r["mean_kl"]
    assert f["mean_kl"] == 0 and f["ppl"] > 1 and g["ppl"] > 1
    assert entry["extra"]["calibration"]["samples"] == SMALL["samples"]
    ct = next(a for a in m["artifacts"] if a["format"] == "compressed-tensors")
    ct_cfg = json.loads((gptq_out / ct["file"] / "config.json").read_text())
    assert ct_cfg["quantization_config"]["quant_method"] == "compressed-tensors"


def test_checkpoint_layout_and_scheme(gptq_out: Path) -> None:
    d = gptq_out / "demo-gptq-int4-g128"
    cfg = json.loads((d / "config.json").read_text())
    qc = cfg["quantization_config"]
    assert {k: qc[k] for k in ("quant_method", "bits", "group_size", "sym", "desc_act", "checkpoint_format")} == \
        {"quant_method": "gptq", "bits": 4, "group_size": 128, "sym": True, "desc_act": False,
         "checkpoint_format": "gptq"}
    assert (d / "tokenizer.json").is_file()
    ckpt = GPTQCheckpoint(d)
    src = SafetensorsFile(demo_model_dir() / "model.safetensors")
    layers = int(cfg["num_hidden_layers"])
    assert len(ckpt.quantized) == 7 * layers  # q k v o gate up down per layer; lm_head/embedding stay float
    for name, t in ckpt.quantized.items():
        w = src.float32(f"{name}.weight")
        out_f, in_f = w.shape
        assert t.qweight.shape == (in_f // 8, out_f) and t.qweight.dtype == np.int32
        assert t.qzeros.shape == (in_f // 128, out_f // 8) and t.scales.dtype == np.float16
        u = unpack_linear(t)
        # same scales as round-to-nearest on the source weights: GPTQ only changed the rounding
        assert np.array_equal(u.scales.astype(np.float32), minmax_scales(w, 4, 128))
        assert np.all(u.zeros == 8)
        assert not np.array_equal(u.codes, rtn_quantize(w, 4, 128).codes)
    assert all(v.dtype == np.float16 for v in ckpt.float_tensors.values())
    assert "lm_head.weight" not in ckpt.float_tensors  # tied to the embedding, as in the source


def test_onnx_builder_reads_the_checkpoint_exactly(gptq_out: Path, tmp_path: Path) -> None:
    """ONNX Runtime GenAI's GPTQ loader (an independent reader) gives the same logits as our dequantization."""
    import onnxruntime as ort
    import torch

    from edgekit.converters.onnx.builder import run_builder
    from edgekit.converters.verify import kl_per_position

    d = gptq_out / "demo-gptq-int4-g128"
    out = tmp_path / "onnx"
    # float embedding/LM head (as in the checkpoint) and float32 activations: only GPTQ's weights are int4
    run_builder(d, out, precision="int4", ep="cpu", cache_dir=tmp_path / "cache", n_layers=4,
                extra_options={"nodes_to_exclude": "/lm_head/MatMul,/model/embed_tokens/Gather",
                               "accuracy_level": "1"})
    ids = [1019, *range(40, 140)]
    with torch.inference_mode():
        want = GPTQCheckpoint(d).float_model()(input_ids=torch.tensor([ids])).logits[0].numpy()
    s = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    feeds = {"input_ids": np.array([ids], dtype=np.int64), "attention_mask": np.ones((1, len(ids)), dtype=np.int64)}
    for i in s.get_inputs():
        if i.name.startswith("past_key_values"):
            feeds[i.name] = np.zeros((1, i.shape[1], 0, i.shape[3] if isinstance(i.shape[3], int) else 64),
                                     dtype=np.float32)
    got = s.run(["logits"], feeds)[0][0]
    assert float(kl_per_position(want, got).max()) < 1e-6
    assert np.array_equal(want.argmax(-1), got.argmax(-1))


def _cli(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(main, list(args))
    return r.exit_code, r.output


@pytest.mark.parametrize("extra,needle", [
    (["--bits", "3"], "4 or 8 bits"),
    (["--group-size", "96"], "not a multiple of the group size 96"),
    (["--samples", "100000"], "too short"),
    (["-q", "int4", "--bits", "8"], "--quant / quants= int4 and --bits / bits=8 disagree"),  # was silently int4
    (["-q", "int4", "--bits", "8", "--to", "gptq,onnx"], "--quant / quants= int4 and --bits / bits=8 disagree"),
    (["-q", "int8", "--bits", "4"], "--quant / quants= int8 and --bits / bits=4 disagree"),  # an explicit 4 too
])
def test_bad_options_exit_1_and_write_nothing(tmp_path: Path, extra: list[str], needle: str) -> None:
    out = tmp_path / "out"
    code, text = _cli("convert", str(demo_model_dir()), "--to", "gptq", "-o", str(out), *extra)
    assert code == 1 and needle in text and "Traceback" not in text
    assert len(text.strip().splitlines()) == 1
    assert not out.exists() or not any(out.iterdir())


def test_group_size_error_names_layers_and_a_fix(tmp_path: Path) -> None:
    cfg = json.loads((demo_model_dir() / "config.json").read_text())
    hidden, inter = cfg["hidden_size"], cfg["intermediate_size"]
    # q k v o gate up down per layer; 96 divides none of the demo model's widths (multiples of 256)
    assert hidden % 96 and inter % 96 and (cfg["num_attention_heads"] * cfg["head_dim"]) % 96
    with pytest.raises(InputError) as e:
        convert_gptq(demo_model_dir(), tmp_path / "o", group_size=96)
    assert f"{7 * cfg['num_hidden_layers']} layers" in e.value.message
    assert f"model.layers.0.mlp.up_proj (in {hidden}, out {inter})" in e.value.message
    assert "--group-size 128" in (e.value.hint or "")


def test_empty_and_short_calibration(tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n\n", encoding="utf-8")
    code, text = _cli("convert", str(demo_model_dir()), "--to", "gptq", "-o", str(tmp_path / "a"),
                      "--calibration", str(empty))
    assert code == 1 and "is empty" in text
    short = tmp_path / "short.txt"
    short.write_text("def f(x):\n    return x + 1\n" * 20, encoding="utf-8")
    with pytest.raises(InputError) as e:
        convert_gptq(demo_model_dir(), tmp_path / "b", calibration=short, samples=8, seq_len=128)
    assert "too short for 8 samples of 128 tokens" in e.value.message and "--samples" in (e.value.hint or "")
    assert not (tmp_path / "b").exists()


def test_missing_llmcompressor_is_a_dependency_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "llmcompressor", None)  # import fails as when not installed
    code, text = _cli("convert", str(demo_model_dir()), "--to", "gptq", "-o", str(tmp_path / "o"))
    assert code == 1 and "llmcompressor is needed" in text and "pip install" in text
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("calibrated,evaluated", [("code", "prose"), ("prose", "code")])
def test_gptq_beats_symmetric_rtn_across_domains(tmp_path: Path, calibrated: str, evaluated: str) -> None:
    """GPTQ with the default settings, calibrated on one domain of the packaged calibration mix and
    scored on another domain of the (disjoint) evaluation mix, still beats round-to-nearest on the
    same grid: what the method guarantees is a lower error than rounding, not a given figure.
    (benchmarks/gptq_domains.py: GPTQ's KL is 0.3-0.5x RTN's here, so the order is not marginal.)"""
    from edgekit.converters import textsets

    cal = tmp_path / f"{calibrated}.txt"
    cal.write_text(textsets.packaged("calibration", calibrated).text(), encoding="utf-8")
    out = tmp_path / "out"
    convert_gptq(demo_model_dir(), out, name="demo", calibration=cal, heldout_text=textsets.eval_text(evaluated),
                 **SMALL)
    m = json.loads((out / "edgekit.json").read_text())
    entry = next(a for a in m["artifacts"] if a["format"] == "gptq")
    g, r = entry["extra"]["gptq"], entry["extra"]["rtn"]
    assert entry["extra"]["calibration"]["source"] == str(cal)
    assert g["n_tokens"] == r["n_tokens"] >= 1000
    assert g["mean_kl"] < r["mean_kl"]
