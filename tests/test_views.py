"""Inputs of any memory order give the same results as contiguous ones."""
import numpy as np
import pytest

import cbn
import reference as ref
from helpers import DTYPES, channel_axis, random_input


def variants(x, layout):
    """Views of x's values (same shape) with other memory layouts."""
    axis = channel_axis(layout, x.ndim)
    big = np.zeros((x.shape[0] * 2,) + x.shape[1:], x.dtype)
    big[::2] = x
    padded = np.zeros(x.shape[:-1] + (x.shape[-1] + 3,), x.dtype)
    padded[..., 1:-2] = x
    other_order = np.moveaxis(np.ascontiguousarray(np.moveaxis(x, axis, -1 if layout == "NCHW" else 1)),
                              -1 if layout == "NCHW" else 1, axis)
    readonly = x.copy()
    readonly.flags.writeable = False
    unaligned_buf = np.zeros(x.nbytes + x.itemsize, np.uint8)[1:1 + x.nbytes]
    unaligned = unaligned_buf.view(x.dtype).reshape(x.shape)
    unaligned[...] = x
    return {
        "fortran": np.asfortranarray(x),
        "batch-strided": big[::2],
        "last-axis-padded": padded[..., 1:-2],
        "negative-batch-stride": x[::-1].copy()[::-1],
        "negative-last-stride": x[..., ::-1].copy()[..., ::-1],
        "other-memory-order": other_order,
        "read-only": readonly,
        "unaligned": unaligned,
    }


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout,shape", [("NCHW", (3, 4, 5, 7)), ("NHWC", (3, 5, 7, 4)),
                                          ("NCHW", (5, 4)), ("NHWC", (2, 6, 4))])
def test_views_give_the_contiguous_result(layout, shape, dtype, rng):
    cls = {2: cbn.BatchNorm1d, 3: cbn.BatchNorm1d, 4: cbn.BatchNorm2d}[len(shape)]
    C = shape[channel_axis(layout, len(shape))]
    x = random_input(rng, shape, dtype)
    dy = random_input(rng, shape, dtype)
    base = cls(C, dtype=dtype, layout=layout)
    y0 = base(x)
    dx0 = base.backward(dy)
    for name, xv in variants(x, layout).items():
        np.testing.assert_array_equal(xv, x)
        for dyv in (dy, variants(dy, layout)[name]):
            bn = cls(C, dtype=dtype, layout=layout)
            y = bn(xv)
            dx = bn.backward(dyv)
            # the same values through the same arithmetic, up to the order of
            # the kernel view (channels-first vs channels-last blocks)
            np.testing.assert_allclose(y, y0, rtol=1e-6, atol=1e-6, err_msg=name)
            np.testing.assert_allclose(dx, dx0, rtol=1e-5, atol=1e-5, err_msg=name)
            np.testing.assert_allclose(bn.running_var, base.running_var, rtol=1e-6, err_msg=name)


def test_broadcast_input_is_read_correctly(rng):
    row = random_input(rng, (1, 3, 1, 5), np.float64)
    x = np.broadcast_to(row, (4, 3, 6, 5))  # zero strides
    bn = cbn.BatchNorm2d(3, dtype=np.float64)
    np.testing.assert_allclose(bn(x), ref.train_forward(np.array(x), 1)[0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_output_memory_order_follows_input(layout, rng):
    shape = (2, 3, 4, 5) if layout == "NCHW" else (2, 4, 5, 3)
    x = random_input(rng, shape, np.float32)
    bn = cbn.BatchNorm2d(3, layout=layout)
    assert bn(x).flags.c_contiguous
    # an NCHW array stored channels-last (PyTorch's channels_last) stays so
    if layout == "NCHW":
        stored_last = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
        y = bn(stored_last)
        assert y.transpose(0, 2, 3, 1).flags.c_contiguous
        np.testing.assert_allclose(y, bn(x), rtol=1e-6, atol=1e-6)


def test_input_is_not_modified(rng):
    x = random_input(rng, (4, 3, 5), np.float32)
    before = x.copy()
    bn = cbn.BatchNorm1d(3)
    bn(x)
    bn.backward(random_input(rng, (4, 3, 5), np.float32))
    np.testing.assert_array_equal(x, before)
