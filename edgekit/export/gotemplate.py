"""A renderer of the subset of Go's ``text/template`` that Ollama chat templates use.

Enough to check a translated TEMPLATE against the model's Jinja template without a Go
toolchain (the tests also run Go's own ``text/template`` on the same input): text, ``{{- ``
/ `` -}}`` trimming, ``range`` (with ``$i, $m :=``), ``if`` / ``else if`` / ``else``,
``$x := ...`` and ``$x = ...``, fields (``.A.B``, ``$m.A``, ``$.A``), string literals, and the
functions ``eq ne and or not index len`` plus parentheses. Anything else is a
:class:`GoTemplateError`, never a guess.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from edgekit.errors import EdgekitError


class GoTemplateError(EdgekitError):
    pass


_ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.S)
_TOKEN = re.compile(r'\s*("(?:[^"\\]|\\.)*"|\(|\)|:=|=|\$[A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*'
                    r"|\||\.[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*|\.|-?[0-9]+|[A-Za-z_][A-Za-z0-9_]*|,)")
_ESCAPES = {"n": "\n", "t": "\t", '"': '"', "\\": "\\", "r": "\r"}


@dataclass
class _Node:
    kind: str  # text | expr | if | range | set
    text: str = ""
    tokens: list[str] = field(default_factory=list)
    body: list[_Node] = field(default_factory=list)
    branches: list[tuple[list[str] | None, list[_Node]]] = field(default_factory=list)  # if: (cond, body)...
    names: list[str] = field(default_factory=list)  # range: $i, $m


def _lex(expr: str) -> list[str]:
    out: list[str] = []
    pos = 0
    expr = expr.strip()
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if m is None or m.end() == pos:
            raise GoTemplateError(f"Go template: cannot read {expr[pos:pos + 20]!r}")
        tok = m.group(1)
        if tok.startswith(".") and len(tok) > 1 and out and out[-1] == ")" and m.start(1) == pos:
            tok = "@" + tok  # (expr).Field: a field of the parenthesized value
        out.append(tok)
        pos = m.end()
    return out


def _pieces(source: str) -> Iterator[tuple[str, str]]:
    """("text", s) and ("action", s) in order, trimming applied."""
    pos, pending_trim = 0, False
    for m in _ACTION.finditer(source):
        text = source[pos:m.start()]
        if pending_trim:
            text = text.lstrip(" \t\r\n")
        if m.group(1):
            text = text.rstrip(" \t\r\n")
        if text:
            yield "text", text
        inner = m.group(2).strip()
        if not (inner.startswith("/*") and inner.endswith("*/")):
            yield "action", inner
        pending_trim = bool(m.group(3))
        pos = m.end()
    text = source[pos:]
    if pending_trim:
        text = text.lstrip(" \t\r\n")
    if text:
        yield "text", text


def parse(source: str) -> list[_Node]:
    root: list[_Node] = []
    stack: list[tuple[_Node | None, list[_Node]]] = [(None, root)]
    for kind, s in _pieces(source):
        body = stack[-1][1]
        if kind == "text":
            body.append(_Node("text", text=s))
            continue
        toks = _lex(s)
        if not toks:
            raise GoTemplateError("Go template: empty action")
        head = toks[0]
        if head == "if":
            node = _Node("if", branches=[(toks[1:], [])])
            body.append(node)
            stack.append((node, node.branches[0][1]))
        elif head == "range":
            names: list[str] = []
            rest = toks[1:]
            if ":=" in rest:
                i = rest.index(":=")
                names, rest = [t for t in rest[:i] if t != ","], rest[i + 1:]
            node = _Node("range", tokens=rest, names=names)
            body.append(node)
            stack.append((node, node.body))
        elif head == "else":
            owner = stack[-1][0]
            if owner is None or owner.kind != "if":
                raise GoTemplateError("Go template: else outside if (range ... else is not supported)")
            cond = toks[2:] if toks[1:2] == ["if"] else None
            owner.branches.append((cond, []))
            stack[-1] = (owner, owner.branches[-1][1])
        elif head == "end":
            if len(stack) == 1:
                raise GoTemplateError("Go template: end without a block")
            stack.pop()
        elif head in ("template", "define", "block", "with", "break", "continue"):
            raise GoTemplateError(f"Go template: {head!r} is not in the supported subset")
        elif len(toks) >= 2 and toks[0].startswith("$") and toks[1] in (":=", "="):
            body.append(_Node("set", tokens=toks))
        else:
            body.append(_Node("expr", tokens=toks))
    if len(stack) != 1:
        raise GoTemplateError("Go template: unclosed block (missing {{ end }})")
    return root


def _truth(v: Any) -> bool:
    return not (v is None or v is False or v == 0 or v == "" or (isinstance(v, list | dict | tuple) and not v))


def _text(v: Any) -> str:
    if v is None:
        return "<no value>"
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


class _Scope:
    def __init__(self, data: Any) -> None:
        self.root = data
        self.frames: list[dict[str, Any]] = [{"$": data}]

    def get(self, name: str) -> Any:
        for f in reversed(self.frames):
            if name in f:
                return f[name]
        raise GoTemplateError(f"Go template: undefined variable {name}")

    def assign(self, name: str, value: Any) -> None:
        for f in reversed(self.frames):
            if name in f:
                f[name] = value
                return
        raise GoTemplateError(f"Go template: undefined variable {name}")


def _field(obj: Any, path: list[str]) -> Any:
    for name in path:
        if not isinstance(obj, Mapping) or name not in obj:
            raise GoTemplateError(f"Go template: no field {name}")
        obj = obj[name]
    return obj


def _term(tok: str, dot: Any, scope: _Scope) -> Any:
    if tok.startswith('"'):
        return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(1)), tok[1:-1])
    if tok == ".":
        return dot
    if tok.startswith("."):
        return _field(dot, tok[1:].split("."))
    if tok.startswith("$"):
        name, *path = tok.split(".")
        return _field(scope.get(name), path)
    if re.fullmatch(r"-?[0-9]+", tok):
        return int(tok)
    if tok in ("true", "false"):
        return tok == "true"
    raise GoTemplateError(f"Go template: unknown function or value {tok!r}")


def _index(x: Any, *keys: Any) -> Any:
    for k in keys:
        x = x[k]
    return x


_FUNCS: dict[str, Any] = {
    "eq": lambda a, *bs: any(a == b for b in bs), "ne": lambda a, b: a != b,
    "and": lambda *xs: next((x for x in xs if not _truth(x)), xs[-1]),
    "or": lambda *xs: next((x for x in xs if _truth(x)), xs[-1]),
    "not": lambda x: not _truth(x), "index": _index, "len": len,
}


def _eval(tokens: list[str], dot: Any, scope: _Scope) -> Any:
    """A pipeline: ``a | f x`` is ``f x a`` (each stage's value is the next one's last argument)."""
    stages: list[list[str]] = [[]]
    depth = 0
    for t in tokens:
        depth += {"(": 1, ")": -1}.get(t, 0)
        if t == "|" and depth == 0:
            stages.append([])
        else:
            stages[-1].append(t)
    value: Any = _NOTHING
    for stage in stages:
        value = _command(stage, dot, scope, value)
    return value


_NOTHING = object()


def _command(tokens: list[str], dot: Any, scope: _Scope, piped: Any) -> Any:
    args, i = [], 0
    while i < len(tokens):
        t = tokens[i]
        if t == "(":
            depth, j = 1, i + 1
            while depth:
                if j >= len(tokens):
                    raise GoTemplateError("Go template: unbalanced parenthesis")
                depth += {"(": 1, ")": -1}.get(tokens[j], 0)
                j += 1
            value = _eval(tokens[i + 1:j - 1], dot, scope)
            if j < len(tokens) and tokens[j].startswith("@."):
                value, j = _field(value, tokens[j][2:].split(".")), j + 1
            args.append(("value", value))
            i = j
            continue
        args.append(("name", t) if t in _FUNCS else ("value", _term(t, dot, scope)))
        i += 1
    if piped is not _NOTHING:
        args.append(("value", piped))
    if not args:
        raise GoTemplateError("Go template: empty expression")
    kind, head = args[0]
    if kind == "name":
        return _FUNCS[head](*(v for _, v in args[1:]))
    if len(args) > 1:
        raise GoTemplateError("Go template: a value cannot take arguments")
    return head


def _run(nodes: list[_Node], dot: Any, scope: _Scope, out: list[str]) -> None:
    for n in nodes:
        if n.kind == "text":
            out.append(n.text)
        elif n.kind == "expr":
            out.append(_text(_eval(n.tokens, dot, scope)))
        elif n.kind == "set":
            value = _eval(n.tokens[2:], dot, scope)
            if n.tokens[1] == ":=":
                scope.frames[-1][n.tokens[0]] = value
            else:
                scope.assign(n.tokens[0], value)
        elif n.kind == "if":
            for cond, body in n.branches:
                if cond is None or _truth(_eval(cond, dot, scope)):
                    scope.frames.append({})
                    _run(body, dot, scope, out)
                    scope.frames.pop()
                    break
        elif n.kind == "range":
            seq = _eval(n.tokens, dot, scope)
            items = list(seq.items()) if isinstance(seq, Mapping) else list(enumerate(seq or []))
            for k, v in items:
                frame: dict[str, Any] = {}
                if len(n.names) == 1:
                    frame[n.names[0]] = v
                elif len(n.names) == 2:
                    frame[n.names[0]], frame[n.names[1]] = k, v
                scope.frames.append(frame)
                _run(n.body, v, scope, out)
                scope.frames.pop()


def render(source: str, data: Mapping[str, Any]) -> str:
    out: list[str] = []
    _run(parse(source), data, _Scope(data), out)
    return "".join(out)
