"""Shapes, layouts and tolerances shared by the tests."""
import numpy as np
import pytest

import cbn

# (layer class, layout) -> list of shapes, channel axis derived from layout
LAYER_SHAPES = {
    cbn.BatchNorm1d: [(7, 3), (5, 13), (3, 1, 7), (1, 3, 13), (4, 13, 1)],
    cbn.BatchNorm2d: [(3, 3, 7, 5), (1, 1, 3, 7), (2, 13, 1, 1), (4, 33, 3, 3), (5, 3, 1, 7)],
    cbn.BatchNorm3d: [(2, 3, 3, 5, 7), (1, 7, 2, 3, 3)],
}
DTYPES = [np.float32, np.float64]
LAYOUTS = ["NCHW", "NHWC"]


def to_layout(shape_nchw, layout):
    """The NHWC shape for an NCHW-ordered shape (channels moved last)."""
    if layout == "NCHW":
        return tuple(shape_nchw)
    return (shape_nchw[0],) + tuple(shape_nchw[2:]) + (shape_nchw[1],)


def channel_axis(layout, ndim):
    return 1 if layout == "NCHW" else ndim - 1


def channels_of(shape, layout):
    """(channel axis, channel count) of an input of shape in layout."""
    axis = channel_axis(layout, len(shape))
    return axis, shape[axis]


def random_input(rng, shape, dtype, scale=2.0, offset=0.5):
    """Random data with per-channel-ish structure; never zeros."""
    return (rng.standard_normal(shape) * scale + offset).astype(dtype)


def tol(dtype):
    """(rtol, atol) for comparing a kernel result with the float64 reference."""
    return (2e-5, 2e-5) if np.dtype(dtype) == np.float32 else (1e-11, 1e-11)


def layer_cases():
    for cls, shapes in LAYER_SHAPES.items():
        for shape in shapes:
            for layout in LAYOUTS:
                yield pytest.param(cls, to_layout(shape, layout), layout,
                                   id=f"{cls.__name__}-{layout}-{'x'.join(map(str, shape))}")


def layer_with_random_state(cls, shape, layout, dtype, rng):
    """(layer, channel axis) for inputs of shape: random weight, bias and
    running statistics (running_var in [0.5, 2))."""
    axis = channel_axis(layout, len(shape))
    C = shape[axis]
    bn = cls(C, dtype=dtype, layout=layout)
    bn.weight[...] = rng.standard_normal(C)
    bn.bias[...] = rng.standard_normal(C)
    bn.running_mean[...] = rng.standard_normal(C)
    bn.running_var[...] = rng.uniform(0.5, 2.0, C)
    return bn, axis


def torch_bfloat16_batchnorm(torch, C):
    """torch.nn.BatchNorm2d(C) in bfloat16, with random weight, bias and
    running statistics (a checkpoint worth loading)."""
    module = torch.nn.BatchNorm2d(C).to(torch.bfloat16)
    with torch.no_grad():
        for t in (module.weight, module.bias, module.running_mean):
            t.copy_(torch.randn(C))
        module.running_var.copy_(torch.rand(C) + 0.5)
    return module
