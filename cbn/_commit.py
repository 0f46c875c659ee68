"""Changes to layer state, gathered while a call computes and applied at once.

Every public call validates its arguments, computes into temporaries and
issues its warnings first; only then does ``Changes.apply`` write the layer,
in one compiled step (``_runtime.commit``), so a raise at any point before
it, a warning filter set to "error" or a KeyboardInterrupt included, leaves
the layer exactly as it was.
"""
import numpy as np

from . import _runtime


class Changes:
    """Copies into existing arrays (their identity is kept) and attribute values."""

    __slots__ = ("copies", "assignments")

    def __init__(self):
        self.copies = []
        self.assignments = []

    def copy(self, target, values):
        """target[...] = values: an array of target's shape and dtype that
        nothing else changes before apply() (a new result or a copy), or
        anything else, broadcast, converted and copied now."""
        if not (type(values) is np.ndarray and values.dtype == target.dtype
                and values.shape == target.shape):
            values = np.array(np.broadcast_to(np.asarray(values, dtype=target.dtype),
                                              target.shape))
        self.copies.append((target, values))

    def set(self, obj, name, value):
        """obj.name = value (a plain attribute, not a property)."""
        self.assignments.append((obj, name, value))

    def apply(self):
        _runtime.commit(self.copies, self.assignments)
