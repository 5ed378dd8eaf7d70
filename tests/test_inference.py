"""Loading a trained run: raw ids in and out, seen items, moved data, export."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import diffmm
from diffmm.checkpoint import DataRef
from diffmm.config import resolve_config
from diffmm.errors import ConfigError, DataError, UnknownIdError
from diffmm.export import export_top_k
from diffmm.trainer import train
from helpers import SERVE_DATA


@pytest.fixture(scope="module")
def rec(trained_run):
    return diffmm.load(trained_run, device="cpu")


def test_recommendations_are_the_models_best_unseen_items(rec):
    data = DataRef.of(SERVE_DATA, "random", 421).load()
    seen = (data.train + data.valid + data.test).tocsr()
    lists = rec.recommend([3, 7], k=10)
    for user, items in zip([3, 7], lists, strict=True):
        scores = rec.user_emb[user] @ rec.item_emb.T
        scores[torch.from_numpy(seen[user].indices.astype(np.int64))] = -torch.inf
        assert items == torch.topk(scores, 10).indices.tolist()
        assert not set(items) & set(seen[user].indices.tolist())


def test_exclude_seen_false_may_return_known_items_and_scores_are_sorted(rec):
    ((items, scores),) = rec.recommend_scored([0], k=rec.n_items, exclude_seen=False)
    assert sorted(items) == list(range(rec.n_items))
    assert scores == sorted(scores, reverse=True)


def test_users_given_as_strings_match_integer_ids(rec):
    assert rec.recommend(["5"], k=4) == rec.recommend([5], k=4)


@pytest.mark.parametrize("k", [0, -1, 10_000, 2.5, True])
def test_a_bad_k_is_refused(rec, k):
    with pytest.raises(ConfigError, match="k must be an integer"):
        rec.recommend([0], k=k)


def test_an_unknown_user_is_named(rec):
    with pytest.raises(UnknownIdError, match="999"):
        rec.recommend([1, 999], k=5)


def test_raw_string_ids_round_trip_and_moved_data_are_found(tmp_path):
    rng = np.random.default_rng(0)
    users = np.repeat([f"user{u}" for u in range(40)], 8)
    items = np.concatenate([rng.choice(30, 8, replace=False) for _ in range(40)])
    table = tmp_path / "interactions.csv"
    pd.DataFrame({"user": users, "item": [f"item{i}" for i in items]}).to_csv(table, index=False)
    config = resolve_config("lightgcn", overrides=["train.epochs=2", "train.progress=false"])
    ref = DataRef.of(str(table), "random", config.train.seed)
    train(config, ref.load(), tmp_path / "run", data_ref=ref)

    rec = diffmm.load(tmp_path / "run")
    (picks,) = rec.recommend(["user3"], k=5)
    assert len(picks) == 5 and all(p.startswith("item") for p in picks)
    seen = set(pd.read_csv(table).query("user == 'user3'")["item"])
    assert not seen & set(picks)

    moved = tmp_path / "moved.csv"
    table.rename(moved)
    with pytest.raises(DataError, match="If the data moved"):
        diffmm.load(tmp_path / "run")
    assert diffmm.load(tmp_path / "run", data=str(moved)).recommend(["user3"], k=5) == [picks]


def test_a_diffmm_run_loads_with_its_generated_graphs(tmp_path):
    config = resolve_config(
        "diffmm",
        overrides=["train.epochs=2", "train.progress=false", "denoiser_hidden_dims=[32]"],
    )
    ref = DataRef.of(SERVE_DATA, "random", config.train.seed)
    dataset = ref.load()
    train(config, dataset, tmp_path / "run", data_ref=ref)
    rec = diffmm.load(tmp_path / "run")
    assert rec.metadata["model"] == "diffmm" and rec.metadata["finished"]
    assert len(rec.model.modality_graphs) == len(dataset.features)
    # The loaded model scores exactly as the trained one did: same test metrics.
    from diffmm.evaluate import evaluate

    summary = __import__("json").loads((tmp_path / "run" / "summary.json").read_text())
    emb = (rec.user_emb, rec.item_emb)
    test = evaluate(lambda u: rec.model.scores(u, emb), dataset, "test", ks=[10, 20])
    assert test["recall@20"] == pytest.approx(summary["test"]["recall@20"], abs=1e-12)


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".parquet"])
def test_export_writes_every_users_top_k(rec, tmp_path, suffix):
    out = tmp_path / f"top{suffix}"
    rows = export_top_k(rec, out, k=3, batch_size=40, progress=False)
    if suffix == ".parquet":
        table = pd.read_parquet(out)
    else:
        table = pd.read_csv(out, sep="\t" if suffix == ".tsv" else ",")
    assert rows == len(table) == rec.n_users * 3
    assert list(table.columns) == ["user", "rank", "item", "score"]
    first = table[table["user"] == 17].sort_values("rank")
    assert first["item"].tolist() == rec.recommend([17], k=3)[0]
    assert first["rank"].tolist() == [1, 2, 3]


def test_export_refuses_an_unknown_format_and_writes_nothing(rec, tmp_path):
    with pytest.raises(ConfigError, match="unsupported output format"):
        export_top_k(rec, tmp_path / "top.xlsx", k=3, progress=False)
    assert not list(tmp_path.iterdir())


def test_evaluate_scores_the_best_model_as_training_did(rec, trained_run):
    summary = __import__("json").loads((trained_run / "summary.json").read_text())
    test = rec.evaluate("test", ks=(10, 20))
    for key in ("recall@10", "recall@20", "ndcg@20", "precision@10", "hit@20", "n_users"):
        assert test[key] == pytest.approx(summary["test"][key], abs=1e-12)
    assert rec.evaluate("valid", ks=[20])["recall@20"] == pytest.approx(
        summary["valid"]["recall@20"], abs=1e-12
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"split": "train"}, "split must be 'test' or 'valid'"),
        ({"ks": (0, 10)}, "ks must be positive integers"),
        ({"ks": ()}, "ks must be positive integers"),
        ({"metrics": ("recall", "auc")}, "unknown metric"),
    ],
)
def test_evaluate_refuses_bad_arguments(rec, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        rec.evaluate(**kwargs)


def test_an_unfinished_run_loads_and_evaluates(trained_run, tmp_path):
    import shutil

    run = tmp_path / "unfinished"
    shutil.copytree(trained_run, run)
    (run / "summary.json").unlink()
    loaded = diffmm.load(run, device="cpu")
    assert not loaded.metadata["finished"]
    assert loaded.evaluate("test", ks=(20,))["recall@20"] == pytest.approx(
        diffmm.load(trained_run, device="cpu").evaluate("test", ks=(20,))["recall@20"]
    )


def test_export_embeddings_npz_holds_ids_and_float32_vectors(rec, tmp_path):
    from diffmm.export import export_embeddings

    out = tmp_path / "emb.npz"
    assert export_embeddings(rec, out) == rec.user_emb.shape[1]
    with np.load(out) as npz:  # no pickle needed: plain arrays only
        assert set(npz.files) == {"user_ids", "user_embeddings", "item_ids", "item_embeddings"}
        users, items = npz["user_embeddings"], npz["item_embeddings"]
        assert users.dtype == items.dtype == np.float32
        np.testing.assert_array_equal(npz["user_ids"], rec.user_ids)
        np.testing.assert_array_equal(npz["item_ids"], rec.item_ids)
        item_ids = npz["item_ids"]
    np.testing.assert_array_equal(users, rec.user_emb.numpy())
    np.testing.assert_array_equal(items, rec.item_emb.numpy())
    # the dot product of the vectors ranks items as the model does
    ((best, _),) = rec.recommend_scored([4], k=3, exclude_seen=False)
    assert item_ids[np.argsort(-(items @ users[4]))[:3]].tolist() == best


def test_export_embeddings_parquet_has_one_row_per_user_and_item(rec, tmp_path):
    from diffmm.export import export_embeddings

    out = tmp_path / "emb.parquet"
    export_embeddings(rec, out)
    table = pd.read_parquet(out)
    assert list(table.columns) == ["kind", "id", "embedding"]
    assert (table["kind"] == "user").sum() == rec.n_users
    assert (table["kind"] == "item").sum() == rec.n_items
    item_rows = table[table["kind"] == "item"]
    assert item_rows["id"].tolist() == rec.item_ids.tolist()
    np.testing.assert_allclose(np.stack(item_rows["embedding"].to_numpy()), rec.item_emb.numpy())


def test_export_embeddings_refuses_existing_files_and_the_runs_own(rec, trained_run, tmp_path):
    from diffmm.export import export_embeddings

    mine = tmp_path / "emb.npz"
    mine.write_text("mine")
    with pytest.raises(ConfigError, match="exists; replace it with overwrite=True"):
        export_embeddings(rec, mine)
    assert mine.read_text() == "mine"
    export_embeddings(rec, mine, overwrite=True)
    assert np.load(mine)["user_embeddings"].shape[0] == rec.n_users
    with pytest.raises(ConfigError, match="part of the run"):
        export_embeddings(rec, trained_run / "best.pt", overwrite=True)
    with pytest.raises(ConfigError, match="unsupported embeddings format"):
        export_embeddings(rec, tmp_path / "emb.csv")
    assert not (tmp_path / "emb.csv").exists()


def test_a_checkpoint_that_does_not_fit_its_config_is_refused_in_one_line(
    rec, trained_run, tmp_path
):
    """E.g. a run whose model changed shape between diffmm versions: the message names the
    first tensor that differs and both shapes, on one line."""
    import json
    import shutil

    run = tmp_path / "resized"
    shutil.copytree(trained_run, run)
    config = json.loads((run / "config.json").read_text())
    config["lightgcn"]["embedding_dim"] = 32
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(DataError) as info:
        diffmm.load(run, device="cpu")
    message = str(info.value)
    assert "\n" not in message
    assert "best.pt" in message and "config.json" in message
    assert "user_embedding.weight" in message
    assert f"[{rec.n_users}, 64]" in message and f"[{rec.n_users}, 32]" in message
