"""Exact population statistics (PreciseBN): replace the running averages by
the mean and unbiased variance of all the data seen in a block."""
import contextlib
import warnings

import numpy as np

from ._commit import Changes
from ._moments import Moments
from .batchnorm import BatchNormBase
from ._validation import describe

__all__ = ["precise_statistics"]


class _Collector:
    """Per-channel (count, mean, M2) over every forward of one layer, merged
    with Chan's formula in float64 in the order the batches came."""

    def __init__(self, C):
        self.moments = Moments.empty(C)
        self.batches = 0

    def stage_add(self, changes, moments):
        """Stage merging one batch's moments (applied with the forward's other changes)."""
        changes.set(self, "moments", self.moments.merged(moments))
        changes.set(self, "batches", self.batches + 1)


@contextlib.contextmanager
def precise_statistics(*layers):
    """Collect the exact statistics of every batch the layers see in the block.

    Inside the block the layers work as usual, in any mode; each also merges
    every input's per-channel (count, mean, M2). On leaving the block each
    layer's running_mean and running_var become the mean and unbiased
    variance of all those inputs together (weighted by their sizes), and
    num_batches_tracked is restored to its value on entry: the block does not
    count as training. Channels whose data held NaN or Inf keep their
    running statistics from entry, with a RuntimeWarning naming them. If the
    block raises, a layer saw no batch, or the warning is turned into an
    error, every layer's statistics are left exactly as they were on entry.

    Parameters
    ----------
    *layers : cbn batch-norm layers
        Distinct layers with running statistics, not already collecting.

    Examples
    --------
    >>> with cbn.precise_statistics(bn1, bn2):          # doctest: +SKIP
    ...     for xb in batches:
    ...         model_forward(xb)
    """
    for layer in layers:
        if not isinstance(layer, BatchNormBase):
            raise TypeError(f"layers: expected cbn batch-norm layers, got {describe(layer)}")
        if not layer.track_running_stats:
            raise ValueError(f"layers: expected layers with running statistics, got {layer!r} "
                             f"(no running statistics to set)")
        if layer._observer is not None:
            raise ValueError(f"layers: expected layers not collecting statistics, got {layer!r} "
                             f"(already collecting statistics)")
    if len({id(layer) for layer in layers}) != len(layers):
        raise ValueError("layers: expected distinct layers, got a layer more than once")
    collectors = [_Collector(layer.num_features) for layer in layers]
    start = Changes()
    for layer, collector in zip(layers, collectors):
        layer._stage_observer(start, collector)
    on_entry = _with_locks(layers, lambda: [layer._running_snapshot() for layer in layers])
    restore = Changes()
    for layer, (mean, var, tracked) in zip(layers, on_entry):
        layer._stage_running_stats(restore, mean, var, tracked)
        layer._stage_observer(restore, None)
    try:
        _with_locks(layers, start.apply)
        yield
        # read and replace with no training step of another thread in between
        _with_locks(layers, lambda: _population_changes(layers, collectors, on_entry).apply())
    except BaseException:
        _with_locks(layers, restore.apply)
        raise


def _with_locks(layers, fn):
    """fn() with every layer's lock held: each distinct lock once (a shallow
    copy shares its layer's), in a fixed order."""
    locks = sorted({id(layer._state_lock): layer._state_lock for layer in layers}.values(),
                   key=id)
    return _holding(locks, fn)


def _holding(locks, fn):
    # plain `with` on the locks themselves: their __exit__ is C code, so no
    # KeyboardInterrupt can fall between a release and the code after it
    if not locks:
        return fn()
    with locks[0]:
        return _holding(locks[1:], fn)


def _population_changes(layers, collectors, on_entry):
    """The Changes that set every layer's population statistics. Raises if a
    layer saw nothing, and warns about channels that saw NaN or Inf, before
    anything changes (the caller then restores the entry state)."""
    unseen = [layer for layer, c in zip(layers, collectors) if c.moments.count < 2]
    if unseen:
        raise ValueError(f"layers: expected every layer to see batches in the block, got no "
                         f"batch (or a single value per channel) through {unseen!r}; their "
                         f"statistics are unchanged")
    changes = Changes()
    for layer, collector, (mean_on_entry, var_on_entry, tracked) in zip(layers, collectors,
                                                                       on_entry):
        m = collector.moments
        with np.errstate(over="ignore", invalid="ignore"):
            mean = m.mean.astype(layer.param_dtype)
            var = m.unbiased_var.astype(layer.param_dtype)
        bad = ~(np.isfinite(mean) & np.isfinite(var))
        if bad.any():
            warnings.warn(f"precise_statistics: {type(layer).__name__} channel(s) "
                          f"{np.flatnonzero(bad).tolist()} saw NaN or Inf (or statistics "
                          f"beyond {layer.param_dtype}); their running statistics were left as on "
                          f"entry", RuntimeWarning, stacklevel=4)
            mean[bad] = mean_on_entry[bad]
            var[bad] = var_on_entry[bad]
        layer._stage_running_stats(changes, mean, var, tracked)
        layer._stage_observer(changes, None)
    return changes
