"""Numba CUDA kernels of the cuda backend, generated per cell: recurrence (forward + BPTT)
and a tiled GEMM.

What they compute (one layer, one direction, any registered cell: a gpurnn.cells.CellSpec
with G gates, S states (states[0] = h), V saved values per hidden unit and step; GH = G*H;
notation of gpurnn.reference and kernels_docs/cuda.md):

  forward   hg_k = (h_{t-1} W_hh^T)_k + b_hh,k, xg_k = Gx[t]_k, then the cell's generated
            scalar forward (spec.compile("cuda", ...)): new states + V saves; lengths mask.
  backward  reverse loop: carried dL/d state_k into step t = direct_k from step t+1
            (+ dGh_{t+1} W_hh for k = 0); truncation cut (all S); the cell's generated
            scalar backward -> dGh_t (dGx_t), direct_t; dstate0 at the end. Weight
            gradients are GEMMs after the loop (gpurnn.cuda.backend), no atomics.
  gemm      C = op(A) op(B) (+ bias per column), 2-D shared-memory tiles; used where CuPy
            (cuBLAS) is absent, e.g. in the simulator.

How a spec becomes kernels: ``_unit(spec, dtype)`` writes the Python source of two device
functions, fwd_unit and bwd_unit, one line per gate / state / save of that cell (G, S, V
unrolled; print ``unit_source(spec)``), execs it (registered with linecache, so tracebacks
show the generated lines) and wraps them and the cell's scalar forward/backward with
cuda.jit(device=True). The kernels below are written once, generic over G and S: their
accumulators and states are ``cuda.local.array(G * RB)`` / ``(S * RB)`` with G, S, RB
compile-time closure constants, so NVVM unrolls the gate loops and keeps them in registers.
Every factory caches on (spec.key, dtype, its compile-time parameters); nothing is compiled
at import.

Versions:
  fwd_step / bwd_step      one launch per timestep; block (BX units, BY batch rows);
                           the operand vector (h_{t-1} / dGh_{t+1}) staged in shared tiles.
  fwd_persist / bwd_persist one launch for the whole sequence; block k keeps the W_hh
                           columns of its J hidden units in dynamic shared memory for all
                           T steps; KS threads split each unit's dot product (split-K,
                           partial sums tree-reduced in shared memory); the forward applies
                           each weight to RB batch rows (register blocking); grid=True:
                           cooperative multi-block launch with cuda.cg.this_grid().sync()
                           between steps; grid=False: the single-block variant.
  gemm                     TS x TS tiles (TS = 8 in the simulator, 16 on a GPU).

Run / test:
  pytest tests/test_cuda_backend.py          (simulator on CI, real GPU with GPURNN_REAL_GPU=1)
  python -m gpurnn.cuda.ptx_report           (sm_90 PTX for every kernel x cell, f64 check)

Flat array arguments (all C-contiguous 1-D views of the shapes below):
  gx    (T, B, GH)      X W_ih^T + b_ih            wt   (H, GH)  W_hh transposed
  w     (GH, H)         W_hh as stored (backward)  bhh  (GH,)    recurrent bias (zeros if none)
  lens  (B,) int32      valid steps per row
  st    (S, T+1, B, H)  states: st[:, 0] = state0, st[s, t+1] = state s after step t
  act   (T, B, V, H)    the cell's saves (size-1 dummy when V == 0)
  out   (T, B, H)       outputs (0 past a row's length)
  dout  (T, B, H)       dL/dout
  dgh   (T, B, GH)      dL/d hg (recurrent pre-activations)
  dgx   (T, B, GH)      dL/d xg; the same buffer as dgh when spec.all_tied
  dsc   (S, B, H)       step kernels' carried direct state gradients
  dsn, ds0 (S, B, H)    dL/d state_n (in), dL/d state0 (out)
"""
import itertools
import linecache
import math
import os
import re

import numpy as np
from numba import config as _nb_config
from numba import cuda

from ..cells import CELLS, get_cell
from ..cells.codegen import scalar_namespace

SIMULATOR = bool(_nb_config.ENABLE_CUDASIM)
# elements of the static shared tile that stages h / dgates (16 KiB fp32 on a GPU; small in
# the simulator; tests lower it to force several tiles). Read when a kernel is built.
VT = 1024 if SIMULATOR else 4096
TS = 8 if SIMULATOR else 16        # GEMM tile edge

_cache = {}
_counter = itertools.count()


def _jit_opts():
    """GPU-only options (they raise in the simulator). GPURNN_LINEINFO=1 for ncu."""
    if SIMULATOR:
        return {}
    opts = {"fastmath": False}
    if os.environ.get("GPURNN_LINEINFO") == "1":
        opts["lineinfo"] = True
    return opts


# Persistent kernels run up to PERSIST_MAX_THREADS threads per block: capping registers at
# 65536 / 384 -> 168 guarantees such a block launches on one SM (ptx_report: registers and
# spills of every persistent kernel x cell under that cap).
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


def _nb_type(dtype):
    from numba import float32, float64
    return float32 if np.dtype(dtype) == np.float32 else float64


def _spec_key(spec, dtype):
    return (spec.key, np.dtype(dtype).name)


def cell_functions(spec, dtype):
    """The spec's generated scalar (forward, backward) as CUDA device functions."""
    spec = get_cell(spec)
    key = ("cell",) + _spec_key(spec, dtype)
    if key not in _cache:
        ns = scalar_namespace(dtype, exp=math.exp, tanh=math.tanh, log=math.log,
                              log1p=math.log1p, jit=_device)
        fwd, bwd = spec.compile("cuda", dtype, ns)
        _cache[key] = (_device(fwd), _device(bwd))
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


step_geometry = _device(_step_geometry)


def _uses(src, name):
    """Does the body of the generated function ``src`` read the parameter ``name``?"""
    body = src.split("\n", 1)[1]
    return re.search(rf"\b{name}\b", body) is not None


def unit_source(spec):
    """Python source of fwd_unit / bwd_unit for ``spec`` (G, S, V unrolled). Globals the
    source expects: zero (typed 0), cell_fwd, cell_bwd (the spec's device functions).

    fwd_unit(t, T, B, H, b, j, acc, ra, sreg, rs, gx, bhh, lens, act, out, st)
        acc[ra + k] = gate k's recurrent sum (no bias yet), sreg[rs + s] = state s before
        step t. Adds b_hh and Gx[t], runs the cell, writes act[t, b, :, j], out[t, b, j]
        (0 past the row's length) and st[:, t+1, b, j]; leaves the state after step t in
        sreg (unchanged past the row's length).
    bwd_unit(t, T, B, H, b, j, ln, trunc, dreg, rd, dout, act, st, dgh, dgx, dst0)
        dreg[rd + s] = dL/d state s after step t that does not come from dout[t] (for s = 0
        including dGh_{t+1} W_hh); truncation cut; t = -1 writes dst0 (dL/d state0);
        past the row's length writes zero gate gradients and leaves dreg; else the cell's
        backward writes
        dgh[t, b, :, j] (and dgx) and leaves the direct part of dL/d state_{t-1} in dreg.
    """
    spec = get_cell(spec)
    G, S, V = spec.n_gates, spec.n_states, spec.n_saves
    tied = spec.all_tied
    bsrc = spec.source("backward")
    L = []
    a = L.append
    a("def fwd_unit(t, T, B, H, b, j, acc, ra, sreg, rs, gx, bhh, lens, act, out, st):")
    a(f"    gb = (t * B + b) * {G} * H + j")
    for k in range(G):
        a(f"    xg{k} = gx[gb + {k} * H]")
    for k in range(G):
        a(f"    hg{k} = acc[ra + {k}] + bhh[j + {k} * H]")
    for s in range(S):
        a(f"    s{s} = sreg[rs + {s}]")
    res = [f"n{s}" for s in range(S)] + [f"v{v}" for v in range(V)]
    args = ([f"xg{k}" for k in range(G)] + [f"hg{k}" for k in range(G)] +
            [f"s{s}" for s in range(S)])
    a(f"    {', '.join(res)}, = cell_fwd({', '.join(args)})")
    if V:
        a(f"    sa = (t * B + b) * {V} * H + j")
        for v in range(V):
            a(f"    act[sa + {v} * H] = v{v}")
    a("    o = (t * B + b) * H + j")
    a("    if t < lens[b]:")
    a("        out[o] = n0")
    a("    else:")
    a("        out[o] = zero")
    for s in range(S):
        a(f"        n{s} = s{s}")
    a("    ss = (T + 1) * B * H")
    for s in range(S):
        a(f"    st[o + B * H + {s} * ss] = n{s}")
        a(f"    sreg[rs + {s}] = n{s}")
    a("")
    a("def bwd_unit(t, T, B, H, b, j, ln, trunc, dreg, rd, dout, act, st, dgh, dgx, dst0):")
    a("    # the cut only ever fires where step t+1 was a real step (t + 1 < ln <= T)")
    a("    if t >= 0 and trunc > 0 and (t + 1) % trunc == 0 and t + 1 < ln:")
    for s in range(S):
        a(f"        dreg[rd + {s}] = zero")
    a("    p = b * H + j")
    a("    if t < 0:")
    for s in range(S):
        a(f"        dst0[p + {s} * B * H] = dreg[rd + {s}]")
    a("        return")
    a(f"    gb = (t * B + b) * {G} * H + j")
    a("    if t >= ln:")
    for k in range(G):
        a(f"        dgh[gb + {k} * H] = zero")
        if not tied:
            a(f"        dgx[gb + {k} * H] = zero")
    a("        return")
    a("    q = t * B * H + p")
    a("    ss = (T + 1) * B * H")
    a("    d0 = dreg[rd] + dout[q]")
    for s in range(1, S):
        a(f"    d{s} = dreg[rd + {s}]")
    if V:
        a(f"    sa = (t * B + b) * {V} * H + j")
        for v in range(V):
            a(f"    v{v} = act[sa + {v} * H]")
    for s in range(S):   # only the states the backward reads (no dead loads)
        a(f"    s{s} = st[q + {s} * ss]" if _uses(bsrc, f"s{s}") else f"    s{s} = zero")
        a(f"    n{s} = st[q + B * H + {s} * ss]" if _uses(bsrc, f"n{s}") else f"    n{s} = zero")
    res = ([f"ex{k}" for k in range(G)] + [f"eh{k}" for k in range(G)] +
           [f"es{s}" for s in range(S)])
    args = ([f"d{s}" for s in range(S)] + [f"v{v}" for v in range(V)] +
            [f"s{s}" for s in range(S)] + [f"n{s}" for s in range(S)])
    a(f"    {', '.join(res)}, = cell_bwd({', '.join(args)})")
    for k in range(G):
        a(f"    dgh[gb + {k} * H] = eh{k}")
        if not tied:
            a(f"    dgx[gb + {k} * H] = ex{k}")
    for s in range(S):
        a(f"    dreg[rd + {s}] = es{s}")
    return "\n".join(L) + "\n"


def _exec(src, label, namespace):
    filename = f"<gpurnn cuda {label} #{next(_counter)}>"
    linecache.cache[filename] = (len(src), None, src.splitlines(True), filename)
    exec(compile(src, filename, "exec"), namespace)
    return namespace


def _unit(spec, dtype):
    """Device functions (fwd_unit, bwd_unit, stage) for ``spec`` and ``dtype``: everything
    one (row b, unit j) pair does at step t after the recurrent dot products (unit_source),
    shared by the step and persistent kernels.

    stage(vsh, src, base, r0, nrows, B, K, k0, kt, stride, tid, nth)
        the block's shared tile of the operand rows (h_{t-1} or dGh_{t+1}), see below.
    """
    key = ("unit",) + _spec_key(spec, dtype)
    if key in _cache:
        return _cache[key]
    zero = np.dtype(dtype).type(0)
    cell_fwd, cell_bwd = cell_functions(spec, dtype)
    ns = _exec(unit_source(spec), f"units {spec.name!r} {np.dtype(dtype).name}",
               dict(zero=zero, cell_fwd=cell_fwd, cell_bwd=cell_bwd))

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

    # plain device functions: NVVM inlines them into every kernel anyway
    _cache[key] = (_device(ns["fwd_unit"]), _device(ns["bwd_unit"]), _device(stage))
    return _cache[key]


def _consts(spec, dtype):
    """(G, S, zero, nbt): what every kernel factory closes over (typed, so float32 kernels
    stay free of float64)."""
    return spec.n_gates, spec.n_states, np.dtype(dtype).type(0), _nb_type(dtype)


# ----------------------------------------------------------------------------- forward
def fwd_step_kernel(spec, dtype):
    """One timestep t: st[:, t+1], act[t], out[t] from st[:, t], gx[t].

    Launch: block (BX, BY), grid (ceil(H/BX), ceil(B/BY)); thread (j, b) owns all G gates
    of hidden unit j of row b. Args: (t, T, B, H, gx, wt, bhh, lens, st, act, out).
    """
    spec = get_cell(spec)
    key = ("fwd_step",) + _spec_key(spec, dtype) + (VT,)
    if key in _cache:
        return _cache[key]
    G, S, zero, nbt = _consts(spec, dtype)
    vt = VT
    fwd_unit, _, stage = _unit(spec, dtype)

    def fwd_step(t, T, B, H, gx, wt, bhh, lens, st, act, out):
        vsh = cuda.shared.array(vt, nbt)
        acc = cuda.local.array(G, nbt)
        sreg = cuda.local.array(S, nbt)
        j, b, b0, ty, by, tid, nth, active = step_geometry(B, H)
        GH = G * H
        kt = vt // by
        if kt > H:
            kt = H
        hrow = t * B * H                       # st[0, t]
        for g in range(G):
            acc[g] = zero
        for k0 in range(0, H, kt):
            stage(vsh, st, hrow, b0, by, B, H, k0, kt, kt, tid, nth)
            if active:
                n = H - k0
                if n > kt:
                    n = kt
                vb = ty * kt
                for kk in range(n):
                    hv = vsh[vb + kk]
                    w = (k0 + kk) * GH + j
                    for g in range(G):
                        acc[g] += wt[w + g * H] * hv
        if active:
            p = hrow + b * H + j
            ss = (T + 1) * B * H
            for s in range(S):
                sreg[s] = st[p + s * ss]
            fwd_unit(t, T, B, H, b, j, acc, 0, sreg, 0, gx, bhh, lens, act, out, st)

    _cache[key] = _kernel(fwd_step)
    return _cache[key]


def fwd_persist_kernel(spec, dtype, grid, rb=1):
    """The whole sequence in one launch (see module doc).

    Launch: grid (ceil(H/J),), block ceil(B/RB)*J*KS threads (rounded up to a warp),
    dynamic shared memory (J*(G*H+1) + G*RB*threads) elements (weight rows padded by one
    element against bank conflicts between units). Thread tid works on pair
    p = tid // KS: row group q = p // J (rows q*RB .. q*RB+RB-1, register-blocked: each
    weight read from shared memory is applied to RB rows) and unit j = blockIdx.x*J + p % J;
    split-K slice ks = tid % KS (inputs i = ks, ks+KS, ...). The KS partial sums meet in
    shared memory; the ks = 0 thread owns the unit's gates, S states (registers) and writes.
    Args: (T, B, H, J, KS, gx, wt, bhh, lens, st, act, out).
    """
    spec = get_cell(spec)
    key = ("fwd_persist",) + _spec_key(spec, dtype) + (bool(grid), int(rb), VT)
    if key in _cache:
        return _cache[key]
    G, S, zero, nbt = _consts(spec, dtype)
    GRID = bool(grid)
    RB = int(rb)
    NACC = G * RB
    NST = S * RB
    vt = VT
    fwd_unit, _, stage = _unit(spec, dtype)

    def fwd_persist(T, B, H, J, KS, gx, wt, bhh, lens, st, act, out):
        dyn = cuda.shared.array(0, nbt)        # W (J, GH+1 padded); partials (threads, G*RB)
        vsh = cuda.shared.array(vt, nbt)       # (B, kt+1 padded) tile of h_{t-1}
        acc = cuda.local.array(NACC, nbt)      # (RB, G) accumulators (registers: constant)
        sreg = cuda.local.array(NST, nbt)      # (RB, S) states
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
        ss = (T + 1) * B * H
        for r in range(RB):
            for s in range(S):
                v = zero
                if lead and bq + r < B:
                    v = st[s * ss + (bq + r) * H + j]
                sreg[r * S + s] = v
        wb = jl * WS
        for t in range(T):
            hrow = t * B * H
            for u in range(NACC):
                acc[u] = zero
            for k0 in range(0, H, kt):
                stage(vsh, st, hrow, 0, B, B, H, k0, kt, ks1, tid, nth)
                if active:
                    n = H - k0
                    if n > kt:
                        n = kt
                    w0 = wb + k0
                    for kk in range(ks, n, KS):
                        w = w0 + kk
                        for g in range(G):
                            wv = dyn[w + g * H]
                            for r in range(RB):
                                hv = zero
                                if bq + r < B:
                                    hv = vsh[(bq + r) * ks1 + kk]
                                acc[r * G + g] += wv * hv
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
                        fwd_unit(t, T, B, H, b, j, acc, r * G, sreg, r * S, gx, bhh, lens,
                                 act, out, st)
            if GRID:
                cuda.cg.this_grid().sync()
            else:
                cuda.syncthreads()

    _cache[key] = _kernel(fwd_persist, persistent=True)
    return _cache[key]


# ----------------------------------------------------------------------------- backward
def bwd_step_kernel(spec, dtype):
    """Reverse step t (t = T-1 .. 0, then t = -1 writes ds0).

    carry_0 = dgh[t+1] @ W_hh[:, j] + dsc_0 (t+1 < T) else dsn_0, carry_s = dsc_s / dsn_s;
    truncation cut; the cell's backward at t -> dgh[t], dgx[t], dsc. Launch as fwd_step.
    Args: (t, T, B, H, trunc, dgh, dgx, w, lens, st, act, dout, dsc, dsn, ds0);
    trunc = 0 means no truncation.
    """
    spec = get_cell(spec)
    key = ("bwd_step",) + _spec_key(spec, dtype) + (VT,)
    if key in _cache:
        return _cache[key]
    G, S, zero, nbt = _consts(spec, dtype)
    vt = VT
    _, bwd_unit, stage = _unit(spec, dtype)

    def bwd_step(t, T, B, H, trunc, dgh, dgx, w, lens, st, act, dout, dsc, dsn, ds0):
        vsh = cuda.shared.array(vt, nbt)
        dreg = cuda.local.array(S, nbt)
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
        BH = B * H
        if t + 1 < T:
            for s in range(S):
                dreg[s] = dsc[s * BH + p]
            dreg[0] += acc
        else:
            for s in range(S):
                dreg[s] = dsn[s * BH + p]
        bwd_unit(t, T, B, H, b, j, lens[b], trunc, dreg, 0, dout, act, st, dgh, dgx, ds0)
        if t >= 0:
            for s in range(S):
                dsc[s * BH + p] = dreg[s]

    _cache[key] = _kernel(bwd_step)
    return _cache[key]


def bwd_persist_kernel(spec, dtype, grid):
    """The whole reverse loop in one launch; W_hh[:, units of this block] in dynamic shared
    memory, layout (J, GH+1 padded), then the (threads, 1) partial sums; split-K and thread
    roles as fwd_persist (reduction over the GH gate pre-activations); the ks = 0 thread
    carries the S state gradients in registers.

    Launch as fwd_persist, dynamic shared memory (J*(GH+1) + threads) elements.
    Args: (T, B, H, J, KS, trunc, dgh, dgx, w, lens, st, act, dout, dsn, ds0).
    """
    spec = get_cell(spec)
    key = ("bwd_persist",) + _spec_key(spec, dtype) + (bool(grid), VT)
    if key in _cache:
        return _cache[key]
    G, S, zero, nbt = _consts(spec, dtype)
    GRID = bool(grid)
    vt = VT
    _, bwd_unit, stage = _unit(spec, dtype)

    def bwd_persist(T, B, H, J, KS, trunc, dgh, dgx, w, lens, st, act, dout, dsn, ds0):
        dyn = cuda.shared.array(0, nbt)        # W^T slice (J, GH+1 padded); partials
        vsh = cuda.shared.array(vt, nbt)       # (B, kt+1 padded) tile of dgh[t+1]
        dreg = cuda.local.array(S, nbt)
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
        BH = B * H
        ln = 0
        for s in range(S):
            v = zero
            if lead:
                v = dsn[s * BH + p]
            dreg[s] = v
        if lead:
            ln = lens[b]
        wb = jl * WS
        for t in range(T - 1, -2, -1):
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
                dreg[0] += acc
            if lead:
                bwd_unit(t, T, B, H, b, j, ln, trunc, dreg, 0, dout, act, st, dgh, dgx, ds0)
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


def all_kernels(cells=None):
    """(name, kernel, kind, dtype) for every kernel version x every registered cell (or
    ``cells``) x float32/float64; kind in {'fwd_step', 'fwd_persist', 'bwd_step',
    'bwd_persist', 'gemm'} picks the signature. Names: fwd_persist_grid_lstm_float32."""
    out = []
    for dtype in ("float32", "float64"):
        for name in (list(CELLS) if cells is None else cells):
            spec = get_cell(name)
            tag = f"{spec.name}_{dtype}"
            out.append((f"fwd_step_{tag}", fwd_step_kernel(spec, dtype), "fwd_step", dtype))
            out.append((f"bwd_step_{tag}", bwd_step_kernel(spec, dtype), "bwd_step", dtype))
            for grid in (False, True):
                g = "grid" if grid else "1block"
                out.append((f"fwd_persist_{g}_{tag}",
                            fwd_persist_kernel(spec, dtype, grid, PERSIST_RB), "fwd_persist", dtype))
                out.append((f"bwd_persist_{g}_{tag}",
                            bwd_persist_kernel(spec, dtype, grid), "bwd_persist", dtype))
        out.append((f"gemm_{dtype}", gemm_kernel(dtype), "gemm", dtype))
    return out
