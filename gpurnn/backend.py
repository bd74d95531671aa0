"""Backend registry, and the numpy backend (the reference) behind the contract.

The contract every backend implements is documented in gpurnn.contract: one layer, one
direction, any registered cell (a gpurnn.cells.CellSpec).

Registered backends, in "auto" preference order: cuda, cpu, numpy. A backend module is
imported only when asked for, so importing gpurnn never touches Numba or a GPU.
"""
import importlib

from .contract import HostBackend


class NumpyBackend(HostBackend):
    """The NumPy oracle as a backend: gpurnn.reference (hand-written) for the cells it
    covers, gpurnn.vectorised (the cell's own forward + derived backward) for every other
    cell, or for every cell with ``vectorised=True`` (tests compare the two)."""
    name = "numpy"
    dtypes = ("float32", "float64")

    def __init__(self, vectorised=False):
        self.vectorised = bool(vectorised)

    def is_available(self):
        return True

    def _handwritten(self, spec):
        return not self.vectorised and spec.reference is not None

    def forward(self, spec, x, w_ih, w_hh, b_ih, b_hh, state0, lengths):
        if not self._handwritten(spec):
            from . import vectorised
            return vectorised.forward(spec, x, w_ih, w_hh, b_ih, b_hh, state0, lengths)
        from . import reference
        h0, c0 = (tuple(state0) + (None,))[:2]
        out, h_n, c_n, tape = reference.forward(spec.reference, x, w_ih, w_hh, b_ih, b_hh,
                                                h0, c0, lengths)
        tape.update(spec=spec, plan={"path": "numpy-reference"})
        return out, (h_n,) if c_n is None else (h_n, c_n), tape

    def forward_projected(self, spec, x, w_ih, w_hh, w_hr, b_ih, b_hh, state0, lengths):
        """An LSTM with projection (gpurnn.projection): the reference, h_t = W_hr r_t step by
        step from the equations (the oracle the other backends' fold is tested against)."""
        from . import reference
        if spec.reference != "lstm":
            raise ValueError(f"proj_size: projections are for LSTM (torch's proj_size), got "
                             f"cell {spec.name!r}")
        h0, c0 = state0
        out, h_n, c_n, tape = reference.forward("lstm", x, w_ih, w_hh, b_ih, b_hh, h0, c0,
                                                lengths, w_hr=w_hr)
        tape.update(spec=spec, plan=dict(_PROJECTED_PLAN))
        return out, (h_n, c_n), tape

    def backward_projected(self, tape, dout, dstate_n, truncate, need_dx=True):
        from . import reference
        dh_n, dc_n = dstate_n
        return reference.backward(tape, dout, dh_n, dc_n, truncate, need_dx)._replace(
            plan=dict(_PROJECTED_PLAN))

    def backward(self, tape, dout, dstate_n, truncate, need_dx=True):
        if tape["plan"]["path"] == "numpy-vectorised":
            from . import vectorised
            return vectorised.backward(tape, dout, dstate_n, truncate, need_dx)
        from . import reference
        dh_n, dc_n = (tuple(dstate_n) + (None,))[:2]
        return reference.backward(tape, dout, dh_n, dc_n, truncate, need_dx)._replace(
            plan={"path": "numpy-reference"})


_PROJECTED_PLAN = {"path": "numpy-reference",
                   "projection": "per step: h_t = W_hr r_t after the cell (the reference)"}


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


# "auto" per kind of memory the arrays live in: any (None), host ("cpu"), GPU ("cuda").
_AUTO_ORDER_FOR = {None: _AUTO_ORDER, "cpu": ("cpu", "numpy"), "cuda": ("cuda",)}


def get_backend(name="auto", device=None):
    """The backend object for ``name`` ("auto" = cuda on a real GPU, else cpu, else numpy).

    ``device`` narrows "auto" to the backends that work on arrays in that memory: "cpu"
    (host arrays: cpu where Numba imports, else numpy; the torch bridge's rule for CPU
    tensors) or "cuda" (the cuda backend). A named backend is returned as asked.
    A backend object (anything with ``forward``/``backward``, e.g. a configured
    ``CudaBackend(algo="persistent")``) is passed through unchanged.
    """
    if device not in _AUTO_ORDER_FOR:
        raise ValueError(f"device: expected None, 'cpu' or 'cuda', got {device!r}")
    if hasattr(name, "forward") and hasattr(name, "backward"):
        return name
    if name == "auto":
        for n in _AUTO_ORDER_FOR[device]:
            if _usable(n, auto=device is None):
                return _load(n)
        if device is not None:
            raise BackendUnavailable(f"backend 'auto': no backend for {device} arrays is available "
                                     f"here; available: {available_backends()}")
    if name not in _REGISTRY:
        raise ValueError(f"backend: expected one of {['auto', *_REGISTRY]}, got {name!r}")
    b = _load(name)
    if not b.is_available():
        raise BackendUnavailable(
            f"backend {name!r} is not available here; available: {available_backends()}")
    return b
