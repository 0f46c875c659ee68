"""Batch Renormalization (Ioffe, 2017): batch norm corrected towards the
running statistics, for small or non-i.i.d. batches."""
import math
import numbers

import numpy as np

from . import _ops
from .batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d, _BatchNorm, _Piece
from ._validation import describe

__all__ = ["BatchRenorm1d", "BatchRenorm2d", "BatchRenorm3d"]


def _check_limit(value, name, low):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a finite float >= {low}, got {describe(value)}")
    value = float(value)
    if not (math.isfinite(value) and value >= low):
        raise ValueError(f"{name}: expected a finite float >= {low}, got {value}")
    return value


class _BatchRenorm(_BatchNorm):
    """Shared implementation; use BatchRenorm1d, BatchRenorm2d or BatchRenorm3d.

    In training, with sigma_B = sqrt(var_B + eps) and sigma = sqrt(running_var
    + eps): r = clip(sigma_B / sigma, 1/rmax, rmax), d = clip((mean_B -
    running_mean) / sigma, -dmax, dmax), and y = weight * ((x - mean_B) /
    sigma_B * r + d) + bias, r and d being constants for backward. Running
    statistics are updated as in batch norm (r and d use them before this
    batch's update); eval mode is batch norm's. rmax = 1, dmax = 0 is batch
    norm exactly.
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, *, rmax=3.0, dmax=5.0, **options):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, **options)
        self.rmax = rmax
        self.dmax = dmax

    @property
    def rmax(self):
        """Largest correction of the scale (>= 1); training loops relax it from 1 up."""
        return self._rmax

    @rmax.setter
    def rmax(self, value):
        self._rmax = _check_limit(value, "rmax", 1.0)

    @property
    def dmax(self):
        """Largest correction of the shift, in running standard deviations (>= 0)."""
        return self._dmax

    @dmax.setter
    def dmax(self, value):
        self._dmax = _check_limit(value, "dmax", 0.0)

    def corrections(self, mean, var):
        """(r, d) for batch statistics mean and biased var (float64 (C,) arrays)."""
        C = self.num_features
        if not self.track_running_stats:  # nothing to correct towards
            return np.ones(C), np.zeros(C)
        sigma = np.sqrt(self._running_var.astype(np.float64) + self._eps)
        r = np.clip(np.sqrt(var + self._eps) / sigma, 1.0 / self._rmax, self._rmax)
        d = np.clip((mean - self._running_mean) / sigma, -self._dmax, self._dmax)
        return r, d

    def _normalize_batch(self, canon, out, relu, update):
        moments = _ops.moments(canon)
        count = moments.count
        var = moments.m2 / count
        r, d = self.corrections(moments.mean, var)
        gamma = 1.0 if self._weight is None else self._weight.astype(np.float64)
        beta = 0.0 if self._bias is None else self._bias.astype(np.float64)
        weight = (gamma * r).astype(self._dtype)
        bias = (beta + gamma * d).astype(self._dtype)
        y, coef = _ops.normalize(canon, moments.mean, var, self._eps, weight, bias, out, relu)
        stats = np.empty((3, self.num_features))
        stats[0] = moments.mean
        stats[1] = 1.0 / np.sqrt(var + self._eps)
        stats[2] = var
        if update:
            self._update_running(moments.mean, var * (count / (count - 1.0)))
        return y, _Piece(canon, stats, weight, coef, (r, d))

    def extra_repr(self):
        return f"{super().extra_repr()}, rmax={self._rmax}, dmax={self._dmax}"


class BatchRenorm1d(_BatchRenorm):
    """Batch renormalization over (N, C) or (N, C, L) inputs; layout="NHWC": (N, L, C)."""

    _SHAPES = BatchNorm1d._SHAPES


class BatchRenorm2d(_BatchRenorm):
    """Batch renormalization over (N, C, H, W) inputs; layout="NHWC": (N, H, W, C)."""

    _SHAPES = BatchNorm2d._SHAPES


class BatchRenorm3d(_BatchRenorm):
    """Batch renormalization over (N, C, D, H, W) inputs; layout="NHWC": (N, D, H, W, C)."""

    _SHAPES = BatchNorm3d._SHAPES
