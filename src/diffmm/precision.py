"""bfloat16 matrix products where the hardware runs them fast (``train.precision``).

Two hot products may run in bfloat16: the denoisers' (:class:`diffmm.diffusion.Denoiser`,
in training and in sampling) and the contrastive loss's
(:func:`diffmm.ops.matmul_cross_entropy`: the blocked logits and their gradient
products). Everything else stays float32: parameters, optimiser state, losses, softmax
and accumulations, sparse products, evaluation and scoring. The trainer sets the dtype
for an epoch's phases and recommender pass with :func:`matmuls`; the two sites read it
with :func:`active` (or enter :func:`autocast`), so nothing else is affected.

Whether bfloat16 pays is a property of the machine, checked once, not assumed: an Intel
Xeon with AVX-512 BF16 ran a bf16 GEMM at about 2.3x its float32 rate, while AMD EPYCs
with AVX2 only ran a 2048² bf16 GEMM 200-400x *slower* than in float32, and DiffMM's
epoch 4.5x slower (benchmarks/results/precision.md). ``auto`` therefore means bfloat16
on CUDA devices with native bf16 and on CPUs with AVX-512 BF16 or AMX, float32
elsewhere; an explicit ``bf16`` is honoured everywhere, with a warning where it is slow.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from contextvars import ContextVar
from functools import cache, lru_cache
from typing import Any, Literal, get_args

import torch

Precision = Literal["auto", "fp32", "bf16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)

logger = logging.getLogger(__name__)

#: The dtype of the two hot products inside :func:`matmuls`; None: float32 (no autocast).
_active: ContextVar[torch.dtype | None] = ContextVar("diffmm_matmul_dtype", default=None)


def cpu_capability() -> str:
    """ATen's CPU kernel level, e.g. ``"AVX2"`` or ``"AVX512"`` (``"unknown"`` if absent)."""
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except (AttributeError, RuntimeError):
        return "unknown"


@lru_cache(maxsize=1)
def cpu_bf16_features() -> tuple[str, ...]:
    """The CPU's bf16 instruction sets that make a bf16 GEMM fast (``avx512_bf16``,
    ``amx_bf16``, ``amx_tile``), as torch's cpuinfo reports them; () when none or unknown."""
    names = ("avx512_bf16", "amx_bf16", "amx_tile")
    get_caps = getattr(torch.cpu, "get_capabilities", None)  # torch >= 2.13
    if get_caps is not None:
        try:
            caps = get_caps()
            return tuple(n for n in names if caps.get(n, False) is True)
        except RuntimeError:
            return ()
    checks = {"avx512_bf16": "_is_avx512_bf16_supported", "amx_tile": "_is_amx_tile_supported"}
    found = []
    for name, attr in checks.items():
        check = getattr(torch.cpu, attr, None)
        with contextlib.suppress(RuntimeError):
            if check is not None and check():
                found.append(name)
    return tuple(found)


@cache
def _cuda_bf16_is_fast(index: int) -> bool:
    if not torch.cuda.is_available():
        return False
    major, _ = torch.cuda.get_device_capability(index)
    try:  # native support, not the emulation newer torch counts by default
        native = torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:
        native = torch.cuda.is_bf16_supported()
    return bool(native) and major >= 8


def bf16_is_fast(device: torch.device) -> bool:
    """Whether ``device`` runs bf16 matrix products faster than float32 (cached): CUDA
    with native bf16 (compute capability 8.0+), or a CPU with AVX-512 BF16 or AMX."""
    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return _cuda_bf16_is_fast(index)
    if device.type == "cpu":
        return bool(cpu_bf16_features())
    return False


def hardware(device: torch.device) -> str:
    """What decided :func:`bf16_is_fast`: the CPU's bf16 features or its capability, or
    the CUDA device's name and compute capability."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability(device)
        return f"{torch.cuda.get_device_name(device)}, sm_{major}{minor}"
    if device.type == "cpu":
        return "+".join(f.upper() for f in cpu_bf16_features()) or cpu_capability()
    return device.type


def resolve(setting: str, device: torch.device) -> torch.dtype:
    """The dtype of the hot products for ``train.precision = setting`` on ``device``:
    ``auto`` is bfloat16 only where :func:`bf16_is_fast`; ``bf16`` is honoured anyway,
    with a warning where it is slow; ``fp32`` is float32."""
    if setting not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)} (got {setting!r})")
    if setting == "fp32":
        return torch.float32
    fast = bf16_is_fast(device)
    if setting == "auto":
        return torch.bfloat16 if fast else torch.float32
    if not fast:
        logger.warning(
            "warning: train.precision=bf16 on %s (%s): bfloat16 matrix products are slow "
            "here, often far slower than float32; 'auto' would use float32",
            torch.device(device),
            hardware(device),
        )
    return torch.bfloat16


def describe(setting: str, device: torch.device) -> dict[str, Any]:
    """The path a run takes, for its log line and ``summary.json``."""
    dtype = resolve(setting, device)
    return {
        "setting": setting,
        "matmuls": "bfloat16" if dtype == torch.bfloat16 else "float32",
        "bf16_fast": bf16_is_fast(device),
        "hardware": hardware(device),
        "cpu_capability": cpu_capability(),
        "cpu_bf16_features": list(cpu_bf16_features()),
    }


def dtype_of(info: dict[str, Any]) -> torch.dtype:
    """The dtype :func:`describe` resolved."""
    return torch.bfloat16 if info["matmuls"] == "bfloat16" else torch.float32


def message(info: dict[str, Any]) -> str:
    """``matrix products in bfloat16 (AVX512_BF16)`` or ``... float32 (AVX2: bf16 would
    be slow)`` from :func:`describe`'s result."""
    if info["matmuls"] == "bfloat16":
        slow = "" if info["bf16_fast"] else ": slow here"
        return f"matrix products in bfloat16 ({info['hardware']}{slow})"
    why = "" if info["setting"] == "fp32" else ": bf16 would be slow"
    return f"matrix products in float32 ({info['hardware']}{why})"


@contextlib.contextmanager
def matmuls(dtype: torch.dtype) -> Iterator[None]:
    """While inside, the two hot products run in ``dtype`` (float32 or bfloat16)."""
    if dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"matrix products run in float32 or bfloat16, not {dtype}")
    token = _active.set(None if dtype == torch.float32 else dtype)
    try:
        yield
    finally:
        _active.reset(token)


def active() -> torch.dtype | None:
    """The lower dtype of the hot products now, or None for float32."""
    return _active.get()


def autocast(device_type: str) -> contextlib.AbstractContextManager[Any]:
    """A ``torch.autocast`` region in the :func:`active` dtype, or nothing for float32.

    Keep it around dense products only: sparse CSR products have no bf16 kernel on CPU.
    """
    dtype = _active.get()
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=dtype)
