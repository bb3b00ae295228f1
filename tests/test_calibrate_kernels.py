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
    assert 1 / base.prompt_tps - 1 / fast.prompt_tps == pytest.approx(2 * n / gflops / 2, rel=1e-9)
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
