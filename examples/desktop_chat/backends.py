"""Where the chat window's tokens come from: an in-process session (``edgekit.load``) or an
``edgekit serve`` child process (for apps that prefer a process boundary: a crash or an
out-of-memory in the runtime does not take the window down).

Both yield the reply piece by piece and check ``cancel`` before every next piece, so Stop
takes effect at the next token. No Qt here: the window (app.py) runs these on a worker thread.
"""

from __future__ import annotations

import json
import select
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Reply:
    """What one generation did: text so far, tokens, why it ended, speed."""

    text: str = ""
    tokens: int = 0
    finish_reason: str = ""  # stop | length | cancelled | error
    started: float = field(default_factory=time.perf_counter)
    first_token_s: float = 0.0
    total_s: float = 0.0

    @property
    def tokens_per_s(self) -> float:
        dt = self.total_s - self.first_token_s
        return (self.tokens - 1) / dt if self.tokens > 1 and dt > 0 else 0.0


class LocalBackend:
    """A session opened in this process with :func:`edgekit.load`."""

    name = "in-process"

    def __init__(self, artifact: str | Path, **load_options: Any) -> None:
        import edgekit

        self.session = edgekit.load(artifact, **load_options)
        self.label = f"{self.session.path.name} ({self.session.backend}, in-process)"
        self._lock = threading.Lock()  # one generation at a time; close waits for it

    def stream(self, messages: Sequence[Mapping[str, str]], reply: Reply, cancel: threading.Event,
               **sampling: Any) -> Iterator[str]:
        with self._lock:
            pieces = self.session.chat_stream(messages, **sampling)
            try:
                for piece in pieces:
                    if reply.tokens == 0:
                        reply.first_token_s = time.perf_counter() - reply.started
                    reply.tokens += 1
                    yield piece
                    if cancel.is_set():
                        reply.finish_reason = "cancelled"
                        break
                else:
                    reply.finish_reason = self.session.last_finish_reason
            finally:
                pieces.close()  # stops the runtime's generator: no token is computed after Stop
            stats = self.session.last_stats
            reply.tokens = stats.completion_tokens if reply.finish_reason != "cancelled" else reply.tokens

    def close(self) -> None:
        with self._lock:
            self.session.close()


class ServeBackend:
    """``python -m edgekit serve ARTIFACT --port 0 --json`` as a child process, over its OpenAI API."""

    name = "edgekit serve"

    def __init__(self, artifact: str | Path, *serve_args: str, start_timeout_s: float = 120) -> None:
        cmd = [sys.executable, "-m", "edgekit", "serve", str(artifact), "--port", "0", "--json", *serve_args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], start_timeout_s)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            self.close()
            raise RuntimeError(f"edgekit serve did not start (exit code {self.proc.poll()})")
        info = json.loads(line)
        self.url, self.model = str(info["url"]), str(info["model"])
        self.label = f"{self.model} ({info['backend']}, edgekit serve at {self.url})"

    def stream(self, messages: Sequence[Mapping[str, str]], reply: Reply, cancel: threading.Event,
               **sampling: Any) -> Iterator[str]:
        import httpx

        body = {"model": self.model, "messages": [dict(m) for m in messages], "stream": True,
                "stream_options": {"include_usage": True}, **sampling}
        with httpx.stream("POST", f"{self.url}/v1/chat/completions", json=body, timeout=120) as r:
            if r.status_code != 200:
                reply.finish_reason = "error"
                raise RuntimeError(f"edgekit serve answered {r.status_code}: {r.read().decode(errors='replace')}")
            for line in r.iter_lines():  # leaving the block closes the connection: the server stops generating
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if chunk.get("usage"):
                    reply.tokens = int(chunk["usage"]["completion_tokens"])
                for choice in chunk.get("choices") or []:
                    piece = (choice.get("delta") or {}).get("content")
                    if piece:
                        if reply.tokens == 0:
                            reply.first_token_s = time.perf_counter() - reply.started
                        reply.tokens += 1
                        yield piece
                        if cancel.is_set():
                            reply.finish_reason = "cancelled"
                            return
                    if choice.get("finish_reason"):
                        reply.finish_reason = str(choice["finish_reason"])

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: the server drains and exits
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
