"""A catalogue of bad inputs and what the user must see for each.

Every case feeds one bad input and checks three things:

* a clear message that names the offending file, key or id (and, where there is one,
  the fix), asserted on specific substrings;
* a non-zero outcome: the CLI exits with status 2 and prints ``error: ...`` on stderr,
  the HTTP service answers with a 4xx status and the message in ``detail``;
* never a Python traceback (CLI: no uncaught exception; HTTP: no 500, and nothing in
  the server's log).

Sections: data loading, configuration, CLI (run directories, checkpoints, recommend,
export), HTTP service.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from click.testing import Result

from helpers import cli, user_error

#: Tiny data for the CLI cases that reach the data or the trainer.
TINY = "synthetic:n_users=60,n_items=40,interactions_per_user=8"
#: ``trained_run`` (tests/conftest.py) has integer user ids 0..149 and 80 items.
N_USERS, N_ITEMS = 150, 80
HUGE_ID = "1" + "0" * 30  # an integer id too large for int64


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run every case from a scratch directory (no stray runs/ in the repository) and
    keep the split cache fallback (~/.cache/diffmm) out of the real home directory."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))


def usage_error(result: Result) -> str:
    """The message of an invalid option caught by click itself (``Error: ...``, status 2)."""
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    assert result.exit_code == 2, result.output
    assert "Error: " in result.stderr, result.output
    return result.stderr.split("Error: ", 1)[1]


def assert_says(message: str, *needles: str) -> None:
    for needle in needles:
        assert needle in message, f"{needle!r} not in message:\n{message}"


def case(case_id: str, *values: Any) -> Any:
    """One parametrized case with a readable id."""
    return pytest.param(*values, id=case_id)


# =========================================================================== data loading


def _coo(pairs: list[tuple[int, int]], shape: tuple[int, int]) -> sp.coo_matrix:
    rows, cols = zip(*pairs, strict=True) if pairs else ((), ())
    return sp.coo_matrix((np.ones(len(rows)), (rows, cols)), shape=shape)


def _dump(obj: Any, path: Path) -> None:
    path.write_bytes(pickle.dumps(obj))


def authors(d: Path, **features: np.ndarray) -> Path:
    """A valid authors'-format folder: 4 users x 5 items, plus ``<name>_feat.npy`` files."""
    _dump(_coo([(0, 0), (0, 1), (1, 1), (1, 2), (2, 3), (3, 0)], (4, 5)), d / "trnMat.pkl")
    _dump(_coo([(0, 2), (1, 3)], (4, 5)), d / "valMat.pkl")
    _dump(_coo([(0, 3), (2, 0)], (4, 5)), d / "tstMat.pkl")
    for name, arr in features.items():
        np.save(d / f"{name}_feat.npy", arr)
    return d


MMREC = "userID\titemID\tx_label\n0\t0\t0\n0\t1\t0\n1\t1\t0\n1\t2\t0\n2\t3\t0\n0\t2\t1\n2\t0\t2\n"


def mmrec(d: Path, text: str = MMREC, **features: np.ndarray) -> Path:
    (d / "baby.inter").write_text(text)
    for name, arr in features.items():
        np.save(d / f"{name}_feat.npy", arr)
    return d


def table(d: Path, text: str, name: str = "t.csv") -> Path:
    (d / name).write_text(text)
    return d / name


SPLIT_TABLE = "user,item,split\nalice,i1,train\nalice,i2,valid\nbob,i2,train\nbob,i3,test\n"


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _truncated_pickle(d: Path) -> Path:
    _truncate(authors(d) / "trnMat.pkl")
    return d


def _pickle_holding(obj: Any, fname: str) -> Callable[[Path], Path]:
    def build(d: Path) -> Path:
        _dump(obj, authors(d) / fname)
        return d

    return build


def _without(fname: str) -> Callable[[Path], Path]:
    def build(d: Path) -> Path:
        (authors(d) / fname).unlink()
        return d

    return build


def _inconsistent_matrix(row: int, col: int) -> Callable[[Path], Path]:
    """A test matrix whose stored entry lies outside its own shape (a hand-edited file)."""

    def build(d: Path) -> Path:
        bad = _coo([(0, 1)], (4, 5))
        bad.row[0], bad.col[0] = row, col
        _dump(bad, authors(d) / "tstMat.pkl")
        return d

    return build


def _nan_features(d: Path) -> Path:
    feat = np.ones((5, 2))
    feat[[1, 3], 0] = np.nan
    return authors(d, text=feat)


def _truncated_npy(d: Path) -> Path:
    _truncate(authors(d, image=np.ones((5, 8))) / "image_feat.npy", keep=0.8)
    return d


def _object_npy(d: Path) -> Path:
    np.save(d / "image_feat.npy", np.array([{"a": 1}] * 5, dtype=object), allow_pickle=True)
    return authors(d)


def _features_missing_items(d: Path) -> Path:
    (d / "image.features.csv").write_text("item,x\ni1,0.5\ni2,0.1\n")
    return table(d, SPLIT_TABLE)


DATA_CASES = [
    # case(id, build(d) -> the path given to `diffmm data stats`, needles); {d} = the folder
    case("missing-path", lambda d: d / "nowhere.csv",
         ["{d}/nowhere.csv: no such file or directory", "accepted formats"]),
    case("directory-without-dataset", lambda d: table(d, "hello", "README.txt").parent,
         ["{d}: no dataset found in this directory", "trnMat.pkl", ".inter", ".csv"]),
    case("unsupported-suffix", lambda d: table(d, "junk", "ratings.xlsx"),
         ["{d}/ratings.xlsx: unrecognised dataset file", ".csv/.tsv/.parquet"]),
    case("missing-split-pickle", _without("valMat.pkl"),
         ["{d}/valMat.pkl: file not found", "trnMat.pkl", "tstMat.pkl"]),
    case("truncated-pickle", _truncated_pickle,
         ["{d}/trnMat.pkl: cannot read this pickle", "truncated or corrupt", "copy it again"]),
    case("garbage-pickle", lambda d: table(authors(d), "\x00\x01 junk", "tstMat.pkl").parent,
         ["{d}/tstMat.pkl: cannot read this pickle", "truncated or corrupt"]),
    case("pickle-of-a-dict", _pickle_holding({"users": [0, 1]}, "tstMat.pkl"),
         ["{d}/tstMat.pkl: holds a dict, not a 2-D scipy.sparse matrix of (users, items)"]),
    case("pickle-of-a-dense-array", _pickle_holding(np.zeros((4, 5)), "trnMat.pkl"),
         ["{d}/trnMat.pkl: holds a ndarray, not a 2-D scipy.sparse matrix"]),
    case("split-shapes-differ", _pickle_holding(_coo([(0, 0)], (4, 6)), "tstMat.pkl"),
         ["{d}: the split matrices have different shapes", "tstMat.pkl (4, 6)",
          "(users, items)"]),
    case("item-id-out-of-range", _inconsistent_matrix(0, 7),
         ["{d}: 1 item id(s) in the test split are out of range [0, 5) (first: [7])",
          "fix the ids or the number of items"]),
    case("negative-user-id", _inconsistent_matrix(-2, 1),
         ["{d}: 1 user id(s) in the test split are out of range [0, 4) (first: [-2])"]),
    case("empty-train-split", _pickle_holding(sp.coo_matrix((4, 5)), "trnMat.pkl"),
         ["{d}: the train split is empty; a dataset needs train interactions"]),
    case("feature-rows-not-items", lambda d: authors(d, image=np.ones((4, 3))),
         ["{d}/image_feat.npy: feature 'image' has 4 rows but the dataset has 5 items",
          "row i = item i"]),
    case("nan-features", _nan_features,
         ["{d}/text_feat.npy: feature 'text' has NaN or inf values in 2 row(s)",
          "first rows: [1, 3]", "clean or impute them"]),
    case("1d-features", lambda d: authors(d, image=np.ones(5)),
         ["{d}/image_feat.npy: feature 'image' has shape (5,); expected a 2-D"]),
    case("truncated-npy", _truncated_npy,
         ["{d}/image_feat.npy: cannot read this .npy file", "truncated", "re-export it"]),
    case("object-npy", _object_npy,
         ["{d}/image_feat.npy: cannot read this .npy file", "holds Python objects"]),
    case("mmrec-negative-item-id", lambda d: mmrec(d, MMREC.replace("2\t3\t0", "2\t-3\t0")),
         ["{d}/baby.inter: 1 item id(s) in the train split are out of range", "(first: [-3])"]),
    case("mmrec-non-integer-id", lambda d: mmrec(d, MMREC.replace("2\t3\t0", "bob\t3\t0")),
         ["{d}/baby.inter: 1 non-integer user id(s)", "'bob'", "use a .csv table"]),
    case("mmrec-unknown-x-label", lambda d: mmrec(d, MMREC.replace("2\t0\t2", "2\t0\t7")),
         ["{d}/baby.inter: 1 row(s) have an unknown split value (first: ['7'])",
          "use train/valid/test or 0/1/2"]),
    case("mmrec-too-few-feature-rows", lambda d: mmrec(d, image=np.ones((3, 2))),
         ["{d}/image_feat.npy: has 3 rows but baby.inter uses item ids up to 3",
          "needs at least 4 rows"]),
    case("mmrec-header-only", lambda d: mmrec(d, "userID\titemID\tx_label\n"),
         ["{d}/baby.inter", "no rows"]),
    case("empty-csv", lambda d: table(d, ""),
         ["{d}/t.csv: the file is empty; it needs a header and rows"]),
    case("header-only-csv", lambda d: table(d, "user,item,split\n"),
         ["{d}/t.csv: the table has no rows; it needs interactions"]),
    case("csv-without-train-rows", lambda d: table(d, "user,item,split\n1,2,test\n2,3,valid\n"),
         ["{d}/t.csv: the train split is empty"]),
    case("csv-unknown-split-value", lambda d: table(d, SPLIT_TABLE.replace("test", "holdout")),
         ["{d}/t.csv: 1 row(s) have an unknown split value (first: ['holdout'])",
          "use train/valid/test or 0/1/2"]),
    case("csv-without-user-column", lambda d: table(d, "uid,iid\n1,2\n"),
         ["{d}/t.csv: no user column", "user_id", "columns found: uid, iid"]),
    case("csv-blank-user-id", lambda d: table(d, "user,item,split\n1,2,train\n,3,train\n"),
         ["{d}/t.csv: 1 row(s) have no user id; fill or drop them"]),
    case("corrupt-parquet", lambda d: table(d, "PAR1 not really", "t.parquet"),
         ["{d}/t.parquet: cannot read this table", "valid, complete file"]),
    case("items-without-feature-rows", _features_missing_items,
         ["{d}/image.features.csv: 1 of 3 items of t.csv have no feature row (first: ['i3'])",
          "add a row for each item"]),
    case("bad-synthetic-option", lambda d: "synthetic:n_user=5",
         ["'synthetic:n_user=5': bad synthetic option 'n_user=5'", "n_users"]),
]  # fmt: skip


@pytest.mark.parametrize(("build", "needles"), DATA_CASES)
def test_bad_dataset(tmp_path: Path, build: Callable[[Path], Any], needles: list[str]) -> None:
    d = tmp_path / "data"
    d.mkdir()
    message = user_error(cli("data", "stats", build(d)))
    assert_says(message, *(n.format(d=d) for n in needles))


@pytest.mark.parametrize(
    ("options", "needles"),
    [
        case("loo-with-bad-timestamps", ["--split", "loo"],
             ["{d}/t.csv: column 'timestamp' has non-numeric or missing timestamps"]),
    ],
)  # fmt: skip
def test_bad_split_options(tmp_path: Path, options: list[str], needles: list[str]) -> None:
    path = table(tmp_path, "user,item,timestamp\n1,2,yesterday\n1,3,4\n")
    message = user_error(cli("data", "stats", path, *options))
    assert_says(message, *(n.format(d=tmp_path) for n in needles))


def test_an_unknown_split_method_is_a_usage_error(tmp_path: Path) -> None:
    path = table(tmp_path, "user,item\n1,2\n1,3\n")
    message = usage_error(cli("data", "stats", path, "--split", "bogus"))
    assert_says(message, "'bogus' is not one of 'random', 'loo'")


class _Payload:
    """A pickle whose loading would call ``func(arg)``."""

    def __init__(self, func: Callable[..., Any], arg: str) -> None:
        self.func, self.arg = func, arg

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.func, (self.arg,))


@pytest.mark.parametrize("kind", ["os.system", "builtins.exec"])
def test_malicious_pickle_is_refused_and_not_run(tmp_path: Path, kind: str) -> None:
    d = authors(tmp_path)
    marker = tmp_path / "pwned"
    if kind == "os.system":
        payload = _Payload(os.system, f"touch {marker}")
    else:
        payload = _Payload(exec, f"open({str(marker)!r}, 'w').write('x')")
    _dump(payload, d / "valMat.pkl")
    message = user_error(cli("data", "stats", d))
    assert_says(message, f"{d}/valMat.pkl: refuses to load global", kind.split(".")[1])
    assert_says(message, "only numpy arrays and scipy.sparse matrices", "may be malicious")
    assert not marker.exists(), "the pickle's payload ran"


# =========================================================================== configuration


def train_cli(tmp_path: Path, *options: Any, model: str = "lightgcn") -> Result:
    return cli("train", "--model", model, "--data", TINY, "--out", tmp_path / "run", *options)


@pytest.mark.parametrize(
    ("assignment", "needles"),
    [
        ("train.epchs=5", ["unknown setting 'train.epchs'", "Did you mean 'epochs'?"]),
        ("epohcs=5", ["unknown setting 'epohcs' for model 'lightgcn'", "Did you mean 'epochs'?",
                      "`diffmm config --model lightgcn` lists them all"]),
        ("embeding_dim=8", ["unknown setting 'embeding_dim'", "Did you mean 'embedding_dim'?"]),
        ("train.epochs=abc", ["train.epochs: Input should be a valid integer", "(got 'abc')"]),
        ("train.epochs=1.5", ["train.epochs: Input should be a valid integer", "(got 1.5)"]),
        ("train.epochs=0", ["train.epochs: Input should be greater than or equal to 1 (got 0)"]),
        ("train.lr=-1", ["train.lr: Input should be greater than 0 (got -1)"]),
        ("train.batch_size=-5", ["train.batch_size: Input should be greater than or equal to 1"]),
        ("embedding_dim=0", ["lightgcn.embedding_dim: Input should be greater than or equal to 1"]),
        ("train.progress=maybe", ["train.progress: Input should be a valid boolean", "'maybe'"]),
        ("train.metric=auc", ["train.metric", "metric must look like 'recall@20'", "'auc'"]),
        ("train.ks=[]", ["train.ks", "ks must be a non-empty list of positive integers"]),
        ("train.epochs", ["override 'train.epochs' must look like key=value",
                          "(e.g. train.epochs=5)"]),
        ("optim.lr=0.1", ["unknown section 'optim' in 'optim.lr'; use 'train' or 'lightgcn'"]),
        ("train.device=tpu", ["unknown device 'tpu'; use 'auto', 'cpu' or 'cuda[:i]'"]),
    ],
)  # fmt: skip
def test_bad_override(tmp_path: Path, assignment: str, needles: list[str]) -> None:
    message = user_error(train_cli(tmp_path, "--set", assignment))
    assert_says(message, *needles)
    assert not (tmp_path / "run" / "config.json").exists()


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        case("unknown-model", ["train", "--model", "lightgnc", "--data", TINY],
             ["unknown model 'lightgnc'; available: mf, lightgcn, diffmm, ",
              "Did you mean 'lightgcn'?"]),
        case("unknown-preset", ["train", "--model", "diffmm", "--preset", "tiktk", "--data", TINY],
             ["unknown preset 'tiktk' for model 'diffmm'; available: tiktok, baby, sports"]),
        case("preset-of-another-model",
             ["train", "--model", "lightgcn", "--preset", "tiktok", "--data", TINY],
             ["unknown preset 'tiktok' for model 'lightgcn'; available: none"]),
        case("config-unknown-model", ["config", "--model", "nope"],
             ["unknown model 'nope'; available: mf, lightgcn, diffmm, "]),
        case("missing-data", ["train", "--model", "lightgcn"],
             ["--data is required (or --resume RUN_DIR to continue a run)"]),
    ],
)  # fmt: skip
def test_bad_model_or_preset(args: list[str], needles: list[str]) -> None:
    assert_says(user_error(cli(*args)), *needles)


TOML_CASES = [
    # case(id, file text, needles); {f} = the file
    case("invalid-toml", "model = [", ["config file {f} is not valid TOML"]),
    case("unknown-section", 'model = "lightgcn"\n[trian]\nepochs = 2\n',
         ["config file {f}: unknown top-level keys ['trian']", "'[train]' and '[lightgcn]'"]),
    case("section-of-another-model", 'model = "lightgcn"\n[mf]\nembedding_dim = 8\n',
         ["config file {f}: unknown top-level keys ['mf']"]),
    case("wrong-type", '[train]\nepochs = "many"\n',
         ["invalid configuration ({f})", "train.epochs: Input should be a valid integer",
          "(got 'many')"]),
    case("unknown-key-in-model-section", 'model = "lightgcn"\n[lightgcn]\nlayers = 3\n',
         ["invalid configuration ({f})", "lightgcn.layers: Extra inputs are not permitted"]),
    case("section-is-a-number", "train = 5\n", ["{f}", "train"]),
    case("model-is-a-number", "model = 5\n", ["model", "mf, lightgcn, diffmm, "]),
]  # fmt: skip


@pytest.mark.parametrize(("text", "needles"), TOML_CASES)
def test_bad_config_file(tmp_path: Path, text: str, needles: list[str]) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    message = user_error(cli("train", "--config", path, "--data", TINY, "--out", tmp_path / "run"))
    assert_says(message, *(n.format(f=path) for n in needles))


def test_missing_config_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.toml"
    message = user_error(train_cli(tmp_path, "--config", path))
    assert_says(message, f"config file {path} does not exist")


# =========================================================================== CLI: runs


@pytest.fixture
def run_copy(trained_run: Path, tmp_path: Path) -> Path:
    """A copy of the finished run that a case may damage."""
    return Path(shutil.copytree(trained_run, tmp_path / "run-copy"))


def test_train_into_an_existing_run_is_refused(run_copy: Path) -> None:
    before = (run_copy / "best.pt").read_bytes()
    message = user_error(
        cli("train", "--model", "lightgcn", "--data", TINY, "--out", run_copy,
            "--set", "train.epochs=1", "--set", "train.progress=false")
    )  # fmt: skip
    assert_says(message, f"{run_copy} already holds a training run",
                f"diffmm train --resume {run_copy}", "pass another --out")  # fmt: skip
    assert (run_copy / "best.pt").read_bytes() == before, "the old run was touched"


def test_resume_a_directory_that_is_not_a_run(tmp_path: Path) -> None:
    (tmp_path / "notes").mkdir()
    message = user_error(cli("train", "--resume", tmp_path / "notes"))
    assert_says(message, f"{tmp_path / 'notes'}: not a run directory (no config.json)",
                "the --out of `diffmm train`")  # fmt: skip


@pytest.mark.parametrize(
    ("options", "needles"),
    [
        case("other-settings", ["--set", "train.epochs=5"],
             ["the settings given differ from those of the run in {run}",
              "drop --model/--preset/--config/--set"]),
        case("other-model", ["--model", "mf"], ["the settings given differ"]),
        case("other-out", ["--out", "elsewhere"],
             ["--out elsewhere and --resume {run} name different runs; drop --out"]),
        case("other-data", ["--data", "synthetic:n_users=61,n_items=80,interactions_per_user=10"],
             ["are not the data run {run} was trained on", "n_users: 150 in the run, 61 now",
              "pass the original data"]),
    ],
)  # fmt: skip
def test_resume_with_different_inputs(run_copy: Path, options: list[str], needles: list[str]):
    message = user_error(cli("train", "--resume", run_copy, *options))
    assert_says(message, *(n.format(run=run_copy) for n in needles))


def _damage(name: str, how: str) -> Callable[[Path], None]:
    def damage(run: Path) -> None:
        path = run / name
        if how == "truncate":
            _truncate(path)
        elif how == "garbage":
            path.write_bytes(b"not a checkpoint at all")
        elif how == "foreign":
            torch.save([1, 2, 3], path)
        elif how == "delete":
            path.unlink()
        elif how == "bad-json":
            path.write_text("{not json")
        elif how == "json-list":
            path.write_text("[]")
        elif how == "keys-missing":
            torch.save({"format": 1, "epoch": 1}, path)

    return damage


DAMAGE_CASES = [
    # case(id, file, how it is damaged, command, needles); {run} = the damaged run
    case("truncated-last.pt", "last.pt", "truncate", ["train", "--resume", "{run}"],
         ["{run}/last.pt: cannot read this checkpoint", "corrupt or truncated", "restore it"]),
    case("truncated-best.pt", "best.pt", "truncate", ["recommend", "{run}", "--user", "1"],
         ["{run}/best.pt: cannot read this checkpoint", "corrupt or truncated"]),
    case("garbage-best.pt", "best.pt", "garbage", ["export", "{run}", "--out", "top.csv"],
         ["{run}/best.pt: cannot read this checkpoint", "corrupt or truncated"]),
    case("foreign-best.pt", "best.pt", "foreign", ["recommend", "{run}", "--user", "1"],
         ["{run}/best.pt: not a diffmm checkpoint", "another program or another version"]),
    case("missing-best.pt", "best.pt", "delete", ["recommend", "{run}", "--user", "1"],
         ["{run}/best.pt: no checkpoint there"]),
    case("corrupt-config.json", "config.json", "bad-json", ["recommend", "{run}", "--user", "1"],
         ["{run}/config.json: not valid JSON", "the run directory is damaged"]),
    case("missing-ids.json", "ids.json", "delete", ["serve", "{run}", "--port", "0"],
         ["{run}/ids.json: not found", "not a complete run directory"]),
    case("dataset.json-not-an-object", "dataset.json", "json-list",
         ["recommend", "{run}", "--user", "1"], ["{run}/dataset.json", "damaged"]),
    case("last.pt-missing-keys", "last.pt", "keys-missing", ["train", "--resume", "{run}"],
         ["{run}/last.pt"]),
]  # fmt: skip


@pytest.mark.parametrize(("name", "how", "command", "needles"), DAMAGE_CASES)
def test_damaged_run_directory(
    run_copy: Path, name: str, how: str, command: list[str], needles: list[str]
) -> None:
    _damage(name, how)(run_copy)
    message = user_error(cli(*(a.format(run=run_copy) for a in command)))
    assert_says(message, *(n.format(run=run_copy) for n in needles))


def test_recommend_from_a_directory_that_is_not_a_run(tmp_path: Path) -> None:
    message = user_error(cli("recommend", tmp_path, "--user", "1"))
    assert_says(message, f"{tmp_path}: not a run directory (no config.json)")


@pytest.mark.parametrize(
    ("options", "needles"),
    [
        case("unknown-user", ["--user", "nobody"],
             ["unknown user id(s) ['nobody']", f"trained on {N_USERS} users"]),
        case("user-one-past-the-last", ["--user", str(N_USERS)],
             [f"unknown user id(s) ['{N_USERS}']"]),
        case("k-zero", ["--user", "1", "-k", "0"],
             [f"k must be an integer from 1 to {N_ITEMS}, got 0"]),
        case("k-negative", ["--user", "1", "-k", "-3"],
             [f"k must be an integer from 1 to {N_ITEMS}, got -3"]),
        case("k-above-item-count", ["--user", "1", "-k", str(N_ITEMS + 1)],
             [f"k must be an integer from 1 to {N_ITEMS}, got {N_ITEMS + 1}"]),
        case("huge-user-id", ["--user", HUGE_ID], [f"unknown user id(s) ['{HUGE_ID}']"]),
        case("known-and-unknown-user", ["--user", "1", "--user", "nobody"],
             ["unknown user id(s) ['nobody']"]),
    ],
)  # fmt: skip
def test_bad_recommend(trained_run: Path, options: list[str], needles: list[str]) -> None:
    assert_says(user_error(cli("recommend", trained_run, *options)), *needles)


@pytest.mark.parametrize(
    ("out", "options", "needles"),
    [
        case("xlsx", "top.xlsx", [],
             ["{out}: unsupported output format", "use one of .csv, .tsv, .parquet"]),
        case("k-zero", "top.csv", ["-k", "0"],
             [f"k must be an integer from 1 to {N_ITEMS}, got 0"]),
        case("batch-size-zero", "top.csv", ["--batch-size", "0"],
             ["--batch-size must be at least 1, got 0"]),
        case("out-below-a-file", "a-file/top.csv", [], ["{out}", "a-file", "not a directory"]),
    ],
)  # fmt: skip
def test_bad_export(
    trained_run: Path, tmp_path: Path, out: str, options: list[str], needles: list[str]
) -> None:
    (tmp_path / "a-file").write_text("a file, not a folder")
    message = user_error(cli("export", trained_run, "--out", tmp_path / out, *options))
    assert_says(message, *(n.format(out=tmp_path / out) for n in needles))
    assert not (tmp_path / out).exists()


def test_train_out_below_a_file(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("a file, not a folder")
    message = user_error(train_cli(tmp_path, "--out", tmp_path / "a-file" / "run"))
    assert_says(message, str(tmp_path / "a-file"), "not a directory")


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        case("k-not-a-number", ["recommend", "{run}", "--user", "1", "-k", "abc"],
             ["Invalid value for '-k': 'abc' is not a valid integer"]),
        case("no-run-dir", ["recommend", "{tmp}/nowhere", "--user", "1"],
             ["Invalid value for 'RUN_DIR'", "nowhere' does not exist"]),
        case("port-out-of-range", ["serve", "{run}", "--port", "99999"],
             ["Invalid value for '--port': 99999 is not in the range 0<=x<=65535"]),
    ],
)  # fmt: skip
def test_invalid_option_values(
    trained_run: Path, tmp_path: Path, args: list[str], needles: list[str]
) -> None:
    message = usage_error(cli(*(a.format(run=trained_run, tmp=tmp_path) for a in args)))
    assert_says(message, *needles)


# =========================================================================== HTTP service


def _drain_log(process: Any) -> str:
    """What the server wrote to its (merged stdout/stderr) pipe since the last call."""
    fd = process.stdout.fileno()
    os.set_blocking(fd, False)
    chunks = []
    try:
        while True:
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.set_blocking(fd, True)
    return b"".join(chunks).decode(errors="replace")


def http(server: Any, method: str, path: str, body: Any = None, raw: bytes | None = None):
    """``(status, detail text)`` of one request, checking the server logged no traceback."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(server.url + path, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    _drain_log(server.process)  # what earlier requests (other test files) left there
    try:
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                status, text = resp.status, resp.read().decode()
        except urllib.error.HTTPError as err:
            status, text = err.code, err.read().decode()
        # The next request is answered after the server has logged this one.
        urllib.request.urlopen(server.url + "/health", timeout=10).close()
        time.sleep(0.01)
    finally:
        log = _drain_log(server.process)
    assert "Traceback" not in log, f"the server logged a traceback:\n{log}"
    assert "Traceback" not in text
    assert status != 500, text
    try:
        payload = json.loads(text)
    except json.JSONDecodeError:
        pytest.fail(f"{method} {path}: not a JSON body ({status}): {text[:200]}")
    detail = payload.get("detail") if isinstance(payload, dict) else None
    assert isinstance(detail, str), f"no 'detail' message in {payload}"
    return status, detail


RECS = "/users/{}/recommendations"

K_MIN = "Input should be greater than or equal to 1"

GET_CASES = [
    # case(id, path, status, needles)
    case("unknown-user", RECS.format("nobody"), 404,
         ["unknown user id(s) ['nobody']", f"trained on {N_USERS} users"]),
    case("user-one-past-the-last", RECS.format(N_USERS), 404,
         [f"unknown user id(s) ['{N_USERS}']"]),
    case("negative-user", RECS.format(-1), 404, ["unknown user id(s) ['-1']"]),
    case("k-zero", RECS.format(1) + "?k=0", 422, [f"query.k: {K_MIN}"]),
    case("k-negative", RECS.format(1) + "?k=-3", 422, [f"query.k: {K_MIN}"]),
    case("k-above-items", RECS.format(1) + f"?k={N_ITEMS + 1}", 422,
         [f"query.k: Input should be less than or equal to {N_ITEMS}"]),
    case("k-not-a-number", RECS.format(1) + "?k=abc", 422,
         ["query.k: Input should be a valid integer"]),
    case("exclude-seen-maybe", RECS.format(1) + "?exclude_seen=maybe", 422,
         ["query.exclude_seen: Input should be a valid boolean"]),
    case("huge-user-id", RECS.format(HUGE_ID), 404, [f"unknown user id(s) ['{HUGE_ID}']"]),
]  # fmt: skip


@pytest.mark.parametrize(("path", "status", "needles"), GET_CASES)
def test_bad_get(server: Any, path: str, status: int, needles: list[str]) -> None:
    got, detail = http(server, "GET", path)
    assert got == status, detail
    assert_says(detail, *needles)


POST_CASES = [
    # case(id, JSON body, or raw bytes, status, needles)
    case("malformed-json", None, b'{"users": [1', 422, ["JSON decode error"]),
    case("empty-body", None, b"", 422, ["body: Field required"]),
    case("body-is-a-list", [1, 2], None, 422, ["body: Input should be a valid dictionary"]),
    case("missing-users", {}, None, 422, ["body.users: Field required"]),
    case("empty-users", {"users": []}, None, 422,
         ["body.users: List should have at least 1 item"]),
    case("too-many-users", {"users": list(range(1001))}, None, 422,
         ["body.users: List should have at most 1000 items"]),
    case("extra-field", {"users": [1], "user": 2}, None, 422,
         ["body.user: Extra inputs are not permitted"]),
    case("users-not-a-list", {"users": "1"}, None, 422,
         ["body.users: Input should be a valid list"]),
    case("null-user", {"users": [None]}, None, 422,
         ["body.users.0", "valid integer", "valid string"]),
    case("k-not-a-number", {"users": [1], "k": "abc"}, None, 422,
         ["body.k: Input should be a valid integer"]),
    case("k-zero", {"users": [1], "k": 0}, None, 422, [f"body.k: {K_MIN}"]),
    case("k-above-items", {"users": [1], "k": N_ITEMS + 1}, None, 422,
         [f"body.k: Input should be less than or equal to {N_ITEMS}"]),
    case("unknown-user", {"users": ["nobody"]}, None, 404, ["unknown user id(s) ['nobody']"]),
    case("known-and-unknown-user", {"users": [1, "nobody"]}, None, 404,
         ["unknown user id(s) ['nobody']"]),
    case("huge-user-id", {"users": [int(HUGE_ID)]}, None, 404,
         [f"unknown user id(s) [{HUGE_ID}]"]),
    case("boolean-user", {"users": [True]}, None, 422, ["body.users.0"]),
]  # fmt: skip


@pytest.mark.parametrize(("body", "raw", "status", "needles"), POST_CASES)
def test_bad_post(server: Any, body: Any, raw: bytes | None, status: int, needles: list[str]):
    got, detail = http(server, "POST", "/recommendations", body=body, raw=raw)
    assert got == status, detail
    assert_says(detail, *needles)


def test_server_survives_the_bad_requests(server: Any) -> None:
    """Runs after the cases above (file order): the service is still up and answering."""
    assert server.process.poll() is None, "the server process died"
    assert server.get("/health") == (200, {"status": "ok"})
    status, body = server.get(RECS.format(1) + "?k=5")
    assert status == 200 and len(body["items"]) == 5
