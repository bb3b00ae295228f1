"""Terminal output helpers for commands: aligned tables, JSON, progress lines.

Library code reports progress through :class:`edgekit.progress.Progress` callbacks;
only the CLI (through this module) writes to the terminal.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

import click


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Aligned plain-text table: numbers right-aligned, text left-aligned."""
    cells = [[_fmt(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, c in enumerate(row):
            widths[i] = max(widths[i], len(c))
    numeric = [all(_is_num(row[i]) for row in rows) and bool(rows) for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric, strict=False)]
        return "  ".join(parts).rstrip()

    out = [line(list(headers)), line(["-" * w for w in widths])]
    out += [line(r) for r in cells]
    return "\n".join(out)


def _is_num(v: Any) -> bool:
    return (isinstance(v, int | float) and not isinstance(v, bool)) or v is None


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if v == 0:
            return "0"
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        if abs(v) >= 1:
            return f"{v:.2f}"
        if abs(v) >= 1e-3:
            return f"{v:.4f}"
        return f"{v:.2e}"
    return str(v)


def emit_json(data: Any, *, compact: bool = False) -> None:
    click.echo(json.dumps(data, indent=None if compact else 2, default=str))


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


class StepPrinter:
    """Progress callback for the CLI: one line per step on stderr (stdout stays for results/JSON)."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self._last_frac = -1.0

    def __call__(self, event: Any) -> None:
        if self.quiet:
            return
        if event.total:  # a sub-step counter: redraw one line in place on a TTY
            frac = event.done / event.total
            if sys.stderr.isatty():
                bar = "#" * int(frac * 30)
                click.echo(f"\r  {event.step:<28} [{bar:<30}] {event.done}/{event.total}", err=True, nl=False)
                if event.done >= event.total:
                    click.echo("", err=True)
            return
        click.echo(f"- {event.step}{': ' + event.message if event.message else ''}", err=True)
