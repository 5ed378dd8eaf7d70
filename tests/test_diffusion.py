"""The diffusion schedule against closed-form values, the loss, and sampling."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffmm.diffusion import Denoiser, GaussianDiffusion, linear_variance_betas, timestep_embedding
from diffmm.errors import ConfigError


def closed_form_schedule(steps=5, s=0.1, lo=1e-4, hi=0.02, first_beta=1e-4):
    """The schedule written out term by term from eq. 3, 8 and 12 (no vectorisation)."""
    v = [s * lo + i * (s * hi - s * lo) / (steps - 1) for i in range(steps)]
    betas = [v[0]] + [min(1 - (1 - v[i]) / (1 - v[i - 1]), 0.999) for i in range(1, steps)]
    betas[0] = first_beta
    abar, prod = [], 1.0
    for b in betas:
        prod *= 1 - b
        abar.append(prod)
    prev = [1.0] + abar[:-1]
    c0 = [betas[t] * math.sqrt(prev[t]) / (1 - abar[t]) for t in range(steps)]
    ct = [(1 - prev[t]) * math.sqrt(1 - betas[t]) / (1 - abar[t]) for t in range(steps)]
    snr = [a / (1 - a) for a in abar]
    w = [1.0] + [snr[t - 1] - snr[t] for t in range(1, steps)]
    return betas, abar, c0, ct, w


def test_schedule_matches_closed_form_and_spec_golden_values():
    d = GaussianDiffusion()
    betas, abar, c0, ct, w = closed_form_schedule()
    np.testing.assert_allclose(d.betas.numpy(), betas, rtol=1e-12)
    np.testing.assert_allclose(d.alphas_cumprod.numpy(), abar, rtol=1e-12)
    np.testing.assert_allclose(d.posterior_coef_x0.numpy(), c0, rtol=1e-10)
    np.testing.assert_allclose(d.posterior_coef_xt.numpy(), ct, rtol=1e-10)
    np.testing.assert_allclose(d.elbo_weight.numpy(), w, rtol=1e-10)
    # The spec's rounded golden values.
    np.testing.assert_allclose(
        d.betas.numpy(), [1e-4, 4.975e-4, 4.9775e-4, 4.98e-4, 4.9825e-4], rtol=1e-4
    )
    np.testing.assert_allclose(
        d.alphas_cumprod.numpy(), [0.9999, 0.999403, 0.998905, 0.998408, 0.997910], atol=1e-6
    )
    np.testing.assert_allclose(
        d.posterior_coef_x0.numpy(), [1, 0.832665, 0.454470, 0.312571, 0.238227], atol=1e-6
    )
    np.testing.assert_allclose(
        d.elbo_weight.numpy(), [1, 8326.23, 760.45, 285.32, 149.49], rtol=5e-5
    )


def test_unfixed_first_beta_follows_eq3_exactly():
    betas = linear_variance_betas(5, 0.1, 1e-4, 0.02, first_beta=None)
    abar = np.cumprod(1 - betas)
    np.testing.assert_allclose(1 - abar, np.linspace(1e-5, 2e-3, 5), rtol=1e-10)


def test_posterior_coefficients_sum_to_one_on_the_mean_of_x0():
    # If x̂0 = x0 and x_t = sqrt(ᾱ_t) x0 (noise-free), the posterior mean is sqrt(ᾱ_{t-1}) x0.
    d = GaussianDiffusion()
    x0 = torch.rand(3, 7, dtype=torch.float64)
    for step in range(d.steps):
        t = torch.full((3,), step)
        x_t = d.sqrt_alphas_cumprod[step] * x0
        prev = 1.0 if step == 0 else float(d.alphas_cumprod[step - 1])
        torch.testing.assert_close(d.posterior_mean(x0, x_t, t), math.sqrt(prev) * x0)


@pytest.mark.parametrize(
    ("kwargs", "needles"),
    [
        ({"noise_min": 0.5, "noise_max": 0.02}, ["noise_min (0.5)", "noise_max (0.02)"]),
        ({"noise_min": 0.02, "noise_max": 0.02}, ["noise_min", "noise_max"]),
        ({"noise_min": 0.0}, ["noise_min", "(0, 1)"]),
        ({"noise_max": 1.0}, ["noise_max", "(0, 1)"]),
        ({"noise_max": float("nan")}, ["noise_max"]),
        ({"noise_scale": 0.0}, ["noise_scale", "(0, 1]"]),
        ({"noise_scale": 2.0}, ["noise_scale", "(0, 1]"]),
        ({"noise_scale": float("inf")}, ["noise_scale"]),
        ({"steps": 0}, ["steps", ">= 1"]),
        ({"steps": 2.5}, ["steps", "integer"]),
        ({"first_beta": 1.0}, ["first_beta", "(0, 1)"]),
        ({"first_beta": -1e-4}, ["first_beta"]),
    ],
)
def test_an_impossible_schedule_is_refused(kwargs, needles):
    with pytest.raises(ConfigError) as info:
        GaussianDiffusion(**kwargs)
    for needle in needles:
        assert needle in str(info.value)


def test_every_accepted_schedule_is_finite_and_noises_more_each_step():
    for steps, s, lo, hi in [(1, 1.0, 0.5, 0.9), (5, 1.0, 1e-4, 0.999), (50, 0.1, 1e-4, 0.02)]:
        d = GaussianDiffusion(steps, s, lo, hi)
        for name in ("betas", "posterior_coef_x0", "posterior_coef_xt", "elbo_weight"):
            assert torch.isfinite(getattr(d, name)).all(), (steps, name)
        assert (d.betas > 0).all() and (d.alphas_cumprod.diff() < 0).all()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ((0, [8]), "n_items"),
        ((10, [8, 0]), "hidden"),
        ((10, [8], 0), "step_embedding_dim"),
        ((10, [8], 4, 1.0), "dropout"),
        ((10, [8], 4, -0.1), "dropout"),
    ],
)
def test_an_impossible_denoiser_is_refused(args, needle):
    with pytest.raises(ConfigError, match=needle):
        Denoiser(*args)


def test_q_sample_uses_the_schedule():
    d = GaussianDiffusion()
    x0, noise = torch.ones(2, 4), torch.full((2, 4), 2.0)
    t = torch.tensor([0, 4])
    x_t = d.q_sample(x0, t, noise)
    expect = [math.sqrt(a) + 2 * math.sqrt(1 - a) for a in d.alphas_cumprod[[0, 4]].tolist()]
    torch.testing.assert_close(x_t[:, 0], torch.tensor(expect, dtype=torch.float32))


def test_timestep_embedding_shape_and_values():
    emb = timestep_embedding(torch.tensor([0, 3]), 10)
    assert emb.shape == (2, 10)
    torch.testing.assert_close(emb[0], torch.tensor([1.0] * 5 + [0.0] * 5))
    assert timestep_embedding(torch.tensor([1]), 5).shape == (1, 5)


def test_denoiser_shapes_init_and_dropout_only_in_training():
    torch.manual_seed(0)
    net = Denoiser(50, [20], step_embedding_dim=10, input_dropout=0.5)
    assert net.input_weight.shape == (20, 50) and net.step_weight.shape == (20, 10)
    assert net.layers[-1].out_features == 50
    first = torch.cat([net.input_weight, net.step_weight], dim=1)  # the authors' Linear(60, 20)
    assert first.std().item() == pytest.approx(math.sqrt(2 / (60 + 20)), rel=0.1)
    with pytest.raises(ConfigError, match="hidden layer"):
        Denoiser(50, [])
    x, t = torch.rand(4, 50), torch.tensor([0, 1, 2, 3])
    net.eval()
    torch.testing.assert_close(net(x, t), net(x, t))
    net.train()
    assert not torch.equal(net(x, t), net(x, t))


def test_training_loss_weights_and_gradients():
    torch.manual_seed(0)
    d = GaussianDiffusion()
    net = Denoiser(30, [16])
    x0 = (torch.rand(8, 30) < 0.2).float()
    loss, x0_hat = d.training_loss(net, x0, "snr")
    assert loss.shape == (8,) and x0_hat.shape == (8, 30)
    loss.mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
    # With weighting "none" the loss is the plain per-row MSE of x̂0 (eq. 13).
    torch.manual_seed(1)
    plain, hat = d.training_loss(net, x0, "none")
    torch.testing.assert_close(plain, (hat - x0).pow(2).mean(1))


def test_sampling_is_deterministic_without_noise_steps():
    torch.manual_seed(0)
    d = GaussianDiffusion()
    net = Denoiser(30, [16]).eval()
    x0 = (torch.rand(5, 30) < 0.3).float()
    torch.testing.assert_close(d.sample(net, x0, 0), d.sample(net, x0, 0))
    # Hand-rolled reverse chain with eq. 10.
    x = x0
    for step in reversed(range(d.steps)):
        t = torch.full((5,), step)
        x = d.posterior_mean(net(x, t), x, t)
    torch.testing.assert_close(d.sample(net, x0, 0), x)
    with pytest.raises(ValueError):
        d.sample(net, x0, 6)


def test_sampling_from_a_sparse_batch_equals_the_dense_one():
    torch.manual_seed(0)
    d = GaussianDiffusion()
    net = Denoiser(30, [16]).eval()
    x0 = (torch.rand(5, 30) < 0.3).float()
    torch.testing.assert_close(d.sample(net, x0.to_sparse_csr(), 0), d.sample(net, x0, 0))
    torch.testing.assert_close(d.sample(net, x0.to_sparse_csr(), 2).shape, x0.shape)
    with pytest.raises(ValueError, match="inference"):
        net.train()(x0.to_sparse_csr(), torch.zeros(5, dtype=torch.long))


@pytest.mark.parametrize("hidden", [[64], [48, 24]])
@pytest.mark.parametrize("noise_steps", [0, 3])
def test_sampling_in_hidden_space_equals_the_reverse_chain_in_item_space(hidden, noise_steps):
    """The reassociated chain (Denoiser fast path) against eq. 10 applied step by step."""
    torch.manual_seed(0)
    d = GaussianDiffusion(steps=5, noise_scale=1.0)  # large noise: the x_t terms matter
    net = Denoiser(200, hidden).double().eval()
    x0 = (torch.rand(16, 200, dtype=torch.float64) < 0.1).double()

    class Opaque(torch.nn.Module):  # not a Denoiser: sample() runs the generic chain
        def forward(self, x, t):
            return net(x, t)

    torch.manual_seed(1)
    fast = d.sample(net, x0, noise_steps)
    torch.manual_seed(1)
    chain = d.sample(Opaque(), x0, noise_steps)
    torch.testing.assert_close(fast, chain, rtol=1e-10, atol=1e-12)
    net32 = net.float()
    fast32 = d.sample(net32, x0.float().to_sparse_csr(), 0)
    chain32 = d.sample(Opaque(), x0.float(), 0)
    torch.testing.assert_close(fast32, chain32, rtol=1e-4, atol=1e-5)
