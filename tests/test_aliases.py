"""The DiffMM authors' flag names: accepted by --set, TOML, sweep grids and benchmarks."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from diffmm.cli import main
from diffmm.config import TrainConfig, aliases_of, resolve_config
from diffmm.errors import ConfigError
from diffmm.experiments import BenchmarkSpec, parse_grid, run_sweep
from diffmm.models.diffmm_config import DiffMMConfig

README = Path(__file__).resolve().parents[1] / "README.md"
DATA = "synthetic:n_users=60,n_items=50,interactions_per_user=8"
SMALL = ["train.epochs=1", "train.progress=false", "denoiser_hidden_dims=[16]"]


@pytest.mark.parametrize("key", ["ssl_reg", "diffmm.ssl_reg"])
def test_set_accepts_the_authors_name_with_or_without_the_section(key):
    cfg = resolve_config("diffmm", overrides=[f"{key}=0.3"])
    assert cfg.params.cl_weight == 0.3
    assert cfg.to_dict()["diffmm"]["cl_weight"] == 0.3 and "ssl_reg" not in cfg.to_dict()["diffmm"]


def test_train_settings_have_the_authors_names_too():
    cfg = resolve_config("diffmm", overrides=["epoch=3", "batch=64", "train.epoch=4"])
    assert (cfg.train.epochs, cfg.train.batch_size) == (4, 64)
    assert "epoch" not in cfg.to_dict()["train"]


def test_toml_accepts_the_authors_names_and_they_override_the_preset(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text(
        'model = "diffmm"\npreset = "tiktok"\n[train]\nepoch = 7\n'
        "[diffmm]\nssl_reg = 0.5\ntemp = 0.25\ngnn_layer = 2\n"
    )
    cfg = resolve_config(config_file=path, overrides=["cl_weight=0.4"])
    assert cfg.train.epochs == 7  # the preset's 50 is overridden
    assert (cfg.params.cl_weight, cfg.params.temperature, cfg.params.n_layers) == (0.4, 0.25, 2)
    both = tmp_path / "both.toml"
    both.write_text('model = "diffmm"\n[diffmm]\nssl_reg = 0.5\ncl_weight = 0.1\n')
    with pytest.raises(ConfigError, match="'ssl_reg' and 'cl_weight' are the same setting"):
        resolve_config(config_file=both)


@pytest.mark.parametrize(
    "assignment, field, value",
    [
        ("trans=1", "trans", "linear"),
        ("trans=0", "trans", "parametric"),
        ("trans=linear", "trans", "linear"),
        ("cl_method=0", "cl_anchor", "modality"),
        ("cl_method=1", "cl_anchor", "main"),
        ("cl_method=main", "cl_anchor", "main"),
    ],
)
def test_the_authors_numeric_codes_map_to_names(assignment, field, value):
    cfg = resolve_config("diffmm", overrides=[assignment])
    assert getattr(cfg.params, field) == value
    assert cfg.to_dict()["diffmm"][field] == value


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["ssl_rge=0.1"], "Did you mean 'ssl_reg'"),
        (["diffmm.gnn_layers=2"], "Did you mean 'gnn_layer'"),
        (["trans=2"], "diffmm.trans"),
        (["trans=true"], "diffmm.trans"),
        (["ssl_reg=-1"], r"diffmm.cl_weight: .*allowed: a finite number >= 0"),
    ],
)
def test_bad_authors_settings_give_clear_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        resolve_config("diffmm", overrides=overrides)


def test_aliases_validate_when_the_config_is_built_directly():
    params = DiffMMConfig(ssl_reg=0.2, keepRate=0.7, trans=1)
    assert (params.cl_weight, params.keep_rate, params.trans) == (0.2, 0.7, "linear")
    assert "ssl_reg" not in params.model_dump() and params.model_dump()["cl_weight"] == 0.2


def test_benchmark_scopes_an_authors_name_to_the_models_that_have_it():
    spec = BenchmarkSpec(DATA, ["lightgcn", "diffmm"], [421], sets=["ssl_reg=0.1", "epoch=2"])
    assert spec.model_sets("lightgcn") == ["epoch=2"]
    assert spec.model_sets("diffmm") == ["ssl_reg=0.1", "epoch=2"]
    spec.validate()


def test_train_cli_accepts_an_authors_name(tmp_path):
    out = tmp_path / "run"
    args = ["train", "--model", "diffmm", "--data", DATA, "--out", str(out), "--set", "ssl_reg=0.1"]
    result = CliRunner().invoke(main, [*args, *(x for s in SMALL for x in ("--set", s))])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "config.json").read_text())["diffmm"]["cl_weight"] == 0.1


@pytest.mark.slow
def test_sweep_grid_accepts_an_authors_name_and_labels_points_as_typed(tmp_path):
    spec = BenchmarkSpec(DATA, ["diffmm"], [421], sets=SMALL)
    table = run_sweep(spec, parse_grid(["ssl_reg=0.1"]), tmp_path)
    assert table["ssl_reg"].tolist() == ["0.1"]
    config = json.loads((tmp_path / "runs/ssl_reg=0.1-seed421/config.json").read_text())
    assert config["diffmm"]["cl_weight"] == 0.1


def _readme_table() -> list[tuple[str, str, str, str]]:
    """Rows (flag, setting, flag values, setting values) of the README's flag table."""
    text = README.read_text()
    start = text.index("| authors' flag | diffmm setting |")
    rows = []
    for line in text[start:].splitlines()[2:]:  # after the header and |---| lines
        if not line.startswith("|"):
            break
        flags_cell, settings_cell = line.strip("|").split("|")[:2]
        values = [re.findall(r"\((.*?)\)", c) for c in (flags_cell, settings_cell)]
        flags = re.findall(r"`([^`]+)`", re.sub(r"\(.*?\)", "", flags_cell))
        settings = re.findall(r"`([^`]+)`", re.sub(r"\(.*?\)", "", settings_cell))
        if settings_cell.strip() == "same names":
            settings = flags
        assert len(flags) == len(settings), line
        for flag, setting in zip(flags, settings, strict=True):
            rows.append((flag, setting, *(v[0] if v else "" for v in values)))
    return rows


def test_readme_table_equals_the_aliases_of_the_config_classes():
    rows = _readme_table()
    in_readme = {flag: setting for flag, setting, *_ in rows if flag != setting.split(".")[-1]}
    in_config = {a: f for a, f in aliases_of(DiffMMConfig).items()}
    in_config |= {a: f"train.{f}" for a, f in aliases_of(TrainConfig).items()}
    assert in_readme == in_config
    for flag, setting, flag_values, setting_values in rows:
        section, _, name = setting.rpartition(".")
        cls = TrainConfig if section == "train" else DiffMMConfig
        assert name in cls.model_fields, setting
        if flag_values:  # e.g. trans (1 / 0) -> (`linear` / `parametric`)
            codes = [int(c) for c in flag_values.split("/")]
            names = [n.strip(" `") for n in setting_values.split("/")]
            for code, expected in zip(codes, names, strict=True):
                cfg = resolve_config("diffmm", overrides=[f"{flag}={code}"])
                assert getattr(cfg.params, name) == expected
