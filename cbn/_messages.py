"""The rows SyncBatchNorm's collectives carry, by field name.

Every row starts with two fields that let a rank whose input was rejected
still join the collective, so that every rank can raise instead of the
others waiting forever: ``rejected`` (1 on such a rank) and
``rejected_rank`` (its rank). Summed over the processes they say how many
were rejected and, when one was, which.
"""
import numpy as np


class MessageLayout:
    """Named fields of fixed lengths in a row of one dtype.

    Parameters
    ----------
    dtype : numpy dtype
        The row's dtype (what the collective reduces).
    **lengths : int
        Each field's number of values, in row order after ``rejected`` and
        ``rejected_rank``; a field of length 1 reads as a scalar.
    """

    def __init__(self, dtype, **lengths):
        self.dtype = np.dtype(dtype)
        self.slices = {}
        start = 0
        for name, length in dict(rejected=1, rejected_rank=1, **lengths).items():
            self.slices[name] = start if length == 1 else slice(start, start + length)
            start += length
        self.size = start

    def pack(self, rank, error, **values):
        """This rank's row: error (an exception or None) and every field."""
        row = np.zeros(self.size, self.dtype)
        if error is not None:
            row[self.slices["rejected"]] = 1
            row[self.slices["rejected_rank"]] = rank
        for name, value in values.items():
            row[self.slices[name]] = value
        return row

    def read(self, rows, name):
        """Field name of a row, or of each of a stack of rows."""
        return rows[..., self.slices[name]]

    def raise_if_rejected(self, total, error, argument):
        """After a summing collective: re-raise this rank's error, or raise
        ValueError naming the rank(s) whose input was rejected."""
        if error is not None:
            raise error
        rejected = int(self.read(total, "rejected"))
        if rejected:
            where = (f"rank {int(self.read(total, 'rejected_rank'))}" if rejected == 1
                     else f"{rejected} ranks")
            raise ValueError(f"{argument}: expected valid inputs on every rank, got one rejected "
                             f"on {where}; nothing was computed")
