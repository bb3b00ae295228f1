"""``edgekit bench ARTIFACT...`` and ``edgekit bench report FILES... -o DIR``.

Dispatch: ``bench`` is a group whose default subcommand is ``run``. A click group cannot
take the artifacts as its own arguments *and* have subcommands (the first artifact would
be read as a command name), so :class:`DefaultGroup` inserts ``run`` whenever the first
argument is not a subcommand: ``edgekit bench a.gguf`` is ``edgekit bench run a.gguf``.
An artifact literally named ``report`` is reached as ``./report`` or via ``bench run``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from edgekit.ui import SIZE, Column, emit_json, format_table, sig3


class DefaultGroup(click.Group):
    default_command = "run"

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)


@click.group("bench", cls=DefaultGroup, no_args_is_help=True)
def bench() -> None:
    """Benchmark artifacts (pp/tg tokens/s, TTFT, memory, power) with the conditions recorded.

    \b
      edgekit bench out/ model.gguf -o results.json     (same as `edgekit bench run ...`)
      edgekit bench report results.json other.json -o report/
    """


def thread_counts(value: str | None) -> tuple[int, ...]:
    """``-t 1,2,4`` -> (1, 2, 4); empty: () (the device's usable cores). Shared with `fleet bench`."""
    if not value:
        return ()
    try:
        out = tuple(int(x) for x in value.split(",") if x.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r}: give thread counts like 4 or 1,2,4") from None
    if not out or any(t < 1 for t in out):
        raise click.BadParameter(f"{value!r}: thread counts must be >= 1")
    return out


class _Printer:
    """Progress on stderr: a line per artifact, the running mean ± std redrawn in place on a TTY."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.tty = sys.stderr.isatty()

    def __call__(self, event: Any) -> None:
        if self.quiet:
            return
        if event.step == "repetition":
            line = f"  rep {event.done}/{event.total}  {event.message.split(': ', 1)[-1]}"
            if self.tty:
                click.echo(f"\r{line:<78}", err=True, nl=event.done >= event.total)
            else:
                click.echo(line, err=True)
        elif event.step == "bench" and event.message != "done":
            click.echo(f"[{event.done + 1}/{event.total}] {event.message}", err=True)
        elif not event.total:
            click.echo(f"- {event.step}{': ' + event.message if event.message else ''}", err=True)


def results_table(results: Any) -> str:
    s = results.settings
    rows = []
    for r in results.results:
        pp, tg, ttft = (r.metrics.get(k, {}) for k in (s.pp_name, s.tg_name, "ttft_ms"))

        def pm(m: dict[str, Any]) -> str | None:
            return f"{m['mean']:.1f} ± {m['std']:.1f}" if m.get("n") else None

        power = r.power or {}
        rows.append([r.artifact, r.quant, r.backend or r.kind, r.threads, r.size_bytes, pm(pp), pm(tg), pm(ttft),
                     r.memory.get("peak_rss_bytes") or None, r.memory.get("gpu_memory_bytes") or None,
                     power.get("gen_j_per_token"), len(r.repetitions), r.status])
    speed = Column("", align="right")
    columns = [Column("artifact"), Column("quant"), Column("runtime"), Column("threads"), SIZE,
               speed.named(f"{s.pp_name} t/s"), speed.named(f"{s.tg_name} t/s"), speed.named("TTFT ms"),
               SIZE.named("peak RSS"), SIZE.named("GPU mem"), Column("J/token", sig3), Column("reps"),
               Column("status")]
    return format_table(columns, rows)


def conditions_line(results: Any) -> str:
    h = results.host
    libs = h.get("libraries", {})
    versions = ", ".join(f"{k} {libs[k]}" for k in ("llama_cpp_python", "onnxruntime_genai") if k in libs)
    return (f"{h.get('label')} | power mode {h.get('power', {}).get('mode')} | {versions} | edgekit "
            f"{results.edgekit_version} | {results.created}")


@bench.command("run")
@click.argument("artifacts", nargs=-1, type=click.Path(path_type=Path))
@click.option("--prompt-tokens", "-p", default=512, show_default=True, help="Prompt length of the ppN test.")
@click.option("--gen-tokens", "-n", default=128, show_default=True, help="Tokens decoded in the tgN test.")
@click.option("--repetitions", "-r", default=5, show_default=True, help="Measured repetitions (after warm-up).")
@click.option("--warmup", default=1, show_default=True, help="Unmeasured warm-up repetitions.")
@click.option("--threads", "-t", default=None, help="Thread counts, e.g. 4 or 1,2,4 (default: all cores).")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda (GGUF: all layers offloaded), tensorrt.")
@click.option("--ctx", "n_ctx", default=0, help="Context length (default: prompt + gen + 1, like llama-bench).")
@click.option("--text", type=click.Path(path_type=Path), default=None,
              help="Text the prompt is cut from (default: the demo corpus' held-out split).")
@click.option("--profile", default=None, help="Record this hardware profile (edgekit profile list) as the host.")
@click.option("--label", default=None, help="Device label used in reports (default: detected device name).")
@click.option("--tegrastats", default=None, help="tegrastats executable for power (default: found on PATH).")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=Path("bench-results.json"),
              show_default=True, help="Results file (JSON), saved after every repetition.")
@click.option("--csv", "csv_path", type=click.Path(path_type=Path), default=None, help="Also write CSV here.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON on stdout.")
def run_cmd(artifacts: tuple[Path, ...], prompt_tokens: int, gen_tokens: int, repetitions: int, warmup: int,
            threads: str | None, device: str, n_ctx: int, text: Path | None, profile: str | None, label: str | None,
            tegrastats: str | None, output: Path, csv_path: Path | None, as_json: bool) -> None:
    """Benchmark ARTIFACTS (.gguf files, ONNX directories, edgekit output directories)."""
    from edgekit.bench import BenchSettings, run_bench
    from edgekit.bench.results import csv_text
    from edgekit.fsutil import write_text_atomic

    settings = BenchSettings(prompt_tokens=prompt_tokens, gen_tokens=gen_tokens, repetitions=repetitions,
                             warmup=warmup, threads=thread_counts(threads), device=device, n_ctx=n_ctx)
    try:
        results = run_bench(list(artifacts), settings, output=output, text=text, profile=profile, label=label,
                            tegrastats=tegrastats, progress=_Printer(quiet=as_json))
    except KeyboardInterrupt:
        if output.is_file():
            click.echo(f"\ninterrupted: the repetitions measured so far are in {output}", err=True)
        raise
    if csv_path is not None:
        write_text_atomic(csv_path, csv_text([results]))
    if as_json:
        emit_json(results.to_dict())
        return
    click.echo(conditions_line(results))
    click.echo(results_table(results))
    for s in results.skipped:
        click.echo(f"skipped {s['artifact']}: {s['reason']}", err=True)
    failed = [r for r in results.results if r.error]
    for r in failed:
        click.echo(f"failed {r.artifact}: {r.error}", err=True)
    click.echo(f"results: {output}" + (f", {csv_path}" if csv_path else ""), err=True)
    if failed:
        sys.exit(1)


@bench.command("report")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), default=Path("bench-report"), show_default=True,
              help="Directory for the PNG plots and summary.md.")
@click.option("--csv", "csv_path", type=click.Path(path_type=Path), default=None,
              help="Also write every result of FILES as one CSV.")
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
def report_cmd(files: tuple[Path, ...], output: Path, csv_path: Path | None, as_json: bool) -> None:
    """Plots (tokens/s per artifact and device, memory vs quality) and a markdown summary of result FILES."""
    from edgekit.bench.report import write_report
    from edgekit.bench.results import csv_text, load_results
    from edgekit.fsutil import write_text_atomic

    runs = [load_results(f) for f in files]
    written = write_report(runs, output)
    if csv_path is not None:
        write_text_atomic(csv_path, csv_text(runs))
        written.append(csv_path)
    if as_json:
        emit_json({"written": [str(p) for p in written]})
        return
    for p in written:
        click.echo(str(p))
