"""Model registry: name -> Recommender class (imported lazily)."""

from __future__ import annotations

import importlib

from diffmm.models.base import Batch, ModelConfig, Recommender

_REGISTRY = {
    "mf": "diffmm.models.mf:MF",
    "lightgcn": "diffmm.models.lightgcn:LightGCN",
    "diffmm": "diffmm.models.diffmm:DiffMM",
    "vbpr": "diffmm.models.vbpr:VBPR",
    "lightgcn_m": "diffmm.models.lightgcn_m:LightGCNM",
    "bm3": "diffmm.models.bm3:BM3",
    "lattice": "diffmm.models.lattice:LATTICE",
    "freedom": "diffmm.models.freedom:FREEDOM",
}


def model_names() -> list[str]:
    """Names accepted by ``--model``."""
    return list(_REGISTRY)


def get_model_class(name: str) -> type[Recommender]:
    """The Recommender class registered under ``name``."""
    module, _, attr = _REGISTRY[name].partition(":")
    return getattr(importlib.import_module(module), attr)


__all__ = ["Batch", "ModelConfig", "Recommender", "get_model_class", "model_names"]
