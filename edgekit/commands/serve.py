"""``edgekit serve``: a local OpenAI-compatible server over one artifact."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from edgekit.commands.run import device_options, load_options
from edgekit.ui import StepPrinter, emit_json


@click.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Loopback only unless you change it (then use --api-key).")
@click.option("--port", type=int, default=8000, show_default=True, help="Port (0 picks a free one).")
@click.option("--api-key", envvar="EDGEKIT_API_KEY", default=None,
              help="Require 'Authorization: Bearer KEY' on /v1/* (also read from $EDGEKIT_API_KEY).")
@click.option("--max-concurrent", type=int, default=1, show_default=True,
              help="Requests generating at once (one loaded session each; cores are split between them).")
@click.option("--max-queue", type=int, default=8, show_default=True,
              help="Requests that may wait for a slot; more get 429.")
@click.option("--queue-timeout", type=float, default=30.0, show_default=True,
              help="Seconds a request may wait for a slot; then 503.")
@click.option("--max-tokens", "max_tokens_limit", type=int, default=2048, show_default=True,
              help="Largest max_tokens a request may ask for (and the chat default).")
@click.option("--max-request-bytes", type=int, default=1 << 20, show_default=True, help="Larger bodies get 413.")
@click.option("--shutdown-timeout", type=float, default=10.0, show_default=True,
              help="On SIGINT/SIGTERM, seconds in-flight requests get to finish before they are cut.")
@click.option("--model-id", default=None, help="Model id in /v1/models (default: the artifact's name).")
@click.option("--quant", default=None, help="Which artifact of an output directory (e.g. q4_k_m).")
@click.option("--ctx", "n_ctx", type=int, default=4096, show_default=True, help="Context length per slot.")
@click.option("--threads", "n_threads", type=int, default=None,
              help="CPU threads per slot (default: cores / --max-concurrent).")
@device_options
@click.option("--json", "as_json", is_flag=True, help="Print the ready line as JSON (for apps that start the server).")
def serve(artifact: Path, host: str, port: int, api_key: str | None, max_concurrent: int, max_queue: int,
          queue_timeout: float, max_tokens_limit: int, max_request_bytes: int, shutdown_timeout: float,
          model_id: str | None, quant: str | None, n_ctx: int, n_threads: int | None, device: str,
          n_gpu_layers: int, graph_optimization: str | None, as_json: bool) -> None:
    """Serve ARTIFACT (GGUF file, ONNX directory or edgekit output directory) over the OpenAI API.

    Prints one line once the server accepts connections (with --json: a JSON object), then runs
    until Ctrl+C / SIGTERM. Routes: /health, /v1/models, /v1/chat/completions, /v1/completions.
    """
    from edgekit.server import ServerConfig
    from edgekit.server import serve as run_server

    config = ServerConfig(host=host, port=port, api_key=api_key, model_id=model_id, max_concurrent=max_concurrent,
                          max_queue=max_queue, queue_timeout_s=queue_timeout, max_request_bytes=max_request_bytes,
                          max_tokens_limit=max_tokens_limit, shutdown_timeout_s=shutdown_timeout)
    options = load_options(n_ctx, n_threads, device, n_gpu_layers, graph_optimization)

    def ready(url: str, sessions: list[Any]) -> None:
        from edgekit.server.app import model_id_for

        s = sessions[0]
        info = {"event": "ready", "url": url, "base_url": f"{url}/v1", "model": model_id or model_id_for(s.path),
                "backend": s.backend, "artifact": str(s.path), "context_length": s.context_length,
                "max_concurrent": max_concurrent, "api_key_required": api_key is not None}
        if as_json:
            emit_json(info, compact=True)
        else:
            click.echo(f"serving {info['model']} ({s.backend}, {max_concurrent} slot(s), context "
                       f"{s.context_length}) at {info['base_url']}; Ctrl+C stops")
        sys.stdout.flush()

    run_server(artifact, config, quant=quant, on_ready=ready, progress=StepPrinter(quiet=as_json), **options)
