"""Canonical 2-D/3-D views of N-D inputs, whatever their memory order.

``layout`` says which axis holds the channels ("NCHW": axis 1, "NHWC": the
last). The kernels see one of two views, chosen from the array's memory order,
not from ``layout``:

* channels-first ``(N, C, S)``: each (n, c) is a contiguous run of S values;
* channels-last ``(M, C)``: each row holds the C channels contiguously.

An NCHW array stored channels-last (a transposed NHWC array) is therefore
processed without a copy, and its output is laid out the same way, as in
PyTorch's ``channels_last`` memory format. Arrays that fit neither view
(Fortran order, arbitrary strides, unaligned data) are copied once into the
layout's natural order; results are the same either way.
"""
import math

import numpy as np

LAYOUTS = ("NCHW", "NHWC")
CHANNELS_FIRST = "cf"
CHANNELS_LAST = "cl"


def check_layout(layout):
    if not isinstance(layout, str) or layout not in LAYOUTS:
        raise ValueError(f"layout: expected one of {LAYOUTS}, got {layout!r}")
    return layout


def channel_axis(layout, ndim):
    return 1 if layout == "NCHW" else ndim - 1


def _reshape_view(a, shape):
    """a.reshape(shape) if that needs no copy, else None."""
    try:
        return a.reshape(shape, copy=False)
    except ValueError:
        return None
    except TypeError:  # NumPy < 2.1: no copy= argument
        v = a.view()
        try:
            v.shape = shape
        except AttributeError:
            return None
        return v


def _usable(view, itemsize):
    """Kernels need aligned data, element-multiple strides and a unit last stride."""
    return (
        view is not None
        and view.flags.aligned
        and view.strides[-1] == itemsize
        and all(s % itemsize == 0 for s in view.strides)
    )


class Canonical:
    """An N-D array and the kernel view of it.

    kind: CHANNELS_FIRST or CHANNELS_LAST; view: (N, C, S) or (M, C);
    shape: the user's shape; axis: the channel axis in that shape.
    """

    __slots__ = ("kind", "view", "shape", "axis")

    def __init__(self, kind, view, shape, axis):
        self.kind = kind
        self.view = view
        self.shape = shape
        self.axis = axis

    @property
    def count(self):
        """Values per channel."""
        v = self.view
        return v.shape[0] * v.shape[2] if self.kind == CHANNELS_FIRST else v.shape[0]

    def empty(self, dtype):
        """A new array of the user's shape, laid out like this view: (user array, its view)."""
        return self.wrap(np.empty(self.view.shape, dtype=dtype))

    def wrap(self, view):
        """The user-shaped array whose kernel view is ``view`` (same kind and shape)."""
        shape, axis = self.shape, self.axis
        if self.kind == CHANNELS_FIRST:
            # stored (N, C, *spatial) in C order: move C to its place
            ordered = (shape[0], shape[axis]) + tuple(
                s for i, s in enumerate(shape) if i not in (0, axis)
            )
            full = view.reshape(ordered)
            return np.moveaxis(full, 1, axis), view
        # stored (..., C) in C order: move C from last to its place
        ordered = tuple(s for i, s in enumerate(shape) if i != axis) + (shape[axis],)
        full = view.reshape(ordered)
        return np.moveaxis(full, -1, axis), view

    def like(self, other):
        """The kernel view of ``other`` (same shape as ours) of our kind, copying if needed."""
        return _view_of_kind(other, self.axis, self.kind)


def _channels_last_view(x, axis):
    moved = np.moveaxis(x, axis, -1)
    C = moved.shape[-1]
    return _reshape_view(moved, (x.size // C if C else 0, C))


def _channels_first_view(x, axis):
    moved = np.moveaxis(x, axis, 1)
    N, C = moved.shape[0], moved.shape[1]
    S = math.prod(moved.shape[2:])
    return _reshape_view(moved, (N, C, S))


def _view_of_kind(x, axis, kind):
    itemsize = x.dtype.itemsize
    if kind == CHANNELS_LAST:
        view = _channels_last_view(x, axis)
        if not _usable(view, itemsize):
            view = _channels_last_view(np.ascontiguousarray(np.moveaxis(x, axis, -1)), -1)
    else:
        view = _channels_first_view(x, axis)
        if not _usable(view, itemsize):
            view = _channels_first_view(np.ascontiguousarray(np.moveaxis(x, axis, 1)), 1)
    return view


def canonicalize(x, layout):
    """The kernel view of x (ndim >= 2, channels on ``layout``'s axis)."""
    axis = channel_axis(layout, x.ndim)
    itemsize = x.dtype.itemsize
    spatial = x.size // (x.shape[0] * x.shape[axis]) if x.size else 0
    # rows of C channels when there is no spatial extent: one run per value
    # would be the slowest possible channels-first view
    prefer_last = layout == "NHWC" or spatial == 1
    order = (CHANNELS_LAST, CHANNELS_FIRST) if prefer_last else (CHANNELS_FIRST, CHANNELS_LAST)
    for kind in order:
        view = _channels_last_view(x, axis) if kind == CHANNELS_LAST else _channels_first_view(x, axis)
        if _usable(view, itemsize):
            return Canonical(kind, view, x.shape, axis)
    kind = order[0]
    return Canonical(kind, _view_of_kind(x, axis, kind), x.shape, axis)
