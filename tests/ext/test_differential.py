"""Property tests: the compiled kernels against the NumPy reference (the spec).

Integer outputs and the element-wise float32 maps must match bit for bit;
softmax, confidence and postprocess probabilities within rtol 1e-5 / atol 1e-6.
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays

import ext

if ext.IMPLEMENTATION != "cython":
    pytest.skip("compiled kernels not in use", allow_module_level=True)

from ext import _image, _scores  # noqa: E402
from ext import _reference as ref  # noqa: E402


class cy:  # noqa: N801 - reads as a module alias in the tests below
    """The compiled kernels under one name."""

    resize_bilinear = staticmethod(_image.resize_bilinear)
    normalize = staticmethod(_image.normalize)
    quantize = staticmethod(_image.quantize)
    dequantize = staticmethod(_image.dequantize)
    preprocess = staticmethod(_image.preprocess)
    softmax = staticmethod(_scores.softmax)
    confidence = staticmethod(_scores.confidence)
    postprocess = staticmethod(_scores.postprocess)


PROPERTY = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
RTOL, ATOL = 1e-5, 1e-6
QUANT_DTYPES = (np.int8, np.uint8)


@st.composite
def image_batches(draw) -> np.ndarray:
    """uint8 [N,H,W] or [N,H,W,C]: random noise, Hypothesis-shrinkable arrays, or strided views."""
    n = draw(st.integers(1, 4))
    h, w = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    channels = draw(st.sampled_from([None, 1, 3]))
    shape = (n, h, w) if channels is None else (n, h, w, channels)
    if draw(st.booleans()):
        seed = draw(st.integers(0, 2**32 - 1))
        images = np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)
    else:
        images = draw(arrays(np.uint8, shape, elements=st.integers(0, 255)))
    if draw(st.booleans()):
        images = images[:, ::-1]  # a non-contiguous view
    return images


def channel_count(images: np.ndarray) -> int:
    return 1 if images.ndim == 3 else images.shape[3]


@st.composite
def norm_params(draw, channels: int) -> tuple[list[float], list[float]]:
    length = draw(st.sampled_from(sorted({1, channels})))
    mean = draw(st.lists(st.floats(-1.0, 1.0), min_size=length, max_size=length))
    std = draw(st.lists(st.floats(0.01, 3.0), min_size=length, max_size=length))
    return mean, std


@st.composite
def quant_params(draw, dtype) -> tuple[float, int]:
    info = np.iinfo(dtype)
    scale = draw(st.floats(1e-3, 2.0))
    return scale, draw(st.integers(int(info.min), int(info.max)))


sizes = st.integers(1, 40)


@PROPERTY
@given(images=image_batches(), out_h=sizes, out_w=sizes)
def test_resize_bit_exact(images, out_h, out_w):
    expected = ref.resize_bilinear(images, out_h, out_w)
    out = cy.resize_bilinear(images, out_h, out_w)
    assert out.shape == expected.shape and out.flags.c_contiguous
    np.testing.assert_array_equal(out, expected)


@PROPERTY
@given(data=st.data(), images=image_batches())
def test_normalize_exact(data, images):
    mean, std = data.draw(norm_params(channel_count(images)))
    expected = ref.normalize(images, mean, std)
    out = cy.normalize(images, mean, std)
    assert out.shape == expected.shape and out.dtype == np.float32
    np.testing.assert_array_equal(out, expected)


@PROPERTY
@given(
    data=st.data(),
    x=arrays(
        np.float32,
        array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=12),
        elements=st.floats(width=32, allow_nan=True, allow_infinity=True),
    ),
    dtype=st.sampled_from(QUANT_DTYPES),
    scale=st.one_of(st.floats(1e-6, 1e3), st.sampled_from([1.0, 0.5, 1 / 256])),
)
def test_quantize_bit_exact(data, x, dtype, scale):
    info = np.iinfo(dtype)
    zp = data.draw(st.integers(int(info.min), int(info.max)))
    expected = ref.quantize(x, scale, zp, dtype)
    out = cy.quantize(x, scale, zp, dtype)
    assert out.shape == expected.shape and out.dtype == expected.dtype
    np.testing.assert_array_equal(out, expected)


@PROPERTY
@given(
    data=st.data(),
    dtype=st.sampled_from(QUANT_DTYPES),
    shape=array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=12),
)
def test_dequantize_exact(data, dtype, shape):
    q = data.draw(arrays(dtype, shape))
    scale, zp = data.draw(quant_params(dtype))
    expected = ref.dequantize(q, scale, zp)
    out = cy.dequantize(q, scale, zp)
    assert out.shape == expected.shape
    np.testing.assert_array_equal(out, expected)


@pytest.fixture(params=_image.SIMD_VARIANTS)
def simd(request):
    """Each instruction set this CPU runs the resize kernels with (the best is restored)."""
    _image.use_simd(request.param)
    yield request.param
    _image.use_simd()


@settings(PROPERTY, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                          HealthCheck.function_scoped_fixture])
@given(images=image_batches(), out_h=st.integers(1, 80), out_w=st.integers(1, 80))
def test_every_simd_variant_resizes_bit_exact(simd, images, out_h, out_w):
    np.testing.assert_array_equal(cy.resize_bilinear(images, out_h, out_w),
                                  ref.resize_bilinear(images, out_h, out_w))


def test_simd_variants_are_named_and_a_bad_name_is_refused():
    assert _image.SIMD == _image.SIMD_VARIANTS[0] == ext.SIMD
    assert set(_image.SIMD_VARIANTS) <= {"avx512", "avx2", "sse2", "neon", "generic"}
    for bad in ("mmx", "", 7, "avx512\x00x", "AVX512"):
        with pytest.raises(ValueError, match="^name: "):
            _image.use_simd(bad)
    assert _image.SIMD_VARIANTS[0] == _image.SIMD  # unchanged


@PROPERTY
@given(
    data=st.data(),
    images=image_batches(),
    out_h=sizes,
    out_w=sizes,
    dtype=st.sampled_from((np.int8, np.uint8, np.float32)),
)
def test_preprocess_exact(data, images, out_h, out_w, dtype):
    mean, std = data.draw(norm_params(channel_count(images)))
    scale, zp = data.draw(quant_params(np.int8 if dtype == np.float32 else dtype))
    if dtype == np.float32:
        scale, zp = None, None
    expected = ref.preprocess(images, out_h, out_w, mean, std, scale, zp, dtype)
    out = cy.preprocess(images, out_h, out_w, mean, std, scale, zp, dtype)
    assert out.shape == expected.shape and out.dtype == expected.dtype
    np.testing.assert_array_equal(out, expected)
    # and the spec's own definition: the unfused composition
    composed = ref.normalize(ref.resize_bilinear(images, out_h, out_w), mean, std)
    if dtype != np.float32:
        composed = ref.quantize(composed, scale, zp, dtype)
    np.testing.assert_array_equal(out, composed.reshape(out.shape))


@PROPERTY
@given(data=st.data(), images=image_batches(),
       dtype=st.sampled_from((np.int8, np.uint8, np.float32)))
def test_preprocess_at_the_images_own_size_is_the_lut_alone(data, images, dtype):
    """The kernel skips the resize for images already of the output size: same result."""
    mean, std = data.draw(norm_params(channel_count(images)))
    scale, zp = data.draw(quant_params(np.int8 if dtype == np.float32 else dtype))
    if dtype == np.float32:
        scale, zp = None, None
    h, w = images.shape[1:3]
    out = cy.preprocess(images, h, w, mean, std, scale, zp, dtype)
    np.testing.assert_array_equal(out, ref.preprocess(images, h, w, mean, std, scale, zp, dtype))
    np.testing.assert_array_equal(cy.resize_bilinear(images, h, w), images)


def logits(min_value=-100.0, max_value=100.0):
    return arrays(
        np.float32,
        st.tuples(st.integers(1, 8), st.integers(1, 20)),
        elements=st.floats(min_value, max_value, width=32),
    )


@PROPERTY
@given(x=logits(), temperature=st.floats(0.05, 10.0))
def test_softmax_close(x, temperature):
    np.testing.assert_allclose(
        cy.softmax(x, temperature), ref.softmax(x, temperature), rtol=RTOL, atol=ATOL
    )


@PROPERTY
@given(x=logits(-20.0, 20.0), raw=st.booleans())
def test_confidence_close(x, raw):
    probs = np.abs(x) / 20 if raw else ref.softmax(x)
    out, expected = cy.confidence(probs), ref.confidence(probs)
    np.testing.assert_array_equal(out.max_prob, expected.max_prob)
    np.testing.assert_array_equal(out.margin, expected.margin)
    np.testing.assert_allclose(out.entropy, expected.entropy, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(
        out.normalized_entropy, expected.normalized_entropy, rtol=RTOL, atol=ATOL
    )


@PROPERTY
@given(
    data=st.data(),
    dtype=st.sampled_from((np.int8, np.uint8, np.float32)),
    shape=st.tuples(st.integers(1, 8), st.integers(1, 20)),
    temperature=st.floats(0.1, 5.0),
    apply_softmax=st.booleans(),
)
def test_postprocess_close(data, dtype, shape, temperature, apply_softmax):
    if dtype == np.float32:
        outputs = data.draw(arrays(np.float32, shape, elements=st.floats(-30, 30, width=32)))
        scale, zp = None, None
    else:
        outputs = data.draw(arrays(dtype, shape))
        scale, zp = data.draw(quant_params(dtype))
    probs, labels, max_prob = cy.postprocess(outputs, scale, zp, temperature, apply_softmax)
    e_probs, e_labels, e_max = ref.postprocess(outputs, scale, zp, temperature, apply_softmax)
    np.testing.assert_array_equal(labels, e_labels)
    assert labels.dtype == np.int64
    np.testing.assert_allclose(probs, e_probs, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(max_prob, e_max, rtol=RTOL, atol=ATOL)


def test_kernels_run_concurrently_in_threads():
    """The GIL is released, so threads give the same results as a serial loop."""
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(7)
    frames = [rng.integers(0, 256, (1, 120, 160, 3), dtype=np.uint8) for _ in range(8)]
    args = (96, 96, [0.5], [0.25], 0.02, 0, np.int8)
    serial = [cy.preprocess(f, *args) for f in frames]
    with ThreadPoolExecutor(max_workers=4) as pool:
        threaded = list(pool.map(lambda f: cy.preprocess(f, *args), frames))
    for a, b in zip(serial, threaded, strict=True):
        np.testing.assert_array_equal(a, b)
