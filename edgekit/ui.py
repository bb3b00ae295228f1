"""Terminal output helpers for commands: aligned tables, JSON, progress lines.

Library code reports progress through :class:`edgekit.progress.Progress` callbacks;
only the CLI (through this module) writes to the terminal.

Tables print one format per column: a quantity that several commands show (top-1, mean
KL, perplexity change, size, bits per weight) has one :class:`Column` here, so ``convert``,
``inspect``, ``bench`` and ``eval`` print it the same way. A column given as a plain name
gets one format chosen from all of its values, never one per cell.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import click

Formatter = Callable[[Any], str]


# --- one formatter per kind of quantity ------------------------------------------------------

def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def sig3(v: float) -> str:
    """Three significant digits, trailing zeros kept: 0.0152, 6.70e-07, 1.00 (KL divergences)."""
    if v == 0:
        return "0"
    s = format(float(v), "#.3g")
    return s[:-1] if s.endswith(".") else s


def fixed(decimals: int) -> Formatter:
    """A fixed number of decimals (perplexity, tokens/s, bits per weight)."""
    def fmt(v: float) -> str:
        return f"{v:.{decimals}f}"

    fmt.__name__ = f"fixed{decimals}"
    return fmt


def fraction_pct(v: float) -> str:
    """A fraction shown as a percentage with one decimal: 0.9832 -> 98.3% (top-1 agreement)."""
    return f"{100 * v:.1f}%"


def pct(v: float) -> str:
    """A value already in percent, one decimal: 98.32 -> 98.3%."""
    return f"{v:.1f}%"


def signed_pct(v: float) -> str:
    """A change in percent with its sign and two decimals: +0.13%, -1.16% (perplexity change)."""
    return f"{v:+.2f}%"


def count(v: int) -> str:
    return f"{v:,}"


def text(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    return str(v)


@dataclass(frozen=True)
class Column:
    """A table column: its header and the one formatter every cell goes through.

    ``fmt`` None: one format for the whole column, chosen from its values (:func:`auto_format`).
    ``align`` None: right-aligned when every value is a number, else left."""

    name: str
    fmt: Formatter | None = None
    align: str | None = None  # "left" | "right" | None

    def named(self, name: str) -> Column:
        return dataclasses.replace(self, name=name)


# The quantities several commands print (rename with .named(): SIZE.named("peak RSS")).
SIZE = Column("size", human_bytes)
BPW = Column("bpw", fixed(2))  # bits per weight, block scales included
KL = Column("mean KL", sig3)
TOP1 = Column("top-1", fraction_pct)
PPL = Column("ppl", fixed(3))
PPL_DELTA = Column("ppl Δ", signed_pct)


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def auto_format(values: Sequence[Any]) -> Formatter:
    """One format for a column of untyped values, chosen from all of them: floats get the
    decimals that give the smallest one three significant digits (or all exponents when the
    column spans too many magnitudes), so ``1.00`` and ``0.9832`` never share a column."""
    floats = [float(v) for v in values if isinstance(v, float)]
    if not floats:
        return text
    mags = [abs(v) for v in floats if v != 0 and math.isfinite(v)]
    if not mags:
        return fixed(2)
    lo, hi = min(mags), max(mags)
    if lo >= 1000:
        return lambda v: f"{v:,.0f}"
    if lo >= 1:
        return fixed(2)
    decimals = 2 - math.floor(math.log10(lo))
    if lo < 1e-3 or decimals > 6 or hi >= 1e4:
        return lambda v: f"{v:.2e}"
    return fixed(decimals)


def format_table(columns: Sequence[str | Column], rows: Sequence[Sequence[Any]]) -> str:
    """Aligned plain-text table; each column formats all of its numbers one way."""
    cols = [c if isinstance(c, Column) else Column(c) for c in columns]
    fmts: list[Formatter] = []
    for i, c in enumerate(cols):
        values = [row[i] for row in rows if row[i] is not None]
        fmts.append(c.fmt or auto_format(values))
    # None prints as "-"; text is already formatted (e.g. "mean ± std"), numbers go through the column's format
    cells = [["-" if v is None else text(v) if isinstance(v, bool | str) else fmts[i](v) for i, v in enumerate(row)]
             for row in rows]
    widths = [len(c.name) for c in cols]
    for row in cells:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    right = [c.align == "right" if c.align else bool(rows) and all(row[i] is None or _is_num(row[i]) for row in rows)
             for i, c in enumerate(cols)]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if r else v.ljust(w) for v, w, r in zip(values, widths, right, strict=False)]
        return "  ".join(parts).rstrip()

    out = [line([c.name for c in cols]), line(["-" * w for w in widths])]
    out += [line(r) for r in cells]
    return "\n".join(out)


# --- the artifact table: convert and inspect print the same rows ------------------------------

ARTIFACT_COLUMNS = (Column("artifact"), Column("format"), Column("quant"), SIZE, BPW, KL, TOP1, PPL, PPL_DELTA,
                    Column("verified"))


def quality_of(entry: Mapping[str, Any]) -> Mapping[str, Any]:
    """The measured figures of a manifest entry (mean_kl, top1, ppl, ppl_delta_pct)."""
    return entry.get("quality") or entry.get("verification") or {}


def artifact_rows(entries: Sequence[Mapping[str, Any]]) -> list[list[Any]]:
    """Rows for :data:`ARTIFACT_COLUMNS` from manifest entries (``ArtifactEntry`` as dicts)."""
    rows = []
    for a in entries:
        q, v = quality_of(a), a.get("verification") or {}
        rows.append([a["file"], a["format"], a["quant"], a["size_bytes"], (a.get("extra") or {}).get("bits_per_weight"),
                     q.get("mean_kl"), q.get("top1"), q.get("ppl"), q.get("ppl_delta_pct"),
                     "pass" if v.get("passed") else "skipped"])
    return rows


def artifact_table(entries: Sequence[Mapping[str, Any]]) -> str:
    return format_table(ARTIFACT_COLUMNS, artifact_rows(entries))


def emit_json(data: Any, *, compact: bool = False) -> None:
    click.echo(json.dumps(data, indent=None if compact else 2, default=str))


class StepPrinter:
    """Progress callback for the CLI: one line per step on stderr (stdout stays for results/JSON)."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self._last_frac = -1.0
        self._last_message = ""

    def __call__(self, event: Any) -> None:
        if self.quiet:
            return
        if event.total:  # a sub-step counter: redraw one line in place on a TTY
            frac = event.done / event.total
            if sys.stderr.isatty():
                bar = "#" * int(frac * 30)
                tail = f"  {event.message}" if event.message else ""
                click.echo(f"\r  {event.step:<28} [{bar:<30}] {event.done}/{event.total}{tail}\033[K", err=True,
                           nl=False)
                if event.done >= event.total:
                    click.echo("", err=True)
            elif event.message and event.message != self._last_message:  # logs: the message as it changes
                self._last_message = event.message
                click.echo(f"- {event.step}: {event.message}", err=True)
            return
        click.echo(f"- {event.step}{': ' + event.message if event.message else ''}", err=True)
