"""Denoiser size and memory of DiffMM's generator on whole rows vs in latent space (issue 13 §3).

For synthetic data at each item count (``diffmm.data.make_synthetic``, its linear
clusters sampler; 20k users, about 10 interactions each), one child process per
(size, ``diffusion_space``) builds the :class:`~diffmm.graph_generator.ModalityGraphGenerator`
for the ``visual`` modality with DiffMM's default settings (denoiser ``[1000]``,
``diffusion_batch_size`` 1024, chunks of 256; latent: ``latent_clusters`` 2,
``latent_dim`` 300, clusters on the visual features) and records

* parameter counts: denoiser, autoencoder (latent only);
* the peak RSS above the RSS before it (Linux ``VmHWM``, reset through
  ``/proc/self/clear_refs`` before each phase) of: building the generator, one
  diffusion training step (one batch of 1024 users, Adam states created), one
  generation batch (1024 users' top-``rebuild_k`` items);
* the tensor memory the generator holds after the step: parameters, gradients (freed by
  the step) and Adam states, counted from the tensors; on CUDA also the allocator peak.

Writes ``benchmarks/results/latent_memory.{json,md}``.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/latent_memory.py
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/latent_memory.py --items 50000 --users 5000
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from typing import Any

from common import RESULTS, git_revision, machine_info, write_atomic

CHILD = r"""
import json, sys, time
import torch
from diffmm.data import make_synthetic
from diffmm.graph_generator import ModalityGraphGenerator
from diffmm.models.diffmm_config import DiffMMConfig

def hwm_mb():  # peak RSS since the last reset
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024

def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024

def reset():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()

def phase(name, fn, out):
    reset()
    before = rss_mb()
    start = time.perf_counter()
    result = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        out[f"{name}_cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    out[f"{name}_seconds"] = time.perf_counter() - start
    out[f"{name}_peak_rss_over_start_mb"] = hwm_mb() - before
    return result

def tensor_mb(tensors):
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20

n_users, n_items, space = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
device = "cuda" if torch.cuda.is_available() else "cpu"
torch.manual_seed(0)
ds = make_synthetic(n_users=n_users, n_items=n_items, interactions_per_user=10)
feats = ds.features["visual"]
cfg = DiffMMConfig(diffusion_space=space)
out = {"n_users": n_users, "n_items": n_items, "space": space, "device": device,
       "train_interactions": int(ds.train.nnz), "rss_after_data_mb": rss_mb()}
gen = phase("build", lambda: ModalityGraphGenerator(
    cfg, ds.train.tocsr(), ["visual"], [feats] if space == "latent" else None).to(device), out)
out["denoiser_params"] = sum(p.numel() for p in gen.denoisers.parameters())
out["autoencoder_params"] = (
    sum(p.numel() for p in gen.autoencoders.parameters()) if gen.autoencoders is not None else 0)
out["cluster_sizes"] = gen.autoencoders[0].sizes if gen.autoencoders is not None else None
g = torch.Generator().manual_seed(1)
item_emb = torch.randn(n_items, 64, generator=g).to(device)
modal_emb = [torch.randn(n_items, 64, generator=g).to(device)]
users = torch.arange(cfg.diffusion_batch_size, device=device)
stats = phase("train_step", lambda: gen.train_epoch(users, item_emb, modal_emb), out)
out["train_step_losses"] = stats
params = list(gen.parameters())
adam = [v for opt in gen.optimizers for s in opt.state.values() for v in s.values()
        if torch.is_tensor(v) and v.dim() > 0]
out["params_mb"] = tensor_mb(params)
out["adam_state_mb"] = tensor_mb(adam)
out["grads_mb_in_step"] = out["params_mb"]  # one gradient per parameter, freed by the step
top = phase("generate_batch", lambda: gen.generate(users, 0), out)
out["generated_shape"] = list(top.shape)
out["final_rss_mb"] = rss_mb()
print(json.dumps(out))
"""


def measure(n_users: int, n_items: int, space: str) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(n_users), str(n_items), space],
        capture_output=True,
        text=True,
        env=env,
    )
    if done.returncode != 0:
        raise SystemExit(f"{n_items} items, {space}: child failed\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def markdown(records: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        "# Generator memory: whole rows vs latent space (L-DiffRec)",
        "",
        "One modality's generator at DiffMM's default sizes (denoiser [1000], batches of "
        "1024 users, chunks of 256; latent: 2 clusters, latent_dim 300). Peaks are the "
        "peak RSS of each phase above the RSS when it began (VmHWM reset before each "
        "phase); tensors: parameters + Adam states held after the step (the gradients, "
        "as large as the parameters, live during the step).",
        "",
        "| items | space | denoiser params | autoencoder params | params + Adam (MB) | "
        "build peak (MB) | train step peak (MB) | train step (s) | generation batch peak "
        "(MB) | generation batch (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        lines.append(
            f"| {r['n_items']:,} | {r['space']} | {r['denoiser_params']:,} | "
            f"{r['autoencoder_params']:,} | {r['params_mb'] + r['adam_state_mb']:,.0f} | "
            f"{r['build_peak_rss_over_start_mb']:,.0f} | "
            f"{r['train_step_peak_rss_over_start_mb']:,.0f} | {r['train_step_seconds']:.1f} | "
            f"{r['generate_batch_peak_rss_over_start_mb']:,.0f} | "
            f"{r['generate_batch_seconds']:.1f} |"
        )
    lines += [
        "",
        f"Data: `make_synthetic(n_users={records[0]['n_users']}, n_items=..., "
        "interactions_per_user=10)`.",
        "",
        f"Command: `{meta['command']}` (revision `{meta['revision']}`)",
        "",
        f"Machine: `{json.dumps(meta['machine'])}`",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", default="50000,100000", help="item counts, comma-separated")
    parser.add_argument("--users", type=int, default=20000)
    args = parser.parse_args()
    records = []
    for n_items in (int(x) for x in args.items.split(",")):
        for space in ("items", "latent"):
            print(f"{n_items} items, {space} ...", flush=True)
            records.append(measure(args.users, n_items, space))
    meta = {
        "command": "OMP_NUM_THREADS=1 " + shlex.join(["python", *sys.argv]),
        "revision": git_revision(),
        "machine": machine_info(),
    }
    text = markdown(records, meta)
    write_atomic(RESULTS / "latent_memory.md", text)
    write_atomic(
        RESULTS / "latent_memory.json", json.dumps({**meta, "results": records}, indent=2) + "\n"
    )
    print(text)


if __name__ == "__main__":
    main()
