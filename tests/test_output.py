"""Output a person can read: one line per artifact for llama.cpp's type fallbacks, third-party
chatter in the log instead of the terminal, one format per table column."""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgekit.cli import main
from edgekit.converters.gguf.quants import quant
from edgekit.ui import KL, PPL_DELTA, TOP1, Column, format_table

# Rows of 384 weights: not a multiple of 256, so llama.cpp's k-quants fall back to legacy
# types for every matrix that reads the hidden state (q/k/v, gate/up, the embedding), as
# for SmolLM2-135M (576). attn_output (rows of 256) and ffn_down (768) keep their k-quant.
HIDDEN_384, INTERMEDIATE, VOCAB = 384, 768, 1024


@pytest.fixture(scope="module")
def llama_384(bpe_tok: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    import transformers as T

    torch.manual_seed(0)
    cfg = T.LlamaConfig(hidden_size=HIDDEN_384, intermediate_size=INTERMEDIATE, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, head_dim=64, vocab_size=VOCAB,
                        max_position_embeddings=1024, tie_word_embeddings=False)
    out = tmp_path_factory.mktemp("llama-384")
    T.LlamaForCausalLM(cfg).save_pretrained(out)
    for f in bpe_tok.iterdir():
        if f.is_file():
            shutil.copy(f, out / f.name)
    return out


def _file_types(path: Path) -> tuple[Counter[str], float, int]:
    """Straight from gguf-py: tensors per ggml type, bits per weight, matrices with rows % 256 != 0."""
    import gguf

    r = gguf.GGUFReader(path)
    types = Counter(t.tensor_type.name for t in r.tensors)
    bits = 8 * sum(int(t.n_bytes) for t in r.tensors) / sum(int(t.n_elements) for t in r.tensors)
    # the output head gets q8_0 by llama.cpp's rule, not as a fallback (it counts the others)
    odd = sum(1 for t in r.tensors if len(t.shape) >= 2 and int(t.shape[0]) % 256 != 0 and t.name != "output.weight")
    return types, bits, odd


def test_fallback_types_are_one_warning_per_artifact_and_recorded(
        llama_384: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import json

    out = tmp_path / "out"
    with caplog.at_level(logging.DEBUG):
        r = CliRunner().invoke(main, ["convert", str(llama_384), "-q", "q4_k_m,q2_k", "--no-verify", "-o", str(out)])
    assert r.exit_code == 0, r.output
    warnings = [rec for rec in caplog.records if rec.levelno >= logging.WARNING]
    fallback = [rec.getMessage() for rec in warnings if "fell back" in rec.getMessage()]
    assert len(fallback) == 2, [rec.getMessage() for rec in warnings]  # one per quantized artifact
    assert not [rec for rec in warnings if rec.name == "edgekit.llama_cpp"]  # per-tensor lines: debug only
    assert any(rec.name == "edgekit.llama_cpp" and rec.levelno == logging.DEBUG and "falling back" in rec.getMessage()
               for rec in caplog.records)
    entries = {a["quant"]: a for a in json.loads((out / "edgekit.json").read_text())["artifacts"]}
    table = r.stdout
    for name, entry in entries.items():
        types, bits, odd = _file_types(out / entry["file"])
        recorded = entry["extra"]
        assert Counter({k.upper(): v for k, v in recorded["tensor_types"].items()}) == types
        assert recorded["bits_per_weight"] == pytest.approx(bits, abs=1e-4)
        assert quant(name).bpw < recorded["bits_per_weight"] < 16
        # every matrix with rows of 384 left the k-quant family: that is what the warning counts
        assert recorded["fallback_tensors"] == odd > 0
        assert f"{odd} of {sum(types.values())} tensors fell back" in next(m for m in fallback if entry["file"] in m)
        assert types[quant(name).main_type] < types.most_common(1)[0][1]  # a "q2_k" that is mostly not q2_K
        row = next(line for line in table.splitlines() if line.startswith(entry["file"]))
        assert f" {recorded['bits_per_weight']:.2f} " in row


def test_demo_convert_shows_only_progress_and_the_table(tmp_path: Path) -> None:
    """What a newcomer sees first: no transformers bars, no tokenizer or device warnings."""
    out = tmp_path / "demo"
    # one quantized type and a short evaluation set: what is printed does not depend on either
    p = subprocess.run([sys.executable, "-m", "edgekit", "convert", "--demo", "-q", "q4_k_m", "--eval-tokens", "512",
                        "-o", str(out)],
                       # CI=1: transformers then propagates its log records to the root logger, and
                       # a CI job's log is where a newcomer first reads this output
                       capture_output=True, text=True, timeout=1800, env={**os.environ, "CI": "1"})
    assert p.returncode == 0, p.stderr
    lines = p.stderr.splitlines()
    # edgekit's own progress lines; its own warnings may add a line on a slow host (time estimate)
    own = re.compile(r"- |WARNING edgekit\.(?!third_party|llama_cpp)")
    assert any(line.startswith("- ") for line in lines) and all(own.match(line) for line in lines), p.stderr
    for noise in ("Loading weights", "it/s]", "ignore_merges", "\r", "Warning"):
        assert noise not in p.stderr
    header, rule, *rows = p.stdout.splitlines()[:3]
    assert header.split()[:5] == ["artifact", "format", "quant", "size", "bpw"] and set(rule) <= {"-", " "}
    cells = dict(zip(re.split(r"\s{2,}", header), re.split(r"\s{2,}", rows[0].strip()), strict=True))
    assert re.fullmatch(r"\d+\.\d%", cells["top-1"]), cells  # a percentage, one decimal
    assert re.fullmatch(r"[+-]\d+\.\d\d%", cells["ppl Δ"]), cells  # signed, two decimals
    assert re.fullmatch(r"\d\.\d\d", cells["bpw"]), cells
    assert re.fullmatch(r"0\.0*[1-9]\d\d|[1-9]\.\d\de-\d\d", cells["mean KL"]), cells  # 3 significant digits


def test_third_party_chatter_is_in_the_log_with_v(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """-v: transformers' bar (loading the reference) is an INFO record, not a bar on stderr."""
    from edgekit.converters.gguf.convert import convert_gguf
    from edgekit.demo import demo_model_dir

    convert_gguf(demo_model_dir(), tmp_path, "q8_0", name="demo", verify_artifacts=False)
    with caplog.at_level(logging.INFO):
        r = CliRunner().invoke(main, ["-v", "eval", str(tmp_path / "demo-q8_0.gguf"), "--reference",
                                      str(demo_model_dir()), "--ctx", "64", "--chunks", "1"])
    assert r.exit_code == 0, r.output
    assert "Loading weights" not in r.stderr
    third = [rec for rec in caplog.records if rec.name.startswith("edgekit.third_party")]
    assert any("Loading weights" in rec.getMessage() and rec.levelno == logging.INFO for rec in third), third
    import transformers.utils.logging as tlog

    assert tlog.is_progress_bar_enabled()  # put back after the command


def test_one_format_per_column() -> None:
    """A column of mixed magnitudes prints every cell the same way."""
    rows = [[1.0, 1.0, 6.7e-07, 0.0018], [0.9832, 0.9832, 0.0152, -0.1297], [0.5, 0.5, 0.2, 12.0]]
    table = format_table([Column("plain"), TOP1, KL, PPL_DELTA], rows)
    cells = [re.split(r"\s{2,}", line.strip()) for line in table.splitlines()[2:]]
    assert [c[0] for c in cells] == ["1.000", "0.983", "0.500"]  # one number of decimals for the column
    assert [c[1] for c in cells] == ["100.0%", "98.3%", "50.0%"]
    assert [c[2] for c in cells] == ["6.70e-07", "0.0152", "0.200"]
    assert [c[3] for c in cells] == ["+0.00%", "-0.13%", "+12.00%"]
    assert format_table(["x"], [[None], [2.5]]).splitlines()[2:] == ["   -", "2.50"]
