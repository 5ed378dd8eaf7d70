"""Small helpers shared across the package: seeding, devices, atomic writes, memory."""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from diffmm.errors import ConfigError, DiffMMError, WriteError


def seed_everything(seed: int) -> np.random.Generator:
    """Seed Python's, NumPy's legacy and torch's global generators.

    Returns a fresh ``np.random.Generator`` seeded with ``seed`` (the generator code in
    this package should use, rather than the global NumPy state).
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - third-party code may use the legacy global
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def resolve_device(device: str = "auto") -> torch.device:
    """``"auto"`` -> CUDA if available else CPU; otherwise ``torch.device(device)``.

    Raises:
        ConfigError: the name is not a device torch knows, or CUDA was asked for but is
            not available.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise ConfigError(f"unknown device {device!r}; use 'auto', 'cpu' or 'cuda[:i]'") from exc
    if dev.type not in ("cpu", "cuda") or (dev.type == "cpu" and dev.index not in (None, 0)):
        raise ConfigError(f"device {device!r}: diffmm runs on 'auto', 'cpu' or 'cuda[:i]'")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available; use 'cpu'")
    if dev.type == "cuda" and (dev.index or 0) >= torch.cuda.device_count():
        raise ConfigError(
            f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s), "
            "numbered from 0"
        )
    return dev


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """Create or replace ``path`` atomically with what ``write(file)`` writes.

    The data go to a temporary file in the same directory, which is flushed, fsynced
    and then renamed over ``path`` with :func:`os.replace`; a reader sees either the
    old file or the new one, never a partial write. The file is created with mode
    0666 less the umask, like any other program's output.

    Raises:
        WriteError: the file could not be written (e.g. the disk is full); the
            previous version of ``path``, if any, is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError | RuntimeError) and not isinstance(exc, DiffMMError):
            raise WriteError(_write_failure(path, exc)) from None
        raise


def _write_failure(path: Path, exc: BaseException) -> str:
    """One line on why ``path`` could not be written, with the free space of its disk."""
    if isinstance(exc, OSError) and exc.strerror:
        reason = exc.strerror
    else:
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
    try:
        free = f"; {shutil.disk_usage(path.parent).free / 2**20:.0f} MB free there"
    except OSError:
        free = ""
    kept = "the previous version is intact" if path.exists() else "nothing was written"
    return f"cannot write {path}: {reason}{free}; {kept}. Free some space or choose another path"


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda fh: fh.write(data))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serialisable")


def to_json(obj: Any, *, indent: int | None = 2) -> str:
    """``json.dumps`` that also accepts NumPy scalars/arrays, tensors and paths."""
    return json.dumps(obj, indent=indent, default=_json_default)


def atomic_write_json(path: str | Path, obj: Any, *, indent: int | None = 2) -> None:
    """Serialise ``obj`` as JSON and write it atomically (see :func:`atomic_write_bytes`)."""
    atomic_write_bytes(path, (to_json(obj, indent=indent) + "\n").encode())


def atomic_append_line(path: str | Path, line: str) -> None:
    """Append one line to a text file by rewriting it atomically.

    Suited to small logs (one line per epoch): the file is always complete on disk.
    """
    path = Path(path)
    old = path.read_bytes() if path.exists() else b""
    atomic_write_bytes(path, old + line.rstrip("\n").encode() + b"\n")


def atomic_torch_save(path: str | Path, obj: Any) -> None:
    """``torch.save`` to ``path`` atomically."""
    atomic_write(path, lambda fh: torch.save(obj, fh))


def file_stem(text: str, limit: int = 64) -> str:
    """``text`` (an id from the data) as one safe piece of a file name.

    Letters, digits, ``.``, ``_`` and ``-`` are kept, anything else (a ``/``, ``..``, a
    space) becomes ``_``; a text that had to change, or that is longer than ``limit``,
    gets 8 hex digits of its sha256, so two ids never share a name. Never ``.`` or ``..``.
    """
    import hashlib
    import re

    stem = re.sub(r"[^A-Za-z0-9._-]", "_", text)[:limit].lstrip(".")
    if stem != text or not stem:
        stem = f"{stem}-{hashlib.sha256(text.encode()).hexdigest()[:8]}".lstrip("-")
    return stem


def software() -> dict[str, Any]:
    """The versions a run was trained with: diffmm, torch, Python and, when diffmm runs
    from a git checkout, the checkout's commit and whether ``src/`` differs from it."""
    import platform
    import subprocess

    import diffmm

    record: dict[str, Any] = {
        "diffmm": diffmm.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    root = Path(diffmm.__file__).resolve().parents[2]  # src/diffmm/__init__.py -> the root
    if not (root / ".git").exists():
        return record  # an installed wheel: its version says it all

    def git(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10
        )

    try:
        head = git("rev-parse", "HEAD")
        changed = git("diff", "--quiet", "HEAD", "--", "src")
    except (OSError, subprocess.SubprocessError):
        return record  # no git here: the versions are what there is
    if head.returncode == 0 and changed.returncode in (0, 1):
        record["source_revision"] = head.stdout.strip()
        record["source_modified"] = changed.returncode == 1
    return record


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (0.0 if unknown)."""
    try:
        import resource
    except ImportError:  # Windows
        return 0.0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def release_free_memory() -> None:
    """Give the heap's free pages back to the system (glibc ``malloc_trim``; no-op elsewhere).

    With :func:`keep_freed_memory_for_reuse` freed blocks stay resident so that the
    batches of one phase reuse them; calling this between phases (diffusion, graph
    regeneration, recommender pass, evaluation) keeps one phase's leftovers from adding
    to the next one's peak (``benchmarks/results/design_measurements.md``).
    """
    import ctypes
    import ctypes.util

    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


#: The largest freed block (MiB) the ``diffmm`` command keeps for reuse unless told otherwise.
KEPT_FREED_BLOCK_MB = 1024


def keep_freed_memory_for_reuse(threshold_bytes: int = KEPT_FREED_BLOCK_MB << 20) -> bool:
    """Ask glibc to serve large blocks from its heap and keep freed ones for reuse.

    By default glibc gives every block above its mmap threshold fresh pages from the
    kernel and returns them on free, so each large tensor (a batch of interaction rows,
    a block of contrastive logits) pays a page fault per 4 KiB page on first touch, a
    large part of the time to allocate and fill it
    (``benchmarks/results/design_measurements.md``). The ``diffmm`` command calls this
    once at start; importing the library changes nothing. Returns whether the setting
    was applied (False off glibc).
    """
    import ctypes
    import ctypes.util

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
        return bool(
            libc.mallopt(m_mmap_threshold, threshold_bytes)
            and libc.mallopt(m_trim_threshold, threshold_bytes)
        )
    except (OSError, AttributeError):
        return False
