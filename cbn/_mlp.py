"""A small NumPy multilayer perceptron with optional batch normalization.

The model of the demo (the setting of Ioffe & Szegedy's MNIST experiment):
dense layers, each hidden one followed by batch norm (optional) and a
sigmoid, then a softmax output trained with cross-entropy and plain SGD.
Written out in NumPy so the forward/backward/update loop around the cbn
layers is visible; see examples/ for the same pattern in a CNN.
"""
import time

import numpy as np

from .batchnorm import BatchNorm1d


def sigmoid(z):
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # no overflow warnings for large |z|


class MLP:
    """sizes[0] inputs, hidden layers of sizes[1:-1] sigmoid units, sizes[-1] classes.

    norm: None for no batch norm, or a callable C -> layer (e.g. a
    cbn.BatchNorm1d or cbn.SyncBatchNorm factory) placed before each sigmoid;
    the dense layers before a norm have no bias (the norm's beta replaces it).
    """

    def __init__(self, sizes, norm=None, seed=0, dtype=np.float64):
        rng = np.random.default_rng(seed)
        self.dtype = np.dtype(dtype)
        self.weights = [(rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)).astype(dtype)
                        for n_in, n_out in zip(sizes[:-1], sizes[1:])]
        hidden = len(sizes) - 2
        self.norms = [norm(n) for n in sizes[1:-1]] if norm is not None else [None] * hidden
        self.biases = [None if self.norms[i] is not None else np.zeros(n, dtype)
                       for i, n in enumerate(sizes[1:-1])] + [np.zeros(sizes[-1], dtype)]
        self._cache = None
        # seconds spent in the norm layers' calls (forward and backward)
        self.norm_seconds = 0.0

    def train(self, mode=True):
        for bn in self.norms:
            if bn is not None:
                bn.train(mode)
        return self

    def forward(self, x):
        """Logits for x (B, sizes[0]); keeps what backward needs.

        Also returns the inputs of the last hidden layer's sigmoids (B, units).
        """
        activations, gates = [x], []
        a = x
        for W, b, bn in zip(self.weights[:-1], self.biases[:-1], self.norms):
            z = a @ W
            if b is not None:
                z += b
            if bn is not None:
                start = time.perf_counter()
                z = bn(z)
                self.norm_seconds += time.perf_counter() - start
            a = sigmoid(z)
            gates.append(z)
            activations.append(a)
        logits = a @ self.weights[-1] + self.biases[-1]
        self._cache = activations
        return logits, gates[-1]

    def backward(self, dlogits):
        """Gradients of every parameter for dlogits (the loss gradient of the logits)."""
        activations = self._cache
        grads_w, grads_b, grads_bn = [None] * len(self.weights), [None] * len(self.biases), []
        grads_w[-1] = activations[-1].T @ dlogits
        grads_b[-1] = dlogits.sum(axis=0)
        da = dlogits @ self.weights[-1].T
        for i in range(len(self.weights) - 2, -1, -1):
            a = activations[i + 1]
            dz = da * a * (1.0 - a)
            bn = self.norms[i]
            if bn is not None:
                start = time.perf_counter()
                dz = bn.backward(dz)
                self.norm_seconds += time.perf_counter() - start
                grads_bn.append((bn, bn.grad_weight, bn.grad_bias))
            else:
                grads_b[i] = dz.sum(axis=0)
            grads_w[i] = activations[i].T @ dz
            if i > 0:
                da = dz @ self.weights[i].T
        return grads_w, grads_b, grads_bn

    def gradient_arrays(self, grads):
        """Every gradient array, in a fixed order (for all-reducing them)."""
        grads_w, grads_b, grads_bn = grads
        return grads_w + [g for g in grads_b if g is not None] + [
            g for _, gw, gb in grads_bn for g in (gw, gb)]

    def sgd(self, grads, lr):
        grads_w, grads_b, grads_bn = grads
        for W, g in zip(self.weights, grads_w):
            W -= lr * g
        for b, g in zip(self.biases, grads_b):
            if b is not None:
                b -= lr * g
        for bn, gw, gb in grads_bn:
            bn.weight -= lr * gw
            bn.bias -= lr * gb


def softmax_cross_entropy(logits, labels, scale=None):
    """(mean loss, its gradient of the logits); scale: divide by this batch size
    instead of len(labels) (a shard of a larger batch)."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    n = len(labels) if scale is None else scale
    loss = -log_probs[np.arange(len(labels)), labels].sum() / n
    dlogits = np.exp(log_probs)
    dlogits[np.arange(len(labels)), labels] -= 1.0
    return loss, dlogits / n


def batchnorm_factory(dtype=np.float64):
    return lambda C: BatchNorm1d(C, dtype=dtype)
