"""Run the server: load one session per slot, bind the socket, serve with uvicorn until a signal."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvicorn

from edgekit.errors import InputError
from edgekit.progress import ProgressFn, report
from edgekit.runtimes.base import Session

from .app import CUT_ANSWER_S, create_app
from .config import ServerConfig

log = logging.getLogger("edgekit.server")

# uvicorn refuses connections beyond this many (503) so a flood cannot pile up sockets; it
# counts open connections, so it is well above slots + queue (idle keep-alive clients count).
CONNECTION_HEADROOM = 64
KEEP_ALIVE_S = 5


def load_sessions(artifact: str | Path, config: ServerConfig, *, quant: str | None = None,
                  progress: ProgressFn | None = None, **load_options: Any) -> list[Session]:
    """One session per slot. Without an explicit ``n_threads``, the cores are split between the slots."""
    import edgekit

    if not load_options.get("n_threads"):
        load_options["n_threads"] = max(1, (os.cpu_count() or 1) // config.max_concurrent)
    sessions: list[Session] = []
    try:
        for i in range(config.max_concurrent):
            report(progress, "load", f"session {i + 1}/{config.max_concurrent} ({load_options['n_threads']} threads)")
            sessions.append(edgekit.load(artifact, quant=quant, **load_options))
    except BaseException:
        for s in sessions:
            s.close()
        raise
    _probe_chat_template(sessions[0])
    return sessions


def _probe_chat_template(session: Session) -> None:
    # A hostile or broken template is found now and said once, not only per request.
    from edgekit.runtimes.chat_template import ChatTemplateError

    try:
        session.render_chat([{"role": "user", "content": "hi"}])
    except ChatTemplateError as e:
        log.warning("the model's chat template cannot be used (%s): /v1/chat/completions will answer with an "
                    "error; /v1/completions works", e.one_line())


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so a busy port is a clear error (and port 0 a free one)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                              flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as e:
        raise InputError(f"cannot listen on {host}:{port}: {e.strerror or e}",
                         hint="pick another --port / port= (0 picks a free one) or stop the program using it") from e
    sock.set_inheritable(True)
    return sock


def url_for(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{'[' + host + ']' if ':' in host else host}:{port}"


def serve(artifact: str | Path, config: ServerConfig | None = None, *, quant: str | None = None,
          on_ready: Callable[[str, list[Session]], None] | None = None, progress: ProgressFn | None = None,
          **load_options: Any) -> None:
    """Load ``artifact`` (one session per slot) and serve it until SIGINT/SIGTERM.

    ``on_ready(base_url, sessions)`` is called once the server accepts connections. On a signal,
    in-flight requests get ``config.shutdown_timeout_s`` to finish, then are cut with an error
    event; then the sessions are closed and this returns.
    """
    config = config or ServerConfig()
    if not config.loopback and not config.api_key:
        log.warning("listening on %s without an API key: anyone who can reach this address can use the model; "
                    "pass --api-key", config.host)
    sessions = load_sessions(artifact, config, quant=quant, progress=progress, **load_options)
    try:
        sock = bind(config.host, config.port)
    except BaseException:
        for s in sessions:
            s.close()
        raise
    app = create_app(sessions, config)
    uv_config = uvicorn.Config(
        app, log_config=None, access_log=False, lifespan="on", server_header=False,
        timeout_graceful_shutdown=math.ceil(config.shutdown_timeout_s), timeout_keep_alive=KEEP_ALIVE_S,
        limit_concurrency=config.max_concurrent + config.max_queue + CONNECTION_HEADROOM)
    server = _Server(uv_config, lambda: on_ready(url_for(sock), sessions) if on_ready else None)
    try:
        server.run(sockets=[sock])
    finally:
        app.state.edgekit.pool.cancel_all()  # a forced exit skips the app's own shutdown
        sock.close()


class _Server(uvicorn.Server):
    """uvicorn's server plus a ready callback; a signal ends ``run`` normally (exit code 0)
    instead of being re-raised after the graceful shutdown."""

    def __init__(self, config: uvicorn.Config, ready: Callable[[], None]) -> None:
        super().__init__(config)
        self._ready = ready

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self._ready()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await super().shutdown(sockets)
        # uvicorn cancels the requests its graceful timeout left running and returns at once; then
        # asyncio.run's teardown cancels them a second time, in the middle of their cut answer,
        # and the client gets a bare 500. Let each finish its (bounded) answer first.
        pending = [t for t in self.server_state.tasks if not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=CUT_ANSWER_S + 1.0)

    def handle_exit(self, sig: int, frame: Any) -> None:
        super().handle_exit(sig, frame)
        captured = getattr(self, "_captured_signals", None)  # uvicorn >= 0.29 re-raises these after run()
        if isinstance(captured, list):
            captured.clear()
