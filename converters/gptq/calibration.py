"""Calibration text for GPTQ: where it comes from and how it becomes token windows.

GPTQ measures which input directions each layer actually sees (the Hessian of its inputs)
on a few hundred windows of real text. The default text is the one edgekit ships:
``edgekit/data/corpus.txt`` (Python standard-library docstrings and small functions, the
demo model's training text). It is local (nothing is downloaded), in-distribution for the
demo model, mixed prose and code for other models, and disjoint from ``heldout.txt``, on
which the result is evaluated -- calibrating on the evaluation text would flatter GPTQ.
A fine-tune is best calibrated on text like its fine-tuning data: ``--calibration``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit.errors import InputError, ModelNotFoundError

DEFAULT_SAMPLES = 128  # windows; GPTQ papers and llmcompressor examples use 128-512
DEFAULT_SEQ_LEN = 512  # tokens per window
MIN_SEQ_LEN = 16
TEXT_SUFFIXES = (".txt", ".md", ".rst")  # what a --calibration directory contributes
_CHUNK_CHARS = 1 << 16  # tokenize in pieces: bounded memory for big calibration dirs


@dataclass
class CalibrationSet:
    source: str  # path, or "packaged: corpus.txt"
    windows: list[list[int]]
    available_tokens: int

    @property
    def seq_len(self) -> int:
        return len(self.windows[0]) if self.windows else 0

    def describe(self) -> dict[str, Any]:
        return {"source": self.source, "samples": len(self.windows), "seq_len": self.seq_len,
                "tokens_available": self.available_tokens}


def check_window(samples: int, seq_len: int, max_positions: int | None) -> None:
    if samples < 1:
        raise InputError(f"--samples must be at least 1 (got {samples})", hint="128 is a good default")
    if seq_len < MIN_SEQ_LEN:
        raise InputError(f"--seq-len must be at least {MIN_SEQ_LEN} tokens (got {seq_len})",
                         hint=f"{DEFAULT_SEQ_LEN} is a good default")
    if max_positions and seq_len > max_positions:
        raise InputError(f"--seq-len {seq_len} exceeds the model's context of {max_positions} tokens",
                         hint=f"pass --seq-len {max_positions} or less")


def read_calibration_text(source: Path | None) -> tuple[str, str]:
    """(text, description) from a file, a directory of text files, or the packaged default."""
    if source is None:
        from edgekit.demo import corpus_path

        path = corpus_path()
        return path.read_text(encoding="utf-8"), f"packaged: {path.name}"
    source = Path(source)
    if source.is_dir():
        files = sorted(p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
        if not files:
            raise InputError(f"calibration directory {source} holds no {'/'.join(TEXT_SUFFIXES)} files",
                             hint="point --calibration at a UTF-8 text file or a directory of them")
        parts = [_read(p) for p in files]
    elif source.is_file():
        parts = [_read(source)]
    else:
        raise ModelNotFoundError(f"calibration text {source} does not exist",
                                 hint="pass a UTF-8 text file or a directory of .txt files")
    text = "\n\n".join(p for p in parts if p.strip())
    if not text.strip():
        raise InputError(f"calibration text {source} is empty",
                         hint="pass text the model will see (a few hundred KB), or omit --calibration")
    return text, str(source)


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"calibration file {path} is not UTF-8 text ({e.reason} at byte {e.start})",
                         hint="convert it to UTF-8 text") from e
    except OSError as e:
        raise InputError(f"cannot read calibration file {path}: {e.strerror}") from e


def _token_stream(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` without special tokens, tokenized in paragraph-aligned chunks."""
    ids: list[int] = []
    start = 0
    while start < len(text):
        end = min(len(text), start + _CHUNK_CHARS)
        if end < len(text):  # cut at a paragraph (else line) break so no word is split
            cut = text.rfind("\n\n", start, end)
            cut = cut if cut > start else text.rfind("\n", start, end)
            end = cut + 1 if cut > start else end
        # verbose=False: a chunk is longer than the model's context on purpose; no warning
        ids.extend(tokenizer(text[start:end], add_special_tokens=False, verbose=False)["input_ids"])
        start = end
    return ids


def _bos(tokenizer: Any) -> int | None:
    """The BOS id when the tokenizer adds one by itself (the model was trained to see it)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return None
    probe = tokenizer("a", add_special_tokens=True)["input_ids"]
    return int(bos) if probe and probe[0] == bos else None


def calibration_windows(tokenizer: Any, text: str, source: str, samples: int, seq_len: int) -> CalibrationSet:
    """``samples`` windows of ``seq_len`` tokens, spread evenly over the whole text."""
    ids = _token_stream(tokenizer, text)
    bos = _bos(tokenizer)
    body = seq_len - (1 if bos is not None else 0)
    need = samples * body
    if len(ids) < need:
        fit = len(ids) // body
        raise InputError(
            f"calibration text {source} has {len(ids)} tokens, too short for {samples} samples of "
            f"{seq_len} tokens ({need} needed)",
            hint=(f"pass more text with --calibration, or lower --samples to {fit} or less"
                  if fit else f"pass more text with --calibration, or lower --seq-len below {len(ids)}"))
    # evenly spaced, non-overlapping starts (need <= len(ids) guarantees the spacing >= body)
    step = (len(ids) - body) / max(samples - 1, 1)
    windows = []
    for i in range(samples):
        s = round(i * step) if samples > 1 else 0
        w = ids[s:s + body]
        windows.append(([bos] if bos is not None else []) + w)
    return CalibrationSet(source, windows, len(ids))
