"""All-rank metrics against hand-computed answers; masking; batching."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from diffmm.evaluate import evaluate, metric_names, sample_users
from helpers import make_dataset

# 3 users x 5 items. Scores rank items by descending score.
SCORES = torch.tensor(
    [
        [0.9, 0.8, 0.7, 0.6, 0.5],  # user 0
        [0.1, 0.2, 0.3, 0.4, 0.5],  # user 1
        [0.5, 0.9, 0.1, 0.8, 0.2],  # user 2
    ]
)
TRAIN = [
    [1, 0, 0, 0, 0],  # user 0 saw item 0 -> masked; ranking 1, 2, 3, 4
    [0, 0, 0, 0, 1],  # user 1 saw item 4 -> masked; ranking 3, 2, 1, 0
    [0, 0, 0, 0, 0],  # user 2: ranking 1, 3, 0, 4, 2
]
VALID = [
    [0, 0, 1, 0, 0],  # user 0 holds out item 2: rank 2 (0-based 1)
    [1, 1, 0, 0, 0],  # user 1 holds out items 0, 1: ranks 0-based 3 and 2
    [0, 0, 0, 0, 0],  # user 2 has nothing in valid: not evaluated
]
TEST = [
    [0, 1, 0, 0, 0],  # user 0: item 1 (valid item 2 masked too -> ranking 1, 3, 4)
    [0, 0, 0, 0, 0],
    [0, 0, 1, 0, 0],  # user 2: item 2, ranked last (0-based 4)
]


def d(rank: int) -> float:
    return 1.0 / math.log2(rank + 2)


def score_fn(users: torch.Tensor) -> torch.Tensor:
    return SCORES[users].clone()


@pytest.fixture
def data():
    return make_dataset(TRAIN, VALID, TEST)


def test_valid_metrics_by_hand(data):
    res = evaluate(score_fn, data, "valid", ks=(1, 2, 3))
    assert res["n_users"] == 2
    # user 0: held-out {2} at 0-based rank 1. user 1: {0, 1} at ranks 3 and 2.
    # K=1: no hits for either.
    assert res["recall@1"] == 0 and res["hit@1"] == 0 and res["ndcg@1"] == 0
    # K=2: user 0 hits once (rank 1); user 1 none.
    assert res["recall@2"] == pytest.approx((1 / 1 + 0) / 2)
    assert res["precision@2"] == pytest.approx((1 / 2 + 0) / 2)
    assert res["hit@2"] == pytest.approx(0.5)
    assert res["ndcg@2"] == pytest.approx((d(1) / d(0) + 0) / 2)
    # K=3: user 0 as before; user 1 hits item 1 at rank 2 (of 2 held out).
    recall_u1 = 1 / 2
    ndcg_u1 = d(2) / (d(0) + d(1))  # IDCG over min(2, 3) = 2 positions
    assert res["recall@3"] == pytest.approx((1 + recall_u1) / 2)
    assert res["precision@3"] == pytest.approx((1 / 3 + 1 / 3) / 2)
    assert res["hit@3"] == pytest.approx(1.0)
    assert res["ndcg@3"] == pytest.approx((d(1) / d(0) + ndcg_u1) / 2)


def test_test_split_masks_train_and_valid(data):
    res = evaluate(score_fn, data, "test", ks=(1, 5), per_user=True)
    # users 0 and 2 have test items. User 0: train item 0 and valid item 2 masked,
    # so item 1 is ranked first. User 2: item 2 last of 5.
    assert res["n_users"] == 2
    np.testing.assert_array_equal(res["per_user"]["user"], [0, 2])
    np.testing.assert_allclose(res["per_user"]["recall@1"], [1.0, 0.0])
    np.testing.assert_allclose(res["per_user"]["ndcg@1"], [1.0, 0.0])
    np.testing.assert_allclose(res["per_user"]["recall@5"], [1.0, 1.0])
    np.testing.assert_allclose(res["per_user"]["ndcg@5"], [1.0, d(4) / d(0)])
    np.testing.assert_allclose(res["per_user"]["precision@5"], [0.2, 0.2])
    assert res["recall@1"] == pytest.approx(0.5)
    assert res["ndcg@5"] == pytest.approx((1 + d(4)) / 2)


def test_masked_items_are_never_recommended():
    # the top-scored item is in train for every user: without masking it would be a hit
    train = [[1, 0, 0], [1, 0, 0]]
    valid = [[1, 0, 0], [0, 1, 0]]  # user 0's held-out item leaks from train
    data = make_dataset(train, valid)
    scores = torch.tensor([[9.0, 1.0, 0.0], [9.0, 1.0, 0.0]])
    res = evaluate(lambda u: scores[u].clone(), data, "valid", ks=(1,), per_user=True)
    np.testing.assert_allclose(res["per_user"]["hit@1"], [0.0, 1.0])


def test_score_fn_output_is_not_modified():
    # every user has a held-out item, so score_fn may return the cached matrix itself
    seen = SCORES.clone()
    evaluate(lambda u: seen, make_dataset(TRAIN, [[1] * 5] * 3, TEST), "valid", ks=(1,))
    torch.testing.assert_close(seen, SCORES)


def test_batch_size_invariance():
    rng = np.random.default_rng(0)
    n_users, n_items = 37, 23
    train = rng.random((n_users, n_items)) < 0.2
    valid = (rng.random((n_users, n_items)) < 0.15) & ~train
    data = make_dataset(train, valid)
    scores = torch.from_numpy(rng.standard_normal((n_users, n_items)).astype(np.float32))
    ref = evaluate(lambda u: scores[u], data, "valid", ks=(3, 10), batch_size=1000)
    for bs in (1, 4, 16):
        res = evaluate(lambda u: scores[u], data, "valid", ks=(3, 10), batch_size=bs)
        for key in metric_names((3, 10)):
            assert res[key] == pytest.approx(ref[key], abs=1e-12)
    # a perfect scorer has recall 1 once K covers every held-out item
    perfect = torch.from_numpy(valid.astype(np.float32))
    res = evaluate(lambda u: perfect[u], data, "valid", ks=(n_items,))
    assert res[f"recall@{n_items}"] == pytest.approx(1.0)
    assert res[f"ndcg@{n_items}"] == pytest.approx(1.0)


def test_before_batch_is_called_before_each_score_batch():
    rng = np.random.default_rng(1)
    train = rng.random((10, 6)) < 0.2
    data = make_dataset(train, (rng.random((10, 6)) < 0.3) & ~train)
    n_users = int((data.valid.getnnz(axis=1) > 0).sum())
    events = []

    def scores(users):
        events.append(len(users))
        return torch.zeros(len(users), 6)

    evaluate(scores, data, "valid", batch_size=3, before_batch=lambda: events.append("hook"))
    sizes = [min(3, n_users - start) for start in range(0, n_users, 3)]
    assert events == [e for size in sizes for e in ("hook", size)]


def test_no_users_to_evaluate():
    data = make_dataset([[1, 0], [0, 1]])
    res = evaluate(lambda u: torch.zeros(len(u), 2), data, "valid", ks=(1,))
    assert res["n_users"] == 0 and res["recall@1"] == 0.0


def test_wrong_shape_is_reported(data):
    with pytest.raises(ValueError, match="shape"):
        evaluate(lambda u: torch.zeros(len(u), 4), data, "valid")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(data):
    cpu = evaluate(score_fn, data, "test", ks=(1, 2, 5))
    gpu = evaluate(lambda u: SCORES.cuda()[u], data, "test", ks=(1, 2, 5), device="cuda")
    for key in metric_names((1, 2, 5)):
        assert gpu[key] == pytest.approx(cpu[key])


def test_mrr_map_and_coverage_by_hand(data):
    res = evaluate(score_fn, data, "valid", ks=(1, 2, 3, 4), metrics=("mrr", "map", "coverage"))
    assert set(res) == {f"{m}@{k}" for m in ("mrr", "map", "coverage") for k in (1, 2, 3, 4)} | {
        "n_users"
    }
    # user 0: ranking 1, 2, 3, 4 (item 0 masked), held-out {2} at 0-based rank 1.
    # user 1: ranking 3, 2, 1, 0 (item 4 masked), held-out {0, 1} at ranks 3 and 2.
    assert res["mrr@1"] == 0.0
    assert res["mrr@2"] == pytest.approx((1 / 2 + 0) / 2)
    assert res["mrr@3"] == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert res["mrr@4"] == pytest.approx((1 / 2 + 1 / 3) / 2)  # only the first hit counts
    # AP@K = sum over hit ranks r of precision@(r+1), / min(K, |held-out|)
    assert res["map@1"] == 0.0
    assert res["map@2"] == pytest.approx((1 / 2 + 0) / 2)
    assert res["map@3"] == pytest.approx((1 / 2 + (1 / 3) / 2) / 2)
    assert res["map@4"] == pytest.approx((1 / 2 + (1 / 3 + 2 / 4) / 2) / 2)
    # coverage: top-1 {1} and {3}; top-2 adds item 2; top-4 adds items 4 and 0
    assert res["coverage@1"] == pytest.approx(2 / 5)
    assert res["coverage@2"] == pytest.approx(3 / 5)
    assert res["coverage@3"] == pytest.approx(3 / 5)  # {1, 2, 3} for both users
    assert res["coverage@4"] == pytest.approx(1.0)


def test_mrr_and_map_per_user_on_test(data):
    res = evaluate(score_fn, data, "test", ks=(5,), metrics=["mrr", "map"], per_user=True)
    # user 0's test item 1 is ranked first; user 2's item 2 last (0-based 4) of 5
    np.testing.assert_allclose(res["per_user"]["mrr@5"], [1.0, 1 / 5])
    np.testing.assert_allclose(res["per_user"]["map@5"], [1.0, 1 / 5])
    assert res["mrr@5"] == pytest.approx(0.6)


def test_map_is_one_when_the_held_out_items_fill_the_top():
    # 2 held-out items, K=3: AP = (1/1 + 2/2) / min(3, 2) = 1
    data = make_dataset([[0, 0, 0, 0]], [[1, 1, 0, 0]])
    scores = torch.tensor([[4.0, 3.0, 2.0, 1.0]])
    res = evaluate(lambda u: scores[u], data, "valid", ks=(1, 3), metrics=("map", "recall"))
    assert res["map@3"] == pytest.approx(1.0)
    assert res["map@1"] == pytest.approx(1.0)  # / min(1, 2)
    assert res["recall@1"] == pytest.approx(0.5)


def test_coverage_skips_masked_items_that_fill_a_short_list():
    # one user with 3 items: item 0 is in train (masked), so its top 3 has only 2 items
    data = make_dataset([[1, 0, 0]], [[0, 1, 0]])
    scores = torch.tensor([[9.0, 1.0, 0.0]])
    res = evaluate(lambda u: scores[u], data, "valid", ks=(1, 3), metrics=("coverage",))
    assert res["coverage@1"] == pytest.approx(1 / 3)
    assert res["coverage@3"] == pytest.approx(2 / 3)


def test_new_metrics_do_not_change_the_default_output_and_are_batch_invariant():
    rng = np.random.default_rng(2)
    train = rng.random((29, 17)) < 0.2
    data = make_dataset(train, (rng.random((29, 17)) < 0.2) & ~train)
    scores = torch.from_numpy(rng.standard_normal((29, 17)).astype(np.float32))
    default = evaluate(lambda u: scores[u], data, "valid", ks=(3, 10))
    assert list(default) == [*metric_names((3, 10)), "n_users"]
    every = ("recall", "ndcg", "precision", "hit", "mrr", "map", "coverage")
    ref = evaluate(lambda u: scores[u], data, "valid", ks=(3, 10), metrics=every)
    for key in metric_names((3, 10)):
        assert ref[key] == default[key]
    for bs in (1, 5):
        res = evaluate(lambda u: scores[u], data, "valid", ks=(3, 10), metrics=every, batch_size=bs)
        for key in metric_names((3, 10), every):
            assert res[key] == pytest.approx(ref[key], abs=1e-12)


def test_an_unknown_metric_is_refused():
    from diffmm.errors import ConfigError

    data = make_dataset([[1, 0]], [[0, 1]])
    with pytest.raises(ConfigError, match="unknown metric.*'auc'.*mrr"):
        evaluate(lambda u: torch.zeros(len(u), 2), data, "valid", metrics=("recall", "auc"))


def test_evaluating_a_subset_of_users_is_their_metrics_alone(data):
    # only user 1 (user 2 has no validation items: asking for it adds nothing)
    res = evaluate(score_fn, data, "valid", ks=(3,), users=np.array([1, 2]))
    assert res["n_users"] == 1
    assert res["recall@3"] == pytest.approx(1 / 2)  # user 1's alone (see above)
    assert evaluate(score_fn, data, "valid", ks=(3,), users=np.arange(3)) == evaluate(
        score_fn, data, "valid", ks=(3,)
    )


def test_sample_users_draws_users_with_held_out_items_by_seed():
    heldout = sp.csr_matrix(np.eye(10, dtype=np.float32)[[0, 2, 3, 5, 7, 8, 9]].T)
    # 10 users; those with held-out items: 0, 2, 3, 5, 7, 8, 9 (columns of the eye rows)
    candidates = set(np.flatnonzero(np.diff(heldout.indptr) > 0).tolist())
    assert candidates == {0, 2, 3, 5, 7, 8, 9}
    drawn = sample_users(heldout, 4, seed=1)
    assert len(drawn) == 4 and set(drawn.tolist()) <= candidates
    assert list(drawn) == sorted(drawn)
    assert np.array_equal(drawn, sample_users(heldout, 4, seed=1))
    assert any(not np.array_equal(drawn, sample_users(heldout, 4, seed=s)) for s in (2, 3))
    assert sample_users(heldout, 7, seed=1) is None  # every one of them
    assert sample_users(heldout, None, seed=1) is None
