"""The records a forward leaves for its backward, and what it normalises with.

Every field has one meaning; statistics are float64 per-channel arrays.
"""
from dataclasses import dataclass
from typing import NamedTuple, Optional

import numpy as np

from . import _ops
from ._moments import Moments


class ForwardParameters(NamedTuple):
    """What one forward normalises with, copied from the layer in one step
    (under its lock), so that a concurrent commit is seen whole or not at all
    and backward differentiates with what the forward used."""

    weight: Optional[np.ndarray]
    bias: Optional[np.ndarray]
    running_mean: Optional[np.ndarray]
    running_var: Optional[np.ndarray]
    eps: float


class Corrections(NamedTuple):
    """Batch renormalisation's per-channel (r, d), constants for backward."""

    r: np.ndarray
    d: np.ndarray


@dataclass(slots=True)
class Piece:
    """One normalised group of a forward (the batch, or one virtual batch).

    Attributes
    ----------
    canon : Canonical
        Its input, canonicalised.
    weight : numpy.ndarray or None
        A copy of the weight the output was scaled with (``weight * r`` for
        renormalisation), so that backward differentiates the forward that
        ran whatever happens to the layer's weight in between.
    stats : numpy.ndarray or None
        float64 (3, C) [mean, invstd, biased var]: the group's batch
        statistics it was normalised with (training), else None.
    eval_parameters : ForwardParameters or None
        What an eval forward normalised with: its running statistics and eps
        (copies) are the fixed statistics backward differentiates with.
    relu_coef : numpy.ndarray or None
        With a fused ReLU, the forward's (3, C) coefficients [shift, scale,
        offset], from which backward recomputes where the output was positive.
    corrections : Corrections or None
        Batch renormalisation's (r, d).
    rows : slice or None
        Its rows of the batch axis, or None for the whole batch.
    global_count : float or None
        Values per channel behind the statistics when they span other
        processes' shards (SyncBatchNorm), else None.
    """

    canon: object
    weight: Optional[np.ndarray]
    stats: Optional[np.ndarray] = None
    eval_parameters: Optional[ForwardParameters] = None
    relu_coef: Optional[np.ndarray] = None
    corrections: Optional[Corrections] = None
    rows: Optional[slice] = None
    global_count: Optional[float] = None

    def backward_stats(self):
        """[mean, invstd] (float64 (2, C)) for the backward kernels."""
        if self.stats is None:
            p = self.eval_parameters
            return _ops.fixed_stats(p.running_mean, p.running_var, p.eps)
        return self.stats[:2]

    def moments(self):
        """The group's Moments (training forwards only)."""
        stats, count = self.stats, self.canon.count
        return Moments(count, stats[0], stats[2] * count)


class SavedForward(NamedTuple):
    """What backward needs of the last forward.

    canon: its canonical input; pieces: its Piece records (one, or one per
    virtual batch); batch_stats: normalised with batch statistics;
    overwritten: out=x wrote the output over the input.
    """

    canon: object
    pieces: tuple
    batch_stats: bool
    overwritten: bool


def saved_forward(record):
    """The SavedForward of a forward that took the compiled call path, from
    its record (a ``_call.CompiledForward``), made once."""
    from ._layout import canonicalize
    if record.converted is not None:
        return record.converted
    canon = canonicalize(record.x, record.layout)
    if record.batch_stats:
        piece = Piece(canon, record.weight, stats=record.stats, relu_coef=record.relu_coef)
    else:
        table = record.parameters   # [running_mean, running_var, weight, bias]
        affine = record.affine
        parameters = ForwardParameters(table[2] if affine else None, table[3] if affine else None,
                                       table[0], table[1], record.eps)
        piece = Piece(canon, parameters.weight, eval_parameters=parameters,
                      relu_coef=record.relu_coef)
    record.converted = SavedForward(canon, (piece,), record.batch_stats, record.overwritten)
    return record.converted
