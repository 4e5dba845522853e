"""Bad arguments raise TypeError/ValueError whose message starts with the argument's name.

Runs against every available implementation: both share ext._validate, so
they must reject the same inputs in the same way.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

IMG = np.zeros((2, 8, 8, 3), dtype=np.uint8)
X = np.zeros((4, 5), dtype=np.float32)
Q = np.zeros((4, 5), dtype=np.int8)
MEAN, STD = [0.5], [0.25]
PRE = (4, 4, MEAN, STD, 0.02, 0, np.int8)

# (id, call(impl), exception, argument name)
CASES = [
    ("resize-list", lambda m: m.resize_bilinear([[[1]]], 2, 2), TypeError, "images"),
    (
        "resize-dtype",
        lambda m: m.resize_bilinear(IMG.astype(np.float32), 2, 2),
        ValueError,
        "images",
    ),
    ("resize-rank2", lambda m: m.resize_bilinear(IMG[0, :, :, 0], 2, 2), ValueError, "images"),
    ("resize-rank5", lambda m: m.resize_bilinear(IMG[None], 2, 2), ValueError, "images"),
    ("resize-empty", lambda m: m.resize_bilinear(IMG[:0], 2, 2), ValueError, "images: empty batch"),
    ("resize-zero-h", lambda m: m.resize_bilinear(IMG[:, :0], 2, 2), ValueError, "images"),
    ("resize-zero-c", lambda m: m.resize_bilinear(IMG[..., :0], 2, 2), ValueError, "images"),
    ("resize-out-h-0", lambda m: m.resize_bilinear(IMG, 0, 2), ValueError, "out_h"),
    ("resize-out-w-neg", lambda m: m.resize_bilinear(IMG, 2, -1), ValueError, "out_w"),
    ("resize-out-h-float", lambda m: m.resize_bilinear(IMG, 2.5, 2), TypeError, "out_h"),
    ("resize-out-w-bool", lambda m: m.resize_bilinear(IMG, 2, True), TypeError, "out_w"),
    ("normalize-std-0", lambda m: m.normalize(IMG, MEAN, [0.0]), ValueError, "std"),
    ("normalize-std-neg", lambda m: m.normalize(IMG, MEAN, [1.0, -1.0, 1.0]), ValueError, "std"),
    ("normalize-std-f32-0", lambda m: m.normalize(IMG, MEAN, [1e-50]), ValueError, "std"),
    ("normalize-mean-nan", lambda m: m.normalize(IMG, [float("nan")], STD), ValueError, "mean"),
    ("normalize-mean-len", lambda m: m.normalize(IMG, [0.1, 0.2], STD), ValueError, "mean"),
    ("normalize-mean-empty", lambda m: m.normalize(IMG, [], STD), ValueError, "mean"),
    ("normalize-mean-str", lambda m: m.normalize(IMG, "abc", STD), TypeError, "mean"),
    ("normalize-mean-2d", lambda m: m.normalize(IMG, [[0.1]], STD), ValueError, "mean"),
    ("normalize-empty", lambda m: m.normalize(IMG[:0], MEAN, STD), ValueError, "images: empty"),
    ("quantize-list", lambda m: m.quantize([1.0], 1.0, 0, np.int8), TypeError, "x"),
    ("quantize-f64", lambda m: m.quantize(X.astype(np.float64), 1.0, 0, np.int8), ValueError, "x"),
    ("quantize-scale-0", lambda m: m.quantize(X, 0.0, 0, np.int8), ValueError, "scale"),
    ("quantize-scale-neg", lambda m: m.quantize(X, -1.0, 0, np.int8), ValueError, "scale"),
    ("quantize-scale-nan", lambda m: m.quantize(X, float("nan"), 0, np.int8), ValueError, "scale"),
    ("quantize-scale-inf", lambda m: m.quantize(X, float("inf"), 0, np.int8), ValueError, "scale"),
    ("quantize-scale-f32-0", lambda m: m.quantize(X, 1e-50, 0, np.int8), ValueError, "scale"),
    ("quantize-scale-f32-inf", lambda m: m.quantize(X, 1e39, 0, np.int8), ValueError, "scale"),
    ("quantize-scale-str", lambda m: m.quantize(X, "1", 0, np.int8), TypeError, "scale"),
    ("quantize-zp-int8", lambda m: m.quantize(X, 1.0, 128, np.int8), ValueError, "zero_point"),
    ("quantize-zp-uint8", lambda m: m.quantize(X, 1.0, -1, np.uint8), ValueError, "zero_point"),
    ("quantize-zp-float", lambda m: m.quantize(X, 1.0, 1.5, np.int8), TypeError, "zero_point"),
    ("quantize-dtype", lambda m: m.quantize(X, 1.0, 0, np.int16), ValueError, "dtype"),
    ("quantize-dtype-f32", lambda m: m.quantize(X, 1.0, 0, np.float32), ValueError, "dtype"),
    ("quantize-dtype-junk", lambda m: m.quantize(X, 1.0, 0, "junk"), TypeError, "dtype"),
    ("dequantize-f32", lambda m: m.dequantize(X, 1.0, 0), ValueError, "q"),
    ("dequantize-scale", lambda m: m.dequantize(Q, 0.0, 0), ValueError, "scale"),
    ("dequantize-zp", lambda m: m.dequantize(Q.view(np.uint8), 1.0, 256), ValueError, "zero_point"),
    ("preprocess-images", lambda m: m.preprocess(IMG[:0], *PRE), ValueError, "images: empty"),
    ("preprocess-out-w", lambda m: m.preprocess(IMG, 4, 0, *PRE[2:]), ValueError, "out_w"),
    (
        "preprocess-std",
        lambda m: m.preprocess(IMG, 4, 4, MEAN, [0], 0.1, 0, np.int8),
        ValueError,
        "std",
    ),
    ("preprocess-dtype", lambda m: m.preprocess(IMG, *PRE[:-1], np.int32), ValueError, "dtype"),
    (
        "preprocess-scale-none",
        lambda m: m.preprocess(IMG, 4, 4, MEAN, STD, None, 0, np.int8),
        TypeError,
        "scale",
    ),
    (
        "preprocess-scale-0",
        lambda m: m.preprocess(IMG, 4, 4, MEAN, STD, 0.0, 0, np.uint8),
        ValueError,
        "scale",
    ),
    (
        "preprocess-zp",
        lambda m: m.preprocess(IMG, 4, 4, MEAN, STD, 0.1, 300, np.uint8),
        ValueError,
        "zero_point",
    ),
    (
        "preprocess-mean-len",
        lambda m: m.preprocess(IMG, 4, 4, [0, 0], STD, 0.1, 0, np.int8),
        ValueError,
        "mean",
    ),
    ("make-lut-std", lambda m: m.make_lut(MEAN, [-1], 0.1, 0, np.int8), ValueError, "std"),
    ("make-lut-dtype", lambda m: m.make_lut(MEAN, STD, 0.1, 0, np.float64), ValueError, "dtype"),
    ("make-lut-zp", lambda m: m.make_lut(MEAN, STD, 0.1, -200, np.int8), ValueError, "zero_point"),
    ("softmax-rank1", lambda m: m.softmax(X[0]), ValueError, "logits"),
    ("softmax-f64", lambda m: m.softmax(X.astype(np.float64)), ValueError, "logits"),
    ("softmax-empty", lambda m: m.softmax(X[:0]), ValueError, "logits: empty batch"),
    ("softmax-k0", lambda m: m.softmax(X[:, :0]), ValueError, "logits"),
    ("softmax-t0", lambda m: m.softmax(X, 0.0), ValueError, "temperature"),
    ("softmax-t-neg", lambda m: m.softmax(X, -1.0), ValueError, "temperature"),
    ("softmax-t-inf", lambda m: m.softmax(X, float("inf")), ValueError, "temperature"),
    ("softmax-t-str", lambda m: m.softmax(X, "hot"), TypeError, "temperature"),
    ("confidence-rank3", lambda m: m.confidence(X[None]), ValueError, "probs"),
    ("confidence-int8", lambda m: m.confidence(Q), ValueError, "probs"),
    ("confidence-empty", lambda m: m.confidence(X[:0]), ValueError, "probs: empty batch"),
    (
        "postprocess-dtype",
        lambda m: m.postprocess(Q.astype(np.int16), 1.0, 0),
        ValueError,
        "outputs",
    ),
    ("postprocess-empty", lambda m: m.postprocess(Q[:0], 1.0, 0), ValueError, "outputs: empty"),
    ("postprocess-scale", lambda m: m.postprocess(Q, 0.0, 0), ValueError, "scale"),
    ("postprocess-zp", lambda m: m.postprocess(Q, 1.0, 200), ValueError, "zero_point"),
    ("postprocess-t", lambda m: m.postprocess(Q, 1.0, 0, 0.0), ValueError, "temperature"),
    (
        "postprocess-flag",
        lambda m: m.postprocess(Q, 1.0, 0, 1.0, "yes"),
        TypeError,
        "apply_softmax",
    ),
]


@pytest.mark.parametrize(("call", "exc", "name"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_argument_is_named(impl, call, exc, name):
    with pytest.raises(exc) as info:
        call(impl)
    assert str(info.value).startswith(name), str(info.value)


def test_inputs_are_not_modified(impl):
    images = np.arange(2 * 5 * 6 * 3, dtype=np.int64).astype(np.uint8).reshape(2, 5, 6, 3)
    before = images.copy()
    impl.preprocess(images, 3, 3, MEAN, STD, 0.1, 0, np.int8)
    impl.resize_bilinear(images, 7, 7)
    impl.normalize(images, MEAN, STD)
    np.testing.assert_array_equal(images, before)
    logits = np.float32([[3.0, 1.0, 2.0]])
    impl.softmax(logits)
    impl.postprocess(logits, None, None)
    np.testing.assert_array_equal(logits, [[3.0, 1.0, 2.0]])


def test_bad_preprocess_parameters_are_refused_after_good_ones_equal_to_them(impl):
    """The compiled preprocess remembers parameters it has checked; one that compares equal
    to them but is not valid (True for 1, 0.0 for 0, a shorter list) is still refused."""
    good = (IMG, 4, 4, [0.5, 0.5, 0.5], [0.25, 0.25, 0.25], 1, 0, "int8")
    for _ in range(2):
        impl.preprocess(*good)
    for index, bad, exc, name in [
        (5, True, TypeError, "scale"),
        (6, False, TypeError, "zero_point"),
        (6, 0.0, TypeError, "zero_point"),
        (3, [0.5, 0.5], ValueError, "mean"),
        (4, np.array([0.25, 0.25, 0.0]), ValueError, "std"),
        (7, "int16", ValueError, "dtype"),
    ]:
        args = list(good)
        args[index] = bad
        with pytest.raises(exc, match=f"^{name}"):
            impl.preprocess(*args)
    # many different parameter sets: all answered, the memory of them stays bounded
    for k in range(100):
        impl.preprocess(IMG, 2, 2, [k / 100], [0.25], 1, 0, "uint8")
    if impl.name == "cython":
        from ext import _image

        assert len(_image._PLANS) <= _image._MAX_PLANS


@settings(max_examples=500, deadline=None)
@given(value=st.floats(allow_nan=False, allow_infinity=False)
       | st.sampled_from([1e-46, 7e-46, 1.4e-45, 1e-44, 3.4e38, 3.4028234e38,
                          3.40282356e38, 3.4028236e38, 3.5e38]))
def test_positive_accepts_exactly_what_stays_finite_and_above_zero_in_float32(value):
    """The fast range check and the float32 rounding decide alike, at the edges too."""
    from ext import _validate

    with np.errstate(over="ignore"):
        as_f32 = np.float32(value)
    if value > 0 and as_f32 > 0 and np.isfinite(as_f32):
        assert _validate.positive(value, "scale") == value
    else:
        with pytest.raises(ValueError, match="^scale: "):
            _validate.positive(value, "scale")
