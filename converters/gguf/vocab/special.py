"""Special tokens (BOS/EOS/UNK/PAD/EOT ids), whether BOS/EOS are added, and the chat template."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ...source import read_json
from ...stop_tokens import StopTokens, declared_stops, token_text
from .common import CONTROL, Sources, Vocab

log = logging.getLogger(__name__)

# End-of-turn tokens of common chat formats, most specific first. llama.cpp also guesses
# these by text, but writing the id makes the file self-describing.
_EOT_TEXTS = ("<|eot_id|>", "<|im_end|>", "<end_of_turn>", "<|end|>")
_EOM_TEXTS = ("<|eom_id|>",)
# Token texts llama.cpp (llama-vocab.cpp, this version) makes end-of-generation by name
LLAMA_CPP_EOG_TEXTS = frozenset({
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>", "<end_of_turn>",
    "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]", "<|end_of_text|>",
    "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>", "<｜end▁of▁sentence｜>", "[e~[",
})

_token_text = token_text


def _config_id(value: Any) -> int | None:
    if isinstance(value, list) and value:
        value = value[0]
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def special_ids(src: Sources, vocab: Vocab) -> dict[str, int]:
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
    stops = declared_stops(src.model_dir, index, n_vocab=len(vocab.tokens))
    if stops.end_of_turn is not None and stops.end_of_turn.id != ids.get("eos"):
        ids["eot"] = stops.end_of_turn.id
    for typ, texts in (("eot", _EOT_TEXTS), ("eom", _EOM_TEXTS)):
        tid = next((index[t] for t in texts if t in index and vocab.types[index[t]] == CONTROL), None)
        if tid is not None and typ not in ids:
            ids[typ] = tid
    _mark_stops(stops, ids, vocab)
    return ids


def _mark_stops(stops: StopTokens, ids: dict[str, int], vocab: Vocab) -> None:
    """Every declared stop end-of-generation in llama.cpp: it marks eos, eot and eom and the
    texts of LLAMA_CPP_EOG_TEXTS; a stop it would miss takes a free eot/eom slot (the only
    id keys this llama.cpp reads; it has no list key)."""
    marked = {ids.get("eos"), ids.get("eot"), ids.get("eom")}
    for t in stops.tokens:
        if t.id in marked or vocab.tokens[t.id] in LLAMA_CPP_EOG_TEXTS:
            continue
        slot = next((s for s in ("eot", "eom") if s not in ids), None)
        if slot is None:
            log.warning("stop token %s has no free GGUF id key (eot %s, eom %s): llama.cpp will not stop on it",
                        t.describe(), ids.get("eot"), ids.get("eom"))
            continue
        ids[slot] = t.id
        marked.add(t.id)


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


def add_special_flags(src: Sources, vocab: Vocab, ids: dict[str, int]) -> tuple[bool, bool]:
    index = {t: i for i, t in enumerate(vocab.tokens)}
    # transformers applies add_bos_token / add_eos_token from tokenizer_config.json over the
    # post-processor saved in tokenizer.json; with neither, SentencePiece tokenizers add BOS.
    from_template = _template_flags((src.tokenizer_json or {}).get("post_processor"), index, ids)
    default = from_template or ((vocab.kind == "spm"), False)
    bos, eos = src.config.get("add_bos_token"), src.config.get("add_eos_token")
    return (bos if isinstance(bos, bool) else default[0], eos if isinstance(eos, bool) else default[1])


def read_chat_template(src: Sources) -> tuple[str | list[dict[str, str]] | None, str | None]:
    """(value for GGUF, the default template) from tokenizer_config.json or the files beside it."""
    return read_template_files(src.config, src.model_dir)


def read_template_files(config: Mapping[str, Any], model_dir: Path
                        ) -> tuple[str | list[dict[str, str]] | None, str | None]:
    """:func:`read_chat_template` from tokenizer_config.json's contents and its directory."""
    value: Any = config.get("chat_template")
    if value is None and (model_dir / "chat_template.jinja").is_file():
        value = (model_dir / "chat_template.jinja").read_text(encoding="utf-8")
    if value is None and (model_dir / "chat_template.json").is_file():
        value = read_json(model_dir / "chat_template.json").get("chat_template")
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
