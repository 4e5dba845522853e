"""``ext.window_stats`` (drift statistics): the reference's semantics, and the compiled
kernel against it (bit-exact for integers and histograms; float32 sums within 1e-9)."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import ext
from ext import _reference as ref

PROPERTY = settings(max_examples=200, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def test_reference_counts_sums_and_bins_per_channel():
    x = np.array([[[0, 10], [255, 20]]], dtype=np.uint8)  # [1,2,2]: channels (0,255), (10,20)
    s = ref.window_stats(x, 2, 0.0, 256.0, 4)
    np.testing.assert_array_equal(s.count, [2, 2])
    np.testing.assert_array_equal(s.total, [255.0, 30.0])
    np.testing.assert_array_equal(s.total_sq, [255.0**2, 500.0])
    np.testing.assert_array_equal(s.histogram, [3, 0, 0, 1])  # 0, 10, 20 | 255


def test_reference_clamps_to_the_end_bins_and_skips_non_finite_values():
    x = np.array([-5.0, 0.0, 0.5, 0.999, 1.0, 7.0, np.nan, np.inf, -np.inf], dtype=np.float32)
    s = ref.window_stats(x, 1, 0.0, 1.0, 2)
    np.testing.assert_array_equal(s.histogram, [2, 4])  # -5, 0 | 0.5, 0.999, 1.0, 7
    assert s.count[0] == 6 and s.total[0] == pytest.approx(-5 + 0.5 + 0.999 + 1 + 7, 1e-6)


def test_int8_codes_bin_by_their_value():
    x = np.array([-128, -1, 0, 127], dtype=np.int8)
    s = ext.window_stats(x, 1, -128.0, 128.0, 2)
    np.testing.assert_array_equal(s.histogram, [2, 2])
    assert s.total[0] == -2.0


def test_an_empty_batch_gives_zeros():
    s = ext.window_stats(np.zeros((0, 3), np.uint8), 3, 0.0, 256.0, 8)
    assert s.count.tolist() == [0, 0, 0] and s.histogram.sum() == 0


@pytest.mark.parametrize("args,message", [
    ((np.zeros(4, np.int16), 1, 0, 1, 4), "x: dtype must be"),
    ((np.zeros(5, np.uint8), 2, 0, 256, 4), "x: 5 values do not split into 2 channels"),
    ((np.zeros(4, np.uint8), 0, 0, 256, 4), "channels: must be >= 1"),
    ((np.zeros(4, np.uint8), 1, 1, 1, 4), "lo/hi: need lo < hi"),
    ((np.zeros(4, np.uint8), 1, 0, float("inf"), 4), "hi: must be finite"),
    ((np.zeros(4, np.uint8), 1, 0, 1, 0), "bins: must be in"),
])
def test_bad_arguments_are_refused_naming_the_argument(args, message):
    with pytest.raises(ValueError, match=message):
        ext.window_stats(*args)


@st.composite
def batches(draw):
    dtype = draw(st.sampled_from([np.uint8, np.int8, np.float32]))
    channels = draw(st.integers(1, 4))
    rows = draw(st.integers(0, 30))
    if dtype == np.float32:
        elements = st.floats(-1e6, 1e6, width=32) | st.sampled_from(
            [float("nan"), float("inf"), -float("inf")])
    else:
        info = np.iinfo(dtype)
        elements = st.integers(int(info.min), int(info.max))
    x = draw(arrays(dtype, (rows, channels), elements=elements))
    lo = draw(st.floats(-300, 300))
    width = draw(st.floats(1e-3, 1e3))
    return x, channels, lo, lo + width, draw(st.integers(1, 300))


@pytest.mark.skipif(ext.IMPLEMENTATION != "cython", reason="compiled kernels not in use")
@PROPERTY
@given(args=batches())
def test_compiled_kernel_matches_the_reference(args):
    from ext import _drift

    expected = ref.window_stats(*args)
    out = _drift.window_stats(*args)
    np.testing.assert_array_equal(out.count, expected.count)
    np.testing.assert_array_equal(out.histogram, expected.histogram)
    if args[0].dtype == np.float32:
        np.testing.assert_allclose(out.total, expected.total, rtol=1e-9, atol=1e-6)
        np.testing.assert_allclose(out.total_sq, expected.total_sq, rtol=1e-9, atol=1e-6)
    else:
        np.testing.assert_array_equal(out.total, expected.total)
        np.testing.assert_array_equal(out.total_sq, expected.total_sq)
