"""Hand-made hostile files, one per check of the validators (edgekit.validate lists them).

Each is refused with edgekit's typed error naming the field (and, for binary formats, the byte
offset), through the Python API entry points and the CLI, before anything is allocated in
proportion to what the file claims."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

import edgekit
from edgekit.converters.gguf.inspect import read_gguf
from edgekit.converters.safetensors_io import SafetensorsFile
from edgekit.errors import CorruptFileError
from edgekit.validate import check_genai_config, check_tokenizer_files, read_json_bounded
from edgekit.validate_fuzz import rebuild_gguf

# GGUF value types
U32, I32, F32, STR, ARR, U64 = 4, 5, 6, 8, 9, 10
GGML_F32, GGML_Q8_0 = 0, 8


def _s(text: str | bytes) -> bytes:
    b = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(b)) + b


def _kv(key: str, vtype: int, value: Any) -> bytes:
    fmt = {U32: "<I", I32: "<i", F32: "<f", U64: "<Q"}
    if vtype == STR:
        payload = _s(value)
    elif vtype == ARR:
        itype, items = value
        payload = struct.pack("<IQ", itype, len(items)) + b"".join(
            _s(i) if itype == STR else struct.pack(fmt[itype], i) for i in items)
    else:
        payload = struct.pack(fmt[vtype], value)
    return _s(key) + struct.pack("<I", vtype) + payload


def raw_gguf(path: Path, kvs: list[bytes], tensors: list[tuple[str, list[int], int, int]], data_bytes: int,
             *, n_tensors: int | None = None, n_kv: int | None = None) -> Path:
    """A GGUF v3 written byte by byte: whatever counts, offsets and types the test asks for."""
    head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors) if n_tensors is None else n_tensors,
                                 len(kvs) if n_kv is None else n_kv)
    table = b"".join(_s(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
                     + struct.pack("<IQ", ttype, off) for name, dims, ttype, off in tensors)
    body = head + b"".join(kvs) + table
    body += b"\0" * (-len(body) % 32)
    path.write_bytes(body + b"\0" * data_bytes)
    return path


ARCH = [_kv("general.architecture", STR, "llama")]


def _peak_while(fn: Any) -> int:
    """Peak Python allocation while ``fn`` runs (gguf-py, which the reader imports, imported first)."""
    import gguf  # noqa: F401

    tracemalloc.start()
    try:
        fn()
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak


def _refused(path: Path, *needles: str) -> str:
    with pytest.raises(CorruptFileError) as err:
        read_gguf(path)
    msg = str(err.value)
    for n in needles:
        assert n in msg, msg
    return msg


def test_gguf_huge_tensor_count_refused_without_allocation(tmp_path: Path) -> None:
    p = raw_gguf(tmp_path / "count.gguf", ARCH, [], 0, n_tensors=2**40)
    assert _peak_while(lambda: _refused(p, "tensor count 1099511627776", "byte 8")) < 1 << 20
    _refused(raw_gguf(tmp_path / "kv.gguf", ARCH, [], 0, n_kv=2**40), "metadata key count", "byte 16")


def test_gguf_huge_string_refused_without_allocation(tmp_path: Path) -> None:
    bad = _s("general.name") + struct.pack("<I", STR) + struct.pack("<Q", 2**50) + b"abc"
    p = raw_gguf(tmp_path / "str.gguf", [*ARCH, bad], [], 0)
    msgs: list[str] = []
    assert _peak_while(lambda: msgs.append(_refused(p, "metadata general.name", "claims 1125899906842624 bytes",
                                                    "past the end"))) < 1 << 20
    msg = msgs[0]
    assert f"at byte {len(b'GGUF') + 20 + len(ARCH[0]) + len(_s('general.name')) + 4 + 8}" in msg


def test_gguf_array_of_strings_past_end(tmp_path: Path) -> None:
    p = raw_gguf(tmp_path / "arr.gguf", [*ARCH, _s("tokenizer.ggml.tokens") + struct.pack("<I", ARR)
                                          + struct.pack("<IQ", STR, 2**40) + _s("a") * 20], [], 0)
    _refused(p, "tokenizer.ggml.tokens", "1099511627776 strings", "past the end")


@pytest.mark.parametrize(("tensors", "data", "needles"), [
    ([("a", [32], GGML_F32, 4096)], 128, ("tensor a", "past the end")),  # offset past the end
    ([("a", [32], GGML_F32, 0), ("b", [32], GGML_F32, 64)], 192, ("tensors a and b", "overlap")),
    ([("a", [32], 77, 0)], 128, ("unknown type 77",)),
    ([("a", [32], GGML_F32, 4)], 160, ("not aligned",)),
    ([("a", [2**62, 4], GGML_F32, 0)], 128, ("overflows",)),
    ([("a", [33], GGML_Q8_0, 0)], 128, ("not a multiple", "block of 32")),
    ([("a", [32, 1, 1, 1, 1], GGML_F32, 0)], 128, ("5 dimensions",)),
    ([("x" * 64, [32], GGML_F32, 0)], 128, ("name of 64",)),
    ([("a", [32], GGML_F32, 0), ("a", [32], GGML_F32, 128)], 256, ("duplicate tensor a",)),
])
def test_gguf_tensor_table_checks(tmp_path: Path, tensors: list[tuple[str, list[int], int, int]], data: int,
                                  needles: tuple[str, ...]) -> None:
    msg = _refused(raw_gguf(tmp_path / "t.gguf", ARCH, tensors, data), *needles)
    assert "at byte" in msg


def _tokens(n: int) -> list[bytes]:
    return [_kv("tokenizer.ggml.tokens", ARR, (STR, [f"t{i}" for i in range(n)]))]


@pytest.mark.parametrize(("kvs", "needles"), [
    ([_kv("general.architecture", U32, 7)], ("general.architecture", "must be a string")),
    ([*ARCH, _kv("llama.context_length", U64, 2**40)], ("llama.context_length = 1099511627776", "sane range")),
    ([*ARCH, _kv("llama.context_length", STR, "4096")], ("llama.context_length", "must be an integer")),
    ([*ARCH, _kv("llama.block_count", U32, 0)], ("llama.block_count = 0",)),
    ([*ARCH, _kv("llama.embedding_length", U32, 256), _kv("llama.attention.head_count", U32, 3)],
     ("head_count = 3", "does not divide embedding_length 256")),
    ([*ARCH, _kv("llama.embedding_length", U32, 256), _kv("llama.attention.head_count", U32, 4),
      _kv("llama.attention.head_count_kv", U32, 0)], ("head_count_kv = 0",)),
    ([*ARCH, _kv("llama.block_count", U32, 2), _kv("llama.attention.head_count", ARR, (U32, [4, 4, 4]))],
     ("3 entries for 2 layers",)),
    ([*ARCH, _kv("llama.expert_count", U32, 4), _kv("llama.expert_used_count", U32, 8)], ("expert_used_count",)),
    ([*ARCH, _kv("llama.rope.scaling.type", STR, "bogus")], ("rope.scaling.type",)),
    ([*ARCH, *_tokens(20), _kv("llama.vocab_size", U32, 32000)], ("vocab_size = 32000", "20 entries")),
    ([*ARCH, *_tokens(20), _kv("tokenizer.ggml.scores", ARR, (F32, [0.0] * 19))], ("tokenizer.ggml.scores",
                                                                                  "20 floats")),
    ([*ARCH, *_tokens(20), _kv("tokenizer.ggml.token_type", ARR, (F32, [0.0] * 20))], ("token_type",)),
    ([*ARCH, *_tokens(20), _kv("tokenizer.ggml.eos_token_id", U32, 20)], ("eos_token_id = 20", "20 tokens")),
    ([*ARCH, _kv("general.alignment", U32, 3)], ("general.alignment 3",)),
    ([*ARCH, *ARCH], ("duplicate metadata key general.architecture",)),
])
def test_gguf_metadata_checks(tmp_path: Path, kvs: list[bytes], needles: tuple[str, ...]) -> None:
    msg = _refused(raw_gguf(tmp_path / "m.gguf", kvs, [], 0), *needles)
    assert "at byte" in msg or "duplicate" in msg or "expert" in msg


def test_gguf_token_embedding_rows_match_vocabulary(tmp_path: Path) -> None:
    p = raw_gguf(tmp_path / "e.gguf", [*ARCH, *_tokens(20)], [("token_embd.weight", [32, 21], GGML_F32, 0)], 32 * 21 * 4)
    _refused(p, "token_embd.weight", "21 rows for 20 tokens")


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The packaged demo model as q8_0, one layer kept: a real file llama.cpp loads in milliseconds."""
    from edgekit.converters.gguf.convert import convert_gguf
    from edgekit.demo import demo_model_dir as model_path

    out = tmp_path_factory.mktemp("tiny")
    (entry,) = convert_gguf(model_path(), out, "q8_0", verify_artifacts=False).artifacts
    return rebuild_gguf(out / entry.file, out / "tiny.gguf", keep_layers=1)


def test_every_gguf_entry_point_refuses(tiny_gguf: Path, tmp_path: Path) -> None:
    """A file whose token_type array is shorter than its vocabulary (llama.cpp would read past it) is
    refused by edgekit.load, edgekit.inspect, --imatrix FILE and the CLI, with one line."""
    import gguf

    from edgekit.converters.gguf.imatrix import read_imatrix

    def shorten(key: str, value: Any, vtype: Any) -> tuple[Any, Any]:
        return (value[:-1], vtype) if key == "tokenizer.ggml.token_type" else (value, vtype)

    bad = rebuild_gguf(tiny_gguf, tmp_path / "short-types.gguf", metadata=shorten)
    assert read_gguf(tiny_gguf).metadata["general.architecture"] == "llama"  # the original passes
    for call in (lambda: edgekit.load(bad, n_ctx=64), lambda: edgekit.inspect(bad), lambda: read_imatrix(bad)):
        with pytest.raises(CorruptFileError, match=r"tokenizer\.ggml\.token_type at byte \d+ must be an array of 1024"):
            call()
    assert gguf.GGUFValueType.ARRAY  # the rebuild kept array types (gguf-py imported for it)
    for cmd in (["inspect", str(bad)], ["run", str(bad), "-p", "hi", "--max-tokens", "2"]):
        r = subprocess.run([sys.executable, "-m", "edgekit", *cmd], capture_output=True, text=True, timeout=120)
        lines = [ln for ln in (r.stdout + r.stderr).strip().splitlines() if ln.strip()]
        assert r.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in lines[0]
        assert "tokenizer.ggml.token_type" in lines[0]


# -- safetensors -------------------------------------------------------------------------------------


def _st(path: Path, header: dict[str, Any], data: bytes, *, length: int | None = None) -> Path:
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob) if length is None else length) + blob + data)
    return path


GOOD = {"a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
        "b": {"dtype": "F16", "shape": [4], "data_offsets": [16, 24]}}


@pytest.mark.parametrize(("change", "length", "needle"), [
    ({}, 2**40, "header length 1099511627776 (byte 0) does not fit"),
    ({"a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 4096]}}, None, "past the end"),
    ({"a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [-8, 8]}}, None, "outside the data section"),
    ({"b": {"dtype": "F16", "shape": [4], "data_offsets": [8, 16]}}, None, "overlap at byte"),
    ({"a": {"dtype": "Q4", "shape": [2, 2], "data_offsets": [0, 16]}}, None, "unsupported dtype 'Q4'"),
    ({"a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 16]}}, None, "24 expected"),
    ({"a": {"dtype": "F32", "shape": [-2, -2], "data_offsets": [0, 16]}}, None, "negative dimension"),
    ({"a": {"dtype": "F32", "shape": "2x2", "data_offsets": [0, 16]}}, None, "malformed header entry"),
    ({"__metadata__": {"format": 1}}, None, "__metadata__"),
])
def test_safetensors_checks(tmp_path: Path, change: dict[str, Any], length: int | None, needle: str) -> None:
    p = _st(tmp_path / "w.safetensors", {**GOOD, **change}, b"\0" * 24, length=length)
    with pytest.raises(CorruptFileError, match=None) as err:
        SafetensorsFile(p)
    assert needle in str(err.value), str(err.value)
    SafetensorsFile(_st(tmp_path / "ok.safetensors", GOOD, b"\0" * 24))  # the unchanged header passes


def test_safetensors_header_not_json(tmp_path: Path) -> None:
    p = tmp_path / "w.safetensors"
    p.write_bytes(struct.pack("<Q", 5) + b"{\"a\":" + b"\0" * 8)
    with pytest.raises(CorruptFileError, match=r"not valid JSON .* at byte \d+"):
        SafetensorsFile(p)


# -- tokenizer files, genai_config.json --------------------------------------------------------------


@pytest.mark.parametrize(("name", "content", "needle"), [
    ("tokenizer.json", b"[" * 100_000 + b"]" * 100_000, "nested deeper"),
    ("tokenizer.json", b'{"model": {"vocab": {"a": 0}}, "added_tokens": [{"id": "x"}]}', "added_tokens"),
    ("tokenizer.json", b'{"model": 3}', "not a tokenizers file"),
    ("tokenizer.json", b'{"model": {', "not valid JSON"),
    ("tokenizer.json", b'\xff\xfe{}', "not UTF-8"),
    ("tokenizer.model", b"\x0a\xff\xff\xff\xff\x0f", "not a SentencePiece model"),
    ("tokenizer_config.json", b"[]", "not a JSON object"),
])
def test_tokenizer_files(tmp_path: Path, name: str, content: bytes, needle: str) -> None:
    (tmp_path / name).write_bytes(content)
    with pytest.raises(CorruptFileError) as err:
        check_tokenizer_files(tmp_path)
    assert needle in str(err.value) and name in str(err.value)


def test_tokenizer_that_panics_hf_tokenizers(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """Found by benchmarks/fuzz.py: a continuing_subword_prefix longer than the merges' pieces makes
    tokenizers 0.22 index out of range and panic (PanicException escapes ``except Exception``)."""
    from edgekit.demo import demo_model_dir

    tj = json.loads((demo_model_dir() / "tokenizer.json").read_text())
    tj["model"]["continuing_subword_prefix"] = "/etc/passwd"
    (tmp_path / "tokenizer.json").write_text(json.dumps(tj))
    for parse in (True, False):  # ONNX directories and converter sources alike
        with pytest.raises(CorruptFileError, match="crashes Hugging Face tokenizers"):
            check_tokenizer_files(tmp_path, parse=parse)
    assert "panicked" not in capfd.readouterr().err  # Rust's panic message went to the debug log


def test_absurd_tokenizer_refused_by_size_before_reading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 1 GB tokenizer.json (sparse: no disk used) is refused from its size; nothing is read."""
    p = tmp_path / "tokenizer.json"
    with open(p, "wb") as f:
        f.truncate(1 << 30)
    reads: list[Path] = []
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: reads.append(self) or "")
    with pytest.raises(CorruptFileError, match=r"is 1073741824 bytes"):
        check_tokenizer_files(tmp_path)
    with pytest.raises(CorruptFileError, match=r"is 1073741824 bytes"):
        read_json_bounded(p)
    assert reads == []


def test_converter_source_checks_tokenizer_size(tmp_path: Path) -> None:
    import shutil

    from edgekit.converters.source import open_source
    from edgekit.demo import demo_model_dir as model_path

    m = tmp_path / "m"
    shutil.copytree(model_path(), m)
    with open(m / "tokenizer.json", "r+b") as f:
        f.truncate(1 << 30)
    with pytest.raises(CorruptFileError, match=r"tokenizer\.json: is 1073741824 bytes"):
        open_source(m)


GENAI = {"model": {"context_length": 1024, "vocab_size": 1024, "eos_token_id": [2], "bos_token_id": 1,
                   "decoder": {"filename": "model.onnx", "hidden_size": 256, "num_hidden_layers": 2,
                               "num_attention_heads": 4, "num_key_value_heads": 2, "head_size": 64}},
         "search": {"max_length": 1024}}


@pytest.mark.parametrize(("path", "value", "needle"), [
    (("search", "max_length"), 2**40, "search.max_length = 1099511627776"),
    (("model", "context_length"), 0, "model.context_length = 0"),
    (("model", "decoder", "num_key_value_heads"), 3, "does not divide"),
    (("model", "decoder", "num_hidden_layers"), "2", "num_hidden_layers = '2'"),
    (("model", "eos_token_id"), [], "eos_token_id"),
    (("search", "max_length"), 2048, "exceeds model.context_length"),
])
def test_genai_config_values(path: tuple[str, ...], value: Any, needle: str) -> None:
    cfg = json.loads(json.dumps(GENAI))
    check_genai_config(cfg, Path("genai_config.json"))
    node = cfg
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    with pytest.raises(CorruptFileError) as err:
        check_genai_config(cfg, Path("genai_config.json"))
    assert needle in str(err.value)


def test_onnx_external_data_escaping_directory(tmp_path: Path) -> None:
    """A hand-written ONNX protobuf whose initializer's external data points at ../../etc/passwd."""
    from edgekit.runtimes.onnx_check import check_onnx_dir

    def field(num: int, payload: bytes) -> bytes:
        return bytes([num << 3 | 2, len(payload)]) + payload

    entry = field(1, b"location") + field(2, b"../../etc/passwd")
    tensor = field(8, b"w") + field(13, entry) + bytes([14 << 3, 1])
    (tmp_path / "model.onnx").write_bytes(field(7, field(5, tensor)))
    (tmp_path / "genai_config.json").write_text(json.dumps(GENAI))
    with pytest.raises(CorruptFileError, match=r"outside its directory: '\.\./\.\./etc/passwd'"):
        check_onnx_dir(tmp_path)


def test_chat_template_reaching_for_python_internals() -> None:
    from edgekit.runtimes.chat_template import UnsafeChatTemplateError, render

    evil = "{{ ''.__class__.__mro__[1].__subclasses__() }}"
    with pytest.raises(UnsafeChatTemplateError):
        render(evil, [{"role": "user", "content": "hi"}])

