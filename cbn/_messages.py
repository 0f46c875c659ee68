"""The rows SyncBatchNorm's collectives carry, by field name.

Every row starts with a header of HEADER values. Two fields let a rank
whose input was rejected still join the collective, so that every rank can
raise instead of the others waiting forever: ``rejected`` (1 on such a
rank) and ``rejected_rank`` (its rank); summed over the processes they say
how many were rejected and, when one was, which. ``agreement`` holds the
fingerprint of the rank's options (cbn._collectives: the opening).
"""
import numpy as np

from ._collectives import Agreement


class MessageLayout:
    """Named fields of fixed lengths in a row of one dtype, after the header.

    Parameters
    ----------
    dtype : numpy dtype
        The row's dtype (what the collective reduces).
    **lengths : int
        Each field's number of values, in row order after the header; a
        field of length 1 reads as a scalar.
    """

    HEADER = 2 + Agreement.FIELDS   # rejected, rejected_rank, agreement

    def __init__(self, dtype, **lengths):
        self.dtype = np.dtype(dtype)
        self.slices = {}
        start = 0
        header = dict(rejected=1, rejected_rank=1, agreement=Agreement.FIELDS)
        for name, length in dict(header, **lengths).items():
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
