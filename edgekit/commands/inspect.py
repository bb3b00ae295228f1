"""``edgekit inspect``: a GGUF file's metadata and tensors, or an output directory's manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from edgekit.ui import emit_json, format_table, human_bytes


def inspect_path(path: Path) -> dict[str, Any]:
    from edgekit.converters.gguf.inspect import read_gguf
    from edgekit.errors import InputError, ModelNotFoundError
    from edgekit.manifest import MANIFEST_NAME, load_manifest

    if not path.exists():
        raise ModelNotFoundError(f"{path} does not exist", hint="pass a .gguf file or an edgekit output directory")
    if path.is_dir() or path.name == MANIFEST_NAME:
        if not (path / MANIFEST_NAME).is_file() and path.name != MANIFEST_NAME:
            raise InputError(f"no {MANIFEST_NAME} in {path}", hint="pass an edgekit output directory or a .gguf file")
        return {"kind": "manifest", **load_manifest(path).to_dict()}
    return {"kind": "gguf", **read_gguf(path).to_dict()}


@click.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--tensors/--no-tensors", default=True, help="List the tensor table (GGUF).")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def inspect(path: Path, tensors: bool, as_json: bool) -> None:
    """Show PATH: a .gguf file's metadata and tensor table, or a manifest (edgekit.json / its directory)."""
    info = inspect_path(path)
    if not tensors:
        info.pop("tensors", None)
    if as_json:
        emit_json(info)
        return
    if info["kind"] == "manifest":
        src = info["source"]
        click.echo(f"source: {src.get('path')} ({src.get('architecture')}), weights sha256 {str(src.get('weights_sha256'))[:16]}…")
        rows = [[a["file"], a["format"], a["quant"], human_bytes(a["size_bytes"]),
                 (a.get("verification") or {}).get("mean_kl"), (a.get("verification") or {}).get("top1"),
                 "pass" if (a.get("verification") or {}).get("passed") else "not verified"] for a in info["artifacts"]]
        click.echo(format_table(["file", "format", "quant", "size", "mean KL", "top-1", "verified"], rows))
        return
    click.echo(f"{info['path']}: GGUF v{info['version']}, {human_bytes(info['size_bytes'])}, "
               f"arch {info['architecture']}, {info['n_tensors']} tensors")
    meta_rows = [[k, _short(v)] for k, v in info["metadata"].items()]
    click.echo(format_table(["key", "value"], meta_rows))
    if tensors:
        click.echo("")
        click.echo(format_table(["tensor", "type", "shape", "bytes"],
                                [[t["name"], t["type"], "x".join(map(str, t["shape"])), t["nbytes"]]
                                 for t in info["tensors"]]))


def _short(v: Any, limit: int = 80) -> str:
    s = str(v).replace("\n", "\\n")
    return s if len(s) <= limit else s[: limit - 1] + "…"
