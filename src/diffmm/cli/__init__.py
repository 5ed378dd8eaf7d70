"""The ``diffmm`` command: the group here, its commands in the modules of this package.

* ``common``: what the commands share (the data options, parameter types, user errors);
* ``train``: ``train`` (and ``train --resume``);
* ``experiments``: ``benchmark``, ``sweep``, ``report``, ``explain``;
* ``data``: ``data stats``, ``features``;
* ``inference``: ``recommend``, ``evaluate``, ``export``, ``serve``, ``demo``, ``models``,
  ``config``.

Errors caused by the user's input (:class:`diffmm.errors.DiffMMError`) are printed as
one message and exit with status 2, never as a traceback. Commands import torch only
when they run: ``diffmm --help`` stays fast.
"""

from __future__ import annotations

import click

from diffmm.cli import data, experiments, inference, train


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="diffmm")
def main() -> None:
    """Multi-modal recommendation with DiffMM (Jiang et al., ACM MM 2024).

    \b
    Quick start:
      diffmm demo                                   # DiffMM vs LightGCN on synthetic data
      diffmm data stats ../shared/data/tiktok       # what is in a dataset
      diffmm train --model lightgcn --data ../shared/data/baby
      diffmm train --model diffmm --data ../shared/data/tiktok --preset tiktok
      diffmm config --model diffmm --preset tiktok  # every setting, its default and meaning
    """


for _command in (
    train.train,
    experiments.benchmark,
    experiments.sweep,
    experiments.report,
    experiments.explain,
    data.data,
    data.features,
    inference.recommend,
    inference.evaluate,
    inference.export,
    inference.serve,
    inference.demo,
    inference.list_models,
    inference.show_config,
):
    main.add_command(_command)

__all__ = ["main"]
