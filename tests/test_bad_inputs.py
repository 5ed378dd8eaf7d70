"""A catalogue of bad inputs and what the user must see for each.

Every case feeds one bad input and checks three things:

* a clear message that names the offending file, key or id (and, where there is one,
  the fix), asserted on specific substrings;
* a non-zero outcome: the CLI exits with status 2 and prints ``error: ...`` on stderr,
  the HTTP service answers with a 4xx status and the message in ``detail``;
* never a Python traceback (CLI: no uncaught exception; HTTP: no 500, and nothing in
  the server's log).

Sections: configuration, CLI (run directories, checkpoints, recommend, export), HTTP
service. Bad datasets: ``test_bad_data.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import Result

from helpers import assert_says, case, cli, truncate, usage_error, user_error

#: Tiny data for the CLI cases that reach the data or the trainer.
TINY = "synthetic:n_users=60,n_items=40,interactions_per_user=8"
#: ``trained_run`` (tests/conftest.py) has integer user ids 0..149 and 80 items.
N_USERS, N_ITEMS = 150, 80
HUGE_ID = "1" + "0" * 30  # an integer id too large for int64


pytestmark = pytest.mark.usefixtures("scratch_dir")


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
        ("train.device=meta", ["device 'meta': diffmm runs on 'auto', 'cpu' or 'cuda[:i]'"]),
        ("train.device=mps", ["device 'mps': diffmm runs on"]),
        ("train.device=cpu:3", ["device 'cpu:3': diffmm runs on"]),
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


def test_a_config_file_that_is_not_text(tmp_path: Path) -> None:
    path = tmp_path / "binary.toml"
    path.write_bytes(b"\xff\xfe model")
    message = user_error(train_cli(tmp_path, "--config", path))
    assert_says(message, f"config file {path} is not UTF-8 text")


def test_missing_config_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.toml"
    message = user_error(train_cli(tmp_path, "--config", path))
    assert_says(message, f"config file {path} does not exist")


def test_train_without_a_model_names_the_option(tmp_path: Path) -> None:
    message = user_error(cli("train", "--data", TINY, "--out", tmp_path / "run"))
    assert_says(message, "--model is required (e.g. --model diffmm", "`diffmm models`")
    assert not (tmp_path / "run").exists()


def test_a_config_file_nested_too_deeply(tmp_path: Path) -> None:
    path = tmp_path / "deep.toml"
    path.write_text("a = " + "[" * 3000 + "]" * 3000 + "\n")
    message = user_error(train_cli(tmp_path, "--config", path))
    assert_says(message, f"config file {path} nests arrays or tables too deeply")


def test_a_config_file_that_is_a_pipe(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.toml")  # nothing writes to it: reading would wait forever
    message = user_error(train_cli(tmp_path, "--config", tmp_path / "pipe.toml"))
    assert_says(message, f"config file {tmp_path / 'pipe.toml'} is not a regular file")


def test_features_that_are_a_file_not_a_folder(tmp_path: Path) -> None:
    from diffmm.data import load_dataset
    from diffmm.errors import DataError

    (tmp_path / "image.npy").write_bytes(b"")
    message = usage_error(cli("data", "stats", TINY, "--features", tmp_path / "image.npy"))
    assert_says(message, "'--features'", "image.npy' is a file")
    with pytest.raises(DataError, match="image.npy: is not a folder of feature files"):
        load_dataset(TINY, features=tmp_path / "image.npy")


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


def test_demo_into_a_folder_that_holds_files_is_refused(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    message = user_error(cli("demo", "--out", tmp_path / "mine", "--epochs", "1"))
    assert_says(message, f"{tmp_path / 'mine'}: exists", "name another --out")
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]


def test_demo_epochs_below_one_names_the_option(tmp_path: Path) -> None:
    message = usage_error(cli("demo", "--out", tmp_path / "d", "--epochs", "0"))
    assert_says(message, "'--epochs'", "0 is not in the range x>=1")
    assert not (tmp_path / "d").exists()


def test_resume_of_a_finished_run_without_last_pt_keeps_its_results(run_copy: Path) -> None:
    (run_copy / "last.pt").unlink()  # e.g. deleted to save space
    before = {name: (run_copy / name).read_bytes() for name in ("best.pt", "summary.json")}
    message = user_error(cli("train", "--resume", run_copy))
    assert_says(message, f"{run_copy}: holds best.pt, summary.json, log.jsonl of trained epochs",
                "no last.pt to resume from", "train into a new --out")  # fmt: skip
    assert {name: (run_copy / name).read_bytes() for name in before} == before


def test_resume_of_a_run_without_ids_json_writes_it_again(run_copy: Path) -> None:
    ids = (run_copy / "ids.json").read_text()
    (run_copy / "ids.json").unlink()
    result = cli("train", "--resume", run_copy)
    assert result.exit_code == 0, result.output
    assert (run_copy / "ids.json").read_text() == ids
    assert "had no ids.json; written again from the data" in result.output
    assert cli("recommend", run_copy, "--user", "1").exit_code == 0


def test_resume_may_change_how_a_run_runs_but_not_what_it_computes(run_copy: Path) -> None:
    same = cli("train", "--resume", run_copy, "--set", "train.progress=false",
               "--set", "train.device=cpu", "--set", "train.eval_batch_size=7")  # fmt: skip
    assert same.exit_code == 0, same.output
    config = json.loads((run_copy / "config.json").read_text())
    assert config["train"]["eval_batch_size"] != 7  # the run's record stays its own


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
              "train.epochs: 3 in the run, 5 asked", "drop --model/--preset/--config/--set"]),
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
            truncate(path)
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
        elif how == "nested-id":
            ids = json.loads(path.read_text())
            ids["users"][2] = [1]
            path.write_text(json.dumps(ids))

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
    case("ids.json-list-as-an-id", "ids.json", "nested-id", ["recommend", "{run}", "--user", "1"],
         ["{run}/ids.json: expected a list of 150 user ids (numbers or text)", "was modified"]),
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


def test_evaluate_on_a_device_diffmm_does_not_run_on(trained_run: Path) -> None:
    message = user_error(cli("evaluate", trained_run, "--device", "mps"))
    assert_says(message, "device 'mps': diffmm runs on 'auto', 'cpu' or 'cuda[:i]'")


HUGE_K = "9" * 20  # no int64 holds it


def test_cut_offs_too_large_for_any_catalogue(trained_run: Path) -> None:
    message = user_error(cli("evaluate", trained_run, "--ks", HUGE_K))
    assert_says(message, f"--ks '{HUGE_K}': give positive integers up to 2147483647")
    compare = ["report", "compare", trained_run, trained_run]
    message = user_error(cli(*compare, "--metric", f"recall@{HUGE_K}"))
    assert_says(message, "a cut-off from 1 to 2147483647", f"got 'recall@{HUGE_K}'")
    message = usage_error(cli(*compare, "--boot", "99999999999"))
    assert_says(message, "'--boot'", "1<=x<=1000000")


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
