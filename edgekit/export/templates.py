"""Chat templates of the fixed-shape families, in Jinja (as their tokenizers ship them) and in
Ollama's Go-template syntax.

A model's Jinja template is *recognised* by the markers it writes (:func:`detect_family`);
the translation is then the family's Go template, and it is only used if it renders the same
text as the model's own template on a set of conversations (:func:`translate`): a fine-tune
whose template was edited gets no TEMPLATE rather than a wrong one.

What the Go templates assume of Ollama (its ``template`` package): ``.Messages`` holds the
conversation, system message included (Ollama puts the Modelfile's SYSTEM first when the
request has none); the runner adds BOS itself when the GGUF says so (``add_bos_token``), so
the Jinja side is rendered with ``bos_token=""``; the prompt always ends ready for the
assistant's reply.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FamilyTemplate:
    name: str
    markers: tuple[str, ...]  # every one appears in the family's Jinja template
    jinja: str  # the template as the family's tokenizers ship it (tool calls left out)
    go: str  # the same in Ollama's Go-template syntax; {eos} is the eos token's text
    end_of_turn: str  # the token that ends an assistant turn
    system: bool  # whether the family has a system role


_CHATML_GO = (
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"
)
_LLAMA3_GO = (
    "{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>"
    "{{- end }}<|start_header_id|>assistant<|end_header_id|>\n\n"
)
# Gemma has no system role: the system message opens the first user turn
_GEMMA_GO = (
    "{{- $system := \"\" }}{{- range $i, $m := .Messages }}{{- if eq $m.Role \"system\" }}"
    "{{- $system = $m.Content }}{{- else }}<start_of_turn>{{ if eq $m.Role \"assistant\" }}model"
    "{{ else }}{{ $m.Role }}{{ end }}\n{{ if $system }}{{ $system }}\n\n{{ $system = \"\" }}{{ end }}"
    "{{ $m.Content }}<end_of_turn>\n{{ end }}{{- end }}<start_of_turn>model\n"
)
_PHI3_GO = "{{- range .Messages }}<|{{ .Role }}|>\n{{ .Content }}<|end|>\n{{ end }}<|assistant|>\n"
_MISTRAL_GO = (
    "{{- range .Messages }}{{- if eq .Role \"user\" }}[INST] {{ .Content }} [/INST]"
    "{{- else if eq .Role \"assistant\" }}{{ .Content }}{eos}{{- end }}{{- end }}"
)

FAMILY_TEMPLATES: dict[str, FamilyTemplate] = {t.name: t for t in (
    FamilyTemplate(
        "chatml", ("<|im_start|>", "<|im_end|>"),
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + "
        "'\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}",
        _CHATML_GO, "<|im_end|>", True),
    FamilyTemplate(
        "llama3", ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
        "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>"
        "\n\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}"
        "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}",
        _LLAMA3_GO, "<|eot_id|>", True),
    FamilyTemplate(
        "gemma", ("<start_of_turn>", "<end_of_turn>"),
        "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set first_user_prefix = messages[0]['content'] + "
        "'\n\n' %}{% set loop_messages = messages[1:] %}{% else %}{% set first_user_prefix = '' %}"
        "{% set loop_messages = messages %}{% endif %}{% for message in loop_messages %}"
        "{% if message['role'] == 'assistant' %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
        "{% endif %}{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') + "
        "message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}"
        "{{ '<start_of_turn>model\n' }}{% endif %}",
        _GEMMA_GO, "<end_of_turn>", True),
    FamilyTemplate(
        "phi3", ("<|user|>", "<|assistant|>", "<|end|>"),
        "{% for message in messages %}{% if message['role'] == 'system' %}{{ '<|system|>\n' + message['content'] + "
        "'<|end|>\n' }}{% elif message['role'] == 'user' %}{{ '<|user|>\n' + message['content'] + '<|end|>\n' }}"
        "{% elif message['role'] == 'assistant' %}{{ '<|assistant|>\n' + message['content'] + '<|end|>\n' }}"
        "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}",
        _PHI3_GO, "<|end|>", True),
    FamilyTemplate(
        "mistral", ("[INST]", "[/INST]"),
        "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
        "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
        "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}{% else %}"
        "{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}",
        _MISTRAL_GO, "</s>", False),
)}

# Conversations a translation must render exactly as the model's own template does
_SYSTEM = {"role": "system", "content": "You are terse."}
CHECK_CONVERSATIONS: tuple[tuple[dict[str, str], ...], ...] = (
    ({"role": "user", "content": "Hi there"},),
    ({"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4."},
     {"role": "user", "content": "And 3+3?"}),
    ({"role": "user", "content": "Line one\nline two"}, {"role": "assistant", "content": "Yes: {x} & <y>"},
     {"role": "user", "content": "ok"}, {"role": "assistant", "content": "Done"}, {"role": "user", "content": "bye"}),
)
CHECK_WITH_SYSTEM: tuple[tuple[dict[str, str], ...], ...] = tuple((_SYSTEM, *c) for c in CHECK_CONVERSATIONS)


def detect_family(template: str) -> FamilyTemplate | None:
    """The family whose markers the template writes (the most specific match), or None."""
    found = [t for t in FAMILY_TEMPLATES.values() if all(m in template for m in t.markers)]
    return max(found, key=lambda t: len(t.markers), default=None)


def go_template(family: FamilyTemplate, eos: str) -> str:
    return family.go.replace("{eos}", eos)


def render_jinja(template: str, messages: Sequence[Mapping[str, Any]], eos: str) -> str:
    from edgekit.runtimes.chat_template import render

    return render(template, messages, add_generation_prompt=True, bos_token="", eos_token=eos)


def render_go(template: str, messages: Sequence[Mapping[str, Any]], system: str = "") -> str:
    """Ollama's rendering: ``.Messages`` (the Modelfile's system first when there is none), ``.System``."""
    from .gotemplate import render

    msgs = [dict(m) for m in messages]
    if system and not any(m["role"] == "system" for m in msgs):
        msgs.insert(0, {"role": "system", "content": system})
    return render(template, {"Messages": [{"Role": m["role"], "Content": m["content"]} for m in msgs],
                             "System": next((m["content"] for m in msgs if m["role"] == "system"), ""),
                             "Prompt": msgs[-1]["content"] if msgs and msgs[-1]["role"] == "user" else ""})


@dataclass(frozen=True)
class Translation:
    family: str | None
    go: str | None  # None: no faithful translation
    reason: str  # why not, or what was checked


def translate(template: str, eos: str, system: str = "") -> Translation:
    """The Ollama template for a model's Jinja ``template``, checked conversation by conversation
    (``system``: the Modelfile's SYSTEM, which Ollama puts first when a conversation has none)."""
    from edgekit.runtimes.chat_template import ChatTemplateError

    family = detect_family(template)
    if family is None:
        return Translation(None, None, "its chat template is not one of the fixed-shape families "
                                       f"({', '.join(FAMILY_TEMPLATES)})")
    go = go_template(family, eos)
    cases = CHECK_CONVERSATIONS + (CHECK_WITH_SYSTEM if family.system else ())
    for conv in cases:
        try:
            want = render_jinja(template, conv, eos)
        except ChatTemplateError as e:
            return Translation(family.name, None, f"its {family.name}-style chat template refused a check "
                                                  f"conversation ({e.message})")
        got = render_go(go, conv, system)
        if got != want:
            at = next((i for i, (a, b) in enumerate(zip(want, got, strict=False)) if a != b), min(len(want), len(got)))
            return Translation(family.name, None, f"its chat template looks {family.name} but renders differently "
                                                  f"from the {family.name} translation (first difference at "
                                                  f"character {at}: {want[at:at + 20]!r} vs {got[at:at + 20]!r})")
    return Translation(family.name, go, f"{family.name}: same text on {len(cases)} conversations")
