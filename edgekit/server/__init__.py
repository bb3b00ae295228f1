"""A local OpenAI-compatible HTTP server over any artifact :func:`edgekit.load` opens.

    from edgekit.server import ServerConfig, serve
    serve("out/model-q4_k_m.gguf", ServerConfig(port=8000, max_concurrent=2), n_ctx=2048)

Routes: ``GET /health``, ``GET /v1/models``, ``POST /v1/chat/completions``,
``POST /v1/completions`` (streaming or not). The app itself (:func:`create_app`) is plain
ASGI (Starlette), served here by uvicorn.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .config import ServerConfig

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from edgekit.runtimes.base import Session


def create_app(sessions: list[Session], config: ServerConfig | None = None) -> Starlette:
    """An ASGI app serving ``sessions`` (one per slot, one artifact); it owns and closes them."""
    from .app import create_app as _create_app

    return _create_app(sessions, config)


def serve(artifact: Any, config: ServerConfig | None = None, **options: Any) -> None:
    """Serve ``artifact`` until SIGINT/SIGTERM; see :func:`edgekit.server.runner.serve`."""
    from .runner import serve as _serve

    _serve(artifact, config, **options)


__all__ = ["ServerConfig", "create_app", "serve"]
