"""Benchmark the ext kernels: compiled (Cython) against the NumPy reference.

Usage::

    python bench/bench_ext.py [--markdown] [--min-runs N] [--min-seconds S]

Cases: a 480x640x3 uint8 frame -> 224x224x3 int8 through ``preprocess``;
``quantize`` of a float32 224x224x3 tensor to int8; ``postprocess`` of [64,10]
int8 logits. When OpenCV is importable, ``cv2.resize`` + ``cv2.LUT`` is timed
too as an anchor (OpenCV is not a dependency). Each figure is the median of
many single-threaded calls. Results go to docs/PERFORMANCE.md ("## ext kernels").
"""

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ext import _reference  # noqa: E402

try:
    from ext import _image, _scores
except ImportError:  # the benchmark still runs, reference only
    _image = _scores = None

try:
    import cv2
except ImportError:
    cv2 = None

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
SCALE, ZERO_POINT = 0.0186, -14  # a typical int8 input quantization for ImageNet-normalized input


def median_us(fn: Callable[[], object], min_runs: int, min_seconds: float) -> float:
    """Median wall time of one call in microseconds, after a few warm-up calls."""
    for _ in range(3):
        fn()
    times = []
    start = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter_ns()
        fn()
        times.append(time.perf_counter_ns() - t0)
    return statistics.median(times) / 1e3


def cases() -> list[tuple[str, str, Callable[[], object]]]:
    """(case, implementation, call); every implementation of a case computes the same result."""
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, size=(1, 480, 640, 3), dtype=np.uint8)
    tensor = rng.standard_normal((224, 224, 3)).astype(np.float32)
    logits = rng.integers(-128, 128, size=(64, 10), dtype=np.int8)
    pre_args = (224, 224, MEAN, STD, SCALE, ZERO_POINT, np.int8)

    pre = "preprocess 480x640x3 -> 224x224x3 int8"
    quant = "quantize float32 224x224x3 -> int8"
    post = "postprocess [64,10] int8 logits"
    out = [
        (pre, "reference", lambda: _reference.preprocess(frame, *pre_args)),
        (quant, "reference", lambda: _reference.quantize(tensor, SCALE, ZERO_POINT, np.int8)),
        (post, "reference", lambda: _reference.postprocess(logits, 1 / 16, 0)),
    ]
    if _image is not None:
        out += [
            (pre, "cython", lambda: _image.preprocess(frame, *pre_args)),
            (quant, "cython", lambda: _image.quantize(tensor, SCALE, ZERO_POINT, np.int8)),
            (post, "cython", lambda: _scores.postprocess(logits, 1 / 16, 0)),
        ]
    if cv2 is not None:
        lut = _reference.make_lut(MEAN, STD, SCALE, ZERO_POINT, np.int8).T.reshape(1, 256, 3)
        image = frame[0]

        def cv2_preprocess():
            resized = cv2.resize(image, (224, 224), interpolation=cv2.INTER_LINEAR)
            return cv2.LUT(resized, lut)

        out.append((pre, "cv2.resize + cv2.LUT", cv2_preprocess))
        # The comparison is single-threaded: OpenCV splits a resize over its
        # threads, the ext kernels use one core.
        threads = cv2.getNumThreads()

        def cv2_one_thread():
            cv2.setNumThreads(1)
            try:
                return cv2_preprocess()
            finally:
                cv2.setNumThreads(threads)

        out.append((pre, "cv2 (1 thread)", cv2_one_thread))
    return out


def check_agreement() -> None:
    """Refuse to report timings for kernels that disagree with the spec."""
    if _image is None:
        return
    frame = np.random.default_rng(1).integers(0, 256, size=(1, 480, 640, 3), dtype=np.uint8)
    args = (224, 224, MEAN, STD, SCALE, ZERO_POINT, np.int8)
    want = _reference.preprocess(frame, *args)
    for variant in getattr(_image, "SIMD_VARIANTS", ()):
        _image.use_simd(variant)
        if not np.array_equal(_image.preprocess(frame, *args), want):
            raise SystemExit(f"cython preprocess ({variant}) disagrees with the reference")
    if hasattr(_image, "use_simd"):
        _image.use_simd()


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    parser.add_argument("--min-runs", type=int, default=200, help="calls per figure, at least")
    parser.add_argument("--min-seconds", type=float, default=1.0, help="time per figure, at least")
    args = parser.parse_args(argv)
    if args.min_runs < 1 or args.min_seconds < 0:
        parser.error("--min-runs must be >= 1 and --min-seconds >= 0")

    check_agreement()
    rows, reference_us = [], {}
    for case, impl, fn in cases():
        us = median_us(fn, args.min_runs, args.min_seconds)
        if impl == "reference":
            reference_us[case] = us
        rows.append((case, impl, us, reference_us[case] / us))
        if impl == "cython" and case.startswith("preprocess") and _image is not None:
            best = _image.SIMD
            for variant in _image.SIMD_VARIANTS[1:]:  # the lower instruction sets too
                _image.use_simd(variant)
                us = median_us(fn, args.min_runs, args.min_seconds)
                rows.append((case, f"cython ({variant})", us, reference_us[case] / us))
            _image.use_simd(best)

    machine = f"{os.cpu_count()} CPUs, {cpu_model()}, Python {platform.python_version()}, "
    machine += f"NumPy {np.__version__}" + (f", OpenCV {cv2.__version__}" if cv2 else "")
    if _image is not None:
        machine += (f"; compiled resize: {_image.SIMD} (of {', '.join(_image.SIMD_VARIANTS)}; "
                    "\"cython\" rows use it)")
    times = {(case, impl): us for case, impl, us, _ in rows}
    fused = next((us for (case, impl), us in times.items()
                  if case.startswith("preprocess") and impl == "cython"), None)
    anchor = next((us for (case, impl), us in times.items() if impl == "cv2 (1 thread)"),
                  None)
    if args.markdown:
        print(f"Machine: {machine}\n")
        print("| case | implementation | median µs | speed-up vs reference |")
        print("|---|---|---:|---:|")
        for case, impl, us, ratio in rows:
            print(f"| {case} | {impl} | {us:,.1f} | {ratio:.1f}x |")
    else:
        print(machine)
        print(f"{'case':<42} {'implementation':<22} {'median µs':>11} {'vs ref':>8}")
        for case, impl, us, ratio in rows:
            print(f"{case:<42} {impl:<22} {us:>11,.1f} {ratio:>7.1f}x")
    if fused and anchor:
        print(f"\nfused preprocess vs OpenCV resize + LUT, both on one thread: "
              f"{anchor / fused:.2f}x (target >= 1.3x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
