"""Slots: one Session per concurrent generation, a bounded wait for a free one, generation on worker threads.

Why one session per slot (not one shared session behind a lock): sessions are not
thread-safe and keep one sequence's KV cache, and the Session API has no batched decode, so
a shared session would serialize every request anyway. With N sessions, N requests decode at
the same time (each with cores/N threads by default) and a long answer does not hold up a
short one. llama.cpp maps GGUF weights with mmap, so the N sessions share the weights' pages;
each adds only its KV cache and compute buffers.

Generation is blocking C code, so each job runs on one of N worker threads and sends its
pieces to the event loop with ``call_soon_threadsafe``. A job stops between two tokens when
cancelled (client gone, server cutting it) and gives its slot back from the worker thread once
the runtime's generator is closed: a slot is never reused while its session is still busy.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

from edgekit.errors import EdgekitError
from edgekit.runtimes.base import Session
from edgekit.runtimes.chat_template import ChatTemplateError, UnsafeChatTemplateError

from .protocol import Endpoint, ErrorType, GenerationRequest, RequestError

log = logging.getLogger("edgekit.server")


@dataclass(frozen=True)
class Started:
    prompt_tokens: int


@dataclass(frozen=True)
class Finished:
    finish_reason: str
    completion_tokens: int
    text: str = ""  # the whole answer, for jobs that do not stream


@dataclass(frozen=True)
class Failed:
    error: RequestError


Event = Started | str | Finished | Failed


@dataclass
class Counters:
    completed: int = 0
    cancelled: int = 0  # stopped early: client disconnected or server shutting down
    failed: int = 0
    rejected_queue_full: int = 0  # 429
    rejected_queue_timeout: int = 0  # 503

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


class Job:
    """One request's generation on a worker thread; its events arrive on the event loop's queue."""

    def __init__(self, loop: asyncio.AbstractEventLoop, stream: bool) -> None:
        self._loop = loop
        self.stream = stream
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self._cancel = threading.Event()
        self.done = False  # set on the loop thread when the last event was read

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def post(self, event: Event) -> None:  # worker thread
        try:
            self._loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the loop is closed: the server is gone, nobody is listening
            self.cancel()

    async def next_events(self) -> list[Event]:
        """Everything queued now (at least one event): writes are batched, events are not merged.

        (Coalescing the worker's wake-ups behind a lock measured the same, ~15 us of CPU per
        event either way, so the plain queue stays.)
        """
        out = [await self.events.get()]
        while not self.events.empty():
            out.append(self.events.get_nowait())
        if isinstance(out[-1], Finished | Failed):
            self.done = True
        return out


class SessionPool:
    def __init__(self, sessions: Sequence[Session], *, max_queue: int, queue_timeout_s: float,
                 max_tokens_limit: int) -> None:
        if not sessions:
            raise ValueError("a pool needs at least one session")
        self.sessions = list(sessions)
        self._free = list(sessions)
        self._slots = asyncio.Semaphore(len(sessions))
        self._waiting = 0
        self.max_queue, self.queue_timeout_s, self.max_tokens_limit = max_queue, queue_timeout_s, max_tokens_limit
        self._executor = ThreadPoolExecutor(max_workers=len(sessions), thread_name_prefix="edgekit-generate")
        self.counters = Counters()
        self._running: set[Job] = set()

    @property
    def busy(self) -> int:
        return len(self.sessions) - len(self._free)

    @property
    def queued(self) -> int:
        return self._waiting

    async def acquire(self) -> Session:
        """A free session, after a bounded wait: 429 when the queue is full, 503 after the queue timeout."""
        if self._slots.locked() and self._waiting >= self.max_queue:
            self.counters.rejected_queue_full += 1
            raise RequestError(429, f"all {len(self.sessions)} generation slots are busy and {self._waiting} "
                                    f"request(s) are queued; retry shortly", code="queue_full",
                               type_=ErrorType.RATE_LIMIT, headers={"Retry-After": "1"})
        self._waiting += 1
        try:
            # wait_for, not asyncio.timeout (3.11+): edgekit runs on JetPack 6's Python 3.10, where
            # asyncio.TimeoutError is not yet the builtin TimeoutError
            await asyncio.wait_for(self._slots.acquire(), self.queue_timeout_s)
        except asyncio.TimeoutError:
            self.counters.rejected_queue_timeout += 1
            raise RequestError(503, f"no generation slot became free within {self.queue_timeout_s:g} s; retry later",
                               code="queue_timeout", type_=ErrorType.SERVER, headers={"Retry-After": "1"}) from None
        finally:
            self._waiting -= 1
        return self._free.pop()

    def start(self, session: Session, request: GenerationRequest) -> Job:
        """Run ``request`` on ``session`` (from :meth:`acquire`); the slot is released when the job ends."""
        loop = asyncio.get_running_loop()
        job = Job(loop, request.stream)
        self._running.add(job)
        self._executor.submit(self._work, job, session, request, loop)
        return job

    def _release(self, job: Job, session: Session, outcome: str) -> None:  # loop thread
        self._running.discard(job)
        setattr(self.counters, outcome, getattr(self.counters, outcome) + 1)
        self._free.append(session)
        self._slots.release()

    def _work(self, job: Job, session: Session, request: GenerationRequest, loop: asyncio.AbstractEventLoop) -> None:
        outcome = "failed"
        try:
            ids, max_tokens = prepare(session, request, self.max_tokens_limit)
            job.post(Started(len(ids)))
            parts: list[str] = []
            pieces = session.stream(ids, **request.sampling(max_tokens))
            try:
                for piece in pieces:
                    if job.cancelled:
                        break
                    if job.stream:
                        job.post(piece)
                    else:
                        parts.append(piece)
            finally:
                pieces.close()  # type: ignore[attr-defined]  # a generator: frees the runtime's state now
            outcome = "cancelled" if job.cancelled else "completed"
            job.post(Finished(session.last_finish_reason, session.last_stats.completion_tokens, "".join(parts)))
        except RequestError as e:
            job.post(Failed(e))
        except EdgekitError as e:
            job.post(Failed(RequestError(400, e.one_line())))
        except Exception as e:  # a runtime bug must not kill the worker or leak the slot
            log.exception("generation failed")
            job.post(Failed(RequestError(500, f"generation failed: {type(e).__name__}: {e}", type_=ErrorType.SERVER)))
        finally:
            try:
                loop.call_soon_threadsafe(self._release, job, session, outcome)
            except RuntimeError:
                pass  # loop closed at shutdown: nothing will acquire again

    def cancel_all(self) -> None:
        for job in list(self._running):
            job.cancel()

    def close(self) -> None:
        """Wait for running jobs (cancel them first to be quick), then close every session."""
        self._executor.shutdown(wait=True)
        for s in self.sessions:
            s.close()

    def status(self) -> dict[str, Any]:
        return {"slots": len(self.sessions), "busy": self.busy, "queued": self.queued, **self.counters.to_dict()}


def prepare(session: Session, request: GenerationRequest, max_tokens_limit: int) -> tuple[list[int], int]:
    """Prompt token ids and the max_tokens to use; context and template problems become 400/500 answers."""
    param = "messages" if request.endpoint is Endpoint.CHAT else "prompt"
    if request.endpoint is Endpoint.CHAT:
        try:
            ids = session.chat_ids(list(request.messages))
        except UnsafeChatTemplateError as e:  # the model's template is hostile: the server's problem
            raise RequestError(500, f"{e.message}; the server refuses to run this model's chat template",
                               param="messages", code="unsafe_chat_template", type_=ErrorType.SERVER) from e
        except ChatTemplateError as e:
            raise RequestError(400, e.message, param="messages", code="chat_template_error") from e
    else:
        ids = session.tokenize(request.prompt)
    if not ids:
        raise RequestError(400, f"the {param} is empty after tokenization; send some text", param=param)
    ctx = session.context_length
    room = ctx - len(ids)
    if room < 1:
        raise RequestError(400, f"the {param} is {len(ids)} tokens; this server's context length is {ctx}",
                           param=param, code="context_length_exceeded")
    if request.max_tokens is None:
        return ids, min(max_tokens_limit, room)
    if request.max_tokens > room:
        raise RequestError(400, f"the {param} ({len(ids)} tokens) + max_tokens ({request.max_tokens}) exceeds this "
                                f"server's context length {ctx}; lower max_tokens or shorten the {param}",
                           param="max_tokens", code="context_length_exceeded")
    return ids, request.max_tokens
