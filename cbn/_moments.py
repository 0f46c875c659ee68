"""Per-channel (count, mean, M2) statistics and Chan's merge, in float64.

The kernels merge blocks and threads with the same formula; this is the
Python side for merging whole batches (population statistics) or processes.
"""
import numpy as np


class Moments:
    """count (values per channel), mean and m2 (sum of squared deviations) per channel."""

    __slots__ = ("count", "mean", "m2")

    def __init__(self, count, mean, m2):
        self.count = float(count)
        self.mean = np.asarray(mean, dtype=np.float64)
        self.m2 = np.asarray(m2, dtype=np.float64)

    @classmethod
    def empty(cls, C):
        return cls(0.0, np.zeros(C), np.zeros(C))

    def merged(self, other):
        """Chan et al.: the statistics of both sets of values together."""
        if other.count == 0:
            return Moments(self.count, self.mean.copy(), self.m2.copy())
        if self.count == 0:
            return Moments(other.count, other.mean.copy(), other.m2.copy())
        total = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / total)
        m2 = self.m2 + other.m2 + delta * delta * (self.count * other.count / total)
        return Moments(total, mean, m2)

    @property
    def unbiased_var(self):
        return self.m2 / (self.count - 1.0)


def merge_all(moments):
    """Merge in the given order (the same order gives bitwise the same result)."""
    result = None
    for m in moments:
        result = m if result is None else result.merged(m)
    return result
