"""The one Session API every runtime implements.

A backend supplies token-level operations (tokenize, token bytes, a generator of sampled
ids, end-of-generation test); everything at the text level -- incremental UTF-8-safe
detokenization, stop strings, chat templating, timing -- is shared here, so GGUF and ONNX
sessions behave identically.
"""

from __future__ import annotations

import codecs
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import chat_template


@dataclass(frozen=True)
class SamplingConfig:
    max_tokens: int = 128
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False  # keep generating past end-of-generation tokens (benchmarks, like llama-bench)


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    time_to_first_token_s: float = 0.0  # prompt processing + first sampled token
    total_s: float = 0.0

    @property
    def prompt_tokens_per_s(self) -> float:
        return self.prompt_tokens / self.time_to_first_token_s if self.time_to_first_token_s else 0.0

    @property
    def generation_tokens_per_s(self) -> float:
        # tokens after the first, over the time after the first: decode speed alone
        dt = self.total_s - self.time_to_first_token_s
        return (self.completion_tokens - 1) / dt if self.completion_tokens > 1 and dt > 0 else 0.0

    def to_dict(self) -> dict[str, float | int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "time_to_first_token_s": round(self.time_to_first_token_s, 6), "total_s": round(self.total_s, 6),
                "prompt_tokens_per_s": round(self.prompt_tokens_per_s, 2),
                "generation_tokens_per_s": round(self.generation_tokens_per_s, 2)}


@dataclass
class GenerationResult:
    text: str
    finish_reason: str  # "stop" (EOS or stop string) or "length"
    stats: GenerationStats = field(default_factory=GenerationStats)


class Session(ABC):
    """A loaded artifact. Use :func:`edgekit.load` to get one."""

    backend: str = "?"

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.last_stats = GenerationStats()
        self.last_finish_reason = "stop"

    # -- what a backend implements ------------------------------------------------------
    @abstractmethod
    def tokenize(self, text: str, add_special: bool = True) -> list[int]: ...

    @abstractmethod
    def token_bytes(self, ids: Sequence[int]) -> bytes: ...

    @abstractmethod
    def _sample(self, prompt_ids: list[int], cfg: SamplingConfig) -> Generator[int, None, None]:
        """Yield sampled token ids forever (the caller stops); KV cache handled by the backend."""

    @abstractmethod
    def is_end(self, token: int) -> bool: ...

    @abstractmethod
    def logits(self, ids: list[int]) -> np.ndarray:
        """Next-token logits for every position of ``ids``: shape [len(ids), vocab]."""

    @property
    @abstractmethod
    def context_length(self) -> int: ...

    @property
    def chat_template(self) -> str | None:
        return None

    @property
    def special_tokens(self) -> dict[str, str]:
        return {}

    def _piece_decoder(self) -> Callable[[int], bytes]:
        """A fresh per-generation decoder: the bytes each generated token adds, in order.

        Backends whose tokenizer only decodes to text (ONNX Runtime GenAI) override this
        with their own stateful stream decoder; bytes of a split UTF-8 character may then
        arrive with a later token, which :meth:`stream` handles the same way.
        """
        return lambda token: self.token_bytes([token])

    def close(self) -> None:  # noqa: B027 - optional hook
        pass

    def reset(self) -> None:  # noqa: B027 - optional hook
        """Forget cached context (KV cache prefix reuse), so the next prompt is evaluated in full."""

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- shared text-level API -----------------------------------------------------------
    def stream(self, prompt: str | list[int], **options: Any) -> Iterator[str]:
        """Yield text pieces as they are generated; stats land in ``last_stats``."""
        cfg = _config(options)
        ids = self.tokenize(prompt) if isinstance(prompt, str) else list(prompt)
        if not ids:
            ids = self.tokenize("")
        if len(ids) + cfg.max_tokens > self.context_length:
            from edgekit.errors import InputError

            raise InputError(f"prompt ({len(ids)} tokens) + max_tokens ({cfg.max_tokens}) exceeds the context "
                             f"length {self.context_length}",
                             hint="shorten the prompt, lower --max-tokens / max_tokens=, or raise --ctx / n_ctx=")
        stats = GenerationStats(prompt_tokens=len(ids))
        self.last_stats, self.last_finish_reason = stats, "length"
        # Holds back the bytes of a character split across tokens; invalid bytes become U+FFFD
        # at once. An incomplete character at the very end is dropped, never half-shown.
        utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        text_so_far = ""
        emitted = 0  # chars of text_so_far already yielded (held back while a stop string may start)
        hold = max((len(s) for s in cfg.stop), default=0)
        t0 = time.perf_counter()
        gen = self._sample(ids, cfg)
        piece_bytes = self._piece_decoder()
        cut_by_stop = False
        try:
            for token in gen:
                stats.completion_tokens += 1
                if stats.completion_tokens == 1:
                    stats.time_to_first_token_s = time.perf_counter() - t0
                if self.is_end(token) and not cfg.ignore_eos:
                    self.last_finish_reason = "stop"
                    break
                text_so_far += utf8.decode(piece_bytes(token))
                cut = _find_stop(text_so_far, cfg.stop, emitted)
                if cut is not None:
                    if cut > emitted:
                        yield text_so_far[emitted:cut]
                    self.last_finish_reason, cut_by_stop = "stop", True
                    break
                safe = len(text_so_far) - (hold - 1 if hold else 0)
                if safe > emitted:
                    yield text_so_far[emitted:safe]
                    emitted = safe
                if stats.completion_tokens >= cfg.max_tokens:
                    break
            if not cut_by_stop and len(text_so_far) > emitted:
                yield text_so_far[emitted:]
        finally:
            gen.close()
            stats.total_s = time.perf_counter() - t0

    def generate(self, prompt: str | list[int], **options: Any) -> GenerationResult:
        text = "".join(self.stream(prompt, **options))
        return GenerationResult(text, self.last_finish_reason, self.last_stats)

    def render_chat(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True) -> str:
        template = self.chat_template or chat_template.FALLBACK_TEMPLATE
        sp = self.special_tokens
        return chat_template.render(template, messages, add_generation_prompt=add_generation_prompt,
                                    bos_token=sp.get("bos", ""), eos_token=sp.get("eos", ""))

    def chat_ids(self, messages: Sequence[Mapping[str, Any]]) -> list[int]:
        """Prompt token ids of a conversation (template rendered, ready for the next reply)."""
        # The template writes BOS itself when the model wants it: don't add another.
        return self.tokenize(self.render_chat(messages), add_special=False)

    def chat_stream(self, messages: Sequence[Mapping[str, Any]], **options: Any) -> Iterator[str]:
        return self.stream(self.chat_ids(messages), **options)

    def chat(self, messages: Sequence[Mapping[str, Any]], **options: Any) -> GenerationResult:
        return self.generate(self.chat_ids(messages), **options)


# what each generation option must be, said once for the error and its fix (CLI flag / keyword)
_SAMPLING_RULES: dict[str, tuple[Callable[[Any], bool], str, str]] = {
    "max_tokens": (lambda v: _is_int(v) and v >= 1, "an integer >= 1", "--max-tokens / max_tokens=256"),
    "temperature": (lambda v: _is_number(v) and v >= 0, "a number >= 0 (0 = greedy)", "--temperature / temperature=0"),
    "top_p": (lambda v: _is_number(v) and 0 < v <= 1, "a number in (0, 1]", "--top-p / top_p=1.0 (off)"),
    "top_k": (lambda v: _is_int(v) and v >= 0, "an integer >= 0 (0 = off)", "top_k=0 (off)"),
    "seed": (lambda v: v is None or (_is_int(v) and 0 <= v < 2**32), "an integer in [0, 2**32) or None",
             "--seed / seed=0, or leave it out"),
    "stop": (lambda v: isinstance(v, tuple) and all(isinstance(s, str) and s for s in v), "non-empty strings",
             "--stop / stop= with non-empty text, or leave it out"),
    "ignore_eos": (lambda v: isinstance(v, bool), "True or False", "ignore_eos=False"),
}
SAMPLING_OPTIONS: tuple[str, ...] = tuple(_SAMPLING_RULES)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _config(options: Mapping[str, Any]) -> SamplingConfig:
    """The generation options of stream/generate/chat, checked: a bad value is an InputError
    (one line naming the option and a valid value), never a ValueError from deep inside."""
    from edgekit.errors import InputError, UnknownChoiceError

    opts = dict(options)
    for name in opts:
        if name not in _SAMPLING_RULES:
            raise UnknownChoiceError("generation option", name, SAMPLING_OPTIONS)
    stop = opts.pop("stop", ()) or ()
    opts["stop"] = (stop,) if isinstance(stop, str) else tuple(stop) if isinstance(stop, list | tuple) else stop
    for name, value in opts.items():
        ok, must, fix = _SAMPLING_RULES[name]
        if not ok(value):
            raise InputError(f"{name} must be {must}, not {value!r}", hint=f"pass {fix}")
    return SamplingConfig(**opts)


def _find_stop(text: str, stops: tuple[str, ...], start: int) -> int | None:
    best: int | None = None
    for s in stops:
        i = text.find(s, max(0, start - len(s)))
        if i != -1 and (best is None or i < best):
            best = i
    return best
