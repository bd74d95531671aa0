"""Numba CUDA backend (backend="cuda"): fused recurrence kernels + GEMM fallback.

Importing this package imports Numba (and numba-cuda) but compiles nothing: kernels are
generated and built lazily per (cell spec, dtype) on first use. See gpurnn.cuda.backend
and kernels_docs/cuda.md.
"""
from .backend import CudaBackend

__all__ = ["CudaBackend"]
