"""The labelled examples ``edge-coordinator calibrate`` fits and reports on: the shipped
splits, or the user's own (``--data``), read, validated and split.

Accepted layouts (``x``: the model's inputs, first dimension = examples, any dtype the
model takes; ``y``: integer class labels, one per example):

* ``FILE.npz`` holding arrays ``x`` and ``y`` (``numpy.savez(FILE, x=x, y=y)``);
* a folder holding ``x.npy`` and ``y.npy``, the same two arrays;
* a folder of class folders named by the class index (``0/``, ``1/``, ...), each holding
  ``.npy`` files of one example each (the Keras / torchvision folder-per-class layout,
  with indices rather than names so that the label is never guessed from sorting).

The split (:func:`split_indices`) is deterministic: ``numpy.random.default_rng(seed)
.permutation(n)``; its first ``round(n * holdout_fraction)`` indices are the hold-out part,
the rest the fitting part (temperature and threshold are chosen on it), both kept in
their original order.

Failure behaviour: every problem raises :class:`DataError`, a ``ValueError`` whose
message is one line naming the field (``--data``, ``x``, ``y``, ``--holdout-fraction``)
and the fix.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import edgeshard_models

__all__ = [
    "MIN_PART", "DataError", "Examples", "LabelledData", "check_labels", "load_labelled",
    "shipped_examples", "split_examples", "split_indices",
]

MIN_PART = 10
"""Fewest examples in each of the fitting and hold-out parts."""

_SAVE_HINT = "save the examples with numpy.savez(FILE, x=inputs, y=labels)"


class DataError(ValueError):
    """The labelled examples given with ``--data`` cannot be used; the message says why."""


@dataclass(frozen=True)
class LabelledData:
    """Validated examples: ``x`` ``[N, ...]`` as the model takes them, ``y`` int64 ``[N]``."""

    x: np.ndarray
    y: np.ndarray
    source: str
    """Where they came from, for messages and the report."""


def check_labels(y: np.ndarray, num_classes: int) -> None:
    """Refuse labels outside the model's ``num_classes`` classes (``DataError``)."""
    bad = (y < 0) | (y >= num_classes)
    if bad.any():
        label = int(y[np.flatnonzero(bad)[0]])
        raise DataError(
            f"y: label {label} is outside the model's {num_classes} classes "
            f"[0, {num_classes - 1}] ({int(bad.sum())} such labels): use the model's class "
            "indices as labels")


def load_labelled(path: str | Path) -> LabelledData:
    """Read and validate the examples at ``path`` (a layout of the module docstring)."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"--data: {p} does not exist: give an .npz file with x and y, or a "
                        "folder of .npy files")
    if p.is_dir():
        x, y = _read_folder(p)
    else:
        x, y = _read_npz(p)
    return _validated(x, y, str(p))


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"--data: {path} is not an .npz file ({_reason(exc)}): "
                        f"{_SAVE_HINT}") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(f"--data: {path} is a single .npy array, not an .npz with x and y: "
                        f"{_SAVE_HINT}")
    with archive:
        names = sorted(archive.files)
        for field in ("x", "y"):
            if field not in names:
                raise DataError(f"{field}: {path} has no array {field!r} (it has "
                                f"{', '.join(names) or 'none'}): {_SAVE_HINT}")
        return _array(archive, "x", path), _array(archive, "y", path)


def _array(archive, field: str, path: Path) -> np.ndarray:
    try:
        return archive[field]
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DataError(f"{field}: cannot read it from {path} ({_reason(exc)}): store "
                        "plain numeric arrays (no objects)") from None


def _read_folder(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    if (folder / "x.npy").exists() or (folder / "y.npy").exists():
        return (_load_npy(folder / "x.npy", "x", "the inputs"),
                _load_npy(folder / "y.npy", "y", "the labels"))
    classes = sorted((d for d in folder.iterdir() if d.is_dir()), key=lambda d: d.name)
    if not classes:
        raise DataError(f"--data: {folder} holds neither x.npy and y.npy nor class folders "
                        "(0/, 1/, ... of .npy examples): use one of these layouts")
    xs, ys = [], []
    for d in classes:
        if not d.name.isdigit():
            raise DataError(f"--data: class folder {d} is not named by a class index "
                            "(0, 1, ...): rename it to the model's index for that class")
        files = sorted(d.glob("*.npy"))
        xs += [_load_npy(f, "x", "one example") for f in files]
        ys += [int(d.name)] * len(files)
    if not xs:
        raise DataError(f"--data: the class folders under {folder} hold no .npy files: "
                        "save one example per file with numpy.save")
    shapes = {(a.shape, a.dtype.str) for a in xs}
    if len(shapes) > 1:
        raise DataError(f"x: the examples under {folder} differ in shape or dtype "
                        f"({', '.join(sorted(f'{list(s)} {t}' for s, t in shapes))}): save "
                        "every example with the shape and dtype the model takes")
    return np.stack(xs), np.asarray(ys, dtype=np.int64)


def _load_npy(path: Path, field: str, what: str) -> np.ndarray:
    if not path.exists():
        raise DataError(f"{field}: {path} is missing: save {what} there with numpy.save")
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"{field}: {path} is not a readable .npy array ({_reason(exc)}): "
                        f"save {what} with numpy.save") from None
    if not isinstance(arr, np.ndarray):
        raise DataError(f"{field}: {path} is not a single .npy array: save {what} with "
                        "numpy.save")
    return arr


def _validated(x: np.ndarray, y: np.ndarray, source: str) -> LabelledData:
    if x.ndim < 1 or not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
        raise DataError(f"x: expected a numeric array [N, ...] of inputs, got dtype {x.dtype} "
                        f"shape {list(x.shape)}: store the inputs as the model takes them")
    if y.ndim != 1:
        raise DataError(f"y: expected one label per example, shape [N], got {list(y.shape)}: "
                        "store class indices, not one-hot rows (y.argmax(axis=1))")
    if x.shape[0] != y.shape[0]:
        raise DataError(f"y: {y.shape[0]} labels for {x.shape[0]} examples in x: give "
                        "exactly one label per example")
    if np.issubdtype(x.dtype, np.inexact) and not np.isfinite(x).all():
        i = int(np.flatnonzero(~np.isfinite(x.reshape(len(x), -1)).all(axis=1))[0])
        raise DataError(f"x: example {i} contains NaN or Inf: fix or remove such examples")
    if np.issubdtype(y.dtype, np.inexact):
        finite = np.isfinite(y)
        if not finite.all():
            i = int(np.flatnonzero(~finite)[0])
            raise DataError(f"y: label at example {i} is NaN or Inf: give every example an "
                            "integer class label")
        if (y != np.round(y)).any():
            i = int(np.flatnonzero(y != np.round(y))[0])
            raise DataError(f"y: label {float(y[i])!r} at example {i} is not a whole number: "
                            "labels are integer class indices")
    elif not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"y: expected integer class labels, got dtype {y.dtype}: store "
                        "class indices (0, 1, ...)")
    if x.shape[0] < 2 * MIN_PART:
        raise DataError(f"x: {x.shape[0]} examples are too few: give at least "
                        f"{2 * MIN_PART} ({MIN_PART} to fit, {MIN_PART} to hold out)")
    return LabelledData(np.ascontiguousarray(x), y.astype(np.int64), source)


@dataclass(frozen=True)
class Examples:
    """Labelled inputs to fit on and to hold out, with names for the report."""

    fit_x: np.ndarray
    fit_y: np.ndarray
    hold_x: np.ndarray
    hold_y: np.ndarray
    fit_name: str
    """What the fitting part is, e.g. ``calibration split``."""
    description: dict
    """Where the examples come from (source, sizes, split fraction and seed)."""


def shipped_examples() -> Examples:
    """The shipped MNIST calibration split (fit) and hold-out split."""
    cal_x, cal_y = edgeshard_models.load_calibration()
    hold_x, hold_y = edgeshard_models.load_holdout()
    return Examples(cal_x, cal_y, hold_x, hold_y, "calibration split",
                    {"source": "shipped splits", "fit": len(cal_y), "holdout": len(hold_y)})


def split_examples(data: LabelledData, holdout_fraction: float, seed: int) -> Examples:
    """``data`` split by ``calibration_data.split_indices`` (``DataError`` when it cannot)."""
    fit, hold = split_indices(len(data.y), holdout_fraction, seed)
    return Examples(data.x[fit], data.y[fit], data.x[hold], data.y[hold], "fitting part",
                    {"source": data.source, "fit": len(fit), "holdout": len(hold),
                     "holdout_fraction": holdout_fraction, "seed": seed})


def split_indices(n: int, holdout_fraction: float, seed: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """``(fit, holdout)`` index arrays over ``n`` examples (see the module docstring).

    Raises ``DataError`` naming ``--holdout-fraction`` when it is outside (0, 1) or leaves
    either part with fewer than :data:`MIN_PART` examples.
    """
    if not 0.0 < holdout_fraction < 1.0:
        raise DataError(f"--holdout-fraction: must be between 0 and 1 (exclusive), got "
                        f"{holdout_fraction!r}")
    k = round(n * holdout_fraction)
    if min(k, n - k) < MIN_PART:
        raise DataError(f"--holdout-fraction: {holdout_fraction:g} of {n} examples leaves "
                        f"{n - k} to fit and {k} to hold out; each needs at least {MIN_PART}: "
                        "change the fraction or give more examples")
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[k:]), np.sort(order[:k])


def _reason(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if "allow_pickle" in text:  # numpy's pickle advice would mislead: it is not a numpy file
        return "not a numpy file (it does not start with numpy's header)"
    return text if len(text) <= 120 else text[:117].rsplit(" ", 1)[0] + "..."
