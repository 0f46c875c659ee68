"""``python -m cbn demo``: the setting of Ioffe & Szegedy's Figure 1 on real data.

A NumPy MLP (3 hidden layers of 100 sigmoid units, mini-batches of 60, plain
SGD) on scikit-learn's handwritten digits, trained without batch norm and
with cbn.BatchNorm1d before each sigmoid, at a base learning rate and at 5x
it: four runs from the same initial weights, data split and batch order.
Prints a table of what each run reached and writes a figure: test accuracy
against steps, and the 15th/50th/85th percentiles of one last-layer sigmoid's
input over training, without and with batch norm (the paper's Figure 1b/c).
"""
import time

import numpy as np

from ._mlp import MLP, batchnorm_factory, softmax_cross_entropy

SIZES = (64, 100, 100, 100, 10)
BATCH = 60
EVAL_EVERY = 50
UNIT = 0  # the last hidden layer's sigmoid whose input distribution is followed


def load_data(seed):
    """scikit-learn's digits (shipped with it, no download), pixels scaled to [0, 1], 80/20 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X / 16.0, y, test_size=0.2, stratify=y,
                                                        random_state=seed)
    return X_train, X_test, y_train, y_test


def train(data, batch_norm, lr, steps, seed, progress=None):
    """One run; returns what was measured along the way."""
    X_train, X_test, y_train, y_test = data
    model = MLP(SIZES, batchnorm_factory() if batch_norm else None, seed=seed)
    rng = np.random.default_rng(seed + 1)  # the same batches for every run
    order, position = rng.permutation(len(X_train)), 0
    record = {"steps": [], "accuracy": [], "percentiles": [], "loss": []}
    step_seconds = norm_seconds = 0.0
    start = time.perf_counter()
    for step in range(1, steps + 1):
        if position + BATCH > len(order):
            order, position = rng.permutation(len(X_train)), 0
        rows = order[position:position + BATCH]
        position += BATCH
        step_start, norm_start = time.perf_counter(), model.norm_seconds
        logits, _ = model.forward(X_train[rows])
        loss, dlogits = softmax_cross_entropy(logits, y_train[rows])
        model.sgd(model.backward(dlogits), lr)
        step_seconds += time.perf_counter() - step_start
        norm_seconds += model.norm_seconds - norm_start
        if step % EVAL_EVERY == 0 or step == steps:
            model.train(False)
            logits, gate = model.forward(X_test)
            model.train(True)
            record["steps"].append(step)
            record["loss"].append(float(loss))
            record["accuracy"].append(float((logits.argmax(axis=1) == y_test).mean()))
            record["percentiles"].append(np.percentile(gate[:, UNIT], [15, 50, 85]))
        if progress is not None:
            progress.update(1)
    record["seconds"] = time.perf_counter() - start
    # a training step (forward, loss, backward, update), and its batch norm calls
    record["step_us"] = step_seconds / steps * 1e6
    record["norm_us"] = norm_seconds / steps * 1e6
    reached = [s for s, a in zip(record["steps"], record["accuracy"]) if a >= 0.9]
    record["steps_to_90"] = reached[0] if reached else None
    return record


def plot(runs, base_lr, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    styles = {False: "--", True: "-"}
    for (bn, lr), rec in runs.items():
        axes[0].plot(rec["steps"], rec["accuracy"], styles[bn],
                     label=f"{'with' if bn else 'without'} BN, lr {lr:g}")
    axes[0].set(title="(a) test accuracy", xlabel="training steps", ylabel="accuracy",
                ylim=(0.0, 1.0))
    axes[0].axhline(0.9, color="grey", lw=0.5)
    axes[0].legend(loc="lower right")
    for ax, bn, name in ((axes[1], False, "(b) without BN"), (axes[2], True, "(c) with BN")):
        rec = runs[(bn, base_lr)]
        p = np.array(rec["percentiles"])
        for i, label in enumerate(("15th", "50th", "85th")):
            ax.plot(rec["steps"], p[:, i], label=f"{label} percentile")
        ax.set(title=f"{name}: input of a last-layer sigmoid (lr {base_lr:g})",
               xlabel="training steps", ylabel="sigmoid input")
        ax.legend(loc="center right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(steps=3000, seed=0, out="cbn_demo.png", lr=0.1, show_progress=True, print_=print):
    """Train the four runs, print the table, write the figure; return the records."""
    data = load_data(seed)
    X_train, X_test = data[0], data[1]
    print_(f"data: scikit-learn handwritten digits, {len(X_train) + len(X_test)} 8x8 images of 10 "
           f"classes; {len(X_train)} to train, {len(X_test)} to test (split seed {seed})")
    print_(f"model: MLP {'-'.join(map(str, SIZES))}, sigmoid hidden units, softmax output; "
           f"SGD, batches of {BATCH}, {steps} steps; test accuracy every {EVAL_EVERY} steps")
    configs = [(bn, rate) for rate in (lr, 5 * lr) for bn in (False, True)]
    progress = None
    if show_progress:
        from tqdm import tqdm

        progress = tqdm(total=steps * len(configs), unit="step", desc="training", leave=False)
    runs = {}
    try:
        for bn, rate in configs:
            runs[(bn, rate)] = train(data, bn, rate, steps, seed, progress)
    finally:
        if progress is not None:
            progress.close()
    print_(f"{'run':24s} {'final test accuracy':>20s} {'steps to 90%':>13s} "
           f"{'us per step':>12s} {'of it BN':>9s} {'wall time':>10s}")
    for (bn, rate), rec in runs.items():
        name = f"{'with' if bn else 'without'} BN, lr {rate:g}"
        reached = "never" if rec["steps_to_90"] is None else str(rec["steps_to_90"])
        norm = f"{rec['norm_us']:9.1f}" if bn else f"{'-':>9s}"
        print_(f"{name:24s} {rec['accuracy'][-1]:20.3f} {reached:>13s} {rec['step_us']:12.1f} "
               f"{norm} {rec['seconds']:9.2f}s")
    print_(f"us per step: one training step (forward, loss, backward, SGD update) of the "
           f"{BATCH}-row batch; of it BN: its {len(SIZES) - 2} BatchNorm1d layers' forward and "
           f"backward calls")
    plot(runs, lr, out)
    print_(f"figure: {out} (test accuracy; 15/50/85th percentiles of one last-layer sigmoid's "
           f"input, without and with BN)")
    return runs
