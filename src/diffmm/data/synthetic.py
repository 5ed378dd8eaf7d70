"""A synthetic multi-modal dataset with planted structure, for tests and demos.

Users and items get latent factors ``u``, ``v`` (``n_factors``-d, standard normal). Each
user draws ``~ Poisson(interactions_per_user)`` distinct items (at least 3) with probability
proportional to ``softmax(u·v / (sqrt(n_factors) * temperature) + b)``, where ``b`` is a
log-popularity bias (``-popularity_skew * log(1 + rank)`` over a random item ranking),
giving a long tail of rare items.

Two samplers draw the same model (``sampler=`` in :func:`make_synthetic` or the spec):

* ``"exact"``: Gumbel-top-k on the full score matrix, computed in user chunks. Exact, but
  O(users × items) time (~60 ns a pair: 50k × 20k takes a minute).
* ``"clusters"``: time and memory linear in the interactions (plus users × clusters).
  Items are clustered by their factors (k-means, ``n_clusters`` = items / 8, at most
  ``MAX_CLUSTERS`` = 512). A draw picks a cluster from the user's softmax over the
  clusters' approximate masses (popularity mass, popularity-weighted mean factor, and a
  Gaussian correction for the cluster's spread), then ``candidates`` items of the cluster
  by popularity, keeping one by Gumbel-max over ``s u·v_i`` (sampling-importance-
  resampling: it tends to the exact within-cluster law as ``candidates`` grows).
  Repeats are dropped per user (sort, first of each run) and the deficit redrawn; after
  ``_MODEL_ROUNDS`` rounds what is still missing is drawn uniformly. Each user gets the
  same count as with the exact sampler. The law is close but not equal to the exact
  one: the sampled items' mean planted affinity is ~90 % of the exact sampler's at
  2000 × 1500 (``tests/data/test_synthetic.py``), the popularity tail and the features'
  signal are kept. 1M users × 100k items × 10 builds in 89 s with a 1.4 GB peak on
  one shared core (``benchmarks/results/synthetic_scale.md``).
* ``"auto"`` (default): exact up to ``EXACT_MAX_PAIRS`` user-item pairs (5e7, about 3 s),
  so every small dataset, and every output built on one, stays bitwise as before;
  clusters above it.

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

SAMPLERS = ("auto", "exact", "clusters")
#: Largest ``n_users * n_items`` that ``sampler="auto"`` draws exactly.
EXACT_MAX_PAIRS = 50_000_000
#: Default clusters of the clusters sampler: ``min(MAX_CLUSTERS, n_items // 8)``.
MAX_CLUSTERS = 512
_MODEL_ROUNDS = 16  # top-up rounds from the model's proposal before uniform ones
_BLOCK = 1 << 21  # elements of a temporary block (users × clusters, draws × candidates)


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


def _exact_sample(
    rng: np.random.Generator,
    user_f: np.ndarray,
    item_f: np.ndarray,
    bias: np.ndarray,
    counts: np.ndarray,
    scale: float,
) -> tuple[np.ndarray, np.ndarray]:
    """The exact sampler: Gumbel-top-k over all items, in chunks of users."""
    n_items = len(item_f)
    chunk = max(1, _BLOCK // n_items)
    users, items = [], []
    for start in range(0, len(user_f), chunk):
        logits = (user_f[start : start + chunk] @ item_f.T) * scale + bias
        u, i = _top_k_items(rng, logits, counts[start : start + chunk])
        users.append(u + start)
        items.append(i)
    return np.concatenate(users), np.concatenate(items)


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
    sampler: str = "auto",
    n_clusters: int | None = None,
    candidates: int = 16,
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
        sampler: ``"exact"``, ``"clusters"`` or ``"auto"`` (see the module docstring).
        n_clusters, candidates: item clusters (default ``n_items // 8``, at most 512)
            and proposals per draw of the clusters sampler.
        name: the dataset's name.
    """
    _check_args(
        n_users=n_users, n_items=n_items, n_factors=n_factors,
        interactions_per_user=interactions_per_user, temperature=temperature,
        visual_dim=visual_dim, acoustic_dim=acoustic_dim,
    )  # fmt: skip
    if n_items < 3:
        raise DataError(f"make_synthetic: n_items must be at least 3, got {n_items}")
    if sampler not in SAMPLERS:
        raise DataError(f"make_synthetic: sampler must be one of {SAMPLERS}, got {sampler!r}")
    _check_args(candidates=candidates, n_clusters=1 if n_clusters is None else n_clusters)
    if sampler == "auto":
        sampler = "exact" if n_users * n_items <= EXACT_MAX_PAIRS else "clusters"
    rng = np.random.default_rng(seed)
    user_f = rng.standard_normal((n_users, n_factors))
    item_f = rng.standard_normal((n_items, n_factors))
    bias = -popularity_skew * np.log1p(rng.permutation(n_items))
    counts = np.clip(rng.poisson(interactions_per_user, n_users), 3, n_items)
    scale = 1.0 / (np.sqrt(n_factors) * temperature)
    extra = ""
    if sampler == "exact":
        u, i = _exact_sample(rng, user_f, item_f, bias, counts, scale)
    else:
        c = n_clusters or min(MAX_CLUSTERS, max(1, n_items // 8))
        proposal = ClusterProposal(rng, item_f, bias, scale, c)
        u, i = _sample_without_replacement(rng, proposal, user_f, counts, candidates)
        extra = f", sampler=clusters, n_clusters={c}, candidates={candidates}"
    labels = split_labels(u, "random", seed=int(rng.integers(2**31)))
    features = {
        "visual": _projection(rng, item_f, visual_dim, 1.0, visual_noise),
        "acoustic": _projection(rng, item_f, acoustic_dim, acoustic_signal, 1.0),
    }
    source = (
        f"synthetic(n_users={n_users}, n_items={n_items}, n_factors={n_factors}, "
        f"interactions_per_user={interactions_per_user}, seed={seed}{extra})"
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


def _kmeans(
    rng: np.random.Generator, x: np.ndarray, k: int, iters: int = 8, fit_per_cluster: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means from ``k`` random points; (label of each row, centroids).

    The centroids are fitted on at most ``fit_per_cluster * k`` random rows, then every row
    is assigned once. Empty clusters are dropped, so there may be fewer than ``k``.
    """
    fit = x[rng.permutation(len(x))[: fit_per_cluster * k]]
    centroids = fit[: min(k, len(fit))].copy()  # random rows: fit is shuffled
    for _ in range(iters):
        labels = _nearest(fit, centroids)
        sizes = np.bincount(labels, minlength=len(centroids))
        sums = np.stack([np.bincount(labels, fit[:, d], len(centroids)) for d in range(x.shape[1])])
        filled = sizes > 0
        centroids[filled] = sums.T[filled] / sizes[filled, None]
    labels = _nearest(x, centroids)
    used = np.unique(labels)
    remap = np.zeros(len(centroids), dtype=np.int64)
    remap[used] = np.arange(len(used))
    return remap[labels], centroids[used]


def _nearest(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of each row's nearest centroid (squared Euclidean), in row blocks."""
    chunk = max(1, _BLOCK // len(centroids))
    c2 = (centroids**2).sum(1)
    return np.concatenate(
        [(c2 - 2 * x[s : s + chunk] @ centroids.T).argmin(1) for s in range(0, len(x), chunk)]
    )


class ClusterProposal:
    """Draws from ``p(i | u) ∝ exp(scale u·v_i + b_i)`` via k-means clusters of the items.

    A draw picks a cluster ``c`` from the user's softmax over the clusters' approximate
    masses, ``log Z_c + scale u·m_c + scale²/2 u²·σ²_c`` (``Z_c``, ``m_c``, ``σ²_c``: the
    cluster's popularity mass and popularity-weighted factor mean and diagonal variance;
    the Gaussian moment generating function of its factors), then ``candidates`` items of
    ``c`` by popularity, and keeps one by Gumbel-max on ``scale u·v_i``
    (sampling-importance-resampling). Cost per draw: O(clusters / draws per user +
    candidates × factors), never users × items.
    """

    def __init__(
        self,
        rng: np.random.Generator,
        item_f: np.ndarray,
        bias: np.ndarray,
        scale: float,
        n_clusters: int,
    ) -> None:
        self.item_f, self.scale = item_f, scale
        self.cluster, _ = _kmeans(rng, item_f, n_clusters)
        n_c = int(self.cluster.max()) + 1
        self.order = np.argsort(self.cluster, kind="stable")  # items grouped by cluster
        self.sorted_f32 = item_f[self.order].astype(np.float32)  # position -> factors
        weight = np.exp(bias - bias.max())
        self.cum = np.concatenate(([0.0], np.cumsum(weight[self.order])))
        self.cum_ext = np.append(self.cum, np.inf)
        self.guide_scale = len(item_f) / self.cum[-1]
        self.guide = (
            np.searchsorted(self.cum, np.arange(len(item_f)) / self.guide_scale, "right") - 1
        )
        sizes = np.bincount(self.cluster, minlength=n_c)
        self.end = np.cumsum(sizes)  # cluster c holds order[start[c] : end[c]]
        self.start = self.end - sizes
        mass = self.cum[self.end] - self.cum[self.start]
        self.log_mass = np.log(mass)

        def weighted_mean(x: np.ndarray) -> np.ndarray:
            cols = [np.bincount(self.cluster, weight * x[:, d], n_c) for d in range(x.shape[1])]
            return np.stack(cols, axis=1) / mass[:, None]

        self.mean = weighted_mean(item_f)
        self.var = weighted_mean((item_f - self.mean[self.cluster]) ** 2)

    def _locate(self, t: np.ndarray) -> np.ndarray:
        """``searchsorted(cum, t, "right") - 1`` by a guide table: O(1) expected per value.

        ``guide[k]`` is the item holding ``k / len(guide)`` of the total mass; from there a
        value walks right (on average less than 1 + items / len(guide) steps).
        """
        flat_t = t.ravel()
        pos = self.guide[
            np.minimum((flat_t * self.guide_scale).astype(np.int64), len(self.guide) - 1)
        ]
        todo = np.flatnonzero(self.cum_ext[pos + 1] <= flat_t)
        while todo.size:
            pos[todo] += 1
            todo = todo[self.cum_ext[pos[todo] + 1] <= flat_t[todo]]
        return pos.reshape(t.shape)

    def draw(
        self, rng: np.random.Generator, user_f: np.ndarray, users: np.ndarray, candidates: int
    ) -> np.ndarray:
        """One item for each entry of ``users`` (sorted), in blocks of users."""
        first = _first_of_runs(users)
        uniq = users[first]
        bounds = np.append(first, len(users))
        per_user = len(users) / len(uniq) * candidates * self.item_f.shape[1]
        chunk = max(1, int(_BLOCK / max(len(self.mean), per_user)))
        out = np.empty(len(users), dtype=np.int64)
        for a in range(0, len(uniq), chunk):
            rows = uniq[a : a + chunk]
            lo, hi = bounds[a], bounds[a + len(rows)]
            row = np.repeat(np.arange(len(rows)), np.diff(bounds[a : a + len(rows) + 1]))
            out[lo:hi] = self._draw_block(rng, user_f[rows], row, candidates)
        return out

    def _draw_block(
        self, rng: np.random.Generator, uf: np.ndarray, row: np.ndarray, candidates: int
    ) -> np.ndarray:
        """Draw ``j`` for user ``uf[row[j]]``: a cluster, then SIR among its items."""
        n_c = len(self.mean)
        # log sum_{i in c} exp(b_i + s u·v_i) ~ log Z_c + s u·m_c + s²/2 u²·σ²_c (Gaussian)
        logits = self.scale * (uf @ self.mean.T) + self.log_mass
        logits += 0.5 * self.scale**2 * ((uf**2) @ self.var.T)
        cdf = np.cumsum(np.exp(logits - logits.max(1, keepdims=True)), axis=1)
        cdf /= cdf[:, -1:]
        flat = (cdf + np.arange(len(uf))[:, None]).ravel()  # row r's cdf lies in [r, r + 1]
        c = np.searchsorted(flat, rng.random(len(row)) + row) - row * n_c
        c = np.clip(c, 0, n_c - 1)
        # candidates of cluster c by popularity, kept by Gumbel-max on exp(s u·v_i)
        shape = (len(row), candidates)
        lo, hi = self.cum[self.start[c]], self.cum[self.end[c]]
        t = lo[:, None] + rng.random(shape) * (hi - lo)[:, None]
        pos = self._locate(t)
        pos = np.minimum(np.maximum(pos, self.start[c, None]), self.end[c, None] - 1)
        cand_f = np.take(self.sorted_f32, pos.ravel(), axis=0).reshape(*shape, -1)
        log_w = self.scale * np.einsum("nf,nmf->nm", uf[row].astype(np.float32), cand_f)
        gumbel = -np.log(rng.standard_exponential(shape, dtype=np.float32) + 1e-30)
        pick = (log_w + gumbel).argmax(1)
        return self.order[pos[np.arange(len(row)), pick]]


def _sample_without_replacement(
    rng: np.random.Generator,
    proposal: ClusterProposal,
    user_f: np.ndarray,
    counts: np.ndarray,
    candidates: int,
) -> tuple[np.ndarray, np.ndarray]:
    """``counts[u]`` distinct items per user: draw, drop repeats, redraw the deficit.

    The first round draws 25 % more than is missing, each next one twice as many as the
    one before (up to 64 times); the first draw of an item counts. After
    ``_MODEL_ROUNDS`` rounds the rest is drawn uniformly, with enough draws that about the
    missing number are new, so the loop ends even when a user takes nearly every item.
    """
    n_items = len(proposal.item_f)
    need = counts.astype(np.int64)
    have = np.zeros_like(need)
    users: list[np.ndarray] = []
    items: list[np.ndarray] = []
    rounds = 0
    while (active := np.flatnonzero(need > 0)).size:
        if rounds < _MODEL_ROUNDS:
            n_draw = (need[active] + need[active] // 4 + 1) << min(rounds, 6)
            draw_u = np.repeat(active, n_draw)
            draw_i = proposal.draw(rng, user_f, draw_u, candidates)
        else:
            free = n_items - have[active]
            n_draw = -(-need[active] * n_items // free) + need[active] // 4 + 1
            draw_u = np.repeat(active, n_draw)
            draw_i = rng.integers(n_items, size=len(draw_u))
        old_keys = np.empty(0, dtype=np.int64)
        if users:  # what the active users already hold comes first, so it is kept
            au, ai = np.concatenate(users), np.concatenate(items)
            held = need[au] > 0
            old_keys = au[held] * n_items + ai[held]
        keys = np.concatenate([old_keys, draw_u * n_items + draw_i])
        order = np.argsort(keys, kind="stable")  # the first of equal keys comes first
        first = order[_first_of_runs(keys[order])]
        new = np.sort(first[first >= len(old_keys)]) - len(old_keys)
        nu = draw_u[new]
        rank = np.arange(len(nu)) - np.searchsorted(nu, nu)
        keep = new[rank < need[nu]]
        users.append(draw_u[keep])
        items.append(draw_i[keep])
        got = np.bincount(draw_u[keep], minlength=len(need))
        need -= got
        have += got
        rounds += 1
    return np.concatenate(users), np.concatenate(items)


def _first_of_runs(sorted_values: np.ndarray) -> np.ndarray:
    """Index of the first element of each run of equal values in a sorted array."""
    if not len(sorted_values):
        return np.empty(0, dtype=np.int64)
    return np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
