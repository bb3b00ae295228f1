"""The llama.cpp runtime behind edgekit.load, against raw llama-cpp-python on the same file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

import edgekit
from edgekit.cli import main
from edgekit.runtimes.chat_template import ChatTemplateError, render


def test_greedy_generation_equals_raw_llama_cpp(demo_out: Path) -> None:
    import llama_cpp

    path = demo_out / "demo-f16.gguf"
    prompt = "The function returns"
    # the same thread count on both sides: llama-cpp-python's default (half the cores) is not
    # edgekit's (all), and a different split of the work may round differently
    with edgekit.load(path, n_ctx=512, n_threads=1) as s:
        ours = s.generate(prompt, max_tokens=24)
    from edgekit.runtimes.llama_env import llama_load_params

    with llama_load_params():  # the same load parameters (AMX guard) for the raw library
        raw = llama_cpp.Llama(model_path=str(path), n_ctx=512, n_threads=1, n_threads_batch=1, verbose=False)
    theirs = raw.create_completion(prompt, max_tokens=24, temperature=0.0)
    raw.close()
    assert ours.text == theirs["choices"][0]["text"]  # type: ignore[index]
    assert ours.stats.prompt_tokens == theirs["usage"]["prompt_tokens"]  # type: ignore[index]
    assert ours.stats.completion_tokens >= 1 and ours.stats.generation_tokens_per_s > 0
    assert len(ours.text.split()) >= 3  # a trained model writes words


def test_stream_pieces_join_to_generate(demo_out: Path) -> None:
    with edgekit.load(demo_out, quant="q8_0", n_ctx=512) as s:
        pieces = list(s.stream("Return a list of", max_tokens=20))
        whole = s.generate("Return a list of", max_tokens=20)
    assert len(pieces) > 1 and "".join(pieces) == whole.text
    assert whole.finish_reason in ("length", "stop")


def test_stop_strings_and_max_tokens(demo_out: Path) -> None:
    with edgekit.load(demo_out / "demo-f16.gguf", n_ctx=512) as s:
        full = s.generate("The", max_tokens=30).text
        word = full.split()[1] if len(full.split()) > 1 else full.strip()[:2]
        cut = s.generate("The", max_tokens=30, stop=[word])
        assert word not in cut.text and full.startswith(cut.text) and cut.finish_reason == "stop"
        one = s.generate("The", max_tokens=1)
        assert one.stats.completion_tokens == 1 and one.finish_reason == "length"


def test_sampling_is_seeded(demo_out: Path) -> None:
    with edgekit.load(demo_out / "demo-f16.gguf", n_ctx=512) as s:
        a = s.generate("The", max_tokens=20, temperature=1.0, seed=7).text
        b = s.generate("The", max_tokens=20, temperature=1.0, seed=7).text
    assert a == b


def test_chat_uses_the_models_template(demo_out: Path) -> None:
    with edgekit.load(demo_out / "demo-f16.gguf", n_ctx=512) as s:
        assert s.chat_template and "im_start" in s.chat_template
        rendered = s.render_chat([{"role": "user", "content": "hi"}])
        assert rendered.endswith("<|im_start|>assistant\n")
        r = s.chat([{"role": "user", "content": "What does len return?"}], max_tokens=16)
        assert r.stats.prompt_tokens == len(s.tokenize(rendered.replace("hi", "What does len return?"), False))


def test_malicious_template_is_refused() -> None:
    evil = "{{ ''.__class__.__mro__[1].__subclasses__() }}"
    with pytest.raises(ChatTemplateError, match="unsafe"):
        render(evil, [{"role": "user", "content": "x"}])
    with pytest.raises(ChatTemplateError, match="refused"):
        render("{{ raise_exception('no system role') }}", [{"role": "user", "content": "x"}])


def test_cli_run_and_chat(demo_out: Path) -> None:
    r = CliRunner().invoke(main, ["run", str(demo_out / "demo-f16.gguf"), "-p", "The", "--max-tokens", "8", "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert data["backend"] == "llama.cpp" and data["stats"]["completion_tokens"] >= 1
    r = CliRunner().invoke(main, ["chat", str(demo_out), "--quant", "f16", "--max-tokens", "8", "--json"],
                           input="hello\nwhat is a list?\n/exit\n")
    assert r.exit_code == 0, r.output
    replies = [json.loads(line) for line in r.output.splitlines() if line.startswith("{")]
    assert len(replies) == 2 and all("reply" in x for x in replies)


def test_context_overflow_is_a_clear_error(demo_out: Path) -> None:
    r = CliRunner().invoke(main, ["run", str(demo_out / "demo-f16.gguf"), "-p", "word " * 300, "--ctx", "128"])
    assert r.exit_code == 1 and "context length" in r.output
