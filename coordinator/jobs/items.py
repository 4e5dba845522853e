"""Job input: read the items of a batch job from ``.npy``, ``.npz`` or a msgpack stream.

``load_items(path)`` validates the whole input up front (so a bad file fails at Submit, not
half-way through a job) and returns an :class:`ItemSource`: the item ids, the dtype and item
shape every item shares, and ``batches(n)``, which yields ``(ids, stacked array)`` of at most
``n`` rows. Memory stays bounded by one batch where the format allows it: ``.npy`` is
memory-mapped and a msgpack stream is read twice (once to validate and collect ids, once per
``batches`` call to stack the data), so only ``.npz`` (compressed members) is read whole.

Formats:

- ``.npy``: an array ``[N, ...]``; item ids are the row indices ``"0"`` .. ``"N-1"``.
- ``.npz``: array ``images`` (or the first array when there is none) and optional ``ids``
  (unique strings, one per row); without ``ids``, the row indices.
- ``.msgpack`` / ``.mpk``: a sequence of maps ``{"id": str (optional, default: the running
  index), "data": bytes, "dtype": "uint8", "shape": [H, W(, C)]}``.

Items of one job share dtype and shape, because the coordinator batches them. Supported dtypes
are the Open Inference Protocol's numeric ones (``SUPPORTED_DTYPES``: ``bool``, ``uint8`` ..
``uint64``, ``int8`` .. ``int64``, ``float16``, ``float32``, ``float64``); which one a job
may use is the model's input's (Submit checks it). Every error is a :class:`JobInputError`
whose message names the file, the item and the field, and says how to fix it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import msgpack
import numpy as np

from coordinator.errors import JobInputError

SUPPORTED_DTYPES = ("uint8", "float32", "int8", "int16", "int32", "int64", "uint16", "uint32",
                    "uint64", "float16", "float64", "bool")
MSGPACK_FIELDS = ("id", "data", "dtype", "shape")
MSGPACK_EXTENSIONS = (".msgpack", ".mpk")
# The largest single msgpack item accepted (the Unpacker's buffer limit).
MAX_MSGPACK_ITEM_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class ItemSource:
    """The validated items of one job: ids, shared dtype and item shape, and their data."""

    ids: list[str]
    dtype: np.dtype
    item_shape: tuple[int, ...]
    path: str | None = None
    # Yields stacked arrays of at most n rows, in item order; set by the loaders.
    _read: Callable[[int], Iterator[np.ndarray]] = field(repr=False, compare=False,
                                                        default=None)

    def __len__(self) -> int:
        return len(self.ids)

    def batches(self, size: int) -> Iterator[tuple[list[str], np.ndarray]]:
        """Yield ``(ids, array)`` with at most ``size`` items each, covering every item once."""
        if size < 1:
            raise ValueError(f"batch size must be >= 1, got {size}")
        start = 0
        for array in self._read(size):
            ids = self.ids[start:start + len(array)]
            if len(ids) != len(array):
                raise JobInputError(
                    f"{self.path}: the input changed while it was being read; "
                    "do not modify a job's input until Submit returns", path=self.path)
            start += len(array)
            yield ids, array
        if start != len(self.ids):
            raise JobInputError(
                f"{self.path}: the input changed while it was being read (expected "
                f"{len(self.ids)} items, read {start})", path=self.path)

    @classmethod
    def from_arrays(cls, ids: Sequence[str] | None, array: np.ndarray,
                    path: str | None = None) -> ItemSource:
        """Validate an in-memory ``[N, ...]`` array and its ids (None: the row indices)."""
        return cls.from_parts(ids, [np.asarray(array)], path)

    @classmethod
    def from_parts(cls, ids: Sequence[str] | None, parts: Sequence[np.ndarray],
                   path: str | None = None) -> ItemSource:
        """Items given as consecutive arrays ``[n_k, ...]`` of one dtype and item shape
        (a Submit stream's messages), without joining them: a batch within one part is a
        view of it, one that spans parts is copied from them. ``JobInputError`` when the
        parts disagree or hold no items."""
        where = path or "<array>"
        parts = [p for p in parts if len(p)] or list(parts[:1])  # empty messages add nothing
        if not parts:
            raise JobInputError(f"{where}: no items; a job needs at least one item",
                                path=where)
        for k, part in enumerate(parts):
            _check_array(part, where, "array" if len(parts) == 1 else f"array part {k}")
            if part.dtype != parts[0].dtype or part.shape[1:] != parts[0].shape[1:]:
                raise JobInputError(
                    f"{where}: array part {k}: dtype {part.dtype} and item shape "
                    f"{list(part.shape[1:])} differ from the first part's "
                    f"({parts[0].dtype}, {list(parts[0].shape[1:])}); every item of a job "
                    "shares them", path=where)
        count = sum(len(p) for p in parts)
        ids = [str(i) for i in range(count)] if ids is None else _check_ids(ids, count, where)

        def read(size: int) -> Iterator[np.ndarray]:
            pending: list[np.ndarray] = []  # pieces of the batch being gathered
            have = 0
            for part in parts:
                start = 0
                while start < len(part):
                    piece = part[start:start + size - have]
                    start += len(piece)
                    if not pending and len(piece) == size:
                        yield np.ascontiguousarray(piece)  # a view when the part is
                        continue
                    pending.append(piece)
                    have += len(piece)
                    if have == size:
                        yield np.concatenate(pending)
                        pending, have = [], 0
            if pending:
                yield np.ascontiguousarray(pending[0]) if len(pending) == 1 else \
                    np.concatenate(pending)

        return cls(ids, parts[0].dtype, tuple(parts[0].shape[1:]), path, read)


def load_items(path: str | os.PathLike) -> ItemSource:
    """Read and validate a job input file; see the module docstring for the formats."""
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".npy", ".npz", *MSGPACK_EXTENSIONS):
        raise JobInputError(
            f"{path}: unknown extension {ext or '(none)'!r}; use .npy, .npz, .msgpack or .mpk",
            path=path)
    try:
        size = os.path.getsize(path)
    except OSError as e:
        raise JobInputError(f"{path}: cannot read the file: {e.strerror}", path=path) from e
    if size == 0:
        raise JobInputError(f"{path}: the file is empty; a job needs at least one item",
                            path=path)
    if ext == ".npy":
        return _load_npy(path)
    if ext == ".npz":
        return _load_npz(path)
    return _load_msgpack(path)


def _load_npy(path: str) -> ItemSource:
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise JobInputError(f"{path}: not a valid .npy file ({e}); write it with numpy.save",
                            path=path) from e
    return ItemSource.from_arrays(None, array, path)


def _load_npz(path: str) -> ItemSource:
    try:
        with np.load(path, allow_pickle=False) as npz:
            names = list(npz.files)
            data_name = "images" if "images" in names else next(
                (n for n in names if n != "ids"), None)
            if data_name is None:
                raise JobInputError(
                    f"{path}: no data array; save the items as 'images' "
                    "(numpy.savez(path, images=array, ids=ids))", path=path, field="images")
            array = _npz_member(npz, path, data_name)
            ids = _npz_member(npz, path, "ids") if "ids" in names else None
    except JobInputError:
        raise
    except (ValueError, OSError, EOFError, KeyError) as e:
        raise JobInputError(f"{path}: not a valid .npz file ({e}); write it with numpy.savez",
                            path=path) from e
    _check_array(array, path, data_name)
    if ids is not None:
        if ids.ndim != 1:
            raise JobInputError(f"{path}: ids: expected a 1-D array of strings, got shape "
                                f"{list(ids.shape)}", path=path, field="ids")
        if ids.dtype.kind not in "USiu":
            raise JobInputError(f"{path}: ids: dtype {ids.dtype} is not a string type; save "
                                "them as numpy.array(ids, dtype=str)", path=path, field="ids")
        ids = [i.decode() if isinstance(i, bytes) else str(i) for i in ids.tolist()]
    return ItemSource.from_arrays(ids, array, path)


def _npz_member(npz, path: str, name: str) -> np.ndarray:
    try:
        return npz[name]
    except ValueError as e:  # object arrays need pickle, which we never allow
        raise JobInputError(
            f"{path}: {name}: cannot be read without pickle ({e}); save plain numeric or "
            "string arrays (ids as numpy.array(ids, dtype=str))", path=path, field=name) from e


def _check_array(array: np.ndarray, where: str, name: str) -> None:
    if array.ndim < 2:
        raise JobInputError(
            f"{where}: {name}: shape {list(array.shape)} has no item dimensions; expected "
            "[N, H, W] or [N, H, W, C] (N items)", path=where, field=name)
    if array.shape[0] == 0:
        raise JobInputError(f"{where}: {name}: no items (shape {list(array.shape)}); a job "
                            "needs at least one item", path=where, field=name)
    if array.dtype.name not in SUPPORTED_DTYPES or not array.dtype.isnative:
        raise JobInputError(
            f"{where}: {name}: dtype {array.dtype} is not supported; use the dtype of the "
            "model's input, one of " + ", ".join(SUPPORTED_DTYPES) + " in native byte order "
            "(e.g. array.astype(numpy.float32))", path=where, field=name)


def _check_ids(ids: Sequence[str], count: int, where: str) -> list[str]:
    ids = list(ids)
    if len(ids) != count:
        raise JobInputError(f"{where}: ids: {len(ids)} ids for {count} items; give exactly "
                            "one id per item", path=where, field="ids")
    if all(type(i) is str and i for i in ids) and len(set(ids)) == count:
        return ids  # the common case, checked at C speed; the loop below names the culprit
    seen: dict[str, int] = {}
    for index, item_id in enumerate(ids):
        if not isinstance(item_id, str) or not item_id:
            raise JobInputError(f"{where}: item {index}: id {item_id!r} must be a non-empty "
                                "string", path=where, item=index, field="id")
        if item_id in seen:
            raise JobInputError(
                f"{where}: item {index}: duplicate id {item_id!r} (also item {seen[item_id]}); "
                "ids must be unique within a job", path=where, item=index, field="id")
        seen[item_id] = index
    return ids


@dataclass(frozen=True)
class _Item:
    id: str
    data: bytes
    dtype: np.dtype
    shape: tuple[int, ...]


def _load_msgpack(path: str) -> ItemSource:
    ids: list[str] = []
    seen: dict[str, int] = {}
    first: _Item | None = None
    for index, item in enumerate(_msgpack_items(path)):
        if first is None:
            first = item
        elif (item.dtype, item.shape) != (first.dtype, first.shape):
            name = "dtype" if item.dtype != first.dtype else "shape"
            raise JobInputError(
                f"{path}: item {index}: dtype {item.dtype} shape {_fmt(item.shape)} differs from "
                f"item 0's dtype {first.dtype} shape {_fmt(first.shape)}; all items of a job "
                "must share dtype and shape (split them into separate jobs)",
                path=path, item=index, field=name)
        if item.id in seen:
            raise JobInputError(
                f"{path}: item {index}: duplicate id {item.id!r} (also item {seen[item.id]}); "
                "ids must be unique within a job", path=path, item=index, field="id")
        seen[item.id] = index
        ids.append(item.id)
    if first is None:
        raise JobInputError(f"{path}: the stream holds no items; a job needs at least one",
                            path=path)

    def read(batch: int) -> Iterator[np.ndarray]:
        rows: list[np.ndarray] = []
        for index, item in enumerate(_msgpack_items(path)):
            if index >= len(ids) or item.id != ids[index] or item.shape != first.shape \
                    or item.dtype != first.dtype:
                raise JobInputError(
                    f"{path}: item {index}: the input changed while it was being read; do not "
                    "modify a job's input until Submit returns", path=path, item=index)
            rows.append(np.frombuffer(item.data, dtype=item.dtype).reshape(item.shape))
            if len(rows) == batch:
                yield np.stack(rows)
                rows = []
        if rows:
            yield np.stack(rows)

    return ItemSource(ids, first.dtype, first.shape, path, read)


def _msgpack_items(path: str) -> Iterator[_Item]:
    """Stream and validate the items of a msgpack file (one map per item)."""
    index = 0
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        unpacker = msgpack.Unpacker(f, raw=False, max_buffer_size=MAX_MSGPACK_ITEM_BYTES)
        try:
            for obj in unpacker:
                yield _msgpack_item(obj, index, path)
                index += 1
        except (msgpack.UnpackException, ValueError) as e:
            raise JobInputError(
                f"{path}: item {index}: not valid msgpack ({type(e).__name__}: {e}); write "
                "each item with msgpack.packb({'id': ..., 'data': ..., 'dtype': ..., "
                "'shape': ...})", path=path, item=index) from e
        if unpacker.tell() != size:
            raise JobInputError(
                f"{path}: item {index}: truncated (the file ends {size - unpacker.tell()} bytes "
                "into an unfinished item); re-send the complete file", path=path, item=index)


def _msgpack_item(obj: object, index: int, path: str) -> _Item:
    def fail(name: str | None, message: str) -> JobInputError:
        prefix = f"{path}: item {index}: " + (f"{name} " if name else "")
        return JobInputError(prefix + message, path=path, item=index, field=name)

    if not isinstance(obj, dict):
        raise fail(None, f"expected a map with fields {', '.join(MSGPACK_FIELDS)}, got "
                         f"{type(obj).__name__}")
    unknown = sorted(set(obj) - set(MSGPACK_FIELDS))
    if unknown:
        raise fail(unknown[0], "is an unknown field; allowed fields are "
                               + ", ".join(MSGPACK_FIELDS))
    for name in ("data", "dtype", "shape"):
        if name not in obj:
            raise fail(name, "is missing; every item needs data, dtype and shape")
    item_id = obj.get("id", str(index))
    if not isinstance(item_id, str) or not item_id:
        raise fail("id", f"{item_id!r} must be a non-empty string (or leave id out to use the "
                         "item's index)")
    data = obj["data"]
    if not isinstance(data, bytes):
        raise fail("data", f"must be bytes (msgpack bin), got {type(data).__name__}; pack "
                           "array.tobytes()")
    dtype = obj["dtype"]
    if dtype not in SUPPORTED_DTYPES:
        raise fail("dtype", f"{dtype!r} is not supported; use one of "
                            f"{', '.join(SUPPORTED_DTYPES)}")
    dtype = np.dtype(dtype)
    shape = obj["shape"]
    if (not isinstance(shape, list) or not shape
            or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)):
        raise fail("shape", f"{shape!r} must be a non-empty list of positive integers, "
                            "e.g. [28, 28] or [224, 224, 3]")
    shape = tuple(shape)
    expected = math.prod(shape) * dtype.itemsize  # exact: np.prod would wrap at 2**63
    if expected != len(data):
        raise fail("shape", f"{_fmt(shape)} does not match {len(data)} bytes of {dtype} "
                            f"(it needs {expected} bytes); fix shape or data")
    return _Item(item_id, data, dtype, shape)


def _fmt(shape: Sequence[int]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"
