"""The OpenAI wire format: validate request bodies, build responses, chunks and error bodies.

Pure functions over dicts (no HTTP, no sessions), so the rules are in one place and easy to
read: which fields are used, which are ignored because they cannot change the answer, and
which are accepted only at their neutral value because anything else would change it.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from dataclasses import dataclass
from typing import Any

from edgekit._compat import StrEnum
from edgekit.errors import InputError


class Endpoint(StrEnum):
    CHAT = "chat"
    COMPLETION = "completion"


class ErrorType(StrEnum):
    # the "type" field of an OpenAI error body
    INVALID_REQUEST = "invalid_request_error"
    AUTHENTICATION = "authentication_error"
    RATE_LIMIT = "rate_limit_error"
    SERVER = "server_error"


class RequestError(InputError):
    """A request the server answers with an OpenAI-style error body instead of a completion."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type_: ErrorType = ErrorType.INVALID_REQUEST, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.param, self.code, self.type = status, param, code, type_
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, param=self.param, code=self.code)


def error_body(message: str, type_: ErrorType, *, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_.value, "param": param, "code": code}}


# Standard fields that cannot change the generated text: accepted and ignored.
IGNORED_FIELDS = frozenset({"user", "metadata", "store", "service_tier", "parallel_tool_calls", "prompt_cache_key",
                            "safety_identifier"})

# Standard fields this server does not implement, with the values that leave the answer
# unchanged. Any other value would silently change the answer, so it is refused with a 400
# naming the field. (null is always accepted: it means "default".)
NEUTRAL_ONLY: dict[str, tuple[Any, ...]] = {
    "n": (1,),                      # one choice per request
    "frequency_penalty": (0,),
    "presence_penalty": (0,),
    "logit_bias": ({},),
    "logprobs": (False, 0),         # bool in chat, int in completions
    "top_logprobs": (0,),
    "tools": ([],),
    "tool_choice": ("none",),
    "functions": ([],),
    "function_call": ("none",),
    "response_format": ({"type": "text"},),
    "modalities": (["text"],),
    "best_of": (1,),                # completions
    "echo": (False,),               # completions
    "suffix": ("",),                # completions
}

# Which fields each endpoint understands (used, ignored or neutral-only); anything else is
# refused like OpenAI does ("unrecognized request argument"), so a typo never goes unnoticed.
_SAMPLING = {"model", "max_tokens", "temperature", "top_p", "stop", "seed", "stream", "stream_options"}
_COMMON_NEUTRAL = {"n", "frequency_penalty", "presence_penalty", "logit_bias", "logprobs"}
ENDPOINT_FIELDS: dict[Endpoint, frozenset[str]] = {
    Endpoint.CHAT: frozenset(_SAMPLING | _COMMON_NEUTRAL | IGNORED_FIELDS | {
        "messages", "max_completion_tokens", "top_logprobs", "tools", "tool_choice", "functions", "function_call",
        "response_format", "modalities"}),
    Endpoint.COMPLETION: frozenset(_SAMPLING | _COMMON_NEUTRAL | IGNORED_FIELDS | {
        "prompt", "best_of", "echo", "suffix"}),
}

# Chat roles a template understands; "developer" is OpenAI's newer name for "system".
ROLE_ALIASES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
MAX_STOP_STRINGS = 4  # OpenAI's limit
COMPLETION_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions; chat defaults to the server's cap
DEFAULT_TEMPERATURE = 1.0  # OpenAI's default: a client that omits it gets what it would get upstream


@dataclass(frozen=True)
class GenerationRequest:
    endpoint: Endpoint
    messages: tuple[dict[str, str], ...] = ()
    prompt: str = ""
    max_tokens: int | None = None  # None: the endpoint's default, bounded by the context left
    temperature: float = DEFAULT_TEMPERATURE
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stream: bool = False
    include_usage: bool = False

    def sampling(self, max_tokens: int) -> dict[str, Any]:
        return {"max_tokens": max_tokens, "temperature": self.temperature, "top_p": self.top_p, "seed": self.seed,
                "stop": self.stop}


def _bad(message: str, param: str | None, code: str = "invalid_value") -> RequestError:
    return RequestError(400, message, param=param, code=code)


def parse_json(raw: bytes) -> dict[str, Any]:
    def no_constants(name: str) -> Any:
        raise ValueError(f"{name} is not valid JSON")

    try:
        body = json.loads(raw, parse_constant=no_constants)
    except (ValueError, UnicodeDecodeError) as e:
        raise _bad(f"the request body is not valid JSON ({e}); send a JSON object", None, "invalid_json") from e
    if not isinstance(body, dict):
        raise _bad("the request body must be a JSON object", None, "invalid_json")
    return body


def _number(body: dict[str, Any], name: str, lo: float, hi: float, default: float) -> float:
    v = body.get(name)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or not lo <= v <= hi:
        raise _bad(f"'{name}' must be a number between {lo:g} and {hi:g}, got {v!r}", name)
    return float(v)


def _integer(body: dict[str, Any], name: str, lo: int, hi: int | None = None) -> int | None:
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
        bound = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
        raise _bad(f"'{name}' must be an integer {bound}, got {v!r}", name)
    return v


def _boolean(body: dict[str, Any], name: str) -> bool:
    v = body.get(name)
    if v is None:
        return False
    if not isinstance(v, bool):
        raise _bad(f"'{name}' must be true or false, got {v!r}", name)
    return v


def _stop(body: dict[str, Any]) -> tuple[str, ...]:
    v = body.get("stop")
    if v is None:
        return ()
    stops = [v] if isinstance(v, str) else v
    if (not isinstance(stops, list) or len(stops) > MAX_STOP_STRINGS
            or not all(isinstance(s, str) and s for s in stops)):
        raise _bad(f"'stop' must be a non-empty string or a list of at most {MAX_STOP_STRINGS} non-empty strings",
                   "stop")
    return tuple(stops)


def _same(value: Any, ok: Any) -> bool:
    # 0 and 0.0 are the same penalty; False and 0 are not the same "logprobs" (types differ).
    numbers = all(isinstance(x, int | float) and not isinstance(x, bool) for x in (value, ok))
    return value == ok and (numbers or type(value) is type(ok))


def _check_fields(body: dict[str, Any], endpoint: Endpoint) -> None:
    for name, value in body.items():
        if name not in ENDPOINT_FIELDS[endpoint]:
            raise _bad(f"unrecognized request argument supplied: '{name}'", name, "unknown_parameter")
        if name in NEUTRAL_ONLY and value is not None and not any(_same(value, ok) for ok in NEUTRAL_ONLY[name]):
            raise _bad(f"'{name}' = {json.dumps(value)[:60]} is not supported by this server (it would change the "
                       f"answer); omit it or use {json.dumps(NEUTRAL_ONLY[name][0])}", name, "unsupported_parameter")


def _content(value: Any, i: int) -> str:
    # A string, or the list-of-parts form; only text parts can reach a text model.
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        texts = []
        for part in value:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise _bad(f"messages[{i}].content: only text parts are supported, got {kind!r}",
                           f"messages[{i}].content", "unsupported_content")
            texts.append(part["text"])
        return "".join(texts)
    raise _bad(f"messages[{i}].content must be a string or a list of text parts", f"messages[{i}].content")


def _messages(body: dict[str, Any]) -> tuple[dict[str, str], ...]:
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise _bad("'messages' is required: a non-empty list of {role, content} objects", "messages",
                   "missing_required_parameter" if msgs is None else "invalid_value")
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise _bad(f"messages[{i}] must be an object with 'role' and 'content'", f"messages[{i}]")
        role = m.get("role")
        if role not in ROLE_ALIASES:
            raise _bad(f"messages[{i}].role {role!r} is not supported; use one of {', '.join(ROLE_ALIASES)}",
                       f"messages[{i}].role")
        out.append({"role": ROLE_ALIASES[role], "content": _content(m.get("content"), i)})
    return tuple(out)


def _prompt(body: dict[str, Any]) -> str:
    p = body.get("prompt")
    if isinstance(p, list) and len(p) == 1 and isinstance(p[0], str):
        p = p[0]  # the one-prompt batch form
    if not isinstance(p, str):
        raise _bad("'prompt' must be a string (one prompt per request; token-id prompts are not supported)", "prompt",
                   "missing_required_parameter" if p is None else "invalid_value")
    return p


def parse_request(body: dict[str, Any], endpoint: Endpoint, *, model_id: str, max_tokens_limit: int) -> GenerationRequest:
    """Validate an OpenAI request body; raises RequestError naming the offending field."""
    _check_fields(body, endpoint)
    model = body.get("model")
    if model is not None and model != model_id:
        raise RequestError(404, f"model {model!r} is not served here; this server serves {model_id!r}",
                           param="model", code="model_not_found")
    max_tokens = _integer(body, "max_tokens", 1, max_tokens_limit)
    if endpoint is Endpoint.CHAT:  # the newer name wins when both are given
        max_tokens = _integer(body, "max_completion_tokens", 1, max_tokens_limit) or max_tokens
    elif max_tokens is None:
        max_tokens = min(COMPLETION_DEFAULT_MAX_TOKENS, max_tokens_limit)
    seed = _integer(body, "seed", -(2**63), 2**63 - 1)
    options = body.get("stream_options")
    if options is not None and not (isinstance(options, dict) and set(options) <= {"include_usage"}):
        raise _bad("'stream_options' must be an object with only 'include_usage'", "stream_options")
    return GenerationRequest(
        endpoint=endpoint,
        messages=_messages(body) if endpoint is Endpoint.CHAT else (),
        prompt=_prompt(body) if endpoint is Endpoint.COMPLETION else "",
        max_tokens=max_tokens,
        temperature=_number(body, "temperature", 0.0, 2.0, DEFAULT_TEMPERATURE),
        top_p=_number(body, "top_p", 0.0, 1.0, 1.0),
        seed=None if seed is None else seed % 2**32,  # runtimes seed with 32 bits
        stop=_stop(body),
        stream=_boolean(body, "stream"),
        include_usage=_boolean(options or {}, "include_usage"),
    )


# -- responses ----------------------------------------------------------------------------------------------
@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def to_dict(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens}


class ResponseBuilder:
    """Shapes text into one endpoint's response objects; one per request (fixed id and timestamp)."""

    def __init__(self, endpoint: Endpoint, model_id: str) -> None:
        self.endpoint, self.model = endpoint, model_id
        prefix = "chatcmpl" if endpoint is Endpoint.CHAT else "cmpl"
        self.id = f"{prefix}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self._frame: tuple[str, str] | None = None  # SSE text around a piece (see piece_event)

    def _envelope(self, obj: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model, "choices": choices}

    def complete(self, text: str, finish_reason: str, usage: Usage) -> dict[str, Any]:
        if self.endpoint is Endpoint.CHAT:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                      "finish_reason": finish_reason}
            out = self._envelope("chat.completion", [choice])
        else:
            out = self._envelope("text_completion", [{"index": 0, "text": text, "logprobs": None,
                                                      "finish_reason": finish_reason}])
        out["usage"] = usage.to_dict()
        return out

    def chunk(self, text: str | None, finish_reason: str | None = None, *, first: bool = False) -> dict[str, Any]:
        if self.endpoint is Endpoint.CHAT:
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if first else {}
            if text:
                delta["content"] = text
            return self._envelope("chat.completion.chunk", [{"index": 0, "delta": delta, "logprobs": None,
                                                             "finish_reason": finish_reason}])
        return self._envelope("text_completion", [{"index": 0, "text": text or "", "logprobs": None,
                                                   "finish_reason": finish_reason}])

    def piece_event(self, text: str) -> bytes:
        """``sse(self.chunk(text))`` for a non-empty piece, fast: one event per token is the hot
        path, so the envelope is serialized once per request and only the text per token."""
        if self._frame is None:
            marker = "\u0000piece\u0000"
            head, tail = sse(self.chunk(marker)).decode().split(json.dumps(marker, ensure_ascii=False), 1)
            self._frame = (head, tail)
        return f"{self._frame[0]}{json.dumps(text, ensure_ascii=False)}{self._frame[1]}".encode()

    def usage_chunk(self, usage: Usage) -> dict[str, Any]:
        obj = "chat.completion.chunk" if self.endpoint is Endpoint.CHAT else "text_completion"
        out = self._envelope(obj, [])
        out["usage"] = usage.to_dict()
        return out


def sse(data: dict[str, Any] | str) -> bytes:
    """One server-sent event; ``data`` is a JSON object or the literal ``[DONE]``."""
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"data: {payload}\n\n".encode()
