"""Layers survive pickle, copy and deepcopy with identical behaviour."""
import copy
import pickle

import numpy as np
import pytest

import cbn
from fake_mpi import FakeWorld
from helpers import random_input

COPIERS = {
    "pickle": lambda layer: pickle.loads(pickle.dumps(layer)),
    "pickle-protocol-2": lambda layer: pickle.loads(pickle.dumps(layer, protocol=2)),
    "deepcopy": copy.deepcopy,
}

LAYERS = [
    (lambda: cbn.BatchNorm1d(5), (9, 5)),
    (lambda: cbn.BatchNorm1d(5, dtype=np.float64, momentum=None), (4, 5, 7)),
    (lambda: cbn.BatchNorm2d(6, layout="NHWC", activation="relu"), (3, 4, 5, 6)),
    (lambda: cbn.BatchNorm2d(6, affine=False, bias_correction=True), (3, 6, 4, 5)),
    (lambda: cbn.BatchNorm2d(6, track_running_stats=False), (3, 6, 4, 5)),
    (lambda: cbn.BatchNorm1d(5, virtual_batch_size=3), (9, 5)),
    (lambda: cbn.BatchNorm3d(4, eps=1e-3, momentum=0.3), (2, 4, 3, 3, 5)),
    (lambda: cbn.BatchRenorm2d(6, rmax=1.5, dmax=0.5), (3, 6, 4, 5)),
    (lambda: cbn.BatchRenorm1d(5, layout="NHWC", dtype=np.float64), (4, 7, 5)),
]
LAYER_IDS = ["bn1d", "bn1d-f64-cumulative", "bn2d-nhwc-relu", "bn2d-noaffine-debiased",
             "bn2d-no-running", "bn1d-ghost", "bn3d", "renorm2d", "renorm1d-nhwc-f64"]


def _run(layer, batches, copier=None, copy_at=None):
    """Every output of training steps, an eval forward and the final state.

    With copy_at, the steps continue on copier(layer) from that point: before
    step k's forward ("forward", k) or between its forward and backward
    ("backward", k).
    """
    out = []
    for k, (x, dy) in enumerate(batches):
        if copy_at == ("forward", k):
            layer = copier(layer)
        out.append(layer(x))
        if copy_at == ("backward", k):
            layer = copier(layer)
        out.append(layer.backward(dy))
        if layer.affine:
            out += [layer.grad_weight, layer.grad_bias]
    layer.eval()
    out.append(layer(batches[0][0]))
    out += list(layer.state_dict().values())
    return out


def _assert_same(a, b):
    assert len(a) == len(b)
    for u, v in zip(a, b):
        u, v = np.asarray(u), np.asarray(v)
        assert u.dtype == v.dtype
        np.testing.assert_array_equal(u, v)


@pytest.mark.parametrize("copier", COPIERS.values(), ids=COPIERS.keys())
@pytest.mark.parametrize("make,shape", LAYERS, ids=LAYER_IDS)
def test_copies_behave_like_the_original(make, shape, copier, rng):
    dtype = make().dtype
    batches = [(random_input(rng, shape, dtype), random_input(rng, shape, dtype))
               for _ in range(3)]
    C = make().num_features
    weight, bias = random_input(rng, (C,), dtype, 0.5, 1.0), random_input(rng, (C,), dtype)

    def fresh():
        layer = make()
        if layer.affine:   # parameters that are not the initial ones
            layer.weight, layer.bias = weight, bias
        return layer

    want = _run(fresh(), batches)
    for copy_at in [("forward", 0), ("backward", 1), ("forward", 2)]:
        _assert_same(_run(fresh(), batches, copier, copy_at), want)
    assert repr(copier(fresh())) == repr(fresh())


@pytest.mark.parametrize("copier", [COPIERS["pickle"], copy.deepcopy], ids=["pickle", "deepcopy"])
def test_copies_are_independent(copier, rng):
    x = random_input(rng, (8, 3, 4, 4), np.float32)
    original = cbn.BatchNorm2d(3)
    original(x)
    state = {k: v.copy() for k, v in original.state_dict().items()}
    twin = copier(original)
    twin(x * 2)
    twin.weight[:] = 5
    _assert_same(list(original.state_dict().values()), list(state.values()))


SHALLOW_COPIED = {
    "BatchNorm1d": lambda: cbn.BatchNorm1d(3, bias_correction=True),
    "BatchRenorm1d": lambda: cbn.BatchRenorm1d(3),
    "SyncBatchNorm": lambda: cbn.SyncBatchNorm(3, FakeWorld(1).comm(0)),
}


@pytest.mark.parametrize("make", SHALLOW_COPIED.values(), ids=SHALLOW_COPIED.keys())
def test_a_shallow_copy_shares_parameters_buffers_and_the_lock_as_pytorch(make, rng):
    """README: a shallow copy shares weight, bias, running statistics, the
    count and the lock; its mode, saved forward and gradients are its own."""
    original = make()
    twin = copy.copy(original)
    x = rng.standard_normal((6, 3)).astype(np.float32)
    original(x)
    original.backward(x)
    saved, grads = original._last_forward, (original.grad_weight, original.grad_bias)
    before = original.running_mean.copy()
    twin.eval()
    assert original.training
    twin.train()
    twin(x * 3 + 1)   # moves the shared running mean and count
    assert int(original.num_batches_tracked) == int(twin.num_batches_tracked) == 2
    assert not np.array_equal(original.running_mean, before)
    for key, value in twin.state_dict().items():
        np.testing.assert_array_equal(original.state_dict()[key], value)
    twin.backward(x)
    assert original._last_forward is saved and twin._last_forward is not saved
    assert (original.grad_weight, original.grad_bias) == grads
    twin.weight = np.full(3, 2, np.float32)   # binding through either binds for both
    assert original.weight is twin.weight
    twin.load_state_dict({"running_var": np.full(3, 4.0)}, strict=False)
    np.testing.assert_array_equal(original.running_var, 4.0)
    assert original._state_lock is twin._state_lock
    deep = copy.deepcopy(original)
    assert deep._state_lock is not original._state_lock and deep.weight is not original.weight


def _sync_step(layer, x):
    y = layer(x)
    return y, layer.backward(x), layer.running_mean.copy()


def test_sync_batchnorm_copies_share_the_communicator(rng):
    comm = FakeWorld(1).comm(0)
    layer = cbn.SyncBatchNorm(3, comm)
    x = random_input(rng, (4, 3, 5), np.float32)
    twin = copy.deepcopy(layer)
    assert twin.comm is comm and copy.copy(layer).comm is comm
    _assert_same(_sync_step(twin, x), _sync_step(layer, x))


def test_unpickled_sync_batchnorm_asks_for_its_communicator(rng):
    comm = FakeWorld(1).comm(0)
    layer = cbn.SyncBatchNorm(3, comm)
    x = random_input(rng, (4, 3, 5), np.float32)
    layer(x)
    restored = pickle.loads(pickle.dumps(layer))
    with pytest.raises(ValueError, match="comm: expected a communicator, got none"):
        restored(x)
    restored.eval()
    _assert_same([restored(x)], [layer.eval()(x)])   # eval communicates nothing
    restored.train()
    layer.train()
    restored.comm = comm
    _assert_same(_sync_step(restored, x), _sync_step(layer, x))


def test_sync_batchnorm_with_the_default_world_pickles_it(rng):
    mpi = pytest.importorskip("mpi4py.MPI")
    for comm in (None, mpi.COMM_WORLD):
        layer = cbn.SyncBatchNorm(3, comm)
        restored = pickle.loads(pickle.dumps(layer))
        assert restored.comm is mpi.COMM_WORLD
        x = random_input(rng, (4, 3, 5), np.float32)
        _assert_same(_sync_step(restored, x), _sync_step(layer, x))


def test_a_layer_pickled_before_shared_state_loads():
    """Layers pickled by cbn 0.1 kept weight, bias, running statistics and the
    count as attributes of their own."""
    layer = cbn.BatchNorm1d(3)
    layer.load_state_dict({"running_mean": np.arange(3.0), "num_batches_tracked": 7},
                          strict=False)
    old = {k: v for k, v in layer.__dict__.items() if k != "_shared"}
    for key in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
        old[f"_{key}"] = getattr(layer._shared, key)
    loaded = object.__new__(cbn.BatchNorm1d)
    loaded.__setstate__(old)
    for key, value in layer.state_dict().items():
        np.testing.assert_array_equal(loaded.state_dict()[key], value)
    loaded(np.ones((2, 3), np.float32))
    assert int(loaded.num_batches_tracked) == 8
