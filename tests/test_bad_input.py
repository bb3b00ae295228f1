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


# -- every bad input is one line, never a traceback (CLI) and a typed error (Python API) -------------------


def _one_line_exit_1(out: str, code: int) -> str:
    """Exit 1 with one line besides edgekit's own progress lines (``- step: ...``): the
    ``error: ... -- ...`` line, and no traceback."""
    assert code == 1 and "Traceback" not in out, out
    assert len([ln for ln in out.strip().splitlines() if not ln.startswith("- ")]) == 1, out
    return _one_error_line(out)


@pytest.fixture(scope="module")
def gguf_artifact(llama_bpe: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edgekit.converters.gguf.convert import convert_gguf

    out = tmp_path_factory.mktemp("gguf-artifact")
    (entry,) = convert_gguf(llama_bpe, out, "f16", verify_artifacts=False).artifacts
    return out / entry.file


# (CLI flags, keyword arguments, what the line names)
GENERATION_CASES = [
    (["--max-tokens", "0"], {"max_tokens": 0}, "max_tokens must be an integer >= 1"),
    (["--temperature", "-0.5"], {"temperature": -0.5}, "temperature must be a number >= 0"),
    (["--top-p", "0"], {"top_p": 0.0}, "top_p must be a number in (0, 1]"),
    (["--top-p", "1.5"], {"top_p": 1.5}, "top_p must be a number in (0, 1]"),
    (["--seed", "-1"], {"seed": -1}, "seed must be an integer in [0, 2**32)"),
    (["--stop", ""], {"stop": [""]}, "stop must be non-empty strings"),
]


@pytest.mark.parametrize("flags,kwargs,needle", GENERATION_CASES, ids=[c[2].split()[0] + c[0][1] for c in GENERATION_CASES])
def test_bad_generation_options(gguf_artifact: Path, flags: list[str], kwargs: dict, needle: str) -> None:  # type: ignore[type-arg]
    import edgekit
    from edgekit.errors import InputError

    code, out = _run("run", str(gguf_artifact), "-p", "hello", *flags)
    line = _one_line_exit_1(out, code)
    assert needle in line and flags[0] in line  # the fix names the flag...
    with edgekit.load(gguf_artifact, n_ctx=256) as s:
        with pytest.raises(InputError) as e:
            s.generate("hello", **kwargs)
        assert needle in e.value.message and f"{next(iter(kwargs))}=" in (e.value.hint or "")  # ...and the keyword
        assert not isinstance(e.value, ValueError | TypeError)
        with pytest.raises(InputError, match=r"unknown generation option .max_token.*max_tokens"):
            s.generate("hello", max_token=4)  # a typo: was a TypeError from SamplingConfig


@pytest.mark.parametrize("flags,kwargs,needle", [
    (["--ctx", "-5"], {"n_ctx": -5}, "n_ctx must be an integer >= 0"),
    (["--threads", "0"], {"n_threads": 0}, "n_threads must be an integer >= 1"),
    (["--n-gpu-layers", "-2"], {"n_gpu_layers": -2}, "n_gpu_layers must be an integer >= -1"),
])
def test_bad_load_options(gguf_artifact: Path, flags: list[str], kwargs: dict, needle: str) -> None:  # type: ignore[type-arg]
    import edgekit
    from edgekit.errors import InputError

    code, out = _run("run", str(gguf_artifact), "-p", "hello", *flags)
    assert needle in _one_line_exit_1(out, code)
    with pytest.raises(InputError, match=needle):
        edgekit.load(gguf_artifact, **kwargs)


def _other_vocab_model(llama_bpe: Path, out: Path, vocab: int) -> Path:
    """The test model's shape with another vocabulary size (weights only: a reference needs no tokenizer)."""
    import transformers

    cfg = transformers.AutoConfig.from_pretrained(llama_bpe)
    cfg.vocab_size = vocab
    transformers.AutoModelForCausalLM.from_config(cfg).save_pretrained(out)
    return out


@pytest.mark.parametrize("vocab", [1280, 768])  # 768 < the tokenizer's 900 ids: a forward would fail inside torch
def test_eval_against_a_reference_with_another_vocabulary(gguf_artifact: Path, llama_bpe: Path, tmp_path: Path,
                                                          vocab: int) -> None:
    from edgekit.bench.evaluate import evaluate
    from edgekit.demo import heldout_path
    from edgekit.errors import InputError, VocabularyMismatchError

    ref = _other_vocab_model(llama_bpe, tmp_path / "ref", vocab)
    code, out = _run("eval", str(gguf_artifact), "--reference", str(ref), "--ctx", "64", "--chunks", "1")
    # one error line and no traceback; transformers' own loading bar is issue 12's item 2, not counted here
    assert code == 1 and "Traceback" not in out, out
    line = _one_error_line(out)
    assert f"{vocab}" in line and "1024" in line and "--reference / reference=" in line
    with pytest.raises(VocabularyMismatchError) as e:
        evaluate(gguf_artifact, heldout_path(), reference=ref, n_ctx=64, max_chunks=1)
    assert isinstance(e.value, InputError) and (e.value.reference_vocab, e.value.artifact_vocab) == (vocab, 1024)


def test_split_without_a_pattern(llama_bpe: Path, tmp_path: Path) -> None:
    from edgekit.converters.gguf.pretokenizers import describe_pre_tokenizer, detect_pre_tokenizer
    from edgekit.errors import InputError

    m = _copy(llama_bpe, tmp_path / "m")
    tj = json.loads((m / "tokenizer.json").read_text())
    split = next(n for n in tj["pre_tokenizer"]["pretokenizers"] if n["type"] == "Split")
    del split["pattern"]
    (m / "tokenizer.json").write_text(json.dumps(tj))
    code, out = _run("convert", str(m), "--no-verify", "-o", str(tmp_path / "o"))
    line = _one_line_exit_1(out, code)
    assert "Split pre-tokenizer has no pattern" in line and "save_pretrained" in line
    assert not list((tmp_path / "o").glob("*.gguf"))
    with pytest.raises(InputError, match="no pattern"):  # was ValueError("Split without a pattern")
        detect_pre_tokenizer(tj)
    assert "Split(/<no pattern>/" in describe_pre_tokenizer(tj)  # error messages render it, not crash on it


# -- options: what the CLI accepts, the Python API accepts, routed to the format it belongs to --------------


def test_python_api_routes_each_option_to_its_format(llama_bpe: Path, tmp_path: Path) -> None:
    import edgekit

    # was TypeError: target= was forwarded to convert_gguf too
    gguf, onnx = edgekit.convert(llama_bpe, tmp_path, to="gguf,onnx", quants="f16,fp32", target="cuda",
                                 verify=False)
    (g,) = gguf.artifacts
    (o,) = onnx.artifacts
    assert (g.format, g.quant, o.format, o.quant) == ("gguf", "f16", "onnx", "fp32")
    assert o.extra["target"] == "cuda" and o.extra["builder_ep"] == "cuda"
    assert "target" not in g.extra


def test_an_option_of_a_format_not_converted_is_an_error(llama_bpe: Path, tmp_path: Path) -> None:
    import edgekit
    from edgekit.errors import InputError, UnknownChoiceError

    out = tmp_path / "o"
    code, text = _run("convert", str(llama_bpe), "--to", "gguf", "--target", "cuda", "-o", str(out))
    line = _one_line_exit_1(text, code)
    assert "--target / target= applies to onnx only" in line and "add onnx to --to / to=" in line
    with pytest.raises(InputError, match="block_size= applies to onnx only"):
        edgekit.convert(llama_bpe, out, to="gguf", block_size=64)
    with pytest.raises(UnknownChoiceError) as e:
        edgekit.convert(llama_bpe, out, to="gguf", blocksize=64)
    assert "blocksize" in e.value.message and all(k in (e.value.hint or "") for k in ("block_size", "quants", "bits"))
    code, text = _run("convert", str(llama_bpe), "--to", "gguf", "--samples", "8", "-o", str(out))
    assert "--samples / samples= applies to gptq only" in _one_line_exit_1(text, code)
    assert not out.exists()  # refused before anything was read or written


@pytest.mark.parametrize("kwargs,needle", [
    ({"to": "onnx", "block_size": 48}, "unknown int4 block size '48'"),
    ({"to": "onnx", "int4_algo": "gptq"}, "unknown int4 algorithm 'gptq'"),
    ({"to": "gptq", "samples": 0}, "--samples / samples= must be at least 1"),
    ({"to": "gptq", "group_size": 0}, "--group-size / group_size= must be a positive number or -1"),
    ({"to": "gptq", "bits": "4"}, "--bits / bits= must be 4 or 8, not '4'"),
    ({"to": "gguf", "threads": 0}, "--threads / threads= must be an integer >= 1"),
    ({"to": "gguf", "verify": "no"}, "verify= must be True or False"),
    ({"to": "gptq,onnx", "quants": "int4,fp16"}, "is int4 only, not fp16"),
])
def test_option_records_check_their_values(llama_bpe: Path, tmp_path: Path, kwargs: dict, needle: str) -> None:  # type: ignore[type-arg]
    import edgekit
    from edgekit.errors import InputError

    with pytest.raises(InputError) as e:
        edgekit.convert(llama_bpe, tmp_path / "o", **kwargs)
    assert needle in e.value.one_line()
    assert not (tmp_path / "o").exists()


def test_option_records_are_the_cli_defaults() -> None:
    from edgekit.converters.options import GGUFOptions, GPTQOptions, ONNXOptions
    from edgekit.converters.plan import ConversionPlan, plan_conversion

    plan = plan_conversion("onnx,gptq,gguf", quants="q8_0")
    assert [type(r) for r in plan.formats] == [GPTQOptions, ONNXOptions, GGUFOptions]  # GPTQ before ONNX reads it
    assert plan.chained and plan.get(plan.formats[1].format).quant_names == ("int4",)  # ONNX from GPTQ: int4
    assert plan.formats[2].quant_names == ("q8_0",) and plan.formats[0].bits == 4
    assert plan_conversion("gptq", quants="int8").formats[0].bits == 8
    assert plan == ConversionPlan((GPTQOptions(), ONNXOptions(quants=("int4",)), GGUFOptions(quants=("q8_0",))))


# -- never lose a record -----------------------------------------------------------------------------------


def test_corrupt_manifest_is_refused_not_replaced(llama_bpe: Path, tmp_path: Path) -> None:
    import edgekit
    from edgekit.errors import CorruptFileError

    out = tmp_path / "o"
    out.mkdir()
    (out / "model-q4_k_m.gguf").write_bytes(b"GGUF an artifact whose record is in the manifest")
    damaged = b'{"schema": 1, "source": {"weights_sha256": "ab'  # cut short by a crash or an editor
    (out / "edgekit.json").write_bytes(damaged)
    code, text = _run("convert", str(llama_bpe), "--no-verify", "-o", str(out))
    line = _one_line_exit_1(text, code)
    assert str(out / "edgekit.json") in line and "not a valid edgekit manifest" in line and "repair it" in line
    with pytest.raises(CorruptFileError, match=r"edgekit\.json"):
        edgekit.convert(llama_bpe, out, verify=False)
    assert (out / "edgekit.json").read_bytes() == damaged  # left for the user to repair
    assert sorted(p.name for p in out.iterdir()) == ["edgekit.json", "model-q4_k_m.gguf"]  # nothing written
    (out / "edgekit.json").write_bytes(b"\xff\xfe binary")  # not even UTF-8: the same error
    code, text = _run("convert", str(llama_bpe), "--no-verify", "-o", str(out))
    assert "not a valid edgekit manifest" in _one_line_exit_1(text, code)


def _retrained(llama_bpe: Path, out: Path) -> Path:
    """The same model with other weights (another fine-tune of it)."""
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(llama_bpe)
    with torch.no_grad():
        model.model.norm.weight.mul_(1.5)
    model.save_pretrained(out)
    for f in llama_bpe.iterdir():
        if f.is_file() and not f.name.endswith(".safetensors") and f.name != "config.json":
            shutil.copy(f, out / f.name)
    return out


def test_manifest_of_another_source_is_kept(llama_bpe: Path, tmp_path: Path) -> None:
    import edgekit
    from edgekit.errors import InputError
    from edgekit.manifest import load_manifest

    out = tmp_path / "o"
    code, text = _run("convert", str(llama_bpe), "--no-verify", "-q", "f16", "-o", str(out), "--quiet")
    assert code == 0, text
    before = (out / "edgekit.json").read_bytes()
    other = _retrained(llama_bpe, tmp_path / "other")
    code, text = _run("convert", str(other), "--no-verify", "-q", "q8_0", "-o", str(out))
    line = _one_line_exit_1(text, code)
    assert "another source" in line and str(llama_bpe.resolve()) in line and "-o / out_dir" in line
    with pytest.raises(InputError, match="another source"):
        edgekit.convert(other, out, quants="q8_0", verify=False)
    assert (out / "edgekit.json").read_bytes() == before  # the f16's record is still there
    assert not list(out.glob("*q8_0*"))
    # once the old artifacts are gone there is nothing to lose: the directory takes the new source
    (f16,) = load_manifest(out).artifacts
    (out / f16.file).unlink()
    res = edgekit.convert(other, out, quants="q8_0", verify=False)
    assert [a.quant for a in load_manifest(out).artifacts] == ["q8_0"] and res.manifest.source["path"] == str(
        other.resolve())


def test_gptq_of_a_model_with_nan_weights(tmp_path: Path) -> None:
    import torch
    import transformers

    from edgekit.converters.gptq.convert import convert_gptq
    from edgekit.demo import demo_model_dir
    from edgekit.errors import InputError

    src = demo_model_dir()
    model = transformers.AutoModelForCausalLM.from_pretrained(src)
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[3, 5] = float("nan")  # a diverged fine-tune
    m = tmp_path / "m"
    model.save_pretrained(m)
    for f in src.iterdir():
        if f.is_file() and not f.name.endswith(".safetensors") and f.name != "config.json":
            shutil.copy(f, m / f.name)
    out = tmp_path / "o"
    code, text = _run("convert", str(m), "--to", "gptq", "--samples", "4", "--seq-len", "64", "-o", str(out))
    line = _one_line_exit_1(text, code)
    assert "NaN/inf" in line and "model.layers.0.mlp.up_proj.weight" in line
    with pytest.raises(InputError, match="NaN/inf"):  # was a checkpoint of NaN scales, "verified" or not
        convert_gptq(m, out, samples=4, seq_len=64, verify_artifacts=False)
    assert not out.exists() or not any(out.iterdir())


def test_hostile_chat_template_is_refused_at_conversion(tmp_path: Path) -> None:
    """The converter renders the template (in the sandbox) to find its end-of-turn token: one that
    reaches for Python internals stops the conversion with one line, and nothing is written."""
    from edgekit.demo import demo_model_dir

    src = _copy(demo_model_dir(), tmp_path / "src")
    (src / "chat_template.jinja").write_text("{{ ''.__class__.__mro__ }}{% for m in messages %}{{ m['content'] }}"
                                             "{% endfor %}", encoding="utf-8")
    out = tmp_path / "out"
    code, text = _run("convert", str(src), "-q", "q8_0", "--no-verify", "-o", str(out))
    assert code == 1 and "unsafe operation" in _one_error_line(text)
    assert not list(out.glob("*.gguf")) and not list(out.glob(".edgekit-tmp*"))
