"""The backend contract: what every backend implements, and the types it shares.

A backend runs ONE layer in ONE direction of any registered cell; gpurnn.layers builds
stacks, directions, dropout, batch_first and lengths on top of it, the same way for every
backend. Shapes (T steps, B rows, I inputs, H hidden units; the cell has G gates and S
states, gpurnn.cells.CellSpec):

    forward(spec, x, w_ih, w_hh, b_ih, b_hh, state0, lengths) -> (out, state_n, tape)
        spec     CellSpec
        x        (T, B, I) floats, or (T, B) int64 token ids in 0..I-1 (below)
        w_ih     (G*H, I)             w_hh (G*H, H)
        b_ih, b_hh (G*H,) or None     (None: no bias)
        state0   tuple of S entries, each (B, H) or None (zeros)
        lengths  host NumPy int array (B,) with values in 1..T, or None (all T)
        out      (T, B, H): h_t at valid steps, 0 past a row's length
        state_n  tuple of S arrays (B, H): the state after each row's last valid step
        tape     opaque to the caller; tape["plan"] (a dict) says what ran and why
                 (e.g. which kernel, how the work was split, any fast path declined)
    backward(tape, dout, dstate_n, truncate, need_dx=True) -> DirectionGrads
        dout     (T, B, H) dL/d out       dstate_n tuple of S entries (B, H) or None
        truncate None or k >= 1: the gradient step t+1 sends into step t is dropped
                 where t+1 is a multiple of k (gpurnn.reference)
        need_dx  False: no dX (its GEMM dG W_ih is not run) and DirectionGrads.dx is
                 None; the other gradients are the same. Token-id x: always so.

Token ids (the first layer of a model over a vocabulary; the layers validate them and pass
them as int64): x[t, b] = v stands for the one-hot row e_v of length I, so the input
projection X W_ih^T is the gather gx[t, b] = W_ih[:, v] (bitwise the one-hot product),
dW_ih = dG^T X the scatter-add of dG's rows into W_ih's columns v, and there is no dx.
gpurnn.tokens implements both on an array namespace (the numpy and cuda backends); the cpu
backend runs them as njit loops split over its threads (gpurnn.cpu.tokens).

Arrays are the backend's native arrays (``backend.xp``: numpy, or cupy on a GPU). The
other members: ``name``, ``xp``, ``dtypes``, ``is_available()``, ``asarray(a, dtype)``,
and ``to_user(a, like)`` (native result -> the kind of array the user passed).

Three more members serve the code AROUND the layers (an output layer, a training step), so
that a model never needs to know one backend's internals:

    matmul(a, b)       a (M, K) @ b (K, N) -> a new (M, N) native array. The CPU backend
                       splits the rows over its threads, each a one-thread BLAS call, the
                       way its layers share the cores; numpy and cuda: xp.matmul.
    compute_scope()    a context manager to hold around one step of model code (the layers'
                       forward/backward and the matmul calls). The CPU backend keeps BLAS at
                       one thread inside it (a threaded BLAS call leaves OpenBLAS's workers
                       spinning on the cores the next layer call splits over: training step
                       83 vs 46 ms at 2 threads, benchmarks/RESULTS_train.md); numpy and
                       cuda: nothing (contextlib.nullcontext).
    run_rows(n, fn)    fn(r0, r1) for consecutive shares [r0, r1) of the rows 0..n-1, the
                       results in share order: a row-wise pass of model code (the output
                       layer's GEMMs and loss on its rows) as ONE split over the backend's
                       threads, each share with one-thread BLAS, instead of one split per
                       product; numpy and cuda: [fn(0, n)].

Two optional hooks, for code that runs a layer whose recurrence is a linear map of the
cell's output (the LSTM projection, gpurnn.projection; a backend declares them with
``fold_hooks = True``; cpu and cuda have them):

    forward(..., gx0=None)          gx0 (B, G*H) is added to step 0's input-side
                                    pre-activations (after X W_ih^T; the biases stay where
                                    they are); its gradient is dgates[0] (all gates tied)
    backward(..., need_dgates=False) True: DirectionGrads.dgates is the (T, B, G*H) gradient
                                    w.r.t. the recurrent-side pre-activations (0 past a
                                    row's length), the array the backward computed anyway

A fast path that cannot run is never skipped silently: the backend records why in the
plan (tape["plan"]["declined"]) and calls ``decline(text)``, which warns once per reason
per process, or raises FallbackError where GPURNN_STRICT=1 (a benchmark or a check that
must know the fast path ran).

All three are optional for a backend: call them through ``matmul(backend, a, b)``,
``compute_scope(backend)`` and ``run_rows(backend, n, fn)`` below, which fall back to the
defaults for a backend object
that does not define them. ``HostBackend`` gives a backend on NumPy arrays (numpy, cpu)
xp, asarray, to_user and the defaults in one place.
"""
import contextlib
import os
import warnings
from typing import NamedTuple, Optional

import numpy as np


class DirectionGrads(NamedTuple):
    """Gradients of one layer-direction. Shapes as the forward's arguments."""
    dx: object                 # (T, B, I); None for need_dx=False or token-id x
    dstate0: tuple             # S arrays (B, H): dL/d state0
    dw_ih: object              # (G*H, I)
    dw_hh: object              # (G*H, H)
    db_ih: Optional[object]    # (G*H,) or None without bias
    db_hh: Optional[object]    # (G*H,) or None without bias
    plan: Optional[dict] = None   # what the backward ran (as tape["plan"] for the forward)
    dw_hr: Optional[object] = None    # (P, H): an LSTM projection's (gpurnn.projection)
    dgates: Optional[object] = None   # (T, B, G*H) dL/d recurrent-side pre-activations, with
                                      # backward(..., need_dgates=True) (the fold hooks)



class HostBackend:
    """The members every backend on NumPy arrays shares (numpy, cpu): xp, asarray, to_user,
    and the default matmul and compute_scope; a backend overrides what it does its own way."""
    xp = np

    def asarray(self, a, dtype=None):
        return np.asarray(a, dtype=dtype)

    def to_user(self, a, like):
        return a

    def matmul(self, a, b):
        return np.matmul(a, b)

    def compute_scope(self):
        return contextlib.nullcontext()

    def run_rows(self, n, fn):
        return [fn(0, n)]


def matmul(backend, a, b):
    """``backend.matmul(a, b)``, or ``backend.xp.matmul(a, b)`` where it has none."""
    own = getattr(backend, "matmul", None)
    return own(a, b) if own is not None else backend.xp.matmul(a, b)


def compute_scope(backend):
    """``backend.compute_scope()``, or a context that does nothing where it has none."""
    own = getattr(backend, "compute_scope", None)
    return own() if own is not None else contextlib.nullcontext()


def run_rows(backend, n, fn):
    """``backend.run_rows(n, fn)``, or ``[fn(0, n)]`` where it has none."""
    own = getattr(backend, "run_rows", None)
    return own(n, fn) if own is not None else [fn(0, n)]


class FallbackError(RuntimeError):
    """GPURNN_STRICT=1 and a fast path (a kernel, a GEMM) that was asked for, or that
    "auto" prefers, cannot run: raised instead of falling back."""


def strict():
    """GPURNN_STRICT=1: a fallback raises FallbackError instead of warning."""
    return os.environ.get("GPURNN_STRICT", "") not in ("", "0")


_warned = set()          # fallback texts already warned about (once each per process)


def decline(text, stacklevel=4):
    """A fast path falls back (the caller has put the reason in its plan): FallbackError
    under GPURNN_STRICT=1, else a RuntimeWarning the first time this text is seen."""
    if strict():
        raise FallbackError(text + "; GPURNN_STRICT=1 forbids the fallback")
    if text not in _warned:
        _warned.add(text)
        warnings.warn(text, RuntimeWarning, stacklevel=stacklevel)
