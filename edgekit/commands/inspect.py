"""``edgekit inspect``: a GGUF file's metadata and tensors, or an output directory's manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from edgekit.ui import BPW, SIZE, Column, artifact_table, emit_json, format_table, human_bytes


@click.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--tensors/--no-tensors", default=True, help="List the tensor table (GGUF).")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def inspect(path: Path, tensors: bool, as_json: bool) -> None:
    """Show PATH: a .gguf file's metadata and tensor table, or a manifest (edgekit.json / its directory)."""
    import edgekit

    info = edgekit.inspect(path)
    if not tensors:
        info.pop("tensors", None)
    if as_json:
        emit_json(info)
        return
    if info["kind"] == "manifest":
        src = info["source"]
        click.echo(f"source: {src.get('path')} ({src.get('architecture')}), weights sha256 {str(src.get('weights_sha256'))[:16]}…")
        click.echo(artifact_table(info["artifacts"]))
        return
    types = ", ".join(f"{t} {n}" for t, n in info.get("tensor_types", {}).items())
    bpw = f", {BPW.fmt(info['bits_per_weight'])} bits per weight ({types})" if BPW.fmt and "bits_per_weight" in info else ""
    click.echo(f"{info['path']}: GGUF v{info['version']}, {human_bytes(info['size_bytes'])}, "
               f"arch {info['architecture']}, {info['n_tensors']} tensors{bpw}")
    meta_rows = [[k, _short(v)] for k, v in info["metadata"].items()]
    click.echo(format_table(["key", "value"], meta_rows))
    if tensors:
        click.echo("")
        click.echo(format_table([Column("tensor"), Column("type"), Column("shape"), SIZE],
                                [[t["name"], t["type"], "x".join(map(str, t["shape"])), t["nbytes"]]
                                 for t in info["tensors"]]))


def _short(v: Any, limit: int = 80) -> str:
    s = str(v).replace("\n", "\\n")
    return s if len(s) <= limit else s[: limit - 1] + "…"
