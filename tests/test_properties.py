"""Property-based tests: random shapes, layouts, dtypes, strides and
train/eval sequences against the float64 reference.

CI runs the derandomized "ci" profile (the same examples every run);
HYPOTHESIS_PROFILE=long tries many more, with fresh randomness.
"""
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import cbn
import reference as ref
from cbn import functional as F

settings.register_profile("ci", max_examples=150, derandomize=True, deadline=None,
                          print_blob=True, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=3000, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

LAYERS = {2: cbn.BatchNorm1d, 3: cbn.BatchNorm1d, 4: cbn.BatchNorm2d, 5: cbn.BatchNorm3d}


@st.composite
def tensor_specs(draw):
    """(shape, layout, dtype, memory order, steps) of an input."""
    ndim = draw(st.sampled_from(sorted(LAYERS)))
    shape = tuple(draw(st.lists(st.integers(1, 7), min_size=ndim, max_size=ndim)))
    layout = draw(st.sampled_from(["NCHW", "NHWC"]))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    order = draw(st.permutations(range(ndim)))          # axes from slowest to fastest in memory
    steps = tuple(draw(st.lists(st.sampled_from([1, 1, 2, -1, -2]), min_size=ndim, max_size=ndim)))
    return shape, layout, dtype, tuple(order), steps


def strided(values, order, steps, rng):
    """values (shape, dtype kept) in a view with the given memory order and steps;
    the elements the view skips hold random values."""
    big = [n * abs(s) for n, s in zip(values.shape, steps)]
    memory = rng.standard_normal([big[a] for a in order]).astype(values.dtype)
    view = np.transpose(memory, np.argsort(order))[tuple(slice(None, None, s) for s in steps)]
    view[...] = values
    return view


def close(got, want, dtype, conditioning):
    """Compare with the reference; conditioning: |mean| / std of the data, which
    float32 coefficients y = a * x + b lose digits to."""
    base = 2e-5 if dtype == np.float32 else 1e-11
    scale = max(1.0, float(np.max(np.abs(want)))) if np.size(want) else 1.0
    np.testing.assert_allclose(got, want, rtol=base, atol=base * scale * (1 + conditioning))


class Data:
    """Random batches with channel means offset by up to `offset` and spread `scale`."""

    def __init__(self, seed, spec, offset, scale):
        self.rng = np.random.default_rng(seed)
        self.shape, self.layout, self.dtype, self.order, self.steps = spec
        self.offset, self.scale = offset, scale
        self.axis = 1 if self.layout == "NCHW" else len(self.shape) - 1
        self.C = self.shape[self.axis]
        self.conditioning = offset / scale

    def batch(self):
        values = self.rng.standard_normal(self.shape) * self.scale \
            + ref.expand(self.rng.uniform(-self.offset, self.offset, self.C), len(self.shape),
                         self.axis)
        return strided(values.astype(self.dtype), self.order, self.steps, self.rng)

    def channel_vector(self, low, high):
        return self.rng.uniform(low, high, self.C).astype(self.dtype)


@given(spec=tensor_specs(), seed=st.integers(0, 2 ** 32 - 1),
       offset=st.sampled_from([0.0, 1.0, 30.0]), scale=st.sampled_from([0.1, 1.0, 20.0]),
       momentum=st.one_of(st.none(), st.floats(0.0, 1.0)),
       eps=st.sampled_from([1e-5, 1e-3, 0.1]), affine=st.booleans(),
       program=st.lists(st.tuples(st.sampled_from(["train", "eval"]), st.booleans()),
                        min_size=1, max_size=5))
def test_layer_sequences_match_the_reference(spec, seed, offset, scale, momentum, eps, affine,
                                             program):
    data = Data(seed, spec, offset, scale)
    dtype, axis, C = data.dtype, data.axis, data.C
    bn = LAYERS[len(data.shape)](C, eps=eps, momentum=momentum, affine=affine, dtype=dtype,
                                 layout=data.layout)
    weight = bias = None
    if affine:
        bn.weight, bn.bias = data.channel_vector(0.5, 2.0), data.channel_vector(-1.0, 1.0)
        weight, bias = bn.weight.astype(np.float64), bn.bias.astype(np.float64)
    running = ref.RunningStats(C, momentum)
    per_channel = int(np.prod(data.shape)) // C
    for mode, backward in program:
        bn.train(mode == "train")
        x = data.batch()
        if mode == "train" and per_channel == 1:
            before = {k: v.copy() for k, v in bn.state_dict().items()}
            with pytest.raises(ValueError, match="x: expected more than 1 value per channel"):
                bn(x)
            for k, v in bn.state_dict().items():
                np.testing.assert_array_equal(v, before[k])
            continue
        y = bn(x)
        assert y.shape == x.shape and y.dtype == dtype
        if mode == "train":
            want, _, _, _ = ref.train_forward(x, axis, weight, bias, eps)
            running.update(x, axis)
        else:
            want = ref.normalize(x, axis, running.mean, running.var, weight, bias, eps)
        conditioning = data.conditioning if mode == "train" else \
            float(np.max(np.abs(running.mean) / np.sqrt(running.var + eps)))
        close(y, want, dtype, conditioning)
        if backward:
            dy = data.batch()
            dx = bn.backward(dy)
            if mode == "train":
                want_dx, want_dw, want_db = ref.train_backward(dy, x, axis, weight, eps)
            else:
                want_dx, want_dw, want_db = ref.eval_backward(dy, x, axis, running.mean,
                                                              running.var, weight, eps)
            close(dx, want_dx, dtype, conditioning)
            if affine:
                close(bn.grad_weight, want_dw, dtype, conditioning)
                close(bn.grad_bias, want_db, dtype, conditioning)
        close(bn.running_mean, running.mean, dtype, 0)
        close(bn.running_var, running.var, dtype, 0)
        assert bn.num_batches_tracked == running.steps


@given(spec=tensor_specs(), seed=st.integers(0, 2 ** 32 - 1),
       offset=st.sampled_from([0.0, 1.0, 30.0]), scale=st.sampled_from([0.1, 1.0, 20.0]),
       eps=st.sampled_from([1e-5, 1e-3, 0.1]), affine=st.booleans())
def test_functional_forward_backward_match_the_reference(spec, seed, offset, scale, eps, affine):
    data = Data(seed, spec, offset, scale)
    assume(int(np.prod(data.shape)) // data.C > 1)   # one value per channel: tested above
    x, dy = data.batch(), data.batch()
    weight = data.channel_vector(0.5, 2.0) if affine else None
    bias = data.channel_vector(-1.0, 1.0) if affine else None
    y, mean, invstd = F.batch_norm_forward(x, weight, bias, eps, layout=data.layout)
    w64 = None if weight is None else weight.astype(np.float64)
    b64 = None if bias is None else bias.astype(np.float64)
    want_y, want_mean, want_var, _ = ref.train_forward(x, data.axis, w64, b64, eps)
    close(y, want_y, data.dtype, data.conditioning)
    close(mean, want_mean, data.dtype, 0)
    close(invstd, 1 / np.sqrt(want_var + eps), data.dtype, 0)
    dx, dw, db = F.batch_norm_backward(dy, x, mean, invstd, weight, layout=data.layout)
    want_dx, want_dw, want_db = ref.train_backward(dy, x, data.axis, w64, eps)
    close(dx, want_dx, data.dtype, data.conditioning)
    close(dw, want_dw, data.dtype, data.conditioning)
    close(db, want_db, data.dtype, data.conditioning)
