"""Exact population statistics (PreciseBN): replace the running averages by
the mean and unbiased variance of all the data seen in a block."""
import contextlib

from ._moments import Moments
from .batchnorm import _BatchNorm
from ._validation import describe

__all__ = ["precise_statistics"]


class _Collector:
    """Per-channel (count, mean, M2) over every forward of one layer, merged
    with Chan's formula in float64 in the order the batches came."""

    def __init__(self, C):
        self.moments = Moments.empty(C)
        self.batches = 0

    def add(self, moments):
        self.moments = self.moments.merged(moments)
        self.batches += 1


@contextlib.contextmanager
def precise_statistics(*layers):
    """Collect the exact statistics of every batch the layers see in the block.

    Inside the block the layers work as usual, in any mode; each also merges
    every input's per-channel (count, mean, M2). On leaving the block each
    layer's running_mean and running_var become the mean and unbiased
    variance of all those inputs together (weighted by their sizes), and
    num_batches_tracked is restored to its value on entry: the block does not
    count as training. If the block raises, or a layer saw no batch, every
    layer's statistics are left exactly as they were on entry.

        with cbn.precise_statistics(bn1, bn2):
            for xb in batches:
                model_forward(xb)
    """
    for layer in layers:
        if not isinstance(layer, _BatchNorm):
            raise TypeError(f"layers: expected cbn batch-norm layers, got {describe(layer)}")
        if not layer.track_running_stats:
            raise ValueError(f"layers: expected layers with running statistics, got {layer!r} "
                             f"(no running statistics to set)")
        if layer._collector is not None:
            raise ValueError(f"layers: expected layers not collecting statistics, got {layer!r} "
                             f"(already collecting statistics)")
    if len({id(layer) for layer in layers}) != len(layers):
        raise ValueError("layers: expected distinct layers, got a layer more than once")
    entry = [(layer._running_mean.copy(), layer._running_var.copy(), layer._num_batches_tracked)
             for layer in layers]
    collectors = [_Collector(layer.num_features) for layer in layers]
    for layer, collector in zip(layers, collectors):
        layer._collector = collector
    try:
        try:
            yield
        finally:
            for layer in layers:
                layer._collector = None
        unseen = [layer for layer, c in zip(layers, collectors) if c.moments.count < 2]
        if unseen:
            raise ValueError(f"layers: expected every layer to see batches in the block, got no "
                             f"batch (or a single value per channel) through {unseen!r}; their "
                             f"statistics are unchanged")
    except BaseException:
        for layer, (mean, var, tracked) in zip(layers, entry):
            layer._running_mean[...] = mean
            layer._running_var[...] = var
            layer._num_batches_tracked = tracked
        raise
    for layer, collector, (_, _, tracked) in zip(layers, collectors, entry):
        m = collector.moments
        layer._running_mean[...] = m.mean
        layer._running_var[...] = m.unbiased_var
        layer._num_batches_tracked = tracked
