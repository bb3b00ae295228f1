"""`edgekit profile calibrate` times llama.cpp's kernels per weight type; the cost model uses them.

Nothing here depends on how fast this CPU is: the tests check that the measurement runs real
llama.cpp and yields positive rates that survive the profile file, and that a prediction moves
exactly as the measured table says it must when the table changes.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgekit import cli
from edgekit._compat import tomllib
from edgekit.profiles import costs, schema, shapes, store
from edgekit.profiles.kernels import QUICK_TYPES

# dimensions that differ from each other; every matrix's rows split into 256-blocks
CONFIG = {"architectures": ["LlamaForCausalLM"], "hidden_size": 512, "intermediate_size": 1536,
          "num_hidden_layers": 4, "num_attention_heads": 8, "num_key_value_heads": 2, "head_dim": 64,
          "vocab_size": 2048, "max_position_embeddings": 2048, "tie_word_embeddings": False}


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory: pytest.TempPathFactory) -> schema.Profile:
    """`edgekit profile calibrate --quick` run for real, saved to a temporary EDGEKIT_HOME."""
    home = tmp_path_factory.mktemp("home")
    mp = pytest.MonkeyPatch()
    mp.setenv("EDGEKIT_HOME", str(home))
    mp.setitem(cli.COMMANDS, "profile", ("profile", "profile", "Hardware profiles."))
    try:
        r = CliRunner().invoke(cli.main, ["profile", "calibrate", "--quick", "--threads", "1", "--seconds", "1",
                                          "--name", "kq", "--json"])
        assert r.exit_code == 0, r.output
        out = json.loads(r.output)
        assert out["saved_to"] and Path(out["saved_to"]).is_file()
        profile = store.load_profile_file(Path(out["saved_to"]), schema.Origin.CALIBRATED)
        assert out["kernels"]["types"].keys() == set(QUICK_TYPES)
    finally:
        mp.undo()
    return profile


def test_quick_calibration_stores_a_kernel_table(calibrated: schema.Profile) -> None:
    k = calibrated.kernels
    assert k is not None and k.source is schema.SourceKind.MEASURED and k.threads == 1
    assert set(k.types) == set(QUICK_TYPES)
    for rate in k.types.values():
        sizes = [mib for mib, _ in rate.decode]
        assert len(sizes) == 2 and sizes == sorted(sizes) and sizes[0] < sizes[1]
        assert all(gbs > 0 for _, gbs in rate.decode) and rate.prompt_gflops > 0
    # the file says it all again
    again = schema.parse_profile(tomllib.loads(store.dump_toml(calibrated)), "again", origin=schema.Origin.CALIBRATED)
    assert again.kernels == k


def _estimate(profile: schema.Profile, quant: str) -> costs.Cost:
    s = shapes.model_shapes(CONFIG)
    w = shapes.gguf_weights(s, quant)
    return costs.estimate(s, w, schema.Runtime.LLAMA_CPP, schema.Backend.CPU, profile, ctx=512, kv_fill=16,
                          prompt_len=128, threads=1)


def _scaled(profile: schema.Profile, type_name: str, factor: float) -> schema.Profile:
    k = profile.kernels
    assert k is not None
    r = k.types[type_name]
    faster = schema.KernelRate(tuple((m, g * factor) for m, g in r.decode), r.prompt_gflops * factor)
    return dataclasses.replace(profile, kernels=dataclasses.replace(k, types={**k.types, type_name: faster}))


def test_the_cost_model_uses_the_measured_kernels(calibrated: schema.Profile) -> None:
    s = shapes.model_shapes(CONFIG)
    f16 = shapes.gguf_weights(s, "f16")
    matmul = {t: (n, b) for t, (n, b) in costs._matmul_groups(s, f16, schema.Runtime.LLAMA_CPP, None).items()}
    assert set(matmul) == {"F16"}
    n, b = matmul["F16"]
    base, fast = _estimate(calibrated, "f16"), _estimate(_scaled(calibrated, "F16", 2.0), "f16")
    assert calibrated.kernels is not None
    rate = costs.kernel_read_rate(calibrated.kernels.types["F16"], f16.per_token_bytes + shapes.kv_cache_bytes(s, 16))
    # twice the measured rate takes exactly half the F16 matmul time off a token, and off the prompt
    assert 1 / base.gen_tps - 1 / fast.gen_tps == pytest.approx(b / rate / 2, rel=1e-9)
    gflops = calibrated.kernels.types["F16"].prompt_gflops * 1e9
    head = CONFIG["hidden_size"] * CONFIG["vocab_size"]  # the prompt asks for the last token's logits only
    ffn = 3 * CONFIG["hidden_size"] * CONFIG["intermediate_size"]  # and the last layer's FFN
    n_prompt = n - (head + ffn) * 127 // 128
    assert 1 / base.prompt_tps - 1 / fast.prompt_tps == pytest.approx(2 * n_prompt / gflops / 2, rel=1e-9)
    # without the table the same profile predicts from the shares fitted on another CPU
    bare = dataclasses.replace(calibrated, kernels=None)
    assert _estimate(bare, "f16").gen_tps != base.gen_tps
    # a type the table lacks keeps the fitted shares: only the Q4_K part of q4_k_m moves
    q4, q4_fast = _estimate(calibrated, "q4_k_m"), _estimate(_scaled(calibrated, "Q4_K", 2.0), "q4_k_m")
    groups = costs._matmul_groups(s, shapes.gguf_weights(s, "q4_k_m"), schema.Runtime.LLAMA_CPP, None)
    assert {"Q4_K", "Q6_K"} <= set(groups)
    per_token = shapes.gguf_weights(s, "q4_k_m").per_token_bytes + shapes.kv_cache_bytes(s, 16)
    q4_rate = costs.kernel_read_rate(calibrated.kernels.types["Q4_K"], per_token)
    assert 1 / q4.gen_tps - 1 / q4_fast.gen_tps == pytest.approx(groups["Q4_K"][1] / q4_rate / 2, rel=1e-9)
    # the datasheet path is untouched: a shipped profile has no kernel table
    assert store.get_profile("raspberry-pi-5-8gb").kernels is None


def test_kernel_rate_interpolates_in_log_size() -> None:
    r = schema.KernelRate(((1.0, 40.0), (64.0, 10.0)), 30.0)
    assert costs.kernel_read_rate(r, 0.5 * 2**20) == 40e9 and costs.kernel_read_rate(r, 2**30) == 10e9
    assert costs.kernel_read_rate(r, 8 * 2**20) == pytest.approx(25e9)  # halfway in log size


def test_a_malformed_kernel_table_names_the_field(tmp_path: Path) -> None:
    data = tomllib.loads((store.DATA_DIR / "x86-laptop-ddr5.toml").read_text())
    data["kernels"] = {"threads": 1, "source": "measured", "types": {"Q4_KK": {"decode": [[1.0, 2.0]],
                                                                               "prompt_gflops": 3.0}}}
    path = tmp_path / "x86-laptop-ddr5.toml"
    path.write_text(store.dict_to_toml(data))
    with pytest.raises(schema.ProfileFormatError) as e:
        store.load_profile_file(path)
    assert e.value.field == "kernels.types.Q4_KK" and "ggml type" in e.value.problem


# -- recommend: i-quants, and artifacts costed from their real types ------------------------

def test_recommend_lists_i_quants_and_marks_those_that_need_an_imatrix(tmp_path: Path) -> None:
    from edgekit.profiles import planner

    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(CONFIG))
    p = planner.plan(d, store.get_profile("raspberry-pi-5-8gb"), ctx=1024)
    gguf = {c.quant: c for c in p.candidates if c.format is planner.Format.GGUF}
    assert set(planner.I_QUANT_CANDIDATES) <= set(gguf)
    # rows of 512 and 1536 split into 256-blocks: the 1-3 bit types keep their i-quant tensors
    assert {q for q, c in gguf.items() if c.needs_imatrix} == {"iq3_xs", "iq3_xxs", "iq2_m", "iq2_s", "iq2_xs",
                                                               "iq2_xxs", "iq1_m", "iq1_s"}
    assert not gguf["iq4_xs"].needs_imatrix and gguf["iq4_xs"].cost.weights_bytes < gguf["q4_k_m"].cost.weights_bytes
    assert any("--imatrix" in n for n in p.notes)
    # SmolLM2's rows of 576 fall back to IQ4_NL: there iq2_xxs needs one only for ffn_down (rows of 1536)
    smol = {**CONFIG, "hidden_size": 576, "num_attention_heads": 9, "num_key_value_heads": 3}
    (d / "config.json").write_text(json.dumps(smol))
    p = planner.plan(d, store.get_profile("raspberry-pi-5-8gb"), ctx=1024)
    iq3_xs = next(c for c in p.candidates if c.quant == "iq3_xs")
    assert not iq3_xs.needs_imatrix  # its IQ3_XXS tensors (attn_q/k, rows of 576) fell back


def test_recommend_costs_a_fitted_artifact_from_its_file(tmp_path: Path) -> None:
    """A manifest GGUF of no stock type (the way a fitted mix is recorded) is a candidate, costed
    from the types llama.cpp really wrote; a stock type's file replaces its prediction."""
    from test_profiles import make_gguf

    from edgekit.converters.gguf.inspect import read_gguf
    from edgekit.converters.gguf.quantize import quantize_file
    from edgekit.converters.gguf.quants import quant
    from edgekit.manifest import ArtifactEntry, Manifest
    from edgekit.profiles import planner

    d = tmp_path / "out"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(CONFIG))
    f16 = make_gguf(d / "m-f16.gguf", CONFIG, "f16")
    mix = d / "m-fit-3mb.gguf"  # attention at q8_0, FFN at q2_k, head q6_k: no stock type is that
    quantize_file(f16, mix, quant("q4_k_m"), threads=2,
                  tensor_types=[(r"attn_.*\.weight", "Q8_0"), (r"ffn_.*\.weight", "Q2_K")])
    real = {t.name: t.type for t in read_gguf(mix).tensors}
    entries = [ArtifactEntry(file=f.name, format="gguf", quant=q, precision="x", size_bytes=f.stat().st_size,
                             sha256="0" * 64, verification=None) for f, q in ((f16, "f16"), (mix, "fit-3mb"))]
    Manifest(source={}, artifacts=entries).save(d)
    p = planner.plan(d, store.get_profile("raspberry-pi-5-8gb"), ctx=1024)
    by = {c.quant: c for c in p.candidates if c.format is planner.Format.GGUF}
    fit = by["fit-3mb"]
    assert fit.types_from == "file" and fit.artifact == mix.name
    assert fit.cost.weights_bytes == sum(t.nbytes for t in read_gguf(mix).tensors)
    assert real["blk.0.attn_q.weight"] == "Q8_0" and real["blk.0.ffn_up.weight"] == "Q2_K"
    # neither q4_k_m's nor q2_k's prediction: its own size between theirs
    assert by["q2_k"].cost.weights_bytes < fit.cost.weights_bytes < by["q8_0"].cost.weights_bytes
    assert fit.cost.weights_bytes not in {c.cost.weights_bytes for q, c in by.items() if q != "fit-3mb"}
    assert by["f16"].types_from == "file" and by["q4_k_m"].types_from == "predicted"
    assert fit.quality.source is planner.QualitySource.ESTIMATED  # not verified: the nearest stock type's
    r = CliRunner().invoke(cli.main, ["recommend", str(d), "--profile", "raspberry-pi-5-8gb", "--ctx", "1024"])
    assert r.exit_code == 0, r.output
    row = next(line for line in r.output.splitlines() if "gguf fit-3mb" in line)
    assert "file's types" in row
    assert "needs --imatrix" in next(line for line in r.output.splitlines() if "gguf iq2_xxs" in line)
