"""A float64 NumPy reference for batch normalization (the textbook formulas)."""
import numpy as np


def reduce_axes(ndim, axis):
    return tuple(i for i in range(ndim) if i != axis)


def expand(v, ndim, axis):
    shape = [1] * ndim
    shape[axis] = -1
    return np.asarray(v, dtype=np.float64).reshape(shape)


def batch_stats(x, axis):
    """(mean, biased var, count) per channel, in float64."""
    x = np.asarray(x, dtype=np.float64)
    axes = reduce_axes(x.ndim, axis)
    mean = x.mean(axis=axes)
    var = ((x - expand(mean, x.ndim, axis)) ** 2).mean(axis=axes)
    return mean, var, x.size // x.shape[axis]


def normalize(x, axis, mean, var, weight, bias, eps):
    x = np.asarray(x, dtype=np.float64)
    C = x.shape[axis]
    w = np.ones(C) if weight is None else weight
    b = np.zeros(C) if bias is None else bias
    nd = x.ndim
    return (x - expand(mean, nd, axis)) / np.sqrt(expand(var, nd, axis) + eps) * expand(w, nd, axis) \
        + expand(b, nd, axis)


def train_forward(x, axis, weight=None, bias=None, eps=1e-5):
    """(y, mean, biased var, count)."""
    mean, var, count = batch_stats(x, axis)
    return normalize(x, axis, mean, var, weight, bias, eps), mean, var, count


def train_backward(dy, x, axis, weight=None, eps=1e-5):
    """(dx, dweight, dbias) of training-mode batch norm, closed form."""
    x = np.asarray(x, dtype=np.float64)
    dy = np.asarray(dy, dtype=np.float64)
    nd = x.ndim
    axes = reduce_axes(nd, axis)
    mean, var, M = batch_stats(x, axis)
    invstd = 1.0 / np.sqrt(var + eps)
    xhat = (x - expand(mean, nd, axis)) * expand(invstd, nd, axis)
    dbias = dy.sum(axis=axes)
    dweight = (dy * xhat).sum(axis=axes)
    w = np.ones(x.shape[axis]) if weight is None else np.asarray(weight, np.float64)
    dx = expand(w * invstd, nd, axis) * (dy - expand(dbias, nd, axis) / M
                                         - xhat * expand(dweight, nd, axis) / M)
    return dx, dweight, dbias


def eval_backward(dy, x, axis, running_mean, running_var, weight=None, eps=1e-5):
    x = np.asarray(x, dtype=np.float64)
    dy = np.asarray(dy, dtype=np.float64)
    nd = x.ndim
    axes = reduce_axes(nd, axis)
    invstd = 1.0 / np.sqrt(np.asarray(running_var, np.float64) + eps)
    xhat = (x - expand(running_mean, nd, axis)) * expand(invstd, nd, axis)
    w = np.ones(x.shape[axis]) if weight is None else np.asarray(weight, np.float64)
    return dy * expand(w * invstd, nd, axis), (dy * xhat).sum(axis=axes), dy.sum(axis=axes)


class RunningStats:
    """PyTorch's running-average bookkeeping, in float64."""

    def __init__(self, C, momentum=0.1):
        self.mean = np.zeros(C)
        self.var = np.ones(C)
        self.steps = 0
        self.momentum = momentum

    def update(self, x, axis):
        mean, var, count = batch_stats(x, axis)
        self.steps += 1
        m = 1.0 / self.steps if self.momentum is None else self.momentum
        self.mean = (1 - m) * self.mean + m * mean
        self.var = (1 - m) * self.var + m * var * count / (count - 1)


def renorm_corrections(mean, var, running_mean, running_var, eps, rmax, dmax):
    sigma = np.sqrt(np.asarray(running_var, np.float64) + eps)
    r = np.clip(np.sqrt(var + eps) / sigma, 1 / rmax, rmax)
    d = np.clip((mean - np.asarray(running_mean, np.float64)) / sigma, -dmax, dmax)
    return r, d


def renorm_forward(x, axis, running_mean, running_var, weight, bias, eps, rmax, dmax, r=None, d=None):
    """Batch renormalization; r and d given (frozen) or computed from x."""
    mean, var, _ = batch_stats(x, axis)
    if r is None:
        r, d = renorm_corrections(mean, var, running_mean, running_var, eps, rmax, dmax)
    nd = np.ndim(x)
    xhat = (np.asarray(x, np.float64) - expand(mean, nd, axis)) / np.sqrt(expand(var, nd, axis) + eps)
    return expand(weight, nd, axis) * (xhat * expand(r, nd, axis) + expand(d, nd, axis)) \
        + expand(bias, nd, axis), r, d


def renorm_backward(dy, x, axis, weight, r, d, eps=1e-5):
    """(dx, dweight, dbias) with r and d constants."""
    dx, g_xhat, g = train_backward(dy, x, axis, np.asarray(weight, np.float64) * r, eps)
    return dx, g_xhat * r + g * d, g


class PaperRenorm:
    """Batch Renormalization as Algorithm 1 of Ioffe (2017) writes it, step by
    step in float64: moving mu and sigma, sigma_B = sqrt(biased var_B + eps),
    r and d clipped and treated as constants in the backward, then
    mu += alpha (mu_B - mu) and sigma += alpha (sigma_B - sigma)."""

    def __init__(self, mu, sigma, gamma, beta, eps, alpha):
        self.mu, self.sigma = np.array(mu, np.float64), np.array(sigma, np.float64)
        self.gamma, self.beta = np.array(gamma, np.float64), np.array(beta, np.float64)
        self.eps, self.alpha = eps, alpha

    def step(self, x, dy, axis, rmax, dmax):
        """(y, dx, dgamma, dbeta, r, d) of one training step; moves mu and sigma."""
        x, dy, nd = np.asarray(x, np.float64), np.asarray(dy, np.float64), np.ndim(x)
        axes = reduce_axes(nd, axis)
        m = x.size // x.shape[axis]
        mu_b = x.mean(axis=axes)
        sigma_b = np.sqrt(((x - expand(mu_b, nd, axis)) ** 2).mean(axis=axes) + self.eps)
        r = np.clip(sigma_b / self.sigma, 1 / rmax, rmax)
        d = np.clip((mu_b - self.mu) / self.sigma, -dmax, dmax)
        centred = x - expand(mu_b, nd, axis)
        xhat = centred / expand(sigma_b, nd, axis) * expand(r, nd, axis) + expand(d, nd, axis)
        y = expand(self.gamma, nd, axis) * xhat + expand(self.beta, nd, axis)
        # the paper's backward, term by term
        dxhat = dy * expand(self.gamma, nd, axis)
        dsigma_b = np.sum(dxhat * centred * expand(-r / sigma_b ** 2, nd, axis), axis=axes)
        dmu_b = np.sum(dxhat * expand(-r / sigma_b, nd, axis), axis=axes)
        dx = (dxhat * expand(r / sigma_b, nd, axis)
              + expand(dsigma_b, nd, axis) * centred / expand(m * sigma_b, nd, axis)
              + expand(dmu_b / m, nd, axis))
        dgamma, dbeta = np.sum(dy * xhat, axis=axes), np.sum(dy, axis=axes)
        self.mu = self.mu + self.alpha * (mu_b - self.mu)
        self.sigma = self.sigma + self.alpha * (sigma_b - self.sigma)
        return y, dx, dgamma, dbeta, r, d
