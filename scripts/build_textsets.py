"""Build edgekit's packaged text sets: a calibration mix and an evaluation mix of prose, code and dialogue.

    python scripts/build_textsets.py [--cache /tmp/textsets-cache] [--out edgekit/data/textsets]

Every source is redistributable and available offline: Debian packages (fetched with
``apt-get download`` and unpacked with ``dpkg-deb -x``, so nothing is installed) whose text is
public domain or under a free licence. The script writes

* ``calibration.jsonl`` and ``evaluation.jsonl``: one document a line,
  ``{"domain": "prose" | "code" | "dialogue", "source": NAME, "text": ...}``;
* ``SOURCES.md``: each source with its Debian package and version, licence, and the
  documents and bytes it gave to each file.

The split is by document: each source's documents are ordered by the SHA-256 of their text
(deterministic, independent of the order extraction found them in) and taken in turn for the
evaluation mix until its budget is met, then for the calibration mix. A document joins a
mix only if it shares no word 13-gram with the other mix or with the demo model's text
(``edgekit/data/corpus.txt``, its training text, and ``heldout.txt``), so neither mix can
flatter a measurement on the other. The same package versions give byte-identical files; a
different version is reported (the text then differs slightly).
"""

from __future__ import annotations

import argparse
import ast
import gzip
import hashlib
import json
import logging
import re
import subprocess
import textwrap
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "edgekit" / "data"
DEFAULT_OUT = DATA / "textsets"

log = logging.getLogger("build_textsets")

# Characters of text per domain in each mix. The evaluation mix must give >= 8k scored
# positions (windows of 512, second half scored) to a 4-chars-per-token LLM tokenizer:
# 3 x 55 KB ~ 40k tokens. Both stay a few hundred KB (package data).
BUDGET = {"calibration": 110_000, "evaluation": 55_000}
NGRAM = 13  # words: a shared 13-gram means shared text (the GPT-3 contamination convention)
MIN_DOC, MAX_DOC = 200, 3000  # characters
# The versions the shipped files were built from (a different one changes the text a little).
PINNED = {
    "jargon-text": "4.4.7-4.1",
    "python3.11-doc": "3.11.2-6+deb12u9",
    "libpython3.11-stdlib": "3.11.2-6+deb12u9",
    "libpython3.11-dev": "3.11.2-6+deb12u9",
    "wesnoth-1.16-httt": "1:1.16.9-1",
    "renpy-thequestion": "8.0.3+dfsg-1",
}


@dataclass
class Package:
    name: str
    version: str
    sha256: str
    root: Path


@dataclass
class Source:
    name: str
    domain: str
    package: str
    licence: str
    what: str  # one line for SOURCES.md
    weight: float  # share of its domain's budget
    extract: Callable[[Path], Iterator[str]]
    docs: dict[str, list[str]] = field(default_factory=dict)


def fetch(name: str, cache: Path) -> Package:
    """Download (not install) a Debian package and unpack it under ``cache``."""
    cache.mkdir(parents=True, exist_ok=True)
    debs = sorted(cache.glob(f"{name}_*.deb"))
    if not debs:
        subprocess.run(["apt-get", "download", name], cwd=cache, check=True, capture_output=True)
        debs = sorted(cache.glob(f"{name}_*.deb"))
    deb = debs[-1]
    version = subprocess.run(["dpkg-deb", "-f", str(deb), "Version"], check=True, capture_output=True,
                             text=True).stdout.strip()
    if PINNED.get(name) != version:
        log.warning("%s is version %s, the shipped text sets were built from %s: the text will differ",
                    name, version, PINNED.get(name))
    root = cache / f"{name}-root"
    if not root.is_dir():
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    return Package(name, version, hashlib.sha256(deb.read_bytes()).hexdigest(), root)


# --------------------------------------------------------------------------- text helpers

_WS = re.compile(r"[ \t]+")


def _clean(text: str) -> str:
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").replace("\t", "    ").split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip("\n")


def _pieces(paragraphs: list[str], head: str = "") -> Iterator[str]:
    """Paragraphs grouped into documents of at most MAX_DOC characters (``head`` opens each)."""
    cur: list[str] = [head] if head else []
    size = len(head)
    for p in paragraphs:
        if cur and size + len(p) > MAX_DOC and size >= MIN_DOC:
            yield "\n\n".join(cur)
            cur, size = ([head] if head else []), len(head)
        cur.append(p)
        size += len(p) + 2
    if size >= MIN_DOC:
        yield "\n\n".join(cur)


# reST inline markup -> its text
_ROLE = re.compile(r":[\w:.+-]+:`([^`]*)`")
_LINK = re.compile(r"`([^`<]+?)\s*<[^>]*>`__?")
_REF = re.compile(r"`([^`]+)`__?")
_LIT = re.compile(r"``([^`]+)``")
_EMPH = re.compile(r"(\*\*?)([^*\s][^*]*?)\1")
_CODE_DIRECTIVES = (".. code-block::", ".. code::", ".. sourcecode::", ".. testcode::", ".. doctest::",
                    ".. testoutput::")
_LIST_ITEM = re.compile(r"^(\d+\.|#\.|[*+-]) ")
_HEADING = re.compile(r"^([=\-~^*#\"'+`])\1{2,}\s*$")


def rst_inline(text: str) -> str:
    def role(m: re.Match[str]) -> str:
        inner = m.group(1)
        inner = re.sub(r"\s*<[^>]*>$", "", inner) if "<" in inner and not inner.startswith("<") else inner
        return inner.lstrip("~!")

    text = _ROLE.sub(role, text)
    text = _LINK.sub(r"\1", text)
    text = _LIT.sub(r"\1", text)
    text = _REF.sub(r"\1", text)
    text = _EMPH.sub(r"\2", text)
    text = text.replace("\\", "")
    return text[:-2] + ":" if text.endswith("::") and not text.endswith(" ::") else text.removesuffix(" ::")


@dataclass
class RstSection:
    title: str
    blocks: list[tuple[str, str]]  # ("prose" | "literal", text)


def rst_sections(text: str) -> list[RstSection]:
    """Sections of a reST file: prose paragraphs (inline markup resolved) and literal blocks.

    Directives (``.. note::`` and the like) and their bodies are dropped, except code blocks,
    whose bodies are literal; tables are dropped."""
    lines = text.replace("\t", "    ").split("\n")
    sections = [RstSection("", [])]
    i, literal_next = 0, False
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
            continue
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if _HEADING.match(line) and i + 2 < len(lines) and _HEADING.match(lines[i + 2]):  # over+underline
            sections.append(RstSection(rst_inline(nxt.strip()), []))
            i += 3
            continue
        if not line.startswith(" ") and _HEADING.match(nxt) and len(nxt.strip()) >= len(line.strip()) - 2:
            sections.append(RstSection(rst_inline(line.strip()), []))
            i += 2
            continue
        block = [line]
        indent = len(line) - len(line.lstrip())
        j = i + 1
        if indent or line.startswith(".."):
            # an indented block (literal, or a directive body) or a directive: up to the next
            # line indented no deeper than the block's first line
            least = indent if indent else 1  # a directive's body is indented; a block's lines at least as much
            while j < len(lines) and (not lines[j].strip() or len(lines[j]) - len(lines[j].lstrip()) >= least):
                block.append(lines[j])
                j += 1
            body = textwrap.dedent("\n".join(block[1:] if line.startswith("..") else block)).strip("\n")
            code = line.startswith(_CODE_DIRECTIVES)
            if code:
                body = "\n".join(b for b in body.split("\n") if not b.lstrip().startswith(":"))
                body = textwrap.dedent(body).strip("\n")
            if (indent and (literal_next or body.startswith(">>>"))) or (code and body):
                sections[-1].blocks.append(("literal", body))
            elif indent:  # a block quote or a list item's further paragraphs: prose
                for p in re.split(r"\n\s*\n", body):
                    if p.strip() and not p.lstrip().startswith(("..", "+-", "==")):
                        sections[-1].blocks.append(("prose", _WS.sub(" ", rst_inline(" ".join(
                            q.strip() for q in p.split("\n")))).strip()))
            literal_next = False
            i = j
            continue
        item = _LIST_ITEM.match(line) is not None  # its continuation lines are indented
        while j < len(lines) and lines[j].strip() and (item or not lines[j].startswith(" ")) \
                and not _HEADING.match(lines[j]):
            block.append(lines[j])
            j += 1
        para = " ".join(b.strip() for b in block)
        literal_next = para.endswith("::")
        if not para.startswith(("+-", "==", "|")) and para.strip(":"):
            sections[-1].blocks.append(("prose", _WS.sub(" ", rst_inline(para)).strip()))
        i = j
    return [s for s in sections if s.blocks]


# --------------------------------------------------------------------------- extractors

def jargon_entries(root: Path) -> Iterator[str]:
    """Glossary entries of the Jargon File (public domain): ``term: part of speech`` and its prose."""
    text = gzip.decompress((root / "usr/share/doc/jargon-text/jargon.txt.gz").read_bytes()).decode("utf-8")
    entry = re.compile(r"^   :(?P<term>[^:\n]+):(?P<pos>[^\n]*)$", re.M)
    heads = list(entry.finditer(text))
    for h, nxt in zip(heads, [*heads[1:], None], strict=True):
        body = text[h.end(): nxt.start() if nxt else len(text)]
        paras = [_WS.sub(" ", " ".join(ln.strip() for ln in p.split("\n"))).strip()
                 for p in re.split(r"\n\s*\n", body)]
        paras = [re.sub(r"\{([^}]+)\}", r"\1", p) for p in paras if p]
        if not paras or any(p.startswith(("│", "┌", "└", "---")) for p in paras):
            continue
        head = f"{h.group('term').strip()}{(': ' + h.group('pos').strip()) if h.group('pos').strip() else ''}"
        yield from _pieces(paras, head)


_DOCS = "usr/share/doc/python3.11/html/_sources"


def python_docs_prose(root: Path) -> Iterator[str]:
    """Prose sections of the Python tutorial and HOWTOs (PSF licence), literal blocks dropped."""
    base = root / _DOCS
    for path in sorted([*base.glob("tutorial/*.rst.txt"), *base.glob("howto/*.rst.txt")]):
        for sec in rst_sections(path.read_text(encoding="utf-8")):
            # a paragraph ending in ':' introduces an example, which the prose domain drops
            paras = [t for kind, t in sec.blocks if kind == "prose" and len(t) >= 60 and not t.endswith(":")]
            yield from _pieces(paras, sec.title)


def python_faq(root: Path) -> Iterator[str]:
    """The Python FAQs (PSF licence) as question-and-answer exchanges, code in the answers kept."""
    for path in sorted((root / _DOCS / "faq").glob("*.rst.txt")):
        for sec in rst_sections(path.read_text(encoding="utf-8")):
            if not sec.title.endswith("?"):
                continue
            answer = [textwrap.indent(t, "    ") if kind == "literal" else t for kind, t in sec.blocks]
            doc = f"Q: {sec.title}\nA: " + "\n\n".join(answer)
            if MIN_DOC <= len(doc) <= 2 * MAX_DOC:
                yield doc


# Standard-library modules that are *not* in the demo corpus (edgekit/demo/build_corpus.py
# MODULES): the code domain is then new text for the demo model as well.
PY_MODULES = (
    "_pydecimal", "_pyio", "aifc", "asynchat", "asyncio/base_events", "asyncio/streams", "asyncio/tasks",
    "bdb", "cgi", "cProfile", "curses/textpad", "dbm/dumb", "doctest", "ftplib", "imaplib", "mailbox",
    "mailcap", "multiprocessing/connection", "multiprocessing/pool", "netrc", "nntplib", "pdb",
    "pickletools", "poplib", "pyclbr", "pydoc", "smtplib", "sunau", "telnetlib", "turtle", "wave", "xdrlib",
)


def python_code(root: Path) -> Iterator[str]:
    """Top-level functions and class methods of standard-library modules, as written (PSF licence)."""
    for mod in PY_MODULES:
        path = root / "usr/lib/python3.11" / f"{mod}.py"
        source = path.read_text(encoding="utf-8")
        lines = source.split("\n")
        tree = ast.parse(source)
        defs = (ast.FunctionDef, ast.AsyncFunctionDef)
        nodes: list[ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef] = []
        for top in tree.body:  # a long class contributes its methods one by one
            if isinstance(top, ast.ClassDef) and (top.end_lineno or 0) - top.lineno > 60:
                nodes.extend(n for n in top.body if isinstance(n, defs))
            elif isinstance(top, (*defs, ast.ClassDef)):
                nodes.append(top)
        for node in nodes:
            start = min([node.lineno] + [d.lineno for d in node.decorator_list])
            text = textwrap.dedent("\n".join(lines[start - 1: node.end_lineno]))
            if 6 <= text.count("\n") <= 70 and MIN_DOC <= len(text) <= MAX_DOC:
                yield _clean(text)


def c_headers(root: Path) -> Iterator[str]:
    """CPython's C headers (PSF licence): runs of declarations, macros and inline functions."""
    inc = root / "usr/include/python3.11"
    for path in sorted([*inc.glob("*.h"), *inc.glob("cpython/*.h"), *inc.glob("internal/*.h")]):
        text = _clean(path.read_text(encoding="utf-8", errors="replace"))
        yield from _pieces([b for b in text.split("\n\n") if b.strip() and len(b) < MAX_DOC])


_JS = ("doctools.js", "searchtools.js", "sphinx_highlight.js", "language_data.js", "copybutton.js",
       "menu.js", "sidebar.js", "changelog_search.js", "_sphinx_javascript_frameworks_compat.js")


def javascript(root: Path) -> Iterator[str]:
    """The documentation's own JavaScript (Sphinx: BSD-2-Clause; CPython's theme: PSF licence)."""
    for name in _JS:
        text = _clean((root / "usr/share/doc/python3.11/html/_static" / name).read_text(encoding="utf-8"))
        yield from _pieces([b for b in text.split("\n\n") if b.strip()])


_WML_MESSAGE = re.compile(r"\[message\](.*?)\[/message\]", re.S)
_WML_SPEAKER = re.compile(r'^\s*speaker\s*=\s*"?([^"\n]+?)"?\s*$', re.M)
_WML_TEXT = re.compile(r'^\s*message\s*=\s*_?\s*"((?:[^"]|"")*)"', re.M)
SPEAKERS = {"narrator": "Narrator", "unit": "Soldier", "second_unit": "Stranger"}


def wesnoth_dialogue(root: Path) -> Iterator[str]:
    """Scenes of the Heir to the Throne campaign (GPL-2.0-or-later): who says what, in order."""
    base = root / "usr/share/games/wesnoth/1.16/data/campaigns/Heir_To_The_Throne/scenarios"
    for path in sorted(base.glob("*.cfg")):
        for event in path.read_text(encoding="utf-8").split("[event]"):
            turns: list[str] = []
            for m in _WML_MESSAGE.finditer(event):
                sp, tx = _WML_SPEAKER.search(m.group(1)), _WML_TEXT.search(m.group(1))
                if not sp or not tx or "$" in tx.group(1) or "{" in tx.group(1):
                    continue
                said = _WS.sub(" ", re.sub(r"<[^>]+>", "", tx.group(1).replace('""', '"'))).strip()
                turns.append(f"{SPEAKERS.get(sp.group(1), sp.group(1))}: {said}")
            if len(turns) >= 3:
                yield from _pieces(turns) if sum(map(len, turns)) > MAX_DOC else (
                    ["\n".join(turns)] if sum(map(len, turns)) >= MIN_DOC else [])


_RPY_LINE = re.compile(r'^\s*(?:(?P<who>[sm])\s+)?"(?P<text>[^"]+)"\s*$')


def the_question(root: Path) -> Iterator[str]:
    """Ren'Py's sample game "The Question" (Expat licence): one scene per label."""
    names = {"s": "Sylvie", "m": "Me"}
    path = root / "usr/share/games/renpy/the_question/game/script.rpy"
    for scene in re.split(r"^label \w+:", path.read_text(encoding="utf-8"), flags=re.M)[1:]:
        turns = []
        in_menu = False
        for line in scene.split("\n"):
            if line.strip().startswith("menu:"):
                in_menu = True
            m = _RPY_LINE.match(line)
            if m and not (in_menu and not m.group("who") and line.rstrip().endswith(":")):
                who = m.group("who")
                turns.append(f"{names[who]}: {m.group('text')}" if who else m.group("text"))
        if len(turns) >= 3 and sum(map(len, turns)) >= MIN_DOC:
            yield "\n".join(turns)


SOURCES = (
    Source("jargon-file", "prose", "jargon-text", "public domain",
           "The Jargon File 4.4.7: glossary entries", 0.5, jargon_entries),
    Source("python-docs-prose", "prose", "python3.11-doc", "PSF-2.0",
           "Python 3.11 tutorial and HOWTOs: prose paragraphs", 0.5, python_docs_prose),
    Source("python-stdlib-code", "code", "libpython3.11-stdlib", "PSF-2.0",
           "Python 3.11 standard library: functions and methods of modules outside the demo corpus", 0.65,
           python_code),
    Source("cpython-c-headers", "code", "libpython3.11-dev", "PSF-2.0",
           "CPython 3.11 C headers", 0.2, c_headers),
    Source("sphinx-javascript", "code", "python3.11-doc", "BSD-2-Clause (Sphinx), PSF-2.0 (CPython theme)",
           "JavaScript of the Python documentation", 0.15, javascript),
    Source("python-faq", "dialogue", "python3.11-doc", "PSF-2.0",
           "Python 3.11 FAQs as question-and-answer exchanges", 0.45, python_faq),
    Source("wesnoth-httt", "dialogue", "wesnoth-1.16-httt", "GPL-2.0-or-later",
           "Battle for Wesnoth, \"Heir to the Throne\": scene dialogue", 0.5, wesnoth_dialogue),
    Source("renpy-the-question", "dialogue", "renpy-thequestion", "Expat (MIT)",
           "Ren'Py sample game \"The Question\": scene dialogue", 0.05, the_question),
)


# --------------------------------------------------------------------------- split

def ngrams(text: str, n: int = NGRAM) -> set[int]:
    words = text.split()
    return {hash(" ".join(words[i:i + n])) for i in range(len(words) - n + 1)}


def split(sources: Iterable[Source], texts: dict[str, list[str]], training: set[int], heldout: set[int]) -> None:
    """Fill each source's share of the evaluation budget, then of the calibration budget.

    Evaluation documents share no n-gram with the demo model's text (``training`` |
    ``heldout``); calibration documents none with the evaluation mix nor with ``heldout``
    (the text GPTQ's own held-out comparison runs on)."""
    seen: set[str] = set()
    taken_grams: set[int] = set()
    banned = {"evaluation": training | heldout, "calibration": heldout}
    for mix in ("evaluation", "calibration"):
        if mix == "calibration":
            banned[mix] = banned[mix] | taken_grams
        for src in sources:
            budget = BUDGET[mix] * src.weight
            taken: list[str] = []
            size = 0
            for doc in sorted(texts[src.name], key=lambda d: hashlib.sha256(d.encode()).hexdigest()):
                if size >= budget:
                    break
                g = ngrams(doc)
                if doc in seen or g & banned[mix]:
                    continue
                seen.add(doc)
                taken_grams |= g
                taken.append(doc)
                size += len(doc)
            src.docs[mix] = taken
            if size < budget * 0.9:
                log.warning("%s gave only %d of %d characters to the %s mix", src.name, size, budget, mix)


def interleave(sources: list[Source], mix: str) -> list[dict[str, str]]:
    """Documents of all sources merged so every stretch of the file mixes them (by character share)."""
    queues = [[{"domain": s.domain, "source": s.name, "text": d} for d in s.docs[mix]] for s in sources]
    totals = [max(sum(len(r["text"]) for r in q), 1) for q in queues]
    done = [0] * len(queues)
    out: list[dict[str, str]] = []
    while any(queues):
        k = min((i for i in range(len(queues)) if queues[i]), key=lambda i: done[i] / totals[i])
        rec = queues[k].pop(0)
        done[k] += len(rec["text"])
        out.append(rec)
    return out


def write_jsonl(path: Path, records: list[dict[str, str]]) -> bytes:
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
    path.write_bytes(data)
    return data


def sources_md(sources: list[Source], packages: dict[str, Package], files: dict[str, bytes]) -> str:
    rows = ["| source | domain | Debian package (version) | licence | what | calibration docs / bytes "
            "| evaluation docs / bytes |", "|---|---|---|---|---|---|---|"]
    for s in sources:
        p = packages[s.package]
        cal = s.docs["calibration"]
        ev = s.docs["evaluation"]
        rows.append(f"| {s.name} | {s.domain} | {p.name} ({p.version}) | {s.licence} | {s.what} | "
                    f"{len(cal)} / {sum(len(d.encode()) for d in cal):,} | "
                    f"{len(ev)} / {sum(len(d.encode()) for d in ev):,} |")
    digests = "\n".join(f"- `{name}`: {len(data):,} bytes, sha256 `{hashlib.sha256(data).hexdigest()}`"
                        for name, data in files.items())
    debs = "\n".join(f"- {p.name} {p.version}: .deb sha256 `{p.sha256}`" for p in packages.values())
    return f"""# edgekit's packaged text sets: sources and licences

Built by `python scripts/build_textsets.py` from Debian 12 (bookworm) packages, downloaded
with `apt-get download` and unpacked (not installed). Each line of `calibration.jsonl` and
`evaluation.jsonl` is one document: `{{"domain", "source", "text"}}`. The two files share no
document and no word {NGRAM}-gram, and `evaluation.jsonl` shares none with the demo model's
training text (`../corpus.txt`) or `../heldout.txt`.

{chr(10).join(rows)}

Every document keeps the licence of its source; the texts may be redistributed under those
licences. PSF-2.0: the Python Software Foundation License Version 2 (Python's own licence);
GPL-2.0-or-later: the GNU General Public License, version 2 or later (the Wesnoth scenario
files the dialogue was taken from are in the Debian package named above, and in Wesnoth's
source); Expat: the MIT licence of Ren'Py and its sample games; the Jargon File is in the
public domain ("to be freely used, shared, and modified"; cite it as "Jargon File 4.4.7").

## Why these sources

* **Prose**: Debian has no Project Gutenberg books and the King James Bible package stores
  its text in a compressed index only; the Jargon File (public domain, ~1.7 MB of entries
  written as essays and anecdotes) and the Python tutorial and HOWTOs (expository English)
  are the largest free English prose in the archive that is not a program's reference
  manual.
* **Code**: Python (the standard library, outside the modules the demo model was trained
  on), C (CPython's headers) and JavaScript (the documentation's scripts), all PSF or BSD.
* **Dialogue**: a chat fine-tune sees turns of a conversation. The Python FAQs are questions
  answered in the voice of an assistant (PSF); the Wesnoth campaign's scenes are
  multi-speaker conversation in plain English (GPL-2.0-or-later, the only free-licensed
  dialogue of that size found in Debian: Ren'Py's sample game, Expat, has a few KB only and
  is included as well). Plays in public-domain text, IRC logs and FAQ-style Q&A under a free
  licence were looked for; only the FAQs exist in the archive in English.

## Files

{digests}

## Packages

{debs}
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    ap.add_argument("--cache", type=Path, default=Path("/tmp/textsets-cache"), help="where .debs are unpacked")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    packages = {name: fetch(name, args.cache) for name in dict.fromkeys(s.package for s in SOURCES)}
    texts: dict[str, list[str]] = {}
    for s in SOURCES:
        docs = [_clean(d) for d in s.extract(packages[s.package].root)]
        texts[s.name] = [d for d in dict.fromkeys(docs) if MIN_DOC <= len(d)]
        log.info("%-20s %5d documents, %9d characters available", s.name, len(texts[s.name]),
                 sum(map(len, texts[s.name])))
    training, heldout = (ngrams((DATA / name).read_text(encoding="utf-8")) for name in ("corpus.txt", "heldout.txt"))
    split(SOURCES, texts, training, heldout)
    args.out.mkdir(parents=True, exist_ok=True)
    files = {}
    for mix in ("calibration", "evaluation"):
        files[f"{mix}.jsonl"] = write_jsonl(args.out / f"{mix}.jsonl", interleave(list(SOURCES), mix))
        log.info("%s: %d bytes", args.out / f"{mix}.jsonl", len(files[f"{mix}.jsonl"]))
    (args.out / "SOURCES.md").write_text(sources_md(list(SOURCES), packages, files), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
