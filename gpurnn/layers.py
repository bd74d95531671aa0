"""torch.nn-compatible recurrent layers: RNN, LSTM, GRU.

Everything above one layer-direction lives here and is the same for every backend:
stacking layers, bidirectional (the reverse direction reads each row backwards within
its own length, so padding never leaks into it), dropout between layers, batch_first,
initial/final state layout, gradient accumulation and the state_dict in torch's names.

Shapes (T steps, B rows, I = input_size, H = hidden_size, L = num_layers, D = 2 if
bidirectional else 1):
    x        (T, B, I), or (B, T, I) with batch_first
    h0, c0   (L*D, B, H) whatever batch_first says
    lengths  (B,) ints in 1..T, right-padded x
    out      (T, B, D*H), or (B, T, D*H) with batch_first
    h_n, c_n (L*D, B, H);  index l*D + d (d = 1 is the reverse direction)
"""
from collections import OrderedDict

import numpy as np

from .arrays import to_numpy
from .backend import get_backend
from .cells import cell_spec
from .validation import check_array_like, check_float_array, check_lengths, check_positive_int


class RNNBase:
    """Shared machinery for RNN, LSTM and GRU; use those classes."""

    def __init__(self, cell, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, backend="auto", dtype="float32", seed=None):
        self.spec = cell_spec(cell)
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
            (name, self._backend.asarray(rng.uniform(-bound, bound, shape).astype(self.dtype)))
            for name, shape in self._param_shapes().items())
        self.grads = OrderedDict()
        self.zero_grad()
        self._tape = None

    # ----------------------------------------------------------------- parameters
    @property
    def backend(self):
        """Name of the backend this module runs on."""
        return self._backend.name

    @property
    def backend_impl(self):
        """The backend object itself (its ``xp`` array module, ``asarray``, ...)."""
        return self._backend

    def _param_shapes(self):
        G, H, D = self.spec.n_gates, self.hidden_size, self.num_directions
        shapes = OrderedDict()
        for layer in range(self.num_layers):
            for d in range(D):
                tag = _tag(layer, d)
                shapes[f"weight_ih_{tag}"] = (G * H, self.input_size if layer == 0 else D * H)
                shapes[f"weight_hh_{tag}"] = (G * H, H)
                if self.bias:
                    shapes[f"bias_ih_{tag}"] = (G * H,)
                    shapes[f"bias_hh_{tag}"] = (G * H,)
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

    def __repr__(self):
        extra = f", nonlinearity={self.spec.name[4:]!r}" if self.spec.name.startswith("rnn") else ""
        return (f"{type(self).__name__}({self.input_size}, {self.hidden_size}, num_layers={self.num_layers}"
                f"{extra}, bias={self.bias}, batch_first={self.batch_first}, dropout={self.dropout},"
                f" bidirectional={self.bidirectional}, backend={self.backend!r}, dtype={self.dtype.name!r})")

    # ----------------------------------------------------------------- forward
    def __call__(self, x, hx=None, lengths=None):
        return self.forward(x, hx, lengths)

    def forward(self, x, hx=None, lengths=None):
        """Run the whole stack. Returns (out, h_n), or (out, (h_n, c_n)) for LSTM.

        The tape for ``backward`` is kept on the module (the last forward wins)."""
        result, self._tape = self.forward_tape(x, hx, lengths)
        return result

    def forward_tape(self, x, hx=None, lengths=None, *, params=None):
        """Functional forward: returns (result, tape) and keeps nothing on the module.

        result is what ``forward`` returns; pass ``tape`` to ``backward_tape``. ``params``
        (optional, torch names to backend-native arrays) replaces the module's own
        parameters for this call; the torch bridge passes its nn.Parameters this way.
        """
        be, xp = self._backend, self._backend.xp
        params = self._params if params is None else params
        user_x = x
        x = self._as_native("x", x)
        if x.ndim != 3:
            raise ValueError(f"x: expected 3 dimensions ({'B, T' if self.batch_first else 'T, B'}, I),"
                             f" got shape {tuple(x.shape)}")
        if self.batch_first:
            x = xp.ascontiguousarray(x.transpose(1, 0, 2))
        T, B, _ = x.shape
        check_float_array("x", x, (T, B, self.input_size), self.dtype)
        lengths = check_lengths(lengths, B, T)
        h0, c0 = self._check_state(hx, B)
        D = self.num_directions

        layer_input, tapes, masks, h_n, c_n = x, [], [], [], []
        for layer in range(self.num_layers):
            outs, layer_tapes = [], []
            for d in range(D):
                k = layer * D + d
                w = _layer_weights(params, layer, d)
                seq = layer_input if d == 0 else _reverse_within_length(xp, layer_input, lengths)
                out, hn, cn, tape = be.forward(self.spec.name, seq, *w,
                                               None if h0 is None else h0[k],
                                               None if c0 is None else c0[k], lengths)
                outs.append(out if d == 0 else _reverse_within_length(xp, out, lengths))
                layer_tapes.append(tape)
                h_n.append(hn)
                c_n.append(cn)
            layer_out = outs[0] if D == 1 else xp.concatenate(outs, axis=2)
            mask = None
            if self.training and self.dropout > 0 and layer < self.num_layers - 1:
                keep = self._dropout_rng.random(layer_out.shape) >= self.dropout
                mask = be.asarray((keep / (1.0 - self.dropout)).astype(self.dtype))
                layer_out = layer_out * mask
            tapes.append(layer_tapes)
            masks.append(mask)
            layer_input = layer_out

        tape = dict(tapes=tapes, masks=masks, lengths=lengths, T=T, B=B)
        out = layer_input
        if self.batch_first:
            out = xp.ascontiguousarray(out.transpose(1, 0, 2))
        out = be.to_user(out, user_x)
        h_n = be.to_user(xp.stack(h_n), user_x)
        if self.spec.has_cell_state:
            return (out, (h_n, be.to_user(xp.stack(c_n), user_x))), tape
        return (out, h_n), tape

    def _as_native(self, name, a):
        check_array_like(name, a)
        try:
            return self._backend.asarray(a)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{name}: expected an array for backend {self.backend!r}, got "
                            f"{type(a).__name__} ({exc})") from None

    def _state_shape(self, B):
        return (self.num_layers * self.num_directions, B, self.hidden_size)

    def _check_state(self, hx, B):
        """Split and validate the initial state; returns (h0, c0), each native or None."""
        if self.spec.has_cell_state:
            if hx is None:
                hx = (None, None)
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise TypeError(f"hx: expected a tuple (h0, c0) for LSTM (either may be None),"
                                f" got {type(hx).__name__}")
            names, states = ("h0", "c0"), hx
        else:
            if isinstance(hx, (tuple, list)):
                raise TypeError(f"hx: expected one array h0 for {type(self).__name__}, got a"
                                f" {type(hx).__name__} of {len(hx)}")
            names, states = ("h0",), (hx,)
        checked = []
        for name, s in zip(names, states):
            if s is not None:
                s = check_float_array(name, self._as_native(name, s), self._state_shape(B), self.dtype)
            checked.append(s)
        return checked[0], (checked[1] if len(checked) > 1 else None)

    # ----------------------------------------------------------------- backward
    def backward(self, dout, dh_n=None, truncate=None):
        """BPTT through the last forward. Accumulates into ``grads``; returns (dx, dh0).

        dout: gradient w.r.t. out (its shape); dh_n: w.r.t. h_n, or (dh_n, dc_n) for LSTM,
        or None for zero; truncate: None for full BPTT, or k to cut the recurrent gradient
        every k steps (see gpurnn.reference). For LSTM dh0 is (dh0, dc0).
        """
        if self._tape is None:
            raise RuntimeError("backward: call forward first (there is no tape to differentiate)")
        dx, dh0, grads = self.backward_tape(self._tape, dout, dh_n, truncate)
        for name, g in grads.items():
            self.grads[name] += g
        return dx, dh0

    def backward_tape(self, tape, dout, dh_n=None, truncate=None):
        """Functional backward through ``tape`` from ``forward_tape``.

        Returns (dx, dh0, grads): as ``backward`` plus this call's parameter gradients
        (torch names), without touching ``self.grads``.
        """
        if truncate is not None:
            truncate = check_positive_int("truncate", truncate)
        be, xp = self._backend, self._backend.xp
        T, B = tape["T"], tape["B"]
        H, D, L = self.hidden_size, self.num_directions, self.num_layers
        user_dout = dout
        dout = self._as_native("dout", dout)
        expected = (B, T, D * H) if self.batch_first else (T, B, D * H)
        check_float_array("dout", dout, expected, self.dtype)
        if self.batch_first:
            dout = xp.ascontiguousarray(dout.transpose(1, 0, 2))
        dh_n, dc_n = self._check_state(dh_n, B)
        lengths = tape["lengths"]

        dh0 = [None] * (L * D)
        dc0 = [None] * (L * D)
        grads = OrderedDict()
        grad = dout
        for layer in range(L - 1, -1, -1):
            if tape["masks"][layer] is not None:
                grad = grad * tape["masks"][layer]
            dinput = None
            for d in range(D):
                k = layer * D + d
                g_out = grad[:, :, d * H:(d + 1) * H]
                g_out = xp.ascontiguousarray(g_out) if d == 0 else _reverse_within_length(xp, g_out, lengths)
                g = be.backward(tape["tapes"][layer][d], g_out,
                                None if dh_n is None else dh_n[k],
                                None if dc_n is None else dc_n[k], truncate)
                dx = g.dx if d == 0 else _reverse_within_length(xp, g.dx, lengths)
                dinput = dx if dinput is None else dinput + dx
                dh0[k], dc0[k] = g.dh0, g.dc0
                tag = _tag(layer, d)
                grads[f"weight_ih_{tag}"] = g.dw_ih
                grads[f"weight_hh_{tag}"] = g.dw_hh
                if self.bias:
                    grads[f"bias_ih_{tag}"] = g.db_ih
                    grads[f"bias_hh_{tag}"] = g.db_hh
            grad = dinput

        dx = xp.ascontiguousarray(grad.transpose(1, 0, 2)) if self.batch_first else grad
        dx = be.to_user(dx, user_dout)
        dh0 = be.to_user(xp.stack(dh0), user_dout)
        if self.spec.has_cell_state:
            dh0 = (dh0, be.to_user(xp.stack(dc0), user_dout))
        return dx, dh0, grads


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


class LSTM(RNNBase):
    """LSTM with torch's gate order i, f, g, o. State is the pair (h, c)."""

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, backend="auto", dtype="float32", seed=None):
        super().__init__("lstm", input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, backend, dtype, seed)


class GRU(RNNBase):
    """GRU with torch's gate order r, z, n; the reset gate applies after the matmul."""

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, backend="auto", dtype="float32", seed=None):
        super().__init__("gru", input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, backend, dtype, seed)


def make_layer(cell, input_size, hidden_size, **kwargs):
    """A layer by cell name ("rnn_tanh", "rnn_relu", "lstm", "gru"); kwargs as the classes."""
    if cell in ("rnn_tanh", "rnn_relu"):
        return RNN(input_size, hidden_size, nonlinearity=cell[4:], **kwargs)
    if cell == "lstm":
        return LSTM(input_size, hidden_size, **kwargs)
    if cell == "gru":
        return GRU(input_size, hidden_size, **kwargs)
    raise ValueError(f"cell: expected one of ['rnn_tanh', 'rnn_relu', 'lstm', 'gru'], got {cell!r}")
