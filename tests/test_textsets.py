"""Text sets: the packaged calibration/evaluation mixes (disjoint, labelled, big enough) and user text.

User text is what ``--calibration`` reads: text files, directories, JSONL with ``text`` or chat
``messages`` (rendered through the model's own chat template: the demo model's is ChatML).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgekit.cli import main
from edgekit.converters import textsets
from edgekit.converters.gptq.calibration import calibration_windows
from edgekit.demo import corpus_path, demo_model_dir, heldout_path
from edgekit.errors import InputError, UnknownChoiceError

NGRAM = 13  # words; the build script's disjointness unit


def _grams(text: str, n: int = NGRAM) -> set[str]:
    w = text.split()
    return {" ".join(w[i:i + n]) for i in range(len(w) - n + 1)}


@pytest.fixture(scope="module")
def tokenizer():  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(demo_model_dir())


def test_packaged_mixes_are_disjoint() -> None:
    cal = textsets.packaged("calibration").documents
    ev = textsets.packaged("evaluation").documents
    assert not {d.text for d in cal} & {d.text for d in ev}
    cal_grams = set().union(*(_grams(d.text) for d in cal))
    ev_grams = set().union(*(_grams(d.text) for d in ev))
    assert not cal_grams & ev_grams
    # the evaluation mix is new text for the demo model too; calibration avoids GPTQ's held-out text
    assert not ev_grams & (_grams(corpus_path().read_text(encoding="utf-8"))
                           | _grams(heldout_path().read_text(encoding="utf-8")))
    assert not cal_grams & _grams(heldout_path().read_text(encoding="utf-8"))


def test_domains_are_labelled_and_selectable() -> None:
    pairs = textsets.eval_texts()
    assert {d for d, _ in pairs} == set(textsets.DOMAINS)
    for domain in textsets.DOMAINS:
        one = textsets.eval_texts(domain)
        assert one and {d for d, _ in one} == {domain}
        assert [t for d, t in pairs if d == domain] == [t for _, t in one]
        assert textsets.eval_text(domain) == "\n\n".join(t for _, t in one)
        assert {d.domain for d in textsets.calibration_texts(None, domain=domain).documents} == {domain}
    with pytest.raises(UnknownChoiceError) as e:
        textsets.eval_texts("poetry")
    assert "prose, code, dialogue" in (e.value.hint or "")


def test_evaluation_mix_gives_8k_scored_tokens(tokenizer) -> None:  # type: ignore[no-untyped-def]
    # windows of 512 with the second half scored: 8k scored positions need 16k tokens of text
    ids = textsets.token_stream(tokenizer, [textsets.eval_text()])
    assert len(ids) >= 2 * 8192
    for domain in textsets.DOMAINS:  # each domain alone still fills a few windows
        assert len(textsets.token_stream(tokenizer, [textsets.eval_text(domain)])) >= 4 * 512
    assert textsets.packaged_path("evaluation").stat().st_size < 400_000


def test_default_calibration_is_the_mix_and_fills_the_default_windows(tokenizer) -> None:  # type: ignore[no-untyped-def]
    from edgekit.converters.gptq.calibration import DEFAULT_SAMPLES, DEFAULT_SEQ_LEN

    s = textsets.calibration_texts(None, tokenizer)
    assert s.source == "packaged: calibration mix"
    assert set(s.describe()["domains"]) == set(textsets.DOMAINS)
    calib = calibration_windows(tokenizer, s.text(), s.source, DEFAULT_SAMPLES, DEFAULT_SEQ_LEN)
    assert len(calib.windows) == DEFAULT_SAMPLES and calib.seq_len == DEFAULT_SEQ_LEN


def test_text_files_directories_and_jsonl_text(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.txt").write_text("first document\n", encoding="utf-8")
    (tmp_path / "sub" / "b.md").write_text("# second\n", encoding="utf-8")
    (tmp_path / "c.jsonl").write_text('{"text": "third"}\n\n{"text": "fourth", "domain": "code"}\n', encoding="utf-8")
    (tmp_path / "ignored.bin").write_bytes(b"\x00\x01")
    s = textsets.calibration_texts(tmp_path)
    assert [d.text for d in s.documents] == ["first document\n", "third", "fourth", "# second\n"]
    assert [d.domain for d in s.documents] == [None, None, "code", None]
    assert s.documents[2].origin == f"{tmp_path / 'c.jsonl'}:3"
    assert textsets.calibration_texts(tmp_path / "a.txt").text() == "first document\n"


def test_chat_jsonl_goes_through_the_models_template(tmp_path: Path, tokenizer) -> None:  # type: ignore[no-untyped-def]
    chats = tmp_path / "chats.jsonl"
    chats.write_text(json.dumps({"messages": [{"role": "user", "content": "How do I sort a list?"},
                                              {"role": "assistant", "content": "Call sorted(items)."}]}) + "\n",
                     encoding="utf-8")
    (doc,) = textsets.calibration_texts(chats, tokenizer).documents
    assert doc.text == tokenizer.apply_chat_template(
        [{"role": "user", "content": "How do I sort a list?"}, {"role": "assistant", "content": "Call sorted(items)."}],
        tokenize=False)
    assert doc.text.startswith("<|im_start|>user\nHow do I sort a list?<|im_end|>\n<|im_start|>assistant\n")
    ids = textsets.token_stream(tokenizer, [doc.text])
    # the template's markers are the model's special tokens, not spelled out in pieces
    im_start = tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert ids.count(im_start) == 2 and ids[0] == im_start


def test_chat_jsonl_without_a_template_is_an_error_with_a_fix(tmp_path: Path, tokenizer) -> None:  # type: ignore[no-untyped-def]
    chats = tmp_path / "chats.jsonl"
    chats.write_text('{"text": "plain"}\n{"messages": [{"role": "user", "content": "hi"}]}\n', encoding="utf-8")
    tokenizer.chat_template, saved = None, tokenizer.chat_template
    try:
        with pytest.raises(InputError) as e:
            textsets.calibration_texts(chats, tokenizer)
    finally:
        tokenizer.chat_template = saved
    assert f"{chats}:2" in e.value.message and "no chat template" in e.value.message
    assert "chat_template.jinja" in (e.value.hint or "") and '"text"' in (e.value.hint or "")


@pytest.mark.parametrize("line,needle", [
    ("{not json", "is not JSON"),
    ("[1, 2]", "is a JSON list, not an object"),
    ('{"prompt": "x"}', 'has no "text" string and no "messages" list'),
    ('{"messages": []}', '"messages" must be a non-empty list'),
    ('{"messages": [{"role": "user"}]}', 'message 1 needs a "role" and a "content" string'),
    ('{"messages": [{"role": "user", "content": "a"}, {"role": "bot", "content": "b"}]}',
     "message 2 has role 'bot'"),
])
def test_bad_jsonl_names_file_and_line(tmp_path: Path, tokenizer, line: str, needle: str) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(InputError) as e:
        textsets.calibration_texts(bad, tokenizer)
    assert e.value.message.startswith(f"{bad}:2") and needle in e.value.message
    assert "\n" not in e.value.one_line()


def test_cli_bad_jsonl_is_one_line_and_writes_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"messages": [{"role": "robot", "content": "x"}]}\n', encoding="utf-8")
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["convert", str(demo_model_dir()), "--to", "gptq", "-o", str(out),
                                  "--calibration", str(bad)])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1
    assert f"{bad}:2" in r.output and "role 'robot'" in r.output
    assert not out.exists() or not any(out.iterdir())
