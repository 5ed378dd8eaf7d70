"""bfloat16 matrix products (``train.precision``, issue 13 §4): speed and accuracy.

Records what decides ``auto`` on this machine (torch's CPU capability and bf16 checks,
or the CUDA device), a square GEMM's rate in float32 and in bfloat16, and short DiffMM
trainings on synthetic data with ``train.precision=fp32`` and ``=bf16``, alternating
(fp32, bf16, fp32, bf16, ...; same seed), each phase's median seconds per epoch and
the test metrics. Results go to ``benchmarks/results/precision.{json,md}``, one section
per device and hardware path (``cpu (AVX2)``, ``cpu (AVX512_BF16)``, ``cuda (...)``: a
run keeps the other sections).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/precision.py                 # CPU
    .venv/bin/python benchmarks/precision.py --device cuda --users 20000 --items 8000

On a CPU without AVX-512 BF16 or AMX, bf16 is expected to be much slower: the point
is to record it, which is why ``auto`` does not use it there.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from common import RESULTS, provenance, write_atomic
from diffmm import precision
from diffmm.config import RunConfig, TrainConfig
from diffmm.data import make_synthetic
from diffmm.models.diffmm import DiffMMConfig
from diffmm.trainer import train
from diffmm.utils import to_json

PHASES = ("seconds_diffusion", "seconds_graphs", "seconds_train", "seconds_eval", "seconds")
METRICS = ("recall@20", "ndcg@20")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gemm_rate(n: int, dtype: torch.dtype, device: torch.device, repeats: int, budget: float):
    """GFLOP/s of an ``n x n`` product (median of up to ``repeats``, stopping once
    ``budget`` seconds are spent: a slow bf16 GEMM takes a minute at 2048 on AVX2)."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    warm = a[:64] @ b  # a warm-up on a slice, cheap even where bf16 is slow
    del warm
    times: list[float] = []
    while len(times) < repeats and (not times or sum(times) < budget):
        sync(device)
        start = time.perf_counter()
        a @ b
        sync(device)
        times.append(time.perf_counter() - start)
    return {"gflops": 2 * n**3 / statistics.median(times) / 1e9, "runs": len(times)}


def one_training(args: argparse.Namespace, setting: str, device: str) -> dict[str, Any]:
    data = make_synthetic(n_users=args.users, n_items=args.items, seed=0)
    config = RunConfig(
        model="diffmm",
        train=TrainConfig(
            epochs=args.epochs,
            batch_size=args.batch_size,
            progress=False,
            device=device,
            seed=421,
            precision=setting,
            eval_batch_size=1024,
        ),
        params=DiffMMConfig(
            denoiser_hidden_dims=[args.hidden],
            embedding_dim=args.embedding_dim,
            diffusion_batch_size=256,
        ),
    )
    with tempfile.TemporaryDirectory() as tmp:
        summary = train(config, data, Path(tmp) / "run")
        log = [json.loads(x) for x in (Path(tmp) / "run" / "log.jsonl").read_text().splitlines()]
    seconds = {}
    for key in PHASES:
        values = [r.get(key, (r.get("begin_epoch") or {}).get(key)) for r in log]
        seconds[key] = [float(v) for v in values if v is not None]
    return {
        "setting": setting,
        "precision": summary["precision"],
        "seconds": seconds,
        "test": {m: summary["test"][m] for m in METRICS},
        "final_loss": log[-1]["losses"]["loss"],
    }


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for setting in ("fp32", "bf16"):
        mine = [r for r in runs if r["setting"] == setting]
        out[setting] = {
            "matmuls": mine[0]["precision"]["matmuls"],
            "median_seconds": {
                k: statistics.median(v for r in mine for v in r["seconds"][k])
                for k in PHASES
                if any(r["seconds"][k] for r in mine)
            },
            "test": {m: statistics.mean(r["test"][m] for r in mine) for m in METRICS},
        }
    fp32, bf16 = out["fp32"], out["bf16"]
    out["speedup_bf16"] = {
        k: fp32["median_seconds"][k] / bf16["median_seconds"][k] for k in bf16["median_seconds"]
    }
    out["test_change_bf16"] = {m: bf16["test"][m] - fp32["test"][m] for m in METRICS}
    return out


def markdown(sections: dict[str, Any]) -> str:
    lines = ["# bfloat16 matrix products (`train.precision`, issue 13 §4)", ""]
    for section, s in sections.items():
        m, cap, device = s["machine"], s["capability"], section.split(" ")[0]
        lines += [
            f"## {section}",
            "",
            f"Command: `{s['command']}` (`OMP_NUM_THREADS={s['omp_num_threads']}`); revision "
            f"`{s['revision']}`; {m['cpu']}, {m['cores']} cores, torch {m['torch']} "
            f"({m['torch_threads']} threads), CUDA: {m['cuda']}; {m['date']}.",
            "",
            f"- CPU capability (`torch.backends.cpu.get_cpu_capability()`): "
            f"`{cap['cpu_capability']}`; bf16 features (`torch.cpu.get_capabilities()`): "
            f"{cap['cpu_bf16_features'] or 'none'}",
            f"- `bf16_is_fast({device})`: {cap['bf16_fast']} ({cap['hardware']}); "
            f"`auto` resolves to **{cap['auto']}**",
            f"- {s['gemm']['n']}² GEMM: float32 {s['gemm']['fp32']['gflops']:.1f} GFLOP/s, "
            f"bfloat16 {s['gemm']['bf16']['gflops']:.2f} GFLOP/s "
            f"(x{s['gemm']['bf16']['gflops'] / s['gemm']['fp32']['gflops']:.3g}; medians of "
            f"{s['gemm']['fp32']['runs']} and {s['gemm']['bf16']['runs']} runs)",
            "",
            f"DiffMM, synthetic {s['data']}, {s['rounds']} rounds x {s['epochs']} epochs per "
            "setting, alternating; median seconds per epoch:",
            "",
            "| phase | fp32 | bf16 | speed-up (fp32/bf16) |",
            "|---|---:|---:|---:|",
        ]
        res = s["summary"]
        for key, speed in res["speedup_bf16"].items():
            a, b = res["fp32"]["median_seconds"][key], res["bf16"]["median_seconds"][key]
            lines.append(
                f"| {key.removeprefix('seconds_') or key} | {a:.3f} | {b:.3f} | {speed:.3g} |"
            )
        lines += ["", "| test metric | fp32 | bf16 | change |", "|---|---:|---:|---:|"]
        for metric, change in res["test_change_bf16"].items():
            lines.append(
                f"| {metric} | {res['fp32']['test'][metric]:.4f} | "
                f"{res['bf16']['test'][metric]:.4f} | {change:+.4f} |"
            )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    parser.add_argument("--gemm-n", type=int, default=2048)
    parser.add_argument("--gemm-repeats", type=int, default=5)
    parser.add_argument("--gemm-budget", type=float, default=60.0, help="seconds per dtype")
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--items", type=int, default=1500)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--embedding-dim", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: CUDA is not available on this machine")
    info = precision.describe("auto", device)
    capability = {**info, "auto": info["matmuls"]}
    del capability["setting"], capability["matmuls"]
    gemm = {"n": args.gemm_n}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        gemm[name] = gemm_rate(args.gemm_n, dtype, device, args.gemm_repeats, args.gemm_budget)
        print(f"{args.gemm_n}² GEMM {name}: {gemm[name]['gflops']:.2f} GFLOP/s", flush=True)
    runs = []
    for round_ in range(args.rounds):
        for setting in ("fp32", "bf16"):
            runs.append(one_training(args, setting, args.device))
            s = runs[-1]["seconds"]
            print(f"round {round_ + 1} {setting}: epoch {s['seconds']}", flush=True)
    section = {
        **provenance(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "capability": capability,
        "gemm": gemm,
        "data": f"{args.users} users x {args.items} items, denoiser hidden {args.hidden}, "
        f"embedding {args.embedding_dim}",
        "epochs": args.epochs,
        "rounds": args.rounds,
        "runs": runs,
        "summary": summarise(runs),
    }
    path = RESULTS / "precision.json"
    sections = json.loads(path.read_text()) if path.exists() else {}
    # one section per device and hardware path: an AVX2 CPU's stays beside an AVX-512 one's
    sections[f"{device.type} ({capability['hardware']})"] = section
    write_atomic(path, to_json(sections) + "\n")
    write_atomic(RESULTS / "precision.md", markdown(sections))
    print(markdown({device.type: section}))


if __name__ == "__main__":
    main()
