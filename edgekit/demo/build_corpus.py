"""Build the demo corpus from the Python standard library's own source text.

Run ``python -m edgekit.demo.build_corpus`` to (re)write ``edgekit/data/corpus.txt`` and
``edgekit/data/heldout.txt``. The text is the docstrings (English prose) and small functions
(Python code) of a fixed list of pure-Python standard-library modules. The sources are *parsed*
with :mod:`ast`, never imported, so the result does not depend on the platform or on which
C extensions are present: the same CPython version gives byte-identical files everywhere.
(Docstrings change a little between CPython releases; the files shipped with edgekit were
built with CPython 3.11.) The text is under the Python Software Foundation License.

Format: documents are separated by one blank line (``text.split("\\n\\n")`` gives the
documents back) and never contain a blank line themselves. A document is either one
docstring, cleaned (each prose paragraph on one line, whitespace collapsed; literal blocks
such as doctests keep their lines), or the source of one small function or method,
dedented, with its comments and without blank lines.

The held-out split is by document: every 13th document (in the fixed module order, after
de-duplication) goes to heldout.txt, so the split is deterministic, spread over all modules,
and the two files share no document.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import logging
import re
import sys
import sysconfig
import textwrap
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent.parent / "data"

# Fixed order. Only modules that ship with every CPython 3.11 source tree and that
# distributions do not split into optional packages (no tkinter, idlelib, lib2to3,
# distutils, ensurepip, venv, test).
MODULES: tuple[str, ...] = (
    "abc", "argparse", "ast", "base64", "bisect", "calendar", "cmd", "code", "codecs",
    "collections", "colorsys", "compileall", "concurrent.futures._base",
    "concurrent.futures.process", "concurrent.futures.thread", "configparser", "contextlib", "copy",
    "copyreg", "csv", "dataclasses", "datetime", "difflib", "dis", "enum", "filecmp", "fileinput",
    "fnmatch", "fractions", "functools", "genericpath", "getopt", "gettext", "glob", "graphlib",
    "gzip", "hashlib", "heapq", "hmac", "html", "html.parser", "http.client", "http.cookies",
    "http.server", "importlib.abc", "importlib.util", "inspect", "io", "json", "json.decoder",
    "json.encoder", "keyword", "linecache", "locale", "logging", "logging.config", "lzma",
    "mimetypes", "modulefinder", "numbers", "operator", "os", "pathlib", "pickle", "pkgutil",
    "plistlib", "posixpath", "pprint", "profile", "pstats", "py_compile", "queue", "quopri",
    "random", "re", "reprlib", "rlcompleter", "runpy", "sched", "secrets", "selectors", "shelve",
    "shlex", "shutil", "signal", "site", "socket", "socketserver", "sqlite3.dump", "stat",
    "statistics", "string", "subprocess", "symtable", "sysconfig", "tabnanny", "tarfile",
    "tempfile", "textwrap", "threading", "timeit", "tokenize", "tomllib._parser", "trace",
    "traceback", "tracemalloc", "types", "typing", "unittest.case", "unittest.loader",
    "unittest.main", "unittest.result", "unittest.runner", "unittest.suite", "urllib.parse",
    "urllib.request", "urllib.robotparser", "uu", "uuid", "warnings", "weakref", "webbrowser",
    "xml.dom.minidom", "xml.etree.ElementTree", "xml.sax.saxutils", "xml.sax.xmlreader", "zipapp",
    "zipfile", "zoneinfo._zoneinfo"
)

HELDOUT_EVERY = 13  # documents 6, 19, 32, ... (~8%, spread over all modules) are held out
HELDOUT_OFFSET = 6

MIN_PARAGRAPH_CHARS = 25
MIN_DOC_CHARS = 80
MAX_DOC_CHARS = 4000
# Small functions (this many non-blank source lines, docstring included) may become code documents.
CODE_MIN_LINES = 4
CODE_MAX_LINES = 24
CODE_MAX_LINE_CHARS = 100
CODE_EVERY = 10

_WS = re.compile(r"[ \t\r\f\v]+")
_DefNode = ast.FunctionDef | ast.AsyncFunctionDef
_DocNode = ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Corpus:
    train: list[str]
    heldout: list[str]


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def module_file(name: str, root: Path) -> Path:
    base = root.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"standard-library module {name!r} has no source under {root}")


def _printable(text: str) -> bool:
    return all(ch == "\n" or not unicodedata.category(ch).startswith("C") for ch in text)


def _is_literal(lines: list[str]) -> bool:
    """A paragraph whose line structure matters: doctests, indented code, tables, lists."""
    return any(
        line.startswith((" ", ">>>", "...", "$ ", "- ", "* ", "+-", "==="))
        or re.match(r"\d+[.)] ", line) is not None
        for line in lines
    )


def clean_docstring(doc: str) -> str:
    """Paragraphs of a cleaned docstring, one per line; empty when nothing worth keeping."""
    doc = doc.expandtabs(4).replace("\r\n", "\n").replace("\r", "\n")
    paragraphs: list[str] = []
    for block in re.split(r"\n\s*\n", doc):
        lines = [line.rstrip() for line in block.split("\n") if line.strip()]
        if not lines:
            continue
        if _is_literal(lines):
            indent = min(len(line) - len(line.lstrip(" ")) for line in lines)
            text = "\n".join(line[indent:] for line in lines)
        else:
            text = _WS.sub(" ", " ".join(line.strip() for line in lines)).strip()
        if len(text) < MIN_PARAGRAPH_CHARS or not _printable(text):
            continue
        paragraphs.append(text)
    return "\n".join(paragraphs)


def _code_document(node: _DefNode, source_lines: list[str]) -> str | None:
    start = min([node.lineno] + [d.lineno for d in node.decorator_list])
    end = node.end_lineno or node.lineno
    lines = [line.rstrip() for line in source_lines[start - 1 : end]]
    lines = [line.expandtabs(4) for line in lines if line.strip()]
    if not CODE_MIN_LINES <= len(lines) <= CODE_MAX_LINES:
        return None
    if any(len(line) > CODE_MAX_LINE_CHARS for line in lines):
        return None
    text = textwrap.dedent("\n".join(lines))
    return text if _printable(text) else None


def _walk_defs(body: list[ast.stmt]) -> Iterator[_DocNode]:
    """Classes and functions in source order, nested ones right after their parent."""
    for node in body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node
            yield from _walk_defs(node.body)


def module_documents(path: Path, counter: list[int]) -> Iterator[str]:
    """Documents of one module. ``counter`` counts eligible small functions across modules;
    every CODE_EVERY-th one becomes a code document (docstring included, as in the source)."""
    source = path.read_text(encoding="utf-8")
    tree = ast.parse(source, filename=str(path))
    source_lines = source.splitlines()
    nodes: list[_DocNode] = [tree, *_walk_defs(tree.body)]
    for node in nodes:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            code = _code_document(node, source_lines)
            if code is not None:
                counter[0] += 1
                if counter[0] % CODE_EVERY == 0:
                    yield code
                    continue  # its docstring is already part of the code document
        doc = ast.get_docstring(node, clean=True)
        if doc:
            yield clean_docstring(doc)


def build(root: Path | None = None) -> Corpus:
    root = root or stdlib_dir()
    seen: set[str] = set()
    train: list[str] = []
    heldout: list[str] = []
    counter = [0]
    for name in MODULES:
        for doc in module_documents(module_file(name, root), counter):
            if not MIN_DOC_CHARS <= len(doc) <= MAX_DOC_CHARS or doc in seen:
                continue
            held = len(seen) % HELDOUT_EVERY == HELDOUT_OFFSET
            seen.add(doc)
            (heldout if held else train).append(doc)
    return Corpus(train=train, heldout=heldout)


def _write(path: Path, docs: list[str]) -> bytes:
    data = ("\n\n".join(docs) + "\n").encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, default=DATA_DIR, help="output directory (default: %(default)s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if sys.version_info[:2] != (3, 11):
        log.warning("the shipped corpus was built with CPython 3.11; this is %s, so the text will differ",
                    sys.version.split()[0])
    corpus = build()
    for fname, docs in (("corpus.txt", corpus.train), ("heldout.txt", corpus.heldout)):
        data = _write(args.out / fname, docs)
        code = sum(1 for d in docs if d.startswith(("def ", "async def ", "@")))
        log.info(f"{args.out / fname}: {len(data):,} bytes, {len(docs)} documents ({code} code), "
              f"sha256 {hashlib.sha256(data).hexdigest()[:16]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
