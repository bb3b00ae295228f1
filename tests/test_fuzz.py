"""Bounded fuzzing in the suite (benchmarks/fuzz.py is the long run, with the raw libraries beside).

Mutants of valid files (edgekit.validate_fuzz) go through edgekit's validators in process
(pure Python: any exception that is not edgekit's error is a bug hypothesis shrinks); the
mutants that reach native code (llama.cpp, tokenizers, ONNX Runtime GenAI) run in a child process,
so a crash or hang is an outcome the test reports, not the end of the suite."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgekit import validate_fuzz as vf
from edgekit.converters.gguf.inspect import read_gguf
from edgekit.converters.safetensors_io import SafetensorsFile
from edgekit.demo import demo_model_dir
from edgekit.errors import CorruptFileError

FAST = settings(max_examples=400, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edgekit.converters.gguf.convert import convert_gguf

    out = tmp_path_factory.mktemp("fuzz-gguf")
    (entry,) = convert_gguf(demo_model_dir(), out, "q8_0", verify_artifacts=False).artifacts
    return vf.rebuild_gguf(out / entry.file, out / "tiny.gguf", keep_layers=1)


def _gguf_mutant(data: bytes, seed: int) -> tuple[str, bytes]:
    regions = vf.gguf_regions(data)
    return vf.mutate_binary(data, regions, random.Random(seed), swap_points=vf.gguf_tensor_offsets(data, regions),
                            value_slots=vf.gguf_value_slots(data))


def test_gguf_validator_never_raises_anything_else(tiny_gguf: Path, tmp_path: Path) -> None:
    data = tiny_gguf.read_bytes()
    path = tmp_path / "m.gguf"
    outcomes: dict[str, int] = {"accepted": 0, "refused": 0}

    @FAST
    @given(st.integers(0, 2**32 - 1))
    def check(seed: int) -> None:
        _, blob = _gguf_mutant(data, seed)
        path.write_bytes(blob)
        try:
            read_gguf(path)
            outcomes["accepted"] += 1
        except CorruptFileError as e:
            assert str(path) in str(e) and "\n" not in str(e)
            outcomes["refused"] += 1

    check()
    assert outcomes["refused"] > 0 and outcomes["accepted"] > 0  # the mutants exercise both answers


def test_safetensors_validator_never_raises_anything_else(tmp_path: Path) -> None:
    data = (demo_model_dir() / "model.safetensors").read_bytes()
    path = tmp_path / "model.safetensors"

    @FAST
    @given(st.integers(0, 2**32 - 1))
    def check(seed: int) -> None:
        _, blob = vf.safetensors_mutant(data, random.Random(seed))
        path.write_bytes(blob)
        try:
            f = SafetensorsFile(path)
        except CorruptFileError:
            return
        for name in f.tensors:  # accepted: every tensor reads, whole
            assert f.raw(name).nbytes == f.tensors[name].nbytes

    check()


def _case_dir(base: Path, blob: bytes, case: Path) -> Path:
    case.mkdir(parents=True, exist_ok=True)
    for sib in base.parent.iterdir():
        if sib.is_file() and sib.name != base.name and not sib.name.startswith("edgekit"):
            (case / sib.name).symlink_to(sib)
    (case / base.name).write_bytes(blob)
    return case / base.name


@pytest.mark.parametrize(("fmt", "count"), [("gguf", 300), ("tokenizer", 100)])
def test_native_mutants_accepted_or_refused_in_a_child(tiny_gguf: Path, tmp_path: Path, fmt: str,
                                                       count: int) -> None:
    """Each mutant through edgekit's entry point (edgekit.load + generate; the tokenizer check then
    Hugging Face tokenizers) in a child: accepted or refused with edgekit's error, never a crash,
    hang or traceback."""
    import sys

    base = tiny_gguf if fmt == "gguf" else demo_model_dir() / "tokenizer.json"
    data = base.read_bytes()
    rng = random.Random(19)
    worker = vf.Worker([sys.executable, "-c", "from edgekit.validate_fuzz import worker_main; "
                        "worker_main(8 << 30)"], timeout=60)
    seen: dict[str, int] = {}
    bad: list[tuple[str, dict[str, object]]] = []
    try:
        assert worker.run("edgekit", fmt, base)["outcome"] == "accepted"  # the valid file loads and generates
        for i in range(count):
            what, blob = _gguf_mutant(data, rng.getrandbits(32)) if fmt == "gguf" else vf.mutate_json_file(data, rng)
            res = worker.run("edgekit", fmt, _case_dir(base, blob, tmp_path / f"{fmt}-{i}"))
            seen[res["outcome"]] = seen.get(res["outcome"], 0) + 1
            if res["outcome"] not in ("accepted", "refused"):
                bad.append((what, res))
    finally:
        worker.close()
    assert not bad, bad[:3]
    assert seen.get("refused", 0) > 0
