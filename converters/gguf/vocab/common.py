"""Shared pieces of the vocab writer: GGUF token types, the tokenizer files read once,
and the token list being built."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

# gguf.TokenType values, repeated here so the module imports without gguf (tests, typing).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

SPACE_PIECE = "▁"  # SentencePiece's visible space (U+2581)
BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")

# Score for tokens no merge produces (added, padding, single characters): below every merge,
# so llama.cpp's SPM tokenizer never prefers building one of them over a real merge.
NO_MERGE_SCORE = -1e9

FILES_HINT = "copy the tokenizer files of the fine-tune (tokenizer.save_pretrained) into the model directory"
KINDS_HINT = (
    "supported: SentencePiece tokenizer.model, SentencePiece-style BPE tokenizer.json "
    "(byte_fallback + Metaspace), byte-level BPE tokenizer.json"
)


@dataclass
class Sources:
    """The tokenizer files of one model directory, read once."""

    model_dir: Path
    tokenizer_json: dict[str, Any] | None
    config: dict[str, Any]  # tokenizer_config.json
    model_config: dict[str, Any]  # config.json
    spm_path: Path | None
    added_tokens_json: dict[str, int]


@dataclass(frozen=True)
class Added:
    id: int
    content: str
    special: bool


@dataclass
class Vocab:
    kind: Literal["spm", "bpe"]
    tokens: list[str]
    types: list[int]
    scores: list[float] | None = None
    merges: list[str] | None = None
    pre: str | None = None
    add_space_prefix: bool | None = None
    # ids the tokenizer itself names (SentencePiece model ids), used when configs are silent
    default_ids: dict[str, int] = field(default_factory=dict)
