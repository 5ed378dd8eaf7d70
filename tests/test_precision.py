"""train.precision: which dtype the hot products use, and bf16 results close to fp32."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from diffmm import precision
from diffmm.config import RunConfig, TrainConfig, resolve_config
from diffmm.data.dataset import Dataset
from diffmm.diffusion import Denoiser, GaussianDiffusion
from diffmm.errors import ConfigError
from diffmm.models.diffmm import DiffMMConfig
from diffmm.ops import matmul_cross_entropy
from diffmm.trainer import train

CPU = torch.device("cpu")
BF16 = torch.bfloat16
#: bf16 keeps 8 significant bits (relative rounding 2^-9 ≈ 0.002 per operand, and each
#: product rounds its inputs and its output); the tolerance is on the relative error in
#: norm, ‖x - y‖ / ‖y‖, of whole outputs and gradients.
RTOL = 2e-2


def rel_error(x: torch.Tensor, y: torch.Tensor) -> float:
    x, y = x.detach().double(), y.detach().double()
    return float(torch.linalg.vector_norm(x - y) / torch.linalg.vector_norm(y))


def close(x: torch.Tensor, y: torch.Tensor) -> bool:
    return rel_error(x, y) < RTOL


# ---------------------------------------------------------------------- resolve()
@pytest.mark.parametrize("fast", [True, False])
def test_resolve_follows_the_capability_check(monkeypatch, caplog, fast):
    monkeypatch.setattr(precision, "bf16_is_fast", lambda device: fast)
    assert precision.resolve("auto", CPU) == (BF16 if fast else torch.float32)
    assert precision.resolve("fp32", CPU) == torch.float32
    with caplog.at_level(logging.WARNING, logger="diffmm"):
        assert precision.resolve("bf16", CPU) == BF16
    warned = [r for r in caplog.records if r.name == "diffmm.precision"]
    assert bool(warned) is not fast  # an explicit bf16 on slow hardware warns
    if warned:
        assert "slow" in warned[0].getMessage()
    with pytest.raises(ValueError, match="precision"):
        precision.resolve("fp16", CPU)


def test_cpu_check_reads_torch_capabilities(monkeypatch):
    precision.cpu_bf16_features.cache_clear()
    try:
        monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": True})
        assert precision.bf16_is_fast(CPU)
        assert precision.hardware(CPU) == "AVX512_BF16"
        precision.cpu_bf16_features.cache_clear()
        monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx2": True})
        assert not precision.bf16_is_fast(CPU)
        assert precision.message(precision.describe("auto", CPU)).startswith(
            "matrix products in float32 ("
        )
    finally:
        precision.cpu_bf16_features.cache_clear()


@pytest.mark.parametrize(("capability", "native", "fast"), [((8, 0), True, True),
                                                             ((9, 0), True, True),
                                                             ((7, 5), True, False),
                                                             ((8, 6), False, False)])  # fmt: skip
def test_cuda_uses_bf16_only_with_native_support_from_sm_80(monkeypatch, capability, native, fast):
    # no GPU needed: the check reads torch.cuda's answers, faked here
    precision._cuda_bf16_is_fast.cache_clear()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: native)
    try:
        assert precision.bf16_is_fast(torch.device("cuda", 0)) is fast
        assert precision.resolve("auto", torch.device("cuda", 0)) == (
            torch.bfloat16 if fast else torch.float32
        )
    finally:
        precision._cuda_bf16_is_fast.cache_clear()


def test_describe_records_the_path():
    info = precision.describe("fp32", CPU)
    assert info["matmuls"] == "float32" and info["setting"] == "fp32"
    assert info["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert isinstance(info["bf16_fast"], bool)
    assert json.loads(json.dumps(info)) == info
    auto = precision.describe("auto", CPU)
    assert auto["matmuls"] == ("bfloat16" if auto["bf16_fast"] else "float32")


def test_matmuls_sets_the_dtype_only_inside():
    assert precision.active() is None
    with precision.matmuls(BF16):
        assert precision.active() == BF16
        with precision.matmuls(torch.float32):
            assert precision.active() is None
        assert precision.active() == BF16
    assert precision.active() is None
    with pytest.raises(ValueError):
        with precision.matmuls(torch.float16):
            pass


# ---------------------------------------------------------------------- the denoiser
def denoiser_grads(denoiser: Denoiser, x: torch.Tensor, t: torch.Tensor, dtype: torch.dtype):
    denoiser.zero_grad()
    with precision.matmuls(dtype):
        out = denoiser(x, t)
    assert out.dtype == torch.float32
    F.mse_loss(out, x).backward()
    return out.detach(), [p.grad.clone() for p in denoiser.parameters()]


def test_bf16_denoiser_is_close_to_fp32_with_close_gradients():
    torch.manual_seed(0)
    denoiser = Denoiser(40, hidden_dims=(32, 24), input_dropout=0.0)
    x = (torch.rand(16, 40) < 0.2).float()
    t = torch.randint(0, 5, (16,))
    out32, grads32 = denoiser_grads(denoiser, x, t, torch.float32)
    out16, grads16 = denoiser_grads(denoiser, x, t, BF16)
    assert not torch.equal(out16, out32)  # the bf16 path did run
    assert close(out16, out32)
    for g16, g32 in zip(grads16, grads32, strict=True):
        assert g16.dtype == torch.float32 and close(g16, g32)
    assert all(p.dtype == torch.float32 for p in denoiser.parameters())


def test_fp32_context_is_bitwise_the_default():
    torch.manual_seed(1)
    denoiser = Denoiser(30, hidden_dims=(16,), input_dropout=0.0)
    x = (torch.rand(8, 30) < 0.3).float()
    t = torch.randint(0, 5, (8,))
    plain, plain_grads = denoiser_grads(denoiser, x, t, torch.float32)
    denoiser.zero_grad()
    out = denoiser(x, t)  # no context at all
    F.mse_loss(out, x).backward()
    assert torch.equal(out.detach(), plain)
    for p, g in zip(denoiser.parameters(), plain_grads, strict=True):
        assert torch.equal(p.grad, g)
    a, b = torch.randn(10, 6, requires_grad=True), torch.randn(7, 6, requires_grad=True)
    targets = torch.randint(0, 7, (10,))
    loss = matmul_cross_entropy(a, b, targets, block_rows=4)
    ga, gb = torch.autograd.grad(loss, (a, b))
    with precision.matmuls(torch.float32):
        loss2 = matmul_cross_entropy(a, b, targets, block_rows=4)
    ga2, gb2 = torch.autograd.grad(loss2, (a, b))
    assert torch.equal(loss, loss2) and torch.equal(ga, ga2) and torch.equal(gb, gb2)


@pytest.mark.parametrize("noise_steps", [0, 2])
def test_bf16_sampling_is_close_and_keeps_sparse_rows_fp32(noise_steps):
    torch.manual_seed(2)
    diffusion = GaussianDiffusion(steps=5)
    denoiser = Denoiser(30, hidden_dims=(16,)).eval()
    dense = (torch.rand(6, 30) < 0.3).float()
    rows = dense.to_sparse_csr() if noise_steps == 0 else dense  # sparse: no bf16 kernel
    torch.manual_seed(3)
    ref = diffusion.sample(denoiser, rows, noise_steps)
    torch.manual_seed(3)
    with precision.matmuls(BF16):
        low = diffusion.sample(denoiser, rows, noise_steps)
    assert low.dtype == torch.float32 and close(low, ref)


def test_bf16_training_loss_is_close():
    torch.manual_seed(4)
    diffusion = GaussianDiffusion(steps=5)
    denoiser = Denoiser(30, hidden_dims=(16,), input_dropout=0.0)
    x0 = (torch.rand(8, 30) < 0.3).float()
    torch.manual_seed(5)
    ref, _ = diffusion.training_loss(denoiser, x0)
    torch.manual_seed(5)
    with precision.matmuls(BF16):
        low, x0_hat = diffusion.training_loss(denoiser, x0)
    assert low.dtype == x0_hat.dtype == torch.float32 and close(low, ref)


# ---------------------------------------------------------------------- the contrastive loss
@pytest.mark.parametrize("logit_bound", [None, 2.0])
def test_bf16_matmul_cross_entropy_is_close_with_close_gradients(logit_bound):
    torch.manual_seed(6)
    a = F.normalize(torch.randn(37, 16), dim=1).requires_grad_()
    b = F.normalize(torch.randn(50, 16), dim=1).requires_grad_()
    targets = torch.randint(0, 50, (37,))
    weights = torch.rand(37) / 37
    kw = dict(block_rows=8, logit_bound=logit_bound)
    ref = matmul_cross_entropy(a * 2, b, targets, weights, **kw)
    ga, gb = torch.autograd.grad(ref, (a, b))
    with precision.matmuls(BF16):
        low = matmul_cross_entropy(a * 2, b, targets, weights, **kw)
    ga16, gb16 = torch.autograd.grad(low, (a, b))
    assert low.dtype == torch.float32 and not torch.equal(low, ref)
    assert rel_error(low, ref) < 5e-3
    assert close(ga16, ga) and close(gb16, gb)


# ---------------------------------------------------------------------- config and trainer
def test_config_accepts_the_three_settings_and_refuses_others():
    assert TrainConfig().precision == "fp32"
    for value in ("auto", "fp32", "bf16"):
        assert TrainConfig(precision=value).precision == value
    with pytest.raises(ValueError):
        TrainConfig(precision="fp16")
    assert resolve_config("mf", overrides=["train.precision=auto"]).train.precision == "auto"
    with pytest.raises(ConfigError, match="precision"):
        resolve_config("mf", overrides=["train.precision=half"])


def tiny_multimodal(seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    n_users, n_items = 30, 20
    dense = rng.random((n_users, n_items)) < 0.25
    dense[np.arange(n_users), rng.integers(0, n_items, n_users)] = True
    valid = np.zeros_like(dense)
    for u in range(n_users):  # one training item per user moves to valid when it can
        own = np.flatnonzero(dense[u])
        if len(own) > 1:
            dense[u, own[0]], valid[u, own[0]] = False, True
    as_csr = lambda m: sp.csr_matrix(m.astype(np.float32))  # noqa: E731
    feats = {f"m{i}": rng.normal(size=(n_items, 8)).astype(np.float32) for i in range(2)}
    empty = as_csr(np.zeros_like(dense))
    return Dataset("tiny", n_users, n_items, as_csr(dense), as_csr(valid), empty, feats)


def test_bf16_diffmm_training_runs_and_records_the_path(tmp_path, caplog):
    cfg = RunConfig(
        model="diffmm",
        train=TrainConfig(
            epochs=2, batch_size=64, progress=False, device="cpu", seed=3, precision="bf16"
        ),
        params=DiffMMConfig(denoiser_hidden_dims=[16], embedding_dim=8, diffusion_batch_size=8),
    )
    with caplog.at_level(logging.INFO, logger="diffmm"):
        summary = train(cfg, tiny_multimodal(), tmp_path)
    assert summary["epochs_run"] == 2
    info = json.loads((tmp_path / "summary.json").read_text())["precision"]
    assert info["setting"] == "bf16" and info["matmuls"] == "bfloat16"
    assert info["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert any(r.getMessage().startswith("matrix products in bfloat16") for r in caplog.records)
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["losses"]["loss"]) for r in log)
