"""Pointwise operations a cell may use: ``from gpurnn import ops``.

    sigmoid(x)  tanh(x)  exp(x)  log(x)  softplus(x) = log(1 + e^x)  relu(x) = max(x, 0)
    maximum(a, b)  minimum(a, b)

A cell's forward (gpurnn.define_cell) is written with these, Python arithmetic and number
constants only. Each works on Python numbers, NumPy arrays and torch tensors, and on the
symbolic values ``define_cell`` traces the function with (gpurnn.cells.graph), which is
how one definition becomes the derived backward and the CPU and CUDA kernels.

Derivatives (used by the automatic backward; ties split evenly, as torch does):
    sigmoid' = y (1 - y)    tanh' = 1 - y^2    exp' = y    log' = 1/x
    softplus' = sigmoid(x)  relu' = [y > 0]    maximum: 1 to the larger argument
"""
import numpy as np

__all__ = ["sigmoid", "tanh", "exp", "log", "softplus", "relu", "maximum", "minimum", "NAMES"]


def _kind(args):
    """'trace' if any argument is a traced value, 'torch' if any is a tensor, else 'numpy'."""
    from .cells.graph import Node
    kind = "numpy"
    for a in args:
        if isinstance(a, Node):
            return "trace"
        if type(a).__module__.split(".")[0] == "torch":
            kind = "torch"
    return kind


def _op(name, numpy_fn, torch_name):
    def op(*args):
        kind = _kind(args)
        if kind == "trace":
            from .cells.graph import apply
            return apply(name, args)
        if kind == "torch":
            import torch
            return _TORCH[torch_name](torch, *args)
        return numpy_fn(*args)
    op.__name__ = op.__qualname__ = name
    return op


def _torch_binary(fn):
    def call(torch, a, b):
        like = a if isinstance(a, torch.Tensor) else b
        a = a if isinstance(a, torch.Tensor) else torch.as_tensor(a, dtype=like.dtype, device=like.device)
        b = b if isinstance(b, torch.Tensor) else torch.as_tensor(b, dtype=like.dtype, device=like.device)
        return fn(torch)(a, b)
    return call


_TORCH = {
    "sigmoid": lambda torch, x: torch.sigmoid(x),
    "tanh": lambda torch, x: torch.tanh(x),
    "exp": lambda torch, x: torch.exp(x),
    "log": lambda torch, x: torch.log(x),
    "softplus": lambda torch, x: torch.nn.functional.softplus(x),
    "relu": lambda torch, x: torch.relu(x),
    "maximum": _torch_binary(lambda torch: torch.maximum),
    "minimum": _torch_binary(lambda torch: torch.minimum),
}


def _np_sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x)))   # = 1/(1 + e^-x) without overflow


sigmoid = _op("sigmoid", _np_sigmoid, "sigmoid")
tanh = _op("tanh", np.tanh, "tanh")
exp = _op("exp", np.exp, "exp")
log = _op("log", np.log, "log")
softplus = _op("softplus", lambda x: np.logaddexp(0.0, x), "softplus")
relu = _op("relu", lambda x: np.maximum(x, 0.0), "relu")
maximum = _op("maximum", np.maximum, "maximum")
minimum = _op("minimum", np.minimum, "minimum")

NAMES = ("sigmoid", "tanh", "exp", "log", "softplus", "relu", "maximum", "minimum")
