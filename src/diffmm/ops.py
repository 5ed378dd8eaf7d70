"""Fused operations used on hot paths (each equals a plain PyTorch expression).

:func:`normalize_rows` is ``F.normalize(x, dim=1)`` with a hand-written backward pass
``(g - y (g·y)) / max(‖x‖, eps)``: three passes over ``x`` instead of the eight or so
of autograd's division-by-norm graph. DiffMM normalises every user and item row
several times per step (eq. 18-19, eq. 23), and this was the largest part of its
backward pass.

:func:`matmul_cross_entropy` is ``F.cross_entropy(a @ b.T, targets)`` computed in blocks
of rows, with its gradient formed in the same pass: each block's logits are
exponentiated in place and multiplied back while they are still in cache (the softmax's
column scale and the one-hot term go onto the small factors), so the full
``(len(a), len(b))`` logits matrix is never stored. For the contrastive loss
of DiffMM (1024 anchors against every user or item) this saves time and frees the
memory the logits would keep for the backward pass. Inside
:func:`diffmm.precision.matmuls` (bfloat16) its three products (the logits and the two
gradient products) run in bfloat16; the softmax, log-sum-exp and sums stay float32.
:func:`dropout` is ``F.dropout`` with its mask drawn from uniform samples: on CPU,
PyTorch's Bernoulli sampler is slower than a uniform draw, a compare and a product, and
DiffMM drops out every noised row its denoisers see.

The figures behind these choices are in ``benchmarks/results/design_measurements.md``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from diffmm import precision


class _NormalizeRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, eps: float) -> Tensor:
        denom = torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_min_(eps)
        y = x / denom
        ctx.save_for_backward(y, denom)
        ctx.eps = eps
        return y

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        y, denom = ctx.saved_tensors
        # d(x/‖x‖) = (g - y (g·y)) / ‖x‖; where the norm was clamped to eps, y = x/eps
        # is linear in x and the gradient is g / eps.
        along = (grad * y).sum(1, keepdim=True).masked_fill_(denom <= ctx.eps, 0.0)
        return torch.addcmul(grad, y, along, value=-1.0).div_(denom), None


def normalize_rows(x: Tensor, eps: float = 1e-12) -> Tensor:
    """``F.normalize(x, dim=1, eps=eps)`` for a 2-d ``x``, with a cheaper backward pass."""
    if x.dim() != 2:
        raise ValueError(f"normalize_rows expects a 2-d tensor, got shape {tuple(x.shape)}")
    if not (torch.is_grad_enabled() and x.requires_grad):
        return F.normalize(x, dim=1, eps=eps)
    return _NormalizeRows.apply(x, eps)


#: Rows per block: a block's logits (rows x len(b) floats) should fit in the L2/L3 cache.
BLOCK_ROWS = 128
#: Largest |logit| whose softmax is computed without the max shift: exp(±60) and a sum
#: of 10^9 such terms stay within float32 (and float16 is not used here).
MAX_UNSHIFTED_LOGIT = 60.0


class _MatmulCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        a: Tensor,
        b: Tensor,
        targets: Tensor,
        weights: Tensor,
        block_rows: int,
        bounded: bool,
        low: torch.dtype | None,
    ) -> Tensor:
        grad_a = torch.empty_like(a)
        grad_b = torch.zeros_like(b)
        total = a.new_zeros(())
        a_low, b_low = (a, b) if low is None else (a.to(low), b.to(low))
        for start in range(0, a.shape[0], block_rows):
            rows = slice(start, start + block_rows)
            a_blk, t_blk, w_blk = a[rows], targets[rows], weights[rows]
            cols = torch.arange(len(t_blk), device=a.device)
            # Logits of the block transposed, (len(b), rows): MKL computes b @ a_blk.T
            # faster than a_blk @ b.T for these shapes.
            if low is None:
                logits_t = b @ a_blk.T
            else:  # the product in bfloat16, the softmax in float32
                logits_t = (b_low @ a_low[rows].T).to(a.dtype)
            positive = logits_t[t_blk, cols]
            if bounded:  # exp cannot overflow: no max pass, no shift
                shift: Tensor | float = 0.0
                probs_t = logits_t.exp_()  # in place: the block's only buffer
            else:
                shift = logits_t.amax(0)
                probs_t = logits_t.sub_(shift).exp_()
            denom = probs_t.sum(0)
            total += (w_blk * (shift + denom.log() - positive)).sum()
            # The gradient of the block's logits is G = exp · diag(s) - onehot · diag(w)
            # with s = w / denom. G is never formed: the column scale s goes onto the
            # small factors (a_blk's rows, grad_a's rows) and the one-hot part is a
            # gather and a scatter of len(t_blk) rows.
            scale = (w_blk / denom).unsqueeze(1)
            if low is None:
                grad_a_blk = torch.mm(probs_t.T, b, out=grad_a[rows]).mul_(scale)
            else:
                grad_a_blk = grad_a[rows].copy_(probs_t.T.to(low) @ b_low).mul_(scale)
            grad_a_blk.addcmul_(b.index_select(0, t_blk), w_blk.unsqueeze(1), value=-1.0)
            if low is None:
                grad_b.addmm_(probs_t, a_blk * scale)
            else:  # accumulated in float32
                grad_b.add_(probs_t.to(low) @ (a_blk * scale).to(low))
            grad_b.index_add_(0, t_blk, a_blk * w_blk.unsqueeze(1), alpha=-1.0)
        ctx.save_for_backward(grad_a, grad_b)
        return total

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor, Tensor, None, None, None, None, None]:
        grad_a, grad_b = ctx.saved_tensors
        return grad_out * grad_a, grad_out * grad_b, None, None, None, None, None


def matmul_cross_entropy(
    a: Tensor,
    b: Tensor,
    targets: Tensor,
    weights: Tensor | None = None,
    block_rows: int = BLOCK_ROWS,
    logit_bound: float | None = None,
) -> Tensor:
    """``F.cross_entropy(a @ b.T, targets)`` without storing the logits.

    Args:
        a: ``(n, d)`` rows; b: ``(m, d)`` classes; targets: ``(n,)`` class of each row.
        weights: ``(n,)`` weight of each row's loss; default ``1/n`` (the mean).
        block_rows: rows of ``a`` processed at a time.
        logit_bound: a bound on every ``|logit|`` known to the caller (``1/τ`` for cosine
            similarities over a temperature). Up to :data:`MAX_UNSHIFTED_LOGIT` the
            softmax skips its max pass: ``exp`` can neither overflow nor underflow.

    Returns ``Σ_i weights_i · CE_i``. The gradient is computed in the forward pass (under
    ``torch.no_grad`` the plain expression is used instead, in float32); the result
    supports one backward pass, not double differentiation. Float32 inputs have their
    products in bfloat16 inside :func:`diffmm.precision.matmuls` (bfloat16).
    """
    if weights is None:
        weights = torch.full(targets.shape, 1.0 / len(targets), device=a.device)
    weights = weights.to(a.dtype)
    if not (torch.is_grad_enabled() and (a.requires_grad or b.requires_grad)):
        return (weights * F.cross_entropy(a @ b.T, targets, reduction="none")).sum()
    bounded = logit_bound is not None and logit_bound <= MAX_UNSHIFTED_LOGIT
    low = precision.active() if a.dtype == b.dtype == torch.float32 else None
    return _MatmulCrossEntropy.apply(a, b, targets, weights, block_rows, bounded, low)


def dropout(x: Tensor, p: float, training: bool = True) -> Tensor:
    """``F.dropout(x, p, training)``: each entry kept with probability ``1 - p`` and scaled
    by ``1 / (1 - p)``, else zero (same distribution, a different random stream)."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    if not training or p == 0.0:
        return x
    keep = torch.rand_like(x).ge_(p)  # uniform u >= p: kept with probability 1 - p
    return keep.mul_(x).mul_(1.0 / (1.0 - p))
