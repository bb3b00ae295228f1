"""``edgekit run`` and ``edgekit chat``."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from edgekit.ui import emit_json


def device_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Where and how an artifact runs; shared by run, chat and serve."""
    for opt in reversed([
        click.option("--device", default="cpu", show_default=True,
                     help="cpu|cuda|tensorrt (ONNX); cpu|cuda|metal (GGUF: offloads all layers). "
                          "Never falls back to CPU silently."),
        click.option("--n-gpu-layers", type=int, default=0, show_default=True,
                     help="GGUF: layers to offload (llama.cpp CUDA/Metal builds; -1 = all)."),
        click.option("--graph-opt", "graph_optimization", default=None,
                     help="ONNX: graph optimization level none|basic|extended|all (default all)."),
    ]):
        f = opt(f)
    return f


def load_options(n_ctx: int, n_threads: int | None, device: str, n_gpu_layers: int,
                 graph_optimization: str | None) -> dict[str, Any]:
    # Both runtimes take every option and refuse only a set value that is not theirs.
    return {"n_ctx": n_ctx, "n_threads": n_threads, "device": device, "n_gpu_layers": n_gpu_layers,
            "graph_optimization": graph_optimization}


def _runtime_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = device_options(f)
    for opt in reversed([
        click.option("--quant", default=None, help="Which artifact of an output directory (e.g. q4_k_m)."),
        click.option("--ctx", "n_ctx", type=int, default=4096, show_default=True, help="Context length."),
        click.option("--threads", "n_threads", type=int, default=None, help="CPU threads (default: all cores)."),
        click.option("--max-tokens", type=int, default=256, show_default=True),
        click.option("--temperature", type=float, default=0.0, show_default=True, help="0 = greedy."),
        click.option("--top-p", type=float, default=1.0, show_default=True),
        click.option("--seed", type=int, default=None),
        click.option("--stop", multiple=True, help="Stop string (repeatable)."),
        click.option("--json", "as_json", is_flag=True, help="Print the result (text + stats) as JSON."),
    ]):
        f = opt(f)
    return f


def _open(artifact: Path, quant: str | None, n_ctx: int, n_threads: int | None, device: str, n_gpu_layers: int,
          graph_optimization: str | None) -> Any:
    import edgekit

    return edgekit.load(artifact, quant=quant, **load_options(n_ctx, n_threads, device, n_gpu_layers,
                                                              graph_optimization))


def _stats_line(stats: Any) -> str:
    return (f"[{stats.prompt_tokens} prompt tokens, {stats.completion_tokens} generated; "
            f"TTFT {stats.time_to_first_token_s * 1000:.1f} ms, prompt {stats.prompt_tokens_per_s:.1f} tok/s, "
            f"generation {stats.generation_tokens_per_s:.1f} tok/s]")


@click.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--prompt", "-p", required=True, help="Prompt text ('-' reads stdin).")
@_runtime_options
def run(artifact: Path, prompt: str, quant: str | None, n_ctx: int, n_threads: int | None, device: str,
        n_gpu_layers: int, graph_optimization: str | None, max_tokens: int, temperature: float, top_p: float, seed: int | None, stop: tuple[str, ...],
        as_json: bool) -> None:
    """Generate a completion of --prompt with ARTIFACT, streaming tokens to stdout."""
    if prompt == "-":
        prompt = sys.stdin.read()
    sampling = {"max_tokens": max_tokens, "temperature": temperature, "top_p": top_p, "seed": seed, "stop": stop}
    with _open(artifact, quant, n_ctx, n_threads, device, n_gpu_layers, graph_optimization) as session:
        if as_json:
            r = session.generate(prompt, **sampling)
            emit_json({"artifact": str(session.path), "backend": session.backend, "text": r.text,
                       "finish_reason": r.finish_reason, "stats": r.stats.to_dict()})
            return
        for piece in session.stream(prompt, **sampling):
            click.echo(piece, nl=False)
        click.echo("")
        click.echo(_stats_line(session.last_stats), err=True)


@click.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--system", default=None, help="System prompt.")
@_runtime_options
def chat(artifact: Path, system: str | None, quant: str | None, n_ctx: int, n_threads: int | None, device: str,
         n_gpu_layers: int, graph_optimization: str | None, max_tokens: int, temperature: float, top_p: float, seed: int | None,
         stop: tuple[str, ...], as_json: bool) -> None:
    """Chat with ARTIFACT using its chat template. One message per line; /exit or EOF ends.

    With --json, each reply is printed as one JSON line (for scripts driving stdin).
    """
    sampling = {"max_tokens": max_tokens, "temperature": temperature, "top_p": top_p, "seed": seed, "stop": stop}
    messages: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    interactive = sys.stdin.isatty() and not as_json
    with _open(artifact, quant, n_ctx, n_threads, device, n_gpu_layers, graph_optimization) as session:
        if interactive:
            click.echo(f"chatting with {session.path.name} ({session.backend}); /exit to quit", err=True)
        while True:
            if interactive:
                click.echo("> ", nl=False, err=True)
            line = sys.stdin.readline()
            if not line or line.strip() in ("/exit", "/quit"):
                break
            if not line.strip():
                continue
            messages.append({"role": "user", "content": line.rstrip("\n")})
            if as_json:
                r = session.chat(messages, **sampling)
                reply = r.text
                emit_json({"reply": reply, "finish_reason": r.finish_reason, "stats": r.stats.to_dict()}, compact=True)
            else:
                parts = []
                for piece in session.chat_stream(messages, **sampling):
                    parts.append(piece)
                    click.echo(piece, nl=False)
                click.echo("")
                reply = "".join(parts)
                if interactive:
                    click.echo(_stats_line(session.last_stats), err=True)
            messages.append({"role": "assistant", "content": reply})
