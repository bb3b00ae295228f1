"""Bad input through the real CLI: one clear line naming problem and fix, exit 1, nothing partial."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgekit.cli import main


def _run(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(main, list(args))
    return r.exit_code, r.output


def _one_error_line(out: str) -> str:
    lines = [ln for ln in out.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, out
    return lines[0]


def _copy(model: Path, dst: Path) -> Path:
    shutil.copytree(model, dst)
    return dst


@pytest.mark.parametrize("fmt", ["gguf", "onnx", "gptq"])
def test_missing_directory(tmp_path: Path, fmt: str) -> None:
    code, out = _run("convert", str(tmp_path / "nope"), "--to", fmt, "-o", str(tmp_path / "o"))
    assert code == 1 and "does not exist" in _one_error_line(out)


def test_no_config(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    code, out = _run("convert", str(tmp_path / "m"), "-o", str(tmp_path / "o"))
    assert code == 1 and "no config.json" in _one_error_line(out)


@pytest.mark.parametrize("fmt", ["gguf", "onnx"])
def test_unsupported_architecture_lists_supported(llama_bpe: Path, tmp_path: Path, fmt: str) -> None:
    m = _copy(llama_bpe, tmp_path / "m")
    cfg = json.loads((m / "config.json").read_text())
    cfg["architectures"] = ["FalconForCausalLM"]
    (m / "config.json").write_text(json.dumps(cfg))
    code, out = _run("convert", str(m), "--to", fmt, "-o", str(tmp_path / "o"))
    line = _one_error_line(out)
    assert code == 1 and "FalconForCausalLM" in line and "qwen3" in line and "gemma3" in line
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_safetensors(llama_bpe: Path, tmp_path: Path, damage: str) -> None:
    m = _copy(llama_bpe, tmp_path / "m")
    w = m / "model.safetensors"
    data = w.read_bytes()
    w.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x00\x01garbage" * 100)
    code, out = _run("convert", str(m), "-o", str(tmp_path / "o"))
    line = _one_error_line(out)
    assert code == 1 and "model.safetensors" in line and ("past the end" in line or "header" in line)
    assert not list((tmp_path / "o").glob("*.gguf")) if (tmp_path / "o").exists() else True


def test_unknown_quant_lists_valid(llama_bpe: Path, tmp_path: Path) -> None:
    code, out = _run("convert", str(llama_bpe), "-q", "f16,q4_k_x", "-o", str(tmp_path / "o"))
    line = _one_error_line(out)
    assert code == 1 and "q4_k_x" in line and "q4_k_m" in line and "q8_0" in line
    assert not (tmp_path / "o").exists()  # rejected before anything was written


def test_adapter_for_another_base(llama_bpe: Path, model_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    other = AutoModelForCausalLM.from_pretrained(model_factory("qwen2"))  # has biases, other names are equal...
    cfg = other.config
    cfg.hidden_size, cfg.intermediate_size, cfg.head_dim = 512, 1024, 128  # ...but another width
    other = type(other)(cfg)
    get_peft_model(other, LoraConfig(r=4, target_modules=["q_proj"])).save_pretrained(tmp_path / "adapter")
    code, out = _run("convert", str(llama_bpe), "--adapter", str(tmp_path / "adapter"), "-o", str(tmp_path / "o"))
    line = _one_error_line(out)
    assert code == 1 and "another base model" in line


def test_output_dir_not_writable(llama_bpe: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, out = _run("convert", str(llama_bpe), "-o", str(blocker / "sub"))
    assert code == 1 and "output directory" in _one_error_line(out)


def test_disk_full_leaves_nothing(llama_bpe: Path, tmp_path: Path) -> None:
    """A real 256 KiB filesystem: the f32 GGUF (~9 MiB) cannot fit."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], check=True)
    try:
        code, out = _run("convert", str(llama_bpe), "-q", "f32", "--no-verify", "-o", str(mnt))
        assert code == 1 and "disk full" in _one_error_line(out)
        assert list(mnt.iterdir()) == []
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_truncated_gguf_is_refused_before_loading(llama_bpe: Path, tmp_path: Path) -> None:
    code, _ = _run("convert", str(llama_bpe), "--no-verify", "-o", str(tmp_path / "o"), "--quiet")
    assert code == 0
    (gguf_file,) = (tmp_path / "o").glob("*.gguf")
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(gguf_file.read_bytes()[:-5000])
    for cmd in (["inspect", str(cut)], ["run", str(cut), "-p", "hi"]):
        code, out = _run(*cmd)
        line = _one_error_line(out)
        assert code == 1 and "cut.gguf" in line and ("past the end" in line or "truncated" in line)
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGML" + b"\x00" * 100)
    code, out = _run("run", str(bad), "-p", "hi")
    assert code == 1 and "not" in _one_error_line(out)
