#!/usr/bin/env python3
"""Evaluate the shipped edgeshard .tflite models on the committed MNIST splits.

Needs only numpy and a TFLite interpreter: ``ai_edge_litert`` (the product runtime) is
preferred; ``tf.lite.Interpreter`` is used only when ai_edge_litert is not installed.

The preprocessing is the serving contract implemented by the edge node's core:

* normalise: ``f = (float32(x) / float32(255) - float32(mean)) / float32(std)``, NHWC
  ``[N, 28, 28, 1]``, mean/std read from the model's ``config.toml``;
* int8 inputs: ``q = clip(rint(f / float32(scale)) + zero_point, -128, 127)`` with the
  interpreter's input quantization parameters (``rint`` rounds half to even);
* int8 outputs are dequantized as ``(float32(q) - float32(zp)) * float32(scale)``;
* the models output logits; the label is ``argmax`` (first index on ties).

Usage (from the repository root)::

    .venv/bin/python scripts/evaluate_models.py            # prints JSON
    .venv/bin/python scripts/evaluate_models.py --models-dir models --batch-size 64
"""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from pathlib import Path

import numpy as np

DEFAULT_BATCH_SIZE = 64
SPLITS = ("holdout", "calibration")


def interpreter_class():
    """Return the TFLite Interpreter class (ai_edge_litert, else tf.lite)."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # training venv without ai_edge_litert
        import tensorflow as tf

        return tf.lite.Interpreter, f"tensorflow {tf.__version__} tf.lite.Interpreter"
    from importlib.metadata import version

    return Interpreter, f"ai-edge-litert {version('ai-edge-litert')}"


def normalize(images: np.ndarray, mean: float, std: float) -> np.ndarray:
    """uint8 ``[N, 28, 28]`` (or ``[N, 28, 28, 1]``) -> float32 ``[N, 28, 28, 1]``."""
    x = np.asarray(images)
    if x.ndim == 3:
        x = x[..., np.newaxis]
    f = (x.astype(np.float32) / np.float32(255.0) - np.float32(mean)) / np.float32(std)
    return f.astype(np.float32, copy=False)


def quantize(f: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """float32 -> int8 with round-half-to-even, as the serving core does."""
    q = np.rint(f / np.float32(scale)) + np.float32(zero_point)
    return np.clip(q, -128, 127).astype(np.int8)


def dequantize(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    return (q.astype(np.float32) - np.float32(zero_point)) * np.float32(scale)


def predict_logits(
    model_path: str | Path,
    f: np.ndarray,
    batch_size: int = DEFAULT_BATCH_SIZE,
    num_threads: int | None = None,
) -> np.ndarray:
    """Run a .tflite model on normalised float32 inputs; return float32 logits [N, C]."""
    interp_cls, _ = interpreter_class()
    interp = interp_cls(model_path=str(model_path), num_threads=num_threads)
    inp = interp.get_input_details()[0]
    out_idx = interp.get_output_details()[0]["index"]
    current_n = None
    chunks = []
    for start in range(0, len(f), batch_size):
        batch = f[start : start + batch_size]
        n = len(batch)
        if n != current_n:
            interp.resize_tensor_input(inp["index"], [n, *batch.shape[1:]])
            interp.allocate_tensors()
            current_n = n
            inp = interp.get_input_details()[0]
            out = interp.get_output_details()[0]
        if inp["dtype"] == np.int8:
            scale, zp = inp["quantization"]
            interp.set_tensor(inp["index"], quantize(batch, scale, zp))
        else:
            interp.set_tensor(inp["index"], batch.astype(np.float32, copy=False))
        interp.invoke()
        y = interp.get_tensor(out_idx)
        if out["dtype"] == np.int8:
            scale, zp = out["quantization"]
            y = dequantize(y, scale, zp)
        chunks.append(np.array(y, dtype=np.float32, copy=True))
    return np.concatenate(chunks, axis=0)


def load_config(model_dir: Path) -> dict:
    with open(model_dir / "config.toml", "rb") as fh:
        return tomllib.load(fh)


def load_splits(models_dir: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    with np.load(models_dir / "data" / "mnist_splits.npz") as data:
        return {s: (data[f"{s}_images"], data[f"{s}_labels"]) for s in SPLITS}


def score(logits: np.ndarray, labels: np.ndarray) -> dict:
    pred = np.argmax(logits, axis=1)
    correct = int(np.sum(pred == labels))
    total = int(len(labels))
    return {"correct": correct, "total": total, "accuracy": correct / total}


def evaluate_model(
    model_dir: Path,
    splits: dict[str, tuple[np.ndarray, np.ndarray]],
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> dict:
    cfg = load_config(model_dir)
    mean = cfg["input"]["mean"][0]
    std = cfg["input"]["std"][0]
    model_path = model_dir / "1" / "model.tflite"
    result = {}
    for split, (images, labels) in splits.items():
        logits = predict_logits(model_path, normalize(images, mean, std), batch_size)
        result[split] = score(logits, labels)
    return result


def evaluate_repository(models_dir: str | Path, batch_size: int = DEFAULT_BATCH_SIZE) -> dict:
    models_dir = Path(models_dir)
    splits = load_splits(models_dir)
    repo = models_dir / "repository"
    results = {"runtime": interpreter_class()[1], "batch_size": batch_size}
    for model_dir in sorted(p for p in repo.iterdir() if (p / "config.toml").is_file()):
        results[model_dir.name] = evaluate_model(model_dir, splits, batch_size)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--models-dir",
        default=str(Path(__file__).resolve().parent.parent / "models"),
        help="directory holding data/mnist_splits.npz and repository/ (default: models/)",
    )
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    args = parser.parse_args(argv)
    json.dump(evaluate_repository(args.models_dir, args.batch_size), sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
