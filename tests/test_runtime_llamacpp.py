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


# -- memory: what a session holds beyond the model ------------------------------------------------

def test_generation_session_holds_no_context_by_vocabulary_scores(demo_out: Path) -> None:
    """llama-cpp-python allocates n_batch x n_vocab float32 scores (the whole context x vocabulary
    at a short n_ctx: 129 MiB for Gemma 3's 262k vocabulary at n_ctx 129) that only logits_all
    fills; generation samples from llama.cpp's last-position logits and must not keep it."""
    path = demo_out / "demo-q8_0.gguf"
    with edgekit.load(path, n_ctx=256, n_threads=1) as s:
        n_vocab = s.llm.n_vocab()
        assert s.llm.scores.nbytes <= n_vocab * 4  # one row at most, not n_batch (256) rows
        greedy = s.generate("The function returns", max_tokens=12)
        assert greedy.stats.completion_tokens >= 1 and greedy.text
        sampled = s.generate("The function returns", max_tokens=12, temperature=0.8, seed=3)
        assert sampled.stats.completion_tokens >= 1
    with edgekit.load(path, n_ctx=256, n_threads=1, logits_all=True) as s:  # scoring needs every row
        assert s.llm.scores.shape == (256, n_vocab)
        ids = s.tokenize("The function returns")
        assert s.logits(ids).shape == (len(ids), n_vocab)


def _vocab_gguf(path: Path, n_tokens: int) -> int:
    """A GGUF header with a vocabulary of ``n_tokens`` tokens (no tensors); the vocabulary's bytes."""
    import gguf

    w = gguf.GGUFWriter(str(path), "llama")
    tokens = [f"tok{i:06d}" for i in range(n_tokens)]
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * n_tokens)
    w.add_token_types([1] * n_tokens)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return sum(8 + len(t) for t in tokens) + n_tokens * (4 + 4)


def test_header_check_does_not_materialise_the_vocabulary(tmp_path: Path) -> None:
    """The check before llama.cpp opens a file walks arrays in place: a 262,144-token vocabulary
    (Gemma 3's) once cost ~700 MiB of Python objects there, twice the loaded model."""
    import tracemalloc

    from edgekit.converters.gguf.inspect import read_gguf
    from edgekit.errors import CorruptFileError

    path = tmp_path / "vocab.gguf"
    vocab_bytes = _vocab_gguf(path, 262_144)
    tracemalloc.start()
    try:
        summary = read_gguf(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    meta = summary.metadata
    assert meta["tokenizer.ggml.tokens"] == meta["tokenizer.ggml.scores"] == "[262144 items]"
    assert meta["general.architecture"] == "llama" and summary.tensors == []
    assert peak < vocab_bytes / 10, (peak, vocab_bytes)  # not even the strings' own size
    cut = tmp_path / "cut.gguf"  # cut inside the token strings: refused, naming the field
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    with pytest.raises(CorruptFileError, match=r"tokenizer\.ggml\.tokens .*past the end"):
        read_gguf(cut)
