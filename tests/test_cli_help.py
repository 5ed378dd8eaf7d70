"""What the command line shows: `diffmm models` with each paper, help texts, the per-epoch
loss format and the plots' axes."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

from diffmm.cli import main
from diffmm.epoch_log import epoch_line, loss_text
from diffmm.models import get_model_class, model_names


def invoke(*args: str):
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_models_lists_every_model_with_its_papers_authors_venue_and_year():
    lines = invoke("models").splitlines()
    out = "\n".join(lines)
    for name in model_names():
        paper = get_model_class(name).paper
        # authors, venue, year: "He et al., SIGIR 2020", "Zhou and Shen, ACM MM 2023"
        assert re.match(r"[A-Z][\w-]+ (et al\.|and [A-Z][\w-]+), [A-Za-z ]+ (19|20)\d\d", paper)
        at = next(i for i, line in enumerate(lines) if line.split()[0] == name)
        assert lines[at + 1].strip() == paper, out
    assert "Jiang et al., ACM MM 2024" in out
    assert "He et al., SIGIR 2020" in out


@pytest.mark.parametrize(
    ("command", "option", "expected"),
    [
        (["train"], "--model", "required unless --resume"),
        (["sweep"], "--features", "keyed by item id"),
        (["demo"], "--out", "runs/demo-<time>"),
    ],
)
def test_options_have_help_text(command, option, expected):
    out = invoke(*command, "--help")
    start = out.index(f"  {option} ")
    text = " ".join(out[start:].split("\n  -", 1)[0].split())
    assert expected in text, text


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.6931472, "0.6931"),
        (12.3456, "12.35"),
        (3.2e-06, "3.2e-06"),
        (0.000123456, "0.0001235"),
    ],
)
def test_loss_text_keeps_significant_digits(value, text):
    assert loss_text(value) == text


def test_epoch_line_shows_a_tiny_loss_with_significant_digits():
    record = {
        "epoch": 3,
        "losses": {"bpr": 0.6931, "l2": 2.5e-06},
        "seconds": 1.0,
        "seconds_begin_epoch": 0.1,
        "seconds_train": 0.8,
        "seconds_eval": 0.1,
    }
    line = epoch_line(record, "recall@20")
    assert "l2 2.5e-06" in line and "0.0000" not in line


def test_line_plot_over_epochs_has_whole_number_ticks(tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    from diffmm import plots

    captured = {}
    original = plots._save

    def keep(fig, path):
        ax = fig.axes[0]
        ax.figure.canvas.draw()
        captured["x"] = list(ax.get_xticks())
        return original(fig, path)

    plots._save = keep
    try:
        plots.line_plot(
            {"a": ([1, 2, 3], [0.1, 0.2, 0.3]), "b": ([1, 2], [0.2, 0.25])},
            tmp_path / "curve.png",
            title="t",
            xlabel="epoch",
            ylabel="recall@20",
        )
        assert (tmp_path / "curve.png").stat().st_size > 0
        assert captured["x"] and all(float(t).is_integer() for t in captured["x"]), captured
        # fractional x values (e.g. a swept weight) keep matplotlib's usual ticks
        plots.line_plot(
            {"v": ([0.01, 0.1, 0.5], [0.1, 0.2, 0.3])},
            tmp_path / "sweep.png",
            title="t",
            xlabel="ssl_reg",
            ylabel="recall@20",
        )
        assert not all(float(t).is_integer() for t in captured["x"]), captured
    finally:
        plots._save = original
    plt.close("all")
