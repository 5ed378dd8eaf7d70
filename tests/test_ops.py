"""Fused operations against the plain PyTorch expressions they replace."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from diffmm.ops import MAX_UNSHIFTED_LOGIT, dropout, matmul_cross_entropy, normalize_rows


@pytest.mark.parametrize("block_rows", [1, 7, 128])
@pytest.mark.parametrize("bounded", [False, True])
def test_matmul_cross_entropy_equals_cross_entropy_of_the_product(block_rows, bounded):
    torch.manual_seed(0)
    a = torch.randn(50, 8, dtype=torch.float64, requires_grad=True)
    b = torch.randn(30, 8, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 30, (50,))
    targets[:5] = 3  # repeated targets accumulate into one row of b's gradient
    # |a_i . b_j| <= |a_i| |b_j|: a true bound, small enough to skip the max pass
    bound = float(a.detach().norm(dim=1).max() * b.detach().norm(dim=1).max()) if bounded else None
    fused_loss = matmul_cross_entropy(a, b, targets, block_rows=block_rows, logit_bound=bound)
    (2.5 * fused_loss).backward()
    fused = (a.grad.clone(), b.grad.clone())
    a.grad = b.grad = None
    loss = F.cross_entropy(a @ b.T, targets)
    (2.5 * loss).backward()
    torch.testing.assert_close(fused_loss, loss)
    torch.testing.assert_close(fused, (a.grad, b.grad))


def test_matmul_cross_entropy_is_stable_for_large_logits_and_plain_without_grad():
    a = torch.tensor([[100.0, 0.0], [0.0, -100.0]], requires_grad=True)
    b = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    targets = torch.tensor([0, 2])
    loss = matmul_cross_entropy(a, b, targets)
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss, F.cross_entropy(a @ b.T, targets))
    with torch.no_grad():
        torch.testing.assert_close(matmul_cross_entropy(a, b, targets), loss.detach())


def test_unshifted_softmax_is_exact_in_float32_up_to_the_bound_it_is_used_for():
    # logits of exactly +-MAX_UNSHIFTED_LOGIT: exp neither overflows nor underflows
    a = torch.tensor([[MAX_UNSHIFTED_LOGIT], [-MAX_UNSHIFTED_LOGIT]], requires_grad=True)
    b = torch.ones(1000, 1)
    b[::2] = -1.0
    targets = torch.tensor([0, 1])
    loss = matmul_cross_entropy(a, b, targets, logit_bound=MAX_UNSHIFTED_LOGIT)
    loss.backward()
    torch.testing.assert_close(loss, F.cross_entropy(a @ b.T, targets))
    assert torch.isfinite(a.grad).all()
    # a larger bound falls back to the shifted softmax, stable for any logits
    big = torch.tensor([[500.0]], requires_grad=True)
    loss = matmul_cross_entropy(big, torch.ones(3, 1), torch.tensor([0]), logit_bound=500.0)
    assert torch.isfinite(loss)


def test_weights_scale_each_rows_loss_and_gradient():
    torch.manual_seed(1)
    a = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(9, 4, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([0, 1, 2, 2, 8, 5])
    weights = torch.tensor([0.5, 0.0, 2.0, 1.0, 0.25, 3.0], dtype=torch.float64)
    matmul_cross_entropy(a, b, targets, weights, block_rows=4).backward()
    fused = (a.grad.clone(), b.grad.clone())
    a.grad = b.grad = None
    (weights * F.cross_entropy(a @ b.T, targets, reduction="none")).sum().backward()
    torch.testing.assert_close(fused, (a.grad, b.grad))


def test_normalize_rows_matches_f_normalize_values_and_gradients():
    torch.manual_seed(0)
    x = torch.randn(7, 5, dtype=torch.float64)
    x[3] = 0.0  # a zero row: the norm is clamped to eps
    x[5] = 1e-14  # a row below eps
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    g = torch.randn(7, 5, dtype=torch.float64)
    y1 = normalize_rows(x1)
    y2 = F.normalize(x2, dim=1)
    torch.testing.assert_close(y1, y2)
    (y1 * g).sum().backward()
    (y2 * g).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad)
    assert torch.autograd.gradcheck(
        normalize_rows, (torch.randn(4, 3, dtype=torch.float64, requires_grad=True),)
    )
    with pytest.raises(ValueError, match="2-d"):
        normalize_rows(torch.ones(3))


@pytest.mark.parametrize("p", [0.2, 0.5])
def test_dropout_keeps_each_entry_with_probability_one_minus_p_and_rescales(p):
    torch.manual_seed(0)
    x = torch.rand(200, 500) + 0.5  # no zeros: a zero in the output means dropped
    out = dropout(x, p)
    kept = out != 0
    n = x.numel()
    assert abs(kept.sum().item() - (1 - p) * n) < 4 * (p * (1 - p) * n) ** 0.5
    torch.testing.assert_close(out[kept], x[kept] / (1 - p))
    # the gradient is the same mask and scale
    xg = x.clone().requires_grad_()
    torch.manual_seed(1)
    dropout(xg, p).sum().backward()
    torch.manual_seed(1)
    mask = dropout(torch.ones_like(x), p)
    torch.testing.assert_close(xg.grad, mask)


def test_dropout_is_the_identity_in_eval_and_refuses_p_of_one():
    x = torch.randn(3, 4)
    assert dropout(x, 0.5, training=False) is x
    assert dropout(x, 0.0) is x
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        dropout(x, 1.0)
