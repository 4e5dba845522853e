"""The spec (ext._reference) against hand-checked values; every implementation must pass."""

import math

import numpy as np
import pytest

from ext import _reference

RNG = np.random.default_rng(20240611)


def random_images(shape) -> np.ndarray:
    return RNG.integers(0, 256, size=shape, dtype=np.uint8)


def float64_bilinear(image: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Textbook half-pixel bilinear in float64 (one [H,W] image), for the upscale check."""
    in_h, in_w = image.shape

    def axis(in_size, out_size):
        src = np.maximum((np.arange(out_size) + 0.5) * in_size / out_size - 0.5, 0.0)
        i0 = np.minimum(np.floor(src).astype(int), in_size - 1)
        i1 = np.minimum(i0 + 1, in_size - 1)
        return i0, i1, np.where(i0 >= in_size - 1, 0.0, src - i0)

    y0, y1, fy = axis(in_h, out_h)
    x0, x1, fx = axis(in_w, out_w)
    img = image.astype(np.float64)
    top = img[y0][:, x0] * (1 - fx) + img[y0][:, x1] * fx
    bottom = img[y1][:, x0] * (1 - fx) + img[y1][:, x1] * fx
    return top * (1 - fy[:, None]) + bottom * fy[:, None]


# --- resize -----------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 7, 5), (1, 6, 9, 3), (3, 4, 4, 1), (1, 3, 2, 4)])
def test_same_size_resize_is_identity(impl, shape):
    images = random_images(shape)
    out = impl.resize_bilinear(images, shape[1], shape[2])
    assert out.dtype == np.uint8
    assert out.flags.c_contiguous
    np.testing.assert_array_equal(out, images)


def test_2x_downscale_averages_blocks_rounding_half_up(impl):
    # in=4 -> out=2: src = 0.5 and 2.5, weight 1024 each: (sum * 2**20 + 2**21) >> 22.
    image = np.array(
        [[0, 1, 10, 20], [2, 3, 30, 40], [255, 255, 1, 2], [255, 254, 2, 2]], dtype=np.uint8
    )
    out = impl.resize_bilinear(image[np.newaxis], 2, 2)
    # sums 6, 100, 1019, 7 -> floor((s + 2) / 4)
    np.testing.assert_array_equal(out[0], [[2, 25], [255, 2]])


def test_resize_keeps_channels_and_layout(impl):
    images = random_images((2, 9, 11, 3))
    out = impl.resize_bilinear(images, 5, 4)
    assert out.shape == (2, 5, 4, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], impl.resize_bilinear(images[..., c], 5, 4))


def test_resize_accepts_non_contiguous_input(impl):
    images = random_images((2, 10, 12, 3))
    view = images[:, ::2, ::-1, :]
    np.testing.assert_array_equal(
        impl.resize_bilinear(view, 7, 3), impl.resize_bilinear(view.copy(), 7, 3)
    )


@pytest.mark.parametrize(
    ("in_hw", "out_hw"), [((5, 7), (13, 20)), ((2, 3), (37, 40)), ((8, 8), (9, 9))]
)
def test_upscale_within_one_of_float64_bilinear(impl, in_hw, out_hw):
    image = random_images(in_hw)
    out = impl.resize_bilinear(image[np.newaxis], *out_hw)[0].astype(np.int64)
    expected = float64_bilinear(image, *out_hw)
    assert np.max(np.abs(out - expected)) <= 1.0


def test_constant_image_stays_constant(impl):
    images = np.full((1, 13, 17, 3), 201, dtype=np.uint8)
    np.testing.assert_array_equal(impl.resize_bilinear(images, 5, 29), 201)


@pytest.mark.parametrize(("in_hw", "out_hw"), [((48, 64), (22, 22)), ((10, 13), (31, 7))])
def test_matches_cv2_inter_linear_within_one(impl, in_hw, out_hw):
    cv2 = pytest.importorskip("cv2")
    image = random_images((*in_hw, 3))
    expected = cv2.resize(image, (out_hw[1], out_hw[0]), interpolation=cv2.INTER_LINEAR)
    out = impl.resize_bilinear(image[np.newaxis], *out_hw)[0]
    assert np.max(np.abs(out.astype(int) - expected.astype(int))) <= 1


def test_axis_table_half_pixel_centres():
    i0, i1, w = _reference.axis_table(4, 2)
    np.testing.assert_array_equal(i0, [0, 2])
    np.testing.assert_array_equal(i1, [1, 3])
    np.testing.assert_array_equal(w, [1024, 1024])
    i0, i1, w = _reference.axis_table(2, 4)  # src = -0.25 -> 0, 0.25, 0.75, 1.25 -> last
    np.testing.assert_array_equal(i0, [0, 0, 0, 1])
    np.testing.assert_array_equal(i1, [1, 1, 1, 1])
    np.testing.assert_array_equal(w, [0, 512, 1536, 0])


# --- normalize / quantize / dequantize ---------------------------------------------------


def test_normalize_known_values(impl):
    images = np.array([[[0, 255, 51]]], dtype=np.uint8)  # [1,1,3] -> C = 1
    out = impl.normalize(images, [0.5], [0.5])
    assert out.dtype == np.float32 and out.shape == images.shape
    third = (np.float32(51) / np.float32(255) - np.float32(0.5)) / np.float32(0.5)
    np.testing.assert_array_equal(out[0, 0], [np.float32(-1.0), np.float32(1.0), third])


def test_normalize_per_channel_float32_op_order(impl):
    images = random_images((2, 3, 4, 3))
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    x = images.astype(np.float32)
    expected = (x / np.float32(255.0) - np.float32(mean)) / np.float32(std)
    np.testing.assert_array_equal(impl.normalize(images, mean, std), expected)


def test_quantize_rounds_half_to_even(impl):
    x = np.float32([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 0.49999997])
    np.testing.assert_array_equal(impl.quantize(x, 1.0, 0, np.int8), [0, 2, 2, 0, -2, -2, 0])


def test_quantize_saturates(impl):
    x = np.float32([1000.0, -1000.0, 126.6, 127.5, -128.5, np.inf, -np.inf])
    np.testing.assert_array_equal(
        impl.quantize(x, 1.0, 0, np.int8), [127, -128, 127, 127, -128, 127, -128]
    )
    np.testing.assert_array_equal(
        impl.quantize(np.float32([-1.0, 0.0, 1.0, 2.0]), 0.01, 128, np.uint8), [28, 128, 228, 255]
    )


def test_quantize_nan_maps_to_zero_point(impl):
    x = np.float32([np.nan, -np.nan, 1.0])
    np.testing.assert_array_equal(impl.quantize(x, 0.5, -7, np.int8), [-7, -7, -5])
    np.testing.assert_array_equal(impl.quantize(x, 0.5, 200, np.uint8), [200, 200, 202])


def test_quantize_keeps_shape_including_empty(impl):
    assert impl.quantize(np.zeros((2, 0, 3), np.float32), 1.0, 0, np.int8).shape == (2, 0, 3)
    scalar = impl.quantize(np.array(3.2, dtype=np.float32), 0.1, 0, np.int8)
    assert scalar.shape == () and scalar == 32


def test_dequantize_formula(impl):
    q = np.array([[-128, -1, 0, 127]], dtype=np.int8)
    expected = (q.astype(np.float32) - np.float32(-3)) * np.float32(0.1)
    np.testing.assert_array_equal(impl.dequantize(q, 0.1, -3), expected)


def test_int8_probabilities_never_reach_one(impl):
    q = np.arange(-128, 128, dtype=np.int64).astype(np.int8)
    p = impl.dequantize(q, 1 / 256, -128)
    assert p.max() == np.float32(255 / 256) and p.max() < 1.0
    assert p.min() == 0.0
    np.testing.assert_array_equal(np.diff(p), np.float32(1 / 256))


# --- preprocess / make_lut ----------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.float32])
def test_preprocess_equals_composition(impl, dtype):
    images = random_images((2, 15, 21, 3))
    mean, std, scale, zp = (
        [0.5, 0.4, 0.3],
        [0.25, 0.2, 0.3],
        0.03,
        (-5 if dtype == np.int8 else 120),
    )
    out = impl.preprocess(images, 8, 11, mean, std, scale, zp, dtype)
    expected = _reference.normalize(_reference.resize_bilinear(images, 8, 11), mean, std)
    if dtype != np.float32:
        expected = _reference.quantize(expected, scale, zp, dtype)
    assert out.dtype == dtype and out.shape == (2, 8, 11, 3) and out.flags.c_contiguous
    np.testing.assert_array_equal(out, expected)


def test_preprocess_single_channel_gets_channel_axis(impl):
    images = random_images((3, 6, 5))
    out = impl.preprocess(images, 4, 4, [0.5], [0.5], 1 / 128, 0, np.int8)
    assert out.shape == (3, 4, 4, 1)


def test_preprocess_float_ignores_quantization_params(impl):
    images = random_images((1, 5, 5, 3))
    out = impl.preprocess(images, 3, 3, [0.1], [0.9], None, None, np.float32)
    expected = _reference.normalize(_reference.resize_bilinear(images, 3, 3), [0.1], [0.9])
    np.testing.assert_array_equal(out, expected)


def test_make_lut_is_normalize_then_quantize(impl):
    lut = impl.make_lut([0.5, 0.2], [0.25, 0.5], 0.02, 3, np.int8)
    assert lut.shape == (2, 256) and lut.dtype == np.int8
    values = np.arange(256, dtype=np.uint8)
    for c, (m, s) in enumerate([(0.5, 0.25), (0.2, 0.5)]):
        norm = _reference.normalize(values[np.newaxis, np.newaxis], [m], [s])[0, 0]
        np.testing.assert_array_equal(lut[c], _reference.quantize(norm, 0.02, 3, np.int8))


# --- softmax / confidence / postprocess -----------------------------------------------------


def test_softmax_is_stable_and_sums_to_one(impl):
    logits = np.float32([[1000.0, 1000.0], [-1000.0, 0.0], [1.0, 2.0]])
    p = impl.softmax(logits)
    np.testing.assert_allclose(p[0], [0.5, 0.5])
    np.testing.assert_allclose(p[1], [0.0, 1.0])
    np.testing.assert_allclose(p[2], [1 / (1 + math.e), math.e / (1 + math.e)], rtol=1e-6)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-6)


def test_softmax_temperature_flattens(impl):
    logits = np.float32([[0.0, math.log(4.0)]])
    np.testing.assert_allclose(impl.softmax(logits, 2.0), [[1 / 3, 2 / 3]], rtol=1e-6)


def test_confidence_uniform_and_one_hot(impl):
    probs = np.float32([[0.25] * 4, [0.0, 1.0, 0.0, 0.0], [0.1, 0.6, 0.3, 0.0]])
    c = impl.confidence(probs)
    for field in c:
        assert field.dtype == np.float32 and field.shape == (3,)
    np.testing.assert_allclose(c.max_prob, [0.25, 1.0, 0.6])
    np.testing.assert_allclose(c.margin, [0.0, 1.0, 0.3], atol=1e-7)
    expected_h = -(0.1 * math.log(0.1) + 0.6 * math.log(0.6) + 0.3 * math.log(0.3))
    np.testing.assert_allclose(c.entropy, [math.log(4), 0.0, expected_h], rtol=1e-6)
    np.testing.assert_allclose(
        c.normalized_entropy, [1.0, 0.0, expected_h / math.log(4)], rtol=1e-6
    )


def test_confidence_single_class(impl):
    c = impl.confidence(np.float32([[1.0], [0.7]]))
    np.testing.assert_array_equal(c.margin, c.max_prob)
    np.testing.assert_array_equal(c.normalized_entropy, [0.0, 0.0])


def test_postprocess_dequantizes_then_softmaxes(impl):
    outputs = np.array([[-128, 0, 127, 127], [5, 5, 5, 5]], dtype=np.int8)
    probs, labels, max_prob = impl.postprocess(outputs, 0.1, -1)
    expected = _reference.softmax(_reference.dequantize(outputs, 0.1, -1))
    np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(labels, [2, 0])  # first index on ties
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(max_prob, probs[[0, 1], labels])


def test_postprocess_without_softmax_takes_probabilities(impl):
    outputs = np.array([[0, 64, 255], [10, 200, 3]], dtype=np.uint8)
    probs, labels, max_prob = impl.postprocess(outputs, 1 / 256, 0, apply_softmax=False)
    np.testing.assert_array_equal(probs, outputs.astype(np.float32) / 256)
    np.testing.assert_array_equal(labels, [2, 1])
    np.testing.assert_array_equal(max_prob, np.float32([255 / 256, 200 / 256]))


def test_postprocess_float_outputs_ignore_quantization_params(impl):
    logits = np.float32([[0.1, 0.7, 0.2]])
    probs, labels, _ = impl.postprocess(logits, None, None, temperature=0.5)
    np.testing.assert_allclose(probs, _reference.softmax(logits, 0.5), rtol=1e-5, atol=1e-6)
    assert labels.tolist() == [1]


def test_postprocess_nan_label_follows_numpy_argmax(impl):
    logits = np.float32([[0.1, np.nan, 0.9]])
    _, labels, _ = impl.postprocess(logits, None, None)
    assert labels.tolist() == [1]
