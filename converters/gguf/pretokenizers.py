"""Which llama.cpp BPE pre-tokenizer (``tokenizer.ggml.pre``) reproduces a Hugging Face tokenizer.

llama.cpp does not read the pre-tokenizer from the GGUF file: it reads a *name* and applies a
hard-coded list of regexes for it (``llm_tokenizer_bpe`` in ``src/llama-vocab.cpp``). Its own
converter picks the name by hashing the token ids of a probe string, which only recognizes
tokenizers whose vocabulary is byte-for-byte the one it was built from; a fine-tune that
extends or retrains the BPE vocabulary is rejected.

We instead derive the regex list Hugging Face *effectively* applies from the tokenizer.json
structure (normalizer + pre_tokenizer) and look it up in :data:`PRE_TOKENIZERS`, a table of the
exact regex lists llama.cpp applies per name. The result depends only on how text is split,
never on the vocabulary, so extended and new vocabularies convert.

Equivalences used when deriving the list (all are what llama.cpp itself relies on):

* ``Split(Regex r, behavior="Isolated")`` keeps matches *and* the gaps between them as pieces,
  which is exactly how ``unicode_regex_split`` applies each regex in turn;
* ``Digits(individual_digits=True)`` is ``Split(\\p{N}, Isolated)``, ``False`` is ``\\p{N}+``;
* ``ByteLevel(use_regex=True)`` first splits with the GPT-2 regex, then byte-encodes;
  ``ByteLevel(use_regex=False)`` only byte-encodes (llama.cpp byte-encodes after splitting).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from edgekit.errors import InputError

__all__ = [
    "GPT2_REGEX",
    "PRE_TOKENIZERS",
    "PreTokenizer",
    "canonical_regex",
    "describe_pre_tokenizer",
    "detect_pre_tokenizer",
    "effective_regexes",
    "supported_names",
]

# The regex the `tokenizers` ByteLevel pre-tokenizer applies when use_regex=true (GPT-2's).
GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"

# std::regex has no inline flags, so llama.cpp spells Llama 3's case-insensitive contractions
# as explicit character classes (llama.cpp PR #6920). Both spellings split identically.
_CONTRACTIONS_CI = "(?i:'s|'t|'re|'ve|'m|'ll|'d)"
_CONTRACTIONS_CLASSES = "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"


@dataclass(frozen=True)
class PreTokenizer:
    """One ``tokenizer.ggml.pre`` name and the regexes llama.cpp applies for it, in order."""

    name: str
    # Exactly as in llama-vocab.cpp (C escapes resolved), applied one after another.
    regexes: tuple[str, ...]
    # The spelling found in Hugging Face tokenizer.json files when llama.cpp rewrote the
    # pattern into an equivalent one its regex engine supports (None: same as `regexes`).
    hf_regexes: tuple[str, ...] | None = None
    # llama.cpp forces BPE `ignore_merges` (a word found whole in the vocab is not merged)
    # for some names; the HF tokenizer should agree or rare words may split differently.
    ignore_merges: bool = False
    # Models that ship it; only for messages and documentation.
    used_by: str = ""

    def spellings(self) -> tuple[tuple[str, ...], ...]:
        return (self.regexes,) if self.hf_regexes is None else (self.regexes, self.hf_regexes)


# ---------------------------------------------------------------------------------------------
# llama.cpp pre-tokenizer table. One entry per *regex family*: several llama.cpp names share a
# family (dbrx/smaug-bpe = llama-bpe, stablelm2 = qwen2, mpt/olmo = gpt-2, starcoder/refact/
# codeshell = smollm) and differ only in detokenization flags, so we emit the canonical name.
# Source: llm_tokenizer_bpe::llm_tokenizer_bpe() in llama.cpp src/llama-vocab.cpp, checked
# against the strings compiled into the libllama shipped with llama-cpp-python 0.3.36.
# ---------------------------------------------------------------------------------------------
_TABLE: tuple[PreTokenizer, ...] = (
    PreTokenizer(
        # Llama 3: letters keep one leading non-letter, digits in groups of up to three.
        name="llama-bpe",
        regexes=(
            _CONTRACTIONS_CLASSES
            + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        ),
        ignore_merges=True,
        used_by="Llama 3.x, Falcon 3, DBRX, Smaug",
    ),
    PreTokenizer(
        # Qwen2 = Llama 3's pattern with single digits (\p{N} instead of \p{N}{1,3}).
        name="qwen2",
        regexes=(
            _CONTRACTIONS_CLASSES
            + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        ),
        used_by="Qwen 1.5/2/2.5/3, DeepSeek-R1-Distill-Qwen, StableLM 2",
    ),
    PreTokenizer(
        # Qwen3.5: like qwen2 but combining marks (\p{M}) stay attached to letters.
        name="qwen35",
        regexes=(
            _CONTRACTIONS_CLASSES
            + r"|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        ),
        used_by="Qwen 3.5",
    ),
    PreTokenizer(
        # GPT-2: ByteLevel(use_regex=true). llama.cpp leaves out the final `|\s+`: whitespace no
        # other branch takes becomes its own piece anyway (gap), and its custom splitter for this
        # exact string implements the `\s+` branch.
        name="gpt-2",
        regexes=(r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)",),
        hf_regexes=(GPT2_REGEX,),
        used_by="GPT-2, MPT, OLMo, Phi-2",
    ),
    PreTokenizer(
        # SmolLM / StarCoder: Digits(individual_digits=true) before GPT-2's ByteLevel regex.
        name="smollm",
        regexes=(r"\p{N}", r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"),
        hf_regexes=(r"\p{N}", GPT2_REGEX),
        used_by="SmolLM 1/2/3, StarCoder 2, Refact, CodeShell",
    ),
    PreTokenizer(
        # DeepSeek LLM (v1): a chain of Splits by script, then Digits(individual_digits=false).
        # Written with escapes: several range ends (U+1F7D, U+1FD3, U+1FDB) are characters that
        # Unicode normalization would silently replace, breaking the ranges.
        name="deepseek-llm",
        regexes=(
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
            r"\p{N}+",
        ),
        used_by="DeepSeek LLM 7B/67B",
    ),
    PreTokenizer(
        # Mistral Tekken: case-aware letter runs. llama.cpp's engine lacks \p{Lu}/\p{Ll}, so it
        # uses a lookahead rewrite documented as equivalent; HF files carry the original.
        name="tekken",
        regexes=(
            r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+"
            r"|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*"
            r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        ),
        hf_regexes=(
            r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
            r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
            r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        ),
        ignore_merges=True,
        used_by="Mistral NeMo, Ministral, Pixtral (tekken)",
    ),
    PreTokenizer(
        # llama.cpp's fallback when no name is given. Rarely the right answer for a real model;
        # kept so a structure that really is this one is recognized and tests can force it.
        name="default",
        regexes=(
            r"[\p{P}\$\+<=>\^~\|]+",
            r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)",
            r"\p{N}+",
            r"[0-9][0-9][0-9]",
        ),
        used_by="llama.cpp fallback",
    ),
)

PRE_TOKENIZERS: Mapping[str, PreTokenizer] = {p.name: p for p in _TABLE}

# Normalizers llama.cpp's BPE path can live with. It applies none; NFC is a no-op on the
# NFC text that chat front-ends send (Qwen2 ships an NFC normalizer).
_HARMLESS_NORMALIZERS = frozenset({"NFC"})

# Literal control characters sometimes appear unescaped inside JSON regex strings.
_LITERAL_ESCAPES = {"\r": r"\r", "\n": r"\n", "\t": r"\t", "\f": r"\f", "\v": r"\v"}


def supported_names() -> tuple[str, ...]:
    return tuple(PRE_TOKENIZERS)


def canonical_regex(pattern: str) -> str:
    """Spell a regex the one way we compare on; only rewrites that cannot change a split."""
    out = "".join(_LITERAL_ESCAPES.get(ch, ch) for ch in pattern)
    out = out.replace(_CONTRACTIONS_CI, _CONTRACTIONS_CLASSES)
    # `...|\s+(?!\S)|\s+` == `...|\s+(?!\S)` under isolated splitting (see the gpt-2 entry).
    if out.endswith(r"\s+(?!\S)|\s+"):
        out = out[: -len(r"|\s+")]
    return out


def _canonical(regexes: Iterable[str]) -> tuple[str, ...]:
    return tuple(canonical_regex(r) for r in regexes)


def _split_regex(node: Mapping[str, Any]) -> str | None:
    """The regex a Split node splits on; None when it has none (a malformed tokenizer.json)."""
    pattern = node.get("pattern")
    if isinstance(pattern, Mapping) and isinstance(pattern.get("Regex"), str):
        return str(pattern["Regex"])
    if isinstance(pattern, Mapping) and isinstance(pattern.get("String"), str):
        return re.escape(str(pattern["String"]))
    return None


def _flatten(pre_tokenizer: Mapping[str, Any] | None) -> list[Mapping[str, Any]]:
    if pre_tokenizer is None:
        return []
    if pre_tokenizer.get("type") == "Sequence":
        return [leaf for child in pre_tokenizer.get("pretokenizers", []) for leaf in _flatten(child)]
    return [pre_tokenizer]


def _normalizer_types(normalizer: Mapping[str, Any] | None) -> list[str]:
    if normalizer is None:
        return []
    if normalizer.get("type") == "Sequence":
        return [t for child in normalizer.get("normalizers", []) for t in _normalizer_types(child)]
    return [str(normalizer.get("type"))]


def describe_pre_tokenizer(tokenizer_json: Mapping[str, Any]) -> str:
    """A short, one-line rendering of normalizer + pre_tokenizer for error messages."""
    parts: list[str] = []
    for node in _flatten(tokenizer_json.get("pre_tokenizer")):
        kind = str(node.get("type"))
        if kind == "Split":
            regex = "".join(_LITERAL_ESCAPES.get(ch, ch) for ch in _split_regex(node) or "<no pattern>")
            short = regex if len(regex) <= 60 else regex[:57] + "..."
            parts.append(f"Split(/{short}/, {node.get('behavior')}{', invert' if node.get('invert') else ''})")
        elif kind == "ByteLevel":
            parts.append(
                f"ByteLevel(use_regex={node.get('use_regex', True)}, add_prefix_space={node.get('add_prefix_space')})"
            )
        elif kind == "Digits":
            parts.append(f"Digits(individual_digits={node.get('individual_digits')})")
        else:
            parts.append(kind)
    normalizers = _normalizer_types(tokenizer_json.get("normalizer"))
    text = "pre_tokenizer=[" + ", ".join(parts) + "]"
    return text + (f" normalizer={'+'.join(normalizers)}" if normalizers else "")


def _unsupported(tokenizer_json: Mapping[str, Any], why: str) -> InputError:
    return InputError(
        f"tokenizer.json pre-tokenizer not supported by llama.cpp ({why}): {describe_pre_tokenizer(tokenizer_json)}",
        hint=f"supported pre-tokenizers: {', '.join(supported_names())}; "
        "if you know one of them splits text identically, force it with --pre-tokenizer NAME / "
        "pre_tokenizer=NAME",
    )


def _node_regexes(node: Mapping[str, Any], is_last: bool, tokenizer_json: Mapping[str, Any]) -> list[str]:
    kind = node.get("type")
    if kind == "Split":
        if node.get("behavior") != "Isolated" or node.get("invert"):
            raise _unsupported(tokenizer_json, "only Split(behavior=Isolated, invert=false) maps to a llama.cpp regex")
        regex = _split_regex(node)
        if regex is None:
            raise InputError(f"tokenizer.json: a Split pre-tokenizer has no pattern (expected "
                             f'{{"Regex": ...}} or {{"String": ...}}, got {json.dumps(node.get("pattern"))[:80]})',
                             hint="the file is malformed: re-save the tokenizer with transformers or tokenizers "
                                  "(tokenizer.save_pretrained(DIR))")
        return [regex]
    if kind == "Digits":
        return [r"\p{N}" if node.get("individual_digits") else r"\p{N}+"]
    if kind == "ByteLevel":
        if not is_last:
            raise _unsupported(tokenizer_json, "ByteLevel must be the last pre-tokenizer")
        if node.get("add_prefix_space"):
            raise _unsupported(tokenizer_json, "llama.cpp never adds a prefix space to BPE input")
        return [GPT2_REGEX] if node.get("use_regex", True) else []
    raise _unsupported(tokenizer_json, f"{kind} has no llama.cpp equivalent")


def effective_regexes(tokenizer_json: Mapping[str, Any]) -> tuple[str, ...]:
    """The ordered regex list the HF byte-level BPE tokenizer splits text with.

    Raises InputError when the structure cannot be expressed as llama.cpp regexes
    (normalizers other than NFC, non-isolated splits, prefix spaces, no ByteLevel step).
    """
    bad = [t for t in _normalizer_types(tokenizer_json.get("normalizer")) if t not in _HARMLESS_NORMALIZERS]
    if bad:
        raise _unsupported(tokenizer_json, f"normalizer {'+'.join(bad)} is not applied by llama.cpp")
    nodes = _flatten(tokenizer_json.get("pre_tokenizer"))
    if not nodes or nodes[-1].get("type") != "ByteLevel":
        raise _unsupported(tokenizer_json, "expected a byte-level pre-tokenizer ending in ByteLevel")
    regexes: list[str] = []
    for i, node in enumerate(nodes):
        regexes.extend(_node_regexes(node, i == len(nodes) - 1, tokenizer_json))
    return tuple(regexes)


def detect_pre_tokenizer(tokenizer_json: Mapping[str, Any]) -> PreTokenizer:
    """The table entry whose regex list splits text exactly like this tokenizer.json."""
    found = _canonical(effective_regexes(tokenizer_json))
    for entry in _TABLE:
        if any(_canonical(spelling) == found for spelling in entry.spellings()):
            return entry
    raise _unsupported(tokenizer_json, "no llama.cpp pre-tokenizer applies this regex list")
