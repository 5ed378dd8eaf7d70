"""DiffMM's cross-modal contrastive loss (Jiang et al., ACM MM 2024, §2.3, eq. 18-19).

For every anchor node (the batch's distinct users and positive items) the positive is
the same node in another view and the negatives are other nodes of that view; the loss
is a softmax cross-entropy over cosine similarities divided by the temperature ``τ``.
Which nodes are the negatives decides the cost of a step:

- ``all`` (the authors' code): every user (for user anchors) or item (for item
  anchors) of the other view; anchors × (users + items) logits per step.
- ``batch`` (in-batch negatives, as SGL: Wu et al., SIGIR 2021): the step's other
  anchors; anchors² logits.
- ``sampled``: ``N`` users and ``N`` items drawn uniformly per step and shared by all
  anchors; anchors × N logits. A draw may hit the anchor itself (probability ``N/U``),
  which then counts once as a negative too.

Only ``all`` is the paper's loss; the two others estimate it with fewer negatives, so
that the cost of an epoch grows with the interactions rather than interactions × nodes.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from diffmm import precision
from diffmm.models.base import Batch
from diffmm.ops import matmul_cross_entropy, normalize_rows

Negatives = Literal["all", "batch", "sampled"]


@dataclass(frozen=True)
class ContrastiveAnchors:
    """The distinct users and positive items of a batch, the anchors of eq. 18-19.

    A node drawn ``k`` times in a batch of ``n`` is one anchor of weight ``k/n``: the same
    mean over the batch's draws. ``nodes`` indexes the (U+I) rows: users, then items.
    """

    users: Tensor
    user_weights: Tensor
    items: Tensor
    item_weights: Tensor
    nodes: Tensor

    @classmethod
    def of(cls, batch: Batch, n_users: int) -> ContrastiveAnchors:
        users, user_counts = torch.unique(batch.users, return_counts=True)
        items, item_counts = torch.unique(batch.pos_items, return_counts=True)
        return cls(
            users=users,
            user_weights=user_counts / len(batch.users),
            items=items,
            item_weights=item_counts / len(batch.pos_items),
            nodes=torch.cat([users, n_users + items]),
        )


def cross_modal_info_nce(
    main_anchors: Tensor | None,
    views: list[Tensor],
    anchors: ContrastiveAnchors,
    n_users: int,
    temperature: float,
    negatives: Negatives = "all",
    sampled_negatives: int = 1024,
) -> Tensor:
    """Cross-modal InfoNCE over the batch's users and positive items (eq. 18-19).

    Args:
        main_anchors: the anchors' rows of the main view ``H̄`` (eq. 19, every modality
            view against it), or None to pair every two modality views (eq. 18).
        views: the modality views, (U+I) rows each.
        anchors: the batch's anchors.
        n_users: U, where the item rows of a view begin.
        temperature: τ.
        negatives: which nodes are each anchor's negatives (see the module's docstring).
        sampled_negatives: N, the users and items drawn per step for ``sampled``.
    """
    if main_anchors is not None:
        anchor_rows = normalize_rows(main_anchors)  # once, for every view
        pairs = [(anchor_rows, v) for v in views]
    else:
        pairs = [
            (normalize_rows(views[a].index_select(0, anchors.nodes)), views[b])
            for a, b in itertools.combinations(range(len(views)), 2)
        ]
    n_items, tau = views[0].shape[0] - n_users, temperature
    total = views[0].new_zeros(())
    for anchor_rows, other in pairs:
        a_users, a_items = (anchor_rows / tau).split([len(anchors.users), len(anchors.items)])
        if negatives == "all":
            o_users, o_items = normalize_rows(other).split([n_users, n_items])
            total = total + info_nce(a_users, o_users, anchors.users, anchors.user_weights, tau)
            total = total + info_nce(a_items, o_items, anchors.items, anchors.item_weights, tau)
            continue
        o_users, o_items = other.split([n_users, n_items])
        for a, o, nodes, weights in (
            (a_users, o_users, anchors.users, anchors.user_weights),
            (a_items, o_items, anchors.items, anchors.item_weights),
        ):
            own = normalize_rows(o.index_select(0, nodes))
            if negatives == "batch":  # each anchor's positive is its own row: the diagonal
                diagonal = torch.arange(len(nodes), device=nodes.device)
                total = total + info_nce(a, own, diagonal, weights, tau)
            else:
                drawn = torch.randint(len(o), (sampled_negatives,), device=nodes.device)
                drawn_rows = normalize_rows(o.index_select(0, drawn))
                total = total + sampled_info_nce(a, own, drawn_rows, weights)
    return total


def info_nce(
    anchors: Tensor, others: Tensor, positives: Tensor, weights: Tensor, temperature: float
) -> Tensor:
    """InfoNCE over normalised rows (eq. 18): ``Σ_j weights_j · CE_j``.

    ``anchors`` are unit rows already divided by the temperature and ``others`` unit rows;
    anchor ``j``'s positive is ``others[positives[j]]`` and its negatives all rows of
    ``others``: a softmax cross-entropy over the cosine similarities over ``τ``.
    """
    return matmul_cross_entropy(anchors, others, positives, weights, logit_bound=1.0 / temperature)


def sampled_info_nce(
    anchors: Tensor, positives: Tensor, negatives: Tensor, weights: Tensor
) -> Tensor:
    """InfoNCE with shared negatives: ``Σ_j weights_j · CE_j`` over the logits
    ``[a_j·p_j, a_j·n_1, ..., a_j·n_N]``.

    ``anchors`` are unit rows already divided by the temperature, ``positives`` each
    anchor's own row of the other view and ``negatives`` the ``N`` rows drawn for the
    step, all unit rows. Cost and memory grow with anchors × N, not with the nodes.
    The product runs in bfloat16 inside :func:`diffmm.precision.matmuls` (bfloat16).
    """
    positive = (anchors * positives).sum(-1, keepdim=True)
    with precision.autocast(anchors.device.type):  # bf16 inside precision.matmuls(bf16)
        drawn = (anchors @ negatives.T).float()
    logits = torch.cat([positive, drawn], dim=1)
    return (weights * (torch.logsumexp(logits, dim=1) - positive.squeeze(1))).sum()
