"""Correctness vs quality: broken artifacts are refused at any precision, lossy ones kept and reported.

The trained demo model is the subject (random weights make quantization loss noise). A broken
quantized artifact is built by editing an honest one on disk -- rows of one tensor permuted
in a q4_k_m GGUF, one MatMulNBits node of an ONNX int4 graph pointed at another layer's
weights -- and must fail the correctness check, while an honest q2_k of the same model (which
loses far more quality than either edit would show in a perplexity) passes it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgekit.converters.gguf.convert import check_gguf, convert_gguf
from edgekit.converters.quality import (
    EvalSettings,
    QualityGate,
    QualitySettings,
    ReferenceScores,
    make_windows,
    score_artifact,
)
from edgekit.demo import demo_model_dir
from edgekit.errors import InputError, VerificationError

FAST = QualitySettings(EvalSettings(tokens=2048))  # enough to rank q2_k below q4_k_m on the demo model


@pytest.fixture(scope="module")
def demo_quants(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("quality")
    res = convert_gguf(demo_model_dir(), out, "q4_k_m,q2_k", name="demo", quality=FAST)
    return out, res


def _permute_rows(src: Path, dst: Path, tensor: str) -> None:
    """Copy a GGUF, with the rows of one (quantized) tensor in another order."""
    import gguf

    r = gguf.GGUFReader(src)
    w = gguf.GGUFWriter(dst, arch=str(r.fields["general.architecture"].contents()))
    for f in r.fields.values():
        if f.name.startswith("GGUF.") or f.name == "general.architecture":
            continue
        vtype = f.types[0]
        sub = f.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(f.name, f.contents(), vtype, sub_type=sub)
    for t in r.tensors:
        data = np.array(t.data)
        if t.name == tensor:
            data = data[np.random.default_rng(0).permutation(data.shape[0])]
        w.add_tensor(t.name, data, raw_shape=data.shape, raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_honest_q2_k_is_correct_and_lossy_and_kept(demo_quants: tuple[Path, object]) -> None:
    out, res = demo_quants
    m = json.loads((out / "edgekit.json").read_text())
    by = {a["quant"]: a for a in m["artifacts"]}
    assert set(by) == {"q4_k_m", "q2_k"} and all((out / a["file"]).is_file() for a in by.values())
    q2, q4 = by["q2_k"]["verification"], by["q4_k_m"]["verification"]
    assert q2["passed"] and q2["correctness"]["passed"]
    # correct: the runtime computes what the file's own weights say, as tightly at q2_k as at q4_k_m
    assert q2["correctness"]["logits"]["rel_err"] < 0.15 and q4["correctness"]["logits"]["rel_err"] < 0.15
    # lossy: measured against the original source on the evaluation set, more loss for fewer bits
    assert q2["n_positions"] >= 2048 and q2["mean_kl"] > q4["mean_kl"] > 0
    assert q2["p99_kl"] >= q2["mean_kl"] and 0 < q2["top1"] < 1
    lo, hi = q2["ppl_delta_ci95_pct"]
    assert lo <= q2["ppl_delta_pct"] <= hi
    # the loss is large enough to be said in words, and it is in the manifest
    assert q2["warning"] and "q2_k" in q2["warning"] and "mean KL" in q2["warning"]
    assert q2["warning"] in res.warnings  # type: ignore[attr-defined]
    assert q4["warning"] is None or q4["mean_kl"] > 0.1 or q4["ppl_delta_pct"] > 10


def test_permuted_tensor_in_q4_k_m_is_broken(demo_quants: tuple[Path, object], tmp_path: Path) -> None:
    out, _ = demo_quants
    bad = tmp_path / "demo-q4_k_m.gguf"
    _permute_rows(out / "demo-q4_k_m.gguf", bad, "blk.1.ffn_down.weight")
    with pytest.raises(VerificationError) as e:
        check_gguf(demo_model_dir(), bad, quality=FAST)
    assert "weights" in str(e.value) and "model.layers.1.mlp.down_proj.weight" in str(e.value)
    # the honest file passes the same check
    assert check_gguf(demo_model_dir(), out / "demo-q2_k.gguf", quality=FAST)["correctness"]["passed"]


def test_gate_refuses_one_artifact_and_keeps_the_others(tmp_path: Path) -> None:
    gate = QualitySettings(FAST.eval, QualityGate(max_kl=0.1))
    res = convert_gguf(demo_model_dir(), tmp_path, "q8_0,q2_k,q4_k_m", name="demo", quality=gate)
    kept = sorted(a.quant for a in res.artifacts)
    assert kept == ["q4_k_m", "q8_0"]
    assert [r["quant"] for r in res.refused] == ["q2_k"] and "--max-kl" in res.refused[0]["reasons"][0]
    assert not (tmp_path / "demo-q2_k.gguf").exists()
    assert not list(tmp_path.glob(".edgekit-tmp*"))
    m = json.loads((tmp_path / "edgekit.json").read_text())
    assert sorted(a["quant"] for a in m["artifacts"]) == kept


def test_reference_scores_topk_tail_bounds_the_full_kl() -> None:
    """Large vocabularies store top-k + tail: KL is exact for the head and never above the full KL."""
    rng = np.random.default_rng(0)
    vocab, ids = 5000, rng.integers(0, 5000, 700).tolist()
    windows = make_windows(ids, [], n_ctx=128, eval_tokens=256)
    ref_logits = {i: rng.normal(0, 3, (len(w), vocab)) for i, w in enumerate(windows.windows)}
    art_logits = {i: x + rng.normal(0, 0.3, x.shape) for i, x in ref_logits.items()}

    def scorer(table: dict[int, np.ndarray]):  # type: ignore[no-untyped-def]
        def score(w: list[int], start: int):  # type: ignore[no-untyped-def]
            i = next(k for k, v in enumerate(windows.windows) if v is w)
            yield table[i][start:]
        return score

    full = ReferenceScores.collect(windows, scorer(ref_logits), vocab)
    assert full.full  # 256 x 5000 is small: full rows
    exact = score_artifact(full, windows, scorer(art_logits))
    import edgekit.converters.quality as q

    old = q.FULL_ROWS_MAX
    q.FULL_ROWS_MAX = 1
    try:
        top = ReferenceScores.collect(windows, scorer(ref_logits), vocab)
    finally:
        q.FULL_ROWS_MAX = old
    assert not top.full and top.log_probs.shape[1] == q.TOP_K
    approx = score_artifact(top, windows, scorer(art_logits))
    assert approx.mean_kl <= exact.mean_kl + 1e-9 and approx.mean_kl > 0.2 * exact.mean_kl
    assert (approx.top1, approx.ppl, approx.ppl_ref) == pytest.approx((exact.top1, exact.ppl, exact.ppl_ref))


def test_eval_settings_are_checked() -> None:
    with pytest.raises(InputError, match="eval"):
        make_windows(list(range(100)), [], eval_tokens=0)
    with pytest.raises(InputError, match="fewer than one window"):
        make_windows(list(range(100)), [1], n_ctx=512)


def test_onnx_int4_reading_another_layers_weights_is_broken(tmp_path: Path) -> None:
    import onnx

    from edgekit.converters.onnx.convert import check_onnx, convert_onnx

    res = convert_onnx(demo_model_dir(), tmp_path / "ok", "int4", name="demo", quality=FAST)
    good = tmp_path / "ok" / res.artifacts[0].file
    assert res.artifacts[0].verification["correctness"]["passed"]  # type: ignore[index]
    bad = tmp_path / "bad" / good.name
    import shutil

    shutil.copytree(good, bad)
    m = onnx.load(str(bad / "model.onnx"), load_external_data=False)
    node = next(n for n in m.graph.node if n.name == "/model/layers.1/mlp/up_proj/MatMul_Q4")
    wrong = "model.layers.1.mlp.gate_proj.MatMul.weight"
    node.input[1:4] = [f"{wrong}_Q4G32", f"{wrong}_scale", f"{wrong}_zp"][: len(node.input) - 1]
    onnx.save(m, str(bad / "model.onnx"))  # the external data file is untouched
    with pytest.raises(VerificationError, match="logits"):
        check_onnx(demo_model_dir(), bad, quality=FAST)


def test_cli_gate_keeps_the_others_and_exits_1(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from edgekit.cli import main

    out = tmp_path / "o"
    r = CliRunner().invoke(main, ["convert", str(demo_model_dir()), "-q", "q8_0,q2_k", "--max-kl", "0.1",
                                  "--eval-tokens", "1024", "--threads", "1", "-o", str(out), "--quiet"])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert "q2_k" in r.output.splitlines()[-1] and "--max-kl" in r.output.splitlines()[-1]
    assert (out / f"{demo_model_dir().name}-q8_0.gguf").is_file() and not list(out.glob("*q2_k*"))
    r = CliRunner().invoke(main, ["convert", str(demo_model_dir()), "--max-kl", "-1", "-o", str(tmp_path / "x")])
    assert r.exit_code == 1 and "--max-kl / max_kl=" in r.output and not (tmp_path / "x").exists()


def test_top1_is_judged_only_where_the_source_is_decisive() -> None:
    """Near-ties (a random model's flat logits) are decided by runtime arithmetic; a clear top-1 is not."""
    from edgekit.converters.verify import DECISIVE_NATS, compare

    rng = np.random.default_rng(0)
    flat = rng.normal(0, 0.05, size=(100, 1000)).astype(np.float32)
    noise = rng.normal(0, 0.05, size=flat.shape).astype(np.float32)
    m = compare([flat], [flat + noise])
    assert m.n_decisive == 0 and m.top1 < 0.9  # the argmax of near-ties is noise
    peaked = flat.copy()
    peaked[np.arange(100), rng.integers(0, 1000, 100)] += 2 * DECISIVE_NATS
    m = compare([peaked], [peaked + noise])
    assert m.n_decisive == 100 and m.top1_decisive == 1.0
    m = compare([peaked], [peaked[::-1].copy()])  # another position's distribution: broken
    assert m.n_decisive == 100 and m.top1_decisive < 0.1
