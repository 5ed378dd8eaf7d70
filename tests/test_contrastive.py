"""DiffMM's cross-modal InfoNCE: the three forms of negatives, written out by hand."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from diffmm.contrastive import ContrastiveAnchors, cross_modal_info_nce, sampled_info_nce
from diffmm.models.base import Batch

TAU = 0.4


def views_and_anchors(n_users: int = 9, n_items: int = 7, dim: int = 5, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    views = [
        torch.randn(n_users + n_items, dim, generator=gen, dtype=torch.float64).requires_grad_()
        for _ in range(2)
    ]
    batch = Batch(  # user 2 and item 3 drawn twice
        torch.tensor([0, 2, 5, 2]), torch.tensor([3, 1, 3, 6]), torch.tensor([0, 0, 0, 0])
    )
    return views, ContrastiveAnchors.of(batch, n_users), batch


def nce(anchor: torch.Tensor, candidates: torch.Tensor, positive: int) -> torch.Tensor:
    """-log softmax of the positive over one anchor's candidates (cosines over τ)."""
    logits = F.normalize(candidates) @ F.normalize(anchor, dim=0) / TAU
    return -torch.log_softmax(logits, 0)[positive]


def test_sampled_info_nce_is_cross_entropy_over_positive_and_drawn_rows():
    gen = torch.Generator().manual_seed(1)
    a, p, n = (
        F.normalize(torch.randn(k, 4, generator=gen, dtype=torch.float64)) for k in (3, 3, 5)
    )
    w = torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64)
    expected = sum(
        w[j] * -torch.log_softmax(torch.cat([p[j : j + 1], n]) @ a[j], 0)[0] for j in range(3)
    )
    torch.testing.assert_close(sampled_info_nce(a, p, n, w), expected)


def test_batch_negatives_are_the_other_anchors_of_the_step():
    views, anchors, batch = views_and_anchors()
    main = views[0].detach().clone().requires_grad_()
    rows = main.index_select(0, anchors.nodes)
    loss = cross_modal_info_nce(rows, [views[1]], anchors, 9, TAU, negatives="batch")
    other, n_users = views[1], 9
    users, items = anchors.users.tolist(), (n_users + anchors.items).tolist()
    expected = 0.0
    for nodes, draws in (
        (users, batch.users.tolist()),
        (items, (n_users + batch.pos_items).tolist()),
    ):
        for node in draws:  # each draw once: repeated nodes weigh more
            expected = expected + nce(main[node], other[nodes], nodes.index(node)) / len(draws)
    torch.testing.assert_close(loss, expected)
    grads = torch.autograd.grad(loss, [main, other])
    torch.testing.assert_close(grads, torch.autograd.grad(expected, [main, other]))


@pytest.mark.parametrize("anchor", ["main", "modality"])
def test_sampled_negatives_are_drawn_per_step_from_the_anchors_own_kind(anchor):
    views, anchors, batch = views_and_anchors()
    main = views[0].detach().clone()
    rows = main.index_select(0, anchors.nodes) if anchor == "main" else None
    torch.manual_seed(3)
    loss = cross_modal_info_nce(
        rows, views, anchors, 9, TAU, negatives="sampled", sampled_negatives=4
    )
    torch.manual_seed(3)  # the same draws: 4 users, then 4 items, per pair of views
    pairs = [(main, views[0]), (main, views[1])] if anchor == "main" else [(views[0], views[1])]
    expected = 0.0
    for a, o in pairs:
        for offset, draws in ((0, batch.users.tolist()), (9, batch.pos_items.tolist())):
            n_kind = 9 if offset == 0 else 7
            drawn = (offset + torch.randint(n_kind, (4,))).tolist()
            for node in draws:
                node = offset + node
                expected = expected + nce(a[node], o[[node, *drawn]], 0) / len(draws)
    torch.testing.assert_close(loss, expected)


def test_all_negatives_are_every_node_of_the_anchors_kind():
    views, anchors, batch = views_and_anchors()
    loss = cross_modal_info_nce(None, views, anchors, 9, TAU, negatives="all")
    expected = 0.0
    for offset, count, draws in ((0, 9, batch.users.tolist()), (9, 7, batch.pos_items.tolist())):
        kind = list(range(offset, offset + count))
        for node in draws:
            expected = expected + nce(views[0][offset + node], views[1][kind], node) / len(draws)
    torch.testing.assert_close(loss, expected)


def logit_flops(negatives: str, n_users: int) -> int:
    views, anchors, _ = views_and_anchors(n_users=n_users, n_items=n_users)
    with FlopCounterMode(display=False) as counter:
        cross_modal_info_nce(None, views, anchors, n_users, TAU, negatives, sampled_negatives=8)
    return counter.get_total_flops()


def test_batch_and_sampled_cost_does_not_grow_with_the_nodes():
    """The point of the two estimates: matrix work set by the batch, not the catalogue."""
    for negatives in ("batch", "sampled"):
        assert logit_flops(negatives, 50) == logit_flops(negatives, 5000) > 0
    assert logit_flops("all", 5000) > 50 * logit_flops("all", 50) / 2


def test_sampled_negatives_follow_the_bf16_setting():
    from diffmm import precision

    views, anchors, _ = views_and_anchors()
    views = [v.detach().float() for v in views]
    torch.manual_seed(3)
    fp32 = cross_modal_info_nce(None, views, anchors, 9, TAU, "sampled", sampled_negatives=4)
    torch.manual_seed(3)
    with precision.matmuls(torch.bfloat16):
        bf16 = cross_modal_info_nce(None, views, anchors, 9, TAU, "sampled", sampled_negatives=4)
    assert bf16.dtype == torch.float32 and bf16 != fp32
    torch.testing.assert_close(bf16, fp32, rtol=2e-2, atol=0)
