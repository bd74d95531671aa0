"""Optimizers over dicts of named arrays, updated in place.

The optimizers hold only their own state (momentum buffers, Adam moments), keyed by
parameter name; the parameters and gradients are passed to every ``step``. That way a
model whose ``load_state_dict`` swaps in new arrays keeps training with the same
optimizer, and a checkpoint can save the state as plain named arrays.

Both follow torch.optim's formulas exactly (tests compare them), so learning rates and
habits carry over.
"""
import math

import numpy as np

from ..arrays import array_module


def prefixed(**groups):
    """One dict of named arrays from several: prefixed(rnn=a, head=b) names a's entries
    "rnn.<name>" and b's "head.<name>", in that order (what a model of several parts
    hands the optimizer and a checkpoint)."""
    return {f"{group}.{name}": value for group, named in groups.items() for name, value in named.items()}


def unprefixed(named, group):
    """The entries of ``named`` under "<group>.", with the prefix removed (prefixed's inverse)."""
    head = group + "."
    return {name[len(head):]: value for name, value in named.items() if name.startswith(head)}


def global_norm(grads):
    """sqrt(sum of squares) over every array of one dict or a list of dicts (float64)."""
    total = 0.0
    for g in _arrays(grads):
        total += float((g.astype(np.float64) ** 2).sum())
    return math.sqrt(total)


def clip_grad_norm(grads, max_norm):
    """Scale the gradients in place so their global norm is at most ``max_norm``.

    Returns the norm before clipping (what to log: spikes show exploding gradients).
    """
    if not max_norm > 0:
        raise ValueError(f"max_norm: expected a positive number, got {max_norm!r}")
    norm = global_norm(grads)
    if norm > max_norm:
        scale = max_norm / (norm + 1e-12)
        for g in _arrays(grads):
            g *= g.dtype.type(scale)
    return norm


def _arrays(grads):
    dicts = [grads] if isinstance(grads, dict) else list(grads)
    for d in dicts:
        for name, g in d.items():
            if isinstance(g, np.generic) or not hasattr(g, "dtype"):
                # a scalar cannot be scaled in place: clipping would silently skip it
                raise TypeError(f"grads[{name!r}]: expected an array, got {type(g).__name__}")
            yield g


class Optimizer:
    """Base: ``step(params, grads)`` updates every ``params[name]`` in place."""
    name = "optimizer"

    def __init__(self, lr):
        if not lr > 0:
            raise ValueError(f"lr: expected a positive learning rate, got {lr!r}")
        self.lr = float(lr)
        self.buffers = {}           # "<buffer>/<param name>" -> array
        self.t = 0                  # steps taken

    def step(self, params, grads):
        missing = [k for k in params if k not in grads]
        if missing:
            raise ValueError(f"grads: missing gradients for {missing}")
        self.t += 1
        for name, p in params.items():
            self._update(name, p, grads[name])

    def _buffer(self, kind, name, like):
        key = f"{kind}/{name}"
        if key not in self.buffers:
            self.buffers[key] = array_module(like).zeros_like(like)
        return self.buffers[key]

    def hyperparameters(self):
        return {"lr": self.lr}

    def state_dict(self):
        """(arrays, meta): named buffers and a JSON-able dict (name, step, hyperparameters)."""
        return dict(self.buffers), {"name": self.name, "t": self.t, **self.hyperparameters()}

    def load_state_dict(self, arrays, meta, asarray=np.array):
        """Restore from ``state_dict()``'s output; ``asarray`` moves host arrays to the
        parameters' backend (e.g. a backend's ``asarray``)."""
        if meta.get("name") != self.name:
            raise ValueError(f"optimizer state: expected {self.name!r}, got {meta.get('name')!r}")
        self.t = int(meta["t"])
        self.buffers = {k: asarray(np.array(v)) for k, v in arrays.items()}


class SGD(Optimizer):
    """SGD with momentum (torch.optim.SGD): v = mu v + g; p -= lr v."""
    name = "sgd"

    def __init__(self, lr, momentum=0.0):
        super().__init__(lr)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum: expected a number in [0, 1), got {momentum!r}")
        self.momentum = float(momentum)

    def hyperparameters(self):
        return {"lr": self.lr, "momentum": self.momentum}

    def _update(self, name, p, g):
        if self.momentum:
            v = self._buffer("velocity", name, p)
            v *= v.dtype.type(self.momentum)
            v += g
            g = v
        p -= p.dtype.type(self.lr) * g


class Adam(Optimizer):
    """Adam (torch.optim.Adam, no weight decay) with bias-corrected moments."""
    name = "adam"

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
        super().__init__(lr)
        self.beta1, self.beta2 = (float(b) for b in betas)
        self.eps = float(eps)

    def hyperparameters(self):
        return {"lr": self.lr, "beta1": self.beta1, "beta2": self.beta2, "eps": self.eps}

    def _update(self, name, p, g):
        m = self._buffer("m", name, p)
        v = self._buffer("v", name, p)
        f = p.dtype.type
        m *= f(self.beta1)
        m += f(1 - self.beta1) * g
        v *= f(self.beta2)
        v += f(1 - self.beta2) * g * g
        bias1 = 1 - self.beta1 ** self.t
        bias2 = 1 - self.beta2 ** self.t
        denom = array_module(v).sqrt(v) / f(math.sqrt(bias2)) + f(self.eps)
        p -= f(self.lr / bias1) * m / denom


def make_optimizer(name, lr, momentum=0.9):
    if name == "adam":
        return Adam(lr)
    if name == "sgd":
        return SGD(lr, momentum)
    raise ValueError(f"optimizer: expected 'adam' or 'sgd', got {name!r}")
