"""``edgekit eval ARTIFACT --text FILE [--reference REF]``: perplexity and KL divergence."""

from __future__ import annotations

from pathlib import Path

import click

from edgekit.ui import StepPrinter, emit_json, format_table


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
    rows: list[list[object]] = [["PPL", r.ppl], ["ln PPL stderr", r.nll_stderr],
                                ["tokens scored", r.tokens_scored], ["chunks x ctx", f"{r.chunks} x {r.n_ctx}"]]
    if r.kl is not None and r.ppl_ref is not None:
        k = r.kl
        rows += [["PPL (reference)", r.ppl_ref], ["PPL ratio", f"{r.ppl_ratio:.4f}"], ["mean ln(PPL ratio)", r.mean_ln_ppl_ratio],
                 ["mean KLD", f"{k.mean:.6f} ± {k.stderr:.6f}"], ["max KLD", k.max]]
        rows += [[f"{name[1:].replace('_', '.')}% KLD", v] for name, v in k.percentiles.items()]
        rows += [["min KLD", k.min], ["same top-1 %", k.same_top1_pct], ["mean Δp %", k.mean_delta_p_pct],
                 ["RMS Δp %", k.rms_delta_p_pct]]
    click.echo(f"{artifact}" + (f" vs {reference}" if reference else "") + f" on {text}")
    click.echo(format_table(["statistic", "value"], rows))
