"""One-step-ahead forecasting with the lecture note's model family, side by side.

* AR(tau): x_t ~ a . (x_{t-1}, ..., x_{t-tau}) + c, fitted by least squares. Sees exactly
  the last tau values.
* MLP on the window: the same tau values through a tanh hidden layer; nonlinear, but with
  no recurrence it still sees nothing older than tau steps.
* Latent AR (RNN, LSTM, GRU): H_t = Net(H_{t-1}, X_{t-1}), x_t ~ H_t W + b. The hidden state
  summarises the whole past; trained with truncated BPTT over windows that carry the state.

Two synthetic series show when each wins:

* ``quasi_periodic_series``: two long-period oscillations (periods well beyond tau) seen
  through observation noise. The clean signal's phase is pinned down by the far past: a
  window of tau noisy values estimates it badly, a hidden state integrating all of the
  past filters the noise away. Latent models win.
* ``ar_series``: a stationary AR(tau) process. x_t depends on exactly the last tau values
  plus fresh noise, so least-squares AR(tau) is the optimal predictor: hard to beat.

Every model predicts x_t for each t in the test range from x_<t only; the series are
standardised with the training part's mean and standard deviation.
"""
import numpy as np

from ..arrays import to_numpy
from ..layers import make_layer
from ..train.optim import Adam, clip_grad_norm, prefixed, unprefixed
from ..train.tbptt import tbptt_window, window_at

# ----------------------------------------------------------------------------- series


def quasi_periodic_series(n, periods=(23.0, 61.0), amplitudes=(1.0, 0.7), noise=0.2, seed=0):
    """sum_i A_i sin(2 pi t / P_i + phi_i) + noise * N(0, 1), random phases phi_i."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    clean = sum(a * np.sin(2 * np.pi * t / p + rng.uniform(0, 2 * np.pi))
                for p, a in zip(periods, amplitudes))
    return clean + noise * rng.standard_normal(n)


DEFAULT_AR_COEFFS = (0.55, -0.25, 0.3, -0.2, 0.15)


def ar_series(n, coeffs=DEFAULT_AR_COEFFS, noise=1.0, seed=0, burn_in=500):
    """x_t = sum_i a_i x_{t-i} + noise * N(0, 1); ValueError if not stationary."""
    coeffs = np.asarray(coeffs, dtype=np.float64)
    roots = np.roots(np.r_[1.0, -coeffs])
    if np.any(np.abs(roots) >= 1):
        raise ValueError(f"coeffs: AR process is not stationary (root moduli {np.abs(roots).round(3)})")
    rng = np.random.default_rng(seed)
    tau = len(coeffs)
    x = np.zeros(n + burn_in + tau)
    eps = noise * rng.standard_normal(len(x))
    for t in range(tau, len(x)):
        x[t] = coeffs @ x[t - tau:t][::-1] + eps[t]
    return x[-n:]


def lagged(x, tau):
    """Rows (x_{t-1}, ..., x_{t-tau}) for t = tau..n-1, and the targets x_t."""
    windows = np.stack([x[tau - i - 1:len(x) - i - 1] for i in range(tau)], axis=1)
    return windows, x[tau:]

# ----------------------------------------------------------------------------- models


class ARModel:
    """AR(tau) with intercept, least squares."""

    def __init__(self, tau):
        self.tau = tau
        self.name = f"AR({tau})"

    def fit(self, x):
        X, y = lagged(x, self.tau)
        self.coef = np.linalg.lstsq(np.c_[X, np.ones(len(X))], y, rcond=None)[0]
        return self

    def predict(self, x, start):
        """Predictions of x[start:] (start >= tau), each from the tau values before it."""
        X, _ = lagged(x, self.tau)
        return (np.c_[X, np.ones(len(X))] @ self.coef)[start - self.tau:]


class WindowMLP:
    """MLP on the window: y = tanh(X W1 + b1) w2 + b2, trained with Adam on MSE."""

    def __init__(self, tau, hidden=32, steps=1500, batch=128, lr=3e-3, seed=0):
        self.tau, self.hidden, self.steps, self.batch, self.lr = tau, hidden, steps, batch, lr
        self.seed = seed
        self.name = f"MLP(window {tau})"

    def _forward(self, X):
        p = self.params
        a = np.tanh(X @ p["w1"] + p["b1"])
        return a, a @ p["w2"] + p["b2"]

    def loss_and_grads(self, X, y):
        """Mean squared error and its gradients (the backward of _forward)."""
        p = self.params
        a, pred = self._forward(X)
        err = pred - y
        dpred = 2 * err / len(y)
        grads = {"w2": a.T @ dpred, "b2": np.array(dpred.sum()), }
        da = np.outer(dpred, p["w2"]) * (1 - a ** 2)
        grads.update(w1=X.T @ da, b1=da.sum(axis=0))
        return float(np.mean(err ** 2)), grads

    def fit(self, x):
        rng = np.random.default_rng(self.seed)
        X, y = lagged(x, self.tau)
        h = self.hidden
        self.params = {"w1": rng.normal(0, 1 / np.sqrt(self.tau), (self.tau, h)), "b1": np.zeros(h),
                       "w2": rng.normal(0, 1 / np.sqrt(h), h), "b2": np.array(0.0)}
        opt = Adam(self.lr)
        for _ in range(self.steps):
            idx = rng.integers(0, len(y), self.batch)
            _, grads = self.loss_and_grads(X[idx], y[idx])
            opt.step(self.params, grads)
        return self

    def predict(self, x, start):
        X, _ = lagged(x, self.tau)
        return self._forward(X)[1][start - self.tau:]


class LatentAR:
    """Latent autoregression H_t = Net(H_{t-1}, x_{t-1}), x_t ~ H_t w + b with a gpurnn cell,
    trained with truncated BPTT: ``batch`` streams, windows of ``window`` steps, the state
    carried from window to window with its gradient stopped."""

    LABELS = {"rnn_tanh": "RNN (latent AR)", "rnn_relu": "ReLU RNN (latent AR)",
              "lstm": "LSTM (latent AR)", "gru": "GRU (latent AR)"}

    def __init__(self, cell="gru", hidden=32, window=32, batch=16, steps=800, lr=1e-2,
                 clip=1.0, backend="auto", seed=0, eval_every=50):
        self.cell, self.hidden, self.window, self.batch = cell, hidden, window, batch
        self.eval_every = eval_every
        self.steps, self.lr, self.clip, self.backend, self.seed = steps, lr, clip, backend, seed
        self.name = self.LABELS.get(cell, cell)

    def _params(self):
        return prefixed(rnn=self.rnn.parameters(), head=self.head)

    def fit(self, x):
        """Train on the first 80% of ``x``; the last 20% picks the best weights seen
        (early stopping: a latent model can memorise a noisy series' noise)."""
        self.rnn = make_layer(self.cell, 1, self.hidden, backend=self.backend, dtype="float32",
                              seed=self.seed)
        xp = self.rnn.backend_impl.xp
        rng = np.random.default_rng(self.seed)
        self.head = {"w": xp.asarray(rng.normal(0, 1 / np.sqrt(self.hidden), self.hidden).astype(np.float32)),
                     "b": xp.zeros((), np.float32)}
        split = int(0.8 * len(x))
        train = x[:split]
        # Fewer streams on short series, so each still has several windows: with one window
        # per stream every step would see the same few points (and overfit them).
        batch = max(1, min(self.batch, (len(train) - 1) // (4 * self.window)))
        length = (len(train) - 1) // batch
        inputs = train[:batch * length].reshape(batch, length).T.astype(np.float32)          # x_{t-1}
        targets = train[1:batch * length + 1].reshape(batch, length).T.astype(np.float32)   # x_t
        opt = Adam(self.lr)
        windows = max(1, length // self.window)
        state, best = None, (np.inf, None)
        head_grads = {}

        def mse_head(out, start):
            """The head's forward and backward on one window: (None, dL/d out); the loss
            value is not needed (no device sync for it), the head's gradients land in
            head_grads."""
            pred = out @ self.head["w"] + self.head["b"]                 # (k, B)
            dpred = 2 * (pred - xp.asarray(targets[start:start + self.window])) / pred.size
            head_grads.update(w=xp.tensordot(out, dpred, axes=([0, 1], [0, 1])),
                              b=xp.asarray(dpred.sum()))   # a 0-d array, so clipping scales it in place
            return None, dpred[:, :, None] * self.head["w"]

        for step in range(self.steps):
            steps, state = window_at(step, self.window, windows, state)
            self.rnn.zero_grad()
            _, state = tbptt_window(self.rnn, xp.asarray(inputs[steps, :, None]), mse_head, state,
                                    steps.start)
            grads = prefixed(rnn=self.rnn.grads, head=head_grads)
            clip_grad_norm(grads, self.clip)
            opt.step(self._params(), grads)
            if (step + 1) % self.eval_every == 0 or step + 1 == self.steps:
                val_mse = float(np.mean((self.predict(x, split) - x[split:]) ** 2))
                if val_mse < best[0]:
                    best = (val_mse, {k: v.copy() for k, v in self._params().items()})
        self.rnn.load_state_dict(unprefixed(best[1], "rnn"))
        self.head = unprefixed(best[1], "head")
        self.val_mse = best[0]
        return self

    def predict(self, x, start):
        """Run the whole series once (state built from all of the past), keep x[start:]."""
        self.rnn.eval()
        u = np.r_[0.0, x[:-1]].astype(np.float32)[:, None, None]      # input at t is x_{t-1}
        out, _ = self.rnn(self.rnn.backend_impl.asarray(u))
        pred = out[:, 0, :] @ self.head["w"] + self.head["b"]
        self.rnn.train()
        return np.asarray(to_numpy(pred), dtype=np.float64)[start:]

# ----------------------------------------------------------------------------- comparison


def default_models(tau, hidden=32, steps=800, backend="auto", cells=("rnn_tanh", "lstm", "gru"), seed=0):
    models = [ARModel(tau), WindowMLP(tau, hidden=hidden, seed=seed)]
    models += [LatentAR(cell, hidden=hidden, steps=steps, backend=backend, seed=seed) for cell in cells]
    return models


def evaluate_models(series, models, train_fraction=0.75, progress=None):
    """Fit every model on the first part of the standardised series and return
    ({name: test MSE}, {name: test predictions}, standardised series, test start).
    ``progress(message)``, if given, is told which model is being fitted."""
    split = int(len(series) * train_fraction)
    mean, std = series[:split].mean(), series[:split].std()
    z = (series - mean) / std
    mse, preds = {}, {}
    for i, model in enumerate(models):
        if progress:
            progress(f"fitting {model.name} ({i + 1}/{len(models)})")
        model.fit(z[:split])
        p = model.predict(z, split)
        preds[model.name] = p
        mse[model.name] = float(np.mean((p - z[split:]) ** 2))
    return mse, preds, z, split


QUASI_PERIODIC_NOISE = 0.2


def run_forecast(n=4000, tau=5, hidden=32, steps=800, backend="auto", seed=0,
                 cells=("rnn_tanh", "lstm", "gru"), progress=None):
    """Both series, every model. Returns ({series name: (mse, preds, z, split)},
    {series name: noise floor}): the floor is the fresh noise's variance on the
    standardised scale, the MSE of a predictor that knew everything but the noise.
    ``progress(message)`` (optional) hears which series and model are being fitted."""
    series = {
        "quasi-periodic (far past matters)": (quasi_periodic_series(n, noise=QUASI_PERIODIC_NOISE, seed=seed),
                                              QUASI_PERIODIC_NOISE ** 2),
        f"AR({len(DEFAULT_AR_COEFFS)}) process": (ar_series(n, seed=seed), 1.0),
    }
    results, floors = {}, {}
    for name, (x, noise_var) in series.items():
        report = None if progress is None else (lambda message, name=name: progress(f"{name}: {message}"))
        results[name] = evaluate_models(x, default_models(tau, hidden, steps, backend, cells, seed),
                                        progress=report)
        floors[name] = noise_var / x[:results[name][3]].var()
    return results, floors


def results_table(results, floors=None):
    """Markdown table: one row per model, one column of test MSE per series (best in
    bold), and the noise floor per series when ``floors`` is given."""
    names = list(results)
    models = list(next(iter(results.values()))[0])
    lines = ["| model | " + " | ".join(f"test MSE: {n}" for n in names) + " |",
             "|---|" + "---|" * len(names)]
    for m in models:
        cells = []
        for n in names:
            mse = results[n][0]
            best = min(mse.values())
            cells.append(f"**{mse[m]:.4f}**" if mse[m] == best else f"{mse[m]:.4f}")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    if floors:
        lines.append("| *noise variance (expected floor)* | "
                     + " | ".join(f"*{floors[n]:.4f}*" for n in names) + " |")
    return "\n".join(lines)


def plot_forecasts(results, path, span=150):
    """One panel per series: the last ``span`` test steps and each model's forecast."""
    from .plotting import pyplot, save_figure
    plt = pyplot()
    fig, axes = plt.subplots(len(results), 1, figsize=(11, 3.3 * len(results)))
    axes = np.atleast_1d(axes)
    for ax, (name, (mse, preds, z, split)) in zip(axes, results.items()):
        span = min(span, len(z) - split)
        t = np.arange(len(z))[-span:]
        ax.plot(t, z[-span:], color="black", lw=1.5, label="series")
        for model, p in preds.items():
            ax.plot(t, p[-span:], lw=1, label=f"{model} (MSE {mse[model]:.3f})")
        ax.set_title(name)
        ax.set_xlabel("t (test steps)")
        ax.set_ylabel("value")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)  # off the data
        ax.grid(alpha=0.3)
    save_figure(fig, path, outside_legends=True)
