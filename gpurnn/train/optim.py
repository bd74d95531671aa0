"""Optimizers over dicts of named arrays, updated in place.

The optimizers hold only their own state (momentum buffers, Adam moments), keyed by
parameter name; the parameters and gradients are passed to every ``step``. That way a
model whose ``load_state_dict`` swaps in new arrays keeps training with the same
optimizer, and a checkpoint can save the state as plain named arrays.

Both follow torch.optim's formulas exactly (tests compare them), so learning rates and
habits carry over.

Clipping is split so that a training step reads every gradient twice and writes none:
``global_norm`` (one pass per array), then ``step(params, grads, grad_scale=clip_scale(norm,
max_norm))``, which applies the clip factor inside the update. On NumPy arrays both run as
compiled passes (gpurnn.train.fused: one per array, no temporaries); on other arrays
(CuPy), or with ``fused=False``, as the array expressions below, which are also the
reference the compiled passes are tested against. ``clip_grad_norm`` still clips in place
for loops that want the clipped gradients themselves.
"""
import math

import numpy as np

from ..arrays import array_module
from ..contract import decline


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
    """sqrt(sum of squares) over every array of one dict or a list of dicts (float64).
    NumPy arrays: one compiled pass each (gpurnn.train.fused.sum_squares); others: xp."""
    total = 0.0
    for g in _arrays(grads):
        if isinstance(g, np.ndarray):
            from . import fused
            total += fused.sum_squares(np.ravel(g))     # a view where g is contiguous
        else:
            total += float((g.astype(np.float64) ** 2).sum())
    return math.sqrt(total)


def clip_scale(norm, max_norm):
    """The factor that brings a gradient of global norm ``norm`` to at most ``max_norm``
    (1.0 where it is already within): what clipping multiplies every gradient by."""
    if not max_norm > 0:
        raise ValueError(f"max_norm: expected a positive number, got {max_norm!r}")
    return max_norm / (norm + 1e-12) if norm > max_norm else 1.0


def clip_grad_norm(grads, max_norm):
    """Scale the gradients in place so their global norm is at most ``max_norm``.

    Returns the norm before clipping (what to log: spikes show exploding gradients).
    """
    norm = global_norm(grads)
    scale = clip_scale(norm, max_norm)
    if scale != 1.0:
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


# Plain paths that are no fallback: the user's choice, or device arrays (the fused pass is
# a CPU kernel). Any other plain path on NumPy arrays is one: it warns once, and raises
# under GPURNN_STRICT=1 (contract.decline).
_NOT_NUMPY = "plain: not NumPy arrays (the fused pass needs them)"
_CHOSEN = ("plain: fused=False", _NOT_NUMPY)


class Optimizer:
    """Base: ``step(params, grads, grad_scale)`` updates every ``params[name]`` in place.

    ``fused`` (default True): a parameter whose arrays (parameter, gradient, buffers) are
    NumPy arrays of one dtype and shape, the written ones C-contiguous, is updated in one
    compiled pass (gpurnn.train.fused); any other, or every one with False, by the array
    expressions of ``_update``. ``paths`` says which ran for each name in the last step:
    "fused", or "plain: <why>"; a plain path on NumPy arrays that could not be fused (a
    dtype, shape or layout the pass does not take) warns once, and GPURNN_STRICT=1 raises
    gpurnn.contract.FallbackError.
    """
    name = "optimizer"
    buffer_kinds = ()           # the state arrays kept per parameter, "<kind>/<name>"

    def __init__(self, lr, fused=True):
        if not lr > 0:
            raise ValueError(f"lr: expected a positive learning rate, got {lr!r}")
        self.lr = float(lr)
        self.buffers = {}           # "<buffer>/<param name>" -> array
        self.t = 0                  # steps taken
        self.fused = bool(fused)
        self.paths = {}

    def step(self, params, grads, grad_scale=1.0):
        """One update of every ``params[name]`` from ``grads[name] * grad_scale`` (the clip
        factor, clip_scale; the arrays in ``grads`` are read, never changed)."""
        missing = [k for k in params if k not in grads]
        if missing:
            raise ValueError(f"grads: missing gradients for {missing}")
        self.t += 1
        constants = {}              # per dtype: the step's scalars, as the kernels take them
        for name, p in params.items():
            g = grads[name]
            buffers = [self._buffer(kind, name, p) for kind in self.buffer_kinds]
            path = self.paths[name] = self._path(p, g, buffers)
            if path.startswith("plain: ") and path not in _CHOSEN:
                decline(f"gpurnn {self.name}: {name} updated by array expressions, not the "
                        f"fused pass ({path[7:]})")
            if path == "fused":
                if p.dtype not in constants:
                    constants[p.dtype] = self._constants(p.dtype.type, grad_scale)
                self._fused_update(p.reshape(-1), np.ravel(g),
                                   [b.reshape(-1) for b in buffers], constants[p.dtype])
            else:
                if grad_scale != 1.0:
                    g = g * g.dtype.type(grad_scale)      # as clip_grad_norm scales it
                self._update(p, g, *buffers)

    def _path(self, p, g, buffers):
        if not self.fused:
            return "plain: fused=False"
        if not all(isinstance(a, np.ndarray) for a in (p, g, *buffers)):
            return _NOT_NUMPY
        if p.dtype.name not in ("float32", "float64"):
            return f"plain: the parameter is {p.dtype}"
        if any(a.dtype != p.dtype or a.shape != p.shape for a in (g, *buffers)):
            return "plain: gradient or buffers differ from the parameter in dtype or shape"
        if not all(a.flags.c_contiguous for a in (p, *buffers)):
            return "plain: the parameter or a buffer is not C-contiguous (updated in place)"
        return "fused"

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

    def __init__(self, lr, momentum=0.0, fused=True):
        super().__init__(lr, fused)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum: expected a number in [0, 1), got {momentum!r}")
        self.momentum = float(momentum)
        self.buffer_kinds = ("velocity",) if self.momentum else ()

    def hyperparameters(self):
        return {"lr": self.lr, "momentum": self.momentum}

    def _constants(self, f, grad_scale):
        """This step's scalars in the parameters' dtype ``f`` (as Adam._constants)."""
        return f(grad_scale), f(self.momentum), f(self.lr)

    def _fused_update(self, p, g, buffers, constants):
        from . import fused
        fused.sgd_update(p, g, buffers[0] if buffers else None, *constants)

    def _update(self, p, g, v=None):
        _, momentum, lr = self._constants(p.dtype.type, 1.0)
        if v is not None:
            v *= momentum
            v += g
            g = v
        p -= lr * g


class Adam(Optimizer):
    """Adam (torch.optim.Adam, no weight decay) with bias-corrected moments."""
    name = "adam"
    buffer_kinds = ("m", "v")

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, fused=True):
        super().__init__(lr, fused)
        self.beta1, self.beta2 = (float(b) for b in betas)
        self.eps = float(eps)

    def hyperparameters(self):
        return {"lr": self.lr, "beta1": self.beta1, "beta2": self.beta2, "eps": self.eps}

    def _constants(self, f, grad_scale):
        """The scalars of this step's update, in the parameters' dtype ``f`` (the fused
        pass's arguments after m, v; _update computes the same ones)."""
        bias1 = 1 - self.beta1 ** self.t
        bias2 = 1 - self.beta2 ** self.t
        return (f(grad_scale), f(self.beta1), f(1 - self.beta1), f(self.beta2), f(1 - self.beta2),
                f(math.sqrt(bias2)), f(self.eps), f(self.lr / bias1))

    def _fused_update(self, p, g, buffers, constants):
        from . import fused
        fused.adam_update(p, g, *buffers, *constants)

    def _update(self, p, g, m, v):
        _, beta1, one_minus_beta1, beta2, one_minus_beta2, root_bias2, eps, step_size = \
            self._constants(p.dtype.type, 1.0)
        m *= beta1
        m += one_minus_beta1 * g
        v *= beta2
        v += one_minus_beta2 * g * g
        denom = array_module(v).sqrt(v) / root_bias2 + eps
        p -= step_size * m / denom


def make_optimizer(name, lr, momentum=0.9, fused=True):
    if name == "adam":
        return Adam(lr, fused=fused)
    if name == "sgd":
        return SGD(lr, momentum, fused=fused)
    raise ValueError(f"optimizer: expected 'adam' or 'sgd', got {name!r}")
