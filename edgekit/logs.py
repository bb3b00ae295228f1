"""Third-party chatter goes to the log, not to the user's terminal.

transformers writes its warnings to stderr through a handler of its own and draws tqdm bars
("Loading weights: 100%|...") on every ``from_pretrained``; torch and transformers raise
Python warnings; llama.cpp and llmcompressor are routed where edgekit calls them
(:mod:`edgekit.runtimes.llama_env`, :func:`edgekit.converters.gptq.engine.quiet_llmcompressor`).
While :func:`third_party_to_log` is active, all of that goes to Python logging under
``edgekit.third_party.<name>``, one level down: warnings at INFO, so ``-v`` shows them,
transformers' info at DEBUG (``-vv``), its errors as warnings; each progress bar becomes one
INFO line. On exit transformers' own handler, level and bars and Python's warning display
are put back, so a Python caller's later use of transformers is untouched.

Nothing is imported here: transformers costs seconds to import, and ``edgekit inspect`` or
``--help`` never need it. When it is not imported yet, it is set up the moment something
imports it (:class:`_AfterImport`).

The CLI's ``main()`` calls :func:`setup_cli_logging`, and every command runs inside
:func:`third_party_to_log`; the library's entry points that load transformers models use it
too.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from importlib.abc import MetaPathFinder
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import Any

THIRD_PARTY = "edgekit.third_party"
_TRANSFORMERS_LOGGING = "transformers.utils.logging"

_lock = threading.RLock()
_depth = 0
_undo: list[Callable[[], None]] = []


def setup_cli_logging(verbose: int) -> None:
    """The CLI's log: warnings by default, ``-v`` info (third-party warnings included), ``-vv`` debug."""
    level = logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


def _relay_level(levelno: int) -> int:
    # one level down: a third-party warning is advice for whoever reads the log (-v)
    return logging.WARNING if levelno >= logging.ERROR else logging.INFO if levelno >= logging.WARNING \
        else logging.DEBUG


class _Relay(logging.Handler):
    """Re-logs a third-party record under edgekit.third_party, one level down."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            target = logging.getLogger(f"{THIRD_PARTY}.{record.name}")
            level = _relay_level(record.levelno)
            if target.isEnabledFor(level):
                target.log(level, "%s", record.getMessage())
        except Exception:
            self.handleError(record)


def _tqdm_to_log(factory: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """A transformers progress bar: one INFO line instead of a bar redrawn on stderr."""
    total = kwargs.get("total")
    if total is None and args and hasattr(args[0], "__len__"):
        total = len(args[0])
    logging.getLogger(f"{THIRD_PARTY}.transformers").info(
        "%s%s", kwargs.get("desc") or "progress", f" ({total} steps)" if total else "")
    return factory(*args, **{**kwargs, "disable": True})


def _route_transformers(tlog: ModuleType) -> None:
    """Point transformers' library logger and its bars at the log; register how to undo it."""
    root = tlog.get_logger()  # the "transformers" logger (creates its stderr handler on first use)
    had_default = getattr(tlog, "_default_handler", None) in root.handlers
    level, propagate = root.level, root.propagate
    relay = _Relay()
    tlog.disable_default_handler()
    root.addHandler(relay)
    root.setLevel(logging.INFO)
    # transformers propagates to the root logger when $CI is set (a CI job's log then shows its
    # INFO records, whatever the root level: propagation skips ancestors' levels); the relay is
    # the only way out while routed
    root.propagate = False
    if hasattr(tlog, "set_tqdm_hook"):  # transformers >= 5.17
        previous = tlog.set_tqdm_hook(_tqdm_to_log)

        def bars() -> None:
            tlog.set_tqdm_hook(previous)
    else:
        enabled = tlog.is_progress_bar_enabled()
        tlog.disable_progress_bar()

        def bars() -> None:
            if enabled:
                tlog.enable_progress_bar()

    def undo() -> None:
        bars()
        root.removeHandler(relay)
        root.setLevel(level)
        root.propagate = propagate
        if had_default:
            tlog.enable_default_handler()

    _undo.append(undo)


class _AfterImport(MetaPathFinder):
    """Runs ``then(module)`` right after module ``name`` is first imported, whoever imports it."""

    def __init__(self, name: str, then: Callable[[ModuleType], None]) -> None:
        self.name, self.then = name, then

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> ModuleSpec | None:
        if fullname != self.name:
            return None
        for finder in sys.meta_path:  # the finder that would have found it without us
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    self._wrap(spec.loader)
                return spec
        return None

    def _wrap(self, loader: Any) -> None:
        execute = loader.exec_module

        def exec_module(module: ModuleType) -> None:
            execute(module)
            with _lock:
                _remove_finder(self)
                if _depth:
                    self.then(module)

        loader.exec_module = exec_module  # this spec's own loader instance only


def _remove_finder(finder: MetaPathFinder) -> None:
    with contextlib.suppress(ValueError):
        sys.meta_path.remove(finder)


def _route_warnings() -> None:
    """Python warnings (torch's and transformers' UserWarning/FutureWarning) go to the log at INFO."""
    previous = warnings.showwarning
    log = logging.getLogger(f"{THIRD_PARTY}.warnings")

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
             file: Any = None, line: str | None = None) -> None:
        log.info("%s: %s (%s:%d)", category.__name__, message, filename, lineno)

    warnings.showwarning = show
    _undo.append(lambda: setattr(warnings, "showwarning", previous))


def _install() -> None:
    _route_warnings()
    module = sys.modules.get(_TRANSFORMERS_LOGGING)
    if module is not None:
        _route_transformers(module)
        return
    finder = _AfterImport(_TRANSFORMERS_LOGGING, _route_transformers)
    sys.meta_path.insert(0, finder)
    _undo.append(lambda: _remove_finder(finder))


@contextlib.contextmanager
def third_party_to_log() -> Iterator[None]:
    """Route transformers' logging and progress bars to edgekit's log while active (nests, thread-safe)."""
    global _depth
    with _lock:
        _depth += 1
        if _depth == 1:
            _install()
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                while _undo:
                    _undo.pop()()
