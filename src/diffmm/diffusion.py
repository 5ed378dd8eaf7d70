"""Gaussian diffusion over interaction rows, and the x0-predicting MLP denoiser.

DiffMM (Jiang et al., "DiffMM: Multi-Modal Diffusion Model for Recommendation",
ACM MM 2024, §2.2) diffuses each user's binary interaction row ``x0 = a_u``:

* forward process (eq. 1-3): ``x_t = sqrt(ᾱ_t) x0 + sqrt(1 - ᾱ_t) ε`` with the
  linear-variance schedule ``1 - ᾱ_t = v_t``, ``v = linspace(s·γ_min, s·γ_max, T)``;
  the authors' code then fixes ``β_1`` to 1e-4;
* posterior ``q(x_{t-1} | x_t, x0)`` (eq. 7-8) whose mean, with ``x̂0`` in place of
  ``x0``, is the reverse step ``μθ(x_t, t)`` (eq. 10);
* ELBO loss (eq. 11-13): per-row mean squared error of ``x̂0``, weighted by
  ``SNR(t-1) - SNR(t)`` (weight 1 at ``t = 0``), or unweighted (eq. 13);
* inference (§2.2.3): noise ``x0`` for ``T'`` steps, then denoise deterministically
  through all ``T`` steps.

Nothing here knows about recommenders: :class:`GaussianDiffusion` holds the schedule,
:class:`Denoiser` is the network. Steps are 0-based: ``t ∈ {0, ..., T-1}``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffmm import precision
from diffmm.errors import ConfigError
from diffmm.ops import dropout


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_schedule(
    steps: int, noise_scale: float, noise_min: float, noise_max: float, first_beta: float | None
) -> None:
    """Raise :class:`ConfigError` unless the schedule is a valid diffusion.

    It needs ``T >= 1``, ``0 < s <= 1`` and ``0 < γ_min < γ_max < 1``: the noise variance
    ``s·γ`` then grows strictly from step to step and stays below 1, so every β_t is in
    ``(0, 1)`` (a falling variance makes β negative and the denoisers' weights NaN).
    """
    if not _is_int(steps) or steps < 1:
        raise ConfigError(f"diffusion steps must be an integer >= 1 (got {steps!r})")
    for name, value in (("noise_min", noise_min), ("noise_max", noise_max)):
        if not 0 < value < 1:  # also refuses NaN
            raise ConfigError(f"{name} must be in (0, 1) (got {value!r})")
    if not 0 < noise_scale <= 1:
        raise ConfigError(f"noise_scale must be in (0, 1] (got {noise_scale!r})")
    if not noise_min < noise_max:
        raise ConfigError(
            f"noise_min ({noise_min!r}) must be less than noise_max ({noise_max!r}): the "
            "noise must grow with the step"
        )
    if first_beta is not None and not 0 < first_beta < 1:
        raise ConfigError(f"first_beta must be None or in (0, 1) (got {first_beta!r})")


def linear_variance_betas(
    steps: int, noise_scale: float, noise_min: float, noise_max: float, first_beta: float | None
) -> np.ndarray:
    """β_t such that ``1 - ᾱ_t`` follows ``linspace(s·γ_min, s·γ_max, T)`` (eq. 3), float64.

    ``first_beta`` replaces β_1 (the authors' code uses 1e-4); ``None`` keeps eq. 3 exact.
    Impossible values raise :class:`ConfigError` (see :func:`check_schedule`).
    """
    check_schedule(steps, noise_scale, noise_min, noise_max, first_beta)
    variance = np.linspace(noise_scale * noise_min, noise_scale * noise_max, steps)
    alpha_bar = 1.0 - variance
    betas = np.empty(steps)
    betas[0] = variance[0]
    betas[1:] = np.minimum(1.0 - alpha_bar[1:] / alpha_bar[:-1], 0.999)
    if first_beta is not None:
        betas[0] = first_beta
    return betas


def _dense_product(product: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """``product(x)`` (a linear map of the dense ``x``) in the matrix-product dtype of
    :mod:`diffmm.precision` (bfloat16 autocast inside :func:`~diffmm.precision.matmuls`),
    returned in ``x``'s dtype; outside, exactly ``product(x)``."""
    with precision.autocast(x.device.type):
        out = product(x)
    return out.to(x.dtype)


def timestep_embedding(t: Tensor, dim: int) -> Tensor:
    """Sinusoidal embedding of integer steps ``t`` (shape ``(b,)``) -> ``(b, dim)``."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    )
    angles = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class Denoiser(nn.Module):
    """The x0-predicting MLP x̂θ(x_t, t) of §2.2.2.

    ``tanh(W_x dropout(x_t) + W_e Linear(emb(t)) + b) -> [Linear -> tanh]* -> Linear``:
    the authors' first layer ``Linear(cat([x_t, emb]))`` with its weight kept as two
    blocks, ``W_x`` (``input_weight``, hidden x n_items) and ``W_e`` (``step_weight``), so
    that the row product needs no copy or slice of a larger weight. Initialisation as in
    the authors' code: weights ~ N(0, sqrt(2 / (fan_in + fan_out))) (for the first layer,
    fan_in = n_items + step_embedding_dim), biases ~ N(0, 0.001). Dropout on the input is
    active in training mode only. The dense row products (first layer, hidden layers,
    output layer) run in bfloat16 inside :func:`diffmm.precision.matmuls` (bfloat16);
    activations, the step embedding and sparse products stay float32.

    Args:
        n_items: length of an interaction row.
        hidden_dims: widths of the hidden layers (``dims``; default ``[1000]``).
        step_embedding_dim: size of the step embedding (``d_emb_size``; default 10).
        input_dropout: dropout rate on the noised row (0.5 in the authors' code).

    Raises:
        ConfigError: a size below 1, no hidden layer, or a dropout rate outside [0, 1).
    """

    def __init__(
        self,
        n_items: int,
        hidden_dims: Sequence[int] = (1000,),
        step_embedding_dim: int = 10,
        input_dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if not _is_int(n_items) or n_items < 1:
            raise ConfigError(f"the denoiser needs n_items >= 1 (got {n_items!r})")
        if not hidden_dims:
            raise ConfigError("the denoiser needs at least one hidden layer (denoiser_hidden_dims)")
        if not all(_is_int(w) and w >= 1 for w in hidden_dims):
            raise ConfigError(
                f"denoiser hidden widths must be integers >= 1 (got {list(hidden_dims)!r})"
            )
        if not _is_int(step_embedding_dim) or step_embedding_dim < 1:
            raise ConfigError(
                f"step_embedding_dim must be an integer >= 1 (got {step_embedding_dim!r})"
            )
        if not 0 <= input_dropout < 1:
            raise ConfigError(f"denoiser dropout must be in [0, 1) (got {input_dropout!r})")
        self.step_embedding_dim = step_embedding_dim
        self.input_dropout = input_dropout
        self.step_layer = nn.Linear(step_embedding_dim, step_embedding_dim)
        first = hidden_dims[0]
        std = math.sqrt(2.0 / (n_items + step_embedding_dim + first))
        self.input_weight = nn.Parameter(torch.empty(first, n_items).normal_(0.0, std))
        self.step_weight = nn.Parameter(torch.empty(first, step_embedding_dim).normal_(0.0, std))
        self.input_bias = nn.Parameter(torch.empty(first).normal_(0.0, 0.001))
        widths = [*hidden_dims, n_items]
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True)
        )
        for layer in [self.step_layer, *self.layers]:
            fan_out, fan_in = layer.weight.shape
            nn.init.normal_(layer.weight, 0.0, math.sqrt(2.0 / (fan_in + fan_out)))
            nn.init.normal_(layer.bias, 0.0, 0.001)

    def forward(self, x_t: Tensor, t: Tensor) -> Tensor:
        return _dense_product(self.layers[-1], self.hidden(self.project_input(x_t), t))

    def project_input(self, x_t: Tensor, input_weight_t: Tensor | None = None) -> Tensor:
        """The first layer's product with the row, ``x_t W_x^T`` (no bias, no embedding).

        Only the embedding part needs a gradient with respect to its input, so the
        full-size gradient with respect to ``x_t`` is never formed. A sparse CSR ``x_t``
        (a clean binary row at inference) uses a sparse product, with ``input_weight_t``
        (``W_x^T``, contiguous) when the caller has formed it already.
        """
        if x_t.layout == torch.sparse_csr:
            if self.training:
                raise ValueError("sparse input is for inference (eval mode) only")
            if input_weight_t is None:
                input_weight_t = self.input_weight.T.contiguous()
            return torch.sparse.mm(x_t, input_weight_t)
        rows = dropout(x_t, self.input_dropout, self.training)
        return _dense_product(lambda x: F.linear(x, self.input_weight), rows)

    def hidden(self, projected: Tensor, t: Tensor) -> Tensor:
        """The last hidden layer's output, given :meth:`project_input` of the row."""
        emb = timestep_embedding(t, self.step_embedding_dim).to(self.step_weight.dtype)
        h = torch.tanh(
            projected + F.linear(self.step_layer(emb), self.step_weight, self.input_bias)
        )
        for layer in self.layers[:-1]:
            h = torch.tanh(_dense_product(layer, h))
        return h

    @torch.no_grad()
    def sampling_weights(self) -> SamplingWeights:
        """The weight products that sampling uses for every batch (see :class:`SamplingWeights`)."""
        head = self.layers[-1]
        return SamplingWeights(
            input_weight_t=self.input_weight.T.contiguous(),
            output_to_input=(self.input_weight @ head.weight).T,
            output_to_input_bias=self.input_weight @ head.bias,
        )


@dataclass(frozen=True)
class SamplingWeights:
    """Products of a :class:`Denoiser`'s weights, formed once per sampling pass.

    ``input_weight_t`` is ``W_x^T`` laid out for the sparse product with clean rows;
    ``(output_to_input, output_to_input_bias) = (M, v)`` with
    ``project_input(head(h)) = h M + v``: the linear output layer composed with the first
    layer's row product (both linear, so they compose).
    """

    input_weight_t: Tensor
    output_to_input: Tensor
    output_to_input_bias: Tensor


class GaussianDiffusion(nn.Module):
    """Schedule, forward noising, ELBO loss and deterministic sampling (eq. 1-13).

    Args:
        steps: number of diffusion steps T (``steps``; default 5).
        noise_scale: s, scales the variance range (``noise_scale``; default 0.1).
        noise_min: γ_min (``noise_min``; default 1e-4).
        noise_max: γ_max (``noise_max``; default 0.02).
        first_beta: value that replaces β_1 (authors' code: 1e-4); ``None`` keeps eq. 3.

    Raises:
        ConfigError: an impossible schedule (see :func:`check_schedule`).
    """

    def __init__(
        self,
        steps: int = 5,
        noise_scale: float = 0.1,
        noise_min: float = 1e-4,
        noise_max: float = 0.02,
        first_beta: float | None = 1e-4,
    ) -> None:
        super().__init__()
        betas = linear_variance_betas(steps, noise_scale, noise_min, noise_max, first_beta)
        self.steps = steps
        alpha_bar = np.cumprod(1.0 - betas)
        alpha_bar_prev = np.concatenate([[1.0], alpha_bar[:-1]])
        snr = alpha_bar / (1.0 - alpha_bar)
        elbo_weight = np.concatenate([[1.0], snr[:-1] - snr[1:]])
        schedule = {
            "betas": betas,
            "alphas_cumprod": alpha_bar,
            "sqrt_alphas_cumprod": np.sqrt(alpha_bar),
            "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - alpha_bar),
            # posterior mean = coef_x0 · x̂0 + coef_xt · x_t (eq. 8, 10)
            "posterior_coef_x0": betas * np.sqrt(alpha_bar_prev) / (1.0 - alpha_bar),
            "posterior_coef_xt": (1.0 - alpha_bar_prev) * np.sqrt(1.0 - betas) / (1.0 - alpha_bar),
            "posterior_variance": betas * (1.0 - alpha_bar_prev) / (1.0 - alpha_bar),
            "elbo_weight": elbo_weight,
        }
        # float64 for exact golden values; cast to the data's dtype when used.
        for name, values in schedule.items():
            self.register_buffer(name, torch.from_numpy(values), persistent=False)

    @staticmethod
    def _at(coef: Tensor, t: Tensor, like: Tensor) -> Tensor:
        return coef[t].to(like.dtype)[:, None]

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor | None = None) -> Tensor:
        """Draw ``x_t ~ q(x_t | x0)`` (eq. 2)."""
        noise = torch.randn_like(x0) if noise is None else noise.clone()
        noise.mul_(self._at(self.sqrt_one_minus_alphas_cumprod, t, x0))  # in place: one buffer
        return noise.addcmul_(self._at(self.sqrt_alphas_cumprod, t, x0), x0)

    def posterior_mean(self, x0_hat: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """``μθ(x_t, t)``: the posterior mean with ``x̂0`` for ``x0`` (eq. 10)."""
        return (
            self._at(self.posterior_coef_x0, t, x_t) * x0_hat
            + self._at(self.posterior_coef_xt, t, x_t) * x_t
        )

    def training_loss(
        self,
        denoiser: nn.Module,
        x0: Tensor,
        weighting: Literal["snr", "none"] = "snr",
    ) -> tuple[Tensor, Tensor]:
        """Per-row ELBO loss (eq. 11-13) and the prediction ``x̂0``.

        ``t`` is drawn uniformly from ``{0..T-1}`` per row. Returns ``(loss, x0_hat)``
        with ``loss`` of shape ``(b,)``.
        """
        t = torch.randint(0, self.steps, (x0.shape[0],), device=x0.device)
        x0_hat = denoiser(self.q_sample(x0, t), t)
        mse = F.mse_loss(x0_hat, x0, reduction="none").mean(dim=1)
        if weighting == "snr":
            mse = self.elbo_weight[t].to(mse.dtype) * mse
        return mse, x0_hat

    @torch.no_grad()
    def sample(self, denoiser: nn.Module, x0: Tensor, noise_steps: int = 0) -> Tensor:
        """Noise ``x0`` for ``noise_steps`` steps, then denoise through all T steps.

        One batch; :meth:`sampler` serves many batches with the same denoiser.
        """
        return self.sampler(denoiser, noise_steps)(x0)

    def sampler(self, denoiser: nn.Module, noise_steps: int = 0) -> Callable[[Tensor], Tensor]:
        """A function of ``x0`` that noises it for ``noise_steps`` steps, then denoises it
        through all T steps; the denoiser's weight products are formed once, here, for
        every batch it is given (the denoiser must not change in between).

        Deterministic given the noise (no variance is added on the way back), as in the
        authors' code; with ``noise_steps = 0`` the result depends on ``x0`` only, and
        ``x0`` may be a sparse CSR batch (the first step then uses a sparse product).

        With a :class:`Denoiser` the steps run in its hidden space: a reverse step
        ``x_{t-1} = c_0 x̂0 + c_t x_t`` is affine and the denoiser's output layer is
        linear, so the next step's first-layer product ``x_{t-1} W_x^T`` equals
        ``c_0 (h M + v) + c_t (x_t W_x^T)`` (:class:`SamplingWeights`). Only the
        first step multiplies a full row and only the last computes one: the same
        result up to float rounding, for about a sixth of the work at the default sizes.
        """
        if not 0 <= noise_steps <= self.steps:
            raise ValueError(f"noise_steps must be in [0, {self.steps}]")
        weights = denoiser.sampling_weights() if isinstance(denoiser, Denoiser) else None

        @torch.no_grad()
        def sample_batch(x0: Tensor) -> Tensor:
            x_t = self._noised(x0, noise_steps)
            if weights is None:
                return self._sample_generic(denoiser, x_t)
            return self._sample_in_hidden_space(denoiser, weights, x_t)

        return sample_batch

    def _noised(self, x0: Tensor, noise_steps: int) -> Tensor:
        if noise_steps == 0:
            return x0
        x_dense = x0.to_dense() if x0.layout == torch.sparse_csr else x0
        return self.q_sample(x_dense, self._step(noise_steps - 1, x0))

    def _step(self, t: int, like: Tensor) -> Tensor:
        return torch.full((like.shape[0],), t, device=like.device, dtype=torch.long)

    def _sample_generic(self, denoiser: nn.Module, x_t: Tensor) -> Tensor:
        for step in reversed(range(self.steps)):
            t = self._step(step, x_t)
            x0_hat = denoiser(x_t, t)
            if x_t.layout == torch.sparse_csr:
                x_t = x_t.to_dense()
            x_t = self.posterior_mean(x0_hat, x_t, t)
        return x_t

    def _sample_in_hidden_space(
        self, denoiser: Denoiser, weights: SamplingWeights, x_t: Tensor
    ) -> Tensor:
        # The last reverse step (t = 0) has c_t = 0 (ᾱ_prev = 1): its result is c_0 x̂0.
        assert float(self.posterior_coef_xt[0]) == 0.0
        projected = denoiser.project_input(x_t, weights.input_weight_t)
        for step in reversed(range(1, self.steps)):
            t = self._step(step, x_t)
            h = denoiser.hidden(projected, t)
            c_x0 = self._at(self.posterior_coef_x0, t, projected)
            c_xt = self._at(self.posterior_coef_xt, t, projected)
            out = _dense_product(
                lambda x: torch.addmm(weights.output_to_input_bias, x, weights.output_to_input), h
            )
            projected = c_x0 * out + c_xt * projected
        t = self._step(0, x_t)
        x0_hat = _dense_product(denoiser.layers[-1], denoiser.hidden(projected, t))
        return self._at(self.posterior_coef_x0, t, x0_hat) * x0_hat
