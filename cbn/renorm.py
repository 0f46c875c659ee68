"""Batch Renormalization (Ioffe, 2017): batch norm corrected towards the
running statistics, for small or non-i.i.d. batches."""
import math
import numbers

import numpy as np

from . import _ops
from ._records import Corrections, Piece
from .batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d, BatchNormBase
from ._docs import LAYER_PARAMETERS, OPTIONS_AS_BATCHNORM
from ._validation import describe

__all__ = ["BatchRenorm1d", "BatchRenorm2d", "BatchRenorm3d", "BatchRenormBase"]


def _check_limit(value, name, low):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a finite float >= {low}, got {describe(value)}")
    value = float(value)
    if not (math.isfinite(value) and value >= low):
        raise ValueError(f"{name}: expected a finite float >= {low}, got {value}")
    return value


_ALGORITHM = """\
Algorithm 1 of Ioffe (2017). In training, with the batch's
sigma_B = sqrt(var_B + eps) (biased var_B) and the moving
sigma = sqrt(running_var + eps):

    r = clip(sigma_B / sigma, 1/rmax, rmax)
    d = clip((mean_B - running_mean) / sigma, -dmax, dmax)
    y = weight * ((x - mean_B) / sigma_B * r + d) + bias

r and d are constants for backward (stop-gradient). The moving
statistics then move towards the batch's with one momentum a (PyTorch's
meaning, the paper's alpha): mean <- mean + a (mean_B - mean) and
sigma <- sigma + a (sigma_B - sigma). ``running_var`` holds sigma^2 - eps,
so that eval mode, state dicts and folding read it as batch norm's
running variance: eval mode is batch norm's. rmax = 1, dmax = 0 is batch
norm in the forward and backward. With virtual batches each has its own
(r, d), and the moving statistics move towards the means over virtual
batches of mean_B and sigma_B."""

_RENORM_PARAMETERS = LAYER_PARAMETERS + """
rmax : float, default 3.0
    Largest correction of the scale (>= 1); training loops relax it from 1 up.
dmax : float, default 5.0
    Largest correction of the shift, in moving standard deviations (>= 0).
""" + OPTIONS_AS_BATCHNORM

class BatchRenormBase(BatchNormBase):
    """The implementation the renormalization layers share; use BatchRenorm1d, 2d or 3d."""

    _DOC_PARAMETERS = _RENORM_PARAMETERS
    _DOC_NOTES = _ALGORITHM
    _DOC_EXAMPLE = """\
>>> import numpy as np, cbn
>>> bn = cbn.{name}(3, rmax=1.5, dmax=0.5)
>>> x = np.random.default_rng(0).standard_normal({shape}, dtype=np.float32)
>>> y = bn(x)
>>> r, d = bn.corrections(np.zeros(3), np.ones(3))
>>> float(r.max()) <= 1.5
True"""

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
        """Largest correction of the shift, in moving standard deviations (>= 0)."""
        return self._dmax

    @dmax.setter
    def dmax(self, value):
        self._dmax = _check_limit(value, "dmax", 0.0)

    @staticmethod
    def _moving_sigma(running_var, eps):
        """sigma = sqrt(running_var + eps), float64 (C,)."""
        return np.sqrt(running_var.astype(np.float64) + eps)

    def corrections(self, mean, var):
        """(r, d) for batch statistics mean and biased var (float64 (C,) arrays).

        Parameters
        ----------
        mean, var : numpy.ndarray
            The batch's per-channel mean and biased variance.

        Returns
        -------
        Corrections
            ``(r, d)``, float64 (C,) arrays; (1, 0) without running statistics.
        """
        with self._state_lock:
            parameters = self._parameters()
        return self._corrections(mean, var, parameters)

    def _corrections(self, mean, var, parameters):
        p = parameters
        C = self.num_features
        if p.running_mean is None:  # nothing to correct towards
            return Corrections(np.ones(C), np.zeros(C))
        sigma = self._moving_sigma(p.running_var, p.eps)
        r = np.clip(np.sqrt(var + p.eps) / sigma, 1.0 / self._rmax, self._rmax)
        d = np.clip((mean - p.running_mean) / sigma, -self._dmax, self._dmax)
        return Corrections(r, d)

    def _normalize_batch(self, canon, output, relu, parameters):
        p = parameters
        moments = _ops.moments(canon)
        var = moments.m2 / moments.count
        corrections = self._corrections(moments.mean, var, p)
        gamma = 1.0 if p.weight is None else p.weight.astype(np.float64)
        beta = 0.0 if p.bias is None else p.bias.astype(np.float64)
        scaled_weight = (gamma * corrections.r).astype(self.param_dtype)
        bias = (beta + gamma * corrections.d).astype(self.param_dtype)
        y, coef = _ops.normalize(canon, moments.mean, var, p.eps, scaled_weight, bias, output,
                                 relu, moments.count)
        stats = np.empty((3, self.num_features))
        stats[0] = moments.mean
        stats[1] = 1.0 / np.sqrt(var + p.eps)
        stats[2] = var
        return y, Piece(canon, scaled_weight, stats=stats, relu_coef=coef,
                        corrections=corrections)

    def _running_targets(self, pieces):
        """(mean_B, sigma_B, 1) of the batch, or the means over virtual batches."""
        means = np.mean([p.stats[0] for p in pieces], axis=0)
        sigmas = np.mean([np.sqrt(p.stats[2] + self.eps) for p in pieces], axis=0)
        return means, sigmas, 1.0

    def _updated_running_stats(self, mean, sigma_b, _):
        """The paper's update of the moving mean and sigma, stored as
        running_var = sigma^2 - eps."""
        a = self._step_momentum()
        running_mean, running_var, eps = self.running_mean, self.running_var, self.eps
        sigma = _ops.moving_average(self._moving_sigma(running_var, eps), sigma_b, a)
        return _ops.rounded_running_stats(running_mean, running_var,
                                          _ops.moving_average(running_mean, mean, a),
                                          np.maximum(sigma * sigma - eps, 0.0))

    def extra_repr(self):
        """The constructor arguments as repr() shows them.

        Returns
        -------
        str
            BatchNorm's, then ``rmax`` and ``dmax``.
        """
        return f"{super().extra_repr()}, rmax={self._rmax}, dmax={self._dmax}"


class BatchRenorm1d(BatchRenormBase):
    """Batch renormalization over (N, C) or (N, C, L) inputs; layout="NHWC": (N, L, C)."""

    _SHAPES = BatchNorm1d._SHAPES


class BatchRenorm2d(BatchRenormBase):
    """Batch renormalization over (N, C, H, W) inputs; layout="NHWC": (N, H, W, C)."""

    _SHAPES = BatchNorm2d._SHAPES


class BatchRenorm3d(BatchRenormBase):
    """Batch renormalization over (N, C, D, H, W) inputs; layout="NHWC": (N, D, H, W, C)."""

    _SHAPES = BatchNorm3d._SHAPES
