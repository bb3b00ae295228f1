"""``edgekit doctor``: what this host can run (llama.cpp build, GPU and driver, ONNX Runtime) and why not."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from edgekit.ui import emit_json, format_table


def _value(v: Any) -> Any:
    """Facts of every kind share one column: text as it is (yes/no, "-" for none), numbers as written."""
    if v is None or isinstance(v, bool | str):
        return v
    return str(v) if isinstance(v, int | float) else json.dumps(v)


@click.command()
@click.option("--probes", "probes_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Diagnose recorded probes (the `probes` object of another host's `doctor --json`) instead of this host.")
@click.option("--json", "as_json", is_flag=True, help="Print facts, findings and the raw probes as JSON.")
def doctor(probes_file: Path | None, as_json: bool) -> None:
    """What this host can run, and one line with the fix for every mismatch.

    Exits 0 either way: findings are advice, the JSON's `findings` list is for scripts."""
    from edgekit.doctor import Probes, diagnose, gather
    from edgekit.errors import InputError

    if probes_file is not None:
        try:
            data = json.loads(probes_file.read_text())
        except (OSError, ValueError) as e:
            raise InputError(f"{probes_file}: not a JSON probes record ({e})",
                             hint="pass the file written by `edgekit doctor --json` (or its `probes` object)") from e
        if not isinstance(data, dict):
            raise InputError(f"{probes_file}: not a JSON object", hint="pass the file written by `edgekit doctor --json`")
        try:  # a record from another edgekit version or edited by hand: refuse it in one line
            report = diagnose(Probes.from_dict(data.get("probes", data)))
        except (AttributeError, TypeError, KeyError, ValueError) as e:
            raise InputError(f"{probes_file}: not a probes record ({type(e).__name__}: {e})",
                             hint="pass the file written by `edgekit doctor --json` (or its `probes` object)") from e
    else:
        report = diagnose(gather())
    if as_json:
        emit_json(report.to_dict())
        return
    rows = [[section, key, _value(v)] for section, facts in report.facts.items() for key, v in facts.items()]
    click.echo(format_table(["section", "fact", "value"], rows))
    click.echo("")
    if not report.findings:
        click.echo("no mismatches found")
    for f in report.findings:
        click.echo(f.line())
