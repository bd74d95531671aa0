"""Recurrent layers of any cell (``Recurrent``) and the torch.nn-compatible RNN, LSTM, GRU.

Everything above one layer-direction lives here and is the same for every backend and
every cell (gpurnn.cells):
stacking layers, bidirectional (the reverse direction reads each row backwards within
its own length, so padding never leaks into it), dropout between layers, batch_first,
initial/final state layout, gradient accumulation and the state_dict in torch's names.

Shapes (T steps, B rows, I = input_size, H = hidden_size, L = num_layers, D = 2 if
bidirectional else 1, S = the cell's state count):
    x        (T, B, I) floats, or (B, T, I) with batch_first; or integer token ids (T, B),
             (B, T) with batch_first, values in 0..I-1 (I = the vocabulary): x[t, b] = v
             means the one-hot row e_v, without building it (the first layer's projection
             is a gather of W_ih's columns, dW_ih a scatter-add; gpurnn.tokens), dx = None
    state0   tuple of S arrays (L*D, B, H) (or None each) whatever batch_first says;
             RNN/GRU take one array h0, LSTM the pair (h0, c0), as torch
    lengths  (B,) ints in 1..T, right-padded x
    out      (T, B, D*H), or (B, T, D*H) with batch_first: the sequence of h = states[0]
    state_n  tuple of S arrays (L*D, B, H);  index l*D + d (d = 1 is the reverse direction)
    dx       as x (floats), from backward; None with need_dx=False (the first layer's dX
             GEMM is then not run) and for token ids (they have no gradient)

LSTM(proj_size=P): h is P wide (state0[0], out, state_n[0]: P per direction, dout
likewise), c keeps H; one layer-direction runs through gpurnn.projection.

``last_plans`` of a module lists what each layer-direction ran in its last forward and
backward (the backends' plan records: kernel, split, any fast path declined and why).
"""
from collections import OrderedDict

import numpy as np

from .arrays import to_numpy
from .backend import get_backend
from . import projection
from .cells import get_cell
from .validation import (check_array_like, check_float_array, check_input_kind, check_lengths,
                         check_positive_int, check_token_ids)


class Recurrent:
    """A stack of recurrent layers of any cell (a CellSpec or a registered name).

        m = gpurnn.Recurrent(cell, input_size, hidden_size, num_layers=1, bias=True,
                             batch_first=False, dropout=0.0, bidirectional=False,
                             backend="auto", dtype="float32", seed=None)
        out, state_n = m(x, state0=None, lengths=None)       # state_n: tuple of S arrays
        dx, dstate0 = m.backward(dout, dstate_n=None, truncate=None, need_dx=True)

    x: floats (T, B, input_size), or integer token ids (T, B) in 0..input_size-1 (one-hot
    rows, never built; dx is then None); batch_first swaps T and B in both.

    Weights as torch's: weight_ih_l{k}[_reverse] (G*H, I or D*H), weight_hh_l{k} (G*H, H),
    bias_ih_l{k}, bias_hh_l{k} (G*H,), gate rows stacked in the cell's gate order, init
    U(-1/sqrt(H), 1/sqrt(H)).
    """

    proj_size = 0       # LSTM(proj_size=P) sets it: h is P wide (gpurnn.projection)

    def __init__(self, cell, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, backend="auto", dtype="float32", seed=None):
        self.spec = get_cell(cell)
        self.input_size = check_positive_int("input_size", input_size)
        self.hidden_size = check_positive_int("hidden_size", hidden_size)
        self.num_layers = check_positive_int("num_layers", num_layers)
        if not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout: expected a probability in [0, 1), got {dropout!r}")
        self.bias, self.batch_first, self.bidirectional = bool(bias), bool(batch_first), bool(bidirectional)
        self.dropout = float(dropout)
        self.num_directions = 2 if self.bidirectional else 1
        try:
            self.dtype = np.dtype(dtype)
        except TypeError:
            raise TypeError(f"dtype: expected 'float32' or 'float64', got {dtype!r}") from None
        self._backend = get_backend(backend)
        if self.dtype.name not in self._backend.dtypes:
            raise TypeError(f"dtype: backend {self._backend.name!r} supports {self._backend.dtypes},"
                            f" got {self.dtype.name!r}")
        self.training = True
        rng = np.random.default_rng(seed)
        self._dropout_rng = np.random.default_rng(None if seed is None else [seed, 1])
        bound = 1.0 / np.sqrt(self.hidden_size)   # torch's init: U(-1/sqrt(H), 1/sqrt(H))
        self._params = OrderedDict(
            (name, self._backend.asarray(_uniform(rng, bound, shape, self.dtype)))
            for name, shape in self._param_shapes().items())
        self.grads = OrderedDict()
        self.zero_grad()
        self._tape = None
        self.last_plans = None

    # ----------------------------------------------------------------- parameters
    @property
    def backend(self):
        """Name of the backend this module runs on."""
        return self._backend.name

    @property
    def backend_impl(self):
        """The backend object itself (its ``xp`` array module, ``asarray``, ...)."""
        return self._backend

    @property
    def output_size(self):
        """Features of h (per direction): proj_size with a projection, else hidden_size."""
        return self.proj_size or self.hidden_size

    def _param_shapes(self):
        """torch's names, shapes and order (with a projection: weight_hr_l{k} (P, H) after
        each layer-direction's biases, weight_hh (G*H, P), layers above the first D*P in)."""
        G, H, D, R = self.spec.n_gates, self.hidden_size, self.num_directions, self.output_size
        shapes = OrderedDict()
        for layer in range(self.num_layers):
            for d in range(D):
                tag = _tag(layer, d)
                shapes[f"weight_ih_{tag}"] = (G * H, self.input_size if layer == 0 else D * R)
                shapes[f"weight_hh_{tag}"] = (G * H, R)
                if self.bias:
                    shapes[f"bias_ih_{tag}"] = (G * H,)
                    shapes[f"bias_hh_{tag}"] = (G * H,)
                if self.proj_size:
                    shapes[f"weight_hr_{tag}"] = (self.proj_size, H)
        return shapes

    def parameters(self):
        """Live parameter arrays (backend-native), torch names; update them in place."""
        return self._params

    def state_dict(self):
        """Host NumPy copies of the parameters, in torch's names, order and shapes."""
        return OrderedDict((k, np.array(to_numpy(v))) for k, v in self._params.items())

    def load_state_dict(self, state_dict):
        """Load torch-named weights (any np.asarray-able values). All-or-nothing."""
        shapes = self._param_shapes()
        missing = [k for k in shapes if k not in state_dict]
        unexpected = [k for k in state_dict if k not in shapes]
        if missing or unexpected:
            raise ValueError(f"state_dict: missing keys {missing}, unexpected keys {unexpected}")
        staged = OrderedDict()
        for name, shape in shapes.items():
            value = to_numpy(state_dict[name])
            if value.shape != shape:
                raise ValueError(f"state_dict[{name!r}]: expected shape {shape}, got {value.shape}")
            if value.dtype.kind not in "fiu":
                raise TypeError(f"state_dict[{name!r}]: expected real numbers, got dtype {value.dtype}")
            if not np.all(np.isfinite(value)):
                raise ValueError(f"state_dict[{name!r}]: contains NaN or Inf")
            staged[name] = self._backend.asarray(value.astype(self.dtype))
        self._params = staged

    def zero_grad(self):
        xp = self._backend.xp
        for name, p in self._params.items():
            self.grads[name] = xp.zeros(p.shape, self.dtype)

    def train(self, mode=True):
        self.training = bool(mode)
        return self

    def eval(self):
        return self.train(False)

    def _repr_extra(self):
        return f"{self.spec.name!r}, "

    def __repr__(self):
        proj = f", proj_size={self.proj_size}" if self.proj_size else ""
        return (f"{type(self).__name__}({self._repr_extra()}{self.input_size}, {self.hidden_size}{proj}, num_layers={self.num_layers}"
                f", bias={self.bias}, batch_first={self.batch_first}, dropout={self.dropout},"
                f" bidirectional={self.bidirectional}, backend={self.backend!r}, dtype={self.dtype.name!r})")

    # ----------------------------------------------------------------- forward
    def __call__(self, x, state0=None, lengths=None):
        return self.forward(x, state0, lengths)

    def forward(self, x, state0=None, lengths=None):
        """Run the whole stack. Returns (out, state_n), state_n a tuple of S arrays.

        The tape for ``backward`` is kept on the module (the last forward wins)."""
        return self._forward(x, state0, lengths)

    def forward_tape(self, x, state0=None, lengths=None, *, params=None):
        """Functional forward: returns ((out, state_n), tape) and keeps nothing on the module.

        Pass ``tape`` to ``backward_tape``; tape["plans"] holds each layer-direction's plan.
        ``params`` (optional, torch names to backend-native arrays) replaces the module's
        own parameters for this call; the torch bridge passes its nn.Parameters this way.
        """
        return self._run_forward(x, state0, lengths, params)

    def _forward(self, x, state0, lengths, labels=None):
        result, self._tape = self._run_forward(x, state0, lengths, None, labels)
        self.last_plans = {"forward": self._tape["plans"]}
        return result

    def _run_forward(self, x, state0, lengths, params, labels=None):
        be, xp = self._backend, self._backend.xp
        params = self._params if params is None else params
        user_x = x
        x = self._as_native("x", x)
        tokens = check_input_kind("x", x, "B, T" if self.batch_first else "T, B")
        if tokens:     # checked before the transpose, so errors give the user's indices
            x = check_token_ids("x", x, self.input_size).astype(xp.int64, copy=False)
        if self.batch_first:
            x = xp.ascontiguousarray(xp.swapaxes(x, 0, 1))
        T, B = x.shape[:2]
        if not tokens:
            check_float_array("x", x, (T, B, self.input_size), self.dtype)
        lengths = check_lengths(lengths, B, T)
        state0 = self._check_state("state0", state0, B, labels)
        D, S = self.num_directions, self.spec.n_states

        layer_input, tapes, masks, state_n = x, [], [], [[] for _ in range(S)]
        for layer in range(self.num_layers):
            outs, layer_tapes = [], []
            for d in range(D):
                k = layer * D + d
                w = _layer_weights(params, layer, d)
                seq = layer_input if d == 0 else _reverse_within_length(xp, layer_input, lengths)
                s0 = tuple(None if s is None else s[k] for s in state0)
                if self.proj_size:
                    w_hr = params[f"weight_hr_{_tag(layer, d)}"]
                    out, states, tape = projection.forward(be, self.spec, seq, *w[:2], w_hr,
                                                           *w[2:], s0, lengths)
                else:
                    out, states, tape = be.forward(self.spec, seq, *w, s0, lengths)
                outs.append(out if d == 0 else _reverse_within_length(xp, out, lengths))
                layer_tapes.append(tape)
                for s, value in enumerate(states):
                    state_n[s].append(value)
            layer_out = outs[0] if D == 1 else xp.concatenate(outs, axis=2)
            mask = None
            if self.training and self.dropout > 0 and layer < self.num_layers - 1:
                keep = self._dropout_rng.random(layer_out.shape) >= self.dropout
                mask = be.asarray((keep / (1.0 - self.dropout)).astype(self.dtype))
                layer_out = layer_out * mask
            tapes.append(layer_tapes)
            masks.append(mask)
            layer_input = layer_out

        tape = dict(tapes=tapes, masks=masks, lengths=lengths, T=T, B=B, tokens=tokens,
                    plans=[[t.get("plan") for t in layer] for layer in tapes])
        out = layer_input
        if self.batch_first:
            out = xp.ascontiguousarray(out.transpose(1, 0, 2))
        out = be.to_user(out, user_x)
        return (out, tuple(be.to_user(xp.stack(v), user_x) for v in state_n)), tape

    def _as_native(self, name, a):
        check_array_like(name, a)
        try:
            return self._backend.asarray(a)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{name}: expected an array for backend {self.backend!r}, got "
                            f"{type(a).__name__} ({exc})") from None

    def _state_shape(self, B, k=0):
        """Shape of state k: (L*D, B, H); h (k = 0) is proj_size wide with a projection."""
        return (self.num_layers * self.num_directions, B,
                self.output_size if k == 0 else self.hidden_size)

    def _check_state(self, what, states, B, labels=None):
        """Validate a state tuple (state0 / dstate_n): None, or S entries each None or an
        array (L*D, B, H); a bare array is accepted for one-state cells. Returns a tuple of
        S native arrays or Nones. ``labels``: the entries' names in errors (default
        what[k] (state name))."""
        names = self.spec.states
        labels = labels or [f"{what}[{k}] ({n})" for k, n in enumerate(names)]
        S = len(names)
        if states is None:
            return (None,) * S
        if not isinstance(states, (tuple, list)):
            if S != 1:
                raise TypeError(f"{what}: expected a tuple of {S} states {names} for cell"
                                f" {self.spec.name!r} (each may be None), got {type(states).__name__}")
            states = (states,)
        if len(states) != S:
            raise TypeError(f"{what}: expected a tuple of {S} states {names} for cell"
                            f" {self.spec.name!r}, got {len(states)}")
        return tuple(None if s is None else
                     check_float_array(labels[k], self._as_native(labels[k], s),
                                       self._state_shape(B, k), self.dtype)
                     for k, s in enumerate(states))

    # ----------------------------------------------------------------- backward
    def backward(self, dout, dstate_n=None, truncate=None, need_dx=True):
        """BPTT through the last forward. Accumulates into ``grads``; returns (dx, dstate0).

        dout: gradient w.r.t. out (its shape); dstate_n: w.r.t. state_n (a tuple of S
        entries, each None for zero; None for all zero); truncate: None for full BPTT, or k
        to cut the recurrent gradient every k steps (see gpurnn.reference); need_dx: False
        when nothing needs dL/dx (data, not a trainable input): dx is then None and the
        first layer's dX GEMM is skipped. dx is None for token ids whatever need_dx says.
        """
        return self._backward(dout, dstate_n, truncate, need_dx=need_dx)

    def backward_tape(self, tape, dout, dstate_n=None, truncate=None, need_dx=True):
        """Functional backward through ``tape`` from ``forward_tape``.

        Returns (dx, dstate0, grads): as ``backward`` plus this call's parameter gradients
        (torch names), without touching ``self.grads``.
        """
        return self._run_backward(tape, dout, dstate_n, truncate, need_dx=need_dx)

    def _backward(self, dout, dstate_n, truncate, labels=None, need_dx=True):
        if self._tape is None:
            raise RuntimeError("backward: call forward first (there is no tape to differentiate)")
        dx, dstate0, grads = self._run_backward(self._tape, dout, dstate_n, truncate, labels,
                                                need_dx)
        for name, g in grads.items():
            self.grads[name] += g
        return dx, dstate0

    def _run_backward(self, tape, dout, dstate_n, truncate, labels=None, need_dx=True):
        if truncate is not None:
            truncate = check_positive_int("truncate", truncate)
        be, xp = self._backend, self._backend.xp
        T, B = tape["T"], tape["B"]
        R, D, L = self.output_size, self.num_directions, self.num_layers
        user_dout = dout
        dout = self._as_native("dout", dout)
        expected = (B, T, D * R) if self.batch_first else (T, B, D * R)
        check_float_array("dout", dout, expected, self.dtype)
        if self.batch_first:
            dout = xp.ascontiguousarray(dout.transpose(1, 0, 2))
        dstate_n = self._check_state("dstate_n", dstate_n, B, labels)
        lengths = tape["lengths"]
        S = self.spec.n_states

        dstate0 = [[None] * (L * D) for _ in range(S)]
        grads = OrderedDict()
        plans = [[None] * D for _ in range(L)]
        grad = dout
        # The layers above the first always need their input's gradient (it is the layer
        # below's dout); the first only if asked, and token ids never (no gradient).
        first_dx = bool(need_dx) and not tape["tokens"]
        for layer in range(L - 1, -1, -1):
            if tape["masks"][layer] is not None:
                grad = grad * tape["masks"][layer]
            dinput = None
            for d in range(D):
                k = layer * D + d
                g_out = grad[:, :, d * R:(d + 1) * R]
                g_out = xp.ascontiguousarray(g_out) if d == 0 else _reverse_within_length(xp, g_out, lengths)
                ds_n = tuple(None if s is None else s[k] for s in dstate_n)
                if self.proj_size:
                    g = projection.backward(be, tape["tapes"][layer][d], g_out, ds_n, truncate,
                                            need_dx=first_dx or layer > 0)
                else:
                    g = be.backward(tape["tapes"][layer][d], g_out, ds_n, truncate,
                                    need_dx=first_dx or layer > 0)
                dx = g.dx if d == 0 or g.dx is None else _reverse_within_length(xp, g.dx, lengths)
                dinput = dx if dinput is None else dinput + dx
                for s in range(S):
                    dstate0[s][k] = g.dstate0[s]
                plans[layer][d] = g.plan
                tag = _tag(layer, d)
                grads[f"weight_ih_{tag}"] = g.dw_ih
                grads[f"weight_hh_{tag}"] = g.dw_hh
                if self.bias:
                    grads[f"bias_ih_{tag}"] = g.db_ih
                    grads[f"bias_hh_{tag}"] = g.db_hh
                if self.proj_size:
                    grads[f"weight_hr_{tag}"] = g.dw_hr
            grad = dinput

        dx = grad
        if dx is not None:
            dx = xp.ascontiguousarray(dx.transpose(1, 0, 2)) if self.batch_first else dx
            dx = be.to_user(dx, user_dout)
        if self.last_plans is not None and tape is self._tape:
            self.last_plans["backward"] = plans
        return dx, tuple(be.to_user(xp.stack(v), user_dout) for v in dstate0), grads


def _tag(layer, d):
    """The torch name suffix of a layer-direction: l0, l0_reverse, l1, ..."""
    return f"l{layer}{'_reverse' if d else ''}"


def _layer_weights(params, layer, d):
    """(w_ih, w_hh, b_ih, b_hh) of one layer-direction; biases None without bias."""
    tag = _tag(layer, d)
    return (params[f"weight_ih_{tag}"], params[f"weight_hh_{tag}"],
            params.get(f"bias_ih_{tag}"), params.get(f"bias_hh_{tag}"))


def _reverse_within_length(xp, a, lengths):
    """Reverse each row of ``a`` (T, B, F) in time within its own length; an involution."""
    if lengths is None:
        return xp.ascontiguousarray(a[::-1])
    T, B = a.shape[0], a.shape[1]
    t = np.arange(T)[:, None]
    src = np.where(t < lengths[None, :], lengths[None, :] - 1 - t, t)   # (T, B) source step
    return a[xp.asarray(src), xp.asarray(np.arange(B))[None, :]]


def _uniform(rng, bound, shape, dtype, chunk=1 << 20):
    """U(-bound, bound) in ``dtype``, drawn in float64 chunks: the same numbers as one
    ``rng.uniform(...).astype(dtype)`` call (the generator's stream is sequential) without a
    float64 copy of the whole matrix."""
    out = np.empty(int(np.prod(shape)), dtype)
    for start in range(0, out.size, chunk):
        part = out[start:start + chunk]
        part[...] = rng.uniform(-bound, bound, part.size)
    return out.reshape(shape)


class RNNBase(Recurrent):
    """torch's calling conventions over Recurrent: the state is one array h (RNN, GRU) or
    the pair (h, c) (LSTM), as ``hx``; use RNN, LSTM or GRU."""

    def _repr_extra(self):
        return ""

    def _to_states(self, what, hx):
        if self.spec.n_states == 1:
            if isinstance(hx, (tuple, list)):
                raise TypeError(f"{what}: expected one array h0 for {type(self).__name__}, got a"
                                f" {type(hx).__name__} of {len(hx)}")
            return (hx,)
        if hx is None:
            return None
        if not isinstance(hx, (tuple, list)) or len(hx) != 2:
            raise TypeError(f"{what}: expected a tuple (h0, c0) for LSTM (either may be None),"
                            f" got {type(hx).__name__}")
        return tuple(hx)

    def _from_states(self, states):
        return states[0] if self.spec.n_states == 1 else tuple(states)

    _FORWARD_LABELS, _BACKWARD_LABELS = ("h0", "c0"), ("dh_n", "dc_n")

    def forward(self, x, hx=None, lengths=None):
        """Returns (out, h_n), or (out, (h_n, c_n)) for LSTM."""
        out, states = self._forward(x, self._to_states("hx", hx), lengths, self._FORWARD_LABELS)
        return out, self._from_states(states)

    def forward_tape(self, x, hx=None, lengths=None, *, params=None):
        (out, states), tape = self._run_forward(x, self._to_states("hx", hx), lengths, params,
                                                self._FORWARD_LABELS)
        return (out, self._from_states(states)), tape

    def backward(self, dout, dh_n=None, truncate=None, need_dx=True):
        """Returns (dx, dh0), or (dx, (dh0, dc0)) for LSTM; dh_n like hx. dx is None with
        need_dx=False or token-id x (Recurrent.backward)."""
        dx, dstate0 = self._backward(dout, self._to_states("dh_n", dh_n), truncate,
                                     self._BACKWARD_LABELS, need_dx)
        return dx, self._from_states(dstate0)

    def backward_tape(self, tape, dout, dh_n=None, truncate=None, need_dx=True):
        dx, dstate0, grads = self._run_backward(tape, dout, self._to_states("dh_n", dh_n),
                                                truncate, self._BACKWARD_LABELS, need_dx)
        return dx, self._from_states(dstate0), grads


class RNN(RNNBase):
    """Elman RNN, h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh); act tanh or relu."""

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True,
                 batch_first=False, dropout=0.0, bidirectional=False, backend="auto",
                 dtype="float32", seed=None):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity: expected 'tanh' or 'relu', got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        super().__init__(f"rnn_{nonlinearity}", input_size, hidden_size, num_layers, bias,
                         batch_first, dropout, bidirectional, backend, dtype, seed)

    def __repr__(self):
        return super().__repr__().replace(", bias=", f", nonlinearity={self.nonlinearity!r}, bias=", 1)


class LSTM(RNNBase):
    """LSTM with torch's gate order i, f, g, o. State is the pair (h, c).

    proj_size P (0 < P < hidden_size; 0: none), as torch.nn.LSTM: h_t = W_hr (o_t tanh c_t)
    with weight_hr_l{k}[_reverse] (P, H); weight_hh is (4H, P), h0 / out / h_n have P
    features (2P bidirectional), c keeps H, layers above the first take D*P inputs. Runs
    on every backend (gpurnn.projection; the plan's "projection" says how)."""

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, backend="auto", dtype="float32", seed=None,
                 proj_size=0):
        self.proj_size = check_proj_size(proj_size, hidden_size)
        super().__init__("lstm", input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, backend, dtype, seed)


def check_proj_size(proj_size, hidden_size):
    """proj_size as torch takes it: an int, 0 (no projection) or 0 < P < hidden_size."""
    if isinstance(proj_size, bool) or not isinstance(proj_size, (int, np.integer)):
        raise TypeError(f"proj_size: expected an int (0 for no projection, else "
                        f"< hidden_size), got {type(proj_size).__name__} {proj_size!r}")
    if proj_size < 0:
        raise ValueError(f"proj_size: expected 0 (no projection) or a positive int smaller "
                         f"than hidden_size, got {proj_size}")
    if proj_size and isinstance(hidden_size, (int, np.integer)) and proj_size >= hidden_size:
        raise ValueError(f"proj_size: expected an int smaller than hidden_size "
                         f"({hidden_size}), got {proj_size}")
    return int(proj_size)


class GRU(RNNBase):
    """GRU with torch's gate order r, z, n; the reset gate applies after the matmul."""

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, backend="auto", dtype="float32", seed=None):
        super().__init__("gru", input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, backend, dtype, seed)


_TORCH_CLASSES = {"RNN_TANH": RNN, "RNN_RELU": RNN, "LSTM": LSTM, "GRU": GRU}


def make_layer(cell, input_size, hidden_size, **kwargs):
    """A layer stack by cell (a CellSpec or a registered name): the torch-style class for
    torch's four cells (RNN / LSTM / GRU, their state conventions), Recurrent otherwise."""
    spec = get_cell(cell)
    cls = _TORCH_CLASSES.get(spec.torch_mode) if spec is get_cell(spec.name) else None
    if cls is RNN:
        return RNN(input_size, hidden_size, nonlinearity=spec.name[4:], **kwargs)
    if cls is not None:
        return cls(input_size, hidden_size, **kwargs)
    return Recurrent(spec, input_size, hidden_size, **kwargs)
