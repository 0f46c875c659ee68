"""Folding an eval-mode batch norm into the convolution or dense layer before it."""
import numpy as np

from .batchnorm import BatchNormBase
from ._validation import describe

__all__ = ["fold_conv", "fold_linear"]


def _fold(weight, bias, bn, name):
    if not isinstance(bn, BatchNormBase):
        raise TypeError(f"bn: expected a cbn batch-norm layer, got {describe(bn)}")
    if not bn.track_running_stats:
        raise ValueError("bn: expected a layer with running statistics, got one with "
                         "track_running_stats=False (it normalises with batch statistics even in "
                         "eval mode: there is nothing fixed to fold)")
    if bn.activation is not None:
        raise ValueError(f"bn: expected a layer without a fused activation, got activation="
                         f"{bn.activation!r} (it cannot be folded into {name}; apply it after)")
    if not isinstance(weight, np.ndarray) or weight.dtype.kind != "f":
        raise TypeError(f"weight: expected a float numpy.ndarray, got {describe(weight)}")
    C = bn.num_features
    if weight.shape[0] != C:
        raise ValueError(f"weight: expected {C} output channels on axis 0 (bn.num_features), "
                         f"got shape {weight.shape}")
    if bias is not None:
        if not isinstance(bias, np.ndarray) or bias.dtype.kind != "f":
            raise TypeError(f"bias: expected a float numpy.ndarray or None, got {describe(bias)}")
        if bias.shape != (C,):
            raise ValueError(f"bias: expected shape ({C},), got {bias.shape}")
    state = bn.state_dict()   # one consistent snapshot, also while another thread trains bn
    scale = 1.0 / np.sqrt(state["running_var"].astype(np.float64) + bn.eps)
    if bn.affine:
        scale = scale * state["weight"]
    shift = -state["running_mean"].astype(np.float64) * scale
    if bn.affine:
        shift = shift + state["bias"]
    if bias is not None:
        shift = shift + bias.astype(np.float64) * scale
    folded_weight = weight.astype(np.float64) * scale.reshape((C,) + (1,) * (weight.ndim - 1))
    return folded_weight.astype(weight.dtype), shift.astype(weight.dtype)


def fold_linear(weight, bias, bn):
    """(weight, bias) of a dense layer y = x @ weight.T + bias followed by bn in eval mode.

    weight: (C, in); bias: (C,) or None; bn: a BatchNorm1d over C features.
    Computed in float64, returned in weight's dtype.
    """
    if isinstance(weight, np.ndarray) and weight.ndim != 2:
        raise ValueError(f"weight: expected a 2-D (C, in) array, got shape {weight.shape}")
    return _fold(weight, bias, bn, "the dense layer")


def fold_conv(weight, bias, bn):
    """(weight, bias) of a convolution (weight (C_out, C_in, *kernel)) followed by bn in eval mode.

    The folded convolution computes conv(x, weight) + bias with the new
    arrays; bias may be None. Computed in float64, returned in weight's dtype.
    """
    if isinstance(weight, np.ndarray) and weight.ndim < 3:
        raise ValueError(f"weight: expected (C_out, C_in, *kernel) with at least 3 dimensions, "
                         f"got shape {weight.shape}")
    return _fold(weight, bias, bn, "the convolution")
