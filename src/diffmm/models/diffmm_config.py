"""Hyper-parameters of DiffMM (:class:`DiffMMConfig`), the ranges they must lie in, presets.

Kept apart from :mod:`diffmm.models.diffmm` (which re-exports it) so that the settings,
their bounds, the relations between them, the authors' names of them and the authors'
per-dataset settings read in one place.

The authors' flag names are aliases of the fields (``validation_alias``), accepted by
``--set``, TOML files and sweep grids; the resolved config is written with the fields'
names. ``trans`` and ``cl_method`` also take the authors' numeric codes (1/0, 0/1).
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from diffmm.models.base import MAX_COUNT, MAX_LAYERS, MAX_WIDTH, ModelConfig, authors

#: Largest accepted number of diffusion steps T (the authors use 5; DDPM uses 1000).
MAX_DIFFUSION_STEPS = 1000


#: The authors' numeric codes of the settings that are names here.
AUTHORS_CODES: dict[str, dict[int, str]] = {
    "trans": {1: "linear", 0: "parametric"},
    "cl_anchor": {0: "modality", 1: "main"},
}

#: Per-dataset settings of the authors' README (spec §5), by preset name.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "tiktok": {
        "train": {"epochs": 50, "batch_size": 1024},
        "diffmm": {
            "l2_weight": 1e-4,
            "cl_weight": 1e-2,
            "trans": "linear",
            "msi_weight": 0.1,
            "cl_anchor": "main",
            "keep_rate": 0.5,
            "temperature": 0.5,
            "residual_weight": 0.5,
        },
    },
    "baby": {
        "train": {"epochs": 50, "batch_size": 1024},
        "diffmm": {
            "l2_weight": 1e-5,
            "cl_weight": 1e-1,
            "keep_rate": 1.0,
            "msi_weight": 0.01,
            "trans": "parametric",
        },
    },
    "sports": {
        "train": {"epochs": 50, "batch_size": 1024},
        "diffmm": {
            "l2_weight": 1e-6,
            "cl_weight": 1e-2,
            "temperature": 0.1,
            "residual_weight": 0.1,
            "msi_weight": 0.5,
            "keep_rate": 1.0,
            "trans": "linear",
        },
    },
    # Not a dataset's: the options that bound an epoch's cost on 10^5-10^6 users (README
    # "Large data"; benchmarks/scale.py's "linear" set), on top of the paper's defaults.
    "large": {
        "train": {
            "max_batches_per_epoch": 64,
            "validation_users": 16384,
            "reuse_freed_memory_mb": 32,
        },
        "diffmm": {
            "contrastive_negatives": "sampled",
            "diffusion_space": "latent",
            "diffusion_users_per_epoch": 16384,
            "graph_users_per_epoch": 16384,
        },
    },
}


class DiffMMConfig(ModelConfig):
    """Hyper-parameters of DiffMM; the authors' flag name is given in brackets."""

    model_config = ConfigDict(populate_by_name=True)
    #: Named settings (``--preset``), in the TOML layout.
    presets: ClassVar[dict[str, dict[str, dict[str, Any]]]] = PRESETS

    embedding_dim: int = Field(
        64,
        ge=1,
        le=MAX_WIDTH,
        validation_alias=authors("embedding_dim", "latdim"),
        description="Size of ID embeddings [latdim].",
    )
    n_layers: int = Field(
        1,
        ge=0,
        le=MAX_LAYERS,
        validation_alias=authors("n_layers", "gnn_layer"),
        description="Propagation layers L of eq. 22 [gnn_layer].",
    )
    l2_weight: float = Field(
        1e-5,
        ge=0,
        validation_alias=authors("l2_weight", "reg"),
        description="λ2, L2 on E_U and E_I [reg].",
    )
    cl_weight: float = Field(
        1e-2,
        ge=0,
        validation_alias=authors("cl_weight", "ssl_reg"),
        description="λ1, contrastive loss weight [ssl_reg].",
    )
    temperature: float = Field(
        0.5,
        ge=1e-6,
        validation_alias=authors("temperature", "temp"),
        description="τ of InfoNCE, eq. 18-19, at least 1e-6 (smaller overflows the logits) [temp].",
    )
    cl_anchor: Literal["modality", "main"] = Field(
        "modality",
        validation_alias=authors("cl_anchor", "cl_method"),
        description="InfoNCE pairs: every pair of modality views (eq. 18) or the main view "
        "against each modality view (eq. 19) [cl_method 0/1].",
    )
    contrastive_negatives: Literal["all", "batch", "sampled"] = Field(
        "all",
        description="Negatives of each InfoNCE anchor (eq. 18-19): every user or item of the "
        "other view, as in the authors' code (cost per step grows with users + items); the "
        "batch's other anchors, as SGL does (grows with the batch squared); or "
        "sampled_negatives nodes drawn uniformly per step and shared by the batch (grows "
        "with batch x sampled_negatives).",
    )
    sampled_negatives: int = Field(
        1024,
        ge=1,
        le=MAX_COUNT,
        description="Users (for user anchors) and items (for item anchors) drawn per step "
        "when contrastive_negatives = sampled.",
    )
    trans: Literal["linear", "parametric"] = Field(
        "parametric",
        description="Trans of eq. 15: a Linear layer, or F_m W_m + LeakyReLU [trans 1/0].",
    )
    residual_weight: float = Field(
        0.5,
        ge=0,
        validation_alias=authors("residual_weight", "ris_lambda"),
        description="ω of eq. 23 [ris_lambda].",
    )
    generated_graph_weight: float = Field(
        0.2,
        ge=0,
        validation_alias=authors("generated_graph_weight", "ris_adj_lambda"),
        description="ρ, weight of A^m [E_U; E_I] in Z_m [ris_adj_lambda].",
    )
    msi_weight: float = Field(
        0.1,
        ge=0,
        validation_alias=authors("msi_weight", "e_loss"),
        description="λ0, MSI loss weight, eq. 14 [e_loss].",
    )
    keep_rate: float = Field(
        0.5,
        gt=0,
        le=1,
        validation_alias=authors("keep_rate", "keepRate"),
        description="Edge keep rate of the generated graphs [keepRate].",
    )
    rebuild_k: int = Field(
        1,
        ge=1,
        le=MAX_COUNT,
        description="Top-k items per user in A^m, at most n_items [rebuild_k].",
    )
    diffusion_steps: int = Field(
        5,
        ge=1,
        le=MAX_DIFFUSION_STEPS,
        validation_alias=authors("diffusion_steps", "steps"),
        description="T, diffusion steps [steps].",
    )
    noise_scale: float = Field(
        0.1, gt=0, le=1, description="s of the schedule, in (0, 1] [noise_scale]."
    )
    noise_min: float = Field(
        1e-4, gt=0, lt=1, description="γ_min of the schedule, below noise_max [noise_min]."
    )
    noise_max: float = Field(
        0.02, gt=0, lt=1, description="γ_max of the schedule, below 1 [noise_max]."
    )
    sampling_steps: int = Field(
        0,
        ge=0,
        le=MAX_DIFFUSION_STEPS,
        description="T', noising steps before denoising at inference, at most diffusion_steps "
        "[sampling_steps].",
    )
    denoiser_hidden_dims: list[Annotated[int, Field(ge=1, le=MAX_WIDTH)]] = Field(
        default_factory=lambda: [1000],
        min_length=1,
        max_length=MAX_LAYERS,
        validation_alias=authors("denoiser_hidden_dims", "dims"),
        description="Hidden widths of the denoiser [dims].",
    )
    step_embedding_dim: int = Field(
        10,
        ge=1,
        le=MAX_WIDTH,
        validation_alias=authors("step_embedding_dim", "d_emb_size"),
        description="Step embedding size [d_emb_size].",
    )
    denoiser_dropout: float = Field(0.5, ge=0, lt=1, description="Dropout on x_t in training.")
    diffusion_lr: float = Field(1e-3, gt=0, description="Adam lr of each denoiser [lr].")
    diffusion_batch_size: int = Field(
        1024, ge=1, le=MAX_COUNT, description="Users per diffusion step [batch]."
    )
    diffusion_users_per_epoch: int | None = Field(
        None,
        ge=1,
        le=MAX_COUNT,
        description="Users the denoisers train on per epoch, drawn afresh each epoch (None: "
        "every user, as in the paper). On large data this bounds the diffusion pass, whose "
        "cost per user grows with the items; graphs are still generated for every user.",
    )
    graph_users_per_epoch: int | None = Field(
        None,
        ge=1,
        le=MAX_COUNT,
        description="Users whose generated top-k rows are regenerated per epoch, in turn "
        "(diffmm.rolling_graphs); the others keep their last rows, and a user not yet "
        "generated keeps its training edges. None: every user every epoch, as in the paper. "
        "Generation costs users x items per epoch; this bounds it by this many x items.",
    )
    graph_average_epochs: int = Field(
        1,
        ge=1,
        le=MAX_COUNT,
        description="A^m is the mean of the last this many epochs' generated graphs "
        "(diffmm.graph_average), damping their change from epoch to epoch; 1: the "
        "epoch's own graph, as in the paper. Not in the paper.",
    )
    diffusion_chunk_size: int = Field(
        256,
        ge=1,
        le=MAX_COUNT,
        description="Users per forward/backward chunk within a diffusion step: bounds the "
        "memory of the activations; the step's gradient is the whole batch's (not in the paper).",
    )
    elbo_weighting: Literal["snr", "none"] = Field(
        "snr", description="ELBO weight SNR(t-1) - SNR(t) (authors' code) or none (eq. 13)."
    )
    diffusion_graph_ratio: float = Field(
        1.0,
        ge=0,
        le=1,
        description="Share of the diffusion-generated graph in A^m; the rest is a randomly "
        "edge-dropped training graph (paper Fig. 4). 0 is the 'w/o DM' ablation.",
    )
    random_graph_keep_rate: float = Field(
        0.5, gt=0, le=1, description="Edge keep rate of that random graph (used when ratio < 1)."
    )
    scoring_graph: Literal["dropped", "whole"] = Field(
        "dropped",
        description="Generated graphs A^m used to score users (evaluation, recommendation): "
        "the epoch's edge-dropped graphs, as in the authors' code, or the graphs before edge "
        "dropout (dropout's usual rule at inference: kept entries are scaled by 1/keep_rate "
        "in training, so the whole graph is their expectation). Not in the paper.",
    )
    diffusion_space: Literal["items", "latent"] = Field(
        "items",
        description="Where the denoisers work: on users' whole interaction rows (the paper; "
        "about 2 x n_items x hidden weights per modality), or, as L-DiffRec (Wang et al., "
        "SIGIR 2023, §3.4), on latent_dim-wide codes of the rows from per-cluster item "
        "autoencoders (diffmm.item_compression), for large catalogues.",
    )
    latent_clusters: int = Field(
        2,
        ge=1,
        le=MAX_WIDTH,
        description="Item clusters C of diffusion_space = latent, one encoder/decoder each, "
        "at most n_items and latent_dim (L-DiffRec's default 2) [n_cate].",
    )
    latent_dim: int = Field(
        300,
        ge=1,
        le=MAX_WIDTH,
        description="Total latent width of diffusion_space = latent, split over the clusters "
        "in proportion to their sizes (L-DiffRec's default 300) [in_dims].",
    )
    latent_recon_weight: float = Field(
        0.03,
        ge=0,
        description="Weight of the autoencoders' multinomial reconstruction loss beside the "
        "latent ELBO, with diffusion_space = latent (L-DiffRec's default 0.03) [lamda].",
    )

    @field_validator("trans", "cl_anchor", mode="before")
    @classmethod
    def _authors_codes(cls, value: Any, info: ValidationInfo) -> Any:
        codes = AUTHORS_CODES[info.field_name]
        if type(value) is int and value in codes:  # not a bool: True is no code
            return codes[value]
        return value

    @model_validator(mode="after")
    def _schedule_can_work(self) -> DiffMMConfig:
        if not self.noise_min < self.noise_max:
            raise ValueError(
                f"noise_min ({self.noise_min!r}) must be less than noise_max "
                f"({self.noise_max!r}): the noise must grow with the diffusion step"
            )
        if self.sampling_steps > self.diffusion_steps:
            raise ValueError(
                f"sampling_steps ({self.sampling_steps}) must be at most diffusion_steps "
                f"({self.diffusion_steps}): inference cannot noise for more steps than exist"
            )
        if self.diffusion_space == "latent" and self.latent_dim < self.latent_clusters:
            raise ValueError(
                f"latent_dim ({self.latent_dim}) must be at least latent_clusters "
                f"({self.latent_clusters}): every cluster needs a latent width of 1 or more"
            )
        return self
