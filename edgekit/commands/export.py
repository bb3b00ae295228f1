"""``edgekit export ollama|lmstudio ARTIFACT``: hand a GGUF to another local runner."""

from __future__ import annotations

from pathlib import Path

import click

from edgekit.ui import emit_json, format_table


@click.group()
def export() -> None:
    """Hand a GGUF artifact to Ollama (a Modelfile beside it) or LM Studio (its models directory)."""


@export.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--quant", default=None, help="Which GGUF of an output directory (e.g. q4_k_m).")
@click.option("--ctx", "num_ctx", type=int, default=None,
              help="PARAMETER num_ctx (default: 4096, edgekit run's default, or the trained context if shorter).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def ollama(artifact: Path, quant: str | None, num_ctx: int | None, as_json: bool) -> None:
    """Write ARTIFACT's Ollama Modelfile (<name>.Modelfile beside the GGUF): FROM, TEMPLATE, stops, num_ctx."""
    from edgekit.export import require_gguf, write_modelfile

    mf = write_modelfile(require_gguf(artifact, quant), num_ctx=num_ctx)
    if as_json:
        emit_json(mf.to_dict())
        return
    click.echo(format_table(["modelfile", "template", "stop", "num_ctx"],
                            [[str(mf.path), mf.family or "none", " ".join(mf.stops) or "-", mf.num_ctx]]))
    for note in mf.notes:
        click.echo(f"note: {note}")
    click.echo(f"next: cd {mf.path.parent} && ollama create {mf.gguf.stem} -f {mf.path.name}")


@export.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--quant", default=None, help="Which GGUF of an output directory (e.g. q4_k_m).")
@click.option("--models-dir", type=click.Path(path_type=Path), default=None,
              help="LM Studio's models directory (default: $LMSTUDIO_MODELS_DIR or ~/.lmstudio/models).")
@click.option("--publisher", default="edgekit", show_default=True, help="The <publisher> directory.")
@click.option("--model", "model_name", default=None, help="The <model> directory (default: the GGUF's general.name).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def lmstudio(artifact: Path, quant: str | None, models_dir: Path | None, publisher: str, model_name: str | None,
             as_json: bool) -> None:
    """Lay ARTIFACT out as LM Studio expects: <models dir>/<publisher>/<model>/<file>.gguf (linked, not copied)."""
    from edgekit.export import export_lmstudio, require_gguf

    r = export_lmstudio(require_gguf(artifact, quant), models_dir, publisher=publisher, model=model_name)
    if as_json:
        emit_json(r.to_dict())
        return
    click.echo(format_table(["path", "from", "how"], [[str(r.path), str(r.gguf), r.method]]))
