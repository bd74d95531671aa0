"""NumPy reference: forward and BPTT backward of one recurrent layer in one direction.

This is the oracle every kernel is tested against, so it is written plainly from the
equations (kernels_docs/cells.md), step by step, in whatever float dtype it is given,
and shares no code with the kernels' cell math (gpurnn/cells.py).

It covers the four torch cells (rnn_tanh, rnn_relu, lstm, gru: a spec whose ``reference``
names one of them); any other cell runs on gpurnn.vectorised. The backend contract
(gpurnn.contract) is implemented on top of it by gpurnn.backend.NumpyBackend.

Shapes (T steps, B batch rows, I inputs, H hidden units, G gates: 1 RNN, 4 LSTM, 3 GRU):
    x        (T, B, I)     input, or (T, B) integer token ids in 0..I-1 (one-hot rows,
                           gpurnn.tokens: the projection is a gather, dW_ih a scatter-add)
    w_ih     (G*H, I)      input weights, gates stacked in torch order
    w_hh     (G*H, H)      recurrent weights
    b_ih     (G*H,)|None   input bias          b_hh (G*H,)|None recurrent bias
    h0, c0   (B, H)|None   initial state (c0 only for LSTM); None means zeros
    lengths  (B,)|None     valid steps per row, 1..T; steps t >= lengths[b] leave the
                           state unchanged, output zeros and receive no gradient
    w_hr     (P, H)|None   LSTM projection (torch's weight_hr, proj_size P < H): h_t is
                           P wide, so h0, out and h_n are too and w_hh is (4H, P); c keeps H
    out      (T, B, H)     h_t at valid steps, 0 past a row's length ((T, B, P) with w_hr)
    h_n, c_n (B, H)        state after each row's last valid step

Equations (torch/cuDNN): a = x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh
    rnn_tanh  h = tanh(a)             rnn_relu  h = max(a, 0)
    lstm      i,f,g,o = s(a_i), s(a_f), tanh(a_g), s(a_o); c = f c_{t-1} + i g; h = o tanh(c)
              with a projection w_hr (torch's proj_size): r = o tanh(c), h = r W_hr^T
    gru       r = s(ax_r + ah_r), z = s(ax_z + ah_z), n = tanh(ax_n + r ah_n),
              h = (1 - z) n + z h_{t-1}     (ax = x-part + b_ih, ah = h-part + b_hh)

Truncation ``truncate=k``: the gradient that step t+1 sends back into h_t (and c_t) is
dropped whenever t+1 is a multiple of k, so windows [0,k), [k,2k), ... only see gradients
from their own steps, exactly as if the sequence had been run in windows whose carried
state is detached (gpurnn.train.tbptt).
"""
import numpy as np

from .contract import DirectionGrads
from .tokens import add_input_weight_grad, input_projection, is_token_ids

CELLS = ("rnn_tanh", "rnn_relu", "lstm", "gru")       # the cells written out below
_GATES = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "gru": 3}


def _sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))   # = 1 / (1 + exp(-x)), without exp overflow


def _split(a, n):
    return np.split(a, n, axis=-1)


def forward(cell, x, w_ih, w_hh, b_ih=None, b_hh=None, h0=None, c0=None, lengths=None,
            w_hr=None):
    """Run one layer in one direction of ``cell`` (one of CELLS); ``w_hr`` (P, H): the
    LSTM's projection (h_t = (o tanh c_t) W_hr^T, P wide). Returns (out, h_n, c_n or None,
    tape)."""
    if cell not in CELLS:
        raise ValueError(f"cell: the hand-written reference covers {CELLS}, got {cell!r}")
    if w_hr is not None and cell != "lstm":
        raise ValueError(f"w_hr: a projection is an LSTM's (torch's proj_size), got cell {cell!r}")
    T, B = x.shape[:2]
    H = w_hh.shape[0] // _GATES[cell]
    R = H if w_hr is None else w_hr.shape[0]      # the width of h: P with a projection
    dtype = w_hh.dtype
    has_c = cell == "lstm"
    zero_bias = np.zeros(_GATES[cell] * H, dtype)
    b_ih = zero_bias if b_ih is None else b_ih
    b_hh = zero_bias if b_hh is None else b_hh
    h = np.zeros((B, R), dtype) if h0 is None else np.array(h0, dtype)
    c = None
    if has_c:
        c = np.zeros((B, H), dtype) if c0 is None else np.array(c0, dtype)
    steps = np.arange(T)[:, None]
    valid = steps < (np.full(B, T) if lengths is None else np.asarray(lengths))[None, :]

    out = np.zeros((T, B, R), dtype)
    tape = dict(cell=cell, x=x, w_ih=w_ih, w_hh=w_hh, w_hr=w_hr, valid=valid,
                has_bias=(b_ih is not zero_bias, b_hh is not zero_bias), steps=[])
    for t in range(T):
        ax = input_projection(np, x[t], w_ih) + b_ih
        ah = h @ w_hh.T + b_hh
        step = dict(h_prev=h, c_prev=c)
        if cell == "rnn_tanh":
            h_new = np.tanh(ax + ah)
            c_new = None
        elif cell == "rnn_relu":
            h_new = np.maximum(ax + ah, 0)
            c_new = None
        elif cell == "lstm":
            ai, af, ag, ao = _split(ax + ah, 4)
            i, f, g, o = _sigmoid(ai), _sigmoid(af), np.tanh(ag), _sigmoid(ao)
            c_new = f * c + i * g
            h_new = o * np.tanh(c_new)
            step.update(i=i, f=f, g=g, o=o, c=c_new, r=h_new)
            if w_hr is not None:
                h_new = h_new @ w_hr.T
        else:  # gru
            axr, axz, axn = _split(ax, 3)
            ahr, ahz, ahn = _split(ah, 3)
            r, z = _sigmoid(axr + ahr), _sigmoid(axz + ahz)
            n = np.tanh(axn + r * ahn)
            h_new = (1 - z) * n + z * h
            c_new = None
            step.update(r=r, z=z, n=n, ahn=ahn)
        step["h"] = h_new
        m = valid[t][:, None]
        h = np.where(m, h_new, h)
        if c is not None:
            c = np.where(m, c_new, c)
        out[t] = np.where(m, h_new, 0)
        tape["steps"].append(step)
    return out, h, c, tape


def backward(tape, dout, dh_n=None, dc_n=None, truncate=None, need_dx=True):
    """BPTT through a forward's tape. Returns DirectionGrads (gpurnn.contract) whose
    dstate0 is (dh0,) or (dh0, dc0) for LSTM.

    dout (T, B, H) gradient of the loss w.r.t. out; dh_n, dc_n (B, H) w.r.t. the final
    state (None means zero); truncate: None or k >= 1; need_dx: False (or token-id x)
    skips dx, returned as None.
    """
    cell, x, w_ih, w_hh, valid = tape["cell"], tape["x"], tape["w_ih"], tape["w_hh"], tape["valid"]
    w_hr = tape.get("w_hr")
    T, B = x.shape[:2]
    H = w_hh.shape[0] // _GATES[cell]
    R = w_hh.shape[1]                              # the width of h (P with a projection)
    dtype = w_hh.dtype
    need_dx = need_dx and not is_token_ids(x)
    has_c = cell == "lstm"
    dh = np.zeros((B, R), dtype) if dh_n is None else np.array(dh_n, dtype)
    dc = (np.zeros((B, H), dtype) if dc_n is None else np.array(dc_n, dtype)) if has_c else None
    dx = np.zeros_like(x) if need_dx else None
    dw_ih, dw_hh = np.zeros_like(w_ih), np.zeros_like(w_hh)
    dw_hr = None if w_hr is None else np.zeros_like(w_hr)
    db_ih = np.zeros(w_ih.shape[0], dtype)
    db_hh = np.zeros(w_hh.shape[0], dtype)

    for t in range(T - 1, -1, -1):
        s = tape["steps"][t]
        m = valid[t][:, None]
        if truncate is not None and t + 1 < T and (t + 1) % truncate == 0:
            # Cut the gradient from step t+1 where t+1 was a real step; past a row's
            # length the carry is dh_n passing through unchanged and must survive.
            cut = valid[t + 1][:, None]
            dh = np.where(cut, 0, dh)
            if has_c:
                dc = np.where(cut, 0, dc)
        g_h = dh + dout[t]
        if cell == "rnn_tanh":
            da = g_h * (1 - s["h"] ** 2)
            dax = dah = da
            dh_direct = 0
        elif cell == "rnn_relu":
            da = g_h * (s["h"] > 0)
            dax = dah = da
            dh_direct = 0
        elif cell == "lstm":
            i, f, g, o, c = s["i"], s["f"], s["g"], s["o"], s["c"]
            if w_hr is not None:       # h = r W_hr^T: dW_hr from the valid rows, dL/dr
                dw_hr += np.where(m, g_h, 0).T @ s["r"]
                g_h = g_h @ w_hr
            tc = np.tanh(c)
            dc_t = dc + g_h * o * (1 - tc ** 2)
            dax = dah = np.concatenate([dc_t * g * i * (1 - i), dc_t * s["c_prev"] * f * (1 - f),
                                        dc_t * i * (1 - g ** 2), g_h * tc * o * (1 - o)], axis=1)
            dc_prev = dc_t * f
            dh_direct = 0
        else:  # gru
            r, z, n, ahn = s["r"], s["z"], s["n"], s["ahn"]
            dn = g_h * (1 - z) * (1 - n ** 2)
            dr = dn * ahn * r * (1 - r)
            dz = g_h * (s["h_prev"] - n) * z * (1 - z)
            dax = np.concatenate([dr, dz, dn], axis=1)
            dah = np.concatenate([dr, dz, dn * r], axis=1)
            dh_direct = g_h * z
        dax = np.where(m, dax, 0)
        dah = np.where(m, dah, 0)
        if need_dx:
            dx[t] = dax @ w_ih
        add_input_weight_grad(np, dw_ih, x[t], dax)
        dw_hh += dah.T @ s["h_prev"]
        db_ih += dax.sum(0)
        db_hh += dah.sum(0)
        dh = np.where(m, dah @ w_hh + dh_direct, dh)
        if has_c:
            dc = np.where(m, dc_prev, dc)

    has_b_ih, has_b_hh = tape["has_bias"]
    return DirectionGrads(dx=dx, dstate0=(dh,) if dc is None else (dh, dc), dw_ih=dw_ih, dw_hh=dw_hh,
                          db_ih=db_ih if has_b_ih else None,
                          db_hh=db_hh if has_b_hh else None, dw_hr=dw_hr)
