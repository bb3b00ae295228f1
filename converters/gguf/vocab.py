"""Write a Hugging Face tokenizer into GGUF ``tokenizer.*`` keys the way llama.cpp reads them.

Three tokenizer kinds are supported:

* ``tokenizer.model`` (SentencePiece) -> ``tokenizer.ggml.model = "llama"`` with the pieces,
  scores and types of the model file, plus the tokens added on the Hugging Face side;
* a SentencePiece-style BPE ``tokenizer.json`` (byte_fallback, ``▁`` for spaces: HF's fast
  conversion of Llama 2 / Mistral / Gemma) -> ``"llama"`` built from tokenizer.json, scores
  derived from the merge ranks (llama.cpp's SPM tokenizer merges by score);
* a byte-level BPE ``tokenizer.json`` -> ``"gpt2"`` with merges and a ``tokenizer.ggml.pre``
  name detected from the pre-tokenizer structure (see :mod:`.pretokenizers`).

The GGUF follows the tokenizer files of the checkpoint (what it was trained with). transformers 5
does not always run tokenizer.json as saved: for model-specific classes (``LlamaTokenizer``,
``Qwen2Tokenizer``...) it rebuilds normalizer and pre-tokenizer from the class and
tokenizer_config.json (``legacy``), so a wrong ``tokenizer_class`` silently changes tokenization.
We load the tokenizer with transformers too and log a warning when it would encode differently.

Known llama.cpp limits for SentencePiece (no GGUF key changes them): llama.cpp prepends ``▁``
to every text fragment that follows a special token (HF's Metaspace ``prepend_scheme='first'``
only at the start of the input), and prepends it even when the text already starts with a
space (HF's Metaspace does not; the older ``Prepend`` normalizer does, like llama.cpp).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from edgekit.errors import CorruptFileError, InputError

from ..probes import CHAT_PROBE, TOKENIZER_PROBES
from ..source import read_json
from .pretokenizers import PRE_TOKENIZERS, detect_pre_tokenizer

if TYPE_CHECKING:
    import gguf

__all__ = ["VocabInfo", "write_vocab"]

log = logging.getLogger(__name__)

# gguf.TokenType values, repeated here so the module imports without gguf (tests, typing).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

SPACE_PIECE = "▁"  # SentencePiece's visible space (U+2581)
_BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")

# Score for tokens no merge produces (added, padding, single characters): below every merge,
# so llama.cpp's SPM tokenizer never prefers building one of them over a real merge.
_NO_MERGE_SCORE = -1e9

# End-of-turn tokens of common chat formats, most specific first. llama.cpp also guesses
# these by text, but writing the id makes the file self-describing.
_EOT_TEXTS = ("<|eot_id|>", "<|im_end|>", "<end_of_turn>", "<|end|>")
_EOM_TEXTS = ("<|eom_id|>",)

_FILES_HINT = "copy the tokenizer files of the fine-tune (tokenizer.save_pretrained) into the model directory"
_KINDS_HINT = (
    "supported: SentencePiece tokenizer.model, SentencePiece-style BPE tokenizer.json "
    "(byte_fallback + Metaspace), byte-level BPE tokenizer.json"
)


@dataclass(frozen=True)
class VocabInfo:
    """What :func:`write_vocab` wrote, for the converter's report and the verifier."""

    kind: Literal["spm", "bpe"]
    pre: str | None  # tokenizer.ggml.pre (BPE only)
    n_tokens: int  # real tokenizer size, before padding to the embedding rows
    chat_template: str | None
    bos_id: int | None
    eos_id: int | None


@dataclass
class _Sources:
    """The tokenizer files of one model directory, read once."""

    model_dir: Path
    tokenizer_json: dict[str, Any] | None
    config: dict[str, Any]  # tokenizer_config.json
    model_config: dict[str, Any]  # config.json
    spm_path: Path | None
    added_tokens_json: dict[str, int]


@dataclass(frozen=True)
class _Added:
    id: int
    content: str
    special: bool


@dataclass
class _Vocab:
    kind: Literal["spm", "bpe"]
    tokens: list[str]
    types: list[int]
    scores: list[float] | None = None
    merges: list[str] | None = None
    pre: str | None = None
    add_space_prefix: bool | None = None
    # ids the tokenizer itself names (SentencePiece model ids), used when configs are silent
    default_ids: dict[str, int] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------
# public entry point
# ------------------------------------------------------------------------------------------


def write_vocab(
    w: gguf.GGUFWriter,
    model_dir: Path,
    *,
    n_vocab: int,
    add_space_prefix: bool | None = None,
    pre_override: str | None = None,
) -> VocabInfo:
    """Write every ``tokenizer.*`` key for the Hugging Face model in ``model_dir``.

    ``n_vocab`` is the number of embedding rows: the token list is padded to it with
    ``[PAD{id}]`` tokens typed UNUSED. ``add_space_prefix`` overrides what the tokenizer says
    (SentencePiece kinds only). ``pre_override`` forces ``tokenizer.ggml.pre`` (BPE only).
    """
    src = _read_sources(Path(model_dir))
    vocab = _build_vocab(src, pre_override)
    if add_space_prefix is not None and vocab.kind == "spm":
        vocab.add_space_prefix = add_space_prefix
    n_tokens = len(vocab.tokens)
    if n_tokens > n_vocab:
        raise InputError(
            f"the tokenizer in {src.model_dir} has {n_tokens} tokens but the embedding has only {n_vocab} rows",
            hint="the tokenizer does not belong to these weights; after adding tokens, resize the "
            "embeddings (model.resize_token_embeddings) and save again",
        )
    _check_unique(vocab.tokens, src.model_dir)
    _pad(vocab, n_vocab)
    ids = _special_ids(src, vocab)
    add_bos, add_eos = _add_special_flags(src, vocab, ids)
    for flag, typ in ((add_bos, "bos"), (add_eos, "eos")):
        if flag and typ not in ids:
            raise InputError(f"the tokenizer adds a {typ} token but none is defined",
                             hint=f"set {typ}_token in tokenizer_config.json")
    template, default_template = _chat_template(src)
    _write(w, vocab, ids, add_bos=add_bos, add_eos=add_eos, chat_template=template)
    log.info("vocab: %s, %d tokens (padded to %d), pre=%s", vocab.kind, n_tokens, n_vocab, vocab.pre)
    return VocabInfo(
        kind=vocab.kind,
        pre=vocab.pre,
        n_tokens=n_tokens,
        chat_template=default_template,
        bos_id=ids.get("bos"),
        eos_id=ids.get("eos"),
    )


# ------------------------------------------------------------------------------------------
# reading the directory
# ------------------------------------------------------------------------------------------


def _read_optional_json(path: Path) -> dict[str, Any]:
    return read_json(path) if path.is_file() else {}


def _probe_texts(runtime: Any) -> dict[str, str]:
    texts = dict(TOKENIZER_PROBES)
    try:
        texts["chat"] = runtime.apply_chat_template(CHAT_PROBE, tokenize=False)
    except Exception:  # no or unusable template: the plain probes still tell
        pass
    return texts


def _warn_if_transformers_differs(model_dir: Path, tokenizer_json: Mapping[str, Any]) -> None:
    """transformers 5 rebuilds normalizer / pre-tokenizer from the tokenizer class (and
    tokenizer_config.json ``legacy``) instead of using tokenizer.json as saved. When that changes
    the ids of edgekit's probes, say so: the HF-vs-GGUF check will disagree for that reason."""
    try:
        from tokenizers import Tokenizer
        from transformers import AutoTokenizer

        runtime = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        saved = Tokenizer.from_str(json.dumps(tokenizer_json))
        differing = [
            name
            for name, text in _probe_texts(runtime).items()
            if saved.encode(text, add_special_tokens=False).ids != runtime(text, add_special_tokens=False).input_ids
        ]
    except Exception as e:  # transformers raises many types; this is only a diagnostic
        log.warning("transformers could not load the tokenizer in %s: %s", model_dir, " ".join(str(e).split())[:200])
        return
    if differing:
        log.warning(
            "transformers (%s) tokenizes the %s probe(s) differently from tokenizer.json: it rebuilds the "
            "pre-tokenizer from the tokenizer class and tokenizer_config.json. The GGUF follows tokenizer.json "
            "(what the checkpoint was saved with); if transformers is wrong, fix tokenizer_class / legacy in "
            "tokenizer_config.json",
            type(runtime).__name__, ", ".join(differing),
        )


def _read_sources(model_dir: Path) -> _Sources:
    if not model_dir.is_dir():
        raise InputError(f"model directory {model_dir} does not exist", hint=_FILES_HINT)
    json_path, spm_path = model_dir / "tokenizer.json", model_dir / "tokenizer.model"
    if not json_path.is_file() and not spm_path.is_file():
        raise InputError(f"no tokenizer.json or tokenizer.model in {model_dir}", hint=_FILES_HINT)
    tokenizer_json = _read_optional_json(json_path) or None
    if tokenizer_json is not None:
        _warn_if_transformers_differs(model_dir, tokenizer_json)
    return _Sources(
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


def _is_byte_level(tj: Mapping[str, Any]) -> bool:
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


def _is_spm_style_bpe(tj: Mapping[str, Any]) -> bool:
    model = tj.get("model") or {}
    return (
        model.get("type") == "BPE"
        and bool(model.get("byte_fallback"))
        and (_metaspace(tj) is not None or _replaces_spaces(tj))
    )


def _space_prefix_from_json(tj: Mapping[str, Any]) -> bool:
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


# ------------------------------------------------------------------------------------------
# building the token list
# ------------------------------------------------------------------------------------------


def _build_vocab(src: _Sources, pre_override: str | None) -> _Vocab:
    """Byte-level tokenizer.json first (a stray tokenizer.model next to it is not what HF runs),
    then tokenizer.model, then a SentencePiece-style tokenizer.json."""
    tj = src.tokenizer_json
    _warn_unrepresentable(src)
    if tj is not None and (tj.get("model") or {}).get("type") == "BPE" and _is_byte_level(tj):
        return _bpe_vocab(src, tj, pre_override)
    if pre_override is not None:
        log.warning("pre_override=%r ignored: SentencePiece tokenizers have no pre-tokenizer", pre_override)
    if src.spm_path is not None:
        return _spm_file_vocab(src, src.spm_path)
    if tj is not None and _is_spm_style_bpe(tj):
        return _spm_json_vocab(src, tj)
    model_type = (tj or {}).get("model", {}).get("type", "?")
    raise InputError(f"unsupported tokenizer in {src.model_dir} (tokenizer.json model type {model_type})",
                     hint=_KINDS_HINT)


def _added_tokens(src: _Sources) -> dict[int, _Added]:
    """Added tokens by id from every place transformers keeps them (first source wins)."""
    found: dict[int, _Added] = {}
    for entry in (src.tokenizer_json or {}).get("added_tokens", []):
        found.setdefault(int(entry["id"]), _Added(int(entry["id"]), str(entry["content"]), bool(entry.get("special"))))
    for key, entry in (src.config.get("added_tokens_decoder") or {}).items():
        if isinstance(entry, Mapping) and "content" in entry:
            found.setdefault(int(key), _Added(int(key), str(entry["content"]), bool(entry.get("special"))))
    for content, tid in src.added_tokens_json.items():
        found.setdefault(int(tid), _Added(int(tid), str(content), False))
    return found


def _warn_unrepresentable(src: _Sources) -> None:
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


def _overlay_added(tokens: list[str | None], types: list[int], added: Mapping[int, _Added]) -> None:
    """Put HF added tokens over the base vocabulary: special -> CONTROL, others USER_DEFINED."""
    for tid, tok in sorted(added.items()):
        current = types[tid] if tid < len(types) and tokens[tid] is not None else None
        if tok.special:
            typ = current if current in (CONTROL, UNKNOWN) else CONTROL
            _place(tokens, types, tid, tok.content, typ)
        else:
            _place(tokens, types, tid, _user_text(tok.content), USER_DEFINED)


def _spm_file_vocab(src: _Sources, spm_path: Path) -> _Vocab:
    sp = _load_sentencepiece(spm_path)
    proto = _spm_proto(spm_path)
    tokens: list[str | None] = []
    types: list[int] = []
    scores: list[float] = []
    for i in range(sp.vocab_size()):
        # SentencePiece piece types use the same numbers as GGUF token types.
        typ = int(proto.pieces[i].type) if proto is not None else _spm_type(sp, i)
        piece = sp.IdToPiece(i)
        _place(tokens, types, i, _user_text(piece) if typ == USER_DEFINED else piece, typ)
        scores.append(float(sp.GetScore(i)))
    _overlay_added(tokens, types, _added_tokens(src))
    scores += [_NO_MERGE_SCORE] * (len(tokens) - len(scores))
    tj = src.tokenizer_json
    if tj is not None and tj.get("model"):
        prefix = _space_prefix_from_json(tj)
    else:  # SentencePiece's own add_dummy_prefix, True by default
        prefix = bool(proto.normalizer_spec.add_dummy_prefix) if proto is not None else True
    defaults = {typ: tid for typ, tid in (("bos", sp.bos_id()), ("eos", sp.eos_id()), ("unk", sp.unk_id()),
                                          ("pad", sp.pad_id())) if tid >= 0}
    return _Vocab("spm", _fill_holes(tokens, "tokenizer.model"), types, scores=scores, add_space_prefix=prefix,
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


def _spm_json_vocab(src: _Sources, tj: Mapping[str, Any]) -> _Vocab:
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
    scores = [-float(rank[t]) if t in rank else _NO_MERGE_SCORE for t in tokens]
    return _Vocab("spm", _fill_holes(tokens, "tokenizer.json"), types, scores=scores,
                  add_space_prefix=_space_prefix_from_json(tj))


def _hf_spm_type(text: str | None, unk: str | None) -> int:
    if text is None:
        return UNUSED
    if text == unk:
        return UNKNOWN
    return BYTE if _BYTE_PIECE.fullmatch(text) else NORMAL


def _bpe_vocab(src: _Sources, tj: Mapping[str, Any], pre_override: str | None) -> _Vocab:
    tokens = _vocab_by_id(tj, str(src.model_dir / "tokenizer.json"))
    types = [UNUSED if t is None else NORMAL for t in tokens]
    _overlay_added(tokens, types, _added_tokens(src))
    pre = pre_override or _detect_pre(tj)
    if pre_override and pre_override not in PRE_TOKENIZERS:
        log.warning("pre_override=%r is not in edgekit's table; trusting it", pre_override)
    return _Vocab("bpe", _fill_holes(tokens, "tokenizer.json"), types, merges=_gguf_merges(tj), pre=pre)


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


def _check_unique(tokens: Sequence[str], model_dir: Path) -> None:
    seen: dict[str, int] = {}
    for i, t in enumerate(tokens):
        if t in seen:
            raise InputError(f"the tokenizer in {model_dir} has token {t!r} twice (ids {seen[t]} and {i})",
                             hint="llama.cpp requires unique token texts; remove the duplicate added token")
        seen[t] = i


def _pad(vocab: _Vocab, n_vocab: int) -> None:
    for i in range(len(vocab.tokens), n_vocab):
        vocab.tokens.append(f"[PAD{i}]")
        vocab.types.append(UNUSED)
        if vocab.scores is not None:
            vocab.scores.append(_NO_MERGE_SCORE)


# ------------------------------------------------------------------------------------------
# special tokens, BOS/EOS flags, chat template
# ------------------------------------------------------------------------------------------


def _token_text(entry: Any) -> str | None:
    if isinstance(entry, str):
        return entry
    if isinstance(entry, Mapping) and isinstance(entry.get("content"), str):
        return str(entry["content"])
    return None


def _config_id(value: Any) -> int | None:
    if isinstance(value, list) and value:
        value = value[0]
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _special_ids(src: _Sources, vocab: _Vocab) -> dict[str, int]:
    """bos/eos/unk/pad from tokenizer_config.json, then config.json, then the tokenizer itself;
    eot/eom from well-known chat tokens."""
    index = {t: i for i, t in enumerate(vocab.tokens)}
    ids: dict[str, int] = {}
    for typ in ("bos", "eos", "unk", "pad"):
        text = _token_text(src.config.get(f"{typ}_token"))
        tid = index.get(text) if text is not None else None
        if tid is None:
            tid = _config_id(src.model_config.get(f"{typ}_token_id"))
        if tid is None:
            tid = vocab.default_ids.get(typ)
        if tid is not None and 0 <= tid < len(vocab.tokens):
            ids[typ] = tid
    for typ, texts in (("eot", _EOT_TEXTS), ("eom", _EOM_TEXTS)):
        tid = next((index[t] for t in texts if t in index and vocab.types[index[t]] == CONTROL), None)
        if tid is not None:
            ids[typ] = tid
    return ids


def _template_flags(processor: Mapping[str, Any] | None, index: Mapping[str, int], ids: dict[str, int]
                    ) -> tuple[bool, bool] | None:
    """(adds BOS, adds EOS) from a tokenizers post_processor; None if it does not say."""
    if processor is None:
        return None
    kind = processor.get("type")
    if kind == "Sequence":
        results = [_template_flags(p, index, ids) for p in processor.get("processors", [])]
        known = [r for r in results if r is not None]
        return (any(b for b, _ in known), any(e for _, e in known)) if known else None
    if kind in ("RobertaProcessing", "BertProcessing"):
        return True, True
    if kind != "TemplateProcessing":
        return (False, False) if kind == "ByteLevel" else None
    single = processor.get("single") or []
    return (_edge_special(single[:1], "bos", index, ids), _edge_special(single[-1:], "eos", index, ids))


def _edge_special(items: Sequence[Mapping[str, Any]], typ: str, index: Mapping[str, int], ids: dict[str, int]
                  ) -> bool:
    special = items[0].get("SpecialToken") if items else None
    if not special:
        return False
    tid = index.get(str(special.get("id")))
    if tid is not None and ids.get(typ) != tid:
        log.info("the post-processor adds %r; using it as the %s token", special.get("id"), typ)
        ids[typ] = tid
    return tid is not None


def _add_special_flags(src: _Sources, vocab: _Vocab, ids: dict[str, int]) -> tuple[bool, bool]:
    index = {t: i for i, t in enumerate(vocab.tokens)}
    # transformers applies add_bos_token / add_eos_token from tokenizer_config.json over the
    # post-processor saved in tokenizer.json; with neither, SentencePiece tokenizers add BOS.
    from_template = _template_flags((src.tokenizer_json or {}).get("post_processor"), index, ids)
    default = from_template or ((vocab.kind == "spm"), False)
    bos, eos = src.config.get("add_bos_token"), src.config.get("add_eos_token")
    return (bos if isinstance(bos, bool) else default[0], eos if isinstance(eos, bool) else default[1])


def _chat_template(src: _Sources) -> tuple[str | list[dict[str, str]] | None, str | None]:
    """(value for GGUF, the default template) from tokenizer_config.json or the files beside it."""
    value: Any = src.config.get("chat_template")
    if value is None and (src.model_dir / "chat_template.jinja").is_file():
        value = (src.model_dir / "chat_template.jinja").read_text(encoding="utf-8")
    if value is None and (src.model_dir / "chat_template.json").is_file():
        value = read_json(src.model_dir / "chat_template.json").get("chat_template")
    if isinstance(value, str):
        return value, value
    if isinstance(value, list) and all(isinstance(t, Mapping) and "template" in t for t in value):
        named = [{"name": str(t.get("name", "default")), "template": str(t["template"])} for t in value]
        default = next((t["template"] for t in named if t["name"] == "default"), named[0]["template"] if named
                       else None)
        return named, default
    if value is not None:
        log.warning("ignoring chat_template of type %s", type(value).__name__)
    return None, None


# ------------------------------------------------------------------------------------------
# writing
# ------------------------------------------------------------------------------------------


def _write(w: gguf.GGUFWriter, vocab: _Vocab, ids: Mapping[str, int], *, add_bos: bool, add_eos: bool,
           chat_template: str | list[dict[str, str]] | None) -> None:
    w.add_tokenizer_model("llama" if vocab.kind == "spm" else "gpt2")
    if vocab.pre is not None:
        w.add_tokenizer_pre(vocab.pre)
    w.add_token_list(vocab.tokens)
    if vocab.scores is not None:
        w.add_token_scores(vocab.scores)
    w.add_token_types(vocab.types)
    if vocab.merges is not None:
        w.add_token_merges(vocab.merges)
    if vocab.add_space_prefix is not None:
        w.add_add_space_prefix(vocab.add_space_prefix)
    writers = {"bos": w.add_bos_token_id, "eos": w.add_eos_token_id, "unk": w.add_unk_token_id,
               "pad": w.add_pad_token_id, "eot": w.add_eot_token_id, "eom": w.add_eom_token_id}
    for typ, tid in ids.items():
        writers[typ](tid)
    # Always explicit: llama.cpp's defaults differ per tokenizer model and pre name.
    w.add_add_bos_token(add_bos)
    w.add_add_eos_token(add_eos)
    if chat_template is not None:
        w.add_chat_template(chat_template)
