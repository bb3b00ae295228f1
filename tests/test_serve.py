"""`edgekit serve`: the real server in a subprocess on a loopback port, driven by the official openai client."""

from __future__ import annotations

import contextlib
import json
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

import edgekit

CTX = 1024  # the demo model's trained context
EVIL_TEMPLATE = "{{ ''.__class__.__mro__[1].__subclasses__() }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
CHAT = [{"role": "system", "content": "You document Python."}, {"role": "user", "content": "What does len return?"}]
# Prompts the long-request tests may use: the first the model continues greedily for LONG_TOKENS
# tokens without an end token *on this host* is picked at run time (greedy paths depend on the
# CPU's arithmetic, so which one does is not written down here).
LONG_CANDIDATES = ("The function returns", "Return a list of", "The following", "This method", "If the")
LONG_TOKENS = 1000


class ServerProcess:
    """``python -m edgekit serve ... --port 0 --json``: waits for its ready line and /health."""

    def __init__(self, artifact: Path, *args: str, log: Path) -> None:
        self.log = log
        cmd = [sys.executable, "-m", "edgekit", "serve", str(artifact), "--port", "0", "--json", "--ctx", str(CTX),
               "--threads", "1", *args]
        self._err = open(log, "w")  # closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._err, text=True)
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 120)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            self.stop()
            raise AssertionError(f"server did not start: {log.read_text()}")
        self.info: dict[str, Any] = json.loads(line)
        self.url: str = self.info["url"]
        assert httpx.get(f"{self.url}/health", timeout=10).status_code == 200

    def client(self, api_key: str = "none") -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=api_key, max_retries=0, timeout=60)

    def health(self) -> dict[str, Any]:
        r = httpx.get(f"{self.url}/health", timeout=10)
        assert r.status_code == 200
        data: dict[str, Any] = r.json()
        return data

    def post(self, path: str, body: Any, **kw: Any) -> httpx.Response:
        return httpx.post(f"{self.url}{path}", json=body, timeout=60, **kw)

    def signal(self, sig: int) -> None:
        self.signalled = True
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM (unless a signal was sent already) and the exit code."""
        if self.proc.poll() is None and not getattr(self, "signalled", False):
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        self._err.close()
        return rc


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trained demo model as q8_0 GGUF, converted once for this module."""
    from edgekit.demo import demo_model_dir

    out = tmp_path_factory.mktemp("serve-gguf")
    edgekit.convert(demo_model_dir(), out, to="gguf", quants="q8_0", verify_artifacts=False, name="demo")
    return out / "demo-q8_0.gguf"


@pytest.fixture(scope="module")
def evil_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo model as a GGUF whose chat template reaches for Python internals: a file from
    the internet. edgekit's converter refuses to write one (its stop-token check renders the
    template in the sandbox), so a harmless template of the same length is converted and its
    bytes in the file are overwritten with the hostile one."""
    from edgekit.demo import demo_model_dir

    loop = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    benign = "{#" + "x" * (len(EVIL_TEMPLATE) - len(loop) - 4) + "#}" + loop
    assert len(benign) == len(EVIL_TEMPLATE)
    src = tmp_path_factory.mktemp("evil-src")
    shutil.copytree(demo_model_dir(), src, dirs_exist_ok=True)
    (src / "chat_template.jinja").write_text(benign, encoding="utf-8")
    out = tmp_path_factory.mktemp("evil-gguf")
    edgekit.convert(src, out, to="gguf", quants="q8_0", verify_artifacts=False, name="evil")
    path = out / "evil-q8_0.gguf"
    data = path.read_bytes()
    assert data.count(benign.encode()) == 1
    path.write_bytes(data.replace(benign.encode(), EVIL_TEMPLATE.encode()))
    return path


@pytest.fixture(scope="module")
def session(artifact: Path) -> Iterator[Any]:
    """The in-process session the server's answers are compared with (same threads, same context)."""
    with edgekit.load(artifact, n_ctx=CTX, n_threads=1) as s:
        yield s


@pytest.fixture(scope="module")
def long_prompt(session: Any) -> str:
    """A prompt the server will answer with LONG_TOKENS tokens (same artifact, threads and context
    as the server's sessions, so the same greedy path)."""
    for prompt in LONG_CANDIDATES:
        r = session.generate(prompt, max_tokens=LONG_TOKENS)
        if r.finish_reason == "length" and r.stats.completion_tokens == LONG_TOKENS:
            return prompt
    raise AssertionError(f"the demo model ends its text within {LONG_TOKENS} tokens after each of {LONG_CANDIDATES}")


@pytest.fixture(scope="module")
def start(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., ServerProcess]]:
    started: list[ServerProcess] = []

    def make(artifact: Path, *args: str) -> ServerProcess:
        log = tmp_path_factory.mktemp("serve-log") / "server.log"
        started.append(ServerProcess(artifact, *args, log=log))
        return started[-1]

    yield make
    for s in started:
        s.stop()


@pytest.fixture(scope="module")
def server(start: Callable[..., ServerProcess], artifact: Path) -> ServerProcess:
    return start(artifact, "--max-concurrent", "2", "--max-tokens", "512", "--max-request-bytes", "65536")


# -- the API through the official client ------------------------------------------------------------------
def test_models_and_health(server: ServerProcess) -> None:
    models = server.client().models.list()
    assert [m.id for m in models.data] == ["demo-q8_0"]
    assert server.client().models.retrieve("demo-q8_0").id == "demo-q8_0"
    h = server.health()
    assert h["backend"] == "llama.cpp" and h["slots"] == 2 and h["busy"] == 0


def test_chat_matches_in_process_session(server: ServerProcess, session: Any) -> None:
    r = server.client().chat.completions.create(model="demo-q8_0", messages=CHAT, max_tokens=24,
                                                temperature=0)
    ref = session.chat(CHAT, max_tokens=24, temperature=0.0)
    assert r.choices[0].message.content == ref.text and r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason == ref.finish_reason
    assert r.usage is not None
    assert r.usage.prompt_tokens == ref.stats.prompt_tokens
    assert r.usage.completion_tokens == ref.stats.completion_tokens
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.id.startswith("chatcmpl-") and r.model == "demo-q8_0"


def test_chat_streams_token_by_token(server: ServerProcess) -> None:
    client = server.client()
    whole = client.chat.completions.create(model="demo-q8_0", messages=CHAT, max_tokens=40,
                                           temperature=0)
    chunks = list(client.chat.completions.create(model="demo-q8_0", messages=CHAT, max_tokens=40,
                                                 temperature=0, stream=True, stream_options={"include_usage": True}))
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) >= 10  # one event per token, not one blob
    assert "".join(pieces) == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == [whole.choices[0].finish_reason]
    assert chunks[-1].usage is not None and not chunks[-1].choices
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_completions_stop_seed_and_stream(server: ServerProcess, session: Any, long_prompt: str) -> None:
    client = server.client()
    ref = session.generate(long_prompt, max_tokens=30, temperature=1.0, seed=7)
    r = client.completions.create(model="demo-q8_0", prompt=long_prompt, max_tokens=30, temperature=1.0, seed=7)
    assert r.choices[0].text == ref.text  # same seed, same sampler: the same text as in-process
    again = client.completions.create(model="demo-q8_0", prompt=long_prompt, max_tokens=30, temperature=1.0, seed=7)
    assert again.choices[0].text == r.choices[0].text
    greedy = session.generate(long_prompt, max_tokens=30).text
    word = greedy.split()[2]
    cut = client.completions.create(model="demo-q8_0", prompt=long_prompt, max_tokens=30, temperature=0, stop=[word])
    assert word not in cut.choices[0].text and greedy.startswith(cut.choices[0].text)
    assert cut.choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="demo-q8_0", prompt=long_prompt, max_tokens=30, temperature=0, stream=True) if c.choices)
    assert streamed == greedy
    default = client.completions.create(model="demo-q8_0", prompt=long_prompt, temperature=0)
    assert default.usage is not None and default.usage.completion_tokens == 16  # OpenAI's default for completions


def test_model_may_be_omitted_but_not_wrong(server: ServerProcess) -> None:
    r = server.post("/v1/completions", {"prompt": "The", "max_tokens": 3})
    assert r.status_code == 200 and r.json()["model"] == "demo-q8_0"
    with pytest.raises(openai.NotFoundError, match="demo-q8_0"):
        server.client().completions.create(model="gpt-4o", prompt="The", max_tokens=3)


# -- bad requests: 400 with an OpenAI error body naming the field ---------------------------------------------
BAD_REQUESTS: list[tuple[str, dict[str, Any], str | None, str]] = [
    # (path, body, param named in the error, code)
    ("/v1/chat/completions", {"max_tokens": 4}, "messages", "missing_required_parameter"),
    ("/v1/chat/completions", {"messages": []}, "messages", "invalid_value"),
    ("/v1/chat/completions", {"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role", "invalid_value"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
     "messages[0].content", "unsupported_content"),
    ("/v1/chat/completions", {"messages": CHAT, "n": 2}, "n", "unsupported_parameter"),
    ("/v1/chat/completions", {"messages": CHAT, "presence_penalty": 0.5}, "presence_penalty", "unsupported_parameter"),
    ("/v1/chat/completions", {"messages": CHAT, "tools": [{"type": "function"}]}, "tools", "unsupported_parameter"),
    ("/v1/chat/completions", {"messages": CHAT, "temperature": 5}, "temperature", "invalid_value"),
    ("/v1/chat/completions", {"messages": CHAT, "temperature": "hot"}, "temperature", "invalid_value"),
    ("/v1/chat/completions", {"messages": CHAT, "max_tokens": 513}, "max_tokens", "invalid_value"),
    ("/v1/chat/completions", {"messages": CHAT, "max_tokens": 0}, "max_tokens", "invalid_value"),
    ("/v1/chat/completions", {"messages": CHAT, "stream": "yes"}, "stream", "invalid_value"),
    ("/v1/chat/completions", {"messages": CHAT, "stop": ["a", "b", "c", "d", "e"]}, "stop", "invalid_value"),
    ("/v1/chat/completions", {"messages": CHAT, "max_tokenz": 5}, "max_tokenz", "unknown_parameter"),
    ("/v1/completions", {"prompt": [1, 2, 3]}, "prompt", "invalid_value"),
    ("/v1/completions", {"prompt": "x", "echo": True}, "echo", "unsupported_parameter"),
    ("/v1/completions", {"prompt": "the " * 600, "max_tokens": 500}, "max_tokens", "context_length_exceeded"),
    ("/v1/completions", {"prompt": "the " * 1100}, "prompt", "context_length_exceeded"),
]


@pytest.mark.parametrize(("path", "body", "param", "code"), BAD_REQUESTS,
                         ids=[f"{p.rsplit('/', 1)[-1]}-{param}-{code}" for p, _, param, code in BAD_REQUESTS])
def test_invalid_values_are_400_naming_the_field(server: ServerProcess, path: str, body: dict[str, Any],
                                                 param: str, code: str) -> None:
    r = server.post(path, body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == param and err["code"] == code
    assert param.split("[")[0] in err["message"] or code == "context_length_exceeded"


def test_harmless_unsupported_fields_are_ignored(server: ServerProcess) -> None:
    r = server.client().chat.completions.create(model="demo-q8_0", messages=CHAT, max_tokens=4,
                                                user="someone", n=1, presence_penalty=0.0, logprobs=False)
    assert r.choices[0].message.content is not None and r.usage is not None and r.usage.completion_tokens >= 1
    with pytest.raises(openai.BadRequestError, match="'n'"):
        server.client().chat.completions.create(model="demo-q8_0", messages=CHAT, n=3)


@pytest.mark.parametrize(("content", "headers", "code"), [
    (b'{"messages": [', {"content-type": "application/json"}, "invalid_json"),
    (b'["a list"]', {"content-type": "application/json"}, "invalid_json"),
    (b'{"prompt": "x", "temperature": NaN}', {"content-type": "application/json"}, "invalid_json"),
    (b'\xff\xfe', {"content-type": "application/json"}, "invalid_json"),
    (b'{"prompt": "x"}', {"content-type": "text/plain"}, "invalid_content_type"),
])
def test_malformed_bodies_are_400(server: ServerProcess, content: bytes, headers: dict[str, str], code: str) -> None:
    r = httpx.post(f"{server.url}/v1/completions", content=content, headers=headers, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["code"] == code


def test_oversized_requests_are_413(server: ServerProcess) -> None:
    big = {"messages": [{"role": "user", "content": "x" * 70_000}]}
    r = server.post("/v1/chat/completions", big)  # Content-Length says it: refused before reading
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"

    def chunks() -> Iterator[bytes]:  # chunked, no Content-Length: refused while reading
        yield b'{"prompt": "'
        for _ in range(100):
            yield b"y" * 1000
        yield b'"}'

    r = httpx.post(f"{server.url}/v1/completions", content=chunks(), headers={"content-type": "application/json"},
                   timeout=30)
    assert r.status_code == 413
    assert server.health()["status"] == "ok"


def test_foreign_host_header_is_refused(server: ServerProcess) -> None:
    r = httpx.get(f"{server.url}/v1/models", headers={"host": "attacker.example"}, timeout=10)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_host"
    assert httpx.get(f"{server.url}/v1/models", headers={"host": "localhost:1234"}, timeout=10).status_code == 200


# -- concurrency: a bounded queue, then 429 / 503; disconnects free the slot ----------------------------------
def _hold_stream(url: str, body: dict[str, Any]) -> contextlib.ExitStack:
    """Open a stream and read up to its first token; closing the returned stack drops the connection."""
    stack = contextlib.ExitStack()
    client = stack.enter_context(httpx.Client(timeout=60))
    response = stack.enter_context(client.stream("POST", f"{url}/v1/completions", json={**body, "stream": True}))
    assert response.status_code == 200
    lines = response.iter_lines()
    stack.callback(lines.close)  # kept open until then: closing the iterator closes the connection
    for line in lines:
        if line.startswith("data: ") and json.loads(line[6:])["choices"][0]["text"]:
            break
    return stack


def test_beyond_max_concurrent_is_429_and_disconnect_frees_the_slot(start: Callable[..., ServerProcess],
                                                                     artifact: Path, long_prompt: str) -> None:
    srv = start(artifact, "--max-concurrent", "1", "--max-queue", "0")
    second = srv.client()  # built first: the probe must reach the server while the long answer is running
    second.models.list()
    held = _hold_stream(srv.url, {"prompt": long_prompt, "max_tokens": LONG_TOKENS, "temperature": 0})  # the only slot
    with pytest.raises(openai.RateLimitError, match="busy"):
        second.completions.create(model="demo-q8_0", prompt="The", max_tokens=2)
    held.close()  # the client goes away mid-stream
    deadline = time.monotonic() + 10
    while (h := srv.health())["busy"] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert h["busy"] == 0 and h["cancelled"] == 1 and h["rejected_queue_full"] == 1  # stopped, not run to the end
    r = second.completions.create(model="demo-q8_0", prompt="The", max_tokens=2)  # the slot is free again
    assert r.usage is not None and r.usage.completion_tokens == 2


def test_queue_waits_then_times_out_with_503(start: Callable[..., ServerProcess], artifact: Path, long_prompt: str) -> None:
    srv = start(artifact, "--max-concurrent", "1", "--max-queue", "4", "--queue-timeout", "0.05")
    with httpx.Client(timeout=30) as second:
        second.get(f"{srv.url}/health")
        with _hold_stream(srv.url, {"prompt": long_prompt, "max_tokens": LONG_TOKENS, "temperature": 0}):
            r = second.post(f"{srv.url}/v1/completions", json={"prompt": "The", "max_tokens": 2})
    assert r.status_code == 503 and r.json()["error"]["code"] == "queue_timeout" and "retry-after" in r.headers
    assert srv.health()["rejected_queue_timeout"] == 1


def test_clients_up_to_the_queue_all_succeed(server: ServerProcess, session: Any) -> None:
    """6 clients on 2 slots (4 wait in the queue): no errors, each gets its own answer."""
    prompts = [f"{w} returns" for w in ("The list", "A dict", "This method", "The string", "Each item", "It")]
    results: dict[str, str] = {}
    errors: list[BaseException] = []

    def ask(p: str) -> None:
        try:
            r = server.client().completions.create(model="demo-q8_0", prompt=p, max_tokens=60, temperature=0)
            results[p] = r.choices[0].text
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=ask, args=(p,)) for p in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert results == {p: session.generate(p, max_tokens=60).text for p in prompts}


# -- API key ------------------------------------------------------------------------------------------------
def test_api_key(start: Callable[..., ServerProcess], artifact: Path) -> None:
    srv = start(artifact, "--api-key", "s3cret")
    assert srv.info["api_key_required"] is True
    with pytest.raises(openai.AuthenticationError):
        srv.client("wrong").models.list()
    r = httpx.post(f"{srv.url}/v1/completions", json={"prompt": "x"}, timeout=10)  # no header at all
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    ok = srv.client("s3cret").completions.create(model="demo-q8_0", prompt="The", max_tokens=3)
    assert ok.usage is not None and ok.usage.completion_tokens == 3
    assert srv.health()["status"] == "ok"  # liveness needs no key


def test_server_without_key_accepts_any_bearer(server: ServerProcess) -> None:
    assert server.client("anything").models.list().data[0].id == "demo-q8_0"


# -- a malicious chat template is refused, not executed --------------------------------------------------------
def test_malicious_chat_template(start: Callable[..., ServerProcess], evil_artifact: Path) -> None:
    srv = start(evil_artifact)
    assert "chat template cannot be used" in srv.log.read_text()  # said once at startup
    with pytest.raises(openai.InternalServerError, match="unsafe") as exc:
        srv.client().chat.completions.create(model="evil-q8_0", messages=CHAT, max_tokens=4)
    assert exc.value.body["code"] == "unsafe_chat_template"
    r = srv.post("/v1/chat/completions", {"messages": CHAT, "stream": True})  # streaming: refused before any event
    assert r.status_code == 500 and r.headers["content-type"].startswith("application/json")
    assert srv.health()["failed"] == 2 and srv.health()["busy"] == 0
    ok = srv.client().completions.create(model="evil-q8_0", prompt="The", max_tokens=3)  # plain completion works
    assert ok.usage is not None and ok.usage.completion_tokens == 3


# -- graceful shutdown -------------------------------------------------------------------------------------
def test_sigterm_lets_in_flight_requests_finish(start: Callable[..., ServerProcess], artifact: Path, long_prompt: str) -> None:
    srv = start(artifact)
    result: dict[str, Any] = {}

    def long_request() -> None:
        result["r"] = srv.post("/v1/completions", {"prompt": long_prompt, "max_tokens": LONG_TOKENS, "temperature": 0})

    t = threading.Thread(target=long_request)
    t.start()
    deadline = time.monotonic() + 10
    while srv.health()["busy"] == 0 and time.monotonic() < deadline:
        time.sleep(0.005)
    srv.signal(signal.SIGTERM)
    t.join(60)
    assert srv.stop() == 0  # a clean exit after the graceful shutdown
    r = result["r"]
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == LONG_TOKENS
    assert r.json()["choices"][0]["finish_reason"] == "length"


def test_shutdown_timeout_cuts_cleanly(start: Callable[..., ServerProcess], artifact: Path, long_prompt: str) -> None:
    """--shutdown-timeout 0: the running stream and the queued requests get an explicit error, never a
    silently truncated answer; the process still exits 0."""
    srv = start(artifact, "--max-queue", "4", "--shutdown-timeout", "0")
    body = {"prompt": long_prompt, "max_tokens": LONG_TOKENS, "temperature": 0, "stream": True}
    outcomes: list[str] = []

    def stream_one() -> None:
        try:
            with httpx.stream("POST", f"{srv.url}/v1/completions", json=body, timeout=60) as r:
                if r.status_code != 200:
                    r.read()
                    outcomes.append(r.json()["error"]["code"])
                    return
                events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
            if events[-1] == "[DONE]":
                outcomes.append("done")
            else:
                outcomes.append(json.loads(events[-1])["error"]["code"])
        except Exception as e:  # a dropped connection or a malformed answer is an outcome too
            outcomes.append(f"{type(e).__name__}: {e}")

    threads = [threading.Thread(target=stream_one) for _ in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    while srv.health()["queued"] < 3 and time.monotonic() < deadline:
        time.sleep(0.005)
    srv.signal(signal.SIGTERM)
    for t in threads:
        t.join(60)
    assert srv.stop() == 0
    assert len(outcomes) == 4 and set(outcomes) <= {"done", "shutting_down"}, (outcomes, srv.log.read_text())
    assert "shutting_down" in outcomes  # requests still queued cannot have finished


def test_the_same_server_serves_onnx(start: Callable[..., ServerProcess], tmp_path_factory: pytest.TempPathFactory) -> None:
    """No backend special case: an ONNX export answers like its in-process session."""
    from edgekit.demo import demo_model_dir

    out = tmp_path_factory.mktemp("serve-onnx")
    edgekit.convert(demo_model_dir(), out, to="onnx", quants="int4", verify_artifacts=False, name="demo")
    onnx_dir = out / "demo-onnx-int4"
    srv = start(onnx_dir, "--threads", "1", "--graph-opt", "all")
    assert srv.health()["backend"] == "onnxruntime-genai"
    client = srv.client()
    r = client.chat.completions.create(model="demo-onnx-int4", messages=CHAT, max_tokens=16, temperature=0)
    with edgekit.load(onnx_dir, n_ctx=CTX, n_threads=1) as s:
        ref = s.chat(CHAT, max_tokens=16, temperature=0.0)
    assert r.choices[0].message.content == ref.text
    stream = client.completions.create(model="demo-onnx-int4", prompt="def read(path):", max_tokens=12,
                                       temperature=0, stream=True)
    pieces = [c.choices[0].text for c in stream if c.choices and c.choices[0].text]
    assert len(pieces) >= 5  # streamed token by token through the ONNX session too
