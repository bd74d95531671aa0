"""Cell specifications and the pointwise cell math, written once.

Two things live here:

* ``CELLS``: what each cell is (gate count, whether it has a cell state ``c``) and
  the torch/cuDNN gate order. Every backend and the layers read it.
* ``make_cell_math(dtype)``: the per-hidden-unit forward and backward math of each cell
  as plain scalar Python functions. The CPU backend compiles them with ``numba.njit``
  and the CUDA backend with ``cuda.jit(device=True)``: one source, two targets. The
  constants are typed from ``dtype`` so float32 kernels never promote to float64.

The NumPy reference (``gpurnn.reference``) deliberately does *not* use this module: it
is written separately from the equations so that it checks these functions instead of
sharing their bugs.

Notation (kernels_docs/cells.md): for hidden unit j at step t, ``a_*`` are gate
pre-activations ``Gx[t] + W_hh h_{t-1} + b_hh``; GRU keeps the recurrent part of its
candidate, ``ah_n = (W_hh h_{t-1} + b_hh)_n``, apart because the reset gate scales it.
"""
import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class CellSpec:
    name: str          # "rnn_tanh" | "rnn_relu" | "lstm" | "gru"
    gates: tuple       # gate names in torch/cuDNN order; weight rows are stacked in it
    has_cell_state: bool

    @property
    def n_gates(self):
        return len(self.gates)


CELLS = {
    "rnn_tanh": CellSpec("rnn_tanh", ("h",), False),
    "rnn_relu": CellSpec("rnn_relu", ("h",), False),
    "lstm": CellSpec("lstm", ("i", "f", "g", "o"), True),
    "gru": CellSpec("gru", ("r", "z", "n"), False),
}


def cell_spec(cell):
    """The CellSpec for a cell name; ValueError naming the choices otherwise."""
    try:
        return CELLS[cell]
    except (KeyError, TypeError):
        raise ValueError(f"cell: expected one of {sorted(CELLS)}, got {cell!r}") from None


class CellMath:
    """Scalar pointwise functions for one dtype (attributes listed in make_cell_math)."""


def make_cell_math(dtype, exp=math.exp, tanh=math.tanh, jit=None):
    """Scalar cell functions whose constants have type ``dtype``.

    ``exp`` and ``tanh`` are injectable because targets differ in what is fastest
    (e.g. ``np.tanh`` beats ``math.tanh`` on float32 under ``numba.njit``).
    ``jit`` (optional, e.g. ``numba.njit`` or ``cuda.jit(device=True)``) is applied to each
    function as it is defined, so the functions that call ``sigmoid`` call its compiled
    version: a compiler cannot type a call to a plain Python function. None = plain Python.

    Forward  (pre-activations in, everything the backward needs out):
      rnn_tanh_fwd(a) -> h            rnn_relu_fwd(a) -> h
      lstm_fwd(ai, af, ag, ao, c_prev) -> (i, f, g, o, c, h)
      gru_fwd(ar, az, ax_n, ah_n, h_prev) -> (r, z, n, h)
    Backward (dh is the total gradient reaching h_t, dc the one reaching c_t from t+1):
      rnn_tanh_bwd(dh, h) -> da       rnn_relu_bwd(dh, h) -> da
      lstm_bwd(dh, dc, i, f, g, o, c, c_prev) -> (dai, daf, dag, dao, dc_prev)
      gru_bwd(dh, r, z, n, ah_n, h_prev) -> (dar, daz, dax_n, dah_n, dh_prev_direct)
    where dh_prev_direct is the part of dh_{t-1} that bypasses W_hh (z * dh).
    """
    dtype = np.dtype(dtype).type
    zero, one = dtype(0), dtype(1)
    compiled = jit if jit is not None else (lambda fn: fn)

    @compiled
    def sigmoid(x):
        return one / (one + exp(-x))

    @compiled
    def rnn_tanh_fwd(a):
        return tanh(a)

    @compiled
    def rnn_relu_fwd(a):
        return a if a > zero else zero

    @compiled
    def lstm_fwd(ai, af, ag, ao, c_prev):
        i = sigmoid(ai)
        f = sigmoid(af)
        g = tanh(ag)
        o = sigmoid(ao)
        c = f * c_prev + i * g
        return i, f, g, o, c, o * tanh(c)

    @compiled
    def gru_fwd(ar, az, ax_n, ah_n, h_prev):
        r = sigmoid(ar)
        z = sigmoid(az)
        n = tanh(ax_n + r * ah_n)
        return r, z, n, (one - z) * n + z * h_prev

    @compiled
    def rnn_tanh_bwd(dh, h):
        return dh * (one - h * h)

    @compiled
    def rnn_relu_bwd(dh, h):
        return dh if h > zero else zero

    @compiled
    def lstm_bwd(dh, dc, i, f, g, o, c, c_prev):
        tc = tanh(c)
        dc_total = dc + dh * o * (one - tc * tc)
        dai = dc_total * g * i * (one - i)
        daf = dc_total * c_prev * f * (one - f)
        dag = dc_total * i * (one - g * g)
        dao = dh * tc * o * (one - o)
        return dai, daf, dag, dao, dc_total * f

    @compiled
    def gru_bwd(dh, r, z, n, ah_n, h_prev):
        dan = dh * (one - z) * (one - n * n)
        dar = dan * ah_n * r * (one - r)
        daz = dh * (h_prev - n) * z * (one - z)
        return dar, daz, dan, dan * r, dh * z

    math_ = CellMath()
    for fn in (sigmoid, rnn_tanh_fwd, rnn_relu_fwd, lstm_fwd, gru_fwd,
               rnn_tanh_bwd, rnn_relu_bwd, lstm_bwd, gru_bwd):
        setattr(math_, fn.__name__, fn)
    math_.dtype = dtype
    return math_
