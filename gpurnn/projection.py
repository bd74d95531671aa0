"""LSTM with projections (torch's ``proj_size``) on any backend, by folding W_hr into W_hh.

torch.nn.LSTM(proj_size=P) (P < H): the cell's output r_t = o_t * tanh(c_t) (H wide) is
projected, h_t = W_hr r_t (W_hr (P, H), torch's ``weight_hr_l{k}``); W_hh is (4H, P), h0,
out and h_n are P wide, c keeps H. The recurrence reads h_{t-1} only through
W_hh h_{t-1} = (W_hh W_hr) r_{t-1}, so one layer-direction is a plain LSTM of hidden size
H with the recurrent matrix

    W_eff = W_hh W_hr   (4H, H), once per call,

and the backends' fused kernels (cpu: njit/MKL loops, cuda: step and persistent kernels)
run it unchanged. What is left is outside the time loop:

  forward   gx0 = h0 W_hh^T enters step 0's input pre-activations (the contract's ``gx0``
            hook; the kernel's own h_{-1} is 0), the kernel runs with state0 (0, c0);
            out = R W_hr^T (one GEMM over T*B rows: the kernel's out R is 0 past a row's
            length, so is the projection), h_n = r_n W_hr^T
  backward  the kernel's backward with dout_R = dout W_hr and dL/d r_n = dh_n W_hr
            (``need_dgates`` hook: it also returns dGh, the (T, B, 4H) gate gradients), then
              dh0   = dGh[0] W_hh
              dW_hh = dW_eff W_hr^T + dGh[0]^T h0
              dW_hr = dout^T R + W_hh^T (dW_eff - C) + dh_n^T r_n
            where dW_eff = sum_t dGh_t^T r_{t-1} is the kernel's recurrent-weight gradient
            and C = sum over truncation cuts s (s = k, 2k, ... < T) of dGh_s^T r_{s-1}:
            truncated BPTT drops what step s sends back into h_{s-1}, so W_hr gets nothing
            through h_{s-1} there (W_hh still gets dGh_s^T h_{s-1}, as the reference).

Exact in exact arithmetic; in floating point the products associate differently from
torch's (W_hh (W_hr r) vs (W_hh W_hr) r): float32 rounding, ~1e-7 relative.

Cost: the per-step recurrent product is 4H x H (a plain LSTM of hidden size H) instead
of torch's 4H x P + P x H, i.e. H / (1.25 P) times the recurrent multiply-adds
(P = H/2: 1.6x, P = H/4: 3.2x), in exchange for keeping the fused single-pass kernels
(one launch per sequence on the GPU's persistent path; no per-step GEMM calls); plus the
GEMMs above, each one pass over T*B rows, and W_eff (4H * P * H once per call). The plan
(tape["plan"]["projection"], DirectionGrads.plan) says this ran and why.

The numpy backend (the oracle) does not fold: gpurnn.reference computes h_t = W_hr r_t per
step from the equations (NumpyBackend.forward_projected), so tests compare the fold
against an independent implementation.
"""
import numpy as np

from .contract import matmul

FOLD = ("fold: W_eff = W_hh W_hr (4H x H) runs the backend's fused LSTM recurrence "
        "unchanged (there is no per-step projection kernel); h0 W_hh^T enters step 0's "
        "input pre-activations; out = R W_hr^T, h_n and the gradients' projections are GEMMs "
        "outside the time loop")


def supports(spec):
    """The fold needs a cell that reads h_{t-1} only through W_hh h_{t-1} and whose gates
    are tied (dG_x = dG_h): the LSTM. Projections are torch's LSTM feature."""
    return spec.torch_mode == "LSTM" and spec.all_tied


def forward(backend, spec, x, w_ih, w_hh, w_hr, b_ih, b_hh, state0, lengths):
    """One layer-direction of an LSTM with projection on ``backend`` (the contract's
    forward, plus w_hr (P, H); w_hh is (4H, P), state0 = (h0 (B, P) | None, c0 (B, H) |
    None)). Returns (out (T, B, P), (h_n (B, P), c_n (B, H)), tape)."""
    own = getattr(backend, "forward_projected", None)
    if own is not None:
        return own(spec, x, w_ih, w_hh, w_hr, b_ih, b_hh, state0, lengths)
    if not supports(spec):
        raise ValueError(f"proj_size: projections are for LSTM (torch's proj_size), got cell"
                         f" {spec.name!r}")
    if not getattr(backend, "fold_hooks", False):
        raise TypeError(f"proj_size: backend {getattr(backend, 'name', backend)!r} has neither "
                        "forward_projected nor the contract's fold hooks (forward(gx0=), "
                        "backward(need_dgates=); gpurnn.contract)")
    xp = backend.xp
    h0, c0 = state0
    w_eff = matmul(backend, w_hh, w_hr)                        # (4H, H)
    gx0 = None if h0 is None else matmul(backend, h0, w_hh.T)  # (B, 4H)
    out_r, (r_n, c_n), tape = backend.forward(spec, x, w_ih, xp.ascontiguousarray(w_eff), b_ih,
                                              b_hh, (None, c0), lengths, gx0=gx0)
    T, B, H = out_r.shape
    P = w_hr.shape[0]
    out = matmul(backend, out_r.reshape(T * B, H), w_hr.T).reshape(T, B, P)
    h_n = matmul(backend, r_n, w_hr.T)
    plan = {**(tape.get("plan") or {}), "projection": FOLD}
    return out, (h_n, c_n), dict(inner=tape, w_hh=w_hh, w_hr=w_hr, h0=h0, out_r=out_r,
                                 r_n=r_n, plan=plan)


def backward(backend, tape, dout, dstate_n, truncate, need_dx=True):
    """BPTT through ``forward``'s tape: DirectionGrads with dw_hr and dstate0 (dh0 (B, P),
    dc0 (B, H))."""
    own = getattr(backend, "backward_projected", None)
    if own is not None:
        return own(tape, dout, dstate_n, truncate, need_dx)
    w_hh, w_hr, h0, out_r, r_n = (tape[k] for k in ("w_hh", "w_hr", "h0", "out_r", "r_n"))
    dh_n, dc_n = dstate_n
    T, B, H = out_r.shape
    P = w_hr.shape[0]
    dout2 = dout.reshape(T * B, P)
    dout_r = matmul(backend, dout2, w_hr).reshape(T, B, H)
    dr_n = None if dh_n is None else matmul(backend, dh_n, w_hr)
    g = backend.backward(tape["inner"], dout_r, (dr_n, dc_n), truncate, need_dx=need_dx,
                         need_dgates=True)
    dgates = g.dgates
    dg0 = dgates[0]                                           # (B, 4H)
    dh0 = matmul(backend, dg0, w_hh)                          # (B, P)
    dw_hh = matmul(backend, g.dw_hh, w_hr.T)                  # dW_eff W_hr^T
    if h0 is not None:
        dw_hh = dw_hh + matmul(backend, dg0.T, h0)
    dw_eff = g.dw_hh
    if truncate is not None and truncate < T:                 # the cuts s = k, 2k, ... < T
        cuts = np.arange(int(truncate), T, int(truncate))
        n = len(cuts)
        d_cut = backend.xp.ascontiguousarray(dgates[backend.xp.asarray(cuts)]).reshape(n * B, -1)
        r_cut = backend.xp.ascontiguousarray(out_r[backend.xp.asarray(cuts - 1)]).reshape(n * B, H)
        dw_eff = dw_eff - matmul(backend, d_cut.T, r_cut)
    dw_hr = matmul(backend, dout2.T, out_r.reshape(T * B, H)) + matmul(backend, w_hh.T, dw_eff)
    if dh_n is not None:
        dw_hr = dw_hr + matmul(backend, dh_n.T, r_n)
    plan = {**(g.plan or {}), "projection": FOLD}
    return g._replace(dstate0=(dh0, g.dstate0[1]), dw_hh=dw_hh, dw_hr=dw_hr, dgates=None,
                      plan=plan)
