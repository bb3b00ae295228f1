"""``edgekit eval ARTIFACT --text FILE [--reference REF]``: perplexity and KL divergence."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from edgekit.ui import PPL, Column, StepPrinter, count, emit_json, fixed, format_table, pct, sig3, signed_pct


@click.command("eval")
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--text", type=click.Path(path_type=Path), default=None,
              help="UTF-8 text to score (default: the demo corpus' held-out split).")
@click.option("--reference", type=click.Path(path_type=Path), default=None,
              help="Source model directory (transformers) or another artifact (e.g. the f16 GGUF) for KL statistics.")
@click.option("--ctx", "n_ctx", default=512, show_default=True, help="Chunk length in tokens (second half scored).")
@click.option("--chunks", "max_chunks", type=int, default=None, help="Score at most this many chunks.")
@click.option("--threads", "n_threads", type=int, default=None, help="CPU threads (default: all cores).")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None, help="Write the result as JSON here.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def eval_cmd(artifact: Path, text: Path | None, reference: Path | None, n_ctx: int, max_chunks: int | None,
             n_threads: int | None, output: Path | None, as_json: bool) -> None:
    """Perplexity of ARTIFACT on --text; with --reference, KL divergence like llama-perplexity's."""

    from edgekit.bench.evaluate import evaluate
    from edgekit.fsutil import write_json_atomic

    if text is None:
        from edgekit.demo import heldout_path

        text = heldout_path()
    r = evaluate(artifact, text, reference=reference, n_ctx=n_ctx, max_chunks=max_chunks, n_threads=n_threads,
                 progress=StepPrinter(quiet=as_json))
    if output is not None:
        write_json_atomic(output, r.to_dict())
    if as_json:
        emit_json(r.to_dict())
        return
    click.echo(f"{artifact}" + (f" vs {reference}" if reference else "") + f" on {text}")
    click.echo(format_table(["statistic", Column("value", align="right")], _rows(r)))


def _rows(r: Any) -> list[list[str]]:
    """One statistic per row, each printed as that quantity prints in every table (edgekit.ui)."""
    ppl = PPL.fmt
    assert ppl is not None
    rows = [["PPL", ppl(r.ppl)], ["ln PPL stderr", sig3(r.nll_stderr)], ["tokens scored", count(r.tokens_scored)],
            ["chunks x ctx", f"{r.chunks} x {r.n_ctx}"]]
    if r.kl is not None and r.ppl_ref is not None:
        k = r.kl
        rows += [["PPL (reference)", ppl(r.ppl_ref)], ["PPL ratio", fixed(4)(r.ppl_ratio)],
                 ["ppl Δ", signed_pct(100 * (r.ppl_ratio - 1))], ["mean ln(PPL ratio)", sig3(r.mean_ln_ppl_ratio)],
                 ["mean KLD", f"{sig3(k.mean)} ± {sig3(k.stderr)}"], ["max KLD", sig3(k.max)]]
        rows += [[f"{name[1:].replace('_', '.')}% KLD", sig3(v)] for name, v in k.percentiles.items()]
        rows += [["min KLD", sig3(k.min)], ["same top-1", pct(k.same_top1_pct)],
                 ["mean Δp", signed_pct(k.mean_delta_p_pct)], ["RMS Δp", pct(k.rms_delta_p_pct)]]
    return rows
