"""Every ```bash and ```python block of README.md runs as written, on small data.

The blocks are extracted from README.md and run in order in one temporary folder laid out
like a checkout: ``work/`` (the current directory, with ``.venv`` linked to this
checkout's) beside ``shared/data/``, so ``../shared/data/...`` and ``.venv/bin/diffmm``
resolve as they do in the README. ``shared/data/`` there holds small slices of the real
shared data, made from ``../shared/data`` (or ``DIFFMM_SHARED_DATA``): 600 users x 600
items of TikTok with their features, 1,000 x 1,000 of Baby, and a copy of MovieLens 100K.
Where the shared data are absent, the commands that name them, and the commands and
snippets that use a run one of them would have made, are skipped, and the rest still run.

To keep the test short, commands are changed only in these ways, all of them printed:

* ``train`` (not ``--resume``), ``benchmark``, ``sweep`` and ``torchrun ... train`` get
  ``--set train.epochs=1`` appended (it overrides an earlier ``train.epochs``);
  ``--seeds N`` becomes ``--seeds 1``; ``demo`` gets ``--epochs 1``;
* ``serve`` gets a free ``--port``, is started, answers ``/health`` and ``/docs``, and is
  stopped.

Skipped, with the reason in the test's output: ``make demo`` / ``make test`` (set up a
virtual environment and run ``diffmm demo`` / this whole suite), ``pip install`` (needs
the network), the two-machine ``torchrun`` (needs two machines), and ``features text``
when the ``[text]`` extra is not installed. Python snippets run unchanged, after the bash
blocks above them, in a fresh interpreter in the same folder. A test that runs fast checks
that every block is classified, so a new README block is either run or skipped with a
reason.
"""

from __future__ import annotations

import importlib.util
import os
import pickle
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SHARED = Path(os.environ.get("DIFFMM_SHARED_DATA", ROOT.parent / "shared" / "data"))
COMMAND_TIMEOUT = 900


@dataclass
class Step:
    kind: str  # "bash" or "python"
    text: str  # the command or snippet as the README has it
    run: str | None = None  # what is run (None: skipped)
    skip: str | None = None  # why it is skipped
    serve: bool = False


def readme_blocks(text: str) -> list[tuple[str, str]]:
    """``(language, body)`` of every fenced ```bash and ```python block, in order."""
    return [
        (m.group(1), m.group(2))
        for m in re.finditer(r"^```(bash|python)\n(.*?)^```$", text, re.S | re.M)
    ]


def bash_commands(body: str) -> list[str]:
    """The commands of a bash block: continuation lines joined, comment lines dropped."""
    commands, current = [], ""
    for line in body.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1].rstrip() + " "
            continue
        commands.append(current + line.strip())
        current = ""
    assert not current, f"a README command ends with a line continuation: {current!r}"
    return commands


def _strip_comment(command: str) -> str:
    return re.sub(r"\s+#\s.*$", "", command).strip()


def plan(kind: str, text: str) -> Step:
    """What the test runs for one README command or snippet, or why it skips it."""
    if kind == "python":
        return Step(kind, text, run=text)
    command = _strip_comment(text)
    words = command.split()
    if words[0] == "make":
        return Step(kind, text, skip="sets up .venv and runs `diffmm demo` / the whole suite")
    if words[0] == "pip":
        return Step(kind, text, skip="installs packages (needs the network)")
    if words[0] == "torchrun" and "--nnodes" in words:
        return Step(kind, text, skip="needs two machines")
    if (
        "features" in words
        and "text" in words
        and importlib.util.find_spec("sentence_transformers") is None
    ):
        return Step(kind, text, skip="the [text] extra (sentence-transformers) is not installed")
    if words[0] not in {"diffmm", ".venv/bin/diffmm", "torchrun"}:
        raise AssertionError(f"README command of an unknown kind: {text!r}")
    sub = words[words.index("diffmm") + 1] if words[0] == "torchrun" else words[1]
    if sub == "serve":
        return Step(kind, text, run=command, serve=True)
    if (sub == "train" and "--resume" not in words) or sub in {"benchmark", "sweep"}:
        command += " --set train.epochs=1"
    if sub == "demo":
        command += " --epochs 1"
    command = re.sub(r"--seeds \d+", "--seeds 1", command)
    return Step(kind, text, run=command)


def readme_steps() -> list[Step]:
    steps = []
    for kind, body in readme_blocks(README.read_text(encoding="utf-8")):
        texts = bash_commands(body) if kind == "bash" else [body]
        steps += [plan(kind, t) for t in texts]
    return steps


def test_every_readme_block_is_run_or_skipped_with_a_reason():
    steps = readme_steps()
    assert len([s for s in steps if s.kind == "python"]) >= 2
    assert len([s for s in steps if s.kind == "bash"]) >= 15
    for step in steps:
        assert (step.run is None) != (step.skip is None), step
    # Nothing names a file that no command creates and no shared data hold.
    assert "interactions.csv" not in README.read_text(encoding="utf-8")


# --- small stand-ins for the shared data ----------------------------------------------


def _authors_slice(src: Path, dst: Path, n_users: int, n_items: int) -> None:
    """A small authors'-format folder cut from ``src``: about ``n_users`` users (the first
    ones with a validation item and the first with a test item), the ``n_items`` items they
    clicked most in train, and those items' feature rows."""
    from diffmm.data.authors import load_sparse_pickle

    names = ("trnMat.pkl", "valMat.pkl", "tstMat.pkl")
    mats = [load_sparse_pickle(src / name).tocsr() for name in names]
    # half of them with a validation item, half with a test item (TikTok has few of both)
    with_valid, with_test = (np.flatnonzero(m.getnnz(axis=1) > 0) for m in mats[1:])
    users = np.union1d(with_valid[: n_users // 2], with_test[: n_users - n_users // 2])
    popularity = np.asarray(mats[0][users].sum(axis=0)).ravel()
    items = np.sort(np.argsort(-popularity, kind="stable")[:n_items])
    dst.mkdir(parents=True)
    for name, mat in zip(names, mats, strict=True):
        with open(dst / name, "wb") as fh:
            pickle.dump(mat[users][:, items].tocoo(), fh)
    for feat in src.glob("*_feat.npy"):
        np.save(dst / feat.name, np.load(feat)[items])


def _make_shared(tmp: Path) -> Path | None:
    """``tmp/shared/data`` with small slices of the shared data, or None if absent."""
    if not all((SHARED / d).is_dir() for d in ("tiktok", "baby", "ml-100k")):
        return None
    data = tmp / "shared" / "data"
    _authors_slice(SHARED / "tiktok", data / "tiktok", 600, 600)
    _authors_slice(SHARED / "baby", data / "baby", 1000, 1000)
    shutil.copytree(SHARED / "ml-100k", data / "ml-100k", copy_function=shutil.copyfile)
    (data / "ml-100k").chmod(0o755)  # the split cache goes next to the table, not in ~/.cache
    return data


# --- running the steps ----------------------------------------------------------------


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{ROOT / '.venv' / 'bin'}{os.pathsep}{Path(sys.executable).parent}"
    env["PATH"] += os.pathsep + os.environ.get("PATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONPATH"] = str(ROOT / "src")
    env.pop("DIFFMM_SERVE_TOKEN", None)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 (loopback only)
        return resp.status, resp.read()


def _serve(command: str, cwd: Path) -> None:
    port = _free_port()
    command = re.sub(r"--port \d+", f"--port {port}", command)
    print(f"$ {command}  (started, checked, stopped)", flush=True)
    proc = subprocess.Popen(["bash", "-c", f"exec {command}"], cwd=cwd, env=_env())
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, f"`{command}` exited with {proc.returncode}"
            try:
                status, body = _get(f"http://127.0.0.1:{port}/health")
                break
            except OSError:
                assert time.monotonic() < deadline, f"`{command}` did not answer /health"
                time.sleep(0.5)
        assert status == 200 and b"ok" in body
        status, body = _get(f"http://127.0.0.1:{port}/docs")
        assert status == 200 and b"swagger" in body.lower()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _run_names(text: str) -> set[str]:
    return set(re.findall(r"runs/[\w.-]+", text))


@pytest.mark.slow
def test_readme_commands_and_snippets_run(tmp_path, capsys):
    shared = _make_shared(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    (work / ".venv").symlink_to(ROOT / ".venv")
    made: set[str] = set()  # runs/NAME folders the executed steps created
    missing: set[str] = set()  # runs/NAME folders a skipped step would have created
    ran, skipped = [], []
    for step in readme_steps():
        reason = step.skip
        if reason is None and shared is None and "../shared/data" in step.text:
            reason = f"the shared data are absent ({SHARED})"
        if reason is None and (_run_names(step.text) & missing):
            reason = "uses a run that a skipped command makes"
        if reason is not None:
            missing |= _run_names(step.text) - made
            skipped.append((step.text, reason))
            continue
        if step.serve:
            _serve(step.run, work)
        elif step.kind == "bash":
            print(f"$ {step.run}", flush=True)
            proc = subprocess.run(
                ["bash", "-c", step.run], cwd=work, env=_env(), timeout=COMMAND_TIMEOUT
            )
            assert proc.returncode == 0, f"README command failed: {step.run}"
        else:
            print(f">>> {step.run}", flush=True)
            proc = subprocess.run(
                [sys.executable, "-c", step.run], cwd=work, env=_env(), timeout=COMMAND_TIMEOUT
            )
            assert proc.returncode == 0, f"README snippet failed:\n{step.run}"
        made |= {name for name in _run_names(step.text) if (work / name).exists()}
        ran.append(step.text)
    with capsys.disabled():
        print(f"\nREADME: {len(ran)} commands/snippets run, {len(skipped)} skipped:")
        for text, reason in skipped:
            print(f"  skipped ({reason}): {text.splitlines()[0]}")
    assert ran
