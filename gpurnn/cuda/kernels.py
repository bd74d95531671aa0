"""Numba CUDA kernels of the cuda backend: recurrence (forward + BPTT) and a tiled GEMM.

What they compute (one layer, one direction; notation of gpurnn.reference and
kernels_docs/cuda.md; G gates: 1 RNN, 4 LSTM, 3 GRU; GH = G*H):

  forward   a_t = Gx[t] + h_{t-1} W_hh^T + b_hh, then the cell's pointwise math
            (gpurnn.cells, compiled here with cuda.jit(device=True)); lengths mask.
  backward  reverse loop: carry into step t = dGh_{t+1} W_hh + direct_{t+1} (GRU z*dh),
            truncation cut, fused pointwise backward -> dGh_t, dGx_t; dh0/dc0 at the end.
            Weight gradients are GEMMs after the loop (gpurnn.cuda.backend), no atomics.
  gemm      C = op(A) op(B) (+ bias per column), 2-D shared-memory tiles; used where CuPy
            (cuBLAS) is absent, e.g. in the simulator.

Versions (built lazily per (cell, dtype) by the factories below; no signature at import):
  fwd_step / bwd_step      one launch per timestep; block (BX units, BY batch rows);
                           the operand vector (h_{t-1} / dGh_{t+1}) staged in shared tiles.
  fwd_persist / bwd_persist one launch for the whole sequence; block k keeps the W_hh
                           columns of its J hidden units in dynamic shared memory for all
                           T steps; KS threads split each unit's dot product (split-K,
                           partial sums tree-reduced in shared memory); the forward applies
                           each weight to RB batch rows (register blocking); grid=True: cooperative
                           multi-block launch with cuda.cg.this_grid().sync() between
                           steps; grid=False: the single-block variant (syncthreads only).
  gemm                     TS x TS tiles (TS = 8 in the simulator, 16 on a GPU).
Both versions of a direction share one per-unit body (_unit: fwd_unit / bwd_unit, and
stage for the shared tile); they differ only in the dot products and where the state lives.

Run / test:
  pytest tests/test_cuda_backend.py          (simulator on CI, real GPU with GPURNN_REAL_GPU=1)
  python -m gpurnn.cuda.ptx_report           (sm_90 PTX for every kernel, f64 check)

Flat array arguments (all C-contiguous 1-D views of the shapes below; indices in the code
are written out from these shapes):
  gx    (T, B, GH)   X W_ih^T + b_ih               wt   (H, GH)  W_hh transposed
  w     (GH, H)      W_hh as stored (backward)     bhh  (GH,)    recurrent bias (zeros if none)
  lens  (B,) int32   valid steps per row           hs   (T+1, B, H)  h_{-1}=h0, states after each step
  cs    (T+1, B, H)  LSTM cell states (else (1,))  act  (T, B, S, H)  saved activations, S=4
                                                   (LSTM i,f,g,o; GRU r,z,n,ah_n; RNN unused (1,))
  out   (T, B, H)    outputs (0 past a row's length)
  dout  (T, B, H)    dL/dout                       dgh, dgx (T, B, GH) gate-pre-activation grads
                                                   (dgx is dgh except GRU's n gate)
  hcar, ccar (B, H)  step kernels' carried dh/dc   dhn, dcn, dh0, dc0 (B, H)
"""
import math
import os

import numpy as np
from numba import config as _nb_config
from numba import cuda

from ..cells import CELLS, make_cell_math

SIMULATOR = bool(_nb_config.ENABLE_CUDASIM)
# elements of the static shared tile that stages h / dgates (16 KiB fp32 on a GPU; small in
# the simulator; tests lower it to force several tiles). Read when a kernel is built.
VT = 1024 if SIMULATOR else 4096
TS = 8 if SIMULATOR else 16        # GEMM tile edge
NSLOT = 4                          # saved activations per hidden unit (act buffer)

_cache = {}


def _jit_opts():
    """GPU-only options (they raise in the simulator). GPURNN_LINEINFO=1 for ncu."""
    if SIMULATOR:
        return {}
    opts = {"fastmath": False}
    if os.environ.get("GPURNN_LINEINFO") == "1":
        opts["lineinfo"] = True
    return opts


# Persistent kernels run up to PERSIST_MAX_THREADS threads per block: capping registers at
# 65536 / 384 -> 168 guarantees such a block launches on one SM; ptxas (sm_90) uses 100-168
# under the cap (the grid variants of fwd_persist, RB=4, spill 0-32 bytes: ptx_report).
PERSIST_MAX_THREADS = 384
PERSIST_MAX_REGISTERS = (65536 // PERSIST_MAX_THREADS) // 8 * 8
PERSIST_RB = 4          # rows per thread in fwd_persist on a GPU (register blocking)


def _kernel(fn, persistent=False):
    opts = _jit_opts()
    if persistent and not SIMULATOR:
        opts["max_registers"] = PERSIST_MAX_REGISTERS
    return cuda.jit(**opts)(fn)


def _device(fn):
    return cuda.jit(device=True)(fn)


def cell_math(dtype):
    """gpurnn.cells' scalar math compiled as CUDA device functions for ``dtype``."""
    key = ("math", np.dtype(dtype).name)
    if key not in _cache:
        _cache[key] = make_cell_math(dtype, math.exp, math.tanh, jit=_device)
    return _cache[key]


def _pointwise(cell, dtype):
    """Device functions pfwd / pbwd unifying the four cells.

    pfwd(g0..g3 (x parts), r0..r3 (recurrent parts incl. b_hh), h_prev, c_prev)
        -> (h, c, s0, s1, s2, s3)   s = saved activations
    pbwd(gh, dc, s0..s3, h, c, c_prev, h_prev)
        -> (dx0, dx1, dx2, dx3, dh2, direct, dc_prev)   dgh = dgx except gate 2 -> dh2
    """
    key = ("pw", cell, np.dtype(dtype).name)
    if key in _cache:
        return _cache[key]
    cm = cell_math(dtype)
    zero = np.dtype(dtype).type(0)

    if cell in ("rnn_tanh", "rnn_relu"):
        f = cm.rnn_tanh_fwd if cell == "rnn_tanh" else cm.rnn_relu_fwd
        fb = cm.rnn_tanh_bwd if cell == "rnn_tanh" else cm.rnn_relu_bwd

        def pfwd(g0, g1, g2, g3, r0, r1, r2, r3, hp, cp):
            h = f(g0 + r0)
            return h, zero, zero, zero, zero, zero

        def pbwd(gh, dc, s0, s1, s2, s3, h, c, cp, hp):
            da = fb(gh, h)
            return da, zero, zero, zero, zero, zero, zero
    elif cell == "lstm":
        f, fb = cm.lstm_fwd, cm.lstm_bwd

        def pfwd(g0, g1, g2, g3, r0, r1, r2, r3, hp, cp):
            i, ff, g, o, c, h = f(g0 + r0, g1 + r1, g2 + r2, g3 + r3, cp)
            return h, c, i, ff, g, o

        def pbwd(gh, dc, s0, s1, s2, s3, h, c, cp, hp):
            dai, daf, dag, dao, dcp = fb(gh, dc, s0, s1, s2, s3, c, cp)
            return dai, daf, dag, dao, dag, zero, dcp
    else:  # gru
        f, fb = cm.gru_fwd, cm.gru_bwd

        def pfwd(g0, g1, g2, g3, r0, r1, r2, r3, hp, cp):
            r, z, n, h = f(g0 + r0, g1 + r1, g2, r2, hp)
            return h, zero, r, z, n, r2

        def pbwd(gh, dc, s0, s1, s2, s3, h, c, cp, hp):
            dar, daz, dxn, dhn, direct = fb(gh, s0, s1, s2, s3, hp)
            return dar, daz, dxn, zero, dhn, direct, zero

    _cache[key] = (_device(pfwd), _device(pbwd))
    return _cache[key]


# ----------------------------------------------------------------------------- per unit
def _step_geometry(B, H):
    """Step kernels: block (BX units, BY rows) -> (j, b, b0, ty, by, tid, nth, active):
    this thread's unit j and row b = b0 + ty, the block's first row b0 and BY rows, the
    thread's linear id and the block size, and whether (j, b) is inside (H, B)."""
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    bx = cuda.blockDim.x
    by = cuda.blockDim.y
    j = cuda.blockIdx.x * bx + tx
    b0 = cuda.blockIdx.y * by
    b = b0 + ty
    return j, b, b0, ty, by, ty * bx + tx, bx * by, j < H and b < B


# (the persistent kernels keep their index prologue inline: the same factoring there cost
# the LSTM/GRU grid kernels 2-6 registers and 32 spill bytes under the 168 cap, ptx_report)
step_geometry = _device(_step_geometry)


def _consts(cell, dtype):
    """(G, HAS_C, SAVE, GRU, zero, nbt): the per-(cell, dtype) constants every kernel
    factory closes over (typed, so float32 kernels stay free of float64)."""
    spec = CELLS[cell]
    return (spec.n_gates, spec.has_cell_state, cell in ("lstm", "gru"), cell == "gru",
            np.dtype(dtype).type(0), _nb_type(dtype))


def _unit(cell, dtype):
    """Device functions fwd_unit / bwd_unit / stage: everything one (row b, unit j) pair does at
    step t after the recurrent dot products. Shared by the step and persistent kernels,
    which differ only in how the dot products are computed and where the state lives.

    fwd_unit(t, B, H, b, j, r0..r3, hp, cp, gx, bhh, lens, act, out, hs, cs) -> (h, c)
        r = recurrent sums (no bias yet); adds b_hh and Gx[t], runs the cell, writes
        act[t, b, :, j], out[t, b, j] (0 past the row's length) and the state after step t
        to hs[t+1, b, j], cs[t+1, b, j] ((hp, cp) unchanged past the row's length); returns
        that state.
    bwd_unit(t, B, H, b, j, ln, trunc, carry, dc, dout, act, hs, cs, dgh, dgx, dh0, dc0)
        -> (hcar, ccar)
        carry = dGh_{t+1} W_hh[:, j] + direct_{t+1} (or dh_n), dc the carried dc;
        truncation cut; t = -1 writes dh0/dc0; else the pointwise backward writes
        dgh[t, b, :, j] (dgx for GRU; 0 past the row's length) and returns what step t-1
        receives besides dGh_t W_hh: (direct_t, dc_{t-1}), or (carry, dc) past the length.
    stage(vsh, src, base, r0, nrows, B, K, k0, kt, stride, tid, nth)
        the block's shared tile of the operand rows (h_{t-1} or dGh_{t+1}), see below.
    """
    key = ("unit", cell, np.dtype(dtype).name)
    if key in _cache:
        return _cache[key]
    G, HAS_C, SAVE, GRU, zero, _ = _consts(cell, dtype)
    pfwd, pbwd = _pointwise(cell, dtype)

    def stage(vsh, src, base, r0, nrows, B, K, k0, kt, stride, tid, nth):
        # between two syncthreads: vsh[rr*stride + kk] = src[base + (r0+rr)*K + k0+kk] for
        # rr < nrows, kk < kt, 0 outside the (B, K) matrix (the block's tile of h / dGh)
        cuda.syncthreads()
        for idx in range(tid, nrows * kt, nth):
            rr = idx // kt
            kk = idx - rr * kt
            v = zero
            if r0 + rr < B and k0 + kk < K:
                v = src[base + (r0 + rr) * K + k0 + kk]
            vsh[rr * stride + kk] = v
        cuda.syncthreads()

    def fwd_unit(t, B, H, b, j, r0, r1, r2, r3, hp, cp, gx, bhh, lens, act, out, hs, cs):
        GH = G * H
        gb = (t * B + b) * GH + j
        r0 += bhh[j]
        g0 = gx[gb]
        g1 = zero
        g2 = zero
        g3 = zero
        if G > 1:
            r1 += bhh[j + H]
            r2 += bhh[j + 2 * H]
            g1 = gx[gb + H]
            g2 = gx[gb + 2 * H]
        if G > 3:
            r3 += bhh[j + 3 * H]
            g3 = gx[gb + 3 * H]
        h, c, s0, s1, s2, s3 = pfwd(g0, g1, g2, g3, r0, r1, r2, r3, hp, cp)
        if SAVE:
            a = (t * B + b) * NSLOT * H + j
            act[a] = s0
            act[a + H] = s1
            act[a + 2 * H] = s2
            act[a + 3 * H] = s3
        o = (t * B + b) * H + j
        if t < lens[b]:
            out[o] = h
        else:
            out[o] = zero
            h = hp
            c = cp
        hs[o + B * H] = h
        if HAS_C:
            cs[o + B * H] = c
        return h, c

    def bwd_unit(t, B, H, b, j, ln, trunc, carry, dc, dout, act, hs, cs, dgh, dgx, dh0, dc0):
        # the cut only ever fires where step t+1 was a real step (t + 1 < ln <= T)
        if t >= 0 and trunc > 0 and (t + 1) % trunc == 0 and t + 1 < ln:
            carry = zero
            dc = zero
        p = b * H + j
        if t < 0:
            dh0[p] = carry
            if HAS_C:
                dc0[p] = dc
            return carry, dc
        gb = (t * B + b) * G * H + j
        if t >= ln:
            for g in range(G):
                dgh[gb + g * H] = zero
                if GRU:
                    dgx[gb + g * H] = zero
            return carry, dc
        q = t * B * H + p
        gh = carry + dout[q]
        s0 = zero
        s1 = zero
        s2 = zero
        s3 = zero
        if SAVE:
            a = (t * B + b) * NSLOT * H + j
            s0 = act[a]
            s1 = act[a + H]
            s2 = act[a + 2 * H]
            s3 = act[a + 3 * H]
        h = hs[q + B * H]
        hp = hs[q]
        c = zero
        cp = zero
        if HAS_C:
            c = cs[q + B * H]
            cp = cs[q]
        d0, d1, d2, d3, dh2, direct, dcp = pbwd(gh, dc, s0, s1, s2, s3, h, c, cp, hp)
        dgh[gb] = d0
        if G > 1:
            dgh[gb + H] = d1
            dgh[gb + 2 * H] = dh2
        if G > 3:
            dgh[gb + 3 * H] = d3
        if GRU:
            dgx[gb] = d0
            dgx[gb + H] = d1
            dgx[gb + 2 * H] = d2
        return direct, dcp

    # plain device functions: NVVM inlines them into every kernel anyway; Numba-IR
    # inlining (inline="always") cost the persistent backward 2-6 registers (ptx_report)
    _cache[key] = (_device(fwd_unit), _device(bwd_unit), _device(stage))
    return _cache[key]


# ----------------------------------------------------------------------------- forward
def fwd_step_kernel(cell, dtype):
    """One timestep t: hs[t+1], cs[t+1], act[t], out[t] from hs[t], cs[t], gx[t].

    Launch: block (BX, BY), grid (ceil(H/BX), ceil(B/BY)); thread (j, b) owns all G gates
    of hidden unit j of row b. Args: (t, T, B, H, gx, wt, bhh, lens, hs, cs, act, out).
    """
    key = ("fwd_step", cell, np.dtype(dtype).name, VT)
    if key in _cache:
        return _cache[key]
    G, HAS_C, _, _, zero, nbt = _consts(cell, dtype)
    vt = VT
    fwd_unit, _, stage = _unit(cell, dtype)

    def fwd_step(t, T, B, H, gx, wt, bhh, lens, hs, cs, act, out):
        vsh = cuda.shared.array(vt, nbt)
        j, b, b0, ty, by, tid, nth, active = step_geometry(B, H)
        GH = G * H
        kt = vt // by
        if kt > H:
            kt = H
        hrow = t * B * H
        r0 = zero
        r1 = zero
        r2 = zero
        r3 = zero
        for k0 in range(0, H, kt):
            stage(vsh, hs, hrow, b0, by, B, H, k0, kt, kt, tid, nth)
            if active:
                n = H - k0
                if n > kt:
                    n = kt
                vb = ty * kt
                for kk in range(n):
                    hv = vsh[vb + kk]
                    w = (k0 + kk) * GH + j
                    r0 += wt[w] * hv
                    if G > 1:
                        r1 += wt[w + H] * hv
                        r2 += wt[w + 2 * H] * hv
                    if G > 3:
                        r3 += wt[w + 3 * H] * hv
        if active:
            p = hrow + b * H + j
            cp = zero
            if HAS_C:
                cp = cs[p]
            fwd_unit(t, B, H, b, j, r0, r1, r2, r3, hs[p], cp, gx, bhh, lens, act, out, hs, cs)

    _cache[key] = _kernel(fwd_step)
    return _cache[key]


def fwd_persist_kernel(cell, dtype, grid, rb=1):
    """The whole sequence in one launch (see module doc).

    Launch: grid (ceil(H/J),), block ceil(B/RB)*J*KS threads (rounded up to a warp),
    dynamic shared memory (J*(G*H+1) + G*RB*threads) elements (weight rows padded by one
    element against bank conflicts between units). Thread tid works on pair
    p = tid // KS: row group q = p // J (rows q*RB .. q*RB+RB-1, register-blocked: each
    weight read from shared memory is applied to RB rows) and unit j = blockIdx.x*J + p % J;
    split-K slice ks = tid % KS (inputs i = ks, ks+KS, ...). The KS partial sums meet in
    shared memory; the ks = 0 thread owns the unit's gates, state (registers) and writes.
    Args: (T, B, H, J, KS, gx, wt, bhh, lens, hs, cs, act, out).
    """
    key = ("fwd_persist", cell, np.dtype(dtype).name, bool(grid), int(rb), VT)
    if key in _cache:
        return _cache[key]
    G, HAS_C, _, _, zero, nbt = _consts(cell, dtype)
    GRID = bool(grid)
    RB = int(rb)
    NACC = 4 * RB
    vt = VT
    fwd_unit, _, stage = _unit(cell, dtype)

    def fwd_persist(T, B, H, J, KS, gx, wt, bhh, lens, hs, cs, act, out):
        dyn = cuda.shared.array(0, nbt)        # W (J, GH+1 padded); partials (threads, G*RB)
        vsh = cuda.shared.array(vt, nbt)       # (B, kt+1 padded) tile of h_{t-1}
        acc = cuda.local.array(NACC, nbt)      # (RB, 4) accumulators (registers: RB const)
        hreg = cuda.local.array(RB, nbt)
        creg = cuda.local.array(RB, nbt)
        tid = cuda.threadIdx.x
        nth = cuda.blockDim.x
        j0 = cuda.blockIdx.x * J
        GH = G * H
        WS = GH + 1                            # padded row: units jl, jl+1 hit other banks
        RED = J * WS                           # offset of the (threads, G*RB) partial sums
        for idx in range(tid, J * GH, nth):
            jl = idx // GH
            rem = idx - jl * GH
            g = rem // H
            i = rem - g * H
            v = zero
            if j0 + jl < H:
                v = wt[i * GH + g * H + j0 + jl]
            dyn[jl * WS + rem] = v
        pair = tid // KS
        ks = tid - pair * KS
        q = pair // J
        jl = pair - q * J
        j = j0 + jl
        bq = q * RB                            # first row of this thread's group
        active = bq < B and j < H
        lead = active and ks == 0
        kt = vt // B - 1                       # tile row stride kt+1 (padded); B <= 512
        if kt > H:
            kt = H
        ks1 = kt + 1
        for r in range(RB):
            hreg[r] = zero
            creg[r] = zero
            if lead and bq + r < B:
                hreg[r] = hs[(bq + r) * H + j]
                if HAS_C:
                    creg[r] = cs[(bq + r) * H + j]
        wb = jl * WS
        for t in range(T):
            hrow = t * B * H
            for u in range(NACC):
                acc[u] = zero
            for k0 in range(0, H, kt):
                stage(vsh, hs, hrow, 0, B, B, H, k0, kt, ks1, tid, nth)
                if active:
                    n = H - k0
                    if n > kt:
                        n = kt
                    w0 = wb + k0
                    for kk in range(ks, n, KS):
                        w = w0 + kk
                        wv0 = dyn[w]
                        wv1 = zero
                        wv2 = zero
                        wv3 = zero
                        if G > 1:
                            wv1 = dyn[w + H]
                            wv2 = dyn[w + 2 * H]
                        if G > 3:
                            wv3 = dyn[w + 3 * H]
                        for r in range(RB):
                            hv = zero
                            if bq + r < B:
                                hv = vsh[(bq + r) * ks1 + kk]
                            acc[4 * r] += wv0 * hv
                            if G > 1:
                                acc[4 * r + 1] += wv1 * hv
                                acc[4 * r + 2] += wv2 * hv
                            if G > 3:
                                acc[4 * r + 3] += wv3 * hv
            if KS > 1:                          # tree over the KS slices of each pair
                p0 = RED + tid * NACC
                for u in range(NACC):
                    dyn[p0 + u] = acc[u]
                span = KS
                while span > 1:
                    half = (span + 1) // 2
                    cuda.syncthreads()
                    if active and ks < span - half:    # reads slots >= half, writes < half
                        p1 = RED + (tid + half) * NACC
                        for u in range(NACC):
                            acc[u] += dyn[p1 + u]
                            dyn[p0 + u] = acc[u]
                    span = half
            if lead:
                for r in range(RB):
                    b = bq + r
                    if b < B:
                        hreg[r], creg[r] = fwd_unit(t, B, H, b, j, acc[4 * r], acc[4 * r + 1],
                                                    acc[4 * r + 2], acc[4 * r + 3], hreg[r],
                                                    creg[r], gx, bhh, lens, act, out, hs, cs)
            if GRID:
                cuda.cg.this_grid().sync()
            else:
                cuda.syncthreads()

    _cache[key] = _kernel(fwd_persist, persistent=True)
    return _cache[key]


# ----------------------------------------------------------------------------- backward
def bwd_step_kernel(cell, dtype):
    """Reverse step t (t = T-1 .. 0, then t = -1 writes dh0/dc0).

    carry = dgh[t+1] @ W_hh[:, j] + hcar (t+1 < T) else dh_n; truncation cut; pointwise
    backward at t -> dgh[t], dgx[t], hcar, ccar. Launch as fwd_step.
    Args: (t, T, B, H, trunc, dgh, dgx, w, lens, hs, cs, act, dout, hcar, ccar,
           dhn, dcn, dh0, dc0); trunc = 0 means no truncation.
    """
    key = ("bwd_step", cell, np.dtype(dtype).name, VT)
    if key in _cache:
        return _cache[key]
    G, HAS_C, _, _, zero, nbt = _consts(cell, dtype)
    vt = VT
    _, bwd_unit, stage = _unit(cell, dtype)

    def bwd_step(t, T, B, H, trunc, dgh, dgx, w, lens, hs, cs, act, dout, hcar, ccar,
                 dhn, dcn, dh0, dc0):
        vsh = cuda.shared.array(vt, nbt)
        j, b, b0, ty, by, tid, nth, active = step_geometry(B, H)
        GH = G * H
        acc = zero
        if t + 1 < T:
            kt = vt // by
            if kt > GH:
                kt = GH
            drow = (t + 1) * B * GH
            for k0 in range(0, GH, kt):
                stage(vsh, dgh, drow, b0, by, B, GH, k0, kt, kt, tid, nth)
                if active:
                    n = GH - k0
                    if n > kt:
                        n = kt
                    vb = ty * kt
                    for kk in range(n):
                        acc += w[(k0 + kk) * H + j] * vsh[vb + kk]
        if not active:
            return
        p = b * H + j
        dc = zero
        if t + 1 < T:
            carry = acc + hcar[p]
            if HAS_C:
                dc = ccar[p]
        else:
            carry = dhn[p]
            if HAS_C:
                dc = dcn[p]
        hc, cc = bwd_unit(t, B, H, b, j, lens[b], trunc, carry, dc, dout, act, hs, cs,
                          dgh, dgx, dh0, dc0)
        if t >= 0:
            hcar[p] = hc
            if HAS_C:
                ccar[p] = cc

    _cache[key] = _kernel(bwd_step)
    return _cache[key]


def bwd_persist_kernel(cell, dtype, grid):
    """The whole reverse loop in one launch; W_hh[:, units of this block] in dynamic shared
    memory, layout (J, GH), then the (threads, 1) partial sums; split-K and thread roles
    as fwd_persist (reduction over the GH gate pre-activations); the ks = 0 thread carries
    dh/dc in registers.

    Launch as fwd_persist, dynamic shared memory (J*(GH+1) + G*threads) elements.
    Args: (T, B, H, J, KS, trunc, dgh, dgx, w, lens, hs, cs, act, dout, dhn, dcn, dh0, dc0).
    """
    key = ("bwd_persist", cell, np.dtype(dtype).name, bool(grid), VT)
    if key in _cache:
        return _cache[key]
    G, HAS_C, _, _, zero, nbt = _consts(cell, dtype)
    GRID = bool(grid)
    vt = VT
    _, bwd_unit, stage = _unit(cell, dtype)

    def bwd_persist(T, B, H, J, KS, trunc, dgh, dgx, w, lens, hs, cs, act, dout,
                    dhn, dcn, dh0, dc0):
        dyn = cuda.shared.array(0, nbt)        # W^T slice (J, GH+1 padded); partials
        vsh = cuda.shared.array(vt, nbt)       # (B, kt+1 padded) tile of dgh[t+1]
        tid = cuda.threadIdx.x
        nth = cuda.blockDim.x
        j0 = cuda.blockIdx.x * J
        GH = G * H
        WS = GH + 1
        RED = J * WS
        for idx in range(tid, J * GH, nth):
            jl = idx // GH
            k = idx - jl * GH
            v = zero
            if j0 + jl < H:
                v = w[k * H + j0 + jl]
            dyn[jl * WS + k] = v
        pair = tid // KS
        ks = tid - pair * KS
        b = pair // J
        jl = pair - b * J
        j = j0 + jl
        active = b < B and j < H
        lead = active and ks == 0
        kt = vt // B - 1
        if kt > GH:
            kt = GH
        ks1 = kt + 1
        p = b * H + j
        hreg = zero
        creg = zero
        ln = 0
        if lead:
            hreg = dhn[p]
            if HAS_C:
                creg = dcn[p]
            ln = lens[b]
        wb = jl * WS
        for t in range(T - 1, -2, -1):
            carry = hreg
            if t + 1 < T:
                drow = (t + 1) * B * GH
                acc = zero
                for k0 in range(0, GH, kt):
                    stage(vsh, dgh, drow, 0, B, B, GH, k0, kt, ks1, tid, nth)
                    if active:
                        n = GH - k0
                        if n > kt:
                            n = kt
                        vb = b * ks1
                        w0 = wb + k0
                        for kk in range(ks, n, KS):
                            acc += dyn[w0 + kk] * vsh[vb + kk]
                if KS > 1:                      # tree over the KS slices of each pair
                    dyn[RED + tid] = acc
                    span = KS
                    while span > 1:
                        half = (span + 1) // 2
                        cuda.syncthreads()
                        if active and ks < span - half:
                            acc += dyn[RED + tid + half]
                            dyn[RED + tid] = acc
                        span = half
                carry = acc + hreg
            if lead:
                hreg, creg = bwd_unit(t, B, H, b, j, ln, trunc, carry, creg, dout, act, hs,
                                      cs, dgh, dgx, dh0, dc0)
            if GRID:
                cuda.cg.this_grid().sync()
            else:
                cuda.syncthreads()

    _cache[key] = _kernel(bwd_persist, persistent=True)
    return _cache[key]


# ----------------------------------------------------------------------------- GEMM
def gemm_kernel(dtype):
    """C (M, N) = A (M, K) @ B (K, N) (+ bias (N,)); A, B addressed through strides so a
    transposed operand is just a stride swap: a(m, k) = a[m*sam + k*sak].

    Launch: block (TS, TS), grid (ceil(N/TS), ceil(M/TS)).
    Args: (M, N, K, a, sam, sak, b, sbk, sbn, c, bias, has_bias).
    """
    key = ("gemm", np.dtype(dtype).name)
    if key in _cache:
        return _cache[key]
    dt = np.dtype(dtype).type
    zero = dt(0)
    nbt = _nb_type(dtype)

    def gemm(M, N, K, a, sam, sak, b, sbk, sbn, c, bias, has_bias):
        As = cuda.shared.array((TS, TS), nbt)
        Bs = cuda.shared.array((TS, TS), nbt)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        row = cuda.blockIdx.y * TS + ty
        col = cuda.blockIdx.x * TS + tx
        acc = zero
        for k0 in range(0, K, TS):
            v = zero
            if row < M and k0 + tx < K:
                v = a[row * sam + (k0 + tx) * sak]
            As[ty, tx] = v
            v = zero
            if col < N and k0 + ty < K:
                v = b[(k0 + ty) * sbk + col * sbn]
            Bs[ty, tx] = v
            cuda.syncthreads()
            for kk in range(TS):
                acc += As[ty, kk] * Bs[kk, tx]
            cuda.syncthreads()
        if row < M and col < N:
            if has_bias:
                acc += bias[col]
            c[row * N + col] = acc

    _cache[key] = _kernel(gemm)
    return _cache[key]


def _nb_type(dtype):
    from numba import float32, float64
    return float32 if np.dtype(dtype) == np.float32 else float64


# Every kernel factory, for the PTX report: name -> (factory, kind)
def all_kernels():
    """(name, kernel, kind) for every kernel version of every cell; kind in
    {'fwd_step', 'fwd_persist', 'bwd_step', 'bwd_persist', 'gemm'} picks the signature."""
    out = []
    for dtype in ("float32", "float64"):
        for cell in CELLS:
            out.append((f"fwd_step[{cell},{dtype}]", fwd_step_kernel(cell, dtype), "fwd_step", dtype))
            out.append((f"bwd_step[{cell},{dtype}]", bwd_step_kernel(cell, dtype), "bwd_step", dtype))
            for grid in (False, True):
                tag = "grid" if grid else "1block"
                out.append((f"fwd_persist_{tag}_rb{PERSIST_RB}[{cell},{dtype}]",
                            fwd_persist_kernel(cell, dtype, grid, PERSIST_RB), "fwd_persist", dtype))
                out.append((f"bwd_persist_{tag}[{cell},{dtype}]",
                            bwd_persist_kernel(cell, dtype, grid), "bwd_persist", dtype))
        out.append((f"gemm[{dtype}]", gemm_kernel(dtype), "gemm", dtype))
    return out
