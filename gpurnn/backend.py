"""Backend registry and the contract every backend implements.

A backend runs ONE layer in ONE direction; gpurnn.layers builds layers, directions,
dropout, batch_first and lengths on top of it, the same way for every backend.

    forward(cell, x, w_ih, w_hh, b_ih, b_hh, h0, c0, lengths) -> (out, h_n, c_n, tape)
    backward(tape, dout, dh_n, dc_n, truncate) -> DirectionGrads

with the shapes documented in gpurnn.reference (the numpy backend *is* the reference).
Arrays are the backend's native arrays (``backend.xp``: numpy, or cupy on a GPU);
``lengths`` is a host NumPy int array or None; ``tape`` is opaque to the caller.

Registered backends, in "auto" preference order: cuda, cpu, numpy. A backend module is
imported only when asked for, so importing gpurnn never touches Numba or a GPU.
"""
import importlib
from typing import NamedTuple, Optional

import numpy as np


class DirectionGrads(NamedTuple):
    """Gradients of one layer-direction. Shapes as the forward's arguments."""
    dx: object                 # (T, B, I)
    dh0: object                # (B, H)
    dc0: Optional[object]      # (B, H) for LSTM, else None
    dw_ih: object              # (G*H, I)
    dw_hh: object              # (G*H, H)
    db_ih: Optional[object]    # (G*H,) or None without bias
    db_hh: Optional[object]    # (G*H,) or None without bias


class NumpyBackend:
    """The NumPy reference as a backend: slow, plain, and the oracle for the others."""
    name = "numpy"
    xp = np
    dtypes = ("float32", "float64")

    def is_available(self):
        return True

    def asarray(self, a, dtype=None):
        return np.asarray(a, dtype=dtype)

    def to_user(self, a, like):
        return a

    def forward(self, cell, x, w_ih, w_hh, b_ih, b_hh, h0, c0, lengths):
        from . import reference
        return reference.forward(cell, x, w_ih, w_hh, b_ih, b_hh, h0, c0, lengths)

    def backward(self, tape, dout, dh_n, dc_n, truncate):
        from . import reference
        return reference.backward(tape, dout, dh_n, dc_n, truncate)


# name -> "module:attribute" of a zero-argument factory; filled in by the backend modules.
_REGISTRY = {
    "cuda": "gpurnn.cuda.backend:CudaBackend",
    "cpu": "gpurnn.cpu.backend:CpuBackend",
    "numpy": "gpurnn.backend:NumpyBackend",
}
_AUTO_ORDER = ("cuda", "cpu", "numpy")
_instances = {}


class BackendUnavailable(RuntimeError):
    """The named backend cannot run here (missing package, no GPU, not built yet)."""


def _load(name):
    if name not in _instances:
        module_name, attr = _REGISTRY[name].split(":")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise BackendUnavailable(f"backend {name!r} is not available: {exc}") from exc
        _instances[name] = factory()
    return _instances[name]


def _usable(name, auto=False):
    try:
        b = _load(name)
    except BackendUnavailable:
        return False
    if auto and hasattr(b, "is_auto_candidate"):
        return b.is_auto_candidate()
    return b.is_available()


def available_backends():
    """Names of the backends that can run here, in "auto" preference order."""
    return [n for n in _AUTO_ORDER if _usable(n)]


def get_backend(name="auto"):
    """The backend object for ``name`` ("auto" = cuda on a real GPU, else cpu, else numpy).

    A backend object (anything with ``forward``/``backward``, e.g. a configured
    ``CudaBackend(algo="persistent")``) is passed through unchanged.
    """
    if hasattr(name, "forward") and hasattr(name, "backward"):
        return name
    if name == "auto":
        for n in _AUTO_ORDER:
            if _usable(n, auto=True):
                return _load(n)
    if name not in _REGISTRY:
        raise ValueError(f"backend: expected one of {['auto', *_REGISTRY]}, got {name!r}")
    b = _load(name)
    if not b.is_available():
        raise BackendUnavailable(
            f"backend {name!r} is not available here; available: {available_backends()}")
    return b
