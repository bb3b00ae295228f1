"""examples/desktop_chat: the PySide6 window for real under QT_QPA_PLATFORM=offscreen, in-process
and over an `edgekit serve` child process: type, Send, stream, Stop mid-stream, close mid-stream."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest
from click.testing import CliRunner
from PySide6.QtCore import QCoreApplication, QElapsedTimer, Qt
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QApplication

import edgekit
from edgekit.cli import main as cli_main

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "desktop_chat"))
from app import ChatWindow
from backends import LocalBackend, Reply, ServeBackend

PROMPT = "What does len return?"
LONG, LONG_CANDIDATES = 48, ("Tell me more.", "def parse(text):", "Explain the class.", "Write a docstring.")
WAIT_MS = 120_000  # a generous ceiling for a hung worker to show as a failure, not a timing assertion


@pytest.fixture(scope="module")
def qapp() -> QApplication:
    app = QApplication.instance() or QApplication([])
    assert isinstance(app, QApplication)
    return app


@pytest.fixture(scope="module")
def demo_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("desktop-demo")
    r = CliRunner().invoke(cli_main, ["convert", "--demo", "-o", str(out), "-q", "q8_0", "--no-verify", "--quiet"])
    assert r.exit_code == 0, r.output
    return out / "edgekit-demo-q8_0.gguf"


def wait_until(cond: Callable[[], bool], ms: int = WAIT_MS) -> None:
    timer = QElapsedTimer()
    timer.start()
    while not cond():
        assert timer.elapsed() < ms, "the window did not get there"
        QCoreApplication.processEvents()
        QTest.qWait(5)


def type_and_send(window: ChatWindow, text: str) -> None:
    QTest.keyClicks(window.prompt, text)
    QTest.mouseClick(window.send_button, Qt.MouseButton.LeftButton)


def collect(window: ChatWindow) -> list[Reply]:
    replies: list[Reply] = []
    window.reply_finished.connect(replies.append)
    return replies


@pytest.fixture()
def local_window(qapp: QApplication, demo_gguf: Path) -> Iterator[ChatWindow]:
    w = ChatWindow(LocalBackend(demo_gguf, n_ctx=1024, n_threads=1),
                   sampling={"max_tokens": 400, "ignore_eos": True})
    w.show()
    QTest.qWaitForWindowExposed(w)
    yield w
    if w.isVisible():
        w.close()


def test_send_streams_the_reply_then_stop_cancels_at_the_next_token(local_window: ChatWindow, demo_gguf: Path,
                                                                      tmp_path: Path) -> None:
    w = local_window
    shown: list[str] = []
    replies = collect(w)
    # 1) a whole reply, streamed: what the window shows is the session's own reply
    w.sampling = {"max_tokens": 24}
    type_and_send(w, PROMPT)
    assert w.generating and not w.send_button.isEnabled() and w.prompt.text() == ""
    wait_until(lambda: bool(replies))
    with edgekit.load(demo_gguf, n_ctx=1024, n_threads=1) as s:
        ref = s.chat([{"role": "user", "content": PROMPT}], max_tokens=24)
    assert replies[0].text == ref.text and replies[0].finish_reason == ref.finish_reason
    assert f"You: {PROMPT}\nAssistant: {ref.text}" in w.conversation.toPlainText()
    assert "tokens/s" in w.status.text() and w.send_button.isEnabled()

    # 2) Stop mid-stream: pressed when the 5th piece is on screen, the worker stops before its next token
    w.sampling = {"max_tokens": 400, "ignore_eos": True}
    assert w.worker is None
    type_and_send(w, "Tell me more.")
    assert w.worker is not None

    def on_shown(text: str) -> None:  # runs in the window's thread while the worker waits for it
        shown.append(text)
        if len(shown) == 5:
            QTest.mouseClick(w.stop_button, Qt.MouseButton.LeftButton)

    w.piece_shown.connect(on_shown)
    wait_until(lambda: len(replies) == 2)
    stopped = replies[1]
    assert stopped.finish_reason == "cancelled" and stopped.tokens == 5 and len(shown) == 5
    assert stopped.text == "".join(shown) and w.conversation.toPlainText().endswith(stopped.text)
    assert "(stopped)" in w.status.text() and w.messages[-1] == {"role": "assistant", "content": stopped.text}
    shot = tmp_path / "desktop_chat.png"
    assert w.grab().save(str(shot)) and shot.stat().st_size > 1000  # a screenshot of the conversation
    print(f"screenshot: {shot}")


def test_close_while_streaming_cancels_and_joins(local_window: ChatWindow) -> None:
    w = local_window
    type_and_send(w, PROMPT)
    worker = w.worker
    assert worker is not None
    wait_until(lambda: worker.reply.tokens >= 3)
    assert worker.isRunning()
    w.close()  # cancels, waits for the worker, closes the session
    assert worker.isFinished() and worker.reply.finish_reason == "cancelled"
    assert worker.reply.tokens < 400
    assert w.backend.session.llm is None  # closed after the worker let go of it


@pytest.fixture(scope="module")
def long_prompt(demo_gguf: Path) -> str:
    """A message the demo model answers with LONG tokens without an end token *on this host*
    (greedy paths depend on the CPU's arithmetic: picked at run time, not written down)."""
    with edgekit.load(demo_gguf, n_ctx=1024, n_threads=1) as s:
        for text in LONG_CANDIDATES:
            if s.chat([{"role": "user", "content": text}], max_tokens=LONG).finish_reason == "length":
                return text
    raise AssertionError(f"the demo model ends its reply within {LONG} tokens after each of {LONG_CANDIDATES}")


def test_serve_child_process_window(qapp: QApplication, demo_gguf: Path, tmp_path: Path, long_prompt: str) -> None:
    backend = ServeBackend(demo_gguf, "--ctx", "1024", "--threads", "1")
    proc: Any = backend.proc
    w = ChatWindow(backend, sampling={"max_tokens": 24, "temperature": 0})
    try:
        w.show()
        replies = collect(w)
        type_and_send(w, PROMPT)
        wait_until(lambda: bool(replies))
        with edgekit.load(demo_gguf, n_ctx=1024, n_threads=1) as s:
            ref = s.chat([{"role": "user", "content": PROMPT}], max_tokens=24)
        assert replies[0].text == ref.text and replies[0].tokens == ref.stats.completion_tokens
        # close with a long reply streaming: the connection is dropped, the child process ends
        w.sampling = {"max_tokens": LONG, "temperature": 0}
        type_and_send(w, long_prompt)
        worker = w.worker
        assert worker is not None
        wait_until(lambda: worker.reply.tokens >= 2)
        assert worker.isRunning()  # one token ahead of the screen at most: LONG - 2 tokens to go
        w.grab().save(str(tmp_path / "desktop_chat_serve.png"))
        w.close()
        assert worker.isFinished() and worker.reply.finish_reason == "cancelled"
        assert proc.wait(timeout=30) is not None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
