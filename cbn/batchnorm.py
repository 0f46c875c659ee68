"""Batch normalization layers with PyTorch's semantics, for NumPy arrays.

Beyond PyTorch: debiased running averages (``bias_correction``), a fused
ReLU (``activation="relu"``), ghost batch norm (``virtual_batch_size``),
and running statistics that a NaN/Inf batch cannot poison.
"""
import math
import warnings

import numpy as np

from . import _ops
from ._layout import canonicalize, channel_axis, check_layout
from ._moments import Moments, merge_all
from ._state import checked_count, layer_state, load_layer_state
from ._validation import (
    check_batch_for_statistics,
    check_bool,
    check_channel_vector,
    check_dtype,
    check_eps,
    check_input,
    check_momentum,
    check_num_features,
    check_out_overlap,
    describe,
)

__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d"]

ACTIVATIONS = (None, "relu")


class _Piece:
    """One normalised group of the last forward (the batch, or one virtual
    batch) and what its backward needs.

    canon: its canonical input; stats: float64 (3, C) [mean, invstd, biased
    var] of a batch, or for an eval forward the running (mean, var) as they
    were and eps; weight: the weight the output was scaled with (weight * r
    for renormalisation), or None; relu: the forward's coefficients of a
    fused ReLU, or None; renorm: (r, d) or None; rows: its slice of the batch
    axis, or None for the whole batch; global_count: values per channel the
    statistics came from when they span other processes' shards, else None.
    """

    __slots__ = ("canon", "stats", "weight", "relu", "renorm", "rows", "global_count")

    def __init__(self, canon, stats, weight, relu, renorm=None, rows=None, global_count=None):
        self.canon = canon
        self.stats = stats
        self.weight = weight
        self.relu = relu
        self.renorm = renorm
        self.rows = rows
        self.global_count = global_count

    def backward_stats(self):
        """[mean, invstd] (float64 (2, C))."""
        if isinstance(self.stats, tuple):  # eval: (running mean, running var, eps)
            return _ops.fixed_stats(*self.stats)
        return self.stats[:2]

    def moments(self):
        stats, count = self.stats, self.canon.count
        return Moments(count, stats[0], stats[2] * count)


class _BatchNorm:
    """Shared implementation; use BatchNorm1d, BatchNorm2d or BatchNorm3d.

    Subclasses set ``_SHAPES``: for each layout, the accepted ndims and their
    readable shapes.
    """

    _SHAPES = {}

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, *, dtype=np.float32, layout="NCHW",
                 bias_correction=False, activation=None, virtual_batch_size=None):
        self.num_features = check_num_features(num_features)
        self._dtype = check_dtype(dtype)
        self.layout = check_layout(layout)
        self.eps = eps
        self.momentum = momentum
        self.affine = check_bool(affine, "affine")
        self.track_running_stats = check_bool(track_running_stats, "track_running_stats")
        self.bias_correction = check_bool(bias_correction, "bias_correction")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation: expected one of {ACTIVATIONS}, got {activation!r}")
        self.activation = activation
        self.virtual_batch_size = virtual_batch_size
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
        # the last forward, for backward: (canonical input, pieces, batch
        # statistics used, whether out= overwrote the input)
        self._saved = None
        # set by cbn.precise_statistics while it collects population statistics
        self._collector = None

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

    @property
    def virtual_batch_size(self):
        """Rows per virtual batch for batch statistics (ghost batch norm), or None."""
        return self._virtual_batch_size

    @virtual_batch_size.setter
    def virtual_batch_size(self, value):
        if value is not None and (isinstance(value, (bool, np.bool_))
                                  or not isinstance(value, (int, np.integer)) or value < 1):
            raise ValueError(f"virtual_batch_size: expected a positive int or None, "
                             f"got {describe(value)}")
        self._virtual_batch_size = None if value is None else int(value)

    @property
    def num_batches_tracked(self):
        """Training batches seen (a 0-d int64 array, as PyTorch's buffer), or None."""
        n = self._num_batches_tracked
        return None if n is None else np.array(n, dtype=np.int64)

    @num_batches_tracked.setter
    def num_batches_tracked(self, value):
        if self._num_batches_tracked is None:
            raise AttributeError("num_batches_tracked: expected a layer with running statistics, "
                                 "got one built with track_running_stats=False")
        self._num_batches_tracked = checked_count(value, "num_batches_tracked")

    def _vector(name):
        attr = "_" + name

        def get(self):
            return getattr(self, attr)

        def set_(self, value):
            if getattr(self, attr) is None:
                flag = "affine" if name in ("weight", "bias") else "track_running_stats"
                raise AttributeError(f"{name}: expected a layer with {name}, got one built with "
                                     f"{flag}=False")
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
            self._num_batches_tracked = 0

    def reset_parameters(self):
        self.reset_running_stats()
        if self.affine:
            self._weight[...] = 1
            self._bias[...] = 0

    # ------------------------------------------------------------ forward

    def _check_input(self, x, name="x"):
        """The channel axis of a valid input; a detailed error otherwise."""
        ndims = self._SHAPES[self.layout]
        if type(x) is np.ndarray and x.dtype == self._dtype and x.ndim in ndims:
            axis = 1 if self.layout == "NCHW" else x.ndim - 1
            if x.shape[axis] == self.num_features:
                return axis
        return check_input(x, name, self._dtype, tuple(ndims), self.num_features,
                           lambda nd: channel_axis(self.layout, nd), ndims)

    def _check_batch(self, x, axis, k):
        """Batch statistics need two values per channel (per virtual batch)."""
        if k is None:
            if x.size < 2 * self.num_features:
                check_batch_for_statistics(x, axis)
            return
        N = x.shape[0]
        if N % k:
            raise ValueError(f"x: expected a batch size that is a multiple of "
                             f"virtual_batch_size={k}, got {N} (shape {x.shape})")
        check_batch_for_statistics(x[:k], axis)

    def __call__(self, x, out=None):
        return self.forward(x, out)

    def forward(self, x, out=None):
        """Normalise x; in training mode also update the running statistics.

        out: an array of x's shape, dtype and memory order to write into
        (x itself for in place; backward then has no input and refuses).
        """
        axis = self._check_input(x)
        batch_stats = self.training or not self.track_running_stats
        k = self._virtual_batch_size if batch_stats else None
        if batch_stats:
            self._check_batch(x, axis, k)
        overwritten = out is not None and check_out_overlap(out, x, "x")
        relu = self.activation == "relu"
        canon = canonicalize(x, self.layout)
        if not batch_stats:
            y, coef = _ops.normalize(canon, self._running_mean, self._running_var, self._eps,
                                     self._weight, self._bias, out, relu)
            running = (self._running_mean.copy(), self._running_var.copy(), self._eps)
            pieces = (_Piece(canon, running, self._weight, coef),)
            if self._collector is not None:
                self._collector.add(_ops.moments(canon))
        else:
            update = self.training and self.track_running_stats
            if k is None or k == x.shape[0]:
                y, piece = self._normalize_batch(canon, out, relu, update)
                pieces = (piece,)
            else:
                y, pieces = self._normalize_virtual_batches(x, canon, k, out, relu, update)
            if self._collector is not None:
                self._collector.add(merge_all(p.moments() for p in pieces))
        self._saved = (canon, pieces, batch_stats, overwritten)
        return y

    def _step_momentum(self):
        """The weight of this step's batch in the running averages.

        momentum=None: 1/t (cumulative average). With bias_correction the
        averages behave as if started at zero and divided by 1 - (1 - m)^t:
        the same as an average with weight m / (1 - (1 - m)^t) for step t,
        which makes the first step's weight 1 (the initial values drop out).
        """
        t = self._num_batches_tracked + 1
        m = self._momentum
        if m is None:
            return 1.0 / t
        if self.bias_correction and m > 0.0:
            # exactly 1 at t = 1 (1 - (1 - m) rounds); 1 - (1 - m)^t without cancellation
            return 1.0 if t == 1 else m / -math.expm1(t * math.log1p(-m))
        return m

    def _normalize_batch(self, canon, out, relu, update):
        """Normalise one batch with its statistics: (y, _Piece).

        update: also update the running statistics with this batch."""
        if update:
            y, stats, skipped, coef = _ops.train_forward(
                canon, self._weight, self._bias, self._eps, self._running_mean,
                self._running_var, self._step_momentum(), out, relu)
            self._num_batches_tracked += 1
            if skipped:
                self._warn_not_finite(stats[0], stats[2])
        else:
            y, stats, _, coef = _ops.train_forward(canon, self._weight, self._bias, self._eps,
                                                   out=out, relu=relu)
        return y, _Piece(canon, stats, self._weight, coef)

    def _normalize_virtual_batches(self, x, canon, k, out, relu, update):
        """Ghost batch norm: each run of k rows normalised with its own statistics;
        the running statistics updated once, with the mean over virtual batches
        of their means and of their unbiased variances (as Keras does)."""
        y, _ = canon.output(out)
        pieces = []
        for start in range(0, x.shape[0], k):
            rows = slice(start, start + k)
            _, piece = self._normalize_batch(canonicalize(x[rows], self.layout), y[rows], relu,
                                             update=False)
            piece.rows = rows
            pieces.append(piece)
        if update:
            count = pieces[0].canon.count
            means = np.mean([p.stats[0] for p in pieces], axis=0)
            unbiased = np.mean([p.stats[2] * (count / (count - 1.0)) for p in pieces], axis=0)
            self._update_running(means, unbiased)
        return y, tuple(pieces)

    def _update_running(self, mean, unbiased_var):
        skipped = _ops.update_running_stats(self._running_mean, self._running_var, mean,
                                            unbiased_var, self._step_momentum())
        self._num_batches_tracked += 1
        if skipped:
            self._warn_not_finite(mean, unbiased_var)

    def _warn_not_finite(self, mean, var):
        bad = np.flatnonzero(~(np.isfinite(mean) & np.isfinite(var)))
        warnings.warn(f"{type(self).__name__}: the batch statistics of channel(s) "
                      f"{bad.tolist()} are not finite (NaN or Inf in the input); their running "
                      f"statistics were left unchanged", RuntimeWarning, stacklevel=4)

    # ------------------------------------------------------------ backward

    def backward(self, dy, out=None):
        """Gradient of the input for output gradient dy, from the last forward.

        Sets ``grad_weight`` and ``grad_bias`` (when affine). After a training
        forward the batch statistics' dependence on x is included; after an
        eval forward dx = dy * weight / sqrt(running_var + eps). With a fused
        ReLU, dy counts only where the output was positive. out: an array to
        write dx into (dy itself for in place).
        """
        saved = self._saved
        if saved is None:
            raise ValueError("dy: expected a forward on this layer first (backward differentiates "
                             "it), got none")
        canon, pieces, batch_stats, overwritten = saved
        if overwritten:
            raise ValueError("dy: expected a forward that kept its input, got one that wrote its "
                             "output over it (out=x): there is no input to differentiate at")
        if not (type(dy) is np.ndarray and dy.dtype == self._dtype and dy.shape == canon.shape):
            self._check_input(dy, "dy")
            if dy.shape != canon.shape:
                raise ValueError(f"dy: expected shape {canon.shape} (the last forward's "
                                 f"input), got {dy.shape}")
        if out is not None:
            check_out_overlap(out, canon.view, "x", allow_same=False)
            check_out_overlap(out, dy, "dy")
        if len(pieces) == 1 and pieces[0].rows is None:
            p = pieces[0]
            dx, grads = _ops.backward(p.canon, dy, p.backward_stats(), p.weight, batch_stats,
                                      self.affine, out, p.relu)
            if grads is not None and p.renorm is not None:
                grads = self._renorm_param_grads(grads, *p.renorm)
        else:
            dx, _ = canon.output(out)
            grads = np.zeros((2, self.num_features))
            for p in pieces:
                _, g = _ops.backward(p.canon, dy[p.rows], p.backward_stats(), p.weight, True, True,
                                     dx[p.rows], p.relu)
                grads += g if p.renorm is None else self._renorm_param_grads(g, *p.renorm)
            grads = grads.astype(self._dtype) if self.affine else None
        if grads is not None:
            self.grad_weight, self.grad_bias = grads[0], grads[1]
        return dx

    @staticmethod
    def _renorm_param_grads(grads, r, d):
        """[dgamma, dbeta] for y = gamma * (xhat * r + d) + beta from [sum(g xhat), sum(g)]."""
        g = grads.astype(np.float64)
        out = np.empty_like(grads)
        out[0] = g[0] * r + g[1] * d
        out[1] = grads[1]
        return out

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
        text = (f"{self.num_features}, eps={self._eps}, momentum={self._momentum}, "
                f"affine={self.affine}, track_running_stats={self.track_running_stats}, "
                f"dtype={self._dtype.name}, layout={self.layout!r}")
        if self.bias_correction:
            text += ", bias_correction=True"
        if self.activation is not None:
            text += f", activation={self.activation!r}"
        if self._virtual_batch_size is not None:
            text += f", virtual_batch_size={self._virtual_batch_size}"
        return text

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
