"""An Ollama Modelfile beside a GGUF: ``FROM``, ``TEMPLATE``, ``SYSTEM``, ``PARAMETER stop`` / ``num_ctx``.

Ollama without a template and stop words is the classic "the fine-tune never stops" setup.
The TEMPLATE is the model's chat template translated to Go-template syntax for the
fixed-shape families (:mod:`.templates`), used only when it renders the same text on the
check conversations. Without a translation the Modelfile has no TEMPLATE, and says why:
``ollama create`` then derives one from the Jinja template the GGUF carries. A GGUF without any
chat template gets a plain completion template (``{{ .Prompt }}``) and a note saying so.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit.errors import InputError

from .templates import translate

log = logging.getLogger(__name__)

DEFAULT_CTX = 4096  # edgekit run/chat's default context
COMPLETION_TEMPLATE = "{{ .Prompt }}"


@dataclass(frozen=True)
class GGUFChatInfo:
    """What a Modelfile needs from a GGUF: its template, special token texts and context."""

    path: Path
    template: str | None
    tokens: list[str]
    eos: str
    bos: str
    stop_ids: dict[str, int]  # eos / eot / eom ids the file declares
    context_length: int


def read_chat_info(path: Path) -> GGUFChatInfo:
    from gguf import GGUFReader

    from edgekit.converters.gguf.inspect import read_gguf

    summary = read_gguf(path)  # untrusted: validated before gguf-py maps it
    md = summary.metadata
    reader = GGUFReader(path)
    f = reader.fields.get("tokenizer.ggml.tokens")
    if f is None:
        raise InputError(f"{path} has no tokenizer (tokenizer.ggml.tokens)",
                         hint="convert the model with edgekit convert, which writes its tokenizer")
    tokens = [bytes(f.parts[i]).decode("utf-8", errors="replace") for i in f.data]
    del reader

    def text(key: str) -> str:
        tid = md.get(f"tokenizer.ggml.{key}_token_id")
        return tokens[tid] if isinstance(tid, int) and 0 <= tid < len(tokens) else ""

    stop_ids = {k: md[f"tokenizer.ggml.{k}_token_id"] for k in ("eos", "eot", "eom")
                if isinstance(md.get(f"tokenizer.ggml.{k}_token_id"), int)}
    template = md.get("tokenizer.chat_template")
    trained = md.get(f"{summary.architecture}.context_length")
    return GGUFChatInfo(Path(path), str(template) if template else None, tokens, text("eos"), text("bos"), stop_ids,
                        int(trained) if isinstance(trained, int) else DEFAULT_CTX)


def default_system(template: str, eos: str) -> str | None:
    """The system prompt a template writes when the conversation has none (Qwen 2.5's
    "You are Qwen..."), found by rendering with and without a system message."""
    from edgekit.runtimes.chat_template import ChatTemplateError

    from .templates import render_jinja

    mark, user = "edgekitSYSq", {"role": "user", "content": "edgekitUq"}
    try:
        with_sys = render_jinja(template, [{"role": "system", "content": mark}, user], eos)
        without = render_jinja(template, [user], eos)
    except ChatTemplateError:
        return None
    i = with_sys.find(mark)
    if i < 0:
        return None
    pre, post = with_sys[:i], with_sys[i + len(mark):]
    if without.startswith(pre) and without.endswith(post) and len(without) > len(pre) + len(post):
        return without[len(pre):len(without) - len(post)]
    return None


@dataclass
class Modelfile:
    path: Path
    gguf: Path
    family: str | None
    template: str | None  # the TEMPLATE written (None: Ollama uses the GGUF's own)
    system: str | None
    stops: list[str]
    num_ctx: int
    notes: list[str] = field(default_factory=list)

    def text(self) -> str:
        from edgekit import __version__

        lines = [f"# Ollama Modelfile written by edgekit {__version__}: ollama create NAME -f {self.path.name}",
                 *(f"# {n}" for n in self.notes), f"FROM ./{self.gguf.name}"]
        if self.template is not None:
            lines.append(f'TEMPLATE """{self.template}"""')
        if self.system:
            lines.append(f'SYSTEM """{self.system}"""')
        lines += [f"PARAMETER stop {_quote(s)}" for s in self.stops]
        lines.append(f"PARAMETER num_ctx {self.num_ctx}")
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict[str, Any]:
        return {"modelfile": str(self.path), "gguf": str(self.gguf), "family": self.family,
                "template": self.template, "system": self.system, "stop": self.stops, "num_ctx": self.num_ctx,
                "notes": self.notes}


def _quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def plan_modelfile(gguf: Path, *, num_ctx: int | None = None) -> Modelfile:
    """What the Modelfile for ``gguf`` says (nothing written)."""
    from edgekit.converters.stop_tokens import end_of_turn_text

    gguf = Path(gguf)
    info = read_chat_info(gguf)
    if num_ctx is not None and num_ctx < 1:
        raise InputError(f"num_ctx must be >= 1, not {num_ctx}", hint="pass --ctx / num_ctx= with a positive length")
    ctx = num_ctx or min(DEFAULT_CTX, info.context_length)
    stops: list[str] = []
    notes: list[str] = []
    family = template = system = None
    if info.template is None:
        template = COMPLETION_TEMPLATE
        notes.append(f"{gguf.name} has no chat template: plain completion template ({COMPLETION_TEMPLATE}); "
                     f"chat requests get the raw prompt")
    else:
        index = {t: i for i, t in enumerate(info.tokens)}
        marker = end_of_turn_text(info.template, index, bos=info.bos, eos=info.eos)  # InputError: not a token
        if marker is not None:
            stops.append(marker)
        system = default_system(info.template, info.eos)
        tr = translate(info.template, info.eos, system or "")
        family, template = tr.family, tr.go
        if tr.go is None:
            notes.append(f"no TEMPLATE: {tr.reason}; `ollama create` then derives one from the GGUF's own chat template")
        else:
            notes.append(f"TEMPLATE translated from the {tr.family} chat template (checked: {tr.reason})")
    for key in ("eot", "eom", "eos"):
        tid = info.stop_ids.get(key)
        if tid is not None and 0 <= tid < len(info.tokens) and info.tokens[tid] not in stops and info.tokens[tid]:
            stops.append(info.tokens[tid])
    return Modelfile(gguf.with_suffix(".Modelfile"), gguf, family, template, system, stops, ctx, notes)


def write_modelfile(gguf: Path, *, num_ctx: int | None = None) -> Modelfile:
    """Write ``<stem>.Modelfile`` beside ``gguf`` (under a temporary name, then renamed)."""
    from edgekit.fsutil import write_text_atomic

    mf = plan_modelfile(gguf, num_ctx=num_ctx)
    write_text_atomic(mf.path, mf.text())
    log.info("wrote %s (%s)", mf.path, "; ".join(mf.notes))
    return mf
