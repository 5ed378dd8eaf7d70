"""What DiffMM's diffusion adds to a user's modality graphs (paper §A.5, Fig. 5).

For a user and each modality, the denoiser reconstructs the user's interaction row; its
top items that the user has *not* interacted with are what the generated graph ``A^m``
adds. Next to them, the cosine similarity of those items' features with the features of
the user's training items shows whether the additions are coherent in that modality.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffmm.errors import ConfigError
from diffmm.inference import TrainedRecommender


def _require_positive(value: object, option: str, what: str) -> int:
    """``value`` as an int >= 1, else a :class:`ConfigError` naming the option."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ConfigError(f"{option} must be a positive integer ({what}), got {value!r}")
    return int(value)


def _unit(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


@torch.no_grad()
def explain_user(rec: TrainedRecommender, user_id: Any, top: int = 10) -> dict[str, Any]:
    """Per modality: the denoised row's top items, which are new, and their similarities.

    Returns ``{"user", "train_items", "modalities": {name: {"items", "scores", "new",
    "in_graph", "similarity"}}}`` with raw ids; ``similarity`` is the ``(len(train_items),
    len(items))`` cosine similarity of features (train items capped at 20).

    Raises:
        ConfigError: ``top`` is not a positive integer, or the run is not a DiffMM run.
    """
    from diffmm.models.diffmm import DiffMM

    top = _require_positive(top, "--top", "items listed per modality")

    model = rec.model
    if not isinstance(model, DiffMM) or rec.dataset is None:
        raise ConfigError(
            f"explain needs a DiffMM run (this run's model is {rec.metadata['model']!r}): "
            "only DiffMM generates modality graphs"
        )
    u = int(rec.user_index([user_id])[0])
    data = rec.dataset
    train_items = data.train[u].indices[:20]
    users = torch.tensor([u], device=model.user_emb.device)
    out: dict[str, Any] = {
        "user": rec.user_ids[u].item(),
        "train_items": rec.item_ids[train_items].tolist(),
        "modalities": {},
    }
    for m, name in enumerate(model.modalities):
        row = model.generator.denoise(users, m)
        scores, items = torch.topk(row[0], min(top, rec.n_items))
        items_np = items.cpu().numpy()
        graph = (model.scoring_graphs or model.modality_graphs)[m]  # the graph scored with
        crow, col = graph.crow_indices(), graph.col_indices()
        linked = set((col[crow[u] : crow[u + 1]] - model.n_users).cpu().tolist())
        feats = _unit(data.features[name])
        out["modalities"][name] = {
            "items": rec.item_ids[items_np].tolist(),
            "scores": scores.cpu().tolist(),
            "new": [int(i) not in set(data.train[u].indices.tolist()) for i in items_np],
            "in_graph": [int(i) in linked for i in items_np],
            "similarity": feats[train_items] @ feats[items_np].T,
        }
    return out


def format_explanation(exp: dict[str, Any]) -> str:
    """A Markdown table per modality."""
    lines = [f"## User {exp['user']}", "", f"Training items (first 20): {exp['train_items']}"]
    for name, m in exp["modalities"].items():
        lines += [
            "",
            f"### {name}",
            "",
            "| rank | item | denoised score | new for the user | in A^m | mean similarity to "
            "the user's items |",
            "|---|---|---|---|---|---|",
        ]
        sims = m["similarity"].mean(axis=0) if m["similarity"].size else []
        for r, (item, score, new, linked) in enumerate(
            zip(m["items"], m["scores"], m["new"], m["in_graph"], strict=True)
        ):
            sim = f"{sims[r]:.3f}" if len(sims) else "–"
            lines.append(
                f"| {r + 1} | {item} | {score:.4f} | {'yes' if new else 'no'} | "
                f"{'yes' if linked else 'no'} | {sim} |"
            )
    return "\n".join(lines)


def plot_explanation(exp: dict[str, Any], path: str | Path) -> Path:
    """Heat maps (one per modality) of feature similarity: user's items x denoised top items."""
    from diffmm.plots import _pyplot, _save

    plt = _pyplot()
    names = list(exp["modalities"])
    fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 5), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        m = exp["modalities"][name]
        image = ax.imshow(m["similarity"], cmap="viridis", vmin=-1, vmax=1, aspect="auto")
        labels = [f"{i}{'*' if new else ''}" for i, new in zip(m["items"], m["new"], strict=True)]
        ax.set_xticks(range(len(labels)), labels, rotation=60, fontsize=7)
        ax.set_yticks(range(len(exp["train_items"])), exp["train_items"], fontsize=7)
        ax.set(
            title=f"{name}: denoised top items (* = new)",
            xlabel="items from the diffusion model",
            ylabel="the user's training items",
        )
        fig.colorbar(image, ax=ax, label="cosine similarity of features")
    fig.suptitle(f"User {exp['user']}")
    return _save(fig, Path(path))


def sample_users(rec: TrainedRecommender, n: int, seed: int = 0) -> list[Any]:
    """``n`` raw user ids with at least 3 training items, drawn with ``seed`` (fewer if
    fewer users have 3 items).

    Raises:
        ConfigError: ``n`` is not a positive integer.
    """
    n = _require_positive(n, "--sample", "users to draw")
    degree = np.diff(rec.dataset.train.indptr)
    candidates = np.flatnonzero(degree >= 3)
    rng = np.random.default_rng(seed)
    chosen = rng.choice(candidates, size=min(n, len(candidates)), replace=False)
    return rec.user_ids[np.sort(chosen)].tolist()
