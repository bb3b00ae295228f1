"""Calibration and evaluation text: the packaged mixes, the user's own text, and token streams.

Shared by everything that needs real text for a model: GPTQ's calibration today, an
importance matrix tomorrow, and quality measurement (the evaluation mix).

Packaged sets (``edgekit/data/textsets``, built by ``scripts/build_textsets.py`` from
redistributable Debian packages; sources and licences in ``SOURCES.md`` beside them):

* the **calibration mix** and the **evaluation mix**: documents of prose, code and dialogue,
  each labelled with its domain, so a caller can ask for one domain. The two share no
  document and no word 13-gram, and the evaluation mix shares none with the demo model's
  training text either, so neither can flatter a measurement made on the other.

User text (``--calibration PATH``): a UTF-8 text file (``.txt``/``.md``/``.rst``; one
document), a directory of them (searched recursively), or JSON Lines (``.jsonl``), one
document a line: ``{"text": "..."}`` or a chat ``{"messages": [{"role", "content"}, ...]}``.
A chat is rendered through the model's *own* chat template (in the sandbox the runtimes
use), so calibration sees the token sequences the fine-tuned model sees in use.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit.errors import InputError, ModelNotFoundError, UnknownChoiceError

DOMAINS = ("prose", "code", "dialogue")
TEXT_SUFFIXES = (".txt", ".md", ".rst")  # one document per file
JSONL_SUFFIXES = (".jsonl",)  # one document per line
CHAT_ROLES = ("system", "user", "assistant", "tool")
CALIBRATION, EVALUATION = "calibration", "evaluation"
SEPARATOR = "\n\n"  # between documents when a set is read as one text
_CHUNK_CHARS = 1 << 16  # tokenize in pieces: bounded memory for big calibration dirs
_OPTION = "--calibration / calibration="


@dataclass(frozen=True)
class Document:
    text: str
    domain: str | None = None  # prose / code / dialogue (packaged sets; None for plain user text)
    origin: str = ""  # "evaluation.jsonl:12", a file path, "data.jsonl:3"


@dataclass(frozen=True)
class TextSet:
    documents: tuple[Document, ...]
    source: str  # "packaged: calibration mix", "packaged: evaluation mix (code)", or the path given

    def text(self) -> str:
        """All documents as one text, separated by a blank line."""
        return SEPARATOR.join(d.text for d in self.documents)

    def describe(self) -> dict[str, Any]:
        domains = Counter(d.domain for d in self.documents if d.domain)
        return {"source": self.source, "documents": len(self.documents),
                "chars": sum(len(d.text) for d in self.documents),
                **({"domains": dict(sorted(domains.items()))} if domains else {})}


# --------------------------------------------------------------------------- packaged sets

def packaged_path(split: str) -> Path:
    """``calibration.jsonl`` or ``evaluation.jsonl`` inside the installed package."""
    if split not in (CALIBRATION, EVALUATION):
        raise UnknownChoiceError("text set", split, (CALIBRATION, EVALUATION))
    import edgekit

    path = Path(edgekit.__file__).resolve().parent / "data" / "textsets" / f"{split}.jsonl"
    if not path.is_file():
        raise ModelNotFoundError(f"the packaged text set {path} is missing",
                                 hint="reinstall edgekit, or rebuild it with `python scripts/build_textsets.py`")
    return path


def packaged(split: str, domain: str | None = None) -> TextSet:
    """The packaged calibration or evaluation mix, or one ``domain`` of it."""
    if domain is not None and domain not in DOMAINS:
        raise UnknownChoiceError("text domain", domain, DOMAINS)
    docs = tuple(d for d in _read_jsonl(packaged_path(split), None) if domain is None or d.domain == domain)
    return TextSet(docs, f"packaged: {split} mix" + (f" ({domain})" if domain else ""))


def eval_texts(domain: str | None = None) -> list[tuple[str, str]]:
    """(domain, document) pairs of the packaged evaluation mix, in file order (domains interleaved)."""
    return [(d.domain or "", d.text) for d in packaged(EVALUATION, domain).documents]


def eval_text(domain: str | None = None) -> str:
    """The packaged evaluation mix (or one domain of it) as one text, documents separated by a blank line."""
    return packaged(EVALUATION, domain).text()


# --------------------------------------------------------------------------- user text

def calibration_texts(source: Path | None, tokenizer: Any | None = None, domain: str | None = None) -> TextSet:
    """Calibration documents: the packaged calibration mix (``source=None``, optionally one
    ``domain``), or the user's file, directory or JSONL. ``tokenizer`` (a transformers
    tokenizer of the model) supplies the chat template for chat JSONL."""
    if source is None:
        return packaged(CALIBRATION, domain)
    return read_texts(source, tokenizer)


def read_texts(source: Path, tokenizer: Any | None = None) -> TextSet:
    """Documents of a text file, a directory of text/JSONL files, or a JSONL file."""
    source = Path(source)
    if source.is_dir():
        suffixes = TEXT_SUFFIXES + JSONL_SUFFIXES
        files = sorted(p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
        if not files:
            raise InputError(f"calibration directory {source} holds no {'/'.join(suffixes)} files",
                             hint=f"point {_OPTION} at a UTF-8 text file, a .jsonl file, or a directory of them")
    elif source.is_file():
        files = [source]
    else:
        raise ModelNotFoundError(f"calibration text {source} does not exist",
                                 hint="pass a UTF-8 text file, a .jsonl file, or a directory of them")
    docs: list[Document] = []
    for path in files:
        if path.suffix.lower() in JSONL_SUFFIXES:
            docs.extend(_read_jsonl(path, tokenizer))
        else:
            text = _read(path)
            if text.strip():
                docs.append(Document(text, None, str(path)))
    if not docs:
        raise InputError(f"calibration text {source} is empty",
                         hint=f"pass text the model will see (a few hundred KB), or omit {_OPTION}")
    return TextSet(tuple(docs), str(source))


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"calibration file {path} is not UTF-8 text ({e.reason} at byte {e.start})",
                         hint="convert it to UTF-8 text") from e
    except OSError as e:
        raise InputError(f"cannot read calibration file {path}: {e.strerror}") from e


_JSONL_HINT = ('each line must be a JSON object with a "text" string or a "messages" list of '
               '{"role": "system|user|assistant|tool", "content": "..."}')


def _read_jsonl(path: Path, tokenizer: Any | None) -> list[Document]:
    """One document per non-blank line: ``text`` as is, ``messages`` through the chat template."""
    docs: list[Document] = []
    template: str | None = None
    for n, line in enumerate(_read(path).splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{where} is not JSON ({e.msg} at column {e.colno})", hint=_JSONL_HINT) from e
        if not isinstance(rec, dict):
            raise InputError(f"{where} is a JSON {type(rec).__name__}, not an object", hint=_JSONL_HINT)
        domain = rec.get("domain") if isinstance(rec.get("domain"), str) else None
        if "messages" in rec:
            messages = _check_messages(rec["messages"], where)
            if template is None:
                template = chat_template_of(tokenizer, where)
            docs.append(Document(render_chat(template, messages, tokenizer, where), domain, where))
        elif isinstance(rec.get("text"), str):
            if rec["text"].strip():
                docs.append(Document(rec["text"], domain, where))
        else:
            raise InputError(f"{where} has no \"text\" string and no \"messages\" list", hint=_JSONL_HINT)
    return docs


def _check_messages(messages: Any, where: str) -> list[dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise InputError(f"{where}: \"messages\" must be a non-empty list", hint=_JSONL_HINT)
    for i, m in enumerate(messages, 1):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str):
            raise InputError(f"{where}: message {i} needs a \"role\" and a \"content\" string", hint=_JSONL_HINT)
        if m.get("role") not in CHAT_ROLES:
            raise InputError(f"{where}: message {i} has role {m.get('role')!r}",
                             hint=f"roles are {', '.join(CHAT_ROLES)}")
    return [{"role": str(m["role"]), "content": str(m["content"])} for m in messages]


def chat_template_of(tokenizer: Any | None, where: str) -> str:
    """The model's own chat template (``tokenizer.chat_template``), or an error with the fix."""
    template = getattr(tokenizer, "chat_template", None) if tokenizer is not None else None
    if isinstance(template, Mapping):  # several named templates: the default one renders chats
        template = template.get("default")
    if not isinstance(template, str) or not template.strip():
        raise InputError(f"{where} holds a chat (\"messages\") but the model has no chat template to render it",
                         hint="add the fine-tune's chat_template.jinja (or tokenizer_config.json's chat_template) "
                              "to the model directory, or give each line a \"text\" field instead")
    return template


def render_chat(template: str, messages: Sequence[Mapping[str, str]], tokenizer: Any | None, where: str) -> str:
    """A whole conversation as the model sees it (no generation prompt: the turns are complete)."""
    from edgekit.runtimes.chat_template import ChatTemplateError, render

    try:
        return render(template, messages, add_generation_prompt=False,
                      bos_token=str(getattr(tokenizer, "bos_token", None) or ""),
                      eos_token=str(getattr(tokenizer, "eos_token", None) or ""))
    except ChatTemplateError as e:
        raise InputError(f"{where}: {e.message}", hint=e.hint or "check the chat's roles and order "
                                                                  "against what the model's template accepts") from e


# --------------------------------------------------------------------------- tokens

def token_stream(tokenizer: Any, texts: Iterable[str]) -> list[int]:
    """Token ids of the texts joined by a blank line, without special tokens added (specials
    the text spells, such as a rendered chat's, are kept), tokenized in bounded chunks."""
    ids: list[int] = []
    for text in _chunks(SEPARATOR.join(texts)):
        # verbose=False: a chunk is longer than the model's context on purpose; no warning
        ids.extend(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])
    return ids


def _chunks(text: str) -> Iterable[str]:
    start = 0
    while start < len(text):
        end = min(len(text), start + _CHUNK_CHARS)
        if end < len(text):  # cut at a paragraph (else line) break so no word is split
            cut = text.rfind(SEPARATOR, start, end)
            cut = cut if cut > start else text.rfind("\n", start, end)
            end = cut + 1 if cut > start else end
        yield text[start:end]
        start = end


def bos_id(tokenizer: Any) -> int | None:
    """The BOS id when the tokenizer adds one by itself (the model was trained to see it)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return None
    probe = tokenizer("a", add_special_tokens=True)["input_ids"]
    return int(bos) if probe and probe[0] == bos else None
