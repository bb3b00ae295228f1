"""Hostile inputs for the validators: mutants of valid files, by format, and their region maps.

Used by ``benchmarks/fuzz.py`` (thousands of mutants, edgekit beside the raw native library)
and by the test suite (a bounded hypothesis run). A mutant is made from a valid file's bytes by
one of: a bit flip, a 64-bit overwrite with a boundary value (0, 2^32-1, 2^40, 2^63-1, 2^64-1,
the file size), a truncation at a region boundary, appended junk, or two tensors' offsets
swapped; JSON files also get value-level mutations (a number made huge or negative, a key
dropped, a value's type changed). Regions are where the format's parser makes decisions:
the fixed header, each metadata entry, each tensor-table entry, the data section.
"""

from __future__ import annotations

import json
import random
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# 64-bit values that sit on the edges parsers get wrong
BOUNDARY_U64 = (0, 1, 0xFF, 0xFFFF, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**40, 2**50, 2**62, 2**63 - 1, 2**63,
                2**64 - 1)


@dataclass(frozen=True)
class Region:
    name: str  # "header", "kv 3 llama.block_count", "tensor 5 blk.0.attn_q.weight", "data"
    start: int
    end: int


def gguf_regions(data: bytes) -> list[Region]:
    """The regions of a valid GGUF (fixed header, each metadata entry, each tensor entry, data)."""
    from edgekit.converters.gguf.inspect import _HeaderScanner

    sc = _HeaderScanner(data, len(data))
    sc.off = 8
    n_tensors, n_kv = sc.unpack("<Q", "header"), sc.unpack("<Q", "header")
    out = [Region("header", 0, 24)]
    alignment = 32
    for i in range(n_kv):
        start = sc.off
        key = sc.string("key")
        vtype = sc.unpack("<I", "type")
        value = sc.value(vtype, key)
        if key == "general.alignment":
            alignment = int(value)
        out.append(Region(f"kv {i} {key}", start, sc.off))
    for i in range(n_tensors):
        start = sc.off
        name = sc.string("name")
        n_dims = sc.unpack("<I", "dims")
        sc.take(8 * n_dims + 4 + 8, name)
        out.append(Region(f"tensor {i} {name}", start, sc.off))
    data_start = -(-sc.off // alignment) * alignment
    out.append(Region("padding", sc.off, data_start))
    out.append(Region("data", data_start, len(data)))
    return out


def gguf_value_slots(data: bytes) -> list[tuple[int, int]]:
    """(byte position, width) of every integer metadata value and array length of a valid GGUF: where a
    changed value keeps the file parseable and reaches the loader's arithmetic (heads, layers, ids)."""
    from edgekit.converters.gguf.inspect import _SCALARS, _HeaderScanner

    sc = _HeaderScanner(data, len(data))
    sc.off = 8
    _, n_kv = sc.unpack("<Q", "header"), sc.unpack("<Q", "header")
    slots: list[tuple[int, int]] = []
    for _ in range(n_kv):
        sc.string("key")
        vtype = sc.unpack("<I", "type")
        if vtype in _SCALARS and vtype not in (6, 7, 12):
            slots.append((sc.off, struct.calcsize(_SCALARS[vtype])))
        elif vtype == 9:
            slots.append((sc.off + 4, 8))  # the array's length
        sc.value(vtype, "value")
    return slots


def gguf_tensor_offsets(data: bytes, regions: list[Region]) -> list[int]:
    """Byte positions of each tensor entry's 64-bit data offset (its last 8 bytes)."""
    return [r.end - 8 for r in regions if r.name.startswith("tensor ")]


def safetensors_regions(data: bytes) -> list[Region]:
    (n,) = struct.unpack_from("<Q", data, 0)
    return [Region("length", 0, 8), Region("header", 8, 8 + n), Region("data", 8 + n, len(data))]


def _overwrite64(data: bytearray, pos: int, rng: random.Random, size: int) -> None:
    value = rng.choice((*BOUNDARY_U64, size, size + 1, size - 1, rng.getrandbits(64)))
    data[pos:pos + 8] = struct.pack("<Q", value % 2**64)[: len(data) - pos]


def mutate_binary(data: bytes, regions: list[Region], rng: random.Random,
                  swap_points: list[int] | None = None,
                  value_slots: list[tuple[int, int]] | None = None) -> tuple[str, bytes]:
    """One mutant of a binary file: (what was done, the bytes)."""
    structural = [r for r in regions if r.name != "data" and r.end > r.start]
    kinds = ["bitflip", "bitflip", "overwrite64", "overwrite64", "overwrite64", "truncate", "junk", "swap_offsets",
             "multi"]
    kind = rng.choice(kinds + ["value"] * 4 if value_slots else kinds)
    out = bytearray(data)
    if kind == "value" and value_slots:
        pos, width = rng.choice(value_slots)
        value = rng.choice((*BOUNDARY_U64, rng.randrange(0, 4096), int.from_bytes(data[pos:pos + width], "little") + 1,
                            int.from_bytes(data[pos:pos + width], "little") - 1))
        out[pos:pos + width] = (value % 2 ** (8 * width)).to_bytes(width, "little")
        return f"value @{pos} = {value % 2 ** (8 * width)}", bytes(out)
    region = rng.choice(structural)
    if kind == "bitflip":
        pos = rng.randrange(region.start, region.end)
        out[pos] ^= 1 << rng.randrange(8)
        return f"bitflip {region.name} @{pos}", bytes(out)
    if kind == "overwrite64":
        pos = rng.randrange(region.start, max(region.start + 1, region.end - 7))
        _overwrite64(out, pos, rng, len(data))
        return f"overwrite64 {region.name} @{pos}", bytes(out)
    if kind == "truncate":
        r = rng.choice(regions)
        cut = max(0, min(len(data) - 1, rng.choice((r.start, r.end)) + rng.randint(-8, 8)))
        return f"truncate @{cut} ({r.name})", bytes(out[:cut])
    if kind == "junk":
        junk = rng.randbytes(rng.choice((1, 7, 64, 4096)))
        return f"junk +{len(junk)}", bytes(out) + junk
    if kind == "swap_offsets" and swap_points and len(swap_points) >= 2:
        a, b = rng.sample(swap_points, 2)
        out[a:a + 8], out[b:b + 8] = data[b:b + 8], data[a:a + 8]
        return f"swap_offsets @{a}<->@{b}", bytes(out)
    for _ in range(rng.randint(2, 6)):  # multi: several overwrites and flips at once
        region = rng.choice(structural)
        pos = rng.randrange(region.start, region.end)
        if rng.random() < 0.5:
            out[pos] ^= 1 << rng.randrange(8)
        else:
            _overwrite64(out, min(pos, len(out) - 1), rng, len(data))
    return "multi", bytes(out)


_HOSTILE_VALUES: tuple[Any, ...] = (0, -1, 2**31, 2**40, 2**63, 1e308, -1e308, "", "x" * 300, None, True, [], {},
                                    [[[[[]]]]], "../../etc/passwd", "/etc/passwd")


def _json_paths(obj: Any, path: tuple[Any, ...] = (), limit: int = 4000) -> Iterator[tuple[Any, ...]]:
    """Paths to the values of a JSON document (breadth-limited: a 262k vocabulary is sampled, not walked)."""
    yield path
    if isinstance(obj, dict):
        keys = list(obj)
        for k in keys if len(keys) <= 64 else keys[:32] + keys[-8:]:
            yield from _json_paths(obj[k], (*path, k), limit)
    elif isinstance(obj, list):
        idx = range(len(obj)) if len(obj) <= 64 else [*range(8), len(obj) // 2, len(obj) - 1]
        for i in idx:
            yield from _json_paths(obj[i], (*path, i), limit)


def mutate_json(doc: Any, rng: random.Random) -> tuple[str, Any]:
    """One value-level mutation of a parsed JSON document (a deep copy is changed)."""
    doc = json.loads(json.dumps(doc))
    paths = [p for p in _json_paths(doc) if p]
    if not paths:
        return "whole", rng.choice(_HOSTILE_VALUES)
    path = rng.choice(paths)
    parent = doc
    for k in path[:-1]:
        parent = parent[k]
    last = path[-1]
    kind = rng.choice(("replace", "replace", "replace", "drop", "huge_list"))
    if kind == "drop" and isinstance(parent, dict):
        del parent[last]
        return f"drop {'.'.join(map(str, path))}", doc
    if kind == "huge_list":
        parent[last] = [0] * rng.choice((0, 1, 100_000))
        return f"list {'.'.join(map(str, path))}", doc
    parent[last] = rng.choice(_HOSTILE_VALUES)
    return f"replace {'.'.join(map(str, path))}={parent[last]!r:.20}", doc


def mutate_json_file(text: bytes, rng: random.Random) -> tuple[str, bytes]:
    """A mutant of a JSON file: value-level most of the time, else byte-level (flip, cut, junk, deep nesting)."""
    roll = rng.random()
    if roll < 0.6:
        what, doc = mutate_json(json.loads(text), rng)
        return what, json.dumps(doc).encode()
    if roll < 0.7:
        depth = rng.choice((100, 5000, 200_000))
        return f"nest {depth}", b"[" * depth + b"]" * depth
    regions = [Region("text", 0, len(text))]
    kind = rng.choice(("bitflip", "truncate", "junk"))
    out = bytearray(text)
    if kind == "bitflip":
        for _ in range(rng.randint(1, 4)):
            pos = rng.randrange(len(out))
            out[pos] ^= 1 << rng.randrange(8)
        return "bitflip", bytes(out)
    if kind == "truncate":
        cut = rng.randrange(len(out))
        return f"truncate @{cut}", bytes(out[:cut])
    del regions
    return "junk", bytes(out) + rng.randbytes(64)


def safetensors_mutant(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    """Header-JSON mutations (offsets, shapes, dtypes) half the time, byte-level the rest."""
    (n,) = struct.unpack_from("<Q", data, 0)
    if rng.random() < 0.5:
        header = json.loads(data[8:8 + n])
        names = [k for k in header if k != "__metadata__"]
        name = rng.choice(names)
        kind = rng.choice(("offsets", "offsets", "shape", "dtype", "swap", "overlap", "value"))
        entry = header[name]
        if kind == "offsets":
            i = rng.randrange(2)
            entry["data_offsets"][i] = rng.choice((*BOUNDARY_U64[:10], -8, len(data), entry["data_offsets"][i] + 1))
        elif kind == "shape":
            entry["shape"] = rng.choice(([2**40, 2**40], [-1, 4], [0], [], [*entry["shape"], 2], [1] * 9))
        elif kind == "dtype":
            entry["dtype"] = rng.choice(("F8_E4M3", "Q4", "", 7, "bf16", "U64"))
        elif kind == "swap" and len(names) > 1:
            other = header[rng.choice([x for x in names if x != name])]
            entry["data_offsets"], other["data_offsets"] = other["data_offsets"], entry["data_offsets"]
        elif kind == "overlap" and len(names) > 1:
            other = header[rng.choice([x for x in names if x != name])]
            entry["data_offsets"] = list(other["data_offsets"])
        else:
            _, header = mutate_json(header, rng)
        blob = json.dumps(header).encode()
        return f"header {kind} {name}", struct.pack("<Q", len(blob)) + blob + data[8 + n:]
    return mutate_binary(data, safetensors_regions(data), rng)


def rebuild_gguf(src: Path, dst: Path, *, keep_layers: int | None = None,
                 metadata: Callable[[str, Any, Any], tuple[Any, Any] | None] | None = None) -> Path:
    """Rewrite a GGUF with gguf-py: ``keep_layers`` drops later blocks (block_count follows);
    ``metadata(key, value, type)`` may return a replacement (value, GGUFValueType) or None to drop."""
    import gguf
    import numpy as np

    r = gguf.GGUFReader(str(src))
    arch = str(r.fields["general.architecture"].contents())
    w = gguf.GGUFWriter(str(dst), arch, use_temp_file=False)
    skip = {"GGUF.version", "GGUF.tensor_count", "GGUF.kv_count", "general.architecture"}
    for key, f in r.fields.items():
        if key in skip:
            continue
        vtype = f.types[0]
        value = f.contents()
        if keep_layers is not None and key == f"{arch}.block_count":
            value = keep_layers
        sub = f.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        if metadata is not None:
            new = metadata(key, value, vtype)
            if new is None:
                continue
            value, vtype = new
        if vtype == gguf.GGUFValueType.ARRAY:
            w.add_key_value(key, value, vtype, sub_type=sub)
        else:
            w.add_key_value(key, value, vtype)
    for t in r.tensors:
        if keep_layers is not None and t.name.startswith("blk.") and int(t.name.split(".")[1]) >= keep_layers:
            continue
        w.add_tensor(t.name, np.asarray(t.data), raw_dtype=t.tensor_type)  # byte shape -> ggml dims
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dst


# -- running mutants: in child processes, edgekit beside the raw library ------------------------------

SIDES = ("edgekit", "raw")
FORMATS = ("gguf", "safetensors", "tokenizer", "genai_config", "onnx")


def _case_gguf(side: str, path: Path) -> None:
    if side == "edgekit":
        import edgekit

        with edgekit.load(path, n_ctx=64, n_threads=1) as s:
            s.generate("Once upon", max_tokens=2)
        return
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, n_batch=64, n_threads=1, verbose=False)
    llm("Once upon", max_tokens=2)
    llm.close()


def _case_safetensors(side: str, path: Path) -> None:
    if side == "edgekit":  # what a conversion does first: open the source, read every tensor
        from edgekit.converters.source import open_source

        src = open_source(path.parent)
        for name in src.names():
            src.float32(name)
        return
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as f:
        for name in f.keys():  # safe_open has keys(), not iteration
            f.get_tensor(name)


def _case_tokenizer(side: str, path: Path) -> None:
    if side == "edgekit":
        from edgekit.validate import check_tokenizer_files

        check_tokenizer_files(path.parent)
    from tokenizers import Tokenizer

    Tokenizer.from_file(str(path)).encode("Hello world, once upon a time")


def _case_onnx(side: str, path: Path) -> None:
    """``path``: the model directory (its genai_config.json or model.onnx is the mutant)."""
    if side == "edgekit":
        import edgekit

        with edgekit.load(path, n_ctx=64) as s:
            s.generate("Once upon", max_tokens=2)
        return
    import onnxruntime_genai as og

    model = og.Model(str(path))
    tok = og.Tokenizer(model)
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=16)
    gen = og.Generator(model, params)
    gen.append_tokens(tok.encode("Once upon"))
    gen.generate_next_token()


CASES: dict[str, Callable[[str, Path], None]] = {
    "gguf": _case_gguf, "safetensors": _case_safetensors, "tokenizer": _case_tokenizer,
    "genai_config": _case_onnx, "onnx": _case_onnx,
}


def _reset_peak() -> None:
    try:  # Linux: "5" resets the resident-set high-water mark (VmHWM) of this process
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _peak_kib() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def worker_main(address_limit: int) -> None:
    """A child's loop: one case per stdin line (``side<TAB>format<TAB>path``), one JSON line out."""
    import os
    import resource
    import sys
    import traceback

    from edgekit.errors import EdgekitError

    if address_limit:  # a huge allocation fails in the child instead of swapping the machine
        resource.setrlimit(resource.RLIMIT_AS, (address_limit, address_limit))
    out = os.fdopen(os.dup(1), "w", buffering=1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # native libraries' chatter: away from the protocol stream
    os.dup2(devnull, 2)
    import logging

    logging.disable(logging.CRITICAL)
    for line in sys.stdin:
        side, fmt, path = line.rstrip("\n").split("\t")
        _reset_peak()
        try:
            CASES[fmt](side, Path(path))
            result: dict[str, Any] = {"outcome": "accepted"}
        except EdgekitError as e:
            result = {"outcome": "refused", "detail": e.one_line()[:300]}
        except MemoryError:
            result = {"outcome": "traceback" if side == "edgekit" else "error", "detail": "MemoryError"}
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:  # what the raw library raises is its refusal (a panic: a crash); ours is a bug
            panic = not isinstance(e, Exception)  # pyo3's PanicException: Rust code crashed
            kind = "traceback" if side == "edgekit" else "crash" if panic else "error"
            detail = f"{type(e).__name__}: {e}"[:300]
            if side == "edgekit":
                detail += " | " + "".join(traceback.format_tb(e.__traceback__)[-2:])[-400:]
            result = {"outcome": kind, "detail": detail}
        result["peak_rss_kib"] = _peak_kib()
        out.write(json.dumps(result) + "\n")


class Worker:
    """One child process running cases; a crash or a hang is recorded and the child replaced."""

    def __init__(self, command: list[str], timeout: float) -> None:
        self.command, self.timeout = command, timeout
        self.proc: Any = None

    def _start(self) -> None:
        import subprocess

        self.proc = subprocess.Popen(self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True, bufsize=1)

    def run(self, side: str, fmt: str, path: Path) -> dict[str, Any]:
        import select
        import signal

        if self.proc is None or self.proc.poll() is not None:
            self._start()
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(f"{side}\t{fmt}\t{path}\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass
        ready, _, _ = select.select([self.proc.stdout], [], [], self.timeout)
        line = self.proc.stdout.readline() if ready else ""
        if line:
            return dict(json.loads(line))
        if not ready:  # still running past the per-case limit
            self.proc.kill()
            self.proc.wait()
            self.proc = None
            return {"outcome": "hang", "detail": f"no answer in {self.timeout:g} s"}
        code = self.proc.wait()
        self.proc = None
        name = signal.Signals(-code).name if code < 0 else f"exit {code}"
        return {"outcome": "crash", "detail": name}

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except Exception:  # a child that will not exit is killed
                self.proc.kill()
                self.proc.wait()
