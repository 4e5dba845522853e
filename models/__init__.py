"""The shipped model repository and MNIST data splits (installed as ``edgeshard_models``).

Provenance of the data: data/PROVENANCE.md; the models and their accuracy: model card
(docs/MODEL_CARD.md, and repository/model_card.json for programs).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
EDGE_MODEL = "mnist_edge"
CLOUD_MODEL = "mnist_cloud"


def repository_path() -> Path:
    """Directory of the shipped model repository (``<model>/<version>/model.tflite``)."""
    return ROOT / "repository"


def model_card() -> dict:
    """Measured hold-out figures of the shipped models."""
    return json.loads((repository_path() / "model_card.json").read_text())


def _split(name: str) -> tuple[np.ndarray, np.ndarray]:
    with np.load(ROOT / "data" / "mnist_splits.npz") as data:
        return data[f"{name}_images"], data[f"{name}_labels"]


def load_holdout() -> tuple[np.ndarray, np.ndarray]:
    """The hold-out split: uint8 images [N,28,28] and int64 labels [N]; never trained on."""
    return _split("holdout")


def load_calibration() -> tuple[np.ndarray, np.ndarray]:
    """The calibration split (temperature and thresholds are fitted on it)."""
    return _split("calibration")
