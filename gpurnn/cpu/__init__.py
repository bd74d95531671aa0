"""Numba CPU backend (backend="cpu"): BLAS GEMMs around fused njit recurrence kernels.

    backend.py   CpuBackend: the backend contract (gpurnn.backend), buffers, GEMMs, tape
    kernels.py   the fused step loops, forward and BPTT, one pair per (cell, dtype)
    fastmath.py  vectorisable float32 exp/tanh used by the float32 kernels

Design and measurements: kernels_docs/cpu.md, benchmarks/RESULTS_cpu.md.
"""
from .backend import CpuBackend, tape_nbytes

__all__ = ["CpuBackend", "tape_nbytes"]
