"""`edgekit recommend MODEL --profile NAME`: which format and quantization to ship, and why."""

from __future__ import annotations

from pathlib import Path

import click

from edgekit.ui import KL, PPL_DELTA, SIZE, TOP1, Column, emit_json, fixed, format_table


@click.command("recommend")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--profile", "profile_name", required=True, help="Hardware profile (see `edgekit profile list`).")
@click.option("--ctx", default=4096, show_default=True, type=int, help="Context length to plan the KV cache for.")
@click.option("--mode", default=None, help="Power mode (default: the profile's default mode).")
@click.option("--min-tokens-per-s", "min_tps", type=float, default=None, help="Generation speed floor.")
@click.option("--max-memory", "max_memory", type=float, default=None,
              help="Memory budget in GiB (default: the profile's usable memory).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def recommend(model: Path, profile_name: str, ctx: int, mode: str | None, min_tps: float | None,
              max_memory: float | None, as_json: bool) -> None:
    """Rank every format/quant/runtime the profile supports by predicted memory, speed and quality.

    MODEL is a Hugging Face model directory; config.json alone is enough (plan before
    downloading). If it holds an edgekit.json manifest, measured quality replaces the estimates,
    and the estimates of the types it lacks are scaled to the measured ones; its GGUF files are
    costed from their real tensor types, and a file of no stock type (a fitted mix) is a
    candidate too. I-quants that llama.cpp makes only with an importance matrix are marked.
    """
    from edgekit.profiles.planner import plan
    from edgekit.profiles.store import get_profile

    p = plan(model, get_profile(profile_name), ctx=ctx, mode=mode, min_tps=min_tps, max_memory_gb=max_memory)
    if as_json:
        emit_json(p.to_dict())
        return
    gib = 1024**3
    size = f"{p.params / 1e9:.2f} B" if p.params >= 1e9 else f"{p.params / 1e6:.1f} M"
    click.echo(f"{p.model} ({size} params) on {p.profile} ({p.mode}), ctx {p.ctx}, "
               f"budget {p.budget_bytes / gib:.2f} GiB"
               + (f", floor {p.min_tps:g} tokens/s" if p.min_tps else ""))
    rows = []
    for i, c in enumerate(p.candidates, 1):
        status = "<- pick" if c.pick else "fits" if c.fits and c.meets_speed else "too slow" if c.fits else "too big"
        q = c.quality
        made = "needs --imatrix" if c.needs_imatrix else "file's types" if c.types_from == "file" else ""
        rows.append([i, c.label, f"{c.runtime.value}/{c.backend.value}", c.cost.total_bytes, c.cost.gen_tps,
                     c.cost.prompt_tps, q.mean_kl, q.top1, q.ppl_delta_pct, q.basis, made, "*" if c.pareto else "",
                     status])
    # the quality columns print as in convert/inspect (edgekit.ui), estimated or measured
    columns = [Column("#"), Column("candidate"), Column("runtime"), SIZE.named("memory"),
               Column("gen tok/s", fixed(1)), Column("prompt tok/s", fixed(0)), KL, TOP1, PPL_DELTA,
               Column("quality"), Column("made"), Column("pareto"), Column("status")]
    click.echo(format_table(columns, rows))
    click.echo("(* = Pareto-optimal among the candidates that fit: quality, speed, memory)")
    click.echo("")
    click.echo(("pick: " if p.pick else "no pick: ") + p.reason)
    for note in p.notes:
        click.echo(f"note: {note}")
