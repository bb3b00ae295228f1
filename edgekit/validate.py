"""One validator per untrusted file format, and the entry points that use them.

Model files come from the internet; before edgekit or a native library (llama.cpp, ONNX
Runtime GenAI, SentencePiece, HF tokenizers) parses one, its structure is checked here or in the
format's own reader, and a refusal is one line naming the field and, for binary formats, the
byte offset:

========================  ==========================================================================
format                    validator (every entry point goes through it)
========================  ==========================================================================
GGUF                      :func:`edgekit.converters.gguf.inspect.read_gguf` (load, inspect, bench,
                          eval, serve, ``--imatrix FILE``, ``edgekit eval --reference``)
safetensors               :class:`edgekit.converters.safetensors_io.SafetensorsFile` (every source)
ONNX directory            :func:`edgekit.runtimes.onnx_check.check_onnx_dir` (protobuf walk, external
                          data paths and extents, ``genai_config.json`` values: :func:`check_genai_config`)
tokenizer files           :func:`check_tokenizer_files` (size first, then parse; converter sources and
                          ONNX directories)
========================  ==========================================================================

Nothing here allocates in proportion to what a file claims: sizes are compared with the
file's real size before anything is read.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from edgekit.errors import CorruptFileError

log = logging.getLogger(__name__)

# Far above any real tokenizer (Gemma 3's tokenizer.json is 33 MB, its tokenizer.model 4.5 MB),
# far below what parsing would turn into gigabytes of Python objects.
MAX_TOKENIZER_JSON = 256 * 1024 * 1024
MAX_TOKENIZER_MODEL = 64 * 1024 * 1024
MAX_CONFIG_JSON = 16 * 1024 * 1024  # genai_config.json, tokenizer_config.json: small by nature
_SANE = 1 << 24  # context lengths, vocabulary sizes: above every real model


def _size_first(path: Path, limit: int) -> int:
    size = path.stat().st_size
    if size > limit:
        raise CorruptFileError(path, f"is {size} bytes, more than the {limit} any real file of its kind needs",
                               hint="refusing to parse it; re-download the model's files")
    return size


def read_json_bounded(path: Path, limit: int = MAX_CONFIG_JSON) -> Any:
    """A JSON file, refused by size before it is read and by nesting depth while it is parsed."""
    path = Path(path)
    _size_first(path, limit)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise CorruptFileError(path, f"not UTF-8 (byte {e.start})") from e
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise CorruptFileError(path, f"not valid JSON ({e.msg} at line {e.lineno}, char {e.pos})") from e
    except RecursionError as e:
        # Python's parser stops at ~1,000 levels; what it accepts no native parser after it overflows on
        raise CorruptFileError(path, "not parsed: JSON nested deeper than any real file",
                               hint="refusing to parse it; re-download the model's files") from e


def check_tokenizer_files(directory: Path, *, parse: bool = True) -> None:
    """``tokenizer.json``, ``tokenizer_config.json`` and ``tokenizer.model`` in ``directory``, where present:
    sizes first, then structure. Native tokenizers (HF tokenizers, SentencePiece, ONNX Runtime
    GenAI's) parse them next; here a crafted file becomes one line instead.

    ``parse=False``: sizes, the SentencePiece wire format and a tokenizers load that may only fail by
    panicking, for callers that parse the JSON files themselves through :func:`read_json_bounded`
    (the converters' vocabulary reader, whose errors name the tokenizer feature)."""
    directory = Path(directory)
    tj = directory / "tokenizer.json"
    if tj.is_file() and not parse:
        _size_first(tj, MAX_TOKENIZER_JSON)
        _load_tokenizer(tj, errors=False)
    elif tj.is_file():
        data = read_json_bounded(tj, MAX_TOKENIZER_JSON)
        if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
            raise CorruptFileError(tj, "is not a tokenizers file (expected an object with a \"model\" object)")
        vocab = data["model"].get("vocab")
        if vocab is not None and not isinstance(vocab, (dict, list)):
            raise CorruptFileError(tj, "model.vocab must be an object or a list")
        added = data.get("added_tokens", [])
        if not isinstance(added, list) or any(not isinstance(t, dict) or not isinstance(t.get("id"), int)
                                              or not isinstance(t.get("content"), str) for t in added):
            raise CorruptFileError(tj, "added_tokens must be a list of {id: int, content: str} objects")
        _load_tokenizer(tj)
    tc = directory / "tokenizer_config.json"
    if tc.is_file() and not parse:
        _size_first(tc, MAX_CONFIG_JSON)
    elif tc.is_file() and not isinstance(read_json_bounded(tc), dict):
        raise CorruptFileError(tc, "is not a JSON object")
    spm = directory / "tokenizer.model"
    if spm.is_file():
        _check_sentencepiece(spm)


@contextlib.contextmanager
def _native_stderr_to_log() -> Iterator[None]:
    """What native code writes to file descriptor 2 meanwhile (a Rust panic's message and backtrace)
    goes to the debug log, not the user's terminal."""
    try:
        saved = os.dup(2)
    except OSError:  # no descriptor 2 (a windowed app): nothing to redirect
        yield
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            text = sink.read(64 * 1024).decode("utf-8", errors="replace").strip()
            if text:
                log.debug("native stderr while loading a tokenizer:\n%s", text)


def _load_tokenizer(path: Path, *, errors: bool = True) -> None:
    """Hugging Face tokenizers (what transformers runs on this file) must accept it: its serde error,
    which names the JSON position, becomes one line instead of a bare Exception later, and a Rust
    panic (``PanicException``, a BaseException: a ``continuing_subword_prefix`` longer than a merge
    made it index out of range) becomes a refusal instead of escaping every ``except Exception``.

    ``errors=False``: only panics are refused; ordinary parse errors are left to the caller's reader
    (the converters', whose messages name the tokenizer feature and its fix)."""
    try:
        from tokenizers import Tokenizer
    except ImportError:  # not installed: nothing here would parse it natively either
        return
    try:
        with _native_stderr_to_log():
            Tokenizer.from_file(str(path))
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except Exception as e:  # tokenizers raises a bare Exception for every malformed file
        if errors:
            raise CorruptFileError(path, f"not a valid tokenizers file ({str(e)[:200]})") from e
    except BaseException as e:  # pyo3's PanicException
        raise CorruptFileError(path, f"crashes Hugging Face tokenizers ({type(e).__name__}: {str(e)[:160]})",
                               hint="refusing to load it; re-download the model's files") from e


def _check_sentencepiece(path: Path) -> None:
    """A SentencePiece model is a protobuf ModelProto: its wire format must parse, and it must hold pieces."""
    from edgekit.runtimes.onnx_proto import ProtoError, Wire, fields

    size = _size_first(path, MAX_TOKENIZER_MODEL)
    data = memoryview(path.read_bytes())
    pieces = 0
    try:  # the top-level fields only: SentencePiece's own protobuf parser checks inside each piece
        for number, wire, _, _ in fields(data, 0, size):
            pieces += number == 1 and wire == Wire.LEN  # ModelProto.pieces
    except ProtoError as e:
        raise CorruptFileError(path, f"is not a SentencePiece model ({e})") from e
    if pieces == 0:
        raise CorruptFileError(path, "is not a SentencePiece model (no pieces)")


def _int_in(lo: int, hi: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def _ids(v: Any) -> bool:
    items = v if isinstance(v, list) else [v]
    return bool(items) and all(_int_in(-1, _SANE)(i) for i in items)


# genai_config.json: (path of keys, rule, what it must be). ONNX Runtime GenAI sizes its KV cache and
# buffers from these; a hostile max_length or head count is an allocation of any size.
_GENAI_RULES: tuple[tuple[tuple[str, ...], Callable[[Any], bool], str], ...] = (
    (("model", "context_length"), _int_in(1, _SANE), f"an integer in [1, {_SANE}]"),
    (("model", "vocab_size"), _int_in(1, _SANE), f"an integer in [1, {_SANE}]"),
    (("model", "eos_token_id"), _ids, "a token id or a list of them"),
    (("model", "bos_token_id"), _ids, "a token id"),
    (("model", "pad_token_id"), _ids, "a token id"),
    (("model", "decoder", "hidden_size"), _int_in(1, 1 << 20), "an integer in [1, 1048576]"),
    (("model", "decoder", "num_hidden_layers"), _int_in(1, 1024), "an integer in [1, 1024]"),
    (("model", "decoder", "num_attention_heads"), _int_in(1, 1 << 14), "an integer in [1, 16384]"),
    (("model", "decoder", "num_key_value_heads"), _int_in(1, 1 << 14), "an integer in [1, 16384]"),
    (("model", "decoder", "head_size"), _int_in(1, 1 << 16), "an integer in [1, 65536]"),
    (("search", "max_length"), _int_in(1, _SANE), f"an integer in [1, {_SANE}]"),
    (("search", "num_beams"), _int_in(1, 64), "an integer in [1, 64]"),
    (("search", "top_k"), _int_in(0, _SANE), "an integer >= 0"),
)


def check_genai_config(cfg: Any, path: Path) -> None:
    """Values of an ONNX Runtime GenAI config in sane ranges (present keys only; the builder writes them all)."""
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model"), dict) \
            or not isinstance(cfg["model"].get("decoder"), dict):
        raise CorruptFileError(path, "not a GenAI config (expected model.decoder objects)")
    if not isinstance(cfg.get("search", {}), dict):
        raise CorruptFileError(path, "search must be an object", hint="re-export the model with `edgekit convert --to onnx`")
    for keys, ok, must in _GENAI_RULES:
        node: Any = cfg
        for k in keys:
            node = node.get(k) if isinstance(node, dict) else None
        if node is not None and not ok(node):
            raise CorruptFileError(path, f"{'.'.join(keys)} = {node!r} must be {must}",
                                   hint="re-export the model with `edgekit convert --to onnx`")
    ctx, max_len = cfg["model"].get("context_length"), (cfg.get("search") or {}).get("max_length")
    if isinstance(ctx, int) and isinstance(max_len, int) and max_len > ctx:
        raise CorruptFileError(path, f"search.max_length {max_len} exceeds model.context_length {ctx}",
                               hint="re-export the model with `edgekit convert --to onnx`")
    heads, kv = cfg["model"]["decoder"].get("num_attention_heads"), cfg["model"]["decoder"].get("num_key_value_heads")
    if isinstance(heads, int) and isinstance(kv, int) and kv > 0 and heads % kv:
        raise CorruptFileError(path, f"model.decoder.num_key_value_heads {kv} does not divide num_attention_heads "
                                     f"{heads}", hint="re-export the model with `edgekit convert --to onnx`")
