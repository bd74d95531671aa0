"""Numba CPU backend (backend="cpu"): BLAS GEMMs around fused njit recurrence kernels.

    backend.py   CpuBackend: the backend contract (gpurnn.backend), buffers, GEMMs, tape
    kernels.py   the fused step loops, forward and BPTT, one pair per (cell, dtype), and
                 Plan: how one layer call splits over threads
    parallel.py  thread count, the pool that runs the parts, the one-thread-BLAS context
    sync.py      the spin barrier the parts meet at (atomic loads/stores for njit)
    fastmath.py  vectorisable float32 exp/tanh used by the float32 kernels
    jit.py       stable_jit: numba.njit(cache=True) with reproducible cache keys

Design and measurements: kernels_docs/cpu.md, benchmarks/RESULTS_cpu.md.
"""
from .backend import CpuBackend, tape_nbytes

__all__ = ["CpuBackend", "tape_nbytes"]
