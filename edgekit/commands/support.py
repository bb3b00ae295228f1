"""``edgekit support``: which architectures convert to which formats (from the architecture specs)."""

from __future__ import annotations

import click

from edgekit.ui import emit_json, format_table


@click.command("support")
@click.option("--json", "as_json", is_flag=True, help="Print the table as JSON.")
def support(as_json: bool) -> None:
    """Architecture x format: what `edgekit convert --to` accepts for each model family."""
    from edgekit.converters.gguf.archs import FORMATS, support_rows

    rows = support_rows()
    if as_json:
        emit_json(rows)
        return
    click.echo(format_table(["architecture", "hugging face classes", *FORMATS, "notes"],
                            [[r["arch"], ", ".join(r["hf_classes"]), *("yes" if r[f] else "no" for f in FORMATS),
                              r["notes"] or ""] for r in rows]))
