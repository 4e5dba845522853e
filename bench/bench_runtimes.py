"""tflite-runtime against ai-edge-litert: invoke time of the same models, same process.

Usage (in a venv that holds both runtimes, e.g. numpy<2 + tflite-runtime 2.14 +
ai-edge-litert 2.3: tflite-runtime only works with numpy 1.x)::

    python bench/bench_runtimes.py [--seconds 2] [--threads 1] MODEL.tflite ...

For each model and runtime: one interpreter with ``--threads`` threads, warmed up, then
invoked on random input (the model's dtype and shape) for ``--seconds``; prints the median
invoke time, and the ratio tflite-runtime / ai-edge-litert (above 1: ai-edge-litert is
faster). Runtimes alternate per model so both see the same machine state. The default
models are the shipped int8 edge and float cloud MNIST models and, when
scripts/setup_test_models.sh has run, MediaPipe's selfie segmentation and face detector.
Results go to docs/PERFORMANCE.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODELS = [
    ROOT / "models/repository/mnist_edge/1/model.tflite",
    ROOT / "models/repository/mnist_cloud/1/model.tflite",
    ROOT / ".third_party_models/mediapipe/face_detection_short_range.tflite",
    ROOT / ".third_party_models/mediapipe/selfie_segmentation.tflite",
]


def runtimes() -> dict[str, type]:
    found = {}
    try:
        from ai_edge_litert.interpreter import Interpreter

        found["ai-edge-litert"] = Interpreter
    except ImportError as exc:
        print(f"ai-edge-litert: not importable ({exc})", file=sys.stderr)
    try:
        from tflite_runtime.interpreter import Interpreter

        found["tflite-runtime"] = Interpreter
    except ImportError as exc:
        print(f"tflite-runtime: not importable ({exc})", file=sys.stderr)
    return found


def median_invoke_us(interpreter_cls, path: Path, seconds: float, threads: int) -> float:
    interp = interpreter_cls(model_path=str(path), num_threads=threads)
    interp.allocate_tensors()
    rng = np.random.default_rng(0)
    for d in interp.get_input_details():
        dtype = np.dtype(d["dtype"])
        if dtype.kind == "f":
            x = rng.random(d["shape"], dtype=np.float32).astype(dtype)
        else:
            info = np.iinfo(dtype)
            x = rng.integers(info.min, info.max, d["shape"], dtype=dtype, endpoint=True)
        interp.set_tensor(d["index"], x)
    for _ in range(10):
        interp.invoke()
    times = []
    stop = time.perf_counter() + seconds
    while time.perf_counter() < stop:
        t0 = time.perf_counter()
        interp.invoke()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="*", type=Path)
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    found = runtimes()
    models = [m for m in (args.models or DEFAULT_MODELS) if m.is_file()]
    print(f"numpy {np.__version__}; runtimes: {', '.join(found) or 'none'}; "
          f"{args.threads} thread(s)")
    print("| model | " + " | ".join(f"{r} µs" for r in found) + " | tflite-runtime / litert |")
    print("|---|" + "---|" * (len(found) + 1))
    for model in models:
        row: dict[str, float | str] = {}
        for name, cls in found.items():
            try:
                row[name] = median_invoke_us(cls, model, args.seconds, args.threads)
            except (RuntimeError, ValueError) as exc:  # e.g. an op the runtime lacks
                row[name] = "fails: " + str(exc).splitlines()[0][:80]
        both = [v for v in row.values() if isinstance(v, float)]
        ratio = (f"{row['tflite-runtime'] / row['ai-edge-litert']:.2f}"
                 if len(both) == 2 else "-")
        label = model.parent.parent.name if model.parent.name == "1" else model.stem
        print(f"| {label} | " + " | ".join(f"{v:.1f}" if isinstance(v, float) else v
                                           for v in row.values())
              + f" | {ratio} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
