"""NumPy's own OpenBLAS, callable from njit code: the "rows" recurrence's per-step products
without a Python call per step.

Why: with the time loop in Python, each step of each part is a np.matmul call and an njit
call (~10-20 us of argument handling), and the two parts' Python loops take turns at the
GIL between their BLAS calls. Called from njit (nogil), the T steps of a part are one call
that never touches the interpreter, as MKL's packed products already were (mkl.py).

Which library: the OpenBLAS that NumPy's wheels bundle (found with threadpoolctl), whose
CBLAS is exported with 64-bit integers and a suffix (``scipy_cblas_sgemm64_`` in NumPy 2,
``cblas_sgemm64_`` in NumPy 1.2x). Float32 and float64. Where NumPy's BLAS is another one
(conda's MKL, an unsuffixed OpenBLAS whose integer width cannot be told), the loop stays
in Python and the plan says why (``status()``). Thread count: whatever OpenBLAS is set to;
the split recurrence runs its parts under parallel.single_threaded_blas (one each).

  status()          (True, "openblas <version> in <library>") or (False, why not)
  gemm_nt(a, b, c)  njit: c = a @ b.T; a (M, K), b (N, K), c (M, N), each with unit stride
                    in its last dimension (rows may be strided); float32 or float64
  gemm_tn(a, b, c)  njit: c = a.T @ b; a (K, M), b (K, N)    (the same rules)
  gemm_nn(a, b, c)  njit: c = a @ b;   a (M, K), b (K, N)
  small_block(rows, K)   columns per call that keep a per-step product on
                    OpenBLAS's small-matrix kernels (0: one call)

Calls go by symbol name (llvmlite.binding.add_symbol, as mkl.py does), so kernels that use
them cache on disk like every other kernel; ``status()`` registers the symbols, and the
backend calls it before any kernel that uses them.

Run/test:  python -m pytest tests/test_cpu_backend.py -q -k "products or openblas"
"""
import ctypes
import functools
import os

import llvmlite.binding
import llvmlite.ir as ir
from numba.core import cgutils, types
from numba.extending import intrinsic

from .jit import stable_jit

ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112        # CBLAS enumerations (cblas.h)
_SYMBOLS = {"float32": "gpurnn_openblas_sgemm", "float64": "gpurnn_openblas_dgemm"}
_EXPORTS = (("scipy_cblas_", "64_"), ("cblas_", "64_"))   # (prefix, suffix): ILP64 builds


# A stand-in for each symbol where no OpenBLAS is found: the kernels link against both
# symbols whether or not they call them (a "units" loop's GEMMs, the "rows" loop), and an
# unresolved symbol crashes the process when the kernel loads (NumPy on MKL or on a 32-bit
# integer BLAS, e.g. Debian's). The plans never call it then (status() says no); one that did
# would be a bug in gpurnn, so it stops the process with a message, never returns garbage.
_UNAVAILABLE = {}


def _never_called(*_):
    os.write(2, b"gpurnn: internal error: NumPy's OpenBLAS called from njit although "
                b"openblas.status() said it is unavailable\n")
    os.abort()


def _register_unavailable():
    i32, i64, ptr = ctypes.c_int32, ctypes.c_int64, ctypes.c_void_p
    for dtype, real in (("float32", ctypes.c_float), ("float64", ctypes.c_double)):
        prototype = ctypes.CFUNCTYPE(None, i32, i32, i32, i64, i64, i64, real, ptr, i64, ptr,
                                     i64, real, ptr, i64)
        _UNAVAILABLE[dtype] = stub = prototype(_never_called)     # kept alive here
        llvmlite.binding.add_symbol(_SYMBOLS[dtype], ctypes.cast(stub, ctypes.c_void_p).value)


@functools.lru_cache(maxsize=None)
def _library():
    """(ctypes library, description, OpenBLAS core name) or (None, why not, "")."""
    lib, text, core = _find_library()
    if lib is None:
        _register_unavailable()
    return lib, text, core


def _find_library():
    import numpy  # noqa: F401  (threadpoolctl sees only libraries already loaded)
    try:
        from threadpoolctl import threadpool_info
    except ImportError as e:
        return None, f"threadpoolctl missing ({e})", ""
    found = [i for i in threadpool_info() if i.get("internal_api") == "openblas"]
    if not found:
        apis = sorted({i.get("internal_api", "?") for i in threadpool_info()}) or ["none"]
        return None, f"NumPy's BLAS is not OpenBLAS (found: {', '.join(apis)})", ""
    found.sort(key=lambda i: "numpy" not in i["filepath"])   # NumPy's before SciPy's
    tried = []
    for info in found:
        lib = ctypes.CDLL(info["filepath"])
        for prefix, suffix in _EXPORTS:
            try:
                fns = {dt: getattr(lib, f"{prefix}{name}gemm{suffix}")
                       for dt, name in (("float32", "s"), ("float64", "d"))}
            except AttributeError:
                tried.append(f"{prefix}sgemm{suffix} in {info['filepath']}")
                continue
            for dtype, fn in fns.items():
                llvmlite.binding.add_symbol(_SYMBOLS[dtype], ctypes.cast(fn, ctypes.c_void_p).value)
            return (lib, f"openblas {info.get('version')} in {info['filepath']}",
                    info.get("architecture") or "")
    return None, (f"NumPy's OpenBLAS exports no 64-bit-integer CBLAS gemm (tried {', '.join(tried)}); "
                  "the per-step products run from a Python loop"), ""


# OpenBLAS's AVX-512 cores: their "small matrix" GEMM kernels run products with M N K up to
# 64^3 straight from the operands, without packing them first
SMALL_KERNEL_CORES = ("skylakex", "cooperlake", "sapphirerapids")
SMALL_MNK = 64 ** 3


def small_kernels():
    """Whether the OpenBLAS the loops call runs one of the cores with small-matrix kernels."""
    lib, _, core = _library()
    return lib is not None and core.lower() in SMALL_KERNEL_CORES


def small_block(rows, K):
    """Output columns per call for a per-step product of ``rows`` rows and inner size K,
    or 0 for one call. Why: a whole product, e.g. 16 x 256 -> 1024 columns, is one regular
    GEMM, which copies (packs) all of W_hh — 1 MiB, a core's whole L2 — at every step; in
    calls of at most SMALL_MNK multiply-adds the small-matrix kernels read W_hh as it lies
    and write h W_hh^T in the cell's layout, so no transpose follows. Measured on an EPYC
    Zen 5, one thread, OpenBLAS 0.3.31 SkylakeX kernels (RESULTS_cpu.md, Tuning log 22):
    forward 16 x 256 -> 1024 in 64-column calls 49 us vs 70 (+ a 5 us transpose), 11 rows
    43 vs 105, 21 x 256 -> 768 49 vs 81, 16 x 512 -> 2048 213 vs 265; backward 16 x 1024 ->
    256 56 vs 62, 16 x 768 -> 256 36 vs 46; but 32 x 512 -> 2048 forward 489 vs 391, so
    beyond 16 rows only blocks of >= 32 columns are taken."""
    if not small_kernels() or rows < 1:
        return 0
    block = SMALL_MNK // (rows * K) // 16 * 16
    if block < 16 or (rows > 16 and block < 32):
        return 0
    return block


def status():
    """(True, which OpenBLAS) where njit code can call NumPy's OpenBLAS, else (False, why)."""
    lib, text, _ = _library()
    return lib is not None, text


def _cblas_gemm(trans_a, trans_b):
    """An intrinsic f(a, b, c): cblas_?gemm(row-major, ...) with c = op(a) @ op(b), where op
    transposes where ``trans_a`` / ``trans_b`` say; 64-bit integer arguments. Shapes come
    from c (M, N) and a: K = a.shape[0] if trans_a else a.shape[1]."""
    flags = (TRANS if trans_a else NO_TRANS, TRANS if trans_b else NO_TRANS)

    def typer(typingctx, a, b, c):
        if not (all(isinstance(x, types.Array) and x.ndim == 2 for x in (a, b, c))
                and a.dtype == b.dtype == c.dtype and a.dtype in (types.float32, types.float64)):
            return None
        name = _SYMBOLS[str(a.dtype)]

        def codegen(context, builder, signature, args):
            i32, i64, ptr = ir.IntType(32), ir.IntType(64), ir.IntType(8).as_pointer()
            real = context.get_value_type(signature.args[0].dtype)
            arrays = [context.make_array(t)(context, builder, v)
                      for t, v in zip(signature.args, args)]
            item = ir.Constant(i64, context.get_abi_sizeof(real))
            shape = [cgutils.unpack_tuple(builder, x.shape, 2) for x in arrays]
            lead = [builder.udiv(cgutils.unpack_tuple(builder, x.strides, 2)[0], item)
                    for x in arrays]
            m, n = shape[2]
            k = shape[0][0] if trans_a else shape[0][1]
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(
                ir.VoidType(), [i32, i32, i32, i64, i64, i64, real, ptr, i64, ptr, i64, real, ptr,
                                i64]), name)
            data = [builder.bitcast(x.data, ptr) for x in arrays]
            builder.call(fn, [ir.Constant(i32, ROW_MAJOR), ir.Constant(i32, flags[0]),
                              ir.Constant(i32, flags[1]), m, n, k, ir.Constant(real, 1.0),
                              data[0], lead[0], data[1], lead[1], ir.Constant(real, 0.0), data[2],
                              lead[2]])
            return context.get_dummy_value()
        return types.void(a, b, c), codegen

    typer.__name__ = f"_gemm_{'tn'[not trans_a]}{'tn'[not trans_b]}"
    fn = intrinsic(typer)
    fn._set_uuid(f"gpurnn.cpu:openblas:{typer.__name__}")     # stable cache keys (jit.py)
    return fn


_gemm_nt, _gemm_tn, _gemm_nn = (_cblas_gemm(False, True), _cblas_gemm(True, False),
                                _cblas_gemm(False, False))


@stable_jit("openblas", inline="always")
def gemm_nt(a, b, c):
    """c = a @ b.T by NumPy's OpenBLAS; a (M, K), b (N, K), c (M, N), unit stride in the
    last dimension. Call ``status()`` first (it registers the library's symbols)."""
    _gemm_nt(a, b, c)


@stable_jit("openblas", inline="always")
def gemm_tn(a, b, c):
    """c = a.T @ b; a (K, M), b (K, N), c (M, N), unit stride in the last dimension."""
    _gemm_tn(a, b, c)


@stable_jit("openblas", inline="always")
def gemm_nn(a, b, c):
    """c = a @ b; a (M, K), b (K, N), c (M, N), unit stride in the last dimension."""
    _gemm_nn(a, b, c)
