"""The layers' compiled call path (src/_call.pyx) against their Python path.

One table of calls, good and bad, runs through both: each must give the same
result bitwise, the same warnings, the same error (type and message) and the
same state after. A hook raises at each step of the compiled path in turn:
the layer must be whole after each.
"""
import warnings

import numpy as np
import pytest

import cbn
from cbn import _call
from helpers import random_input

try:
    import ml_dtypes
except ImportError:   # bfloat16 cases skip
    ml_dtypes = None

F32, F64 = np.float32, np.float64
INT64_MAX = int(np.iinfo(np.int64).max)


def data(shape, dtype=F32, seed=0):
    return random_input(np.random.default_rng(seed), shape, dtype)


def trained(make, shape, dtype=F32, mode="train", **options):
    """A layer after one training forward (running statistics not the initial
    ones; on twice the batch), in the mode asked for."""
    bn = make(shape[1] if options.get("layout", "NCHW") == "NCHW" else shape[-1], dtype=dtype,
              **options)
    bn(data((2 * shape[0],) + shape[1:], dtype, seed=1))
    return bn.train(mode == "train")


def fingerprint(bn):
    """Everything a call may change, by value (the saved forward through the
    SavedForward it converts to)."""
    values = {k: None if getattr(bn, k) is None else np.array(getattr(bn, k), copy=True)
              for k in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked",
                        "grad_weight", "grad_bias")}
    saved = bn._last_forward
    if saved is not None:
        piece = saved.pieces[0]
        values["saved"] = (saved.batch_stats, saved.overwritten, saved.canon.shape,
                           saved.canon.kind, np.array(piece.backward_stats()),
                           None if piece.weight is None else piece.weight.copy(),
                           None if piece.relu_coef is None else piece.relu_coef.copy())
    return values


def same(a, b):
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.dtype == b.dtype
                and a.shape == b.shape
                and np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes())
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(same(u, v) for u, v in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


def outcome(case, compiled):
    """(result or error, warnings, state after) of one case on a fresh layer."""
    _call.set_enabled(compiled)
    try:
        bn, call = case()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                result = call(bn)
            except (TypeError, ValueError, AttributeError) as error:
                result = (type(error), str(error))
        return (result, [(w.category, str(w.message), w.filename) for w in caught],
                fingerprint(bn))
    finally:
        _call.set_enabled(True)


def forward(make, shape, dtype=F32, mode="train", out=None, **options):
    def case():
        bn = trained(make, shape, dtype, mode, **options)
        x = data(shape, dtype)
        return bn, lambda bn: bn(x, out=None if out is None else out(x))
    return case


def forward_backward(make, shape, dtype=F32, mode="train", out=None, dy=None, **options):
    def case():
        bn = trained(make, shape, dtype, mode, **options)
        x = data(shape, dtype)
        g = data(shape, dtype, seed=2) if dy is None else dy(x)

        def call(bn):
            y = bn(x)
            return y, bn.backward(g, out=None if out is None else out(x, g))
        return bn, call
    return case


def special(prepare, shape=(6, 3, 2, 2), **options):
    """A training forward and backward on a layer prepare() has set up first."""
    def case():
        bn = trained(cbn.BatchNorm2d, shape, **options)
        x = data(shape)
        prepare(bn, x)

        def call(bn):
            y = bn(x)
            return y, bn.backward(data(shape, seed=3))
        return bn, call
    return case


def set_count(bn, x):
    bn.num_batches_tracked = INT64_MAX


def in_place_then_backward():
    bn = trained(cbn.BatchNorm2d, (4, 3, 2, 2))
    x = data((4, 3, 2, 2))
    return bn, lambda bn: (bn(x, out=x), bn.backward(data((4, 3, 2, 2))))


BN1, BN2, BN3 = cbn.BatchNorm1d, cbn.BatchNorm2d, cbn.BatchNorm3d
CASES = {
    # the common case, every layer, layout, mode and option
    "1d-2D": forward_backward(BN1, (60, 100)),
    "1d-3D": forward_backward(BN1, (5, 7, 13)),
    "1d-one-channel": forward_backward(BN1, (9, 1)),
    "1d-3D-NHWC": forward_backward(BN1, (5, 13, 7), layout="NHWC"),
    "2d": forward_backward(BN2, (16, 16, 8, 8)),
    "2d-NHWC": forward_backward(BN2, (4, 3, 5, 7), layout="NHWC"),
    "2d-NHWC-one-channel": forward_backward(BN2, (4, 3, 5, 1), layout="NHWC"),
    "2d-no-spatial": forward_backward(BN2, (8, 5, 1, 1)),
    "3d": forward_backward(BN3, (2, 3, 4, 5, 3)),
    "float64": forward_backward(BN2, (4, 3, 5, 7), F64),
    "float16": forward_backward(BN2, (4, 3, 5, 7), np.float16),
    "float16-overflow": forward_backward(BN2, (4, 3, 5, 7), np.float16,
                                         dy=lambda x: np.full_like(x, 6e4)),
    "eval": forward_backward(BN2, (4, 3, 5, 7), mode="eval"),
    "eval-NHWC": forward_backward(BN2, (4, 3, 5, 7), mode="eval", layout="NHWC"),
    "eval-float64": forward_backward(BN1, (60, 100), F64, mode="eval"),
    "eval-no-affine": forward_backward(BN2, (4, 3, 5, 7), mode="eval", affine=False),
    "eval-relu": forward_backward(BN2, (4, 3, 5, 7), mode="eval", activation="relu"),
    "eval-untracked": forward_backward(BN2, (4, 3, 5, 7), mode="eval", track_running_stats=False),
    "untracked": forward_backward(BN2, (4, 3, 5, 7), track_running_stats=False),
    "no-affine": forward_backward(BN2, (4, 3, 5, 7), affine=False),
    "relu": forward_backward(BN2, (4, 3, 5, 7), activation="relu"),
    "cumulative": forward_backward(BN2, (4, 3, 5, 7), momentum=None),
    "debiased": forward_backward(BN2, (4, 3, 5, 7), bias_correction=True),
    "momentum-0": forward_backward(BN2, (4, 3, 5, 7), momentum=0.0),
    "whole-virtual-batch": forward_backward(BN2, (4, 3, 5, 7), virtual_batch_size=4),
    "out": forward_backward(BN2, (4, 3, 5, 7), out=lambda x, g: np.empty_like(x)),
    "out-dy-in-place": forward_backward(BN2, (4, 3, 5, 7), out=lambda x, g: g),
    "forward-out": forward(BN2, (4, 3, 5, 7), out=np.empty_like),
    "forward-in-place": forward(BN2, (4, 3, 5, 7), out=lambda x: x),
    "eval-in-place": forward(BN2, (4, 3, 5, 7), mode="eval", out=lambda x: x),
    "nan-channel": special(lambda bn, x: x.__setitem__((1, 2, 0, 0), np.nan)),
    "inf-channel-debiased": special(lambda bn, x: x.__setitem__((0, 1), np.inf),
                                    bias_correction=True),
    "running-var-overflow": special(lambda bn, x: (x.__imul__(1e20), None)),
    "float16-y-overflow": lambda: (lambda bn: (bn.weight.fill(1e5), (bn, lambda bn: bn(
        data((4, 3, 5, 7), np.float16))))[1])(trained(BN2, (4, 3, 5, 7), np.float16)),
    # what the compiled path leaves to the Python path
    "virtual-batches": forward_backward(BN2, (4, 3, 5, 7), virtual_batch_size=2),
    "strided": forward_backward(BN2, (4, 3, 5, 7), dy=lambda x: data((4, 3, 5, 14))[..., ::2]),
    "forward-out-fortran": forward(BN2, (4, 3, 5, 7), out=lambda x: np.empty(x.shape, F32, "F")),
    # bad calls: the same error from both
    "count-full": special(set_count),
    "in-place-then-backward": in_place_then_backward,
    "backward-first": lambda: (BN2(3), lambda bn: bn.backward(data((2, 3, 2, 2)))),
    "dy-shape": forward_backward(BN2, (4, 3, 5, 7), dy=lambda x: data((4, 3, 5, 6))),
    "dy-dtype": forward_backward(BN2, (4, 3, 5, 7), dy=lambda x: data(x.shape, F64)),
    "dy-list": forward_backward(BN2, (4, 3, 5, 7), dy=lambda x: x.tolist()),
    "dx-overlapping-x": forward_backward(BN2, (4, 3, 5, 7), out=lambda x, g: x),
    "dx-read-only": forward_backward(
        BN2, (4, 3, 5, 7), out=lambda x, g: np.broadcast_to(np.empty(1, F32), x.shape)),
    "out-shape": forward(BN2, (4, 3, 5, 7), out=lambda x: np.empty((4, 3, 5, 6), F32)),
    "out-dtype": forward(BN2, (4, 3, 5, 7), out=lambda x: np.empty(x.shape)),
    "out-overlap": forward(BN2, (4, 3, 5, 7), out=lambda x: x[:, :, ::-1]),
    "out-shifted": forward(BN2, (4, 3, 5, 7), out=lambda x: np.lib.stride_tricks.as_strided(
        x.reshape(-1)[3:], x.shape, x.strides)),
    "out-x-other-strides": forward(BN2, (8, 5, 1, 1), out=lambda x: (
        np.lib.stride_tricks.as_strided(x, x.shape, (x.strides[0], x.strides[1], 0, 0)))),
    "dx-dy-other-strides": forward_backward(BN2, (8, 5, 1, 1), out=lambda x, g: (
        np.lib.stride_tricks.as_strided(g, g.shape, (g.strides[0], g.strides[1], 0, 0)))),
    "read-only-running-mean": special(
        lambda bn, x: bn.running_mean.setflags(write=False)),
    "training-1": special(lambda bn, x: setattr(bn, "training", 1)),
    "track-running-stats-0": special(lambda bn, x: setattr(bn, "track_running_stats", 0)),
    "activation-other": special(lambda bn, x: setattr(bn, "activation", "gelu")),
    "bias-correction-numpy-bool": special(lambda bn, x: setattr(bn, "bias_correction",
                                                                np.True_)),
    "one-value-per-channel": forward(BN2, (1, 3, 1, 1)),
    "eval-one-value": forward(BN2, (1, 3, 1, 1), mode="eval"),
}

class Buffers:
    """What cbn.functional.batch_norm changes: the caller's running statistics."""

    def __init__(self, C, dtype=F32, seed=4):
        rng = np.random.default_rng(seed)
        self.running_mean = rng.standard_normal(C).astype(dtype)
        self.running_var = rng.uniform(0.5, 2, C).astype(dtype)
        self.weight = rng.uniform(0.5, 2, C).astype(dtype)
        self.bias = rng.standard_normal(C).astype(dtype)
        self.num_batches_tracked = self.grad_weight = self.grad_bias = None
        self._last_forward = None


def functional(shape, dtype=F32, layout="NCHW", prepare=None, out=None, **kwargs):
    """cbn.functional.batch_norm with the caller's buffers (kwargs override them)."""
    def case():
        C = shape[1] if layout == "NCHW" else shape[-1]
        buffers = Buffers(C, np.float32 if np.dtype(dtype).itemsize == 2 else dtype)
        x = data(shape, dtype)
        if prepare is not None:
            prepare(x)
        arguments = dict(running_mean=buffers.running_mean, running_var=buffers.running_var,
                         weight=buffers.weight, bias=buffers.bias, training=True,
                         momentum=0.1, eps=1e-5)
        arguments.update(kwargs)

        def call(buffers):
            return cbn.functional.batch_norm(x, layout=layout,
                                             out=None if out is None else out(x), **arguments)
        return buffers, call
    return case


CASES.update({
    "functional-train": functional((60, 100)),
    "functional-train-NCHW": functional((4, 3, 5, 7)),
    "functional-train-NHWC": functional((4, 5, 7, 3), layout="NHWC"),
    "functional-float64": functional((4, 3, 5, 7), F64),
    "functional-float16": functional((4, 3, 5, 7), np.float16),
    "functional-eval": functional((4, 3, 5, 7), training=False),
    "functional-no-running": functional((4, 3, 5, 7), running_mean=None, running_var=None),
    "functional-no-affine": functional((4, 3, 5, 7), weight=None, bias=None),
    "functional-in-place": functional((4, 3, 5, 7), out=lambda x: x),
    "functional-out": functional((4, 3, 5, 7), out=np.empty_like),
    "functional-nan": functional((4, 3, 5, 7), prepare=lambda x: x.__setitem__((0, 1), np.nan)),
    "functional-training-int": functional((4, 3, 5, 7), training=1),
    "functional-momentum-int": functional((4, 3, 5, 7), momentum=1),
    "functional-momentum-bad": functional((4, 3, 5, 7), momentum=1.5),
    "functional-eps-bad": functional((4, 3, 5, 7), eps=0.0),
    "functional-eps-nan": functional((4, 3, 5, 7), eps=float("nan")),
    "functional-layout-bad": functional((4, 3, 5, 7), layout="NWHC"),
    "functional-eval-no-running": functional((4, 3, 5, 7), training=False, running_mean=None,
                                             running_var=None),
    "functional-one-running": functional((4, 3, 5, 7), running_var=None),
    "functional-strided-weight": functional((4, 3, 5, 7),
                                            weight=np.ones(6, F32)[::2]),
    "functional-read-only-running": functional(
        (4, 3, 5, 7), running_mean=np.broadcast_to(np.zeros(1, F32), (3,))),
    "functional-float64-weight": functional((4, 3, 5, 7), weight=np.ones(3)),
    "functional-big-endian-weight": functional((4, 3, 5, 7), weight=np.ones(3, ">f4")),
    "functional-big-endian-running": functional(
        (4, 3, 5, 7), running_mean=np.zeros(3, ">f4"), running_var=np.ones(3, ">f4")),
    "functional-momentum-negative-zero": functional((4, 3, 5, 7), momentum=-0.0,
                                                    running_mean=np.zeros(3, F32)),
    "functional-one-value": functional((1, 3, 1, 1)),
    "functional-big-endian": lambda: (Buffers(3), lambda b: cbn.functional.batch_norm(
        data((4, 3, 5, 7)).astype(">f4"), b.running_mean, b.running_var, training=True)),
})

BAD_X = {
    "ndim": data((2, 3, 4)), "channels": data((2, 4, 4, 4)), "float64": data((2, 3, 4, 4), F64),
    "big-endian": data((2, 3, 4, 4)).astype(">f4"), "list": [[1.0]], "none": None,
    "masked": np.ma.masked_array(data((2, 3, 4, 4))), "empty": np.ones((0, 3, 4, 4), F32),
    "zero-width": np.ones((2, 3, 4, 0), F32), "int": np.ones((2, 3, 4, 4), np.int32),
}
for name, bad in BAD_X.items():
    CASES[f"x-{name}"] = (lambda bad: lambda: (trained(BN2, (2, 3, 4, 4)),
                                               lambda bn: bn(bad)))(bad)
    CASES[f"x-{name}-eval"] = (lambda bad: lambda: (trained(BN2, (2, 3, 4, 4), mode="eval"),
                                                    lambda bn: bn(bad)))(bad)
if ml_dtypes is not None:
    CASES["bfloat16"] = forward_backward(BN2, (4, 3, 5, 7), ml_dtypes.bfloat16)
    CASES["bfloat16-eval"] = forward_backward(BN2, (4, 3, 5, 7), ml_dtypes.bfloat16, mode="eval")


@pytest.mark.parametrize("name", CASES)
def test_both_paths_give_the_same_results_warnings_errors_and_state(name):
    compiled = outcome(CASES[name], True)
    python = outcome(CASES[name], False)
    assert same(compiled[0], python[0]), (compiled[0], python[0])
    assert compiled[1] == python[1]
    assert same(compiled[2], python[2])


def test_the_common_case_takes_the_compiled_path():
    """(Else the comparison above would compare the Python path with itself.)"""
    bn = cbn.BatchNorm2d(3)
    x = data((4, 3, 5, 7))
    bn(x)
    assert type(bn._saved) is _call.CompiledForward
    bn.backward(x)
    assert _call.steps_reached() == BACKWARD_STEPS
    bn(x[:, :, :, ::2])   # a strided view: the Python path
    assert type(bn._saved) is not _call.CompiledForward


def test_a_forward_set_on_the_instance_is_what_a_call_runs():
    """bn(x) calls bn.forward, also one set on the instance (as Python would)."""
    bn = trained(BN2, (4, 3, 5, 7))
    bn.forward = lambda x, out=None: "patched"
    assert bn(data((4, 3, 5, 7))) == "patched"


def test_an_unpickled_layer_takes_the_compiled_path():
    """Its dtype is a copy of the dtype object, not NumPy's own."""
    import pickle
    bn = pickle.loads(pickle.dumps(trained(BN2, (4, 3, 5, 7))))
    bn(data((4, 3, 5, 7)))
    assert type(bn._saved) is _call.CompiledForward


TRAIN_STEPS, EVAL_STEPS, BACKWARD_STEPS = 7, 5, 4
OPERATIONS = {
    "train": (lambda: trained(BN2, (4, 3, 5, 7)), lambda bn, x: bn(x), TRAIN_STEPS),
    "train-relu-debiased": (lambda: trained(BN1, (60, 100), activation="relu",
                                            bias_correction=True),
                            lambda bn, x: bn(x), TRAIN_STEPS),
    "train-untracked": (lambda: trained(BN2, (4, 3, 5, 7), track_running_stats=False),
                        lambda bn, x: bn(x), TRAIN_STEPS),
    "eval": (lambda: trained(BN2, (4, 3, 5, 7), mode="eval"), lambda bn, x: bn(x), EVAL_STEPS),
    "backward": (lambda: (lambda bn: (bn(data((4, 3, 5, 7))), bn)[1])(trained(BN2, (4, 3, 5, 7))),
                 lambda bn, x: bn.backward(x), BACKWARD_STEPS),
    "eval-backward": (lambda: (lambda bn: (bn(data((4, 3, 5, 7))), bn)[1])(
        trained(BN2, (4, 3, 5, 7), mode="eval")), lambda bn, x: bn.backward(x), BACKWARD_STEPS),
}


FUNCTIONAL_STEPS = 4
OPERATIONS.update({
    "functional-train": (lambda: Buffers(3), lambda b, x: cbn.functional.batch_norm(
        x, b.running_mean, b.running_var, b.weight, b.bias, training=True), FUNCTIONAL_STEPS),
})


class Fault(Exception):
    pass


def raise_fault(step):
    raise Fault(step)


@pytest.mark.parametrize("name", OPERATIONS)
def test_a_fault_at_any_step_of_the_compiled_path_leaves_the_layer_whole(name):
    make, call, steps = OPERATIONS[name]
    x = data((60, 100) if "debiased" in name else (4, 3, 5, 7), seed=5)
    reference = make()
    before = fingerprint(reference)
    call(reference, x)
    assert _call.steps_reached() == steps
    assert not same(fingerprint(reference), before)   # the call changes the layer
    for k in range(steps):
        bn = make()
        before, saved = fingerprint(bn), getattr(bn, "_saved", None)
        _call.set_step_hook(k, raise_fault)
        try:
            with pytest.raises(Fault):
                call(bn, x)
        finally:
            _call.set_step_hook(-1, None)
        assert _call.steps_reached() == k + 1
        assert same(fingerprint(bn), before), f"changed by a fault at {k}"
        if isinstance(bn, cbn.batchnorm.BatchNormBase):
            assert bn._saved is saved and not bn._state_lock.locked()
        call(bn, x)   # and it still works
        assert same(fingerprint(bn), fingerprint(reference))


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_the_lock_is_held_for_training_steps_and_not_for_eval_kernels(mode):
    """Training forwards hold the layer's lock from their first read of its
    state to the commit; eval forwards only while they copy what they
    normalise with, not around the kernels (steps 2 and 3 are just before and
    after them)."""
    bn = trained(BN2, (4, 3, 5, 7), mode=mode)
    held = {}
    steps = TRAIN_STEPS if mode == "train" else EVAL_STEPS
    for k in range(steps):
        _call.set_step_hook(k, lambda step: held.setdefault(step, bn._state_lock.locked()))
        try:
            bn(data((4, 3, 5, 7)))
        finally:
            _call.set_step_hook(-1, None)
    expected = {k: 1 <= k <= 6 for k in range(steps)} if mode == "train" else \
        {0: False, 1: True, 2: False, 3: False, 4: False}
    assert held == expected


def test_a_shallow_copy_in_eval_mode_normalises_with_the_shared_running_statistics():
    import copy
    bn = trained(BN2, (4, 3, 5, 7))
    twin = copy.copy(bn).eval()
    x = data((4, 3, 5, 7), seed=9)
    bn(x)   # moves the shared statistics
    _call.set_enabled(False)
    try:
        expected = copy.copy(twin)(x)
    finally:
        _call.set_enabled(True)
    assert same(twin(x), expected)
