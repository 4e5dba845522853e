"""Job input parsing: .npy, .npz and msgpack streams, and every way they can be wrong."""

from __future__ import annotations

import io

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.errors import JobInputError
from coordinator.jobs.items import ItemSource, load_items
from coordinator.jobs.leases import npy_bytes


def collect(source: ItemSource, size: int) -> tuple[list[str], np.ndarray]:
    ids, arrays = [], []
    for batch_ids, array in source.batches(size):
        assert 1 <= len(batch_ids) == len(array) <= size
        ids += batch_ids
        arrays.append(array)
    return ids, np.concatenate(arrays)


def write_msgpack(path, items) -> str:
    with open(path, "wb") as f:
        for item in items:
            f.write(msgpack.packb(item))
    return str(path)


def image_item(i: int, shape=(4, 5), dtype="uint8", **overrides) -> dict:
    array = np.full(shape, i % 256, dtype=dtype)
    item = {"id": f"img-{i}", "data": array.tobytes(), "dtype": dtype, "shape": list(shape)}
    item.update(overrides)
    return item


# -- happy paths ----------------------------------------------------------------------------


@pytest.mark.parametrize("shape,dtype", [
    ((7, 4, 5), np.uint8), ((7, 4, 5, 3), np.uint8), ((7, 10), np.float32),
    ((7, 3), np.int64), ((7, 2, 2), np.float16), ((7, 5), np.int8), ((7, 4), np.bool_)])
def test_npy_items_are_rows_with_index_ids(tmp_path, shape, dtype):
    array = np.arange(np.prod(shape)).reshape(shape).astype(dtype)
    np.save(tmp_path / "x.npy", array)
    source = load_items(tmp_path / "x.npy")
    assert len(source) == 7
    assert source.dtype == dtype and source.item_shape == shape[1:]
    ids, data = collect(source, 3)
    assert ids == [str(i) for i in range(7)]
    np.testing.assert_array_equal(data, array)


def test_npz_with_ids(tmp_path):
    images = np.random.default_rng(0).integers(0, 255, (5, 3, 3), dtype=np.uint8)
    ids = np.array(["a", "b", "c", "d", "e"])
    np.savez(tmp_path / "x.npz", images=images, ids=ids)
    got_ids, data = collect(load_items(tmp_path / "x.npz"), 2)
    assert got_ids == ["a", "b", "c", "d", "e"]
    np.testing.assert_array_equal(data, images)


def test_npz_without_images_key_uses_first_array_and_row_ids(tmp_path):
    features = np.ones((3, 8), np.float32)
    np.savez(tmp_path / "x.npz", features=features)
    source = load_items(tmp_path / "x.npz")
    ids, data = collect(source, 10)
    assert ids == ["0", "1", "2"] and source.dtype == np.float32
    np.testing.assert_array_equal(data, features)


@pytest.mark.parametrize("ext", [".msgpack", ".mpk"])
def test_msgpack_stream(tmp_path, ext):
    items = [image_item(i) for i in range(5)]
    del items[2]["id"]  # default id: the running index
    source = load_items(write_msgpack(tmp_path / f"x{ext}", items))
    assert source.item_shape == (4, 5) and source.dtype == np.uint8
    ids, data = collect(source, 2)
    assert ids == ["img-0", "img-1", "2", "img-3", "img-4"]
    assert [int(row[0, 0]) for row in data] == [0, 1, 2, 3, 4]
    # batches() re-reads the stream, so it can be called again
    assert collect(source, 5)[0] == ids


def test_msgpack_float32_with_channels(tmp_path):
    items = [image_item(i, shape=(2, 2, 3), dtype="float32") for i in range(3)]
    ids, data = collect(load_items(write_msgpack(tmp_path / "x.msgpack", items)), 10)
    assert data.dtype == np.float32 and data.shape == (3, 2, 2, 3)


def test_from_arrays_defaults_to_row_ids():
    source = ItemSource.from_arrays(None, np.zeros((4, 2, 2), np.uint8))
    assert collect(source, 3)[0] == ["0", "1", "2", "3"]


# -- errors ---------------------------------------------------------------------------------


def input_error(path) -> JobInputError:
    with pytest.raises(JobInputError) as info:
        load_items(path)
    assert str(path) in str(info.value)
    return info.value


def test_npz_duplicate_ids_name_the_duplicate(tmp_path):
    np.savez(tmp_path / "x.npz", images=np.zeros((3, 2, 2), np.uint8),
             ids=np.array(["a", "b", "a"]))
    err = input_error(tmp_path / "x.npz")
    assert "item 2: duplicate id 'a' (also item 0)" in str(err)
    assert (err.item, err.field) == (2, "id")


def test_msgpack_duplicate_ids(tmp_path):
    items = [image_item(0), image_item(1, id="img-0")]
    err = input_error(write_msgpack(tmp_path / "x.msgpack", items))
    assert "item 1: duplicate id 'img-0' (also item 0)" in str(err)


def test_msgpack_explicit_id_colliding_with_default_index(tmp_path):
    items = [image_item(0, id="1"), {k: v for k, v in image_item(1).items() if k != "id"}]
    err = input_error(write_msgpack(tmp_path / "x.msgpack", items))
    assert "item 1: duplicate id '1'" in str(err)


def test_msgpack_shape_does_not_match_data(tmp_path):
    items = [image_item(i, shape=(28, 28)) for i in range(17)]
    items.append(image_item(17, shape=(28, 28), data=b"\0" * 3136))
    err = input_error(write_msgpack(tmp_path / "x.msgpack", items))
    assert "item 17: shape [28,28] does not match 3136 bytes of uint8" in str(err)
    assert (err.item, err.field) == (17, "shape")


def test_msgpack_shape_too_large_for_any_data_is_refused(tmp_path):
    # 2**32 * 2**32 wraps to 0 in int64 arithmetic: an empty item must not pass for it.
    items = [{"id": "big", "data": b"", "dtype": "uint8", "shape": [2**32, 2**32]}]
    err = input_error(write_msgpack(tmp_path / "x.msgpack", items))
    assert "item 0: shape [4294967296,4294967296] does not match 0 bytes" in str(err)
    assert (err.item, err.field) == (0, "shape")


def test_msgpack_items_must_share_shape(tmp_path):
    items = [image_item(0, shape=(4, 4)), image_item(1, shape=(4, 4)),
             image_item(2, shape=(4, 4, 3))]
    err = input_error(write_msgpack(tmp_path / "x.msgpack", items))
    assert "item 2:" in str(err) and "[4,4,3]" in str(err) and "[4,4]" in str(err)
    assert "must share dtype and shape" in str(err) and err.field == "shape"


def test_msgpack_items_must_share_dtype(tmp_path):
    items = [image_item(0, shape=(2, 2)), image_item(1, shape=(2, 2), dtype="float32")]
    err = input_error(write_msgpack(tmp_path / "x.msgpack", items))
    assert "item 1:" in str(err) and err.field == "dtype"


def test_msgpack_bad_dtype(tmp_path):
    items = [image_item(0), image_item(1, dtype="complex64")]
    err = input_error(write_msgpack(tmp_path / "x.msgpack", items))
    assert "item 1: dtype 'complex64' is not supported; use one of uint8, float32, int8" in str(err)


def test_npy_bad_dtype(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((2, 3, 3), np.complex64))
    err = input_error(tmp_path / "x.npy")
    assert "dtype complex64 is not supported" in str(err) and "astype" in str(err)


def test_npy_without_item_dimensions(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros(5, np.uint8))
    assert "no item dimensions" in str(input_error(tmp_path / "x.npy"))


def test_npy_with_zero_rows(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((0, 3, 3), np.uint8))
    assert "no items" in str(input_error(tmp_path / "x.npy"))


def test_corrupt_npy(tmp_path):
    (tmp_path / "x.npy").write_bytes(b"not numpy at all")
    assert "not a valid .npy file" in str(input_error(tmp_path / "x.npy"))


def test_npz_object_ids_are_refused(tmp_path):
    np.savez(tmp_path / "x.npz", images=np.zeros((2, 2, 2), np.uint8),
             ids=np.array(["a", 1], dtype=object))
    err = input_error(tmp_path / "x.npz")
    assert "ids" in str(err) and "pickle" in str(err)


def test_npz_ids_of_wrong_length(tmp_path):
    np.savez(tmp_path / "x.npz", images=np.zeros((3, 2, 2), np.uint8), ids=np.array(["a"]))
    assert "ids: 1 ids for 3 items" in str(input_error(tmp_path / "x.npz"))


def test_npz_with_only_ids(tmp_path):
    np.savez(tmp_path / "x.npz", ids=np.array(["a"]))
    assert "no data array" in str(input_error(tmp_path / "x.npz"))


def test_truncated_msgpack(tmp_path):
    path = write_msgpack(tmp_path / "x.msgpack", [image_item(i) for i in range(3)])
    with open(path, "r+b") as f:
        f.truncate(f.seek(0, 2) - 5)
    err = input_error(path)
    assert "item 2: truncated" in str(err) and err.item == 2


def test_corrupt_msgpack(tmp_path):
    path = tmp_path / "x.msgpack"
    path.write_bytes(msgpack.packb(image_item(0)) + b"\xc1")  # 0xc1 is never used
    err = input_error(path)
    assert "item 1: not valid msgpack" in str(err)


@pytest.mark.parametrize("item,message", [
    (42, "item 0: expected a map"),
    ({"data": b"\0" * 4, "dtype": "uint8"}, "item 0: shape is missing"),
    ({"data": "text", "dtype": "uint8", "shape": [2, 2]}, "item 0: data must be bytes"),
    ({"data": b"\0" * 4, "dtype": "uint8", "shape": [2, -2]}, "item 0: shape [2, -2] must be"),
    ({"data": b"\0" * 4, "dtype": "uint8", "shape": "2x2"}, "item 0: shape '2x2' must be"),
    ({"id": 7, "data": b"\0" * 4, "dtype": "uint8", "shape": [2, 2]}, "item 0: id 7 must be"),
    ({"lable": 1, "data": b"\0" * 4, "dtype": "uint8", "shape": [2, 2]},
     "item 0: lable is an unknown field"),
])
def test_msgpack_item_fields(tmp_path, item, message):
    err = input_error(write_msgpack(tmp_path / "x.msgpack", [item]))
    assert message in str(err)


@pytest.mark.parametrize("name", ["x.npy", "x.npz", "x.msgpack", "x.mpk"])
def test_empty_file(tmp_path, name):
    (tmp_path / name).write_bytes(b"")
    assert "the file is empty" in str(input_error(tmp_path / name))


def test_unknown_extension(tmp_path):
    (tmp_path / "x.csv").write_text("1,2,3\n")
    err = input_error(tmp_path / "x.csv")
    assert "unknown extension '.csv'; use .npy, .npz, .msgpack or .mpk" in str(err)


def test_missing_file(tmp_path):
    assert "cannot read the file" in str(input_error(tmp_path / "nope.npy"))


def test_input_changed_between_passes(tmp_path):
    path = write_msgpack(tmp_path / "x.msgpack", [image_item(i) for i in range(4)])
    source = load_items(path)
    write_msgpack(path, [image_item(i) for i in range(2)])
    with pytest.raises(JobInputError, match="changed while it was being read"):
        collect(source, 3)


# -- items given in parts (a Submit stream's messages) ----------------------------------------

@settings(max_examples=200, deadline=None)
@given(sizes=st.lists(st.integers(0, 9), min_size=1, max_size=8).filter(lambda s: sum(s) > 0),
       batch=st.integers(1, 12))
def test_parts_give_the_same_batches_as_one_array(sizes, batch):
    whole = np.arange(sum(sizes) * 6, dtype=np.int16).reshape(-1, 2, 3)
    cuts = np.cumsum([0, *sizes])
    parts = [whole[a:b] for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
    got = list(ItemSource.from_parts(None, parts).batches(batch))
    want = list(ItemSource.from_arrays(None, whole).batches(batch))
    assert [ids for ids, _ in got] == [ids for ids, _ in want]
    for (_, a), (_, b) in zip(got, want, strict=True):
        assert a.flags.c_contiguous and a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


def test_a_batch_inside_one_part_is_a_view_of_it():
    part = np.arange(8 * 4, dtype=np.uint8).reshape(8, 4)
    (_, first), (_, second) = ItemSource.from_parts(None, [part]).batches(4)
    assert np.shares_memory(first, part) and np.shares_memory(second, part)


def test_parts_that_disagree_are_refused_naming_the_part():
    with pytest.raises(JobInputError, match="array part 1: dtype float32"):
        ItemSource.from_parts(None, [np.zeros((2, 3), np.uint8), np.zeros((2, 3), np.float32)])
    with pytest.raises(JobInputError, match="no items"):
        ItemSource.from_parts(None, [])
    with pytest.raises(JobInputError, match="2 ids for 3 items"):
        ItemSource.from_parts(["a", "b"], [np.zeros((1, 3)), np.zeros((2, 3))], path="items")


@settings(max_examples=100, deadline=None)
@given(dtype=st.sampled_from(["uint8", "int8", "float32", "float16", "int64", "bool"]),
       shape=st.lists(st.integers(0, 5), min_size=1, max_size=4))
def test_npy_bytes_are_what_numpy_save_writes(dtype, shape):
    array = np.zeros(shape, dtype)
    out = io.BytesIO()
    np.save(out, array, allow_pickle=False)
    assert npy_bytes(array) == out.getvalue()
    assert npy_bytes(array) == out.getvalue()  # the cached header too
