"""NaN/Inf in some channels: only those channels' outputs are affected, their
running statistics keep their previous values (a deliberate difference from
PyTorch, whose running statistics become NaN for good), num_batches_tracked
still counts, and a RuntimeWarning names the channels."""
import numpy as np
import pytest

import cbn
import cbn.functional as F
import reference as ref
from fake_mpi import run_ranks
from helpers import DTYPES, channel_axis

BAD = [np.nan, np.inf, -np.inf]

# (id, layer factory, layout, shape): small/large, channels-first/-last, split channels
PATHS = [
    ("small-NCHW", lambda C, **k: cbn.BatchNorm2d(C, **k), "NCHW", (6, 5, 4, 4)),
    ("split-NCHW", lambda C, **k: cbn.BatchNorm2d(C, **k), "NCHW", (16, 5, 40, 40)),
    ("fused-NCHW", lambda C, **k: cbn.BatchNorm2d(C, **k), "NCHW", (16, 40, 12, 12)),
    ("NHWC", lambda C, **k: cbn.BatchNorm2d(C, **k), "NHWC", (8, 12, 12, 40)),
    ("rows", lambda C, **k: cbn.BatchNorm1d(C, **k), "NCHW", (300, 7)),
    ("renorm", lambda C, **k: cbn.BatchRenorm2d(C, **k), "NCHW", (6, 5, 4, 4)),
    ("ghost", lambda C, **k: cbn.BatchNorm2d(C, virtual_batch_size=3, **k), "NHWC", (6, 4, 4, 5)),
    ("relu", lambda C, **k: cbn.BatchNorm2d(C, activation="relu", **k), "NCHW", (6, 5, 4, 4)),
    ("bias-correction", lambda C, **k: cbn.BatchNorm2d(C, bias_correction=True, **k), "NHWC",
     (6, 4, 4, 5)),
]


def poison(x, axis, channels, value, rng):
    """x with one value of each listed channel replaced by value."""
    x = x.copy()
    for c in channels:
        index = [int(rng.integers(s)) for s in x.shape]
        index[axis] = c
        x[tuple(index)] = value
    return x


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("value", BAD, ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("name,make,layout,shape", PATHS, ids=[p[0] for p in PATHS])
def test_training_batch(name, make, layout, shape, value, dtype, rng, threads):
    threads(2)
    axis = channel_axis(layout, len(shape))
    C = shape[axis]
    bad = [1, C - 2]
    bn = make(C, dtype=dtype, layout=layout)
    clean = rng.standard_normal(shape).astype(dtype)
    bn(clean)
    before_mean, before_var = bn.running_mean.copy(), bn.running_var.copy()
    x = poison(rng.standard_normal(shape).astype(dtype), axis, bad, value, rng)
    with pytest.warns(RuntimeWarning, match=rf"channel\(s\) \[{bad[0]}, {bad[1]}\]"):
        y = bn(x)
    good = [c for c in range(C) if c not in bad]
    assert np.all(np.isfinite(np.take(y, good, axis=axis)))
    affected = np.take(y, bad, axis=axis)
    if name == "ghost":  # only the virtual batch holding the bad value is affected
        assert not np.all(np.isfinite(affected))
    else:  # (a fused ReLU maps -inf inputs' channels to zeros and NaN)
        assert not np.any(np.isfinite(affected) & (affected != 0))
    np.testing.assert_array_equal(bn.running_mean[bad], before_mean[bad])
    np.testing.assert_array_equal(bn.running_var[bad], before_var[bad])
    assert not np.array_equal(bn.running_mean[good], before_mean[good])
    assert int(bn.num_batches_tracked) == 2
    dx = bn.backward(rng.standard_normal(shape).astype(dtype))
    assert np.all(np.isfinite(np.take(dx, good, axis=axis)))
    if name in ("small-NCHW", "NHWC", "rows"):  # the good channels are exactly normal batch norm
        expected = ref.train_forward(np.take(x, good, axis=axis), axis)[0]
        np.testing.assert_allclose(np.take(y, good, axis=axis), expected, rtol=3e-5, atol=3e-5)


def test_eval_batch_affects_only_its_channel(rng):
    bn = cbn.BatchNorm2d(4).eval()
    x = poison(rng.standard_normal((3, 4, 5, 5)).astype(np.float32), 1, [2], np.nan, rng)
    y = bn(x)
    assert np.isnan(y[:, 2]).sum() == 1 and np.all(np.isfinite(y[:, [0, 1, 3]]))


def test_functional_batch_norm_keeps_running_statistics(rng):
    x = poison(rng.standard_normal((5, 3, 4)), 1, [0], np.inf, rng)
    rm, rv = np.full(3, 0.5), np.full(3, 2.0)
    with pytest.warns(RuntimeWarning, match=r"channel\(s\) \[0\]"):
        F.batch_norm(x, rm, rv, training=True)
    assert rm[0] == 0.5 and rv[0] == 2.0 and rm[1] != 0.5


def test_sync_batch_norm_over_ranks(rng):
    x = poison(rng.standard_normal((8, 3, 4)), 1, [2], np.nan, rng)

    def rank_fn(rank, comm):
        bn = cbn.SyncBatchNorm(3, comm, dtype=np.float64)
        y = bn(x[rank * 4:(rank + 1) * 4])
        assert np.all(np.isfinite(y[:, :2]))
        return bn.running_mean.copy()

    # caught here: the warnings filters are process-wide, not per rank thread
    with pytest.warns(RuntimeWarning, match=r"channel\(s\) \[2\]") as caught:
        means, _ = run_ranks(2, rank_fn)
    assert len([w for w in caught if "channel(s) [2]" in str(w.message)]) == 2   # one per rank
    assert means[0][2] == 0.0 and means[1][2] == 0.0
    np.testing.assert_array_equal(means[0], means[1])


def test_pytorch_difference_is_documented():
    from pathlib import Path
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert "leaves those channels'" in readme and "running statistics unchanged" in readme
