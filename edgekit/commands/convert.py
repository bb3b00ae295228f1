"""``edgekit convert``."""

from __future__ import annotations

from pathlib import Path

import click

from edgekit.ui import StepPrinter, emit_json, format_table, human_bytes

DEMO_QUANTS = "f16,q8_0,q4_k_m"


@click.command()
@click.argument("model_dir", required=False, type=click.Path(path_type=Path))
@click.option("--to", "to", default="gguf", show_default=True, help="Output format.")
@click.option("--quant", "-q", "quants", default=None, help=f"Comma-separated types, e.g. {DEMO_QUANTS} (default f16).")
@click.option("--adapter", type=click.Path(path_type=Path), default=None, help="PEFT LoRA adapter dir to merge.")
@click.option("-o", "--out", "out_dir", type=click.Path(path_type=Path), default=Path("edgekit-out"),
              show_default=True, help="Output directory.")
@click.option("--name", default=None, help="Base name of the output files (default: the model dir's name).")
@click.option("--no-verify", is_flag=True, help="Skip verification against the source model (not recommended).")
@click.option("--threads", type=int, default=None, help="Threads for quantization and verification.")
@click.option("--demo", is_flag=True, help="Convert the packaged demo model (no download needed).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--quiet", is_flag=True, help="No progress lines.")
def convert(model_dir: Path | None, to: str, quants: str | None, adapter: Path | None, out_dir: Path,
            name: str | None, no_verify: bool, threads: int | None, demo: bool, as_json: bool, quiet: bool) -> None:
    """Convert MODEL_DIR (a Hugging Face model directory) and verify every artifact against it."""
    from edgekit.converters.registry import converter, parse_format
    from edgekit.errors import InputError

    if demo:
        from edgekit.demo import demo_model_dir

        if model_dir is not None:
            raise InputError("--demo converts the packaged demo model; drop MODEL_DIR or --demo")
        model_dir, quants, name = demo_model_dir(), quants or DEMO_QUANTS, name or "edgekit-demo"
    if model_dir is None:
        raise InputError("missing MODEL_DIR", hint="pass a Hugging Face model directory, or --demo")
    fmt = parse_format(to)
    result = converter(fmt)(model_dir, out_dir, quants or "f16", adapter_dir=adapter, verify_artifacts=not no_verify,
                            name=name, threads=threads, progress=StepPrinter(quiet=quiet or as_json))
    if as_json:
        emit_json({"out_dir": str(out_dir), "manifest": result.manifest.to_dict(), "steps": result.timer.as_dict()})
        return
    rows = []
    for a in result.artifacts:
        v = a.verification or {}
        rows.append([a.file, a.quant, human_bytes(a.size_bytes), v.get("mean_kl"), v.get("top1"), v.get("ppl"),
                     v.get("ppl_delta_pct"), "pass" if v.get("passed") else "skipped"])
    click.echo(format_table(["file", "quant", "size", "mean KL", "top-1", "ppl", "ppl Δ%", "verified"], rows))
    ref = next((a.verification for a in result.artifacts if a.verification), None)
    if ref:
        click.echo(f"source perplexity {ref['ppl_ref']:.3f} on {ref['n_positions']} probe positions; "
                   f"manifest: {out_dir / 'edgekit.json'}")
