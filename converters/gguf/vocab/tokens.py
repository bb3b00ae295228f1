"""Building the token list (tokens, types, scores or merges) for each tokenizer kind:
SentencePiece ``tokenizer.model``, SentencePiece-style BPE ``tokenizer.json``, byte-level BPE."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from edgekit.errors import CorruptFileError, InputError

from ..pretokenizers import PRE_TOKENIZERS, detect_pre_tokenizer
from .common import (
    BYTE,
    BYTE_PIECE,
    CONTROL,
    KINDS_HINT,
    NO_MERGE_SCORE,
    NORMAL,
    SPACE_PIECE,
    UNKNOWN,
    UNUSED,
    USER_DEFINED,
    Added,
    Sources,
    Vocab,
)
from .sources import is_byte_level, is_spm_style_bpe, space_prefix_from_json

log = logging.getLogger(__name__)

def build_vocab(src: Sources, pre_override: str | None) -> Vocab:
    """Byte-level tokenizer.json first (a stray tokenizer.model next to it is not what HF runs),
    then tokenizer.model, then a SentencePiece-style tokenizer.json."""
    tj = src.tokenizer_json
    _warn_unrepresentable(src)
    if tj is not None and (tj.get("model") or {}).get("type") == "BPE" and is_byte_level(tj):
        return _bpe_vocab(src, tj, pre_override)
    if pre_override is not None:
        log.warning("pre_override=%r ignored: SentencePiece tokenizers have no pre-tokenizer", pre_override)
    if src.spm_path is not None:
        return _spm_file_vocab(src, src.spm_path)
    if tj is not None and is_spm_style_bpe(tj):
        return _spm_json_vocab(src, tj)
    model_type = (tj or {}).get("model", {}).get("type", "?")
    raise InputError(f"unsupported tokenizer in {src.model_dir} (tokenizer.json model type {model_type})",
                     hint=KINDS_HINT)


def _added_tokens(src: Sources) -> dict[int, Added]:
    """Added tokens by id from every place transformers keeps them (first source wins)."""
    found: dict[int, Added] = {}
    for entry in (src.tokenizer_json or {}).get("added_tokens", []):
        found.setdefault(int(entry["id"]), Added(int(entry["id"]), str(entry["content"]), bool(entry.get("special"))))
    for key, entry in (src.config.get("added_tokens_decoder") or {}).items():
        if isinstance(entry, Mapping) and "content" in entry:
            found.setdefault(int(key), Added(int(key), str(entry["content"]), bool(entry.get("special"))))
    for content, tid in src.added_tokens_json.items():
        found.setdefault(int(tid), Added(int(tid), str(content), False))
    return found


def _warn_unrepresentable(src: Sources) -> None:
    flagged = [
        str(e.get("content"))
        for e in (src.tokenizer_json or {}).get("added_tokens", [])
        if e.get("lstrip") or e.get("rstrip") or e.get("single_word")
    ]
    if flagged:
        log.warning("added tokens %s strip whitespace or match single words in HF; GGUF cannot express that",
                    ", ".join(flagged[:5]))


def _user_text(content: str) -> str:
    # llama.cpp matches user-defined tokens on the raw text, before spaces become '▁'.
    return content.replace(SPACE_PIECE, " ")


def _place(tokens: list[str | None], types: list[int], tid: int, text: str, typ: int) -> None:
    while len(tokens) <= tid:
        tokens.append(None)
        types.append(UNUSED)
    tokens[tid], types[tid] = text, typ


def _fill_holes(tokens: list[str | None], what: str) -> list[str]:
    holes = [i for i, t in enumerate(tokens) if t is None]
    if holes:
        log.warning("%s has no token for %d id(s) (first %d); writing [PAD{id}] placeholders", what, len(holes),
                    holes[0])
    return [f"[PAD{i}]" if t is None else t for i, t in enumerate(tokens)]


def _overlay_added(tokens: list[str | None], types: list[int], added: Mapping[int, Added]) -> None:
    """Put HF added tokens over the base vocabulary: special -> CONTROL, others USER_DEFINED."""
    for tid, tok in sorted(added.items()):
        current = types[tid] if tid < len(types) and tokens[tid] is not None else None
        if tok.special:
            typ = current if current in (CONTROL, UNKNOWN) else CONTROL
            _place(tokens, types, tid, tok.content, typ)
        else:
            _place(tokens, types, tid, _user_text(tok.content), USER_DEFINED)


def _spm_file_vocab(src: Sources, spm_path: Path) -> Vocab:
    sp = _load_sentencepiece(spm_path)
    proto = _spm_proto(spm_path)
    # (piece, score, type) by id; SentencePiece piece types use the same numbers as GGUF token
    # types. The model proto holds all three in id order: one pass over it, not three calls
    # into the processor per piece (seconds for a 262,144-piece vocabulary).
    pieces = ([(p.piece, p.score, int(p.type)) for p in proto.pieces] if proto is not None else
              [(sp.IdToPiece(i), sp.GetScore(i), _spm_type(sp, i)) for i in range(sp.vocab_size())])
    tokens: list[str | None] = [_user_text(piece) if typ == USER_DEFINED else piece for piece, _, typ in pieces]
    types = [typ for _, _, typ in pieces]
    scores = [float(score) for _, score, _ in pieces]
    del pieces
    _overlay_added(tokens, types, _added_tokens(src))
    scores += [NO_MERGE_SCORE] * (len(tokens) - len(scores))
    tj = src.tokenizer_json
    if tj is not None and tj.get("model"):
        prefix = space_prefix_from_json(tj)
    else:  # SentencePiece's own add_dummy_prefix, True by default
        prefix = bool(proto.normalizer_spec.add_dummy_prefix) if proto is not None else True
    defaults = {typ: tid for typ, tid in (("bos", sp.bos_id()), ("eos", sp.eos_id()), ("unk", sp.unk_id()),
                                          ("pad", sp.pad_id())) if tid >= 0}
    return Vocab("spm", _fill_holes(tokens, "tokenizer.model"), types, scores=scores, add_space_prefix=prefix,
                  default_ids=defaults)


def _load_sentencepiece(path: Path) -> Any:
    from sentencepiece import SentencePieceProcessor

    sp = SentencePieceProcessor()
    try:
        sp.LoadFromFile(str(path))
    except (OSError, RuntimeError) as e:
        raise CorruptFileError(path, "not a SentencePiece model", hint="re-download tokenizer.model") from e
    return sp


def _spm_type(sp: Any, i: int) -> int:
    """Piece type without protobuf (the processor cannot tell user-defined pieces apart)."""
    if sp.IsUnknown(i):
        return UNKNOWN
    if sp.IsControl(i):
        return CONTROL
    if sp.IsUnused(i):
        return UNUSED
    if sp.IsByte(i):
        return BYTE
    return NORMAL


def _spm_proto(path: Path) -> Any | None:
    """The parsed model (piece types, normalizer flags), or None when protobuf is missing."""
    try:
        from sentencepiece import sentencepiece_model_pb2
    except ImportError:
        log.info("protobuf is not installed; user-defined SentencePiece pieces are written as normal")
        return None
    proto = sentencepiece_model_pb2.ModelProto()  # type: ignore[attr-defined]  # generated module
    proto.ParseFromString(path.read_bytes())
    if proto.trainer_spec.model_type != proto.trainer_spec.BPE:
        log.warning("SentencePiece %s model: llama.cpp tokenizes it with BPE-style merges, which can differ",
                    proto.trainer_spec.ModelType.Name(proto.trainer_spec.model_type))
    return proto


def _merge_pairs(merges: Sequence[Any]) -> list[tuple[str, str]]:
    pairs = []
    for m in merges:
        if isinstance(m, str):
            left, _, right = m.partition(" ")
        else:
            left, right = str(m[0]), str(m[1])
        pairs.append((left, right))
    return pairs


def _vocab_by_id(tj: Mapping[str, Any], what: str) -> list[str | None]:
    vocab = (tj.get("model") or {}).get("vocab")
    if not isinstance(vocab, Mapping):
        raise CorruptFileError(what, "model.vocab is not a token -> id map")
    tokens: list[str | None] = [None] * (max(vocab.values(), default=-1) + 1)
    for text, tid in vocab.items():
        tokens[int(tid)] = str(text)
    return tokens


def _spm_json_vocab(src: Sources, tj: Mapping[str, Any]) -> Vocab:
    """llama.cpp's SPM tokenizer merges the adjacent pair whose concatenation scores highest.
    HF BPE merges the pair with the lowest merge rank, so a token scores -rank of the first
    merge that produces it; that makes both pick the same pair at every step."""
    tokens = _vocab_by_id(tj, str(src.model_dir / "tokenizer.json"))
    unk = (tj.get("model") or {}).get("unk_token")
    types = [_hf_spm_type(t, unk) for t in tokens]
    _overlay_added(tokens, types, _added_tokens(src))
    rank: dict[str, int] = {}
    for i, (left, right) in enumerate(_merge_pairs((tj.get("model") or {}).get("merges", []))):
        rank.setdefault(left + right, i)
    scores = [-float(rank[t]) if t in rank else NO_MERGE_SCORE for t in tokens]
    return Vocab("spm", _fill_holes(tokens, "tokenizer.json"), types, scores=scores,
                  add_space_prefix=space_prefix_from_json(tj))


def _hf_spm_type(text: str | None, unk: str | None) -> int:
    if text is None:
        return UNUSED
    if text == unk:
        return UNKNOWN
    return BYTE if BYTE_PIECE.fullmatch(text) else NORMAL


def _bpe_vocab(src: Sources, tj: Mapping[str, Any], pre_override: str | None) -> Vocab:
    tokens = _vocab_by_id(tj, str(src.model_dir / "tokenizer.json"))
    types = [UNUSED if t is None else NORMAL for t in tokens]
    _overlay_added(tokens, types, _added_tokens(src))
    pre = pre_override or _detect_pre(tj)
    if pre_override and pre_override not in PRE_TOKENIZERS:
        log.warning("pre_override=%r is not in edgekit's table; trusting it", pre_override)
    return Vocab("bpe", _fill_holes(tokens, "tokenizer.json"), types, merges=_gguf_merges(tj), pre=pre)


def _detect_pre(tj: Mapping[str, Any]) -> str:
    entry = detect_pre_tokenizer(tj)
    hf_ignore = bool((tj.get("model") or {}).get("ignore_merges", False))
    if hf_ignore != entry.ignore_merges:
        log.warning("llama.cpp runs %r with ignore_merges=%s but the HF tokenizer has ignore_merges=%s; "
                    "rare words may split differently", entry.name, entry.ignore_merges, hf_ignore)
    return entry.name


def _gguf_merges(tj: Mapping[str, Any]) -> list[str]:
    """Merges as "left right" strings (llama.cpp splits at the first space after position 0)."""
    out = []
    for left, right in _merge_pairs((tj.get("model") or {}).get("merges", [])):
        if " " in left or " " in right:  # same escape as gguf-py; never happens in byte-level vocabs
            left, right = left.replace(" ", "Ġ"), right.replace(" ", "Ġ")
        out.append(f"{left} {right}")
    return out


def check_unique(tokens: Sequence[str], model_dir: Path) -> None:
    if len(set(tokens)) == len(tokens):  # the usual case, in one C-level pass
        return
    seen: dict[str, int] = {}
    for i, t in enumerate(tokens):
        if t in seen:
            raise InputError(f"the tokenizer in {model_dir} has token {t!r} twice (ids {seen[t]} and {i})",
                             hint="llama.cpp requires unique token texts; remove the duplicate added token")
        seen[t] = i


def pad_vocab(vocab: Vocab, n_vocab: int) -> None:
    for i in range(len(vocab.tokens), n_vocab):
        vocab.tokens.append(f"[PAD{i}]")
        vocab.types.append(UNUSED)
        if vocab.scores is not None:
            vocab.scores.append(NO_MERGE_SCORE)
