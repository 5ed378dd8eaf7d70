"""One DiffMM epoch as the data grow: seconds per phase, peak RSS, denoiser size (issue 13 §6).

Each measurement is a child process (its peak RSS is its own) that builds synthetic data
(``make_synthetic``, about 10 interactions per user), builds DiffMM with the given
settings and runs the four parts of an epoch with the library's own code: the
generator's diffusion pass (``ModalityGraphGenerator.train_epoch``), graph generation
(``generate`` + ``topk_bipartite``), the recommender pass (BPR + InfoNCE + Adam steps on
the trainer's batches, grown by ``train.max_batches_per_epoch`` when set) and scoring
every user (or ``train.validation_users`` of them) against every item with a top-20.
Graph generation covers every user, or ``graph_users_per_epoch`` of them.

A part that would take more than ``--budget`` batches runs that many and is scaled up
to the whole epoch (batches of one part cost the same; the recommender pass leaves its
first, warm-up step out of the rate; the propagation before scoring is timed once);
such rows say ``"extrapolated": true``. For graph generation on an extrapolated row the users not
denoised get random top-k items, so the recommender pass runs on graphs of the real
size. Peak RSS is the child's high-water mark: the model, the graphs and one batch of
each part, which is what a whole epoch holds as well.

The 1-vs-2-process rows run ``diffmm train`` itself for one epoch, with and without
``torchrun --nproc-per-node 2`` (gloo), on the same data and seed, and record the
seconds of that epoch from ``log.jsonl`` and the validation metrics of both runs.

With ``--epoch-size 1000000x100000`` the script also trains one whole epoch of ``diffmm
train`` at that size with ``--epoch-options`` (default ``linear``, the ``large`` preset's
options): a row with nothing extrapolated, its peak RSS the run's own.

    python benchmarks/scale.py                          # every size, options off and on
    python benchmarks/scale.py --sizes 10000x5000 --options on --processes-size ''
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import REPO, RESULTS, provenance, write_atomic

SIZES = ("10000x5000", "50000x20000", "200000x50000", "1000000x100000")
PER_USER = 10
#: The settings of each option set: today's defaults, and the `large` preset's options.
OPTIONS: dict[str, list[str]] = {
    "off": [],
    "on": [
        "train.max_batches_per_epoch=64",
        "contrastive_negatives=sampled",
        "diffusion_space=latent",
        "diffusion_users_per_epoch=16384",
    ],
}
#: ``on`` and the two options that bound the users x items parts: graph generation for a
#: rolling share of the users, validation on a sample of them.
OPTIONS["linear"] = [
    *OPTIONS["on"],
    "graph_users_per_epoch=16384",
    "train.validation_users=16384",
    "train.reuse_freed_memory_mb=32",  # what the command's malloc keeps: the peak's bound
]
#: ``linear`` with the command's malloc keeping freed blocks up to 1 GiB (the default):
#: what ``train.reuse_freed_memory_mb=32`` saves.
OPTIONS["linear-keep"] = [*OPTIONS["linear"][:-1], "train.reuse_freed_memory_mb=1024"]
PHASES = ("diffusion", "graphs", "recommender", "eval")


def settings_of(options: str) -> list[str]:
    """The settings of an option set: a name of :data:`OPTIONS`, or a name followed by
    ``+KEY=VALUE`` changes (``linear+train.reuse_freed_memory_mb=256``), each replacing
    the set's own value of that key or added to it."""
    name, *changes = options.split("+")
    if name not in OPTIONS:
        raise SystemExit(f"--options {options}: {name!r} is not one of {', '.join(OPTIONS)}")
    keys = {c.partition("=")[0] for c in changes}
    return [s for s in OPTIONS[name] if s.partition("=")[0] not in keys] + changes


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(fn, *args):  # noqa: ANN001, ANN202 - a tiny local helper
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def child(n_users: int, n_items: int, sets: list[str], budget: int) -> dict[str, Any]:
    """One measurement in this process (see the module docstring)."""
    import torch

    from diffmm.config import resolve_config
    from diffmm.data import make_synthetic
    from diffmm.graph import topk_bipartite
    from diffmm.models import get_model_class
    from diffmm.models.base import Batch
    from diffmm.sampling import NegativeSampler, bpr_epoch_batches, grown_batch, n_bpr_pairs
    from diffmm.utils import seed_everything

    data, data_seconds = timed(
        make_synthetic, n_users, n_items, 16, PER_USER
    )  # positional: n_users, n_items, n_factors, interactions_per_user
    config = resolve_config("diffmm", overrides=["train.progress=false", *sets])
    rng = seed_everything(config.train.seed)
    model = get_model_class("diffmm")(config.params, data)
    cfg = config.params
    seconds: dict[str, float] = {}
    extrapolated = False

    # 1. the generator's diffusion pass, over a share of the users if need be
    users = torch.randperm(n_users)
    trained = min(n_users, cfg.diffusion_users_per_epoch or n_users)  # users of the pass
    share = min(trained, budget * cfg.diffusion_batch_size)
    extrapolated |= share < trained
    with torch.no_grad():
        item_emb = model.item_emb.detach()
        modal_emb = [f.detach() for f in model.aligned_features()]
    _, s = timed(model.generator.train_epoch, users[:share], item_emb, modal_emb)
    seconds["diffusion"] = s * trained / share
    refreshed = min(n_users, cfg.graph_users_per_epoch or n_users)  # graphs: every user
    share = min(refreshed, budget * cfg.diffusion_batch_size)
    extrapolated |= share < refreshed

    # 2. graph generation: the generator's top-k for (a share of) the users
    graphs, generating, building = [], 0.0, 0.0
    k = cfg.rebuild_k
    for m in range(len(model.modalities)):
        with torch.no_grad():
            items, s = timed(model.generator.generate, users[:share], m)
        generating += s
        rest = torch.randint(n_items, (n_users - share, k))  # the users not denoised
        all_items = torch.empty(n_users, k, dtype=torch.long)
        all_items[users[:share]], all_items[users[share:]] = items, rest
        graph, s = timed(
            topk_bipartite,
            torch.arange(n_users).repeat_interleave(k),
            all_items.reshape(-1),
            n_users,
            n_items,
        )
        building += s  # already for every user
        graphs.append(graph)
    seconds["graphs"] = generating * refreshed / share + building
    model.set_modality_graphs(graphs)

    # 3. the recommender pass on the trainer's batches (grown if asked), Adam steps
    tcfg = config.train
    batch_size, lr_factor = grown_batch(
        n_bpr_pairs(data.train), tcfg.batch_size, tcfg.max_batches_per_epoch
    )
    optimizer = torch.optim.Adam(model.trainable_parameters(), lr=tcfg.lr * lr_factor)
    sampler = NegativeSampler(data.train)
    n_batches = -(-n_bpr_pairs(data.train) // batch_size)
    steps = min(n_batches, budget)
    extrapolated |= steps < n_batches
    model.train()
    batches = bpr_epoch_batches(data.train, batch_size, rng, sampler)
    first, negatives = timed(next, batches)  # the epoch's negatives are drawn up front
    step_seconds = []
    for arrays in itertools.chain([first], itertools.islice(batches, steps - 1)):
        start = time.perf_counter()
        loss = sum(model.loss(Batch(*(torch.from_numpy(x) for x in arrays))).values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step_seconds.append(time.perf_counter() - start)
    if extrapolate_steps := steps < n_batches and steps > 1:  # the first step warms up
        step_seconds = step_seconds[1:]
    per_step = sum(step_seconds) / len(step_seconds)
    seconds["recommender"] = negatives + per_step * (n_batches if extrapolate_steps else steps)

    # 4. validation: every item for (a share of) the validated users, top-20 of each
    model.eval()
    validated = min(n_users, tcfg.validation_users or n_users)
    eval_share = min(validated, budget * tcfg.eval_batch_size)
    extrapolated |= eval_share < validated
    with torch.no_grad():
        embeddings, propagate = timed(model.embeddings)  # once per evaluation
        start = time.perf_counter()
        for batch in torch.arange(eval_share).split(tcfg.eval_batch_size):
            torch.topk(model.scores(batch, embeddings), 20)
    seconds["eval"] = propagate + (time.perf_counter() - start) * validated / eval_share
    return {
        "users": n_users,
        "items": n_items,
        "interactions": int(data.train.nnz + data.valid.nnz + data.test.nnz),
        "processes": 1,
        "options": sets,
        "seconds_per_epoch": sum(seconds.values()),
        "seconds_per_phase": seconds,
        "extrapolated": bool(extrapolated),
        "budget_batches": budget,
        "recommender_batch": batch_size,
        "recommender_batches": n_batches,
        "peak_rss_mb": peak_rss_mb(),
        "denoiser_parameters": sum(p.numel() for p in model.generator.parameters()),
        "data_seconds": data_seconds,
        "modalities": list(model.modalities),
    }


def measure(size: str, options: str, budget: int) -> dict[str, Any]:
    n_users, n_items = (int(x) for x in size.split("x"))
    cmd = [
        sys.executable,
        __file__,
        "--child",
        json.dumps([n_users, n_items, settings_of(options), budget]),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    if out.returncode != 0:
        return {
            "users": n_users,
            "items": n_items,
            "processes": 1,
            "options": settings_of(options),
            "failed": out.stderr.strip().splitlines()[-1:],
            "peak_rss_mb": None,
        }
    row = json.loads(out.stdout.strip().splitlines()[-1])
    row["option_set"] = options
    return row


def train_epoch(size: str, processes: int, options: str = "off", seed: int = 421) -> dict[str, Any]:
    """One whole epoch of ``diffmm train`` on synthetic data of ``size``, in one process
    or in ``processes`` (torchrun, gloo, one thread each); nothing extrapolated."""
    n_users, n_items = (int(x) for x in size.split("x"))
    spec = f"synthetic:n_users={n_users},n_items={n_items},interactions_per_user={PER_USER}"
    bin_dir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        train = ["train", "--model", "diffmm", "--data", spec, "--out", str(out)]
        sets = ["train.epochs=1", f"train.seed={seed}", "train.progress=false"]
        sets += settings_of(options)
        args = [*train, *(x for s in sets for x in ("--set", s))]
        if processes == 1:
            cmd = [str(bin_dir / "diffmm"), *args]
            threads = os.environ.get("OMP_NUM_THREADS", "2")
        else:
            torchrun = [str(bin_dir / "torchrun"), "--nproc-per-node", str(processes)]
            cmd = [*torchrun, "-m", "diffmm", *args]
            threads = "1"  # one core each
        start = time.perf_counter()
        env = {**os.environ, "OMP_NUM_THREADS": threads}
        subprocess.run(cmd, check=True, capture_output=True, env=env, cwd=REPO)
        wall = time.perf_counter() - start
        (record,) = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
        summary = json.loads((out / "summary.json").read_text())
        splits = json.loads((out / "dataset.json").read_text())["fingerprint"]["splits"]
        return {
            "users": n_users,
            "items": n_items,
            "interactions": sum(split["nnz"] for split in splits.values()),
            "processes": processes,
            "options": settings_of(options),
            "option_set": options,
            "whole_epoch": True,
            "command": shlex.join(cmd)
            .replace(str(out), "RUN")
            .replace(f"{bin_dir}/", ""),  # as typed in an activated venv
            "seconds_per_epoch": record["seconds"],
            "seconds_per_phase": {  # the epoch's phases, and those of its begin_epoch
                k.removeprefix("seconds_"): v
                for k, v in {**record, **(record.get("begin_epoch") or {})}.items()
                if k.startswith("seconds_")
            },
            "wall_seconds": wall,
            "valid": record["valid"],
            "extrapolated": False,
            "peak_rss_mb": summary.get("peak_rss_mb") if processes == 1 else None,
            "denoiser_parameters": None,
        }


def processes_rows(size: str, seed: int = 421) -> list[dict[str, Any]]:
    """One epoch of ``diffmm train`` in 1 process and in 2 (torchrun, gloo)."""
    return [train_epoch(size, processes, seed=seed) for processes in (1, 2)]


def markdown(meta: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    lines = [
        "# DiffMM at scale: one epoch",
        "",
        "Rows come from runs of `python benchmarks/scale.py --sizes ... --options off|on|linear "
        "--budget N` (the last: "
        f"`{meta['command']}`); each row records its revision, date and a 1-minute load "
        "average taken with it (`scale.json`). Machine: "
        f"{meta['machine']['cpu']}, {meta['machine']['cores']} cores, one torch thread per "
        "process. A load average near 3 means two other processes shared the 2 cores: such "
        "times are upper bounds.",
        "",
        "Options `on`: " + ", ".join(f"`{s}`" for s in OPTIONS["on"]) + "; `linear`: `on` "
        "and " + ", ".join(f"`{s}`" for s in OPTIONS["linear"][len(OPTIONS["on"]) :]) + ". "
        "Rows marked extrapolated ran at most `budget` batches per part and scale the time "
        "up to the epoch (module docstring of `benchmarks/scale.py`).",
        "",
        "| users | items | interactions | processes | options | s/epoch | diffusion | graphs "
        "| recommender | eval | extrapolated (budget) | peak RSS MB | generator params "
        "| revision | load |",
        "|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---|---:|---:|---|---:|",
    ]
    for r in rows:
        tail = f"{r.get('revision', '')[:7]} | {r.get('load_average', 0):.1f} |"
        if "failed" in r:
            lines.append(
                f"| {r['users']:,} | {r['items']:,} | | 1 | {r.get('option_set', '')} | "
                f"failed: {' '.join(r['failed'])[:120]} | | | | | | | | {tail}"
            )
            continue
        p = r["seconds_per_phase"]
        keys = ("diffusion", "graphs", "train", "eval") if "train" in p else PHASES
        cells = [f"{p[k]:.1f}" if k in p else "–" for k in keys]
        extrapolated = f"yes ({r.get('budget_batches')})" if r["extrapolated"] else "no"
        option_set = r.get("option_set", "") + (", whole epoch" if r.get("whole_epoch") else "")
        if r.get("options") != OPTIONS.get(r.get("option_set", ""), r.get("options")):
            option_set += " (earlier set)"

        def known(value: float | None, spec: str) -> str:  # not recorded: "–", not 0
            return format(value, spec) if value else "–"

        lines.append(
            f"| {r['users']:,} | {r['items']:,} | {known(r['interactions'], ',')} | "
            f"{r['processes']} | {option_set} | {r['seconds_per_epoch']:.1f} | "
            + " | ".join(cells)
            + f" | {extrapolated} | {known(r['peak_rss_mb'], '.0f')} | "
            f"{known(r['denoiser_parameters'], ',')} | {tail}"
        )
    if any("(earlier set)" in line for line in lines):
        lines += [
            "",
            "(earlier set): the row ran an earlier version of its option set, before "
            "`train.reuse_freed_memory_mb=32` joined `linear`; its options are in `scale.json`.",
        ]
    lines += growth_lines(rows)
    proc = [r for r in rows if "valid" in r and r.get("option_set") == "off"]
    if len(proc) == 2:
        one, two = sorted(proc, key=lambda r: r["processes"])
        lines += [
            "",
            f"1 vs 2 processes ({one['users']:,} x {one['items']:,}, one epoch of `diffmm "
            f"train`, same seed): {one['seconds_per_epoch']:.1f} s vs "
            f"{two['seconds_per_epoch']:.1f} s per epoch "
            f"({one['seconds_per_epoch'] / two['seconds_per_epoch']:.2f}x the throughput); "
            f"valid recall@20 {one['valid']['recall@20']:.4f} vs "
            f"{two['valid']['recall@20']:.4f}.",
        ]
    return "\n".join(lines) + "\n"


def growth_lines(rows: list[dict[str, Any]], small=(50_000, 20_000), large=(200_000, 50_000)):
    """Issue 13's target, per option set: the time ratio from ``small`` to ``large``
    against 1.3 x their interaction ratio."""
    out = []
    for option_set in dict.fromkeys(r.get("option_set") for r in rows):
        pair = {
            (r["users"], r["items"]): r
            for r in rows
            if r.get("option_set") == option_set
            and r["processes"] == 1
            and "failed" not in r
            and not r.get("whole_epoch")  # the growth compares the per-part measurements
        }
        if small not in pair or large not in pair or not pair[small]["interactions"]:
            continue
        a, b = pair[small], pair[large]
        time_ratio = b["seconds_per_epoch"] / a["seconds_per_epoch"]
        data_ratio = b["interactions"] / a["interactions"]
        phases = ", ".join(
            f"{k} {b['seconds_per_phase'][k] / a['seconds_per_phase'][k]:.1f}x" for k in PHASES
        )
        verdict = "met" if time_ratio <= 1.3 * data_ratio else "NOT met"
        out.append(
            f"- `{option_set}`: {small[0]:,} x {small[1]:,} to {large[0]:,} x {large[1]:,}: "
            f"{time_ratio:.2f}x the time for {data_ratio:.2f}x the interactions ({phases}); "
            f"target <= {1.3 * data_ratio:.2f}x: {verdict}."
        )
    return ["", "Growth of an epoch with the data (issue 13's target):", "", *out] if out else []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default=",".join(SIZES), help="USERSxITEMS,...")
    parser.add_argument(
        "--options",
        default="off,on",
        help="Option sets: off, on, linear, linear-keep, each with optional +KEY=VALUE changes.",
    )
    parser.add_argument("--budget", type=int, default=8, help="Batches per part at most.")
    parser.add_argument("--processes-size", default="10000x5000", help="'' to skip.")
    parser.add_argument(
        "--epoch-size",
        default="",
        metavar="USERSxITEMS",
        help="Also train one whole epoch at this size with --epoch-options (diffmm train).",
    )
    parser.add_argument(
        "--epoch-options",
        default="linear",
        help="Option sets of --epoch-size, comma-separated (as --options).",
    )
    parser.add_argument("--report-only", action="store_true", help="Rewrite scale.md.")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*json.loads(args.child))))
        return
    if args.report_only:
        saved = json.loads((RESULTS / "scale.json").read_text())
        write_atomic(RESULTS / "scale.md", markdown(saved, saved["rows"]))
        return
    meta = {
        **provenance(),
        "load_before": os.getloadavg()[0],
    }
    out = RESULTS / "scale.json"
    rows = json.loads(out.read_text())["rows"] if out.exists() else []
    stamp = {"revision": meta["revision"], "date": meta["machine"]["date"]}

    def keep(row: dict[str, Any]) -> None:
        """Replace an earlier row of the same setting; a row of an earlier version of its
        option set stays next to it (marked "(earlier set)")."""

        def key(r: dict[str, Any]) -> tuple:
            return (
                r["users"],
                r["items"],
                r["processes"],
                r.get("option_set"),
                tuple(r.get("options", ())),
                r.get("whole_epoch"),
            )

        rows[:] = [r for r in rows if key(r) != key(row)]
        rows.append({**row, **stamp, "load_average": os.getloadavg()[0]})
        rows.sort(key=lambda r: (r["users"], r["processes"], r.get("option_set", "")))
        write_atomic(out, json.dumps({**meta, "rows": rows}, indent=2) + "\n")

    for size in [s for s in args.sizes.split(",") if s]:
        for options in [o for o in args.options.split(",") if o]:
            print(f"{size} options {options}", flush=True)
            row = measure(size, options, args.budget)
            keep(row)
            print(json.dumps(row), flush=True)
    for row in processes_rows(args.processes_size) if args.processes_size else []:
        keep(row)
    for options in args.epoch_options.split(",") if args.epoch_size else []:
        keep(train_epoch(args.epoch_size, 1, options))
    write_atomic(RESULTS / "scale.md", markdown(meta, rows))
    print((RESULTS / "scale.md").read_text())


if __name__ == "__main__":
    main()
