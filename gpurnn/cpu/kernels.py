"""Fused recurrence kernels for the CPU backend: one layer, one direction, Numba JIT.

What it computes (shapes: T steps, B rows, H hidden units, G gates = 1 RNN, 4 LSTM, 3 GRU):

  forward_recurrence(gx, w_hh, w_hh_t, b_hh, lengths, h_seq, c_seq, aux, out, gh, hT, ghT,
                     transposed)
      for t in 0..T-1:  gh = h_{t-1} @ W_hh^T            (BLAS, or a one-thread loop for
                                                          B <= 8; into a reused buffer)
                        per row b < lengths: cell pointwise forward of gx[t] + gh + b_hh,
                        fused in one pass per hidden unit; past a row's length the state
                        is carried unchanged and out is 0.
  backward_recurrence(acts, h_seq, c_seq, aux, w_hh, w_hh_t, lengths, truncate, dout, dh, dc,
                      dgx, dgh, dh_rec, dh_recT)
      for t in T-1..0:  cut dh/dc where t+1 is a multiple of ``truncate`` (reference rule),
                        per row b < lengths: cell pointwise backward, writing dgates,
                        then dh_{t-1} = dgh[t] @ W_hh (BLAS) + the cell's direct term.

The input projection (gx = X W_ih^T + b_ih) and the weight gradients are big GEMMs done by
the caller (gpurnn.cpu.backend); only the sequential part lives here.

Versions: one kernel pair per (cell, dtype), built by ``recurrence_kernels`` from the
scalar cell math of gpurnn.cells (written once, shared with the CUDA backend); float32 uses
the vectorisable exp/tanh of gpurnn.cpu.fastmath, float64 uses libm. Serial over batch
rows: the matmuls (over 90% of the time at B=64, H=512) are BLAS-threaded and the fused
pass is SIMD-vectorised along H, so rows are not split over Numba threads, which would only
add a second thread pool next to OpenBLAS's (kernels_docs/cpu.md).

Tensor arguments (all C-contiguous, dtype = the layer's float dtype unless noted):
    gx       (T, B, G*H)  in: X W_ih^T + b_ih;  out: gate activations (LSTM i,f,g,o;
                          GRU r,z,n), kept as the tape. RNN: left as is.
    w_hh     (G*H, H)     W_hh (torch's weight_hh)
    w_hh_t   (H, G*H)     W_hh transposed (contiguous); the per-step products use whichever
                          orientation measured faster (see _step_matmul_fwd/_bwd)
    b_hh     (G*H,)       recurrent bias (zeros without bias)
    lengths  (B,) int64   valid steps per row, 1..T
    h_seq    (T+1, B, H)  h_seq[0] = h0 (in); h_seq[t+1] = state after step t (out)
    c_seq    (T+1, B, H)  LSTM cell state, same layout; (T+1, B, 0) for other cells
    aux      (T, B, H)    GRU: ah_n = (W_hh h_{t-1} + b_hh)_n; (T, B, 0) for other cells
    out      (T, B, H)    output h_t, 0 past a row's length
    gh       (B, G*H)     scratch: the recurrent matmul of one step
    hT, ghT  (H, B), (G*H, B)  scratch for the transposed forward product
    transposed bool       forward product as ghT = W_hh @ h^T (see _step_matmul_fwd)
    acts     = gx after the forward
    truncate int          0 = full BPTT, else k >= 1
    dout     (T, B, H)    gradient w.r.t. out
    dh, dc   (B, H)       in: gradient w.r.t. h_n (c_n); out: w.r.t. h0 (c0). dc is (B, 0)
                          for cells without a cell state
    dgx      (T, B, G*H)  out: gradient w.r.t. the input-side pre-activations (0 past length)
    dgh      (T, B, G*H)  out: w.r.t. the recurrent-side ones; the same array as dgx except
                          for GRU (whose candidate gate scales its recurrent part by r)
    dh_rec   (B, H)       scratch: dgh[t] @ W_hh
    dh_recT  (H, B)       scratch: its transpose, as BLAS writes it

Run/test:  python -m pytest tests/test_cpu_backend.py -q
"""
import functools

import numpy as np

from ..cells import make_cell_math
from . import fastmath
from .jit import stable_jit


@functools.lru_cache(maxsize=None)
def cell_math(dtype_name):
    """The shared cell math compiled for the CPU, with this dtype's fastest exp/tanh."""
    if dtype_name == "float32":
        exp, tanh = fastmath.exp_f32, fastmath.tanh_f32
    else:
        exp, tanh = np.exp, np.tanh
    return make_cell_math(dtype_name, exp=exp, tanh=tanh,
                          jit=stable_jit(f"cells:{dtype_name}", inline="always"))


# --------------------------------------------------------------------------- row kernels
# One (step, batch row) of a cell: a single fused pass over the H hidden units. All cells
# share two signatures so that the step loops below are written once:
#   forward  (gx, gh, b_hh, h_prev, c_prev, h, c, aux)                 rows of the forward's arrays
#   backward (dout, dh, dc, acts, h_prev, h, c_prev, c, aux, dgx, dgh) rows of the backward's
# The backward row leaves in dh the part of dh_{t-1} that bypasses W_hh, and in dc dc_{t-1}.
# Gate blocks are taken as views and indexed by the loop counter alone: an index such as
# ``2 * H + j`` gets Numba's negative-index wraparound, which stops LLVM from vectorising
# the loop (measured 51 ns vs 2.8 ns per LSTM unit).

@stable_jit("views", inline="always")
def _gate_views3(a, H):
    return a[:H], a[H:2 * H], a[2 * H:3 * H]


@stable_jit("views", inline="always")
def _gate_views4(a, H):
    return a[:H], a[H:2 * H], a[2 * H:3 * H], a[3 * H:4 * H]


def _rnn_rows(key, act_fwd, act_bwd):
    @stable_jit(key)
    def forward_row(gx, gh, b_hh, h_prev, c_prev, h, c, aux):
        for j in range(h.shape[0]):
            h[j] = act_fwd(gx[j] + gh[j] + b_hh[j])

    @stable_jit(key)
    def backward_row(dout, dh, dc, acts, h_prev, h, c_prev, c, aux, dgx, dgh):
        for j in range(h.shape[0]):
            dgx[j] = act_bwd(dh[j] + dout[j], h[j])
            dh[j] = 0

    return forward_row, backward_row


def _lstm_rows(key, cm):
    lstm_fwd, lstm_bwd = cm.lstm_fwd, cm.lstm_bwd

    @stable_jit(key)
    def forward_row(gx, gh, b_hh, h_prev, c_prev, h, c, aux):
        H = h.shape[0]
        xi, xf, xg, xo = _gate_views4(gx, H)      # in: x-side pre-activations; out: i, f, g, o
        hi, hf, hg, ho = _gate_views4(gh, H)
        bi, bf, bg, bo = _gate_views4(b_hh, H)
        for j in range(H):
            i, f, g, o, c[j], h[j] = lstm_fwd(xi[j] + hi[j] + bi[j], xf[j] + hf[j] + bf[j],
                                              xg[j] + hg[j] + bg[j], xo[j] + ho[j] + bo[j], c_prev[j])
            xi[j], xf[j], xg[j], xo[j] = i, f, g, o

    @stable_jit(key)
    def backward_row(dout, dh, dc, acts, h_prev, h, c_prev, c, aux, dgx, dgh):
        H = h.shape[0]
        i, f, g, o = _gate_views4(acts, H)
        di, df, dg, do = _gate_views4(dgx, H)
        for j in range(H):
            di[j], df[j], dg[j], do[j], dc[j] = lstm_bwd(dh[j] + dout[j], dc[j], i[j], f[j], g[j], o[j],
                                                         c[j], c_prev[j])
            dh[j] = 0

    return forward_row, backward_row


def _gru_rows(key, cm):
    gru_fwd, gru_bwd = cm.gru_fwd, cm.gru_bwd

    @stable_jit(key)
    def forward_row(gx, gh, b_hh, h_prev, c_prev, h, c, aux):
        H = h.shape[0]
        xr, xz, xn = _gate_views3(gx, H)          # in: x-side pre-activations; out: r, z, n
        hr, hz, hn = _gate_views3(gh, H)
        br, bz, bn = _gate_views3(b_hh, H)
        for j in range(H):
            aux[j] = hn[j] + bn[j]                # ah_n, kept for the backward
            r, z, n, h[j] = gru_fwd(xr[j] + hr[j] + br[j], xz[j] + hz[j] + bz[j], xn[j], aux[j], h_prev[j])
            xr[j], xz[j], xn[j] = r, z, n

    @stable_jit(key)
    def backward_row(dout, dh, dc, acts, h_prev, h, c_prev, c, aux, dgx, dgh):
        H = h.shape[0]
        r, z, n = _gate_views3(acts, H)
        dxr, dxz, dxn = _gate_views3(dgx, H)
        dhr, dhz, dhn = _gate_views3(dgh, H)
        for j in range(H):
            dar, daz, dxn[j], dhn[j], dh[j] = gru_bwd(dh[j] + dout[j], r[j], z[j], n[j], aux[j], h_prev[j])
            dxr[j], dxz[j] = dar, daz
            dhr[j], dhz[j] = dar, daz

    return forward_row, backward_row


def _cell_rows(key, cell, cm):
    if cell == "rnn_tanh":
        return _rnn_rows(key, cm.rnn_tanh_fwd, cm.rnn_tanh_bwd)
    if cell == "rnn_relu":
        return _rnn_rows(key, cm.rnn_relu_fwd, cm.rnn_relu_bwd)
    if cell == "lstm":
        return _lstm_rows(key, cm)
    if cell == "gru":
        return _gru_rows(key, cm)
    raise ValueError(f"cell: expected one of rnn_tanh, rnn_relu, lstm, gru, got {cell!r}")


# --------------------------------------------------------------------------- step loops
# Per-step products at most this many multiply-adds (and at most 8 rows) skip BLAS: a
# one-thread loop is as fast there (B=1, H=256 LSTM: 11 us vs 12 us per step) and cannot be
# stalled by a BLAS worker thread that lost its core (2 threads on a loaded 2-core machine:
# up to 60 ms per 100 steps, measured).
SMALL_STEP_MACS = 1 << 22


@stable_jit("small", inline="always")
def _small_matmul(a, b, out):
    """out = a @ b for a few rows, one thread, 4 rows of b per pass so that each load and
    store of ``out`` serves 4 multiply-adds. a (M, K), b (K, N), out (M, N)."""
    M, K = a.shape
    N = b.shape[1]
    K4 = K - K % 4
    for m in range(M):
        row = out[m]
        row[:] = 0
        for k in range(0, K4, 4):
            s0, s1, s2, s3 = a[m, k], a[m, k + 1], a[m, k + 2], a[m, k + 3]
            b0, b1, b2, b3 = b[k], b[k + 1], b[k + 2], b[k + 3]
            for n in range(N):
                row[n] += s0 * b0[n] + s1 * b1[n] + s2 * b2[n] + s3 * b3[n]
        for k in range(K4, K):
            s, bk = a[m, k], b[k]
            for n in range(N):
                row[n] += s * bk[n]


@stable_jit("small", inline="always")
def _is_small(M, K, N):
    return M <= 8 and M * K * N <= SMALL_STEP_MACS


@stable_jit("small", inline="always")
def _transpose_into(src, dst):
    """dst = src.T for src (N, M), dst (M, N): 8 source rows per pass, so each row of dst
    gets 8 consecutive stores (1.3-2x faster than the plain double loop here)."""
    N, M = src.shape
    N8 = N - N % 8
    for n in range(0, N8, 8):
        s0, s1, s2, s3 = src[n], src[n + 1], src[n + 2], src[n + 3]
        s4, s5, s6, s7 = src[n + 4], src[n + 5], src[n + 6], src[n + 7]
        for m in range(M):
            d = dst[m, n:n + 8]
            d[0], d[1], d[2], d[3] = s0[m], s1[m], s2[m], s3[m]
            d[4], d[5], d[6], d[7] = s4[m], s5[m], s6[m], s7[m]
    for n in range(N8, N):
        for m in range(M):
            dst[m, n] = src[n, m]


@stable_jit("small", inline="always")
def _step_matmul_fwd(h, w_hh, w_hh_t, gh, hT, ghT, transposed):
    """gh = h @ W_hh^T for one forward step. Small products: the one-thread loop on the
    pre-transposed W_hh^T. Otherwise BLAS, as gh = h @ W_hh^T, or (``transposed``) as its
    transpose ghT = W_hh @ h^T between two small copies (h -> hT, ghT -> gh). OpenBLAS runs
    the transposed orientation (the big weight as the right-hand operand of its
    column-major product, M = B) faster; with the tiled copies it pays off in place (LSTM
    forward B=32 H=256 ~36-41 vs 43-48 ms, B=64 H=512 323-398 vs 335-436 ms, interleaved
    runs; Tuning log, benchmarks/RESULTS_cpu.md)."""
    M, K = h.shape
    N = w_hh_t.shape[1]
    if _is_small(M, K, N):
        _small_matmul(h, w_hh_t, gh)
    elif transposed:
        _transpose_into(h, hT)
        np.dot(w_hh, hT, ghT)
        _transpose_into(ghT, gh)
    else:
        np.dot(h, w_hh_t, gh)


@stable_jit("small", inline="always")
def _step_matmul_bwd(dg, w_hh, w_hh_t, dh_rec, dh_recT):
    """dh_rec = dg @ W_hh for one backward step: the one-thread loop for small products,
    else BLAS as its transpose dh_recT = W_hh^T @ dg^T (dg^T is a free view), copied back
    to (B, H): LSTM B=64 H=512 backward 610 vs 665 ms in place, B=32 H=256 no change
    (Tuning log in benchmarks/RESULTS_cpu.md)."""
    M, N = dg.shape
    K = w_hh.shape[1]
    if _is_small(M, N, K):
        _small_matmul(dg, w_hh, dh_rec)
    else:
        np.dot(w_hh_t, dg.T, dh_recT)
        _transpose_into(dh_recT, dh_rec)


def _step_loops(key, forward_row, backward_row):
    @stable_jit(key)
    def forward_recurrence(gx, w_hh, w_hh_t, b_hh, lengths, h_seq, c_seq, aux, out, gh, hT, ghT,
                           transposed):
        T, B = gx.shape[0], gx.shape[1]
        for t in range(T):
            _step_matmul_fwd(h_seq[t], w_hh, w_hh_t, gh, hT, ghT, transposed)
            for b in range(B):
                if t < lengths[b]:
                    forward_row(gx[t, b], gh[b], b_hh, h_seq[t, b], c_seq[t, b],
                                h_seq[t + 1, b], c_seq[t + 1, b], aux[t, b])
                    out[t, b, :] = h_seq[t + 1, b]
                else:   # past this row's length: carry the state, output zeros
                    h_seq[t + 1, b, :] = h_seq[t, b]
                    c_seq[t + 1, b, :] = c_seq[t, b]
                    aux[t, b, :] = 0
                    out[t, b, :] = 0

    @stable_jit(key)
    def backward_recurrence(acts, h_seq, c_seq, aux, w_hh, w_hh_t, lengths, truncate, dout, dh, dc,
                            dgx, dgh, dh_rec, dh_recT):
        T, B = acts.shape[0], acts.shape[1]
        for t in range(T - 1, -1, -1):
            if truncate > 0 and t + 1 < T and (t + 1) % truncate == 0:
                for b in range(B):
                    if t + 1 < lengths[b]:   # step t+1 was real: drop what it sends back
                        dh[b, :] = 0
                        dc[b, :] = 0
            for b in range(B):
                if t < lengths[b]:
                    backward_row(dout[t, b], dh[b], dc[b], acts[t, b], h_seq[t, b], h_seq[t + 1, b],
                                 c_seq[t, b], c_seq[t + 1, b], aux[t, b], dgx[t, b], dgh[t, b])
                else:   # no gradient past the length; dh/dc pass through unchanged
                    dgx[t, b, :] = 0
                    dgh[t, b, :] = 0
            _step_matmul_bwd(dgh[t], w_hh, w_hh_t, dh_rec, dh_recT)
            for b in range(B):
                if t < lengths[b]:
                    dh[b, :] += dh_rec[b]

    return forward_recurrence, backward_recurrence


@stable_jit("blas")
def gemm(a, b, out):
    """out = a @ b through the BLAS Numba links to (SciPy's OpenBLAS). The backend runs its
    big GEMMs here too, not through NumPy's own OpenBLAS, so one BLAS thread pool serves the
    whole layer and a just-finished pool never spins while the other one works.
    a (M, K), b (K, N), out (M, N); C- or F-contiguous (a transposed view is fine)."""
    np.dot(a, b, out)


@stable_jit("copy")
def transpose(src, dst):
    """dst = src.T (both C-contiguous) with the tiled copy: the per-forward W_hh^T takes
    0.15 ms instead of NumPy's 0.33 ms (H=256 LSTM) and 0.72 vs 3.5 ms (H=512)."""
    _transpose_into(src, dst)


@functools.lru_cache(maxsize=None)
def recurrence_kernels(cell, dtype_name):
    """(forward_recurrence, backward_recurrence) for one cell and dtype; compiled lazily
    on first call and cached on disk by Numba."""
    key = f"{cell}:{dtype_name}"
    return _step_loops(key, *_cell_rows(key, cell, cell_math(dtype_name)))
