"""The build scripts' bad-input paths (the CUDA compile itself is hours on 2 cores: not in CI; its
record is benchmarks/results/cuda_build_sm90.json)."""

from __future__ import annotations

import subprocess
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(ROOT / "scripts" / script), *args], capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize(("args", "needle"), [
    ((), "usage:"),
    (("0.3.36", "sm90", "OUT"), "'sm90' is not a list of CUDA architectures"),
    (("0.3.36", "90;87x", "OUT"), "is not a list of CUDA architectures"),
])
def test_build_llama_cuda_refuses_bad_arguments(args: tuple[str, ...], needle: str, tmp_path: Path) -> None:
    r = _run("build-llama-cuda.sh", *[a.replace("OUT", str(tmp_path / "out")) for a in args])
    assert r.returncode == 2 and needle in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1  # one line


def test_trim_llama_sdist_refuses_what_is_not_an_sdist(tmp_path: Path) -> None:
    fake = tmp_path / "not-llama.tar.gz"
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "setup.py").write_text("")
    with tarfile.open(fake, "w:gz") as t:
        t.add(tmp_path / "pkg", arcname="pkg")
    r = _run("trim-llama-sdist.sh", str(fake), str(tmp_path / "out.tar.gz"))
    assert r.returncode == 2 and "not a llama-cpp-python sdist" in r.stderr, r.stderr
    assert not (tmp_path / "out.tar.gz").exists()
    r = _run("trim-llama-sdist.sh", str(tmp_path / "missing.tar.gz"), str(tmp_path / "out.tar.gz"))
    assert r.returncode == 2 and "is not a file" in r.stderr
