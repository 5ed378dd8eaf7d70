"""A synthetic multi-modal dataset with planted structure, for tests and demos.

Users and items get latent factors ``u``, ``v`` (``n_factors``-d, standard normal). Each
user draws ``~ Poisson(interactions_per_user)`` distinct items (at least 3) with probability
proportional to ``softmax(u·v / (sqrt(n_factors) * temperature) + b)``, where ``b`` is a
log-popularity bias (``-popularity_skew * log(1 + rank)`` over a random item ranking),
giving a long tail of rare items. Sampling without replacement is Gumbel-top-k on the
score matrix, computed in user chunks (no Python loop over users).

Features: ``"visual"`` is an informative noisy linear projection of the item factors,
``"acoustic"`` a weak one (mostly noise). A model that reads features can therefore
place rare items that an ID-only model knows little about. Interactions are split per
user 8:1:1 (:func:`diffmm.data.split.split_labels`). Everything is determined by ``seed``.
"""

from __future__ import annotations

import numpy as np

from diffmm.data.dataset import Dataset, build_dataset
from diffmm.data.split import split_labels
from diffmm.errors import DataError


def is_synthetic_spec(data: str) -> bool:
    """Whether ``data`` names the built-in synthetic data: ``synthetic`` or ``synthetic:...``.

    Anything else, such as a file ``synthetic_clicks.csv``, is a path.
    """
    return data == "synthetic" or data.startswith("synthetic:")


def _top_k_items(
    rng: np.random.Generator, logits: np.ndarray, k: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Gumbel-top-k: per row, ``k[row]`` distinct columns sampled ∝ softmax(logits)."""
    kmax = int(k.max())
    g = logits + rng.gumbel(size=logits.shape)
    top = np.argpartition(-g, kmax - 1, axis=1)[:, :kmax]
    order = np.argsort(-np.take_along_axis(g, top, axis=1), axis=1)
    top = np.take_along_axis(top, order, axis=1)
    keep = np.arange(kmax)[None, :] < k[:, None]
    rows = np.broadcast_to(np.arange(len(k))[:, None], top.shape)
    return rows[keep], top[keep]


def _check_args(**kwargs: float) -> None:
    for key, value in kwargs.items():
        if not value > 0:
            raise DataError(f"make_synthetic: {key} must be positive, got {value!r}")


def make_synthetic(
    n_users: int = 1000,
    n_items: int = 800,
    n_factors: int = 16,
    interactions_per_user: int = 20,
    seed: int = 0,
    *,
    temperature: float = 0.35,
    popularity_skew: float = 1.0,
    visual_dim: int = 64,
    visual_noise: float = 0.5,
    acoustic_dim: int = 32,
    acoustic_signal: float = 0.1,
    name: str = "synthetic",
) -> Dataset:
    """Build a synthetic dataset with planted user/item factors (see the module docstring).

    Args:
        n_users, n_items: sizes.
        n_factors: dimension of the planted latent factors.
        interactions_per_user: mean number of items per user (Poisson, at least 3).
        seed: the only source of randomness.
        temperature: softmax temperature of the user-item affinity (lower = sharper).
        popularity_skew: strength of the log-popularity bias (0 = no popularity effect).
        visual_dim, visual_noise: size and noise level of the informative "visual" feature.
        acoustic_dim, acoustic_signal: size and (small) signal weight of "acoustic".
        name: the dataset's name.
    """
    _check_args(
        n_users=n_users, n_items=n_items, n_factors=n_factors,
        interactions_per_user=interactions_per_user, temperature=temperature,
        visual_dim=visual_dim, acoustic_dim=acoustic_dim,
    )  # fmt: skip
    if n_items < 3:
        raise DataError(f"make_synthetic: n_items must be at least 3, got {n_items}")
    rng = np.random.default_rng(seed)
    user_f = rng.standard_normal((n_users, n_factors))
    item_f = rng.standard_normal((n_items, n_factors))
    bias = -popularity_skew * np.log1p(rng.permutation(n_items))
    counts = np.clip(rng.poisson(interactions_per_user, n_users), 3, n_items)
    scale = 1.0 / (np.sqrt(n_factors) * temperature)
    chunk = max(1, (1 << 21) // n_items)
    users, items = [], []
    for start in range(0, n_users, chunk):
        logits = (user_f[start : start + chunk] @ item_f.T) * scale + bias
        u, i = _top_k_items(rng, logits, counts[start : start + chunk])
        users.append(u + start)
        items.append(i)
    u, i = np.concatenate(users), np.concatenate(items)
    labels = split_labels(u, "random", seed=int(rng.integers(2**31)))
    features = {
        "visual": _projection(rng, item_f, visual_dim, 1.0, visual_noise),
        "acoustic": _projection(rng, item_f, acoustic_dim, acoustic_signal, 1.0),
    }
    source = (
        f"synthetic(n_users={n_users}, n_items={n_items}, n_factors={n_factors}, "
        f"interactions_per_user={interactions_per_user}, seed={seed})"
    )
    splits = [(u[labels == k], i[labels == k]) for k in range(3)]
    return build_dataset(name, n_users, n_items, *splits, features=features, source=source)


def _projection(
    rng: np.random.Generator, factors: np.ndarray, dim: int, signal: float, noise: float
) -> np.ndarray:
    """``signal * factors @ W + noise * N(0, 1)``, with W scaled to unit output variance."""
    w = rng.standard_normal((factors.shape[1], dim)) / np.sqrt(factors.shape[1])
    out = signal * (factors @ w) + noise * rng.standard_normal((len(factors), dim))
    return out.astype(np.float32)
