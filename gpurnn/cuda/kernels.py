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
  fwd_persist / bwd_persist one launch for the whole sequence (v2); block k keeps the
                           W_hh slice of its J hidden units in dynamic shared memory for
                           all T steps; block (KS, J/JB, ceil(B/RB)): KS split-K lanes per
                           dot product (warp-shuffle butterfly on a GPU, shared-memory
                           tree in the simulator), register blocking over RB rows and JB
                           units (forward: persist_jb(G), 4 for one gate); all of h_{t-1} /
                           a dGh tile staged at once, no integer division, uint32 shared
                           indices; one tiled dot product + split-K reduction for both
                           directions (persist_dot), its loop unrolled UF times
                           (dot_source); grid=True: cooperative
                           multi-block launch with cuda.cg.this_grid().sync() between
                           steps; grid=False: the single-block variant.
  gemm                     TS x TS tiles (TS = 8 in the simulator, 16 on a GPU).

Run / test:
  pytest tests/test_cuda_backend.py          (simulator on CI, real GPU with GPURNN_REAL_GPU=1)
  python -m gpurnn.cuda.ptx_report           (sm_90 PTX for every kernel x cell, f64 check)
  python -m gpurnn.cuda.sass_report          (sm_90 SASS: registers, spills, division
                                              calls, FFMA ratio of the inner loops)

Flat array arguments (all C-contiguous 1-D views of the shapes below):
  gx    (T, B, GH)      X W_ih^T + b_ih            wt   (H, GH)  W_hh transposed
  w     (GH, H)         W_hh as stored (bwd_step, fwd_persist)  bhh (GH,) recurrent bias
                        (zeros if none); wt also feeds bwd_persist (rows = W_hh columns)
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
from numba import int64, uint32

from ..cells import CELLS, get_cell
from ..cells.codegen import scalar_namespace

SIMULATOR = bool(_nb_config.ENABLE_CUDASIM)
# elements of the static shared tile that stages h / dgates (16 KiB fp32 on a GPU; small in
# the simulator; tests lower it to force several tiles). Read when a kernel is built.
VT = 1024 if SIMULATOR else 4096
TS = 8 if SIMULATOR else 16        # GEMM tile edge
# elements per row of the persistent kernels' h / dGh tile at most (beside the shared-memory
# budget): no cap on a GPU (all of h_{t-1} at once whenever it fits), VT in the simulator;
# tests lower it to force several tiles
PERSIST_VT = VT if SIMULATOR else 1 << 30

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
PERSIST_RB = 4          # rows per thread in the persistent kernels on a GPU (register blocking)
PERSIST_JB = 4          # units per thread in bwd_persist on a GPU (register blocking)


def persist_jb(G):
    """Units per thread of fwd_persist on a GPU: enough that a thread's G*JB weight rows
    and RB = 4 h rows make 16 accumulators from 8 loads per input (JB = 4 for one gate,
    2 for two, 1 from three gates on: G*RB already >= 12 and G + RB <= 8)."""
    return max(1, PERSIST_JB // G)


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

    fwd_gx(t, B, H, b, j, xr, rx, gx)
        xr[rx + k] = Gx[t, b, k*H + j] (gate k's input pre-activation): issued early, before
        the recurrent dot products, so the loads are in flight while they run (prefetch).
    fwd_unit(t, T, B, H, b, j, ln, acc, ra, xr, rx, bh, rh, sreg, rs, act, out, st)
        acc[ra + k] = gate k's recurrent sum (no bias yet), xr[rx + k] its input part,
        bh[rh + k] = b_hh[k*H + j] (registers), sreg[rs + s] = state s before step t, ln = the
        row's length. Runs the cell, writes act[t, b, :, j], out[t, b, j] (0 past the
        row's length) and st[:, t+1, b, j]; leaves the state after step t in sreg
        (unchanged past the row's length).
    bwd_unit(t, T, B, H, b, j, ln, cut, dreg, rd, dout, act, st, dgh, dgx, dst0)
        dreg[rd + s] = dL/d state s after step t that does not come from dout[t] (for s = 0
        including dGh_{t+1} W_hh); truncation cut where ``cut`` (the caller's
        t >= 0 and (t+1) % trunc == 0: no division here); t = -1 writes dst0 (dL/d state0);
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
    a("def fwd_gx(t, B, H, b, j, xr, rx, gx):")
    a(f"    gb = (t * B + b) * {G} * H + j")
    for k in range(G):
        a(f"    xr[rx + {k}] = gx[gb + {k} * H]")
    a("")
    a("def fwd_unit(t, T, B, H, b, j, ln, acc, ra, xr, rx, bh, rh, sreg, rs, act, out, st):")
    for k in range(G):
        a(f"    xg{k} = xr[rx + {k}]")
    for k in range(G):
        a(f"    hg{k} = acc[ra + {k}] + bh[rh + {k}]")
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
    a("    if t < ln:")
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
    a("def bwd_unit(t, T, B, H, b, j, ln, cut, dreg, rd, dout, act, st, dgh, dgx, dst0):")
    a("    # the cut only ever fires where step t+1 was a real step (t + 1 < ln <= T)")
    a("    if cut and t + 1 < ln:")
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
    """Device functions (fwd_gx, fwd_unit, bwd_unit, stage) for ``spec`` and ``dtype``:
    everything one (row b, unit j) pair does at step t after the recurrent dot products
    (unit_source), shared by the step and persistent kernels.

    stage(vsh, voff, src, base, r0, nrows, B, K, k0, kt, vs, lin, nth)
        between two syncthreads: vsh[voff + rr*vs + kk] = src[base + (r0+rr)*K + k0+kk]
        for rr < nrows, kk < min(kt, K - k0), 0 for rows >= B (the block's tile of h_{t-1}
        or dGh_{t+1}). Rows outer, columns strided by the block: no integer division.
    """
    key = ("unit",) + _spec_key(spec, dtype) + (SU,)
    if key in _cache:
        return _cache[key]
    zero = np.dtype(dtype).type(0)
    cell_fwd, cell_bwd = cell_functions(spec, dtype)
    ns = _exec(unit_source(spec), f"units {spec.name!r} {np.dtype(dtype).name}",
               dict(zero=zero, cell_fwd=cell_fwd, cell_bwd=cell_bwd))

    # plain device functions: NVVM inlines them into every kernel anyway
    _cache[key] = (_device(ns["fwd_gx"]), _device(ns["fwd_unit"]), _device(ns["bwd_unit"]),
                   _stage_fn(zero, SU))
    return _cache[key]


SU = 1 if SIMULATOR else 8      # rows stage() loads at once (loads in flight per thread)


def stage_source(su):
    """Python source of ``stage`` (see _unit) with ``su`` tile rows per pass written out:
    their su global loads are independent and in flight together (a row at a time would
    make each thread wait one L2 round trip per element it stages)."""
    L = ["def stage(vsh, voff, src, base, r0, nrows, B, K, k0, kt, vs, lin, nth):",
         "    cuda.syncthreads()",
         "    rr = 0",
         "    while rr < nrows:"]
    for e in range(su):
        L += [f"        ok{e} = rr + {e} < nrows",
              f"        ld{e} = ok{e} and r0 + rr + {e} < B",
              f"        sb{e} = base + (r0 + rr + {e}) * K + k0",
              f"        db{e} = voff + (rr + {e}) * vs"]
    L += ["        # two exits (kt, and K - k0): a one-exit loop that LLVM unrolls would",
          "        # compute its trip count with a 64-bit division",
          "        kk = lin",
          "        while kk < kt:",
          "            if k0 + kk >= K:       # columns past K are never read",
          "                break"]
    for e in range(su):
        L += [f"            v{e} = zero", f"            if ld{e}:", f"                v{e} = src[sb{e} + kk]"]
    for e in range(su):
        L += [f"            if ok{e}:", f"                vsh[db{e} + kk] = v{e}"]
    L += ["            kk += nth", f"        rr += {su}", "    cuda.syncthreads()"]
    return "\n".join(L) + "\n"


def _stage_fn(zero, su):
    """stage() (stage_source) as a device function, typed by ``zero``."""
    key = ("stage", type(zero).__name__, su)
    if key not in _cache:
        ns = _exec(stage_source(su), f"stage x{su}", dict(zero=zero, cuda=cuda))
        _cache[key] = _device(ns["stage"])
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
    key = ("fwd_step",) + _spec_key(spec, dtype) + (VT, SU)
    if key in _cache:
        return _cache[key]
    G, S, zero, nbt = _consts(spec, dtype)
    vt = VT
    fwd_gx, fwd_unit, _, stage = _unit(spec, dtype)

    def fwd_step(t, T, B, H, gx, wt, bhh, lens, st, act, out):
        vsh = cuda.shared.array(vt, nbt)
        acc = cuda.local.array(G, nbt)
        xr = cuda.local.array(G, nbt)
        bh = cuda.local.array(G, nbt)
        sreg = cuda.local.array(S, nbt)
        j, b, b0, ty, by, tid, nth, active = step_geometry(B, H)
        GH = G * H
        kt = vt // by
        if kt > H:
            kt = H
        hrow = t * B * H                       # st[0, t]
        if active:
            fwd_gx(t, B, H, b, j, xr, 0, gx)   # in flight during the dot products
        for g in range(G):
            acc[g] = zero
        for k0 in range(0, H, kt):
            stage(vsh, 0, st, hrow, b0, by, B, H, k0, kt, kt, tid, nth)
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
            for g in range(G):
                bh[g] = bhh[j + g * H]
            fwd_unit(t, T, B, H, b, j, lens[b], acc, 0, xr, 0, bh, 0, sreg, 0, act, out, st)

    _cache[key] = _kernel(fwd_step)
    return _cache[key]


def uses_shuffle(ks):
    """Do the persistent kernels reduce their KS split-K partial sums with warp shuffles?
    On a GPU for KS = 2, 4, 8, 16, 32 (the KS lanes of a pair are consecutive and aligned
    inside one warp); in the simulator (no warp intrinsics) and for other KS, through
    shared memory."""
    ks = int(ks)
    return (not SIMULATOR) and ks in (2, 4, 8, 16, 32)


UF = 1 if SIMULATOR else 8      # unroll of the persistent dot-product loops (GPU); read
                                # at build time (part of the kernels' cache keys)


def dot_source(na, nr, uf, ks, acc_index, guard=False):
    """Python source of ``dot(dyn, acc, wbase, vbase, ku)``: ``uf`` consecutive split-K
    steps (inputs ku, ku+ks, ..., ku+(uf-1)*ks) of an (na x nr) register-blocked
    outer product: acc[acc_index(a, r)] += dyn[wbase[a] + k] * dyn[vbase[r] + k],
    written out (NVVM does not unroll a loop this large itself): all na + nr loads of a
    step first, then its na*nr FMAs; every offset is a constant, so ptxas folds it into
    the LDS instruction. Globals: o0 .. o{uf-1} = uint32(e*ks). guard: step e only
    where ku + e*ks < n (ku and n uint32: a signed/unsigned comparison would be made in
    float64 by Numba, .f64 in a float32 kernel) (the tail after the unrolled loop: straight-line code, no loop)."""
    L = ["def dot(dyn, acc, wbase, vbase, ku, n):"]
    for a in range(na):
        L.append(f"    wb{a} = wbase[{a}] + ku")
    for r in range(nr):
        L.append(f"    vb{r} = vbase[{r}] + ku")
    for e in range(uf):
        ind = "    "
        if guard:
            L.append(f"    if ku + o{e} < n:")
            ind = "        "
        for a in range(na):
            L.append(f"{ind}w{a}_{e} = dyn[wb{a} + o{e}]")
        for r in range(nr):
            L.append(f"{ind}h{r}_{e} = dyn[vb{r} + o{e}]")
        for a in range(na):
            for r in range(nr):
                L.append(f"{ind}acc[{acc_index(a, r)}] += w{a}_{e} * h{r}_{e}")
    return "\n".join(L) + "\n"


def _dot(na, nr, uf, ks, acc_index, label, guard=False):
    key = ("dot", na, nr, uf, ks, label, guard)
    if key not in _cache:
        ns = {f"o{e}": np.uint32(e * ks) for e in range(uf)}
        _exec(dot_source(na, nr, uf, ks, acc_index, guard), f"dot {label} {na}x{nr}x{uf}", ns)
        _cache[key] = _device(ns["dot"])
    return _cache[key]


def _log2(n):
    return int(n).bit_length() - 1


def persist_dot(nu, ng, rb, ks, dtype):
    """The persistent kernels' recurrent dot products, one source for both: device
    functions (tiled_dot, reduce_split_k, pair, lane_lengths) for a thread that owns
    ``nu`` units x ``rb`` rows with ``ng`` weight rows per unit (forward: nu = JB,
    ng = G gates; backward: nu = JB, ng = 1), split-K over ``ks`` lanes. Accumulator a*ng + g holds gate g of the
    (unit, row) pair a = u*rb + r; all counts are compile-time constants (UF, SU too).

    tiled_dot(dyn, acc, src, srow, K, KT, B, NR, VOFF, VS, wb, H, WS, vb, ks, lin, nth)
        acc[(u*rb + r)*ng + g] = sum over this lane's k (k = ks mod KS, k < K) of
        dyn[wb + u*WS + g*H + k] * src[srow + (r0 + r)*K + k], the NR operand rows staged
        tile by tile (KT inputs, row stride VS) at dyn[VOFF:], this thread's rows at
        dyn[vb:] (vb = VOFF + r0*VS). Every thread runs it (zero weights / rows pad the
        edges): no divergence, and all lanes reach the shuffles after it.
    reduce_split_k(dyn, acc, RED, lin, ks, nth, mask)
        every lane of a KS group gets the group's totals: warp-shuffle butterfly where
        uses_shuffle(KS) (mask: the lanes of a partial last warp), else a tree through
        shared memory at dyn[RED:], laid out [accumulator][thread] (conflict-free).
    pair(ks, m, j1, r0) -> (row, unit)
        the m-th pair lane ks finishes after the reduction (m < NPL = ceil(nu*rb / KS)):
        a = ks + KS*m, row r0 + a % rb, unit j1 + a // rb (j1, r0: the thread's first
        unit and row). So the pointwise steps and their global round trips run in
        parallel over the KS lanes. Recomputed where needed (unsigned: a mask and a
        shift for a power-of-two rb): int64 arrays of rows and units kept across the
        time loop, and signed % and //, cost up to 7 registers in the forward and up to
        42 in the backward.
    lane_lengths(ks, j1, r0, B, H, lens, lnr)
        lnr[m] = the length of pair m's row, 0 where the pair is padding (a >= nu*rb,
        row >= B or unit >= H).
    """
    NU, NG, RB, KS = int(nu), int(ng), int(rb), int(ks)
    key = ("persist_dot", NU, NG, RB, KS, UF, SU, np.dtype(dtype).name)
    if key in _cache:
        return _cache[key]
    zero = np.dtype(dtype).type(0)
    NA, NACC = NU * NG, NU * NG * RB
    SHUF = uses_shuffle(KS)
    SMEMRED = KS > 1 and not SHUF
    LOGKS = _log2(KS) if SHUF else 0
    UFK = UF

    def acc_index(a, r):                     # weight row a = u*NG + g, operand row r
        return ((a // NG) * RB + r) * NG + a % NG

    label = f"{NU}u{NG}g{RB}r"
    dotu = _dot(NA, RB, UFK, KS, acc_index, label)
    tail = _dot(NA, RB, max(UFK - 1, 1), KS, acc_index, label, guard=True)
    stage = _stage_fn(zero, SU)

    def tiled_dot(dyn, acc, src, srow, K, KT, B, NR, VOFF, VS, wb, H, WS, vb, ks, lin, nth):
        wbase = cuda.local.array(NA, uint32)     # shared-memory bases of the weight rows
        vbase = cuda.local.array(RB, uint32)     # ... and of the operand rows
        for a in range(NACC):
            acc[a] = zero
        k0 = 0
        while k0 < K:                            # tiles of KT inputs (one when KT = K)
            stage(dyn, VOFF, src, srow, 0, NR, B, K, k0, KT, VS, lin, nth)
            n = K - k0
            if n > KT:
                n = KT
            w0 = wb + k0
            # unsigned 32-bit indices: no negative-index wraparound code, 32-bit adds
            for u in range(NU):
                for g in range(NG):
                    wbase[u * NG + g] = uint32(w0 + u * WS + g * H)
            for r in range(RB):
                vbase[r] = uint32(vb + r * VS)
            kk = ks
            while kk + (UFK - 1) * KS < n:
                dotu(dyn, acc, wbase, vbase, uint32(kk), uint32(n))
                kk += UFK * KS
            if UFK > 1:                          # < UF steps left: guarded, no loop
                tail(dyn, acc, wbase, vbase, uint32(kk), uint32(n))
            k0 += KT

    def reduce_split_k(dyn, acc, RED, lin, ks, nth, mask):
        if SHUF:                                 # butterfly over the KS lanes
            for a in range(NACC):
                v = acc[a]
                for e in range(LOGKS):
                    v += cuda.shfl_xor_sync(mask, v, KS >> (e + 1))
                acc[a] = v
        elif SMEMRED:                            # tree through shared memory, [a][thread]
            for a in range(NACC):
                dyn[RED + a * nth + lin] = acc[a]
            span = KS
            while span > 1:
                half = (span + 1) >> 1
                cuda.syncthreads()
                if ks < span - half:             # reads slots >= half, writes < half
                    for a in range(NACC):
                        acc[a] += dyn[RED + a * nth + lin + half]
                        dyn[RED + a * nth + lin] = acc[a]
                span = half
            cuda.syncthreads()                   # lane 0's totals to every lane
            for a in range(NACC):
                acc[a] = dyn[RED + a * nth + lin - ks]

    NPAIR = NU * RB
    NPL = -(-NPAIR // KS)

    def pair(ks, m, j1, r0):
        a = ks + KS * m
        if NU > 1:                               # unsigned: % and // by a constant are
            ua = uint32(a)                       # a mask and a shift, not signed fixups
            return r0 + int64(ua % uint32(RB)), j1 + int64(ua // uint32(RB))
        return r0 + a, j1                        # one unit: a < RB where it is real

    pair_d = _device(pair)

    def lane_lengths(ks, j1, r0, B, H, lens, lnr):
        for m in range(NPL):
            b, j = pair_d(ks, m, j1, r0)
            ln = 0
            if ks + KS * m < NPAIR and b < B and j < H:
                ln = lens[b]
            lnr[m] = ln

    _cache[key] = (_device(tiled_dot), _device(reduce_split_k), pair_d,
                   _device(lane_lengths))
    return _cache[key]


def fwd_persist_kernel(spec, dtype, grid, rb=1, ks=1, jb=1):
    """The whole sequence in one launch (see module doc).

    Launch: grid (ceil(H/J),), block (KS, J/JB, ceil(B/RB)) threads: x = split-K slice ks,
    y = unit group jg (units jl = jg*JB + u, u < JB; j = blockIdx.x*J + jl), z = row group
    q (rows q*RB .. q*RB+RB-1). Register blocking three ways: each weight read from shared
    memory is applied to RB rows, each h value to the G gates of JB units, so a thread's
    G*JB*RB accumulators cost G*JB + RB loads per input (persist_dot; JB > 1 is what
    lifts the one-gate cells' ratio). No integer division anywhere: the thread's roles are
    its thread indices. Dynamic shared memory, in elements:
        W    [0, J*WS)            W_hh rows of the block's units, (J, WS >= G*H): unit
                                  jl, gate g, input i at jl*WS + g*H + i
        V    [J*WS, +NR*VS)       tile of h_{t-1}: NR = blockDim.z*RB rows (rows >= B are
                                  zero), KT inputs per tile, row stride VS >= KT (all of h
                                  at once, KT = H, whenever it fits)
        RED  [.., +G*JB*RB*threads) split-K partials, [a][thread] (only when KS > 1 and
                                  the reduction is not by warp shuffles: uses_shuffle(KS))
    WS and VS are padded on the host (backend._bank_stride) so the lanes of a warp hit
    distinct banks. KS, RB, JB, G, S are compile-time constants. After the reduction lane
    ks owns the (unit, row) pairs ks, ks+KS, ... of the thread's JB*RB: their G sums, b_hh,
    row lengths and S states (registers) and their pointwise step, in parallel over the
    KS lanes.
    Args: (T, B, H, KT, WS, VS, gx, w, bhh, lens, st, act, out), w = W_hh (G*H, H).
    """
    spec = get_cell(spec)
    KS, RB, JB = int(ks), int(rb), int(jb)
    key = ("fwd_persist",) + _spec_key(spec, dtype) + (bool(grid), RB, KS, JB, UF, SU)
    if key in _cache:
        return _cache[key]
    G, S, zero, nbt = _consts(spec, dtype)
    GRID = bool(grid)
    NACC = G * JB * RB
    NPAIR = JB * RB
    NPL = -(-NPAIR // KS)                       # (unit, row) pairs each of the KS lanes owns
    NPG = NPL * G
    NST = NPL * S
    SHUF = uses_shuffle(KS)
    FULL = -1                                   # 0xffffffff as an int32 lane mask
    fwd_gx, fwd_unit, _, stage = _unit(spec, dtype)
    tiled_dot, reduce_split_k, pair, lane_lengths = persist_dot(JB, G, RB, KS, dtype)

    def fwd_persist(T, B, H, KT, WS, VS, gx, w, bhh, lens, st, act, out):
        dyn = cuda.shared.array(0, nbt)
        acc = cuda.local.array(NACC, nbt)      # (JB, RB, G) accumulators (registers)
        mine = cuda.local.array(NPG, nbt)      # (NPL, G) sums of the pairs this lane owns
        xr = cuda.local.array(NPG, nbt)        # (NPL, G) Gx[t] prefetched
        bh = cuda.local.array(NPG, nbt)        # (NPL, G) b_hh of their units
        sreg = cuda.local.array(NST, nbt)      # (NPL, S) states
        lnr = cuda.local.array(NPL, int64)     # row length of each owned pair (0: none)
        ks = cuda.threadIdx.x
        jg = cuda.threadIdx.y
        q = cuda.threadIdx.z
        JG = cuda.blockDim.y
        J = JG * JB
        NR = cuda.blockDim.z * RB
        lin = ks + KS * (jg + JG * q)
        nth = KS * JG * cuda.blockDim.z
        j0 = cuda.blockIdx.x * J
        VOFF = J * WS
        RED = VOFF + NR * VS
        mask = FULL
        if SHUF:
            left = nth - (lin - (lin & 31))    # lanes of this (possibly partial) warp
            if left < 32:
                mask = (1 << left) - 1
        for g in range(G):                     # rows of W_hh: coalesced over i
            # dyn[u*WS + g*H + i] = w[(g*H + j0 + u)*H + i], 0 for units >= H
            stage(dyn, g * H, w, g * H * H, j0, J, H, H, 0, H, WS, lin, nth)
        bq = q * RB
        j1 = j0 + jg * JB                       # the thread's first unit
        lane_lengths(ks, j1, bq, B, H, lens, lnr)
        ss = (T + 1) * B * H
        for m in range(NPL):
            b, j = pair(ks, m, j1, bq)
            ok = lnr[m] > 0
            for g in range(G):
                v = zero
                if ok:
                    v = bhh[g * H + j]
                bh[m * G + g] = v
            for s in range(S):
                v = zero
                if ok:
                    v = st[s * ss + b * H + j]
                sreg[m * S + s] = v
        wb = jg * JB * WS
        vb = VOFF + bq * VS
        for t in range(T):
            for m in range(NPL):               # prefetch: in flight during the dot products
                if lnr[m] > 0:
                    b, j = pair(ks, m, j1, bq)
                    fwd_gx(t, B, H, b, j, xr, m * G, gx)
            tiled_dot(dyn, acc, st, t * B * H, H, KT, B, NR, VOFF, VS, wb, H, WS, vb,
                      ks, lin, nth)
            reduce_split_k(dyn, acc, RED, lin, ks, nth, mask)
            for a in range(NPAIR):             # constant a: selects, no local memory
                if a % KS == ks:
                    for g in range(G):
                        mine[(a // KS) * G + g] = acc[a * G + g]
            for m in range(NPL):
                if lnr[m] > 0:
                    b, j = pair(ks, m, j1, bq)
                    fwd_unit(t, T, B, H, b, j, lnr[m], mine, m * G, xr, m * G, bh, m * G,
                             sreg, m * S, act, out, st)
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
    key = ("bwd_step",) + _spec_key(spec, dtype) + (VT, SU)
    if key in _cache:
        return _cache[key]
    G, S, zero, nbt = _consts(spec, dtype)
    vt = VT
    _, _, bwd_unit, stage = _unit(spec, dtype)

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
                stage(vsh, 0, dgh, drow, b0, by, B, GH, k0, kt, kt, tid, nth)
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
        cut = t >= 0 and trunc > 0 and (t + 1) % trunc == 0
        bwd_unit(t, T, B, H, b, j, lens[b], cut, dreg, 0, dout, act, st, dgh, dgx, ds0)
        if t >= 0:
            for s in range(S):
                dsc[s * BH + p] = dreg[s]

    _cache[key] = _kernel(bwd_step)
    return _cache[key]


def bwd_persist_kernel(spec, dtype, grid, rb=1, ks=1, jb=1):
    """The whole reverse loop in one launch.

    Launch: grid (ceil(H/J),), block (KS, J/JB, ceil(B/RB)): x = split-K slice ks over the
    GH gate gradients, y = unit group (JB units: jl = y*JB + u), z = row group (RB rows).
    Each thread accumulates JB x RB carries (register blocking both ways: a weight read
    from shared memory serves RB rows, a dGh value JB units). Dynamic shared memory:
        W    [0, J*WS)           W_hh[:, units of this block]^T, (J, WS >= GH): unit u,
                                 gate row k at u*WS + k (from wt = W_hh^T, coalesced)
        V    [J*WS, +NR*VS)      tile of dGh_{t+1}, NR = blockDim.z*RB rows, KT per tile
        RED  [.., +JB*RB*threads) split-K partials [u][thread] when not uses_shuffle(KS)
    The dot product, split-K reduction and pair ownership are fwd_persist's
    (persist_dot(JB, 1, RB, KS)); lane ks carries the S state gradients of its pairs
    (ks, ks+KS, ... of the thread's JB x RB) in registers across steps. KS, RB, JB, G, S
    are compile-time constants.
    Args: (T, B, H, KT, WS, VS, trunc, tph, dgh, dgx, wt, lens, st, act, dout, dsn, ds0),
    tph = T % trunc (0 without truncation): the phase of the cut at t = T-1.
    """
    spec = get_cell(spec)
    KS, RB, JB = int(ks), int(rb), int(jb)
    key = ("bwd_persist",) + _spec_key(spec, dtype) + (bool(grid), RB, KS, JB, UF, SU)
    if key in _cache:
        return _cache[key]
    G, S, zero, nbt = _consts(spec, dtype)
    GRID = bool(grid)
    NACC = JB * RB
    NPL = -(-NACC // KS)                       # (unit, row) pairs each of the KS lanes owns
    NDREG = NPL * S
    SHUF = uses_shuffle(KS)
    FULL = -1
    _, _, bwd_unit, stage = _unit(spec, dtype)
    tiled_dot, reduce_split_k, pair, lane_lengths = persist_dot(JB, 1, RB, KS, dtype)

    def bwd_persist(T, B, H, KT, WS, VS, trunc, tph, dgh, dgx, wt, lens, st, act, dout, dsn,
                    ds0):
        dyn = cuda.shared.array(0, nbt)
        acc = cuda.local.array(NACC, nbt)        # (JB, RB)
        dreg = cuda.local.array(NDREG, nbt)      # (NPL, S) carried state gradients
        lnr = cuda.local.array(NPL, int64)       # row length of each owned pair (0: none)
        ks = cuda.threadIdx.x
        jg = cuda.threadIdx.y
        q = cuda.threadIdx.z
        JG = cuda.blockDim.y
        J = JG * JB
        NR = cuda.blockDim.z * RB
        lin = ks + KS * (jg + JG * q)
        nth = KS * JG * cuda.blockDim.z
        j0 = cuda.blockIdx.x * J
        GH = G * H
        VOFF = J * WS
        RED = VOFF + NR * VS
        mask = FULL
        if SHUF:
            left = nth - (lin - (lin & 31))
            if left < 32:
                mask = (1 << left) - 1
        # columns of W_hh = rows of wt, coalesced: dyn[u*WS + k] = wt[(j0 + u)*GH + k]
        stage(dyn, 0, wt, 0, j0, J, H, GH, 0, GH, WS, lin, nth)
        bq = q * RB
        BH = B * H
        j1 = j0 + jg * JB                        # the thread's first unit
        lane_lengths(ks, j1, bq, B, H, lens, lnr)
        for m in range(NPL):
            b, j = pair(ks, m, j1, bq)
            for s in range(S):
                v = zero
                if lnr[m] > 0:
                    v = dsn[s * BH + b * H + j]
                dreg[m * S + s] = v
        wb = jg * JB * WS
        vb = VOFF + bq * VS
        for t in range(T - 1, -2, -1):
            if t + 1 < T:
                tiled_dot(dyn, acc, dgh, (t + 1) * B * GH, GH, KT, B, NR, VOFF, VS, wb,
                          H, WS, vb, ks, lin, nth)
                reduce_split_k(dyn, acc, RED, lin, ks, nth, mask)
                for a in range(NACC):           # constant a: selects, no local memory
                    if a % KS == ks:
                        dreg[(a // KS) * S] += acc[a]
            # truncation phase: (t+1) % trunc, kept by counting (no division per step)
            cut = trunc > 0 and t >= 0 and tph == 0
            if trunc > 0:
                tph -= 1
                if tph < 0:
                    tph = trunc - 1
            for m in range(NPL):
                if lnr[m] > 0:
                    b, j = pair(ks, m, j1, bq)
                    bwd_unit(t, T, B, H, b, j, lnr[m], cut, dreg, m * S, dout, act, st, dgh,
                             dgx, ds0)
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


# compile-time parameters of the persistent kernels as the GPU plan picks them for the
# LSTM fp32 B=16 configs (backend._plan): what the PTX/SASS reports compile
REPORT_FWD = dict(rb=PERSIST_RB, ks=8)
REPORT_BWD = dict(rb=PERSIST_RB, ks=8, jb=PERSIST_JB)


def all_kernels(cells=None, dtypes=("float32", "float64")):
    """(name, kernel, kind, dtype) for every kernel version x every registered cell (or
    ``cells``) x float32/float64; kind in {'fwd_step', 'fwd_persist', 'bwd_step',
    'bwd_persist', 'gemm'} picks the signature. Names: fwd_persist_grid_lstm_float32.
    The persistent kernels are built with REPORT_FWD (JB = persist_jb(G)) / REPORT_BWD."""
    out = []
    for dtype in dtypes:
        for name in (list(CELLS) if cells is None else cells):
            spec = get_cell(name)
            tag = f"{spec.name}_{dtype}"
            out.append((f"fwd_step_{tag}", fwd_step_kernel(spec, dtype), "fwd_step", dtype))
            out.append((f"bwd_step_{tag}", bwd_step_kernel(spec, dtype), "bwd_step", dtype))
            for grid in (False, True):
                g = "grid" if grid else "1block"
                fw = dict(REPORT_FWD, jb=persist_jb(spec.n_gates))
                out.append((f"fwd_persist_{g}_{tag}",
                            fwd_persist_kernel(spec, dtype, grid, **fw), "fwd_persist",
                            dtype))
                out.append((f"bwd_persist_{g}_{tag}",
                            bwd_persist_kernel(spec, dtype, grid, **REPORT_BWD), "bwd_persist",
                            dtype))
        out.append((f"gemm_{dtype}", gemm_kernel(dtype), "gemm", dtype))
    return out
