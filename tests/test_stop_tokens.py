"""Stop tokens: every end-of-generation id the source declares ends generation in the artifact.

The model (tests/_stop_model.py) ends its turns with ``<|end_turn|>``, which is not its eos
and which no file but the chat template names; its weights say three words, end the turn,
then go on saying " oops" -- so a runtime that does not stop at the end of the turn shows it.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _stop_model import AFTER, END_TURN, EOS, TEMPLATE, TURN, WORDS, build_stop_model
from click.testing import CliRunner

import edgekit
from edgekit.cli import main as cli_main
from edgekit.converters.stop_tokens import TEMPLATE as FROM_TEMPLATE
from edgekit.converters.stop_tokens import declared_stops, end_of_turn_text, tokenizer_index
from edgekit.errors import InputError, VerificationError

QUESTION = [{"role": "user", "content": "Where?"}]
REPLY = "".join(WORDS)


@pytest.fixture(scope="module")
def stop_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_stop_model(tmp_path_factory.mktemp("stop-model"))


@pytest.fixture(scope="module")
def stop_gguf(stop_model: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("stop-gguf")
    result = edgekit.convert(stop_model, out, to="gguf", quants="f16", name="stop")  # verified
    return out / "stop-f16.gguf", result.artifacts[0].verification


@pytest.fixture(scope="module")
def reference_reply(stop_model: Path) -> tuple[str, list[int]]:
    """transformers' generate with the declared stop ids: the reply text and its token ids."""
    import transformers as T

    tok = T.AutoTokenizer.from_pretrained(stop_model)
    model = T.AutoModelForCausalLM.from_pretrained(stop_model)
    stops = declared_stops(stop_model, tok.get_vocab())
    ids = tok.apply_chat_template(QUESTION, add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    out = model.generate(ids, max_new_tokens=12, do_sample=False, eos_token_id=stops.ids)[0, ids.shape[1]:].tolist()
    return tok.decode(out, skip_special_tokens=True), out


def test_declared_stops_include_the_templates_end_of_turn(stop_model: Path) -> None:
    index = tokenizer_index(stop_model)
    stops = declared_stops(stop_model, index)
    assert stops.end_of_turn is not None and stops.end_of_turn.text == END_TURN
    assert stops.end_of_turn.declared_by == (FROM_TEMPLATE,)
    assert set(stops.ids) == {index[EOS], index[END_TURN]}


def test_gguf_marks_end_of_turn_and_chat_stops_there(stop_gguf: tuple[Path, dict[str, Any]],
                                                      reference_reply: tuple[str, list[int]]) -> None:
    import llama_cpp

    path, verification = stop_gguf
    text, ids = reference_reply
    assert text == REPLY and AFTER not in text  # the reference stops at the end of the turn
    record = verification["correctness"]["stop_tokens"]
    assert record["end_of_turn"] == END_TURN and record["missing"] == []
    with edgekit.load(path, n_ctx=256, n_threads=1) as s:
        for tid in record["ids"]:
            assert llama_cpp.llama_vocab_is_eog(s.llm._model.vocab, tid)
        r = s.chat(QUESTION, max_tokens=12)
        assert (r.text, r.finish_reason) == (text, "stop")
        assert r.stats.completion_tokens == len(ids)  # the end-of-turn token is the last one sampled
    # `edgekit chat` (stdin driven, one JSON line per reply)
    cli = CliRunner().invoke(cli_main, ["chat", str(path), "--json", "--max-tokens", "12", "--ctx", "256",
                                                "--threads", "1"], input="Where?\n")
    assert cli.exit_code == 0, cli.output
    reply = json.loads(cli.stdout.strip().splitlines()[-1])
    assert (reply["reply"], reply["finish_reason"]) == (text, "stop")


def test_serve_stops_at_the_end_of_the_turn(stop_gguf: tuple[Path, dict[str, Any]],
                                            reference_reply: tuple[str, list[int]]) -> None:
    from starlette.testclient import TestClient

    from edgekit.server import create_app

    app = create_app([edgekit.load(stop_gguf[0], n_ctx=256, n_threads=1)])
    with TestClient(app, base_url="http://127.0.0.1") as client:
        r = client.post("/v1/chat/completions", json={"messages": QUESTION, "max_tokens": 12, "temperature": 0})
        assert r.status_code == 200, r.text
        choice = r.json()["choices"][0]
        assert (choice["message"]["content"], choice["finish_reason"]) == (reference_reply[0], "stop")


@pytest.fixture()
def gguf_without_end_of_turn(stop_gguf: tuple[Path, dict[str, Any]], tmp_path: Path) -> Iterator[Path]:
    """The same file with its eot id pointed at the eos (what a converter unaware of the
    template writes): the end of turn is then an ordinary token to llama.cpp."""
    from gguf import GGUFReader

    broken = tmp_path / "broken.gguf"
    shutil.copy(stop_gguf[0], broken)
    reader = GGUFReader(broken, "r+")
    eos = int(reader.fields["tokenizer.ggml.eos_token_id"].parts[-1][0])
    reader.fields["tokenizer.ggml.eot_token_id"].parts[-1][0] = eos
    reader.data.flush()  # type: ignore[attr-defined]
    del reader
    yield broken


def test_verification_refuses_gguf_missing_a_stop(stop_model: Path, gguf_without_end_of_turn: Path) -> None:
    from edgekit.converters.gguf.convert import check_gguf

    with edgekit.load(gguf_without_end_of_turn, n_ctx=256, n_threads=1) as s:  # the failure it prevents
        runaway = s.chat(QUESTION, max_tokens=8)
        assert AFTER in runaway.text and runaway.finish_reason == "length"
    with pytest.raises(VerificationError) as e:
        check_gguf(stop_model, gguf_without_end_of_turn, threads=1)
    assert e.value.check == "stop tokens" and END_TURN in e.value.message


def test_onnx_lists_every_stop_and_stops_there(stop_model: Path, tmp_path: Path,
                                               reference_reply: tuple[str, list[int]]) -> None:
    from edgekit.converters.onnx.convert import check_onnx

    out = tmp_path / "onnx"
    result = edgekit.convert(stop_model, out, to="onnx", quants="fp32", name="stop")  # verified
    art = out / result.artifacts[0].file
    cfg = json.loads((art / "genai_config.json").read_text())
    assert result.artifacts[0].verification["correctness"]["stop_tokens"]["missing"] == []
    index = tokenizer_index(stop_model)
    assert {index[EOS], index[END_TURN]} <= set(cfg["model"]["eos_token_id"])
    with edgekit.load(art, n_threads=1) as s:
        r = s.chat(QUESTION, max_tokens=12)
        assert (r.text, r.finish_reason) == (reference_reply[0], "stop")
    # the builder's own list (generation_config's eos only) is refused
    cfg["model"]["eos_token_id"] = [index[EOS]]
    (art / "genai_config.json").write_text(json.dumps(cfg))
    with pytest.raises(VerificationError) as e:
        check_onnx(stop_model, art, threads=1)
    assert e.value.check == "stop tokens"


def test_a_further_declared_stop_takes_the_eom_slot(stop_model: Path, tmp_path: Path) -> None:
    """generation_config naming one more stop than eos and the end of turn (one llama.cpp does
    not know by name): the GGUF marks it through eom_token_id, so all three end generation."""
    import llama_cpp

    from edgekit.converters.gguf.inspect import read_gguf

    src = tmp_path / "src"
    shutil.copytree(stop_model, src)
    index = tokenizer_index(src)
    gen = json.loads((src / "generation_config.json").read_text())
    gen["eos_token_id"] = [index[EOS], index[TURN]]
    (src / "generation_config.json").write_text(json.dumps(gen))
    out = tmp_path / "out"
    edgekit.convert(src, out, to="gguf", quants="f16", name="s", verify_artifacts=False)
    md = read_gguf(out / "s-f16.gguf").metadata
    assert (md["tokenizer.ggml.eos_token_id"], md["tokenizer.ggml.eot_token_id"], md["tokenizer.ggml.eom_token_id"]) \
        == (index[EOS], index[END_TURN], index[TURN])
    with edgekit.load(out / "s-f16.gguf", n_ctx=64, vocab_only=True) as s:
        assert all(llama_cpp.llama_vocab_is_eog(s.llm._model.vocab, index[t]) for t in (EOS, END_TURN, TURN))
        assert not llama_cpp.llama_vocab_is_eog(s.llm._model.vocab, s.tokenize("Paris", add_special=False)[0])


def test_end_of_turn_not_in_vocabulary_is_refused(stop_model: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(stop_model, src)
    (src / "chat_template.jinja").write_text(TEMPLATE.replace(END_TURN, "<|finish|>"), encoding="utf-8")
    out = tmp_path / "out"
    r = CliRunner().invoke(cli_main, ["convert", str(src), "-o", str(out), "--quant", "f16", "--no-verify"])
    assert r.exit_code == 1
    line = r.stderr.strip().splitlines()[-1]  # after the progress lines: one error line
    assert line.startswith("error: ") and "'<|finish|>'" in line and "not a token of the vocabulary" in line
    kept = [p.name for p in out.iterdir() if p.suffix == ".gguf" or p.name.startswith(".edgekit-tmp")] \
        if out.exists() else []
    assert not kept


# The end of turn of the fixed-shape families, from their templates (as their tokenizers ship them)
FAMILY_CASES = {
    "chatml": ("<|im_end|>", "<|im_start|>"),
    "llama3": ("<|eot_id|>", "<|start_header_id|>"),
    "gemma": ("<end_of_turn>", "<start_of_turn>"),
    "phi3": ("<|end|>", "<|user|>"),
    "mistral": ("</s>", "[INST]"),
}


@pytest.mark.parametrize("family", sorted(FAMILY_CASES))
def test_end_of_turn_of_known_families(family: str) -> None:
    from edgekit.export.templates import FAMILY_TEMPLATES

    eot, other = FAMILY_CASES[family]
    index = {eot: 5, other: 6, "<s>": 1, "<bos>": 2, "<|begin_of_text|>": 3, "<|end_header_id|>": 7,
             "<|assistant|>": 8, "<|system|>": 9, "[/INST]": 10, "<|im_start|>": 6 if family == "chatml" else 11}
    bos = {"llama3": "<|begin_of_text|>", "gemma": "<bos>"}.get(family, "<s>")
    assert end_of_turn_text(FAMILY_TEMPLATES[family].jinja, index, bos=bos, eos="</s>") == eot


def test_marker_missing_from_vocabulary_names_the_fix() -> None:
    with pytest.raises(InputError) as e:
        end_of_turn_text(TEMPLATE, {"<|turn|>": 0})
    assert "<|end_turn|>" in e.value.message and "add_special_tokens" in (e.value.hint or "")
