"""Real, small tokenizers for the vocab tests: trained here on local text, saved as HF dirs.

Nothing is downloaded. Each tokenizer is trained in well under a second (vocab ~800) on Python
stdlib docstrings plus the probe texts, so the merges the probes need exist and a wrong
pre-tokenizer shows up as different ids.
"""

from __future__ import annotations

import functools
import importlib
import io
import itertools
import json
import warnings
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import gguf
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from edgekit.converters.gguf.vocab import VocabInfo, write_vocab
from edgekit.converters.probes import CHAT_PROBE, TOKENIZER_PROBES

VOCAB_SIZE = 800

BOS, EOS, IM_START, IM_END = "<|begin_of_text|>", "<|end_of_text|>", "<|im_start|>", "<|im_end|>"
BPE_SPECIALS = (BOS, EOS, IM_START, IM_END)
USER_PIECE = "<tool>"  # a SentencePiece user_defined_symbol (always split out, like an added token)

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# The regex strings as Hugging Face tokenizer.json files spell them (not llama.cpp's rewrites).
LLAMA3_HF = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
             r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_HF = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
            r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN35_HF = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*"
             r"|\s*[\r\n]+|\s+(?!\S)|\s+")
TEKKEN_HF = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
             r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
             r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# DeepSeek LLM 7B's tokenizer.json: Splits by character class, then Digits(individual_digits=false).
# Escaped on purpose: Unicode normalization of this source would corrupt some range ends.
DEEPSEEK_LLM_SPLITS = (
    "[\r\n]",
    "\\s?[A-Za-z\xb5\xc0-\xd6\xd8-\xf6\xf8-\u01ba\u01bc-\u01bf\u01c4-\u0293\u0295-\u02af\u0370-"
    "\u0373\u0376\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c\u038e-\u03a1\u03a3-\u03f5\u03f7-"
    "\u0481\u048a-\u052f\u0531-\u0556\u10a0-\u10c5\u13a0-\u13f5\u13f8-\u13fd\u1c90-\u1cba\u1cbd-"
    "\u1cbf\u1d00-\u1d2b\u1d6b-\u1d77\u1d79-\u1d9a\u1e00-\u1f15\u1f18-\u1f1d\u1f20-\u1f45\u1f48-"
    "\u1f4d\u1f50-\u1f57\u1f59\u1f5b\u1f5d\u1f5f-\u1f7d\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe\u1fc2-\u1fc4"
    "\u1fc6-\u1fcc\u1fd0-\u1fd3\u1fd6-\u1fdb\u1fe0-\u1fec\u1ff2-\u1ff4\u1ff6-\u1ffc\u2102\u2107"
    "\u210a-\u2113\u2115\u2119-\u211d\u2124\u2126\u2128\u212a-\u212d\u212f-\u2134\u2139\u213c-\u213f"
    "\u2145-\u2149\u214e\u2183\u2184\u2c00-\u2c7b\u2c7e-\u2ce4\u2ceb-\u2cee\u2cf2\u2cf3\ua640-\ua66d"
    "\ua680-\ua69b\ua722-\ua76f\ua771-\ua787\ua78b-\ua78e\uab70-\uabbf\ufb00-\ufb06\ufb13-\ufb17"
    "\uff21-\uff3a\uff41-\uff5a\U00010400-\U0001044f\U000104b0-\U000104d3\U000104d8-\U000104fb"
    "\U00010c80-\U00010cb2\U00010cc0-\U00010cf2\U000118a0-\U000118df\U0001e900-\U0001e943]+",
    "\\s?[!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002]+",
    "\\s+$",
    "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+",
)
# llama.cpp's fallback list, as a tokenizer.json would spell it with Splits.
DEFAULT_SPLITS = (r"[\p{P}\$\+<=>\^~\|]+", r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)",
                  r"\p{N}+", r"[0-9][0-9][0-9]")

_DOC_MODULES = (
    "argparse", "calendar", "codecs", "collections", "configparser", "copy", "csv", "dataclasses", "datetime",
    "decimal", "difflib", "enum", "functools", "glob", "inspect", "io", "ipaddress", "itertools", "json",
    "logging", "math", "operator", "os", "pathlib", "pickle", "random", "re", "shutil", "socket", "statistics",
    "string", "textwrap", "time", "unicodedata", "unittest", "uuid", "zipfile",
)


@functools.cache
def corpus() -> tuple[str, ...]:
    """Deduplicated stdlib docstrings (~330 kB) plus the probes, in a fixed order."""
    seen: set[str] = set()
    texts: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # typing.io & co. warn on access
        for name in _DOC_MODULES:
            module = importlib.import_module(name)
            for attr in sorted(dir(module)):
                doc = getattr(getattr(module, attr, None), "__doc__", None)
                if isinstance(doc, str) and doc not in seen:
                    seen.add(doc)
                    texts.append(doc)
    return (*texts, *list(TOKENIZER_PROBES.values()) * 3)


def _split(regex: str) -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Split(Regex(regex), behavior="isolated")


def _byte_level(use_regex: bool = False) -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=use_regex)


def hf_pre_tokenizer(family: str) -> pre_tokenizers.PreTokenizer:
    """The pre-tokenizer a Hugging Face model of this llama.cpp family ships."""
    if family == "gpt-2":
        return _byte_level(use_regex=True)
    if family == "smollm":
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), _byte_level(use_regex=True)])
    if family == "deepseek-llm":  # DeepSeek LLM's tokenizer.json: five Splits, Digits, ByteLevel
        splits = [_split(r) for r in DEEPSEEK_LLM_SPLITS]
        return pre_tokenizers.Sequence([*splits, pre_tokenizers.Digits(individual_digits=False), _byte_level()])
    regex = {
        "llama-bpe": LLAMA3_HF,
        "qwen2": QWEN2_HF,
        "qwen35": QWEN35_HF,
        "tekken": TEKKEN_HF,
    }.get(family)
    if regex is not None:
        return pre_tokenizers.Sequence([_split(regex), _byte_level()])
    if family == "default":
        return pre_tokenizers.Sequence([*(_split(r) for r in DEFAULT_SPLITS), _byte_level()])
    raise KeyError(family)


def custom_pre_tokenizer(regex: str) -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence([_split(regex), _byte_level()])


def train_byte_level(
    pre: pre_tokenizers.PreTokenizer,
    *,
    ignore_merges: bool = False,
    normalizer: normalizers.Normalizer | None = None,
    vocab_size: int = VOCAB_SIZE,
) -> Tokenizer:
    tok = Tokenizer(models.BPE(ignore_merges=ignore_merges))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(BPE_SPECIALS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer)
    return tok


def extend_vocab(tok: Tokenizer, n_new: int = 40) -> Tokenizer:
    """A fine-tune that grew the BPE vocabulary: new merges (the most frequent adjacent token
    pairs inside pre-tokenized words) appended after the trained ones, new tokens at the end."""
    data = json.loads(tok.to_str())
    vocab: dict[str, int] = data["model"]["vocab"]
    counts: Counter[tuple[str, str]] = Counter()
    for text in corpus()[:400]:
        for word, _ in tok.pre_tokenizer.pre_tokenize_str(text):
            pieces = [t.value for t in tok.model.tokenize(word)]
            counts.update(itertools.pairwise(pieces))
    added = 0
    for (left, right), _ in counts.most_common():
        if added == n_new:
            break
        if left + right not in vocab:
            vocab[left + right] = len(vocab)
            data["model"]["merges"].append([left, right])
            added += 1
    return Tokenizer.from_str(json.dumps(data))


def save_bpe_dir(tok: Tokenizer, path: Path, *, add_bos: bool = True) -> Path:
    """Save like a fine-tune does: PreTrainedTokenizerFast + ChatML template (transformers 5
    writes chat_template.jinja next to tokenizer_config.json)."""
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=IM_END, pad_token=EOS, add_bos_token=add_bos
    )
    hf.chat_template = CHAT_TEMPLATE
    hf.save_pretrained(str(path))
    return path


def train_spm_model(path: Path) -> Path:
    """A Llama-2-style SentencePiece BPE model (byte fallback, digits split, no normalization)."""
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus()), model_writer=buf, vocab_size=VOCAB_SIZE, model_type="bpe",
        byte_fallback=True, split_digits=True, remove_extra_whitespaces=False, normalization_rule_name="identity",
        add_dummy_prefix=True, allow_whitespace_only_pieces=True, character_coverage=1.0,
        max_sentence_length=1 << 20, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=1, minloglevel=2,
        user_defined_symbols=[USER_PIECE],
    )
    path.mkdir(parents=True, exist_ok=True)
    (path / "tokenizer.model").write_bytes(buf.getvalue())
    return path / "tokenizer.model"


def save_spm_dir(model_file: Path, path: Path, *, legacy: bool, keep_model_file: bool) -> Path:
    """HF Llama tokenizer from a SentencePiece model, with ChatML tokens added like a fine-tune.

    ``legacy`` is what real checkpoints carry in tokenizer_config.json: True (Mistral 7B, older
    Llama 2 saves) prepends '▁' to every text segment; False prepends only at the input start.
    """
    from transformers import LlamaTokenizer

    src = model_file.parent
    hf = LlamaTokenizer.from_pretrained(str(src), legacy=legacy, add_bos_token=True)
    hf.add_special_tokens({"additional_special_tokens": [IM_START, IM_END]})
    hf.chat_template = CHAT_TEMPLATE
    hf.save_pretrained(str(path))
    config_path = path / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["legacy"] = legacy  # transformers 5 does not save it; checkpoints on the Hub do
    config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    if keep_model_file:
        (path / "tokenizer.model").write_bytes(model_file.read_bytes())
    return path


def load_hf(path: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


class SavedTokenizer:
    """tokenizer.json exactly as saved, run by the tokenizers library, behind the slice of the
    transformers interface the probes use (transformers 5 may rebuild parts of it)."""

    def __init__(self, model_dir: Path) -> None:
        self._tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self._hf = load_hf(model_dir)  # renders the chat template only

    def __call__(self, text: str, add_special_tokens: bool = True) -> SimpleNamespace:
        return SimpleNamespace(input_ids=self._tok.encode(text, add_special_tokens=add_special_tokens).ids)

    def apply_chat_template(self, *args: Any, **kwargs: Any) -> Any:
        return self._hf.apply_chat_template(*args, **kwargs)

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str | None]:
        return [self._tok.id_to_token(i) for i in ids]


def write_vocab_gguf(model_dir: Path, out: Path, *, n_vocab: int | None = None, **kwargs: Any) -> VocabInfo:
    """A vocab-only GGUF. llama.cpp (as bundled with llama-cpp-python 0.3.36) needs no hparams to
    open a model with vocab_only=True: it reads general.architecture and the tokenizer keys only."""
    if n_vocab is None:
        n_vocab = len(load_hf(model_dir))
    w = gguf.GGUFWriter(str(out), "llama")
    try:
        info = write_vocab(w, model_dir, n_vocab=n_vocab, **kwargs)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
    finally:
        w.close()
    return info


def load_llama(path: Path) -> Any:
    import llama_cpp

    return llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)


def probe_texts(hf: Any) -> dict[str, str]:
    return {**TOKENIZER_PROBES, "chat": hf.apply_chat_template(CHAT_PROBE, tokenize=False)}


def id_mismatches(hf: Any, llm: Any, *, add_special: bool, names: tuple[str, ...] | None = None
                  ) -> dict[str, tuple[list[int], list[int]]]:
    """Probes whose ids differ, as name -> (HF ids, llama.cpp ids)."""
    out: dict[str, tuple[list[int], list[int]]] = {}
    for name, text in probe_texts(hf).items():
        if names is not None and name not in names:
            continue
        want = list(hf(text, add_special_tokens=add_special).input_ids)
        got = list(llm.tokenize(text.encode("utf-8"), add_bos=add_special, special=True))
        if want != got:
            out[name] = (want, got)
    return out


__all__ = [
    "BOS", "BPE_SPECIALS", "CHAT_TEMPLATE", "EOS", "IM_END", "IM_START", "USER_PIECE", "SavedTokenizer", "corpus",
    "custom_pre_tokenizer", "hf_pre_tokenizer", "id_mismatches", "load_hf", "load_llama", "probe_texts",
    "save_bpe_dir", "save_spm_dir", "train_byte_level", "train_spm_model", "write_vocab_gguf",
]
