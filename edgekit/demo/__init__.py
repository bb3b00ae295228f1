"""The packaged demo model and its text corpus.

The demo model is a small Llama (2.6M parameters, vocab 1024) trained on ``corpus.txt``:
docstrings and small functions of the Python standard library. It ships inside the package
so that ``edgekit convert --demo`` works offline; ``python -m edgekit.demo.build_corpus`` and
``python -m edgekit.demo.train`` rebuild the corpus and the model.

``heldout.txt`` (no document in common with the corpus) is held-out text for the demo model.
In both, documents are separated by one blank line. edgekit's default calibration and
evaluation text for any model is the packaged prose/code/dialogue mix (``edgekit/data/textsets``,
read by :mod:`edgekit.converters.textsets`).
"""

from __future__ import annotations

from pathlib import Path

from edgekit.errors import EdgekitError, ModelNotFoundError

__all__ = ["corpus_path", "demo_model_dir", "heldout_path"]

_HERE = Path(__file__).resolve().parent
_DATA = _HERE.parent / "data"
_MODEL = _HERE / "model"
# What save_pretrained wrote; the model is unusable without any of these.
_REQUIRED = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def demo_model_dir() -> Path:
    """Directory of the packaged demo model (a Hugging Face model directory)."""
    missing = [name for name in _REQUIRED if not (_MODEL / name).is_file()]
    if missing:
        raise ModelNotFoundError(
            f"the packaged demo model is missing from {_MODEL} (no {', '.join(missing)})",
            hint="rebuild it with `python -m edgekit.demo.train`, or reinstall edgekit",
        )
    return _MODEL


def _data_file(name: str) -> Path:
    path = _DATA / name
    if not path.is_file():
        raise EdgekitError(
            f"the packaged text file {path} is missing",
            hint="rebuild it with `python -m edgekit.demo.build_corpus`, or reinstall edgekit",
        )
    return path


def corpus_path() -> Path:
    """The demo training corpus (~600 KB, UTF-8)."""
    return _data_file("corpus.txt")


def heldout_path() -> Path:
    """Held-out text disjoint from the corpus, the default perplexity text (~50 KB, UTF-8)."""
    return _data_file("heldout.txt")
