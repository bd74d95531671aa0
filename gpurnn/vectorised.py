"""The numpy backend for any cell: the cell's own forward, vectorised, and its derived backward.

For a cell without a hand-written reference (every user cell, and mgu / cifg_lstm /
slstm) this is the oracle: the forward calls the function the user wrote, on (B, H)
NumPy arrays, step by step; the backward runs the derived backward (gpurnn.cells.codegen,
NumPy target) from the saved inputs. Its gradients are checked against central finite
differences of that forward in float64 (tests/test_cells.py), so it checks the compiled
kernels without sharing their code path. Semantics and shapes as gpurnn.reference, with
S states instead of (h, c) (gpurnn.contract); x may be (T, B) token ids (gpurnn.tokens).
"""
import numpy as np

from .contract import DirectionGrads
from .tokens import add_input_weight_grad, input_projection, is_token_ids


def forward(spec, x, w_ih, w_hh, b_ih, b_hh, state0, lengths):
    T, B = x.shape[:2]
    H = w_hh.shape[1]
    G = spec.n_gates
    dtype = w_hh.dtype
    zero_bias = np.zeros(G * H, dtype)
    has_bias = (b_ih is not None, b_hh is not None)
    b_ih = zero_bias if b_ih is None else b_ih
    b_hh = zero_bias if b_hh is None else b_hh
    states = [np.zeros((B, H), dtype) if s is None else np.array(s, dtype) for s in state0]
    valid = np.arange(T)[:, None] < (np.full(B, T) if lengths is None else np.asarray(lengths))[None, :]

    out = np.zeros((T, B, H), dtype)
    steps = []
    for t in range(T):
        xg = tuple(np.split(input_projection(np, x[t], w_ih) + b_ih, G, axis=1))
        hg = tuple(np.split(states[0] @ w_hh.T + b_hh, G, axis=1))
        new = [_full(v, (B, H), dtype) for v in spec.forward(xg, hg, tuple(states))]
        steps.append((xg, hg, tuple(states)))
        m = valid[t][:, None]
        states = [np.where(m, n, s) for n, s in zip(new, states)]
        out[t] = np.where(m, new[0], 0)
    tape = dict(spec=spec, x=x, w_ih=w_ih, w_hh=w_hh, valid=valid, has_bias=has_bias,
                steps=steps, plan={"path": "numpy-vectorised"})
    return out, tuple(states), tape


def backward(tape, dout, dstate_n, truncate, need_dx=True):
    spec, x, w_ih, w_hh, valid = (tape[k] for k in ("spec", "x", "w_ih", "w_hh", "valid"))
    T, B = x.shape[:2]
    H = w_hh.shape[1]
    G, S = spec.n_gates, spec.n_states
    dtype = w_hh.dtype
    need_dx = need_dx and not is_token_ids(x)       # ids have no gradient
    fwd, bwd = spec.numpy_functions(dtype)
    ds = [np.zeros((B, H), dtype) if d is None else np.array(d, dtype) for d in dstate_n]
    dx = np.zeros_like(x) if need_dx else None
    dw_ih, dw_hh = np.zeros_like(w_ih), np.zeros_like(w_hh)
    db_ih = np.zeros(w_ih.shape[0], dtype)
    db_hh = np.zeros(w_hh.shape[0], dtype)

    for t in range(T - 1, -1, -1):
        m = valid[t][:, None]
        if truncate is not None and t + 1 < T and (t + 1) % truncate == 0:
            cut = valid[t + 1][:, None]      # as the reference: only where t+1 was real
            ds = [np.where(cut, 0, d) for d in ds]
        xg, hg, prev = tape["steps"][t]
        result = fwd(*xg, *hg, *prev)
        new, saved = result[:S], result[S:]
        grads = [_full(v, (B, H), dtype)
                 for v in bwd(ds[0] + dout[t], *ds[1:], *saved, *prev, *new)]
        dax = np.where(m, np.concatenate(grads[:G], axis=1), 0)
        dah = np.where(m, np.concatenate(grads[G:2 * G], axis=1), 0)
        direct = grads[2 * G:]
        if need_dx:
            dx[t] = dax @ w_ih
        add_input_weight_grad(np, dw_ih, x[t], dax)
        dw_hh += dah.T @ prev[0]
        db_ih += dax.sum(0)
        db_hh += dah.sum(0)
        ds = [np.where(m, (dah @ w_hh if k == 0 else 0) + direct[k], ds[k]) for k in range(S)]

    has_b_ih, has_b_hh = tape["has_bias"]
    return DirectionGrads(dx=dx, dstate0=tuple(ds), dw_ih=dw_ih, dw_hh=dw_hh,
                          db_ih=db_ih if has_b_ih else None, db_hh=db_hh if has_b_hh else None,
                          plan={"path": "numpy-vectorised"})


def _full(value, shape, dtype):
    """A cell result as a (B, H) array of the layer's dtype (a constant broadcasts)."""
    return np.broadcast_to(np.asarray(value, dtype), shape)
