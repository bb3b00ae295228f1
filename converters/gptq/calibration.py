"""Calibration text for GPTQ: where it comes from and how it becomes token windows.

GPTQ measures which input directions each layer actually sees (the Hessian of its inputs)
on a few hundred windows of real text. The text comes from :mod:`..textsets`: by default the
packaged calibration mix (prose, code and dialogue from redistributable sources), which
shares nothing with the packaged evaluation mix or ``heldout.txt`` on which the result is
evaluated -- calibrating on the evaluation text would flatter GPTQ. A fine-tune is best
calibrated on text like its fine-tuning data: ``--calibration`` takes text files,
directories and JSONL (``text`` or chat ``messages``, rendered through the model's own chat
template).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit.errors import InputError

from ..textsets import TEXT_SUFFIXES, bos_id, calibration_texts, token_stream

__all__ = ["TEXT_SUFFIXES", "CalibrationSet", "calibration_windows", "check_window", "read_calibration_text"]

DEFAULT_SAMPLES = 128  # windows; GPTQ papers and llmcompressor examples use 128-512
DEFAULT_SEQ_LEN = 512  # tokens per window
MIN_SEQ_LEN = 16


@dataclass
class CalibrationSet:
    source: str  # path, or "packaged: calibration mix"
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
        raise InputError(f"--samples / samples= must be at least 1 (got {samples})", hint="128 is a good default")
    if seq_len < MIN_SEQ_LEN:
        raise InputError(f"--seq-len / seq_len= must be at least {MIN_SEQ_LEN} tokens (got {seq_len})",
                         hint=f"{DEFAULT_SEQ_LEN} is a good default")
    if max_positions and seq_len > max_positions:
        raise InputError(f"--seq-len / seq_len= {seq_len} exceeds the model's context of {max_positions} tokens",
                         hint=f"pass --seq-len / seq_len= {max_positions} or less")


def read_calibration_text(source: Path | None, tokenizer: Any | None = None) -> tuple[str, str]:
    """(text, description) of ``source`` (file, directory, JSONL) or of the packaged calibration mix.

    ``tokenizer`` renders chat JSONL through the model's chat template (see :mod:`..textsets`)."""
    texts = calibration_texts(source, tokenizer)
    return texts.text(), texts.source


def calibration_windows(tokenizer: Any, text: str, source: str, samples: int, seq_len: int) -> CalibrationSet:
    """``samples`` windows of ``seq_len`` tokens, spread evenly over the whole text."""
    ids = token_stream(tokenizer, [text])
    bos = bos_id(tokenizer)
    body = seq_len - (1 if bos is not None else 0)
    need = samples * body
    if len(ids) < need:
        fit = len(ids) // body
        raise InputError(
            f"calibration text {source} has {len(ids)} tokens, too short for {samples} samples of "
            f"{seq_len} tokens ({need} needed)",
            hint=(f"pass more text with --calibration / calibration=, or lower --samples / samples= to {fit} or less"
                  if fit else f"pass more text with --calibration / calibration=, or lower --seq-len / seq_len= "
                              f"below {len(ids)}"))
    # evenly spaced, non-overlapping starts (need <= len(ids) guarantees the spacing >= body)
    step = (len(ids) - body) / max(samples - 1, 1)
    windows = []
    for i in range(samples):
        s = round(i * step) if samples > 1 else 0
        w = ids[s:s + body]
        windows.append(([bos] if bos is not None else []) + w)
    return CalibrationSet(source, windows, len(ids))
