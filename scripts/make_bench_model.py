#!/usr/bin/env python3
"""Make the benchmark model: an int8 full-integer MobileNetV2 (alpha 0.35, 224x224x3).

Writes ``bench/models/mobilenet_v2_035/`` (a model repository directory: ``config.toml``
for the classification task, ``1/model.tflite``, ``1/manifest.json``). Random weights
(seeded): the model exists to measure serving against raw invoke where invoke is not
negligible (about half a millisecond, not MNIST's 10 µs), not to classify anything. Its
int8 quantization is calibrated on seeded random images. Not served by default: point
``--model-repository`` (or ``bench/bench_serving.py --repository``) at ``bench/models``.

Needs TensorFlow (``pip install -e '.[train]'``); the served file needs only the runtime.
Usage: ``python scripts/make_bench_model.py [--output-dir bench/models]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import numpy as np  # noqa: E402

NAME = "mobilenet_v2_035"
SIZE = 224
CONFIG = """task = "classification"
max_batch_size = 32
description = "Benchmark only: MobileNetV2 alpha 0.35, 224x224x3, random weights, int8"

[input]
name = "image"
mean = [0.5, 0.5, 0.5]
std = [0.5, 0.5, 0.5]

[output]
kind = "logits"
"""


def build(seed: int) -> tuple[bytes, str]:
    """The int8 TFLite bytes (int8 input and logits, batch dimension resizable) and the
    TensorFlow version that converted them."""
    import tensorflow as tf

    tf.keras.utils.set_random_seed(seed)
    model = tf.keras.applications.MobileNetV2(
        input_shape=(SIZE, SIZE, 3), alpha=0.35, weights=None, classes=1000,
        classifier_activation=None)
    spec = tf.TensorSpec([None, SIZE, SIZE, 3], tf.float32, name="image")
    archive = tf.keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(name="serving_default",
                         fn=lambda image: {"logits": model(image, training=False)},
                         input_signature=[spec])
    rng = np.random.default_rng(seed)
    images = rng.uniform(-1, 1, (16, SIZE, SIZE, 3)).astype(np.float32)

    def representative():
        for i in range(len(images)):
            yield [images[i:i + 1]]

    with tempfile.TemporaryDirectory(prefix="edgeshard-bench-model-") as tmp:
        archive.write_out(tmp, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
        return converter.convert(), tf.__version__


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output-dir", type=Path, default=Path("bench/models"))
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    content, tf_version = build(args.seed)
    out = args.output_dir / NAME
    (out / "1").mkdir(parents=True, exist_ok=True)
    (out / "config.toml").write_text(CONFIG)
    (out / "1" / "model.tflite").write_bytes(content)
    (out / "1" / "manifest.json").write_text(json.dumps({
        "sha256": hashlib.sha256(content).hexdigest(), "size": len(content),
        "created_by": "scripts/make_bench_model.py", "framework": f"tensorflow {tf_version}",
        "weights": f"random (seed {args.seed}); int8 calibrated on random images",
    }, indent=2) + "\n")
    print(f"wrote {out}: {len(content) / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
