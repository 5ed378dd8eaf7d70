"""Multi-process and multi-machine training on :mod:`torch.distributed`.

``torchrun --nproc-per-node N -m diffmm train ...`` (with ``--nnodes`` and
``--rdzv-endpoint`` across machines) starts N processes with ``RANK``, ``LOCAL_RANK``,
``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` set; :func:`session` then joins the
process group (``nccl`` on CUDA, where each process uses ``cuda:LOCAL_RANK``, else
``gloo``) and the processes train one model:

* recommender pass: every rank draws the same shuffled global batches and negatives (the
  same seeded NumPy generator) and takes its contiguous slice (:func:`shard_batch`);
  :class:`LossModule` under ``DistributedDataParallel`` averages the gradients, and each
  rank's loss is scaled by ``world * n_rank / n`` so that the averaged gradient is the
  gradient of the global batch's mean loss, as one process computes it;
* DiffMM's diffusion pass and graph regeneration: the users are shuffled with the shared
  torch generator and every global batch is sliced the same way; the denoisers'
  gradients are summed with :func:`all_reduce_grads` before each of their optimiser
  steps; the generated top-k items are gathered (:func:`gather_rows`) so every rank
  builds the same graphs. Diffusion noise is drawn per rank (:func:`rank_rng`), so the
  shared generator, which the random graph and edge dropout draw from, stays identical;
* evaluation: users are sharded, metric sums and counts reduced (:func:`evaluate_sharded`);
* rank 0 alone writes the run directory and logs; a resumed run's training state is read
  by rank 0 and broadcast (:func:`broadcast_object`).

With ``WORLD_SIZE`` unset or 1 every function here is the identity or a no-op.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
import torch.distributed as dist
from torch import Tensor, nn

from diffmm.errors import DiffMMError
from diffmm.utils import resolve_device


class PeerFailedError(DiffMMError):
    """Rank 0 stopped before training (its error is printed there)."""


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of this process; ``(0, 1)`` outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_distributed() -> bool:
    return world()[1] > 1


def is_main() -> bool:
    """Whether this process writes files and logs (rank 0, or the only process)."""
    return world()[0] == 0


def launched_as_main() -> bool:
    """Whether torchrun's environment (``RANK``) makes this process rank 0 (or none is set),
    before or after the process group exists."""
    return int(os.environ.get("RANK", "0")) == 0


@contextmanager
def session(device_spec: str) -> Iterator[torch.device]:
    """The device to train on; inside a process group when ``WORLD_SIZE`` > 1.

    Joins the group from torchrun's environment (``init_method="env://"``) and leaves
    it on exit; a group that is already initialised (by the caller) is used as it is.
    """
    device = resolve_device(device_spec)
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        if dist.is_initialized() and device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        yield device
        return
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method="env://")
    try:
        yield device
    finally:
        dist.destroy_process_group()


def _collective_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def summary_fields() -> dict[str, Any]:
    """``{"world_size": N, "backend": ...}`` for a run's summary; ``{}`` in one process."""
    if not is_distributed():
        return {}
    return {"world_size": world()[1], "backend": dist.get_backend()}


# ----------------------------------------------------------------------------- sharding
def shard(n: int) -> slice:
    """This rank's contiguous part of ``n`` items (near-equal parts, in rank order)."""
    rank, size = world()
    return slice(n * rank // size, n * (rank + 1) // size)


def shard_batch(
    arrays: tuple[np.ndarray, ...],
) -> tuple[tuple[np.ndarray, ...], float]:
    """This rank's slice of a global batch and its loss scale ``world * n_rank / n``.

    A rank whose slice would be empty gets the batch's first row with scale 0: it still
    takes part in the gradient reduction, adding nothing.
    """
    rank, size = world()
    if size == 1:
        return arrays, 1.0
    n = len(arrays[0])
    part = shard(n)
    mine = part.stop - part.start
    if mine == 0:
        return tuple(a[:1] for a in arrays), 0.0
    return tuple(a[part] for a in arrays), size * mine / n


# ----------------------------------------------------------------------------- collectives
def all_reduce_sum(tensor: Tensor) -> Tensor:
    """The element-wise sum of ``tensor`` over the ranks (the tensor itself alone)."""
    if not is_distributed():
        return tensor
    work = tensor.to(_collective_device())
    dist.all_reduce(work)
    return work.to(tensor.device)


def any_rank(flag: bool, device: torch.device) -> bool:
    """Whether ``flag`` is true on any rank (``flag`` itself in one process)."""
    if not is_distributed():
        return flag
    return bool(all_reduce_sum(torch.tensor([float(flag)], device=device)) > 0)


def all_reduce_grads(params: Iterator[nn.Parameter] | list[nn.Parameter]) -> None:
    """Sum the gradients of ``params`` over the ranks, in one flat reduction (a rank
    without a gradient for a parameter adds zeros and receives the sum)."""
    if not is_distributed():
        return
    params = [p for p in params if p.requires_grad]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = all_reduce_sum(torch.cat([g.reshape(-1) for g in grads]))
    for p, part in zip(params, flat.split([p.numel() for p in params]), strict=True):
        p.grad = part.view_as(p).clone()


def global_losses(totals: dict[str, Tensor]) -> dict[str, Tensor]:
    """Each rank's sums of its scaled losses (see :func:`shard_batch`) -> the sums of
    the global batches' losses, on every rank."""
    if not is_distributed() or not totals:
        return totals
    summed = all_reduce_sum(torch.stack(list(totals.values()))) / world()[1]
    return dict(zip(totals, summed, strict=True))


def gather_rows(tensor: Tensor) -> Tensor:
    """The ranks' ``tensor`` rows concatenated in rank order (shards may differ in length)."""
    if not is_distributed():
        return tensor
    _, size = world()
    device = _collective_device()
    local = tensor.to(device)
    n = torch.tensor([local.shape[0]], device=device)
    counts = [torch.zeros_like(n) for _ in range(size)]
    dist.all_gather(counts, n)
    longest = int(max(c.item() for c in counts))
    padded = local.new_zeros((longest, *local.shape[1:]))
    padded[: local.shape[0]] = local
    parts = [torch.zeros_like(padded) for _ in range(size)]
    dist.all_gather(parts, padded)
    rows = [p[: int(c.item())] for p, c in zip(parts, counts, strict=True)]
    return torch.cat(rows).to(tensor.device)


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (pickled; tensors are best moved to CPU first)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@contextmanager
def main_setup() -> Iterator[None]:
    """Rank 0: tell the other ranks whether the block (its setup of the run directory)
    succeeded, so that they stop too rather than wait for it."""
    try:
        yield
    except BaseException as error:
        broadcast_object(f"{type(error).__name__}: {error}")
        raise
    broadcast_object(None)


def wait_for_main_setup() -> None:
    """Other ranks: wait for rank 0's setup; raise if it failed (rather than hang)."""
    failure = broadcast_object(None)
    if failure is not None:
        raise PeerFailedError(f"rank 0 stopped before training ({failure})")


# ----------------------------------------------------------------------------- random state
@contextmanager
def rank_rng(device: torch.device) -> Iterator[None]:
    """Draw from a per-rank torch generator inside; the shared one is left as every rank
    has it (one seed drawn from it). A no-op in a single process."""
    if not is_distributed():
        yield
        return
    seed = int(torch.randint(0, 2**62, (1,)))
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, device_type=device.type):
        torch.manual_seed(seed + world()[0])
        yield


def sync_torch_rng(device: torch.device) -> None:
    """Give every rank rank 0's torch generator state (CPU, and ``device``'s on CUDA)."""
    if not is_distributed():
        return
    cuda = device.type == "cuda"
    state = (torch.get_rng_state(), torch.cuda.get_rng_state(device) if cuda else None)
    cpu, gpu = broadcast_object(state)
    torch.set_rng_state(cpu)
    if cuda:
        torch.cuda.set_rng_state(gpu, device)


# ----------------------------------------------------------------------------- model
class LossModule(nn.Module):
    """``forward(users, pos, neg)`` = ``model.loss(Batch(...))``, for DDP to wrap.

    Holds the model's *trainable* parameters only (a model may train others itself,
    e.g. DiffMM's denoisers), so DDP reduces exactly what the trainer's optimiser steps.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.params = nn.ParameterList(model.trainable_parameters())
        self._model = (model,)  # a tuple: not registered as a submodule

    def forward(self, users: Tensor, pos: Tensor, neg: Tensor) -> dict[str, Tensor]:
        from diffmm.models.base import Batch

        return self._model[0].loss(Batch(users, pos, neg))


def loss_function(model: nn.Module) -> Callable[[Any], dict[str, Tensor]]:
    """``batch -> losses``: ``model.loss`` alone, DDP over :class:`LossModule` in a group."""
    if not is_distributed():
        return model.loss
    device = model.device
    ids = [device.index] if device.type == "cuda" else None
    ddp = nn.parallel.DistributedDataParallel(LossModule(model), device_ids=ids)
    return lambda batch: ddp(batch.users, batch.pos_items, batch.neg_items)


def broadcast_state(model: nn.Module) -> None:
    """Load rank 0's ``model.state_dict()`` on every rank."""
    if not is_distributed():
        return
    state = {k: v.cpu() if isinstance(v, Tensor) else v for k, v in model.state_dict().items()}
    model.load_state_dict(broadcast_object(state))


# ----------------------------------------------------------------------------- evaluation
class _ShardView:
    """A dataset whose evaluated ``split`` keeps only this rank's users' rows."""

    def __init__(self, dataset: Any, split: str) -> None:
        self._dataset = dataset
        heldout = sp.csr_matrix(dataset.split(split))
        users = np.flatnonzero(np.diff(heldout.indptr) > 0)
        keep = np.zeros(heldout.shape[0])
        keep[users[shard(users.size)]] = 1.0
        rows = sp.csr_matrix(sp.diags(keep) @ heldout)
        rows.eliminate_zeros()
        self._split, self._rows = split, rows

    def split(self, name: str) -> sp.csr_matrix:
        return self._rows if name == self._split else self._dataset.split(name)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._dataset, name)


def evaluate_sharded(
    evaluate: Callable[..., dict],
    score_fn: Callable[[Tensor], Tensor],
    dataset: Any,
    split: str,
    **kw: Any,
) -> dict:
    """``evaluate(score_fn, dataset, split, **kw)`` with the users sharded over the ranks
    and the per-user metric sums and counts reduced: every rank gets the global means
    (other keys of the result are this rank's)."""
    if not is_distributed():
        return evaluate(score_fn, dataset, split, **kw)
    local = evaluate(score_fn, _ShardView(dataset, split), split, per_user=True, **kw)
    per_user = local.pop("per_user")
    names = [k for k in per_user if k != "user"]
    sums = [float(np.sum(per_user[k], dtype=np.float64)) for k in names]
    totals = all_reduce_sum(torch.tensor([*sums, len(per_user["user"])], dtype=torch.float64))
    n = int(totals[-1])
    result = dict(local)
    result.update({k: float(totals[i]) / n if n else 0.0 for i, k in enumerate(names)})
    result["n_users"] = n
    return result
