"""Render a model's chat template in a sandboxed Jinja environment.

Chat templates ship inside model files that come from anywhere; Jinja's default
environment lets a template walk Python internals (``''.__class__.__mro__`` ...). The
immutable sandbox refuses attribute access to internals and mutation of values, and we
raise a one-line error instead of executing such a template.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

from edgekit.errors import EdgekitError


class ChatTemplateError(EdgekitError):
    pass


class UnsafeChatTemplateError(ChatTemplateError):
    """The template tried to reach Python internals: the model's fault, not the caller's."""


def _raise(message: str) -> None:
    raise ChatTemplateError(f"chat template refused the conversation: {message}")


@lru_cache(maxsize=16)
def _compile(source: str) -> Any:
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    # Jinja's default (lenient) Undefined: templates routinely test variables that are not set.
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
    env.filters["tojson"] = _tojson
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise ChatTemplateError(f"chat template does not parse: {e.message} (line {e.lineno})") from e


def _tojson(value: Any, indent: int | None = None, ensure_ascii: bool = False) -> str:
    import json

    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii)


def render(template: str, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = True,
           bos_token: str = "", eos_token: str = "", **extra: Any) -> str:
    from jinja2.exceptions import SecurityError, TemplateError

    for m in messages:
        if "role" not in m or "content" not in m:
            raise ChatTemplateError("each chat message needs 'role' and 'content'")
    try:
        return str(_compile(template).render(messages=[dict(m) for m in messages],
                                             add_generation_prompt=add_generation_prompt,
                                             bos_token=bos_token, eos_token=eos_token, **extra))
    except SecurityError as e:
        raise UnsafeChatTemplateError(f"chat template tried an unsafe operation and was not run ({e})",
                                hint="the model's chat template is malicious or broken; pass a trusted template") from e
    except TemplateError as e:
        raise ChatTemplateError(f"chat template failed: {e}") from e


# Used when an artifact carries no template: plain ChatML, the most common fine-tune format.
FALLBACK_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
