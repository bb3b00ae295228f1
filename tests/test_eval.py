"""`edgekit eval`: perplexity and KL statistics on the demo model, against an artifact and
against the transformers source."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgekit.bench.evaluate import evaluate
from edgekit.cli import main
from edgekit.converters.verify import LOGIT_BOUNDS
from edgekit.demo import demo_model_dir, heldout_path
from edgekit.errors import EdgekitError

# the demo model was trained on 256-token sequences
CTX, CHUNKS = 256, 4


def test_identical_models_give_zero_kl(demo_out: Path) -> None:
    f16 = demo_out / "demo-f16.gguf"
    r = evaluate(f16, heldout_path(), reference=f16, n_ctx=CTX, max_chunks=CHUNKS)
    assert r.kl is not None and r.chunks == CHUNKS and r.tokens_scored == CHUNKS * (CTX // 2)
    assert r.kl.mean == 0.0 and r.kl.max == 0.0 and r.kl.same_top1_pct == 100.0
    assert r.ppl == r.ppl_ref and r.ppl_ratio == 1.0 and r.mean_ln_ppl_ratio == 0.0
    assert 5 < r.ppl < 200  # a trained model on held-out text, not a uniform guess (1024)


def test_quantized_model_has_positive_kl(demo_out: Path) -> None:
    r = evaluate(demo_out / "demo-q4_k_m.gguf", heldout_path(), reference=demo_out / "demo-f16.gguf", n_ctx=CTX,
                 max_chunks=CHUNKS)
    k = r.kl
    assert k is not None and k.mean > 1e-4 and k.same_top1_pct < 100.0 and r.ppl != r.ppl_ref
    p = k.percentiles
    assert k.min <= p["p10"] <= p["p50"] <= p["p90"] <= p["p95"] <= p["p99"] <= p["p99_9"] <= k.max
    assert k.stderr > 0 and k.rms_delta_p_pct > 0


def test_against_the_transformers_source(demo_out: Path) -> None:
    f16 = evaluate(demo_out / "demo-f16.gguf", heldout_path(), reference=demo_model_dir(), n_ctx=CTX,
                   max_chunks=2)
    q4 = evaluate(demo_out / "demo-q4_k_m.gguf", heldout_path(), reference=demo_model_dir(), n_ctx=CTX,
                  max_chunks=2)
    assert f16.kl is not None and q4.kl is not None
    assert 0 < f16.kl.mean < LOGIT_BOUNDS["float32"].max_mean_kl  # f16 rounding only
    assert q4.kl.mean > 10 * f16.kl.mean
    assert f16.ppl_ref == pytest.approx(q4.ppl_ref)  # same reference, same token ids


def test_cli_eval_json(demo_out: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval.json"
    res = CliRunner().invoke(main, ["eval", str(demo_out / "demo-q4_k_m.gguf"), "--reference",
                                    str(demo_out / "demo-f16.gguf"), "--ctx", str(CTX), "--chunks", "2", "--json",
                                    "-o", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["kl"]["mean"] > 0 and data["tokens_scored"] == 2 * CTX // 2 and json.loads(out.read_text()) == data
    res = CliRunner().invoke(main, ["eval", str(demo_out / "demo-q4_k_m.gguf"), "--ctx", str(CTX), "--chunks", "1"])
    assert res.exit_code == 0 and "PPL" in res.output and "KLD" not in res.output  # no reference: perplexity only


def test_bad_input(demo_out: Path, tmp_path: Path) -> None:
    f16 = demo_out / "demo-f16.gguf"
    short = tmp_path / "short.txt"
    short.write_text("def f(): pass\n")
    cases = [
        (["eval", str(tmp_path / "missing.gguf")], "does not exist"),
        (["eval", str(f16), "--text", str(tmp_path / "nope.txt")], "text file"),
        (["eval", str(f16), "--text", str(short), "--ctx", str(CTX)], "fewer than one chunk"),
        (["eval", str(f16), "--reference", str(tmp_path / "ref"), "--ctx", str(CTX)], "reference"),
    ]
    for args, msg in cases:
        res = CliRunner().invoke(main, args)
        assert res.exit_code == 1 and msg in res.output, (args, res.output)
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"\xff\xfe\x00garbage" * 10)
    with pytest.raises(EdgekitError, match="not UTF-8"):
        evaluate(f16, binary)
