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

Layout: :mod:`.sources` reads the files and answers structure questions, :mod:`.tokens`
builds the token list per kind, :mod:`.special` finds special ids, add-BOS/EOS flags and the
chat template; this module ties them together and writes the GGUF keys.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from edgekit.errors import InputError

if TYPE_CHECKING:
    import gguf

from .common import Vocab
from .sources import read_sources
from .special import add_special_flags, read_chat_template, special_ids
from .tokens import build_vocab, check_unique, pad_vocab

__all__ = ["VocabInfo", "write_vocab"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VocabInfo:
    """What :func:`write_vocab` wrote, for the converter's report and the verifier."""

    kind: Literal["spm", "bpe"]
    pre: str | None  # tokenizer.ggml.pre (BPE only)
    n_tokens: int  # real tokenizer size, before padding to the embedding rows
    chat_template: str | None
    bos_id: int | None
    eos_id: int | None


def write_vocab(
    w: gguf.GGUFWriter,
    model_dir: Path,
    *,
    n_vocab: int,
    add_space_prefix: bool | None = None,
    pre_override: str | None = None,
    compare_transformers: bool = True,
) -> VocabInfo:
    """Write every ``tokenizer.*`` key for the Hugging Face model in ``model_dir``.

    ``n_vocab`` is the number of embedding rows: the token list is padded to it with
    ``[PAD{id}]`` tokens typed UNUSED. ``add_space_prefix`` overrides what the tokenizer says
    (SentencePiece kinds only). ``pre_override`` forces ``tokenizer.ggml.pre`` (BPE only).
    ``compare_transformers=False`` skips loading the tokenizer with transformers to warn where
    it differs from tokenizer.json (the import alone is seconds; unverified conversions skip it).
    """
    src = read_sources(Path(model_dir), compare_transformers=compare_transformers)
    vocab = build_vocab(src, pre_override)
    if add_space_prefix is not None and vocab.kind == "spm":
        vocab.add_space_prefix = add_space_prefix
    n_tokens = len(vocab.tokens)
    if n_tokens > n_vocab:
        raise InputError(
            f"the tokenizer in {src.model_dir} has {n_tokens} tokens but the embedding has only {n_vocab} rows",
            hint="the tokenizer does not belong to these weights; after adding tokens, resize the "
            "embeddings (model.resize_token_embeddings) and save again",
        )
    check_unique(vocab.tokens, src.model_dir)
    pad_vocab(vocab, n_vocab)
    ids = special_ids(src, vocab)
    add_bos, add_eos = add_special_flags(src, vocab, ids)
    for flag, typ in ((add_bos, "bos"), (add_eos, "eos")):
        if flag and typ not in ids:
            raise InputError(f"the tokenizer adds a {typ} token but none is defined",
                             hint=f"set {typ}_token in tokenizer_config.json")
    template, default_template = read_chat_template(src)
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
# writing
# ------------------------------------------------------------------------------------------


def _write(w: gguf.GGUFWriter, vocab: Vocab, ids: Mapping[str, int], *, add_bos: bool, add_eos: bool,
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
