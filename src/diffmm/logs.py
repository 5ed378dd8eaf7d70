"""Where diffmm's messages and progress bars go.

Library code logs to module loggers under the ``"diffmm"`` hierarchy
(``logging.getLogger(__name__)``): progress lines (one per epoch, per epoch phase,
"resuming ...", "early stop ...") at INFO, warnings at WARNING. It configures nothing;
the entry points do: the ``diffmm`` command, and :func:`diffmm.api.train` with
``progress=True``, call :func:`log_to_stderr`, which gives the ``"diffmm"`` logger a
handler writing ``"%(message)s"`` lines to stderr at INFO unless one is configured.
Under ``torchrun`` that handler lets through only rank 0's lines.

Progress bars (tqdm, ``leave=False``, shown only on a terminal) are made by :func:`bar`;
they are drawn only inside :func:`progress_bars` ``(True)``, which the trainer enters for
an epoch when ``train.progress`` is on, on rank 0.

Nothing here imports torch: the command-line interface imports this module at start.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

ROOT = "diffmm"
FORMAT = "%(message)s"

_bars_on: ContextVar[bool] = ContextVar("diffmm_progress_bars", default=False)


class StderrHandler(logging.Handler):
    """Writes each record as one line to the current ``sys.stderr`` (looked up at every
    record, so a swapped stream such as click's test runner's is honoured), through
    ``tqdm.write`` when tqdm is in use so that lines do not break a progress bar. Only the
    lines of rank 0 (torchrun's ``RANK``, or no rank) pass."""

    def __init__(self, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self.setFormatter(logging.Formatter(FORMAT))
        self.addFilter(lambda _record: int(os.environ.get("RANK", "0")) == 0)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
            tqdm = sys.modules.get("tqdm")
            if tqdm is not None:
                tqdm.tqdm.write(line, file=sys.stderr)
            else:
                sys.stderr.write(line + "\n")
            sys.stderr.flush()
        except Exception:
            self.handleError(record)


def log_to_stderr(*, unless_any: bool = False) -> None:
    """Give the ``"diffmm"`` logger a :class:`StderrHandler` at INFO, unless it has a
    handler (with ``unless_any``: unless a handler is found on it or on an ancestor, i.e.
    the application configured logging). A logger level already set is kept. The data
    layer's ``"diffmm.data"`` goes to WARNING: its split-cache notes would otherwise follow
    every command that loads a table."""
    logger = logging.getLogger(ROOT)
    if logger.handlers if not unless_any else logger.hasHandlers():
        return
    logger.addHandler(StderrHandler())
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
    data = logging.getLogger(f"{ROOT}.data")  # "reusing the split saved in ..." on every load
    if data.level == logging.NOTSET:
        data.setLevel(logging.WARNING)


@contextmanager
def forwarded_to(callback: Callable[[str], None] | None) -> Iterator[None]:
    """While inside, hand every INFO-or-above message of the ``"diffmm"`` loggers to
    ``callback`` as well (nothing when it is None); for the deprecated ``log=`` arguments
    of :mod:`diffmm.api`."""
    if callback is None:
        yield
        return
    logger = logging.getLogger(ROOT)
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: callback(record.getMessage())  # type: ignore[method-assign]
    old_level = logger.level
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


@contextmanager
def quiet(name: str = ROOT) -> Iterator[None]:
    """While inside, the ``name`` logger (and its children) log warnings only."""
    logger = logging.getLogger(name)
    old_level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(old_level)


@contextmanager
def progress_bars(on: bool) -> Iterator[None]:
    """Whether :func:`bar` draws bars while inside (outside: it does not)."""
    token = _bars_on.set(on)
    try:
        yield
    finally:
        _bars_on.reset(token)


def bars_on() -> bool:
    return _bars_on.get()


def bar(iterable: Iterable[Any], *, total: int | None, desc: str, **kwargs: Any) -> Any:
    """A tqdm bar over ``iterable``, not left behind, drawn only on a terminal and only
    inside :func:`progress_bars` ``(True)``."""
    from tqdm.auto import tqdm

    options: dict[str, Any] = {"leave": False, "dynamic_ncols": True, **kwargs}
    return tqdm(iterable, total=total, desc=desc, disable=None if bars_on() else True, **options)
