"""Settings that cannot work are refused when the configuration is resolved (issue 11, §3).

Every refusal is a :class:`ConfigError` (or :class:`DataError` for data the model cannot
use) with a one-line message that names the setting; on the command line it is one
``error:`` line, exit status 2, no traceback and no run directory.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from click.testing import CliRunner

from diffmm.config import resolve_config
from diffmm.data.dataset import Dataset
from diffmm.errors import ConfigError, DataError
from diffmm.models import get_model_class, model_names

TINY = "synthetic:n_users=60,n_items=40,interactions_per_user=8"

# (model, --set assignment, substrings the message must contain)
BAD_SETTINGS = [
    # seeds: [0, 2^63)
    ("diffmm", "train.seed=-1", ["train.seed", "greater than or equal to 0"]),
    ("diffmm", "train.seed=100000000000000000000000", ["train.seed", "less than"]),
    ("diffmm", "train.seed=1.5", ["train.seed", "integer"]),
    # selection metric and cut-offs
    ("diffmm", "train.metric=recall@0", ["train.metric", "positive"]),
    ("diffmm", "train.metric=recall@01", ["train.metric", "'recall@1'"]),
    ("diffmm", "train.metric=recall@-5", ["train.metric"]),
    ("diffmm", "train.metric=recall@", ["train.metric"]),
    ("diffmm", "train.metric=coverage@10", ["train.metric", "recall", "mrr"]),  # not per user
    ("mf", "train.metric=ndcg@ 5", ["train.metric"]),
    ("mf", "train.ks=[0]", ["train.ks"]),
    ("mf", "train.ks=[10, -1]", ["train.ks"]),
    ("mf", "train.ks=[2.5]", ["train.ks"]),
    ("mf", "train.ks=[10.0]", ["train.ks"]),
    ("mf", "train.ks=[true]", ["train.ks"]),
    # training numbers
    ("diffmm", "train.lr=Infinity", ["train.lr", "finite"]),
    ("diffmm", "train.lr=inf", ["train.lr"]),
    ("diffmm", "train.lr=NaN", ["train.lr"]),
    ("diffmm", "train.lr=0", ["train.lr", "greater than 0"]),
    ("diffmm", "train.lr=true", ["train.lr", "valid number"]),
    ("diffmm", 'train.lr="0.01"', ["train.lr", "valid number"]),
    ("mf", "train.batch_size=0", ["train.batch_size", "greater than or equal to 1"]),
    ("mf", "train.eval_batch_size=0", ["train.eval_batch_size"]),
    ("mf", "train.epochs=true", ["train.epochs", "integer"]),
    ("mf", "train.epochs=2e9", ["train.epochs", "integer"]),
    ("mf", "train.patience=0", ["train.patience"]),
    ("mf", "train.eval_every=0", ["train.eval_every"]),
    # the diffusion schedule
    ("diffmm", "noise_min=0.5", ["noise_min", "noise_max"]),
    ("diffmm", "noise_min=0.02", ["noise_min", "noise_max"]),
    ("diffmm", "noise_min=0", ["diffmm.noise_min", "greater than 0"]),
    ("diffmm", "noise_max=1.5", ["diffmm.noise_max", "less than 1"]),
    ("diffmm", "noise_scale=5", ["diffmm.noise_scale", "less than or equal to 1"]),
    ("diffmm", "noise_scale=0", ["diffmm.noise_scale"]),
    ("diffmm", "sampling_steps=50", ["sampling_steps", "diffusion_steps (5)"]),
    ("diffmm", "sampling_steps=6", ["sampling_steps", "diffusion_steps"]),
    ("diffmm", "diffusion_steps=0", ["diffmm.diffusion_steps"]),
    ("diffmm", "diffusion_steps=1000000", ["diffmm.diffusion_steps", "less than or equal"]),
    # sizes: integers >= 1 (no floats, no astronomically large values)
    ("diffmm", "embedding_dim=2e9", ["diffmm.embedding_dim", "allowed: an integer in [1, 65536]"]),
    ("diffmm", "embedding_dim=2000000000", ["diffmm.embedding_dim", "less than or equal"]),
    ("diffmm", "embedding_dim=-3", ["diffmm.embedding_dim"]),
    ("diffmm", "denoiser_hidden_dims=[0]", ["diffmm.denoiser_hidden_dims"]),
    ("diffmm", "denoiser_hidden_dims=[64, -5]", ["diffmm.denoiser_hidden_dims"]),
    ("diffmm", "denoiser_hidden_dims=[]", ["diffmm.denoiser_hidden_dims"]),
    ("diffmm", "denoiser_hidden_dims=[1e9]", ["diffmm.denoiser_hidden_dims"]),
    ("diffmm", "step_embedding_dim=0", ["diffmm.step_embedding_dim"]),
    ("diffmm", "diffusion_batch_size=0", ["diffmm.diffusion_batch_size"]),
    ("diffmm", "diffusion_chunk_size=0", ["diffmm.diffusion_chunk_size"]),
    ("diffmm", "n_layers=-1", ["diffmm.n_layers"]),
    ("diffmm", "n_layers=100000", ["diffmm.n_layers"]),
    ("diffmm", "rebuild_k=0", ["diffmm.rebuild_k"]),
    # rates, weights, temperatures
    ("diffmm", "keep_rate=1.5", ["diffmm.keep_rate", "less than or equal to 1"]),
    ("diffmm", "keep_rate=0", ["diffmm.keep_rate"]),
    ("diffmm", "random_graph_keep_rate=0", ["diffmm.random_graph_keep_rate"]),
    ("diffmm", "diffusion_graph_ratio=1.5", ["diffmm.diffusion_graph_ratio"]),
    ("diffmm", "denoiser_dropout=1", ["diffmm.denoiser_dropout"]),
    ("diffmm", "temperature=0", ["diffmm.temperature"]),
    ("diffmm", "temperature=Infinity", ["diffmm.temperature"]),
    ("diffmm", "diffusion_lr=Infinity", ["diffmm.diffusion_lr"]),
    ("diffmm", "cl_weight=Infinity", ["diffmm.cl_weight"]),
    ("diffmm", "l2_weight=-1", ["diffmm.l2_weight"]),
    ("diffmm", "msi_weight=NaN", ["diffmm.msi_weight"]),
    ("diffmm", "residual_weight=-0.5", ["diffmm.residual_weight"]),
    # the other models
    ("mf", "embedding_dim=0", ["mf.embedding_dim"]),
    ("mf", "l2_weight=Infinity", ["mf.l2_weight"]),
    ("lightgcn", "n_layers=-1", ["lightgcn.n_layers"]),
    ("lightgcn", "embedding_dim=1e5", ["lightgcn.embedding_dim"]),
    ("lightgcn_m", "embedding_dim=100000", ["lightgcn_m.embedding_dim"]),
    ("vbpr", "embedding_dim=0", ["vbpr.embedding_dim"]),
    ("vbpr", "content_dim=0", ["vbpr.content_dim"]),
    ("vbpr", "l2_weight=NaN", ["vbpr.l2_weight"]),
    ("lattice", "knn_k=0", ["lattice.knn_k"]),
    ("lattice", "knn_k=2.5", ["lattice.knn_k"]),
    ("lattice", "original_graph_weight=1.5", ["lattice.original_graph_weight"]),
    ("lattice", "feature_embedding_dim=2e9", ["lattice.feature_embedding_dim"]),
    ("lattice", "item_graph_layers=-1", ["lattice.item_graph_layers"]),
    ("bm3", "target_dropout=1", ["bm3.target_dropout"]),
    ("bm3", "modality_loss_weight=Infinity", ["bm3.modality_loss_weight"]),
    ("bm3", "n_layers=-2", ["bm3.n_layers"]),
    ("freedom", "edge_pruning_ratio=1", ["freedom.edge_pruning_ratio"]),
    ("freedom", "first_modality_weight=-0.1", ["freedom.first_modality_weight"]),
    ("freedom", "user_item_layers=-1", ["freedom.user_item_layers"]),
    ("freedom", "l2_weight=Infinity", ["freedom.l2_weight"]),
]


@pytest.mark.parametrize(("model", "assignment", "needles"), BAD_SETTINGS)
def test_impossible_settings_are_refused_when_resolved(model, assignment, needles):
    with pytest.raises(ConfigError) as info:
        resolve_config(model, overrides=[assignment])
    message = str(info.value)
    assert "\n" not in message, f"not one line: {message!r}"
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"


@pytest.mark.parametrize(
    ("model", "assignments"),
    [
        ("diffmm", ["train.seed=0"]),
        ("diffmm", ["train.seed=9223372036854775807"]),
        ("diffmm", ["train.metric=hit@1", "train.ks=[5]"]),
        ("diffmm", ["train.metric=precision@50"]),
        ("diffmm", ["train.lr=1"]),  # an integer for a float is fine
        ("diffmm", ["sampling_steps=5", "noise_min=0.001", "noise_max=0.002"]),
        ("diffmm", ["diffusion_steps=10", "sampling_steps=10", "noise_scale=1"]),
        ("diffmm", ["keep_rate=1", "diffusion_graph_ratio=0", "denoiser_dropout=0"]),
        ("vbpr", ["embedding_dim=1", "content_dim=1"]),
        ("lightgcn", ["n_layers=0"]),
        ("lattice", ["train.progress=False", "finetune_features=no"]),  # words for flags
    ],
)
def test_settings_at_the_edges_of_their_ranges_are_accepted(model, assignments):
    resolve_config(model, overrides=assignments)


def test_a_metric_cut_off_not_in_ks_is_still_accepted():
    """The trainer adds the selection metric's cut-off to ``ks``; nothing to refuse."""
    cfg = resolve_config("mf", overrides=["train.metric=ndcg@7", "train.ks=[10]"])
    assert cfg.train.metric == "ndcg@7" and cfg.train.ks == [10]


def test_an_impossible_schedule_in_a_config_file_is_refused(tmp_path: Path):
    path = tmp_path / "run.toml"
    path.write_text('model = "diffmm"\n[diffmm]\nnoise_min = 0.5\nnoise_max = 0.1\n')
    with pytest.raises(ConfigError, match=r"noise_min \(0.5\) must be less than noise_max"):
        resolve_config(config_file=path)


@pytest.mark.parametrize(
    "assignment",
    [
        "train.seed=-1",
        "train.metric=recall@01",
        "noise_min=0.5",
        "sampling_steps=50",
        "embedding_dim=2e9",
        "train.lr=Infinity",
        "denoiser_hidden_dims=[0]",
    ],
)
def test_cli_refuses_before_loading_data_or_writing(tmp_path: Path, assignment: str):
    from diffmm.cli import main

    out = tmp_path / "run"
    args = ["train", "--model", "diffmm", "--data", TINY, "--out", str(out), "--set", assignment]
    result = CliRunner().invoke(main, args)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert assignment.partition("=")[0].split(".")[-1] in lines[0]
    assert not out.exists()


# --------------------------------------------------------------------------- data checks
def featured_dataset(n_users: int = 12, n_items: int = 8, features: bool = True) -> Dataset:
    rng = np.random.default_rng(0)
    dense = rng.random((n_users, n_items)) < 0.3
    dense[np.arange(n_users), np.arange(n_users) % n_items] = True
    train = sp.csr_matrix(dense.astype(np.float32))
    empty = sp.csr_matrix((n_users, n_items), dtype=np.float32)
    feats = {"image": rng.normal(size=(n_items, 4)).astype(np.float32)} if features else {}
    return Dataset("tiny", n_users, n_items, train, empty, empty.copy(), feats)


@pytest.mark.parametrize("name", model_names())
def test_every_model_accepts_its_defaults_on_usable_data(name):
    cls = get_model_class(name)
    cls.check_data(cls.Config(), featured_dataset(n_items=12))


@pytest.mark.parametrize(
    ("name", "setting", "limit"),
    [("diffmm", "rebuild_k", 8), ("lattice", "knn_k", 8), ("freedom", "knn_k", 8)],
)
def test_settings_larger_than_the_data_are_refused(name, setting, limit):
    cls = get_model_class(name)
    data = featured_dataset(n_items=limit)
    cls.check_data(cls.Config(**{setting: limit}), data)  # the largest that fits
    with pytest.raises(ConfigError) as info:
        cls.check_data(cls.Config(**{setting: 100000}), data)
    message = str(info.value)
    assert "\n" not in message
    for needle in (f"{name}.{setting}", "100000", f"{limit} items"):
        assert needle in message, message


def test_diffmm_refuses_rebuild_k_above_n_items_when_built():
    from diffmm.models.diffmm import DiffMM, DiffMMConfig

    config = DiffMMConfig(rebuild_k=9, denoiser_hidden_dims=[8], embedding_dim=4)
    with pytest.raises(ConfigError, match="rebuild_k"):
        DiffMM(config, featured_dataset(n_items=8))


@pytest.mark.parametrize("name", ["diffmm", "vbpr", "lightgcn_m", "lattice", "bm3", "freedom"])
def test_models_that_need_features_say_so_before_building(name):
    cls = get_model_class(name)
    with pytest.raises(DataError, match="no item features"):
        cls.check_data(cls.Config(), featured_dataset(features=False))


def test_data_where_nobody_has_a_negative_is_refused():
    train = sp.csr_matrix(np.ones((3, 4), dtype=np.float32))
    empty = sp.csr_matrix((3, 4), dtype=np.float32)
    data = Dataset("full", 3, 4, train, empty, empty.copy())
    cls = get_model_class("mf")
    with pytest.raises(DataError, match="every item"):
        cls.check_data(cls.Config(), data)


# --------------------------------------------------------------------------- explain
@pytest.mark.parametrize("n", [-1, 0])
def test_explain_sample_must_be_positive(n):
    from diffmm.explain import sample_users

    with pytest.raises(ConfigError, match="--sample"):
        sample_users(object(), n)  # checked before the run is looked at


@pytest.mark.parametrize("top", [-5, 0])
def test_explain_top_must_be_positive(top):
    from diffmm.explain import explain_user

    with pytest.raises(ConfigError, match="--top"):
        explain_user(object(), 0, top)


def test_a_user_with_every_item_in_train_does_not_stop_training(recwarn):
    """User 0 has seen every item: it has no negative and nothing left to recommend;
    its pairs are left out of BPR, and training and evaluation finish."""
    from diffmm.config import TrainConfig
    from diffmm.models.mf import MF
    from diffmm.models.mf import Config as MFConfig
    from diffmm.trainer import Trainer

    dense = np.zeros((6, 5), dtype=np.float32)
    dense[0] = 1
    dense[1:, :2] = 1
    valid = np.zeros_like(dense)
    valid[1:, 3] = 1
    valid[0, 4] = 1  # a leak: also in train, so masked out
    csr = [sp.csr_matrix(m) for m in (dense, valid, valid)]
    data = Dataset("full-user", 6, 5, *csr)
    get_model_class("mf").check_data(MFConfig(), data)
    cfg = TrainConfig(epochs=2, batch_size=4, progress=False, ks=[1, 10])
    summary = Trainer(MF(MFConfig(embedding_dim=4), data), data, cfg).fit()
    assert np.isfinite(summary["test"]["recall@10"])
    assert any("every item" in str(w.message) for w in recwarn)
