"""The ids a model ends its generation with, as its source declares them.

A fine-tune stops where three files say it does, and each can name a different token:

* ``generation_config.json``'s ``eos_token_id`` (an id or a list; transformers' ``generate``
  stops on every one), falling back to ``config.json``'s;
* ``tokenizer_config.json``'s ``eos_token`` (a text);
* the chat template: the marker it writes right after an assistant's message
  (``<|im_end|>``, ``<|eot_id|>``, ``<end_of_turn>``, ``<|end|>``, a custom one), found by
  rendering a two-turn conversation through edgekit's sandboxed renderer.

Every one must be end-of-generation in an artifact, or the model runs past the end of its
turn (the most common complaint after converting a fine-tune). :func:`declared_stops` lists
them; the converters write them (GGUF eos/eot/eom ids, ONNX genai_config's ``eos_token_id``
list) and the verifier checks the artifact's runtime treats each as the end.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit.errors import InputError

log = logging.getLogger(__name__)

# Placeholders rendered as message contents: text no template writes by itself
_USER1, _ASSISTANT1, _USER2, _ASSISTANT2 = "edgekitU1q", "edgekitA1q", "edgekitU2q", "edgekitA2q"
TWO_TURNS: tuple[dict[str, str], ...] = (
    {"role": "user", "content": _USER1}, {"role": "assistant", "content": _ASSISTANT1},
    {"role": "user", "content": _USER2}, {"role": "assistant", "content": _ASSISTANT2},
)
# What a special-token marker looks like at the start of the text after a message: <...>, [..]
_MARKER = re.compile(r"<[^<>\s]{1,64}>|\[[A-Za-z_/|]{2,32}\]")

GENERATION_CONFIG = "generation_config.json eos_token_id"
TOKENIZER_CONFIG = "tokenizer_config.json eos_token"
MODEL_CONFIG = "config.json eos_token_id"
TEMPLATE = "the chat template's end of turn"


@dataclass(frozen=True)
class StopToken:
    id: int
    text: str
    declared_by: tuple[str, ...]  # GENERATION_CONFIG, TOKENIZER_CONFIG, MODEL_CONFIG, TEMPLATE

    def describe(self) -> str:
        return f"{self.text!r} (id {self.id}, {' and '.join(self.declared_by)})"


@dataclass(frozen=True)
class StopTokens:
    """Every end-of-generation token a source declares, in declaration order."""

    tokens: tuple[StopToken, ...]
    end_of_turn: StopToken | None  # the chat template's marker, when it writes one

    @property
    def ids(self) -> list[int]:
        return [t.id for t in self.tokens]

    def missing(self, is_eog: Callable[[int], bool]) -> list[StopToken]:
        """The declared stops an artifact's runtime does not treat as the end of generation."""
        return [t for t in self.tokens if not is_eog(t.id)]

    def to_dict(self) -> dict[str, Any]:
        return {"ids": self.ids, "texts": [t.text for t in self.tokens],
                "end_of_turn": None if self.end_of_turn is None else self.end_of_turn.text}


def token_text(entry: Any) -> str | None:
    """A special token's text from tokenizer_config.json (a string or an AddedToken dict)."""
    if isinstance(entry, str):
        return entry
    if isinstance(entry, Mapping) and isinstance(entry.get("content"), str):
        return str(entry["content"])
    return None


def _ids(value: Any) -> list[int]:
    values = value if isinstance(value, list) else [value]
    return [v for v in values if isinstance(v, int) and not isinstance(v, bool)]


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        log.warning("could not read %s: %s", path, e)
        return {}
    return data if isinstance(data, dict) else {}


def end_of_turn_text(template: str, index: Mapping[str, int], *, bos: str = "", eos: str = "") -> str | None:
    """The marker ``template`` writes right after an assistant's message, or None (a template
    that ends turns with plain text, or none at all).

    Raises InputError when the marker looks like a special token but is not one token of the
    vocabulary (``index``: token text -> id): no runtime could stop on it."""
    from edgekit.runtimes.chat_template import ChatTemplateError, UnsafeChatTemplateError, render

    try:
        text = render(template, TWO_TURNS, add_generation_prompt=False, bos_token=bos, eos_token=eos)
    except UnsafeChatTemplateError:
        raise
    except ChatTemplateError as e:
        log.warning("the chat template could not render a two-turn conversation (%s): no end-of-turn token read "
                    "from it", e)
        return None
    start, nxt = text.find(_ASSISTANT1), text.find(_USER2)
    if start < 0 or nxt < start:
        return None
    after = text[start + len(_ASSISTANT1):nxt].lstrip(" \t\r\n")
    # the longest token of the vocabulary the text after the message starts with, among those
    # shaped like markers (a template that ends turns with "\n\n" has none)
    m = _MARKER.match(after)
    if m is None:
        return None
    candidates = [t for t in (m.group(0), *(k for k in index if k and after.startswith(k) and _MARKER.fullmatch(k)))
                  if t in index]
    if not candidates:
        raise InputError(f"the chat template ends assistant turns with {m.group(0)!r}, which is not a token of "
                         f"the vocabulary: no runtime can stop there",
                         hint=f"add {m.group(0)!r} as a special token (tokenizer.add_special_tokens, then "
                              f"model.resize_token_embeddings) and save again, or fix the chat template")
    marker = max(candidates, key=len)
    before_user = text[:text.find(_USER1)] if _USER1 in text else ""
    if marker in before_user and marker != eos:
        return None  # the marker that *opens* turns (a template with no end marker)
    return marker


def declared_stops(model_dir: Path, index: Mapping[str, int], *, n_vocab: int | None = None) -> StopTokens:
    """The end-of-generation tokens the files in ``model_dir`` declare; ``index`` maps token
    text to id (the tokenizer's whole vocabulary, added tokens included)."""
    from .gguf.vocab.special import read_template_files

    model_dir = Path(model_dir)
    if not index:
        log.warning("no vocabulary to read the stop tokens of %s against", model_dir)
        return StopTokens((), None)
    tok_cfg = _read(model_dir / "tokenizer_config.json")
    gen_cfg = _read(model_dir / "generation_config.json")
    by_id: dict[int, list[str]] = {}
    texts = {i: t for t, i in index.items()}

    def add(tid: int, why: str) -> None:
        if tid < 0 or (n_vocab is not None and tid >= n_vocab) or tid not in texts:
            log.warning("%s names id %d, which is not in the vocabulary: ignored", why, tid)
            return
        by_id.setdefault(tid, [])
        if why not in by_id[tid]:
            by_id[tid].append(why)

    if "eos_token_id" in gen_cfg:
        for tid in _ids(gen_cfg.get("eos_token_id")):
            add(tid, GENERATION_CONFIG)
    else:  # transformers derives the generation config from config.json then
        cfg = _read(model_dir / "config.json")
        for tid in _ids(cfg.get("eos_token_id", cfg.get("text_config", {}).get("eos_token_id"))):
            add(tid, MODEL_CONFIG)
    eos = token_text(tok_cfg.get("eos_token"))
    if eos is not None and eos in index:
        add(index[eos], TOKENIZER_CONFIG)
    _, template = read_template_files(tok_cfg, model_dir)
    eot: StopToken | None = None
    if template:
        marker = end_of_turn_text(template, index, bos=token_text(tok_cfg.get("bos_token")) or "", eos=eos or "")
        if marker is not None:
            add(index[marker], TEMPLATE)
            eot = StopToken(index[marker], marker, tuple(by_id[index[marker]]))
    tokens = tuple(StopToken(tid, texts[tid], tuple(why)) for tid, why in by_id.items())
    if eot is not None:
        eot = next(t for t in tokens if t.id == eot.id)
    return StopTokens(tokens, eot)


def tokenizer_index(model_dir: Path) -> dict[str, int]:
    """Token text -> id from tokenizer.json (model vocabulary and added tokens) and
    tokenizer_config.json's added_tokens_decoder; empty when there is no tokenizer.json."""
    tok = _read(Path(model_dir) / "tokenizer.json")
    index: dict[str, int] = {}
    vocab = (tok.get("model") or {}).get("vocab")
    if isinstance(vocab, dict):
        index.update({str(k): int(v) for k, v in vocab.items()})
    elif isinstance(vocab, list):  # Unigram: [piece, score] rows
        index.update({str(row[0]): i for i, row in enumerate(vocab) if isinstance(row, list) and row})
    for added in tok.get("added_tokens") or []:
        if isinstance(added, Mapping) and isinstance(added.get("content"), str):
            index[str(added["content"])] = int(added["id"])
    for tid, entry in (_read(Path(model_dir) / "tokenizer_config.json").get("added_tokens_decoder") or {}).items():
        text = token_text(entry)
        if text is not None and str(tid).isdigit():
            index.setdefault(text, int(tid))
    return index


def stop_failures(stops: StopTokens, is_eog: Callable[[int], bool]) -> list[str]:
    """One failure line for the verifier when a declared stop is not end-of-generation."""
    missing = stops.missing(is_eog)
    if not missing:
        return []
    return [f"stop tokens: {', '.join(t.describe() for t in missing)} not end-of-generation in the artifact "
            f"(the model would run past the end of its turn)"]


def write_genai_stops(onnx_dir: Path, stops: StopTokens) -> None:
    """Add every declared stop id to an ONNX Runtime GenAI model's genai_config.json
    ``eos_token_id`` list (its builder writes generation_config's ids only)."""
    path = Path(onnx_dir) / "genai_config.json"
    cfg = json.loads(path.read_text(encoding="utf-8"))
    model = cfg.setdefault("model", {})
    have = _ids(model.get("eos_token_id"))
    want = have + [i for i in stops.ids if i not in have]
    if want != have:
        model["eos_token_id"] = want
        path.write_text(json.dumps(cfg, indent=4), encoding="utf-8")
        log.info("genai_config.json eos_token_id: %s (added the source's stop tokens %s)", want,
                 [t.text for t in stops.tokens if t.id not in have])
