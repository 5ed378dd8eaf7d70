"""Typed configuration: defaults, presets, files, overrides and their errors."""

from __future__ import annotations

import pytest

from diffmm.config import presets_of, resolve_config
from diffmm.errors import ConfigError


def test_defaults_follow_the_authors_code():
    cfg = resolve_config("diffmm")
    p = cfg.params
    assert (p.embedding_dim, p.n_layers, p.diffusion_steps, p.rebuild_k) == (64, 1, 5, 1)
    assert (p.noise_scale, p.noise_min, p.noise_max, p.sampling_steps) == (0.1, 1e-4, 0.02, 0)
    assert p.denoiser_hidden_dims == [1000] and p.step_embedding_dim == 10
    assert cfg.train.seed == 421 and cfg.train.metric == "recall@20"


def test_preset_then_file_then_override(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text(
        'model = "diffmm"\npreset = "tiktok"\n[train]\nepochs = 7\n[diffmm]\ntemperature = 0.2\n'
    )
    cfg = resolve_config(config_file=path, overrides=["temperature=0.3", "train.lr=0.01"])
    assert cfg.model == "diffmm" and cfg.preset == "tiktok"
    assert cfg.train.epochs == 7 and cfg.train.lr == 0.01
    assert cfg.params.temperature == 0.3  # override beats file
    assert cfg.params.keep_rate == presets_of("diffmm")["tiktok"]["diffmm"]["keep_rate"]
    assert cfg.params.cl_anchor == "main" and cfg.params.trans == "linear"


def test_presets_live_with_their_model():
    from diffmm.models.diffmm import DiffMM

    assert presets_of("diffmm") == DiffMM.Config.presets
    assert set(presets_of("diffmm")) == {"tiktok", "baby", "sports", "large"}
    assert presets_of("mf") == {}
    with pytest.raises(
        ConfigError, match="unknown preset 'tiktok' for model 'mf'; available: none"
    ):
        resolve_config("mf", "tiktok")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"model": "nope"}, "unknown model 'nope'"),
        ({"model": "diffmm", "preset": "nope"}, "unknown preset 'nope'"),
        ({"model": "diffmm", "overrides": ["cl_wieght=1"]}, "Did you mean 'cl_weight'"),
        ({"model": "diffmm", "overrides": ["train.epochs=-1"]}, "train.epochs"),
        ({"model": "diffmm", "overrides": ["train.epochs=many"]}, "train.epochs"),
        ({"model": "diffmm", "overrides": ["keep_rate=2"]}, "keep_rate"),
        ({"model": "diffmm", "overrides": ["trans=cubic"]}, "trans"),
        ({"model": "mf", "overrides": ["epochs"]}, "key=value"),
        ({"model": "mf", "overrides": ["model.x=1"]}, "unknown section"),
        ({"model": "mf", "overrides": ["train.metric=auc@5"]}, "recall@20"),
    ],
)
def test_bad_settings_give_clear_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        resolve_config(**kwargs)


def test_bad_config_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_config(config_file=tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("model = [")
    with pytest.raises(ConfigError, match="not valid TOML"):
        resolve_config(config_file=bad)
    extra = tmp_path / "extra.toml"
    extra.write_text('model = "mf"\n[optimizer]\nlr = 1\n')
    with pytest.raises(ConfigError, match="unknown top-level keys"):
        resolve_config(config_file=extra)


def test_run_config_round_trips_through_its_dict():
    cfg = resolve_config("lightgcn", overrides=["n_layers=3"])
    raw = cfg.to_dict()
    assert raw["lightgcn"]["n_layers"] == 3 and raw["train"]["epochs"] == cfg.train.epochs
