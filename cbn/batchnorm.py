"""Batch normalization layers with PyTorch's semantics, for NumPy arrays."""
import numpy as np

from . import _ops
from ._layout import canonicalize, channel_axis, check_layout
from ._validation import (
    check_batch_for_statistics,
    check_bool,
    check_channel_vector,
    check_dtype,
    check_eps,
    check_input,
    check_momentum,
    check_num_features,
)
from ._state import load_layer_state, layer_state

__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d"]


class _Saved:
    """What backward needs from the last forward."""

    __slots__ = ("canon", "mean", "var", "invstd", "eps", "batch_stats")

    def __init__(self, canon, mean, var, invstd, eps, batch_stats):
        self.canon = canon
        self.mean = mean
        self.var = var
        self.invstd = invstd
        self.eps = eps
        self.batch_stats = batch_stats

    def inverse_std(self):
        if self.invstd is None:  # eval: computed only when a backward asks
            self.invstd = _ops.inverse_std(self.var, self.eps)
        return self.invstd


class _BatchNorm:
    """Shared implementation; use BatchNorm1d, BatchNorm2d or BatchNorm3d.

    Subclasses set ``_SHAPES``: for each layout, the accepted ndims and their
    readable shapes.
    """

    _SHAPES = {}

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, *, dtype=np.float32, layout="NCHW"):
        self.num_features = check_num_features(num_features)
        self._dtype = check_dtype(dtype)
        self.layout = check_layout(layout)
        self.eps = eps
        self.momentum = momentum
        self.affine = check_bool(affine, "affine")
        self.track_running_stats = check_bool(track_running_stats, "track_running_stats")
        C, dt = self.num_features, self._dtype
        self._weight = np.ones(C, dt) if self.affine else None
        self._bias = np.zeros(C, dt) if self.affine else None
        if self.track_running_stats:
            self._running_mean = np.zeros(C, dt)
            self._running_var = np.ones(C, dt)
            self.num_batches_tracked = np.zeros((), np.int64)
        else:
            self._running_mean = self._running_var = self.num_batches_tracked = None
        self.grad_weight = None
        self.grad_bias = None
        self.training = True
        self._saved = None

    # ------------------------------------------------------------ attributes

    @property
    def dtype(self):
        """The layer's dtype: inputs must have it, outputs and state have it."""
        return self._dtype

    @property
    def eps(self):
        return self._eps

    @eps.setter
    def eps(self, value):
        self._eps = check_eps(value)

    @property
    def momentum(self):
        """Weight of the new batch in the running averages; None: cumulative average."""
        return self._momentum

    @momentum.setter
    def momentum(self, value):
        self._momentum = check_momentum(value)

    def _vector(name):
        attr = "_" + name

        def get(self):
            return getattr(self, attr)

        def set_(self, value):
            if getattr(self, attr) is None:
                flag = "affine" if name in ("weight", "bias") else "track_running_stats"
                raise AttributeError(f"{name}: the layer was built with {flag}=False")
            setattr(self, attr, check_channel_vector(value, name, self._dtype, self.num_features,
                                                     writable=True))

        return property(get, set_, doc=f"{name}: (num_features,) array, or None")

    weight = _vector("weight")
    bias = _vector("bias")
    running_mean = _vector("running_mean")
    running_var = _vector("running_var")
    del _vector

    # ------------------------------------------------------------ modes

    def train(self, mode=True):
        """Training mode (batch statistics, running averages updated); returns self."""
        self.training = check_bool(mode, "mode")
        return self

    def eval(self):
        """Evaluation mode (running statistics when tracked); returns self."""
        return self.train(False)

    def reset_running_stats(self):
        if self.track_running_stats:
            self._running_mean[...] = 0
            self._running_var[...] = 1
            self.num_batches_tracked[...] = 0

    def reset_parameters(self):
        self.reset_running_stats()
        if self.affine:
            self._weight[...] = 1
            self._bias[...] = 0

    # ------------------------------------------------------------ compute

    def _check_input(self, x, name="x"):
        ndims = self._SHAPES[self.layout]
        return check_input(x, name, self._dtype, tuple(ndims), self.num_features,
                           lambda nd: channel_axis(self.layout, nd), ndims)

    def __call__(self, x):
        return self.forward(x)

    def forward(self, x):
        """Normalise x; in training mode also update the running statistics."""
        axis = self._check_input(x)
        batch_stats = self.training or not self.track_running_stats
        if batch_stats:
            check_batch_for_statistics(x, axis)
        canon = canonicalize(x, self.layout)
        if batch_stats:
            y, mean, var, invstd = _ops.train_forward(canon, self._weight, self._bias, self._eps)
            if self.training and self.track_running_stats:
                self._update_running_stats(mean, var, canon.count)
            self._saved = _Saved(canon, mean, var, invstd, self._eps, True)
        else:
            mean = self._running_mean.astype(np.float64)
            var = self._running_var.astype(np.float64)
            y = _ops.normalize(canon, mean, var, self._eps, self._weight, self._bias)
            self._saved = _Saved(canon, mean, var, None, self._eps, False)
        return y

    def _update_running_stats(self, mean, var, count):
        self.num_batches_tracked += 1
        momentum = self._momentum
        if momentum is None:  # cumulative moving average
            momentum = 1.0 / float(self.num_batches_tracked)
        _ops.update_running_stats(self._running_mean, self._running_var, mean, var, count, momentum)

    def backward(self, dy):
        """Gradient of the input for output gradient dy, from the last forward.

        Sets ``grad_weight`` and ``grad_bias`` (when affine). After a training
        forward the batch statistics' dependence on x is included; after an
        eval forward dx = dy * weight / sqrt(running_var + eps).
        """
        saved = self._saved
        if saved is None:
            raise ValueError("dy: backward needs a forward first; no forward has run on this layer")
        self._check_input(dy, "dy")
        if dy.shape != saved.canon.shape:
            raise ValueError(f"dy: expected shape {saved.canon.shape} (the last forward's input), "
                             f"got {dy.shape}")
        dx, gw, gb = _ops.backward(saved.canon, dy, saved.mean, saved.inverse_std(), self._weight,
                                   saved.batch_stats, param_grads=self.affine)
        self.grad_weight, self.grad_bias = gw, gb
        return dx

    # ------------------------------------------------------------ state

    def state_dict(self):
        """Copies of the parameters and buffers, under PyTorch's keys."""
        return layer_state(self)

    def load_state_dict(self, state_dict, strict=True):
        """Load a dict like state_dict()'s (values: anything np.asarray takes).

        Every value is checked (shape, finiteness, running_var >= 0, a
        non-negative integer num_batches_tracked) before anything is
        changed; values are converted to the layer's dtype. With strict, the
        keys must match exactly.
        """
        load_layer_state(self, state_dict, strict)

    def extra_repr(self):
        return (f"{self.num_features}, eps={self._eps}, momentum={self._momentum}, "
                f"affine={self.affine}, track_running_stats={self.track_running_stats}, "
                f"dtype={self._dtype.name}, layout={self.layout!r}")

    def __repr__(self):
        return f"{type(self).__name__}({self.extra_repr()})"


class BatchNorm1d(_BatchNorm):
    """Batch normalization over (N, C) or (N, C, L) inputs; layout="NHWC": (N, L, C)."""

    _SHAPES = {
        "NCHW": {2: "(N, C)", 3: "(N, C, L)"},
        "NHWC": {2: "(N, C)", 3: "(N, L, C)"},
    }


class BatchNorm2d(_BatchNorm):
    """Batch normalization over (N, C, H, W) inputs; layout="NHWC": (N, H, W, C)."""

    _SHAPES = {"NCHW": {4: "(N, C, H, W)"}, "NHWC": {4: "(N, H, W, C)"}}


class BatchNorm3d(_BatchNorm):
    """Batch normalization over (N, C, D, H, W) inputs; layout="NHWC": (N, D, H, W, C)."""

    _SHAPES = {"NCHW": {5: "(N, C, D, H, W)"}, "NHWC": {5: "(N, D, H, W, C)"}}
