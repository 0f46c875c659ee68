"""Batch normalization layers with PyTorch's semantics, for NumPy arrays."""
import numpy as np

from . import _ops
from ._layout import canonicalize, channel_axis, check_layout
from ._validation import (
    check_batch_for_statistics,
    check_out_overlap,
    check_bool,
    check_channel_vector,
    check_dtype,
    check_eps,
    check_input,
    check_momentum,
    check_num_features,
)
from ._state import checked_count, load_layer_state, layer_state

__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d"]


def _backward_stats(saved):
    """[mean, invstd] (float64 (2, C)) for the backward of a saved forward."""
    _, stats, running, eps, _ = saved
    if running is None:
        return stats[:2]
    return _ops.fixed_stats(running[0], running[1], eps)


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
            self._num_batches_tracked = 0
        else:
            self._running_mean = self._running_var = self._num_batches_tracked = None
        self.grad_weight = None
        self.grad_bias = None
        self.training = True
        # what backward needs from the last forward: (canonical input, training
        # statistics [mean, invstd, var] or None, eval-mode running statistics
        # (mean, var) or None, eps, whether out= overwrote the input)
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

    @property
    def num_batches_tracked(self):
        """Training batches seen (a 0-d int64 array, as PyTorch's buffer), or None."""
        n = self._num_batches_tracked
        return None if n is None else np.array(n, dtype=np.int64)

    @num_batches_tracked.setter
    def num_batches_tracked(self, value):
        if self._num_batches_tracked is None:
            raise AttributeError("num_batches_tracked: the layer was built with "
                                 "track_running_stats=False")
        self._num_batches_tracked = checked_count(value, "num_batches_tracked")

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
            self._num_batches_tracked = 0

    def reset_parameters(self):
        self.reset_running_stats()
        if self.affine:
            self._weight[...] = 1
            self._bias[...] = 0

    # ------------------------------------------------------------ compute

    def _check_input(self, x, name="x"):
        """The channel axis of a valid input; a detailed error otherwise."""
        ndims = self._SHAPES[self.layout]
        if type(x) is np.ndarray and x.dtype == self._dtype and x.ndim in ndims:
            axis = 1 if self.layout == "NCHW" else x.ndim - 1
            if x.shape[axis] == self.num_features:
                return axis
        return check_input(x, name, self._dtype, tuple(ndims), self.num_features,
                           lambda nd: channel_axis(self.layout, nd), ndims)

    def __call__(self, x, out=None):
        return self.forward(x, out)

    def forward(self, x, out=None):
        """Normalise x; in training mode also update the running statistics.

        out: an array of x's shape, dtype and memory order to write into
        (x itself for in place; backward then has no input and refuses).
        """
        axis = self._check_input(x)
        batch_stats = self.training or not self.track_running_stats
        if batch_stats and x.size < 2 * self.num_features:
            check_batch_for_statistics(x, axis)
        overwritten = out is not None and check_out_overlap(out, x, "x")
        canon = canonicalize(x, self.layout)
        if not batch_stats:
            y = _ops.normalize(canon, self._running_mean, self._running_var, self._eps,
                               self._weight, self._bias, out)
            running = (self._running_mean.copy(), self._running_var.copy())
            self._saved = (canon, None, running, self._eps, overwritten)
            return y
        if self.training and self.track_running_stats:
            tracked = self._num_batches_tracked + 1
            momentum = self._momentum if self._momentum is not None else 1.0 / tracked
            y, stats = _ops.train_forward(canon, self._weight, self._bias, self._eps,
                                          self._running_mean, self._running_var, momentum, out)
            self._num_batches_tracked = tracked
        else:
            y, stats = _ops.train_forward(canon, self._weight, self._bias, self._eps, out=out)
        self._saved = (canon, stats, None, None, overwritten)
        return y

    def backward(self, dy, out=None):
        """Gradient of the input for output gradient dy, from the last forward.

        Sets ``grad_weight`` and ``grad_bias`` (when affine). After a training
        forward the batch statistics' dependence on x is included; after an
        eval forward dx = dy * weight / sqrt(running_var + eps). out: an array
        to write dx into (dy itself for in place).
        """
        saved = self._saved
        if saved is None:
            raise ValueError("dy: backward needs a forward first; no forward has run on this layer")
        canon = saved[0]
        if saved[4]:
            raise ValueError("dy: the last forward wrote its output over its input (out=x), "
                             "so there is no input to differentiate at")
        if not (type(dy) is np.ndarray and dy.dtype == self._dtype and dy.shape == canon.shape):
            self._check_input(dy, "dy")
            if dy.shape != canon.shape:
                raise ValueError(f"dy: expected shape {canon.shape} (the last forward's "
                                 f"input), got {dy.shape}")
        if out is not None:
            check_out_overlap(out, canon.view, "x", allow_same=False)
            check_out_overlap(out, dy, "dy")
        dx, grads = _ops.backward(canon, dy, _backward_stats(saved), self._weight,
                                  saved[2] is None, self.affine, out)
        if grads is not None:
            self.grad_weight, self.grad_bias = grads[0], grads[1]
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
