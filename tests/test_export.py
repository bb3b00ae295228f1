"""`edgekit export ollama|lmstudio` and `convert --ollama`: Modelfiles whose TEMPLATE renders the
model's own chat template (checked with Go's text/template itself), LM Studio's layout by link."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

import edgekit
import edgekit.export
from edgekit.cli import main as cli_main
from edgekit.errors import InputError, OutputError
from edgekit.export.gotemplate import GoTemplateError
from edgekit.export.gotemplate import render as render_go_subset
from edgekit.export.templates import (
    CHECK_CONVERSATIONS,
    CHECK_WITH_SYSTEM,
    FAMILY_TEMPLATES,
    go_template,
    render_go,
    render_jinja,
    translate,
)

GO_RENDERER = Path(__file__).parent / "data" / "render_gotemplate.go"
# conversations beyond the translation's own checks: unicode, empty content, quotes, many turns
MORE: tuple[tuple[dict[str, str], ...], ...] = (
    ({"role": "user", "content": "héllo → ✓ \"quoted\" {{ braces }}"},),
    ({"role": "user", "content": "a"}, {"role": "assistant", "content": ""}, {"role": "user", "content": "b"}),
    tuple({"role": r, "content": f"turn {i}"} for i, r in enumerate(["user", "assistant"] * 4 + ["user"])),
)


def go_render(cases: list[tuple[str, list[dict[str, str]]]]) -> list[Any]:
    """Go's own text/template (tests/data/render_gotemplate.go) on (template, messages) cases."""
    assert shutil.which("go"), "these tests run Go's own text/template: apt-get install golang-go (.ci/run does)"
    payload = [{"template": t, "data": {"Messages": [{"Role": m["role"], "Content": m["content"]} for m in msgs]}}
               for t, msgs in cases]
    r = subprocess.run(["go", "run", str(GO_RENDERER)], input=json.dumps(payload), capture_output=True, text=True,
                       timeout=120, env={**os.environ, "GOFLAGS": "-mod=mod", "GO111MODULE": "off"})
    assert r.returncode == 0, r.stderr
    out: list[Any] = json.loads(r.stdout)
    return out


def test_family_translations_render_like_jinja_in_go_itself() -> None:
    cases, want = [], []
    for fam in FAMILY_TEMPLATES.values():
        convs = CHECK_CONVERSATIONS + MORE + (CHECK_WITH_SYSTEM if fam.system else ())
        for conv in convs:
            go = go_template(fam, "</s>")
            cases.append((go, list(conv)))
            want.append(render_jinja(fam.jinja, conv, "</s>"))
    got_go = go_render(cases)
    got_subset = [render_go(t, msgs) for t, msgs in cases]
    assert got_go == want  # Go's text/template: the TEMPLATE is the chat template
    assert got_subset == want  # edgekit's renderer of the subset agrees with Go on every case
    for fam in FAMILY_TEMPLATES.values():
        tr = translate(fam.jinja, "</s>")
        assert (tr.family, tr.go) == (fam.name, go_template(fam, "</s>")), tr.reason


def test_subset_renderer_matches_go_on_its_constructs() -> None:
    data = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]
    templates = [
        '{{ range $i, $m := .Messages }}{{ $i }}:{{ $m.Role }}{{ if eq $i 0 }}first{{ else if eq $m.Role "assistant" }}'
        "A{{ else }}B{{ end }}\n{{ end }}",
        '{{- $s := "" }}{{ range .Messages }}{{ $s = .Content }}{{ end }}last={{ $s }} n={{ len .Messages }}',
        '{{ if and (eq (index .Messages 0).Role "user") (not (eq (len .Messages) 3)) }}ok{{ end }} {{ "a\\tb" }}',
        "  {{- /* comment */ -}}  x {{- .Messages | len -}} y",
    ]
    go = go_render([(t, data) for t in templates])
    for t, g in zip(templates, go, strict=True):
        if isinstance(g, dict):  # Go refused it: the subset must refuse too, never guess
            with pytest.raises(GoTemplateError):
                render_go_subset(t, {"Messages": [{"Role": m["role"], "Content": m["content"]} for m in data]})
        else:
            assert render_go(t, data) == g


def test_default_system_prompt_becomes_system() -> None:
    from edgekit.export.ollama import default_system

    qwen_like = ("{% if messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are Qwen.<|im_end|>\n' }}"
                 "{% endif %}" + FAMILY_TEMPLATES["chatml"].jinja)
    system = default_system(qwen_like, "<|im_end|>")
    assert system == "You are Qwen."
    assert default_system(FAMILY_TEMPLATES["chatml"].jinja, "<|im_end|>") is None
    tr = translate(qwen_like, "<|im_end|>", system)
    assert tr.go == go_template(FAMILY_TEMPLATES["chatml"], "<|im_end|>")
    assert translate(qwen_like, "<|im_end|>").go is None  # without SYSTEM the default would be lost
    # Ollama puts SYSTEM first when a request has none: Go then renders what the template does
    convs = [list(c) for c in CHECK_CONVERSATIONS]
    with_system = [[{"role": "system", "content": system}, *c] for c in convs]
    assert go_render([(tr.go, c) for c in with_system]) == [render_jinja(qwen_like, c, "<|im_end|>") for c in convs]


def test_edited_template_gets_no_translation() -> None:
    edited = FAMILY_TEMPLATES["chatml"].jinja.replace("'<|im_start|>assistant\n'", "'<|im_start|>assistant\n<think>'")
    assert edited != FAMILY_TEMPLATES["chatml"].jinja
    tr = translate(edited, "</s>")
    assert tr.family == "chatml" and tr.go is None and "renders differently" in tr.reason
    assert translate("{% for m in messages %}{{ m['content'] }}{% endfor %}", "</s>").family is None


@pytest.fixture(scope="module")
def demo_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo model (ChatML template, eos <|end_of_text|>), f16 with a Modelfile from `convert --ollama`."""
    out = tmp_path_factory.mktemp("export-demo")
    r = CliRunner().invoke(cli_main, ["convert", "--demo", "-o", str(out), "-q", "f16", "--no-verify", "--ollama",
                                      "--ctx", "512", "--quiet"])
    assert r.exit_code == 0, r.output
    assert "ollama: " in r.stdout
    return out / "edgekit-demo-f16.gguf"


def parse_modelfile(text: str) -> dict[str, Any]:
    template = re.search(r'^TEMPLATE """(.*?)"""$', text, re.S | re.M)
    system = re.search(r'^SYSTEM """(.*?)"""$', text, re.S | re.M)
    return {"from": re.search(r"^FROM (.+)$", text, re.M).group(1),  # type: ignore[union-attr]
            "template": template.group(1) if template else None, "system": system.group(1) if system else None,
            "stop": [json.loads(s) for s in re.findall(r"^PARAMETER stop (.+)$", text, re.M)],
            "num_ctx": [int(n) for n in re.findall(r"^PARAMETER num_ctx (\d+)$", text, re.M)]}


def test_convert_ollama_modelfile_renders_the_artifacts_template(demo_gguf: Path) -> None:
    mf = parse_modelfile(demo_gguf.with_suffix(".Modelfile").read_text())
    assert mf["from"] == f"./{demo_gguf.name}"
    assert mf["stop"][0] == "<|im_end|>" and "<|end_of_text|>" in mf["stop"]
    assert mf["num_ctx"] == [512]  # convert's --ctx (without --fit it sizes nothing else)
    convs = CHECK_CONVERSATIONS + CHECK_WITH_SYSTEM + MORE
    with edgekit.load(demo_gguf, n_ctx=256, vocab_only=True) as s:
        want = [s.render_chat(list(c)) for c in convs]  # the Jinja template the GGUF carries
    assert go_render([(mf["template"], list(c)) for c in convs]) == want


def _patched_copy(src: Path, dst: Path, key: str, old: bytes, new: bytes) -> Path:
    """A copy of ``src`` with the bytes ``old`` replaced by ``new`` (same length) in string field ``key``."""
    from gguf import GGUFReader

    assert len(old) == len(new)
    shutil.copy(src, dst)
    reader = GGUFReader(dst, "r+")
    field = reader.fields[key]
    part = field.parts[1] if old in bytes(field.parts[1]) else field.parts[-1]  # the key's name, or its value
    part[:] = np.frombuffer(bytes(part).replace(old, new), dtype=np.uint8)
    reader.data.flush()  # type: ignore[attr-defined]
    del reader
    return dst


def test_export_ollama_cli_ctx_and_json(demo_gguf: Path, tmp_path: Path) -> None:
    gguf = shutil.copy(demo_gguf, tmp_path / "m.gguf")
    r = CliRunner().invoke(cli_main, ["export", "ollama", str(gguf), "--ctx", "512", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["family"] == "chatml" and out["num_ctx"] == 512
    assert parse_modelfile((tmp_path / "m.Modelfile").read_text())["num_ctx"] == [512]


def test_template_without_translation_says_so(demo_gguf: Path, tmp_path: Path) -> None:
    # a template the families do not cover (its turns open with <|im_start|>, but content is wrapped)
    gguf = _patched_copy(demo_gguf, tmp_path / "custom.gguf", "tokenizer.chat_template", b"message['content']",
                         b"message['role'   ]")
    r = CliRunner().invoke(cli_main, ["export", "ollama", str(gguf)])
    assert r.exit_code == 0, r.output
    mf = parse_modelfile((tmp_path / "custom.Modelfile").read_text())
    assert mf["template"] is None and mf["stop"][0] == "<|im_end|>"
    assert "note: no TEMPLATE: " in r.stdout and "GGUF's own chat template" in r.stdout


def test_no_chat_template_gets_completion_template(demo_gguf: Path, tmp_path: Path) -> None:
    gguf = _patched_copy(demo_gguf, tmp_path / "plain.gguf", "tokenizer.chat_template", b"chat_template",
                         b"chat_templatX")
    r = CliRunner().invoke(cli_main, ["export", "ollama", str(gguf)])
    assert r.exit_code == 0, r.output
    mf = parse_modelfile((tmp_path / "plain.Modelfile").read_text())
    assert mf["template"] == "{{ .Prompt }}" and set(mf["stop"]) == {"<|im_end|>", "<|end_of_text|>"}  # its eog ids
    notes = [line for line in r.stdout.splitlines() if line.startswith("note: ")]
    assert len(notes) == 1 and "no chat template" in notes[0] and "plain completion template" in notes[0]


def test_end_of_turn_not_in_vocabulary_writes_nothing(demo_gguf: Path, tmp_path: Path) -> None:
    gguf = _patched_copy(demo_gguf, tmp_path / "bad.gguf", "tokenizer.chat_template", b"<|im_end|>", b"<|im_fin|>")
    r = CliRunner().invoke(cli_main, ["export", "ollama", str(gguf)])
    assert r.exit_code == 1
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: ") and "'<|im_fin|>'" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.gguf"]
    with pytest.raises(InputError):
        edgekit.export.plan_modelfile(gguf)


def test_onnx_artifact_is_refused_for_ollama(tmp_path: Path) -> None:
    (tmp_path / "genai_config.json").write_text("{}")
    r = CliRunner().invoke(cli_main, ["export", "ollama", str(tmp_path)])
    assert r.exit_code == 1 and "run GGUF files" in r.stderr and r.stderr.count("\n") == 1


# -- LM Studio ---------------------------------------------------------------------------------------------
def test_lmstudio_layout_is_a_hard_link(demo_gguf: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    r = CliRunner().invoke(cli_main, ["export", "lmstudio", str(demo_gguf), "--models-dir", str(models), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    placed = models / "edgekit" / "edgekit-demo" / demo_gguf.name
    assert Path(out["path"]) == placed and out["method"] == "hardlink"
    assert os.path.samefile(placed, demo_gguf) and demo_gguf.stat().st_nlink >= 2  # one file, two names
    again = edgekit.export.export_lmstudio(demo_gguf, models)
    assert again.method == "existing" and sorted(p.name for p in placed.parent.iterdir()) == [demo_gguf.name]


def test_lmstudio_across_filesystems_links_or_copies(demo_gguf: Path) -> None:
    shm = Path("/dev/shm")
    assert shm.is_dir()
    models = shm / f"edgekit-test-{os.getpid()}"
    try:
        r = edgekit.export.export_lmstudio(demo_gguf, models, publisher="me", model="demo")
        same_fs = shm.stat().st_dev == demo_gguf.stat().st_dev
        assert r.method == ("hardlink" if same_fs else "symlink")
        assert os.path.samefile(r.path, demo_gguf)
    finally:
        shutil.rmtree(models, ignore_errors=True)


@pytest.mark.parametrize("where", ["under-a-file", "proc"])
def test_lmstudio_unwritable_models_dir(demo_gguf: Path, tmp_path: Path, where: str) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    models = blocker / "models" if where == "under-a-file" else Path("/proc/edgekit-test/models")
    r = CliRunner().invoke(cli_main, ["export", "lmstudio", str(demo_gguf), "--models-dir", str(models)])
    assert r.exit_code == 1 and r.stderr.count("\n") == 1 and "--models-dir" in r.stderr
    assert blocker.read_text() == "x" and not Path("/proc/edgekit-test").exists()  # nothing made on the way
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]
    with pytest.raises(OutputError):
        edgekit.export.export_lmstudio(demo_gguf, models)
