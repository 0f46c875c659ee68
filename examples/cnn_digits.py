"""A small convolutional network in NumPy with cbn.BatchNorm2d, in NCHW and NHWC.

    python examples/cnn_digits.py [--epochs 8] [--seed 0]

conv 3x3 (1 -> 16) -> BatchNorm2d + ReLU (fused) -> 2x2 max-pool ->
conv 3x3 (16 -> 32) -> BatchNorm2d + ReLU -> 2x2 max-pool -> dense (128 -> 10),
trained with SGD on scikit-learn's 8x8 handwritten digits. The same network
runs in both layouts from the same initial weights; convolutions are
sliding_window_view + matmul, written out forward and backward.
"""
import argparse
import time

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

import cbn


class Conv3x3:
    """3x3 convolution, padding 1, stride 1, no bias (the batch norm's beta follows)."""

    def __init__(self, c_in, c_out, rng, layout):
        self.layout = layout
        self.w = rng.standard_normal((c_in * 9, c_out)) * np.sqrt(2.0 / (c_in * 9))

    def _nhwc(self, x):
        return x if self.layout == "NHWC" else x.transpose(0, 2, 3, 1)

    def forward(self, x):
        x = self._nhwc(x)  # (N, H, W, C)
        N, H, W, C = x.shape
        padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        cols = sliding_window_view(padded, (3, 3), axis=(1, 2)).reshape(N * H * W, C * 9)
        self.cache = (cols, x.shape)
        y = (cols @ self.w).reshape(N, H, W, -1)
        return y if self.layout == "NHWC" else np.ascontiguousarray(y.transpose(0, 3, 1, 2))

    def backward(self, dy):
        cols, (N, H, W, C) = self.cache
        dy = self._nhwc(dy).reshape(N * H * W, -1)
        self.dw = cols.T @ dy
        dcols = (dy @ self.w.T).reshape(N, H, W, C, 3, 3)
        dpadded = np.zeros((N, H + 2, W + 2, C))
        for i in range(3):
            for j in range(3):
                dpadded[:, i:i + H, j:j + W, :] += dcols[..., i, j]
        dx = dpadded[:, 1:-1, 1:-1, :]
        return dx if self.layout == "NHWC" else dx.transpose(0, 3, 1, 2)


class MaxPool2:
    def __init__(self, layout):
        self.layout = layout

    def forward(self, x):
        h_axis = 2 if self.layout == "NCHW" else 1
        shape = list(x.shape)
        shape[h_axis:h_axis + 2] = [shape[h_axis] // 2, 2, shape[h_axis + 1] // 2, 2]
        blocks = x.reshape(shape)
        y = blocks.max(axis=(h_axis + 1, h_axis + 3))
        self.cache = (blocks == np.expand_dims(y, (h_axis + 1, h_axis + 3)), x.shape, h_axis)
        return y

    def backward(self, dy):
        mask, shape, h_axis = self.cache
        return (mask * np.expand_dims(dy, (h_axis + 1, h_axis + 3))).reshape(shape)


class Net:
    def __init__(self, layout, seed):
        rng = np.random.default_rng(seed)
        self.layers = [Conv3x3(1, 16, rng, layout),
                       cbn.BatchNorm2d(16, dtype=np.float64, layout=layout, activation="relu"),
                       MaxPool2(layout), Conv3x3(16, 32, rng, layout),
                       cbn.BatchNorm2d(32, dtype=np.float64, layout=layout, activation="relu"),
                       MaxPool2(layout)]
        self.layout = layout
        self.w = rng.standard_normal((128, 10)) * np.sqrt(1.0 / 128)
        self.b = np.zeros(10)

    def forward(self, x):
        for layer in self.layers:
            x = layer.forward(x)
        # flatten in NCHW order so both layouts use the same dense weights
        self.flat_shape = x.shape
        flat = (x if self.layout == "NCHW" else x.transpose(0, 3, 1, 2)).reshape(len(x), -1)
        self.flat = flat
        return flat @ self.w + self.b

    def backward(self, dlogits):
        self.dw, self.db = self.flat.T @ dlogits, dlogits.sum(axis=0)
        d = (dlogits @ self.w.T).reshape(len(dlogits), 32, 2, 2)
        d = np.ascontiguousarray(d if self.layout == "NCHW" else d.transpose(0, 2, 3, 1))
        for layer in reversed(self.layers):
            d = layer.backward(d)

    def sgd(self, lr):
        self.w -= lr * self.dw
        self.b -= lr * self.db
        for layer in self.layers:
            if isinstance(layer, Conv3x3):
                layer.w -= lr * layer.dw
            elif isinstance(layer, cbn.BatchNorm2d):
                layer.weight -= lr * layer.grad_weight
                layer.bias -= lr * layer.grad_bias

    def train(self, mode):
        for layer in self.layers:
            if isinstance(layer, cbn.BatchNorm2d):
                layer.train(mode)


def images(X, layout):
    x = X.reshape(-1, 1, 8, 8)
    return x if layout == "NCHW" else np.ascontiguousarray(x.transpose(0, 2, 3, 1))


def main(epochs=8, seed=0, lr=0.05, batch=64, print_=print):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X / 16.0, y, test_size=0.2, stratify=y,
                                                        random_state=seed)
    print_(f"digits: {len(X_train)} training and {len(X_test)} test images of 8x8, {epochs} "
           f"epochs of batches of {batch}, SGD lr {lr}")
    accuracies = {}
    for layout in ("NCHW", "NHWC"):
        net = Net(layout, seed)
        rng = np.random.default_rng(seed + 1)
        start = time.perf_counter()
        for _ in range(epochs):
            order = rng.permutation(len(X_train))
            for first in range(0, len(order) - batch + 1, batch):
                rows = order[first:first + batch]
                logits = net.forward(images(X_train[rows], layout))
                p = np.exp(logits - logits.max(axis=1, keepdims=True))
                p /= p.sum(axis=1, keepdims=True)
                p[np.arange(len(rows)), y_train[rows]] -= 1
                net.backward(p / len(rows))
                net.sgd(lr)
        net.train(False)
        accuracy = float((net.forward(images(X_test, layout)).argmax(axis=1) == y_test).mean())
        accuracies[layout] = accuracy
        print_(f"{layout}: test accuracy {accuracy:.3f} ({time.perf_counter() - start:.1f} s)")
    return accuracies


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    main(args.epochs, args.seed)
