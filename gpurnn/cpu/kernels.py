"""Fused recurrence kernels for the CPU backend: one layer, one direction, Numba JIT,
split over threads.

What it computes (shapes: T steps, B rows, H hidden units, G gates = 1 RNN, 4 LSTM, 3 GRU):

  forward_part(plan, part, gx, w_hh, w_hh_t, bias, lengths, h_seq, c_seq, aux, out, transposed)
      for t in 0..T-1:  gh = h_{t-1} @ W_hh^T            (this part's share of it)
                        per row b < lengths: cell pointwise forward of
                        gx[t] + b_ih + gh + b_hh, fused in one pass per hidden unit; past a
                        row's length the state is carried unchanged and out is 0.
  backward_part(plan, part, acts, h_seq, c_seq, aux, w_hh, w_hh_t, lengths, truncate, dout,
                dh, dc, dgx, dgh)
      for t in T-1..0:  cut dh/dc where t+1 is a multiple of ``truncate`` (reference rule),
                        per row b < lengths: cell pointwise backward, writing dgates,
                        then dh_{t-1} = dgh[t] @ W_hh + the cell's direct term.

A ``Plan`` (per layer call) says how the loop splits over ``nparts`` threads; every part
runs its own function call, all at once (Plan.run, parallel.run_parts):
  * "units", small per-step products (B <= 8, _is_small) over T > 1 steps: part p owns a
    block of hidden units, the whole loop is one njit call per part (forward_small /
    backward_small) with the products done by _accumulate_product on this part's 1/nparts of W_hh (which then
    stays in its core's L2), no BLAS; the parts meet at a spin barrier (sync.py) once per
    step, since every unit of step t+1 needs all of h_t.
  * "rows", otherwise: part p owns a block of batch rows. Rows are independent, so these
    parts never meet inside the loop. Products by one of:
      "mkl"       (float32, an MKL found: gpurnn.cpu.mkl) the whole time loop is one njit
                  call per part (forward_rows_mkl / backward_rows_mkl), each step's product
                  by MKL's packed GEMM on a copy of W_hh packed once per call;
      "openblas"  otherwise: a Python time loop, per step one ``np.matmul(..., out=buffer)``
                  (NumPy's OpenBLAS, one thread per part) and one njit call of the fused
                  pass (forward_step / backward_step), ~5 us of call overhead per step.
No njit code here calls np.dot: inside njit that goes to SciPy's OpenBLAS, a second
OpenBLAS thread pool whose busy-waiting workers fight NumPy's for the cores (training
step 106 -> 46 ms at 2 threads once removed; kernels_docs/cpu.md, Threading).

The input projection (gx = X W_ih^T) and the weight gradients are big GEMMs, split by rows
over the same parts (``gemm(..., part, nparts)``) by the caller, gpurnn.cpu.backend, the
parts meeting before and after the loop. Except for "units" where NumPy's OpenBLAS can be
called from njit (plan.gemms "parts"): there each part computes its own units' columns of
gx, and afterwards its rows of dW_hh and dW_ih and its share of dX, inside its one loop
call, so the parts never wait for each other's GEMM nor take the GIL between phases (B=1
LSTM T=100 H=256: 2% less time quiet, 20-35% less forward on a loaded VM; RESULTS_cpu.md,
Session 11).

Versions: one kernel set per (cell, dtype), built by ``recurrence_kernels`` from the
scalar cell math of gpurnn.cells (written once, shared with the CUDA backend); float32 uses
the vectorisable exp/tanh of gpurnn.cpu.fastmath, float64 uses libm.

Tensor arguments (C-contiguous, dtype = the layer's float dtype unless noted):
    gx       (T, B, G*H)  in: X W_ih^T;  out: gate activations (LSTM i,f,g,o; GRU r,z,n),
                          kept as the tape. RNN: left as is.
    w_hh     (G*H, H)     W_hh (torch's weight_hh)
    w_hh_t   (H, G*H)     W_hh transposed, for "rows" (None for "units", whose parts pack
                          their own share); the per-step BLAS products use the orientation
                          that measured faster: forward ghT = W_hh @ h^T, backward
                          dh_recT = W_hh^T @ dgh[t]^T, each copied back to (rows, .) by
                          _transpose_into inside the step's njit call
    bias     (2, G*H)     b_ih, b_hh (zeros where the layer has none), added in the fused pass
    lengths  (B,) int64   valid steps per row, 1..T
    h_seq    (T+1, B, H)  h_seq[0] = h0 (in); h_seq[t+1] = state after step t (out)
    c_seq    (T+1, B, H)  LSTM cell state, same layout; (T+1, B, 0) for other cells
    aux      (T, B, H)    GRU: ah_n = (W_hh h_{t-1} + b_hh)_n; (T, B, 0) for other cells
    out      (T, B, H)    output h_t, 0 past a row's length
    transposed bool       forward BLAS product as ghT = W_hh @ h^T (else gh = h @ W_hh^T)
    acts     = gx after the forward
    truncate int          0 = full BPTT, else k >= 1
    dout     (T, B, H)    gradient w.r.t. out
    dh, dc   (B, H)       in: gradient w.r.t. h_n (c_n); out: w.r.t. h0 (c0). dc is (B, 0)
                          for cells without a cell state
    dgx      (T, B, G*H)  out: gradient w.r.t. the input-side pre-activations (0 past length)
    dgh      (T, B, G*H)  out: w.r.t. the recurrent-side ones; the same array as dgx except
                          for GRU (whose candidate gate scales its recurrent part by r)
Scratch (per-step products, packed weights, the backward's dh shares) is allocated by the
parts or the Plan, 64-byte aligned (aligned_empty).

Run/test:  python -m pytest tests/test_cpu_backend.py tests/test_cpu_parallel.py -q
"""
import contextlib
import copy
import functools
from typing import NamedTuple

import numpy as np

from ..cells.codegen import exec_source, scalar_namespace
from . import fastmath, mkl, openblas, rows
from .jit import stable_jit
from .parallel import (cores_free, recurrence_threads, run_parts, run_parts_on_pool,
                       single_threaded_blas)
from .sync import abort, barrier, meet, new_flags


@functools.lru_cache(maxsize=None)
def cell_ops(dtype_name):
    """The graph ops (gpurnn.cells.codegen) compiled for the CPU, with this dtype's fastest
    exp/tanh: the vectorisable polynomials for float32 (libm calls stop LLVM vectorising
    the unit loop), libm for float64."""
    if dtype_name == "float32":
        exp, tanh = fastmath.exp_f32, fastmath.tanh_f32
    else:
        exp, tanh = np.exp, np.tanh
    return scalar_namespace(dtype_name, exp=exp, tanh=tanh, log=np.log, log1p=np.log1p,
                            jit=stable_jit(f"cellops:{dtype_name}", inline="always"))


# --------------------------------------------------------------------------- row kernels
def _cell_rows(spec, dtype_name):
    """forward_row / backward_row of a cell (gpurnn.cpu.rows), compiled with the cell's
    generated scalar math for this dtype; inline: cached on disk as part of the loops."""
    key = f"{spec.name}:{spec.key}:{dtype_name}"
    cell_forward, cell_backward = spec.compile("cpu", dtype_name, cell_ops(dtype_name))
    namespace = {"cell_forward": stable_jit(f"cell:{key}", cache=False, inline="always")(cell_forward),
                 "cell_backward": stable_jit(f"cell:{key}", cache=False, inline="always")(cell_backward)}
    src = rows.row_source(spec)
    filename = f"<gpurnn rows {key}>"
    row_jit = stable_jit(f"rows:{key}", cache=False, inline="always")
    return tuple(row_jit(exec_source(src, namespace, filename, name))
                 for name in ("forward_row", "backward_row"))


# --------------------------------------------------------------------------- products
# Per-step products at most this many multiply-adds (and at most 8 rows) skip BLAS: a
# one-thread loop is as fast there (B=1, H=256 LSTM: 11 us vs 12 us per step), cannot be
# stalled by a BLAS worker thread that lost its core (2 threads on a loaded 2-core machine:
# up to 60 ms per 100 steps, measured), and can be split by hidden units over threads.
SMALL_STEP_MACS = 1 << 22


def _is_small(M, K, N):
    """Per-step products of this size (rows M <= 8) take the njit loop, not BLAS."""
    return M <= 8 and M * K * N <= SMALL_STEP_MACS


@stable_jit("small", inline="always")
def _accumulate_product(coef, rows, c0, out):
    """out[j] += sum_k coef[k] * rows[k, c0 + j] for j < len(out). coef (K,), rows (K, >= c0 +
    len(out)) C-contiguous. Four rows per pass, so each load and store of ``out`` serves four
    multiply-adds; the loop streams ``rows`` (the weights), which is what bounds it."""
    K, n = coef.shape[0], out.shape[0]
    K4 = K - K % 4
    for k in range(0, K4, 4):
        s0, s1, s2, s3 = coef[k], coef[k + 1], coef[k + 2], coef[k + 3]
        r0, r1 = rows[k, c0:c0 + n], rows[k + 1, c0:c0 + n]
        r2, r3 = rows[k + 2, c0:c0 + n], rows[k + 3, c0:c0 + n]
        for j in range(n):
            out[j] += s0 * r0[j] + s1 * r1[j] + s2 * r2[j] + s3 * r3[j]
    for k in range(K4, K):
        s, r = coef[k], rows[k, c0:c0 + n]
        for j in range(n):
            out[j] += s * r[j]


@stable_jit("small", inline="always")
def _copy_into(src, dst):
    """dst[j] = src[j], 1-D views of one length. Loops, not ``dst[:] = src``: an array
    assigned into a slice makes Numba compile its shape-mismatch message (str formatting
    of tuples), ~5 of the main job's ~21 s cold JIT (measured with numba's compile events)."""
    for j in range(dst.shape[0]):
        dst[j] = src[j]


@stable_jit("small", inline="always")
def _add_into(src, dst):
    """dst[j] += src[j] (``dst += src`` on a slice would assign it back: see _copy_into)."""
    for j in range(dst.shape[0]):
        dst[j] += src[j]


@stable_jit("small", inline="always")
def _unit_range(part, nparts, H):
    """Hidden units [u0, u1) of one part: equal chunks in multiples of 16 (one AVX-512 vector
    of float32), so that only the last part has a ragged edge."""
    chunk = ((H + nparts - 1) // nparts + 15) // 16 * 16
    u0 = min(part * chunk, H)
    return u0, min(u0 + chunk, H)


@stable_jit("small", inline="always")
def _transpose_into(src, dst):
    """dst = src.T for src (N, M), dst (M, N): 16 source rows per pass, so each row of dst
    gets 16 consecutive stores (1024x32: 11.9 us vs 18.7 with 8 rows, 19.8 plain loop)."""
    N, M = src.shape
    N16 = N - N % 16
    for n in range(0, N16, 16):
        for m in range(M):
            d = dst[m, n:n + 16]
            for i in range(16):
                d[i] = src[n + i, m]
    for n in range(N16, N):
        for m in range(M):
            dst[m, n] = src[n, m]


# --------------------------------------------------------------------------- step loops
def _step_loops(key, forward_row, backward_row):
    @stable_jit(key, inline="always")
    def fwd_rows(t, b0, b1, u0, u1, gx, gh, bias, lengths, st, aux, out):
        """Step t, rows b0..b1-1 (their products in gh[b - b0]), units u0..u1-1."""
        H = st.shape[3]
        for b in range(b0, b1):
            if t < lengths[b]:
                forward_row(gx[t, b], gh[b - b0], bias, st, t, b, aux[t, b], u0, u1)
                _copy_into(st[0, t + 1, b, u0:u1], out[t, b, u0:u1])
            else:   # past this row's length: carry the state, output zeros
                for s in range(st.shape[0]):
                    _copy_into(st[s, t, b, u0:u1], st[s, t + 1, b, u0:u1])
                for a in range(aux.shape[2] // H):
                    aux[t, b, a * H + u0:a * H + u1] = 0
                out[t, b, u0:u1] = 0

    @stable_jit(key, inline="always")
    def bwd_rows(t, b0, b1, u0, u1, truncate, acts, st, aux, lengths, dout, ds, dgx, dgh):
        """Step t, rows b0..b1-1, units u0..u1-1 (and their G gate columns in dgx/dgh)."""
        T, H = dgx.shape[0], st.shape[3]
        if truncate > 0 and t + 1 < T and (t + 1) % truncate == 0:
            for b in range(b0, b1):
                if t + 1 < lengths[b]:   # step t+1 was real: drop what it sends back
                    for s in range(ds.shape[0]):
                        ds[s, b, u0:u1] = 0
        for b in range(b0, b1):
            if t < lengths[b]:
                backward_row(dout[t, b], ds, acts[t, b], aux[t, b], st, t, b, dgx[t, b],
                             dgh[t, b], u0, u1)
            else:   # no gradient past the length; ds passes through unchanged
                for g in range(dgx.shape[2] // H):
                    dgx[t, b, g * H + u0:g * H + u1] = 0
                    dgh[t, b, g * H + u0:g * H + u1] = 0

    # ---- small products (B <= 8): the whole loop in one njit call per part; the parts
    # split the hidden units, meeting at a spin barrier once per step
    @stable_jit(key, nogil=True)
    def forward_small(part, nparts, flags, gx, w_hh, w, bias, lengths, st, aux, out, x2, w_ih):
        """Part ``part`` of ``nparts``: where x2 has rows, first its units' gate columns of
        gx = X W_ih^T (x2 (T*B, I), w_ih (G*H, I); NumPy's OpenBLAS; only this part reads
        them, so no part waits for another's); then packs the W_hh^T columns of its units'
        G gates into ``w`` (Plan.weight_copy: 1/nparts of W_hh, which then stays in this
        core's L2 cache), then per step their products h_{t-1} @ W_hh^T and the fused cell;
        the barrier publishes h_t to the other parts."""
        T, B, H = gx.shape[0], gx.shape[1], st.shape[3]
        u0, u1 = _unit_range(part, nparts, H)
        n = u1 - u0
        G = gx.shape[2] // H
        if x2.shape[0] > 0:
            gx2 = gx.reshape(T * B, G * H)
            for g in range(G):
                openblas.gemm_nt(x2, w_ih[g * H + u0:g * H + u1], gx2[:, g * H + u0:g * H + u1])
        # w[:, g*n + j] = W_hh[g*H + u0 + j, :]
        if nparts == 1:                         # all units: plain W_hh^T (C-contiguous stores,
            _transpose_into(w_hh, w)            # 0.15 vs 0.22 ms at H=256)
        else:
            for g in range(G):
                _transpose_into(w_hh[g * H + u0:g * H + u1], w[:, g * n:(g + 1) * n])
        gh = np.empty((B, G * n), gx.dtype)     # this part's products, gate-major
        for t in range(T):
            for b in range(B):
                gh[b, :] = 0
                _accumulate_product(st[0, t, b], w, 0, gh[b])
            fwd_rows(t, 0, B, u0, u1, gx, gh, bias, lengths, st, aux, out)
            barrier(flags, part, nparts, t + 1)

    @stable_jit(key, nogil=True)
    def backward_small(part, nparts, flags, acts, st, aux, w_hh, w, lengths, truncate, dout, ds,
                       dgx, dgh, partial, x2, h_prev2, w_ih, dx2, dw_ih, dw_hh):
        """Part ``part`` of ``nparts``: copies its units' G gate rows of W_hh into ``w``
        (Plan.weight_copy: contiguous, aligned), then per step the cell backward for its units
        and its share of dh_{t-1} = dgh[t] @ W_hh over those rows into partial[t % 2, part] (B, H);
        after the barrier each part adds all parts' shares for its own units. Two partial
        buffers, alternating, so one barrier per step suffices.
        Then, from its own columns of dgx / dgh (NumPy's OpenBLAS), its units' rows of
        dw_hh = dG_h^T H_prev where h_prev2 (T*B, H) has rows, of dw_ih = dG_x^T X where
        x2 (T*B, I) has rows, and where dx2 (T*B, I) has rows, after one more barrier, its
        share of the rows of dx2 = dG_x W_ih (w_ih (G*H, I)), which needs every part's
        columns."""
        T, B, H = dgx.shape[0], dgx.shape[1], st.shape[3]
        u0, u1 = _unit_range(part, nparts, H)
        n = u1 - u0
        G = dgx.shape[2] // H
        # w[g*n + j] = W_hh[g*H + u0 + j]
        for g in range(G):
            for i in range(n):
                _copy_into(w_hh[g * H + u0 + i], w[g * n + i])
        for t in range(T - 1, -1, -1):
            bwd_rows(t, 0, B, u0, u1, truncate, acts, st, aux, lengths, dout, ds, dgx, dgh)
            share = partial[t % 2, part]
            for b in range(B):
                share[b, :] = 0
                for g in range(G):
                    _accumulate_product(dgh[t, b, g * H + u0:g * H + u1], w[g * n:(g + 1) * n], 0,
                                        share[b])
            barrier(flags, part, nparts, T - t)
            for b in range(B):
                if t < lengths[b]:
                    for q in range(nparts):
                        _add_into(partial[t % 2, q, b, u0:u1], ds[0, b, u0:u1])
        dgx2, dgh2 = dgx.reshape(T * B, G * H), dgh.reshape(T * B, G * H)
        for g in range(G):
            c0, c1 = g * H + u0, g * H + u1
            if h_prev2.shape[0] > 0:
                openblas.gemm_tn(dgh2[:, c0:c1], h_prev2, dw_hh[c0:c1])
            if x2.shape[0] > 0:
                openblas.gemm_tn(dgx2[:, c0:c1], x2, dw_ih[c0:c1])
        if dx2.shape[0] > 0:
            barrier(flags, part, nparts, T + 1)
            r0, r1 = _share(T * B, part, nparts)
            openblas.gemm_nn(dgx2[r0:r1], w_ih, dx2[r0:r1])

    # ---- BLAS products (B > 8): a Python time loop per part, one BLAS call and one njit
    # call per step; the parts split the batch rows and never meet
    @stable_jit(key, nogil=True)
    def forward_step(t, b0, b1, gx, gh, ghT, transposed, bias, lengths, st, aux, out):
        """One forward step of rows b0..b1-1 after BLAS wrote their product (ghT, or gh)."""
        if transposed:
            _transpose_into(ghT, gh)
        fwd_rows(t, b0, b1, 0, st.shape[3], gx, gh, bias, lengths, st, aux, out)

    @stable_jit(key, nogil=True)
    def backward_step(t, b0, b1, truncate, acts, st, aux, lengths, dout, ds, dgx, dgh, dh_rec,
                      dh_recT, transposed):
        """First adds step t+1's product (BLAS: dh_recT (H, b1-b0), or dh_rec (b1-b0, H))
        into ds[0] for the rows where step t+1 was real (none when t = T-1), then step t's
        rows (none when t = -1)."""
        if t + 1 < dgx.shape[0]:
            if transposed:
                _transpose_into(dh_recT, dh_rec)
            for b in range(b0, b1):
                if t + 1 < lengths[b]:
                    _add_into(dh_rec[b - b0], ds[0, b])
        if t >= 0:
            bwd_rows(t, b0, b1, 0, st.shape[3], truncate, acts, st, aux, lengths, dout, ds, dgx,
                     dgh)

    def rows_loops(gemm_nt, compile):
        """The "rows" time loops with the per-step products c = a @ b.T by ``gemm_nt``:
        compiled (NumPy's OpenBLAS called from njit, openblas.py) or, where that cannot
        run, as Python loops with np.matmul (the plan says why). ``block`` > 0: each
        product as h @ W^T in calls of ``block`` output columns (openblas.small_block:
        OpenBLAS's small-matrix kernels, no packing of W_hh per call, no transpose after);
        0: one call, gh^T = W_hh h^T where ``transposed`` (the forward), else h @ W_hh^T."""
        def products(a, b, c, cT, transposed, block):
            if block > 0:
                for m0 in range(0, b.shape[0], block):
                    gemm_nt(a, b[m0:m0 + block], c[:, m0:m0 + block])
            elif transposed:
                gemm_nt(b, a, cT)
            else:
                gemm_nt(a, b, c)

        def forward_rows_blas(b0, b1, gx, w_hh, bias, lengths, st, aux, out, transposed, block):
            GH, n = w_hh.shape[0], b1 - b0
            gh, ghT = np.empty((n, GH), gx.dtype), np.empty((GH, n), gx.dtype)
            transposed = transposed and block == 0
            for t in range(gx.shape[0]):
                products(st[0, t, b0:b1], w_hh, gh, ghT, transposed, block)   # h_{t-1} W_hh^T
                forward_step(t, b0, b1, gx, gh, ghT, transposed, bias, lengths, st, aux, out)

        def backward_rows_blas(b0, b1, acts, st, aux, w_hh_t, lengths, truncate, dout, ds, dgx,
                               dgh, block):
            T, H, n = dgx.shape[0], w_hh_t.shape[0], b1 - b0
            dh_rec, dh_recT = np.empty((n, H), dgx.dtype), np.empty((H, n), dgx.dtype)
            transposed = block == 0
            for t in range(T - 1, -2, -1):      # t = -1: the last product's add only (one
                backward_step(t, b0, b1, truncate, acts, st, aux, lengths, dout, ds, dgx, dgh,
                              dh_rec, dh_recT, transposed)      # call site: one compile)
                if t >= 0:
                    products(dgh[t, b0:b1], w_hh_t, dh_rec, dh_recT, transposed, block)  # dgh W_hh
        products = compile(products)
        return compile(forward_rows_blas), compile(backward_rows_blas)

    openblas.status()               # registers the symbols rows_njit links against
    rows_njit = rows_loops(openblas.gemm_nt, stable_jit(key, nogil=True))
    rows_python = rows_loops(lambda a, b, c: np.matmul(a, b.T, out=c), _as_is)

    # ---- MKL's packed products (B > 8, float32, mkl.status()): the whole loop of a part's
    # rows in one njit call, W_hh packed once per call (gpurnn.cpu.mkl)
    @stable_jit(key, nogil=True)
    def forward_rows_mkl(b0, b1, gx, packed, bias, lengths, st, aux, out):
        """Rows b0..b1-1, every step: gh = h_{t-1} @ W_hh^T (packed: mkl.pack_weights(W_hh,
        trans=True, b1 - b0)), then the fused cell."""
        gh = np.empty((b1 - b0, gx.shape[2]), gx.dtype)
        previous = mkl.one_thread()
        for t in range(gx.shape[0]):
            mkl.gemm_packed(st[0, t, b0:b1], packed, gh, 0.0)
            fwd_rows(t, b0, b1, 0, st.shape[3], gx, gh, bias, lengths, st, aux, out)
        mkl.restore_threads(previous)

    @stable_jit(key, nogil=True)
    def backward_rows_mkl(b0, b1, acts, st, aux, packed, lengths, truncate, dout, ds, dgx, dgh):
        """Rows b0..b1-1, steps T-1..0: ds[0] += dgh[t+1] @ W_hh straight into ds (beta = 1;
        rows past their length have dgh = 0, so they get nothing, as backward_step's mask
        gives), then the cell backward of step t. packed: mkl.pack_weights(W_hh, False, rows)."""
        T, H = dgx.shape[0], st.shape[3]
        previous = mkl.one_thread()
        for t in range(T - 1, -1, -1):
            if t + 1 < T:
                mkl.gemm_packed(dgh[t + 1, b0:b1], packed, ds[0, b0:b1], 1.0)
            bwd_rows(t, b0, b1, 0, H, truncate, acts, st, aux, lengths, dout, ds, dgx, dgh)
        mkl.gemm_packed(dgh[0, b0:b1], packed, ds[0, b0:b1], 1.0)
        mkl.restore_threads(previous)

    # ---- one part of a split recurrence (plan: a Plan, see below)
    def forward_part(plan, part, gx, w_hh, w_hh_t, bias, lengths, st, aux, out, transposed,
                     x2, w_ih):
        """w_hh_t: W_hh^T (C-contiguous) for "rows" with OpenBLAS products, else unused.
        x2 (T*B, I), w_ih (G*H, I): "units" parts start with their own columns of
        gx = X W_ih^T where x2 has rows (plan.gemms "parts"); otherwise unused (x2 with no
        rows: gx holds it already)."""
        if plan.kind == "units":
            forward_small(part, plan.nparts, plan.step_flags, gx, w_hh,
                          plan.weight_copy(part, "columns", gx.dtype), bias, lengths, st, aux, out,
                          x2, w_ih)
        elif plan.products == "mkl":
            b0, b1 = plan.rows(part)
            forward_rows_mkl(b0, b1, gx, mkl.pack_weights(w_hh, True, b1 - b0), bias, lengths,
                             st, aux, out)
        else:
            b0, b1 = plan.rows(part)
            loop = (rows_njit if plan.loop == "njit" else rows_python)[0]
            loop(b0, b1, gx, w_hh, bias, lengths, st, aux, out, transposed,
                 plan.small_block(b1 - b0, w_hh.shape[1]))

    def backward_part(plan, part, acts, st, aux, w_hh, w_hh_t, lengths, truncate, dout, ds, dgx,
                      dgh, x2, h_prev2, w_ih, dx2, dw_ih, dw_hh):
        """w_hh_t: W_hh^T (C-contiguous) for "rows" with OpenBLAS products, else unused.
        x2 (T*B, I), h_prev2 (T*B, H), w_ih (G*H, I), dx2 (T*B, I), dw_ih (G*H, I), dw_hh
        (G*H, H): "units" parts end with their own rows of dw_hh where h_prev2 has rows, of
        dw_ih where x2 has rows, and their share of dx2's rows where it has rows (the
        caller's choice, backend.CpuBackend.backward); otherwise unused."""
        if plan.kind == "units":
            backward_small(part, plan.nparts, plan.step_flags, acts, st, aux, w_hh,
                           plan.weight_copy(part, "rows", dgx.dtype), lengths, truncate, dout, ds,
                           dgx, dgh, plan.partial, x2, h_prev2, w_ih, dx2, dw_ih, dw_hh)
        elif plan.products == "mkl":
            b0, b1 = plan.rows(part)
            backward_rows_mkl(b0, b1, acts, st, aux, mkl.pack_weights(w_hh, False, b1 - b0),
                              lengths, truncate, dout, ds, dgx, dgh)
        else:
            b0, b1 = plan.rows(part)
            loop = (rows_njit if plan.loop == "njit" else rows_python)[1]
            loop(b0, b1, acts, st, aux, w_hh_t, lengths, truncate, dout, ds, dgx, dgh,
                 plan.small_block(b1 - b0, w_hh_t.shape[1]))

    return forward_part, backward_part


class SplitRules(NamedTuple):
    """When a layer call splits over threads (CpuBackend(split=...); tests lower them).
    Defaults: work below which splitting does not pay."""
    units_per_part: int = 32      # the barrier costs about as much as 32 units' product
    rows_per_part: int = 4        # a BLAS call per step per part
    split_macs: int = 1 << 23     # multiply-adds in the whole loop (~0.4 ms on one core;
                                  # handing parts to the pool and back costs ~0.1 ms a call)
    fit_free_cores: bool = True   # "units": no more parts than cores free now (Plan); tests
                                  # that must see a split turn it off


DEFAULT_SPLIT = SplitRules()


def aligned_empty(shape, dtype, align=64):
    """np.empty whose data starts on an ``align``-byte boundary (a cache line). NumPy's own
    allocations start 16 bytes in; the unaligned AVX-512 loads of a row then straddle two
    lines: the B=1 LSTM loop over W_hh took 10-20% longer (forward 1.45-1.53 vs 1.32-1.41
    ms, backward 1.62-1.73 vs 1.33-1.42 ms, measured)."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    raw = np.empty(nbytes + align, np.uint8)
    start = -raw.ctypes.data % align
    return raw[start:start + nbytes].view(dtype).reshape(shape)


class Plan:
    """How one layer-direction's recurrence is split over threads.

    kind "units": B <= 8 (``_is_small``) and T > 1, njit products, parts own hidden units
                  and meet at a spin barrier every step (``step_flags``; ``partial`` for the
                  backward; each part's copy of its share of W_hh from ``weight_copy``).
    kind "rows":  BLAS products per step, parts own batch rows and never meet in the loop;
                  ``products`` "mkl" (packed, the loop in njit) or "openblas" (NumPy's,
                  the loop in njit where ``loop`` is "njit", else in Python with
                  np.matmul), as the backend chose (CpuBackend(gemm=...)).
    ``meet(part)`` is a barrier for the phases around the loop (a GEMM split by rows before
    or after it). With nparts > 1, ``blas()`` limits BLAS to one thread per part (each part
    calls BLAS itself), and BLAS worker threads are never woken: OpenBLAS's spin ~100 ms after
    each threaded call, and one on a core a part needs costs the part its time slices."""

    def __init__(self, T, B, H, GH, threads, rules=DEFAULT_SPLIT, products="openblas",
                 loop="njit"):
        self.B, self.H, self.GH = B, H, GH
        self.rules = rules
        if T * B * GH * H < rules.split_macs:
            threads = 1
        self.library = products          # the big GEMMs' BLAS (Plan.gemm)
        self.busy = None                 # "units": cores found taken (cores_free), if any
        if _is_small(B, H, GH) and T > 1:   # one step (sampling) has no loop to keep W_hh
                                             # in cache over: the rows kernels, compiled for
                                             # training already (4.5 s less cold JIT)
            self.kind, self.nparts = "units", max(1, min(threads, H // rules.units_per_part))
            self.products = "njit"
            self._fit_to_free_cores()
        else:
            self.kind, self.nparts = "rows", max(1, min(threads, B // rules.rows_per_part))
            self.products = products
        self.loop = loop                 # "rows" with OpenBLAS: the time loop in njit or Python
        self.gemms = "rows"              # the GEMMs with X and W_ih: "rows", split by rows by
        self.gemms_why = None            # the caller around the loop, or "parts" ("units": each
        self.gemms_declined = False      # part its own units', in its loop call); why not
                                         # "parts", and whether that was a fallback (the
                                         # caller sets all three)
        self._reset()

    def _fit_to_free_cores(self):
        """"units" parts meet every step, so one whose core is taken (a torch OpenMP worker
        still spinning after torch's last op, another process) stalls all of them at every
        barrier: B=1 LSTM 12.6 ms instead of 6.4 right after a torch.nn.LSTM call (2 cores,
        RESULTS_cpu.md Tuning log 20). Use only the cores free now; "rows" parts never meet
        in the loop and lose only the taken core's share, so they keep their count."""
        if self.nparts > 1 and self.rules.fit_free_cores:
            free = cores_free()
            if free is not None and free + 1 < self.nparts:
                self.busy = self.nparts - (free + 1)
                self.nparts = free + 1

    def small_block(self, rows, K):
        """Output columns per OpenBLAS call of a "rows" part's per-step product (0: one
        call), where the loop is compiled (openblas.small_block); the Python loop and MKL
        take one call."""
        if self.kind != "rows" or self.products != "openblas" or self.loop != "njit":
            return 0
        return openblas.small_block(rows, K)

    def gemm(self, a, b, out, part):
        """This part's rows of out = a @ b (``gemm``) with this plan's BLAS library."""
        gemm(a, b, out, part, self.nparts, self.library)

    def _reset(self):
        self.step_flags = new_flags(self.nparts)
        self.phase_flags = new_flags(self.nparts)
        self._phase = [0] * self.nparts
        self.partial = None
        self.pool = None                 # which threads ran parts 1.. (run_parts_on_pool)

    def for_backward(self, dtype):
        """A copy of this plan (same split) with fresh barriers and the backward's buffers:
        a tape's backward may run more than once, or fail and be run again."""
        plan = copy.copy(self)
        if plan.kind == "units" and plan.busy is not None:   # decide again: the core may
            plan.nparts, plan.busy = plan.nparts + plan.busy, None   # be free by now
            plan._fit_to_free_cores()
        plan._reset()
        if plan.kind == "units":     # the parts' dh shares (backward_small)
            plan.partial = aligned_empty((2, plan.nparts, plan.B, plan.H), dtype)
        return plan

    def describe(self):
        """(kind, parts); and the cores found taken where that cut the parts (units)."""
        return (self.kind, self.nparts) if self.busy is None else (self.kind, self.nparts,
                                                                   f"{self.busy} core busy")

    def rows(self, part):
        return share(self.B, part, self.nparts)

    def weight_copy(self, part, layout, dtype):
        """An empty, 64-byte aligned array for one "units" part's share of W_hh: "columns"
        (H, G*n) for the forward's packed W_hh^T, "rows" (G*n, H) for the backward's, where n
        is the part's unit count (the part fills it: forward_small / backward_small)."""
        u0, u1 = _unit_range(part, self.nparts, self.H)
        G, n = self.GH // self.H, u1 - u0
        return aligned_empty((self.H, G * n) if layout == "columns" else (G * n, self.H), dtype)

    def meet(self, part):
        if self.nparts > 1:
            self._phase[part] += 1
            meet(self.phase_flags, part, self.nparts, self._phase[part])

    def blas(self):
        """One-thread BLAS where the parts call it, and where a core was found taken (a
        threaded GEMM there would fight for it, and OpenBLAS's worker then spins ~100 ms
        after, so the next call finds the core taken again: B=1 LSTM stayed on one part)."""
        if self.nparts > 1 or self.busy is not None:
            return single_threaded_blas()
        return contextlib.nullcontext()

    def run(self, fn):
        """fn(part) on every part at once (parts 1.. on pool threads), BLAS per self.blas().
        A part that raises (KeyboardInterrupt included) releases the others' barriers, so
        they finish instead of waiting for it forever; the error is raised here."""
        def guarded(part):
            try:
                return fn(part)
            except BaseException:
                abort(self.step_flags)
                abort(self.phase_flags)
                raise
        with self.blas():
            self.pool = run_parts_on_pool(guarded, self.nparts)[1]


def share(n, part, nparts):
    """(start, stop) of part ``part``'s share of n items split into ``nparts`` (sizes differ
    by at most one): the one rule every split of the backend uses (_share in njit code)."""
    return n * part // nparts, n * (part + 1) // nparts


_share = stable_jit("small", inline="always")(share)


def gemm(a, b, out, part=0, nparts=1, library="openblas"):
    """out = a @ b through NumPy's BLAS (np.matmul into ``out``), or MKL on this thread
    where ``library`` is "mkl", the dtype float32 and N a multiple of 16 (gpurnn.cpu.mkl; one
    thread, T*B = 2048 rows: X W_ih^T to N = 1024 111 vs 89 GFLOP/s, dG^T H_prev to N = 256
    101 vs 86, but dG^T X to N = 165 64 vs 77 and to N = 65 55 vs 65: OpenBLAS is better at a
    ragged N; RESULTS_cpu.md Tuning log 19). No njit code calls np.dot (which
    would go to SciPy's OpenBLAS, a second thread pool that spins against NumPy's;
    kernels_docs/cpu.md, Threading). With nparts > 1 this part's share: rows
    M*part//nparts .. M*(part+1)//nparts of out.
    a (M, K), b (K, N), out (M, N); C- or F-contiguous (a transposed view is fine)."""
    M = out.shape[0]
    r0, r1 = share(M, part, nparts)
    if library == "mkl" and out.dtype == np.float32 and out.shape[1] % 16 == 0:
        mkl.gemm(a[r0:r1], b, out[r0:r1])
    else:
        np.matmul(a[r0:r1], b, out=out[r0:r1])


def split_rows(n, fn, threads=None):
    """fn(r0, r1) for the shares [r0, r1) of rows 0..n-1 split over ``threads`` parts
    (default: the recurrence's thread count; at least 64 rows a part), concurrently, each
    with one-thread BLAS; the results in share order. For model code next to the layers
    (an output layer) in a loop that uses backend="cpu": a threaded BLAS call there leaves
    OpenBLAS's workers spinning ~100 ms on the cores the next layer call splits over."""
    nparts = recurrence_threads() if threads is None else threads
    nparts = max(1, min(nparts, n // 64))
    with single_threaded_blas():
        return run_parts(lambda p: fn(*share(n, p, nparts)), nparts)


def split_matmul(a, b, threads=None, library="openblas"):
    """a @ b with the rows of the result split over ``threads`` parts (split_rows), each a
    one-thread BLAS call. a (M, K), b (K, N); returns a new (M, N) array."""
    out = np.empty((a.shape[0], b.shape[1]), np.result_type(a, b))
    split_rows(a.shape[0], lambda r0, r1: gemm(a[r0:r1], b, out[r0:r1], library=library), threads)
    return out


@stable_jit("copy", nogil=True)     # nogil: part 0 runs it while the other parts start
def transpose(src, dst):
    """dst = src.T (both C-contiguous) with the tiled copy: the per-forward W_hh^T takes
    0.15 ms instead of NumPy's 0.33 ms (H=256 LSTM) and 0.72 vs 3.5 ms (H=512)."""
    _transpose_into(src, dst)


def _as_is(fn):
    """rows_loops' "compile" for the Python loops: the functions as written."""
    return fn


_kernels = {}


def recurrence_kernels(spec, dtype_name):
    """(forward_part, backward_part) for one cell spec and dtype; compiled lazily on first
    call and cached on disk by Numba (keyed on the spec's generated code)."""
    key = f"{spec.name}:{spec.key}:{dtype_name}"
    if key not in _kernels:
        _kernels[key] = _step_loops(key, *_cell_rows(spec, dtype_name))
    return _kernels[key]
