"""A small desktop chat window over an edgekit artifact (PySide6 / Qt 6).

    pip install "edgekit[desktop]"
    python examples/desktop_chat/app.py out/model-q4_k_m.gguf            # in-process (edgekit.load)
    python examples/desktop_chat/app.py out/model-q4_k_m.gguf --serve    # an `edgekit serve` child process

Tokens stream into the conversation from a worker thread (:class:`GenerationWorker`, a
QThread). Each piece is handed to the window with a blocking queued connection: the worker
is never more than one token ahead of what is shown, so Stop takes effect at the very next
token, and closing the window while a reply is streaming cancels it and waits for the
worker (pumping the event loop, so the worker's last hand-over cannot deadlock) before the
session or the server process is closed.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PySide6.QtCore import QCoreApplication, Qt, QThread, Signal, Slot
from PySide6.QtGui import QCloseEvent, QTextCursor
from PySide6.QtWidgets import (
    QApplication,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QTextEdit,
    QVBoxLayout,
    QWidget,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from backends import LocalBackend, Reply, ServeBackend


class GenerationWorker(QThread):
    """Runs one reply on its own thread; emits each piece, then the finished :class:`Reply`."""

    piece = Signal(str)
    done = Signal(object)
    failed = Signal(str)

    def __init__(self, backend: Any, messages: list[dict[str, str]], sampling: dict[str, Any]) -> None:
        super().__init__()
        self.backend, self.messages, self.sampling = backend, messages, sampling
        self.cancel = threading.Event()
        self.reply = Reply()

    def run(self) -> None:
        try:
            for text in self.backend.stream(self.messages, self.reply, self.cancel, **self.sampling):
                self.reply.text += text
                self.piece.emit(text)  # blocks until the window has shown it (BlockingQueuedConnection)
        except Exception as e:  # shown in the window: a desktop app must not die on a runtime error
            self.reply.finish_reason = "error"
            self.failed.emit(f"{type(e).__name__}: {e}")
        self.reply.total_s = time.perf_counter() - self.reply.started
        self.done.emit(self.reply)


class ChatWindow(QWidget):
    piece_shown = Signal(str)  # each piece once it is on screen (tests and embedding apps)
    reply_finished = Signal(object)  # the Reply, once the worker is done

    def __init__(self, backend: Any, *, system: str | None = None, sampling: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.backend = backend
        self.sampling = sampling or {"max_tokens": 256}
        self.messages: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
        self.worker: GenerationWorker | None = None
        self.setWindowTitle(f"edgekit chat: {backend.label}")
        self.resize(640, 480)

        self.conversation = QTextEdit(readOnly=True)
        self.prompt = QLineEdit(placeholderText="Type a message and press Enter")
        self.send_button = QPushButton("Send")
        self.stop_button = QPushButton("Stop")
        self.stop_button.setEnabled(False)
        self.status = QLabel(backend.label)
        row = QHBoxLayout()
        row.addWidget(self.prompt, 1)
        row.addWidget(self.send_button)
        row.addWidget(self.stop_button)
        layout = QVBoxLayout(self)
        layout.addWidget(self.conversation, 1)
        layout.addLayout(row)
        layout.addWidget(self.status)

        self.send_button.clicked.connect(self.send)
        self.prompt.returnPressed.connect(self.send)
        self.stop_button.clicked.connect(self.stop)

    # -- actions ----------------------------------------------------------------------------------
    @Slot()
    def send(self) -> None:
        text = self.prompt.text().strip()
        if not text or self.worker is not None:
            return
        self.prompt.clear()
        self.messages.append({"role": "user", "content": text})
        self._append(f"\nYou: {text}\nAssistant: ")
        self.worker = GenerationWorker(self.backend, list(self.messages), self.sampling)
        self.worker.piece.connect(self._on_piece, Qt.ConnectionType.BlockingQueuedConnection)
        self.worker.failed.connect(self._on_failed)
        self.worker.done.connect(self._on_done)
        self.send_button.setEnabled(False)
        self.stop_button.setEnabled(True)
        self.status.setText("generating…")
        self.worker.start()

    @Slot()
    def stop(self) -> None:
        if self.worker is not None:
            self.worker.cancel.set()  # seen by the worker before its next token
            self.stop_button.setEnabled(False)

    @property
    def generating(self) -> bool:
        return self.worker is not None

    # -- from the worker --------------------------------------------------------------------------
    @Slot(str)
    def _on_piece(self, text: str) -> None:
        self._append(text)
        if self.worker is not None:
            r = self.worker.reply
            dt = time.perf_counter() - r.started - r.first_token_s
            rate = (r.tokens - 1) / dt if r.tokens > 1 and dt > 0 else 0.0
            self.status.setText(f"{r.tokens} tokens, {rate:.1f} tokens/s")
        self.piece_shown.emit(text)  # the worker waits for this slot: Stop pressed here stops the next token

    @Slot(str)
    def _on_failed(self, message: str) -> None:
        self._append(f"\n[error: {message}]")

    @Slot(object)
    def _on_done(self, reply: Reply) -> None:
        worker, self.worker = self.worker, None
        if worker is not None:
            worker.wait()
        self.messages.append({"role": "assistant", "content": reply.text})
        note = " (stopped)" if reply.finish_reason == "cancelled" else ""
        self.status.setText(f"{reply.tokens} tokens, {reply.tokens_per_s:.1f} tokens/s, "
                            f"finish: {reply.finish_reason}{note}")
        self.send_button.setEnabled(True)
        self.stop_button.setEnabled(False)
        self.reply_finished.emit(reply)

    def _append(self, text: str) -> None:
        self.conversation.moveCursor(QTextCursor.MoveOperation.End)
        self.conversation.insertPlainText(text)
        self.conversation.moveCursor(QTextCursor.MoveOperation.End)

    # -- closing with a reply streaming -----------------------------------------------------------
    def closeEvent(self, event: QCloseEvent) -> None:
        worker = self.worker
        if worker is not None:
            worker.cancel.set()
            # the worker may be waiting for us to take a piece: keep the event loop turning
            while not worker.wait(10):
                QCoreApplication.processEvents()
            self.worker = None
        self.backend.close()
        super().closeEvent(event)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Chat with an edgekit artifact in a desktop window.")
    p.add_argument("artifact", help="a .gguf file, an ONNX model directory or an edgekit output directory")
    p.add_argument("--serve", action="store_true", help="talk to an `edgekit serve` child process instead")
    p.add_argument("--system", default=None, help="system prompt")
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--ctx", type=int, default=4096)
    args = p.parse_args(argv)
    app = QApplication.instance() or QApplication(sys.argv[:1])
    backend = (ServeBackend(args.artifact, "--ctx", str(args.ctx)) if args.serve
               else LocalBackend(args.artifact, n_ctx=args.ctx))
    window = ChatWindow(backend, system=args.system, sampling={"max_tokens": args.max_tokens})
    window.show()
    return int(app.exec())


if __name__ == "__main__":
    sys.exit(main())
