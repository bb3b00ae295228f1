"""Reading a model directory's tokenizer files, and questions about tokenizer.json's structure
(byte-level? Metaspace? does it prepend a space?) that decide how it is written."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgekit.errors import InputError

from ...probes import CHAT_PROBE, TOKENIZER_PROBES
from ...source import read_json
from .common import FILES_HINT, SPACE_PIECE, Sources

log = logging.getLogger(__name__)

def _read_optional_json(path: Path) -> dict[str, Any]:
    return read_json(path) if path.is_file() else {}


def _probe_texts(runtime: Any) -> dict[str, str]:
    texts = dict(TOKENIZER_PROBES)
    try:
        texts["chat"] = runtime.apply_chat_template(CHAT_PROBE, tokenize=False)
    except Exception:  # no or unusable template: the plain probes still tell
        pass
    return texts


def _dir_stamp(model_dir: Path) -> tuple[tuple[str, int, int], ...]:
    """Name, mtime and size of every file in ``model_dir``: changes when any file transformers reads does."""
    with os.scandir(model_dir) as it:
        return tuple(sorted((e.name, (st := e.stat()).st_mtime_ns, st.st_size) for e in it if e.is_file()))


@functools.lru_cache(maxsize=16)
def _transformers_difference(model_dir: Path, stamp: tuple[tuple[str, int, int], ...]
                             ) -> tuple[str, tuple[str, ...]] | str:
    """(transformers' tokenizer class, the probes it encodes differently from tokenizer.json as
    saved), or why transformers could not load the tokenizer.

    Cached per directory contents (``stamp``): a conversion writes a vocab into every float
    GGUF, and loading the tokenizer with transformers is the slow part of doing so.
    """
    try:
        from tokenizers import Tokenizer
        from transformers import AutoTokenizer

        runtime = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        saved = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        differing = tuple(
            name
            for name, text in _probe_texts(runtime).items()
            if saved.encode(text, add_special_tokens=False).ids != runtime(text, add_special_tokens=False).input_ids
        )
    except Exception as e:  # transformers raises many types; this is only a diagnostic
        return " ".join(str(e).split())[:200]
    return type(runtime).__name__, differing


def _warn_if_transformers_differs(model_dir: Path) -> None:
    """transformers 5 rebuilds normalizer / pre-tokenizer from the tokenizer class (and
    tokenizer_config.json ``legacy``) instead of using tokenizer.json as saved. When that changes
    the ids of edgekit's probes, say so: the HF-vs-GGUF check will disagree for that reason."""
    found = _transformers_difference(model_dir.resolve(), _dir_stamp(model_dir))
    if isinstance(found, str):
        log.warning("transformers could not load the tokenizer in %s: %s", model_dir, found)
        return
    runtime_class, differing = found
    if differing:
        log.warning(
            "transformers (%s) tokenizes the %s probe(s) differently from tokenizer.json: it rebuilds the "
            "pre-tokenizer from the tokenizer class and tokenizer_config.json. The GGUF follows tokenizer.json "
            "(what the checkpoint was saved with); if transformers is wrong, fix tokenizer_class / legacy in "
            "tokenizer_config.json",
            runtime_class, ", ".join(differing),
        )


def read_sources(model_dir: Path, *, compare_transformers: bool = True) -> Sources:
    if not model_dir.is_dir():
        raise InputError(f"model directory {model_dir} does not exist", hint=FILES_HINT)
    json_path, spm_path = model_dir / "tokenizer.json", model_dir / "tokenizer.model"
    if not json_path.is_file() and not spm_path.is_file():
        raise InputError(f"no tokenizer.json or tokenizer.model in {model_dir}", hint=FILES_HINT)
    tokenizer_json = _read_optional_json(json_path) or None
    if tokenizer_json is not None and compare_transformers:
        _warn_if_transformers_differs(model_dir)
    return Sources(
        model_dir=model_dir,
        tokenizer_json=tokenizer_json,
        config=_read_optional_json(model_dir / "tokenizer_config.json"),
        model_config=_read_optional_json(model_dir / "config.json"),
        spm_path=spm_path if spm_path.is_file() else None,
        added_tokens_json=_read_optional_json(model_dir / "added_tokens.json"),
    )


# ------------------------------------------------------------------------------------------
# structure helpers
# ------------------------------------------------------------------------------------------


def _nodes(node: Mapping[str, Any] | None, key: str) -> list[Mapping[str, Any]]:
    """Flatten a tokenizers Sequence (normalizers / pretokenizers / decoders) into leaves."""
    if node is None:
        return []
    if node.get("type") == "Sequence":
        return [leaf for child in node.get(key, []) for leaf in _nodes(child, key)]
    return [node]


def is_byte_level(tj: Mapping[str, Any]) -> bool:
    return any(n.get("type") == "ByteLevel" for n in _nodes(tj.get("pre_tokenizer"), "pretokenizers")) or any(
        n.get("type") == "ByteLevel" for n in _nodes(tj.get("decoder"), "decoders")
    )


def _metaspace(tj: Mapping[str, Any]) -> Mapping[str, Any] | None:
    return next((n for n in _nodes(tj.get("pre_tokenizer"), "pretokenizers") if n.get("type") == "Metaspace"), None)


def _replaces_spaces(tj: Mapping[str, Any]) -> bool:
    return any(
        n.get("type") == "Replace" and n.get("content") == SPACE_PIECE
        for n in _nodes(tj.get("normalizer"), "normalizers")
    )


def _prepends_space(tj: Mapping[str, Any]) -> bool:
    return any(
        n.get("type") == "Prepend" and n.get("prepend") == SPACE_PIECE
        for n in _nodes(tj.get("normalizer"), "normalizers")
    )


def is_spm_style_bpe(tj: Mapping[str, Any]) -> bool:
    model = tj.get("model") or {}
    return (
        model.get("type") == "BPE"
        and bool(model.get("byte_fallback"))
        and (_metaspace(tj) is not None or _replaces_spaces(tj))
    )


def space_prefix_from_json(tj: Mapping[str, Any]) -> bool:
    """Whether HF puts ``▁`` before the text, and a warning where llama.cpp cannot follow."""
    meta = _metaspace(tj)
    if meta is None:
        return _prepends_space(tj)
    scheme = meta.get("prepend_scheme") or ("always" if meta.get("add_prefix_space", True) else "never")
    if meta.get("split"):
        log.warning("Metaspace(split=true): HF never merges across words; llama.cpp's SPM tokenizer may")
    if scheme == "first":
        log.warning(
            "the tokenizer prepends '▁' only at the very start of the input (Metaspace prepend_scheme="
            "'first', transformers' non-legacy Llama tokenizer); llama.cpp also prepends it to text "
            "that follows a special token, so chat-formatted prompts can tokenize differently"
        )
    return scheme in ("always", "first")
