"""``edgekit fleet join|status|bench|convert``: a fleet of boards on Ray.

\b
  edgekit fleet join --head                           (on the machine that coordinates)
  edgekit fleet join HEAD:6379 [--profile NAME]       (on each board)
  edgekit fleet status
  edgekit fleet bench out/ --on jetson-orin-nano-8gb,raspberry-pi-5-8gb -t 4 -o results.json
  edgekit bench report results.json -o report/
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from edgekit.ui import SIZE, Column, emit_json, format_table


@click.group("fleet")
def fleet() -> None:
    """Benchmark and convert across boards joined into a Ray cluster (edgekit[fleet])."""


_ADDRESS = click.option("--address", default=None,
                        help="Ray head address HOST:PORT (default: $RAY_ADDRESS, else the local cluster).")


@fleet.command("join")
@click.argument("head", required=False)
@click.option("--head", "is_head", is_flag=True, help="Start the head node here instead of joining one.")
@click.option("--profile", default=None, help="Profile this board advertises (default: detected, as `profile detect`).")
@click.option("--name", default=None, help="Board name in results (default: the hostname).")
@click.option("--port", default=6379, show_default=True, help="Head only: the port boards join on.")
@click.option("--node-ip-address", "node_ip", default=None,
              help="Address this node listens on (default: loopback for a local head; pass the LAN address "
                   "for boards on the network).")
@click.option("--num-cpus", type=int, default=None, help="CPUs Ray may schedule here (default: all).")
@click.option("--object-store-memory", type=int, default=None, help="Bytes of Ray's object store on this board.")
@click.option("--block", is_flag=True, help="Stay in the foreground (Ctrl-C leaves the cluster).")
@click.option("--dry-run", is_flag=True, help="Print the ray start command and the facts; start nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the command and the board's facts as JSON.")
def join_cmd(head: str | None, is_head: bool, profile: str | None, name: str | None, port: int, node_ip: str | None,
             num_cpus: int | None, object_store_memory: int | None, block: bool, dry_run: bool, as_json: bool) -> None:
    """Join this board to the cluster at HEAD (or start the head with --head): a thin `ray start`."""
    import os
    import subprocess
    from dataclasses import asdict

    from edgekit.errors import InputError
    from edgekit.fleet.cluster import join_plan, run_join

    if bool(head) == is_head:
        raise InputError("give the head's address HEAD or --head, not both or neither",
                         hint="edgekit fleet join --head on the coordinator, edgekit fleet join HOST:PORT on boards")
    plan = join_plan(None if is_head else head, profile=profile, name=name, port=port, node_ip=node_ip,
                     num_cpus=num_cpus, object_store_memory=object_store_memory, block=block)
    info = {"command": plan.command, "board": asdict(plan.board), "started": not dry_run}
    if dry_run:
        if as_json:
            emit_json(info)
        else:
            click.echo(" ".join(plan.command))
        return
    if not as_json:
        click.echo(f"- board {plan.board.name}: profile {plan.board.profile} ({plan.board.profile_origin}), "
                   f"{plan.board.device}, {plan.board.memory_gib:g} GiB", err=True)
    if block:
        sys.exit(subprocess.call(plan.command, env={**os.environ, **plan.env}))
    run_join(plan)
    if as_json:
        emit_json(info)
        return
    where = f"127.0.0.1:{port}" if is_head and not node_ip else (f"{node_ip}:{port}" if is_head else head)
    click.echo(f"joined as {plan.board.name} (edgekit-profile:{plan.board.profile})"
               + (f"; boards join with: edgekit fleet join {where}" if is_head else ""))


@fleet.command("status")
@_ADDRESS
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status_cmd(address: str | None, as_json: bool) -> None:
    """The boards: profile, device, free memory, whether a benchmark runs there now."""
    from edgekit.fleet.cluster import fleet_status

    rows = fleet_status(address)
    if as_json:
        emit_json(rows)
        return
    table = []
    for r in rows:
        b = r.get("board", {})
        state = "dead" if not r["alive"] else ("no answer" if "error" in r else ("busy" if r.get("busy") else "idle"))
        table.append([b.get("name") or r["address"], ",".join(r["profiles"]) or "-", b.get("device"),
                      r["node_id"][:8], r.get("memory_available_bytes"), r.get("memory_total_bytes"), int(r["cpus"]), state])
    click.echo(format_table([Column("board"), Column("profiles"), Column("device"), Column("node"),
                             SIZE.named("free memory"), SIZE.named("memory"), Column("CPUs"), Column("state")], table))


def _fleet_table(outcome: Any) -> str:
    s = outcome.results.settings
    rows = []
    for r in outcome.results.results:
        pp, tg = r.metrics.get(s.pp_name, {}), r.metrics.get(s.tg_name, {})
        f = r.conditions.get("fleet", {})
        idle = (r.conditions.get("ray_worker") or {}).get("idle") or {}
        rows.append([r.artifact, r.quant, f.get("profile") or r.conditions.get("profile"), f.get("board"), r.threads,
                     f"{pp['mean']:.1f} ± {pp['std']:.1f}" if pp.get("n") else None,
                     f"{tg['mean']:.1f} ± {tg['std']:.1f}" if tg.get("n") else None,
                     idle.get("rss_bytes"), r.status])
    speed = Column("", align="right")
    return format_table([Column("artifact"), Column("quant"), Column("profile"), Column("board"), Column("threads"),
                         speed.named(f"{s.pp_name} t/s"), speed.named(f"{s.tg_name} t/s"),
                         SIZE.named("Ray idle RSS"), Column("status")], rows)


@fleet.command("bench")
@click.argument("artifacts", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--on", "on", required=True, help="Profiles to run on: PROFILE[,PROFILE...] or all.")
@click.option("--threads", "-t", default=None, help="Thread counts, e.g. 4 or 1,2,4 (default: each board's cores).")
@click.option("--prompt-tokens", "-p", default=512, show_default=True, help="Prompt length of the ppN test.")
@click.option("--gen-tokens", "-n", default=128, show_default=True, help="Tokens decoded in the tgN test.")
@click.option("--repetitions", "-r", default=5, show_default=True, help="Measured repetitions (after warm-up).")
@click.option("--warmup", default=1, show_default=True, help="Unmeasured warm-up repetitions.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, tensorrt (as edgekit bench).")
@click.option("--ctx", "n_ctx", default=0, help="Context length (default: prompt + gen + 1).")
@click.option("--text", type=click.Path(path_type=Path), default=None, help="Text the prompt is cut from.")
@click.option("--transfer", type=click.Choice(["auto", "shared", "object-store"]), default="auto", show_default=True,
              help="How artifacts reach the boards: the same path if a board sees it (sha256 checked), Ray's "
                   "object store, or auto (the path where it matches, else a copy).")
@click.option("--retries", default=2, show_default=True, help="Times a job whose board died is retried elsewhere.")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=Path("fleet-results.json"),
              show_default=True, help="Merged results (the `edgekit bench` schema), rewritten as jobs finish.")
@click.option("--results-dir", type=click.Path(path_type=Path), default=None,
              help="One file per finished job (default: OUTPUT's name + '-jobs'); a rerun skips what is there.")
@_ADDRESS
@click.option("--json", "as_json", is_flag=True, help="Print the merged results as JSON on stdout.")
def bench_cmd(artifacts: tuple[Path, ...], on: str, threads: str | None, prompt_tokens: int, gen_tokens: int,
              repetitions: int, warmup: int, device: str, n_ctx: int, text: Path | None, transfer: str, retries: int,
              output: Path, results_dir: Path | None, address: str | None, as_json: bool) -> None:
    """Benchmark ARTIFACTS on every PROFILE: one job per (artifact, profile, thread count)."""
    from edgekit.bench import BenchSettings
    from edgekit.commands.bench import thread_counts
    from edgekit.fleet.bench import default_results_dir, fleet_bench

    settings = BenchSettings(prompt_tokens=prompt_tokens, gen_tokens=gen_tokens, repetitions=repetitions,
                             warmup=warmup, threads=thread_counts(threads), device=device, n_ctx=n_ctx)
    printer = _FleetPrinter(quiet=as_json)
    try:
        outcome = fleet_bench(list(artifacts), settings, on=on, output=output, results_dir=results_dir,
                              address=address, transfer=transfer, retries=retries, text=text, progress=printer)
    except KeyboardInterrupt:
        jobs = results_dir or default_results_dir(output)
        click.echo(f"\ninterrupted: finished jobs are in {jobs} and {output}", err=True)
        raise
    if as_json:
        emit_json({**outcome.results.to_dict(), "fleet": {"ran": outcome.ran, "skipped": outcome.skipped,
                                                          "retried": outcome.retried, "failed": outcome.failed,
                                                          "events": outcome.events}})
    else:
        click.echo(_fleet_table(outcome))
        click.echo(f"{outcome.ran} ran, {outcome.skipped} done before (skipped), {outcome.retried} retried, "
                   f"{outcome.failed} failed; results: {output}, jobs: {outcome.results_dir}", err=True)
    if outcome.failed or any(r.status != "complete" for r in outcome.results.results):
        sys.exit(1)


class _FleetPrinter:
    """A line per finished job on stderr (`[3/8] name on profile ...`), retries as they happen."""

    def __init__(self, quiet: bool, step: str = "job") -> None:
        self.quiet, self.step = quiet, step

    def __call__(self, event: Any) -> None:
        if self.quiet:
            return
        if event.step == self.step:
            click.echo(f"[{event.done}/{event.total}] {event.message}", err=True)
        elif not event.total:
            click.echo(f"- {event.step}: {event.message}", err=True)


@fleet.command("convert")
@click.argument("model_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--to", "to", default="gguf", show_default=True, help="Formats, as edgekit convert: gguf, onnx, gptq.")
@click.option("--quant", "-q", "quants", default=None, help="Quant types, comma-separated (as edgekit convert).")
@click.option("-o", "--out", "out_dir", type=click.Path(path_type=Path), default=Path("edgekit-fleet-out"),
              show_default=True, help="One output tree: OUT/<model directory name>/ per model.")
@click.option("--eval-tokens", type=int, default=None, help="Evaluation tokens of the verification (as edgekit convert).")
@click.option("--no-verify", is_flag=True, help="Skip verification against the source model (not recommended).")
@click.option("--cpus", default=1, show_default=True, help="CPUs one conversion takes on its node.")
@click.option("--threads", type=int, default=None, help="Threads for quantization and verification.")
@click.option("--transfer", type=click.Choice(["auto", "shared", "object-store"]), default="auto", show_default=True,
              help="How model directories reach the nodes (as fleet bench).")
@click.option("--retries", default=2, show_default=True, help="Times a job whose node died is run again.")
@_ADDRESS
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def convert_cmd(model_dirs: tuple[Path, ...], to: str, quants: str | None, out_dir: Path, eval_tokens: int | None,
                no_verify: bool, cpus: int, threads: int | None, transfer: str, retries: int, address: str | None,
                as_json: bool) -> None:
    """Convert MODEL_DIRS on the cluster's CPU workers, one job per model, outputs into one tree."""
    from dataclasses import asdict

    from edgekit.fleet.convert import fleet_convert

    options: dict[str, Any] = {"verify": not no_verify}
    for key, value in (("quants", quants), ("eval_tokens", eval_tokens), ("threads", threads)):
        if value is not None:
            options[key] = value
    outcomes = fleet_convert(list(model_dirs), out_dir, to=to, cpus=cpus, retries=retries, address=address,
                             transfer=transfer, progress=_FleetPrinter(quiet=as_json, step="convert"), **options)
    if as_json:
        emit_json([{**asdict(o), "out_dir": str(o.out_dir)} for o in outcomes])
    else:
        rows = [[o.model, o.board, len(o.artifacts), ",".join(a["quant"] for a in o.artifacts), str(o.out_dir),
                 o.status + (f": {o.error}" if o.error else "")] for o in outcomes]
        click.echo(format_table(["model", "board", "artifacts", "quants", "output", "status"], rows))
    if any(o.status != "complete" for o in outcomes):
        sys.exit(1)
