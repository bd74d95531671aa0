"""Cells: one definition per cell drives every backend. ``gpurnn.define_cell`` is public.

    import gpurnn
    from gpurnn import ops

    def mgu(xg, hg, state):        # one hidden unit, one step
        (h,) = state               # xg[k], hg[k]: gate k's input / recurrent pre-activation
        f = ops.sigmoid(xg[0] + hg[0])
        n = ops.tanh(xg[1] + f * hg[1])
        return ((1.0 - f) * h + f * n,)          # the new states; states[0] is the output h

    MGU = gpurnn.define_cell("mgu", gates=("f", "n"), states=("h",), forward=mgu)

``define_cell`` traces the function once (gpurnn.cells.graph: only gpurnn.ops, arithmetic
and number constants; no branches on values), derives its backward (.autodiff), checks
both numerically on NumPy arrays and scalars, and registers the resulting ``CellSpec``.
The backends compile the spec's generated source (.codegen) into their fused kernels;
the numpy backend runs the user's function itself, vectorised, with the derived backward.
The seven built-in cells (gpurnn.cells.builtin) are defined the same way.

Vocabulary (kernels_docs/cells.md): G gates, S states, V saved values per hidden unit and
step; weight rows of W_ih / W_hh / biases are stacked in the order of ``gates``.
"""
import hashlib
import warnings

import numpy as np

from . import autodiff, codegen
from .graph import CellDefinitionError, trace

__all__ = ["CellSpec", "CellDefinitionError", "define_cell", "get_cell", "names", "CELLS"]


class CellSpec:
    """Everything gpurnn knows about one cell; the single source of truth for it.

    name, label        registry name and a human label (CLI, plots)
    gates, states      names; G = len(gates) weight blocks, S = len(states), states[0] = h
    forward            the user's function (vectorised use: NumPy arrays or torch tensors)
    saves              labels of the V values the fused forward keeps for the backward
    tied               per gate: dL/dxg == dL/dhg (one gradient buffer suffices)
    torch_mode         torch.nn's mode for this cell ("LSTM", "GRU", "RNN_TANH", ...) or None
    reference          name of a hand-written NumPy reference (gpurnn.reference) or None
    key                hash of the traced definition (kernel caches key on it)
    """

    def __init__(self, name, gates, states, forward, backward, graph, inputs, outputs,
                 derivative, torch_mode, label, reference):
        self.name, self.gates, self.states = name, gates, states
        self.forward, self.expert_backward = forward, backward
        self.graph, self.graph_inputs, self.graph_outputs = graph, inputs, outputs
        self.derivative = derivative
        self.torch_mode, self.label, self.reference = torch_mode, label or name, reference
        self.key = hashlib.sha1(self.source("numpy").encode()).hexdigest()[:16]
        self._compiled = {}

    n_gates = property(lambda self: len(self.gates))
    n_states = property(lambda self: len(self.states))
    n_saves = property(lambda self: len(self.derivative.saves))
    tied = property(lambda self: self.derivative.tied)
    all_tied = property(lambda self: all(self.derivative.tied))
    saves = property(lambda self: tuple(self.graph.describe(n) for n in self.derivative.saves))

    def source(self, which="both"):
        """The generated forward/backward source (``which``: 'forward', 'backward', 'both'
        or 'numpy' for both), as every target compiles it."""
        parts = []
        if which in ("forward", "both", "numpy"):
            parts.append(codegen.forward_source(self)[0])
        if which in ("backward", "both", "numpy"):
            parts.append(codegen.backward_source(self)[0])
        return "\n".join(parts)

    def compile(self, target, dtype, namespace):
        """(forward, backward) scalar/elementwise functions for a target (see
        gpurnn.cells.codegen); ``namespace`` is that target's op namespace for ``dtype``.
        Cached per (target, dtype)."""
        key = (target, np.dtype(dtype).name)
        if key not in self._compiled:
            self._compiled[key] = codegen.compile_functions(self, namespace, dtype, target)
        return self._compiled[key]

    def numpy_functions(self, dtype):
        """The generated (forward, backward) on NumPy arrays of ``dtype``."""
        return self.compile("numpy", dtype, codegen.array_namespace(dtype))

    def __repr__(self):
        return (f"CellSpec({self.name!r}, gates={self.gates}, states={self.states},"
                f" saves={self.n_saves})")


CELLS = {}        # the registry: name -> CellSpec, in registration order


def _names(what, cell, value):
    if isinstance(value, str) or not isinstance(value, (tuple, list)) or not value:
        raise CellDefinitionError(f"cell {cell!r}: {what}= must be a non-empty tuple of names,"
                                  f" got {value!r}")
    value = tuple(value)
    for v in value:
        if not isinstance(v, str) or not v.isidentifier():
            raise CellDefinitionError(f"cell {cell!r}: {what}= entries must be identifiers, got {v!r}")
    if len(set(value)) != len(value):
        raise CellDefinitionError(f"cell {cell!r}: {what}= has repeated names: {value}")
    return value


def define_cell(name, gates, states, forward, backward=None, *, torch_mode=None, label=None,
                reference=None):
    """Define (and register under ``name``) a recurrent cell from its one-step forward.

    forward(xg, hg, state) -> new states: xg, hg sequences of G values (gate k's
        x W_ih^T + b_ih and h_{t-1} W_hh^T + b_hh), state the S previous states; returns a
        tuple of S new states, the first being the output h. Use only gpurnn.ops,
        arithmetic and number constants, with no branches on values.
    backward (optional, experts): backward(xg, hg, state, dstate) -> (dxg, dhg, dstate_prev),
        dstate = dL/d(new states), dstate_prev the part of dL/d(previous states) that does
        not pass through W_hh. Used by the kernels instead of the derived one after being
        checked against it.
    Returns the CellSpec; raises CellDefinitionError (a ValueError) naming the cell and
    the problem. Redefining a name replaces it (with a warning if the definition differs).
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise CellDefinitionError(f"define_cell: name must be an identifier string, got {name!r}")
    gates, states = _names("gates", name, gates), _names("states", name, states)
    if not callable(forward):
        raise CellDefinitionError(f"cell {name!r}: forward= must be a function, got"
                                  f" {type(forward).__name__}")
    graph, inputs, outputs = trace(name, forward, len(gates), len(states))
    derived = autodiff.derive(graph, inputs, outputs)
    derivative = derived
    if backward is not None:
        derivative = _expert_derivative(name, backward, graph, inputs, outputs, derived)
    spec = CellSpec(name, gates, states, forward, backward, graph, inputs, outputs,
                    derivative, torch_mode, label, reference)
    _check_numerically(spec, derived)
    previous = CELLS.get(name)
    if previous is not None and previous.key != spec.key:
        warnings.warn(f"define_cell: cell {name!r} redefined (the new definition differs)",
                      stacklevel=2)
    CELLS[name] = spec
    return spec


def _expert_derivative(name, backward, graph, inputs, outputs, derived):
    """The expert's backward traced into the same graph (shared nodes, same save rule)."""
    if not callable(backward):
        raise CellDefinitionError(f"cell {name!r}: backward= must be a function")
    G, S = len(inputs["xg"]), len(inputs["s"])
    try:
        result = backward(tuple(inputs["xg"]), tuple(inputs["hg"]), tuple(inputs["s"]),
                          tuple(derived.dn))
    except CellDefinitionError:
        raise
    except Exception as exc:
        raise CellDefinitionError(f"cell {name!r}: its backward raised {type(exc).__name__}:"
                                  f" {exc}") from exc
    try:
        dxg, dhg, ds = (tuple(graph.lift(v) for v in part) for part in result)
    except (TypeError, ValueError):
        raise CellDefinitionError(f"cell {name!r}: backward must return (dxg, dhg, dstate_prev),"
                                  f" tuples of {G}, {G} and {S} values") from None
    if (len(dxg), len(dhg), len(ds)) != (G, G, S):
        raise CellDefinitionError(f"cell {name!r}: backward returned {len(dxg)}, {len(dhg)},"
                                  f" {len(ds)} values; expected {G}, {G}, {S}")
    results = list(dxg + dhg + ds)
    saves = autodiff.choose_saves(results, inputs, outputs, derived.n_forward)
    tied = tuple(x is h for x, h in zip(dxg, dhg))
    return autodiff.Derivative(derived.dn, list(dxg), list(dhg), list(ds), tied, saves,
                               derived.n_forward)


def _check_numerically(spec, derived):
    """The user's function on arrays and on scalars equals the generated forward; an expert
    backward equals the derived one. Random float64 points, gates in [-2, 2], states in
    [0.1, 1] (positive: cells may divide by or take the log of a state)."""
    rng = np.random.default_rng(0)
    G, S, n = spec.n_gates, spec.n_states, 7
    xg = [rng.uniform(-2, 2, n) for _ in range(G)]
    hg = [rng.uniform(-2, 2, n) for _ in range(G)]
    s = [rng.uniform(0.1, 1.0, n) for _ in range(S)]
    try:
        user = spec.forward(tuple(xg), tuple(hg), tuple(s))
        user = [np.broadcast_to(np.asarray(v, np.float64), (n,)) for v in user]
        scalar = spec.forward(tuple(a[0].item() for a in xg), tuple(a[0].item() for a in hg),
                              tuple(a[0].item() for a in s))
        scalar = [float(v) for v in scalar]
    except Exception as exc:
        raise CellDefinitionError(f"cell {spec.name!r}: forward must work on NumPy arrays and on"
                                  f" Python numbers; it raised {type(exc).__name__}: {exc}") from exc
    fwd, bwd = spec.numpy_functions("float64")
    generated = fwd(*xg, *hg, *s)
    for k in range(S):
        if not np.allclose(user[k], generated[k], rtol=1e-12, atol=1e-12, equal_nan=True):
            raise CellDefinitionError(f"cell {spec.name!r}: state {spec.states[k]!r} differs between"
                                      f" the function and its traced form: does it use values"
                                      f" other than its arguments, ops and constants?")
        if not np.isclose(scalar[k], user[k][0], rtol=1e-12, atol=1e-12, equal_nan=True):
            raise CellDefinitionError(f"cell {spec.name!r}: state {spec.states[k]!r} differs between"
                                      f" scalar and array inputs")
    if spec.derivative is derived:
        return
    dn = [rng.standard_normal(n) for _ in range(S)]
    mine = _evaluate(spec.derivative, spec, xg, hg, s, dn)
    reference = _evaluate(derived, spec, xg, hg, s, dn)
    labels = ([f"dxg[{k}]" for k in range(G)] + [f"dhg[{k}]" for k in range(G)] +
              [f"dstate[{k}]" for k in range(S)])
    for label, a, b in zip(labels, mine, reference):
        if not np.allclose(a, b, rtol=1e-9, atol=1e-12):
            raise CellDefinitionError(f"cell {spec.name!r}: backward= disagrees with the derived"
                                      f" backward in {label} (max |diff| {np.max(np.abs(a - b)):.3g})")


def _evaluate(derivative, spec, xg, hg, s, dn):
    """Evaluate a derivative's result nodes numerically (float64, via generated code)."""
    probe = CellSpec.__new__(CellSpec)
    probe.__dict__.update(spec.__dict__, derivative=derivative, _compiled={})
    fwd, bwd = probe.numpy_functions("float64")
    out = fwd(*xg, *hg, *s)
    S = spec.n_states
    new, saved = out[:S], out[S:]
    return [np.broadcast_to(v, xg[0].shape) for v in bwd(*dn, *saved, *s, *new)]


def get_cell(cell):
    """The CellSpec for a spec or a registered name; ValueError naming the choices."""
    if isinstance(cell, CellSpec):
        return cell
    try:
        return CELLS[cell]
    except (KeyError, TypeError):
        raise ValueError(f"cell: expected a CellSpec or one of {names()}, got {cell!r}") from None




def names():
    """Registered cell names, built-ins first."""
    return list(CELLS)


TORCH_CELLS = ("rnn_tanh", "rnn_relu", "lstm", "gru")   # the cells torch.nn has too


from . import builtin  # noqa: E402,F401  (registers the built-in cells)

BUILTIN_CELLS = tuple(names())   # the cells gpurnn ships, whatever a process registers later
